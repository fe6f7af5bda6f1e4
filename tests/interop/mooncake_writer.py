"""A short-lived Mooncake engine: write 1 MiB into a segment, then exit
without closing anything, as a crashed or killed peer would.

Usage: mooncake_writer.py HOST DEVICES SEGMENT ADDR
Prints "wrote RC" and exits 0 when the write returned 0.
"""
import ctypes
import os
import sys

os.environ.setdefault("MC_LOG_LEVEL", "WARNING")
from mooncake.engine import TransferEngine  # noqa: E402

host, devices, seg, addr = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4], 0)
eng = TransferEngine()
if eng.initialize(host, "P2PHANDSHAKE", "rdma", devices) != 0:
    print("wrote -100", flush=True)
    sys.exit(1)
buf = ctypes.create_string_buffer(1 << 20)
if eng.register_memory(ctypes.addressof(buf), 1 << 20) != 0:
    print("wrote -101", flush=True)
    sys.exit(1)
rc = eng.transfer_sync_write(seg, ctypes.addressof(buf), addr, 1 << 20)
print("wrote %d" % rc, flush=True)
os._exit(0 if rc == 0 else 1)
