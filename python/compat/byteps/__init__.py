# gobps-byteps-shim: bpsrun --byteps-compat looks for this line.
"""A ``byteps`` package that is gobps: opt-in, so that an unedited BytePS
script runs on gobps.

It is not on Python's path by default. ``bpsrun --byteps-compat`` puts its
directory (``python/compat`` of the gobps source tree) first on the
workers' PYTHONPATH; without bpsrun, do the same by hand::

    PYTHONPATH=/path/to/gobps/python/compat:/path/to/gobps/python python3 train.py

Importing ``byteps.X`` then gives the module ``gobps.X`` itself (not a
copy): ``byteps.torch`` is ``gobps.torch``, ``byteps.torch.parallel`` is
``gobps.torch.parallel``, ``byteps.torch.cross_barrier`` is
``gobps.torch.cross_barrier``, and so on. A byteps module gobps does not
have (``byteps.tensorflow``, ``byteps.mxnet``, ...) raises
ModuleNotFoundError naming what exists.
"""

import importlib
import importlib.abc
import importlib.util
import sys

import gobps

__version__ = gobps.__version__


class _Alias(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Finds byteps.X as gobps.X: the loader replaces the module being
    imported with gobps.X in sys.modules, which is what the import returns
    and what the parent package's attribute becomes."""

    prefix = __name__ + "."

    def find_spec(self, fullname, path=None, target=None):
        if not fullname.startswith(self.prefix):
            return None
        return importlib.util.spec_from_loader(fullname, self)

    def create_module(self, spec):
        return None  # a plain module, replaced in exec_module

    def exec_module(self, module):
        name = module.__name__
        target = "gobps." + name[len(self.prefix):]
        try:
            real = importlib.import_module(target)
        except ModuleNotFoundError as e:
            if e.name is None or not target.startswith(e.name):
                raise  # something gobps itself imports is missing
            raise ModuleNotFoundError(
                "No module named %r: gobps's byteps shim maps %s to %s, which does not exist (gobps supports "
                "PyTorch: byteps.torch, byteps.torch.parallel, byteps.torch.cross_barrier, byteps.torch.ops, "
                "byteps.torch.compression)" % (name, name, target), name=name) from None
        sys.modules[name] = real


if not any(isinstance(f, _Alias) for f in sys.meta_path):
    sys.meta_path.insert(0, _Alias())
