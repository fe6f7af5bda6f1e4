#!/usr/bin/env python3
"""tap_relay.py PORT_FILE TARGET_PORT CAPTURE: a TCP relay on 127.0.0.1 (any
free port, written to PORT_FILE) to 127.0.0.1:TARGET_PORT that appends every
byte it forwards, both directions, to CAPTURE: what an eavesdropper on the
wire between two kvbridge workers would see."""
import socket
import sys
import threading

port_file, target, capture = sys.argv[1], int(sys.argv[2]), sys.argv[3]
lock = threading.Lock()


def pump(src, dst, out):
    try:
        while True:
            b = src.recv(65536)
            if not b:
                break
            with lock:
                out.write(b)
                out.flush()
            dst.sendall(b)
    except OSError:
        pass
    for s in (src, dst):
        try:
            s.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass


def main():
    out = open(capture, "ab")
    ls = socket.socket()
    ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    ls.bind(("127.0.0.1", 0))
    ls.listen(16)
    with open(port_file + ".tmp", "w") as f:
        f.write("%d\n" % ls.getsockname()[1])
    import os
    os.rename(port_file + ".tmp", port_file)
    while True:
        c, _ = ls.accept()
        u = socket.create_connection(("127.0.0.1", target))
        for a, b in ((c, u), (u, c)):
            threading.Thread(target=pump, args=(a, b, out), daemon=True).start()


main()
