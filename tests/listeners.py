#!/usr/bin/env python3
"""Print the TCP sockets a process listens on, one "address port" a line.

usage: listeners.py PID

Reads /proc (no ss or netstat needed): the socket inodes among the
process's open files, matched with the LISTEN entries of /proc/net/tcp and
tcp6.  Used by tests/test_hw_bind.sh.
"""
import os
import socket
import struct
import sys


def inodes(pid):
    out = set()
    fd_dir = "/proc/%d/fd" % pid
    for fd in os.listdir(fd_dir):
        try:
            target = os.readlink(os.path.join(fd_dir, fd))
        except OSError:
            continue
        if target.startswith("socket:["):
            out.add(target[8:-1])
    return out


def addr(hex_addr, v6):
    raw = bytes.fromhex(hex_addr)
    if not v6:
        return socket.inet_ntop(socket.AF_INET, struct.pack("<I", struct.unpack(">I", raw)[0]))
    words = struct.unpack(">4I", raw)
    return socket.inet_ntop(socket.AF_INET6, struct.pack("<4I", *words))


def main():
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    pid = int(sys.argv[1])
    mine = inodes(pid)
    for table, v6 in (("tcp", False), ("tcp6", True)):
        path = "/proc/%d/net/%s" % (pid, table)
        if not os.path.exists(path):
            continue
        with open(path) as f:
            next(f)
            for line in f:
                cols = line.split()
                local, state, inode = cols[1], cols[3], cols[9]
                if state != "0A" or inode not in mine:  # 0A: LISTEN
                    continue
                host, port = local.split(":")
                print(addr(host, v6), int(port, 16))


if __name__ == "__main__":
    main()
