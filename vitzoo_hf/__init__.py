"""vitzoo_hf: a Hugging Face-native model zoo of Vision Transformers.

`import vitzoo_hf` is cheap (no torch, no transformers), so `vitzoo plan`, `vitzoo --help` and the local Hub start
fast. The zoo's model classes are still registered with transformers' Auto classes for anyone who imports
vitzoo_hf: at once if transformers is already imported, otherwise the moment it is (a one-shot import hook), so
`AutoModelForImageClassification.from_pretrained(zoo_checkpoint)` returns a `ZooViTForImageClassification`.
`vitzoo_hf.register()` does the same explicitly. Checkpoints also carry `modeling.py` and an `auto_map`, so
`trust_remote_code=True` loads them in a process that has never heard of vitzoo_hf.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import importlib.util
import sys
import warnings
from types import ModuleType
from typing import Any

from vitzoo_hf.errors import ZooError

__version__ = "0.1.0"

_MODEL_CLASSES = ("ZooViTConfig", "ZooViTForImageClassification", "ZooViTModel")
_registered = False


def register() -> None:
    """Register the zoo's classes with transformers' Auto classes (idempotent; imports torch and transformers)."""
    global _registered
    if _registered:
        return
    from transformers import AutoConfig, AutoModel, AutoModelForImageClassification

    from vitzoo_hf.modeling import ZooViTConfig, ZooViTForImageClassification, ZooViTModel

    if _registered:  # importing vitzoo_hf.modeling registered already (see _RegisterAfterImport)
        return
    AutoConfig.register(ZooViTConfig.model_type, ZooViTConfig, exist_ok=True)
    AutoModel.register(ZooViTConfig, ZooViTModel, exist_ok=True)
    AutoModelForImageClassification.register(ZooViTConfig, ZooViTForImageClassification, exist_ok=True)
    # save_pretrained then ships modeling.py with every checkpoint (config.json's auto_map points at it).
    ZooViTConfig.register_for_auto_class()
    ZooViTModel.register_for_auto_class("AutoModel")
    ZooViTForImageClassification.register_for_auto_class("AutoModelForImageClassification")
    _registered = True


class _RunAfter(importlib.abc.Loader):
    """Wraps a module's real loader and calls `register` once the module has executed."""

    def __init__(self, loader: importlib.abc.Loader) -> None:
        self._loader = loader

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType | None:
        return self._loader.create_module(spec)

    def exec_module(self, module: ModuleType) -> None:
        self._loader.exec_module(module)
        name = module.__spec__.name if module.__spec__ else module.__name__
        if name == "transformers":
            modeling = sys.modules.get("vitzoo_hf.modeling")
            if modeling is not None:  # vitzoo_hf.modeling is importing transformers: register after it is done
                return
        try:
            register()
        except ImportError as err:  # e.g. transformers without torch: the zoo's models cannot load anyway
            warnings.warn(f"vitzoo_hf: zoo models not registered with transformers ({err}); install torch and "
                          "call vitzoo_hf.register()", stacklevel=2)

    def __getattr__(self, name: str) -> Any:  # get_resource_reader, is_package, ... of the real loader
        return getattr(self._loader, name)


class _RegisterAfterImport(importlib.abc.MetaPathFinder):
    """One-shot hook: the first import of transformers (or of vitzoo_hf.modeling) ends with `register()`."""

    names = ("transformers", "vitzoo_hf.modeling")

    def find_spec(self, fullname: str, path: Any, target: ModuleType | None = None):
        if fullname not in self.names or _registered:
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None:
                if spec.loader is not None and hasattr(spec.loader, "exec_module"):
                    spec.loader = _RunAfter(spec.loader)
                return spec
        return None


if "transformers" in sys.modules or "vitzoo_hf.modeling" in sys.modules:
    register()
elif not any(isinstance(f, _RegisterAfterImport) for f in sys.meta_path):
    sys.meta_path.insert(0, _RegisterAfterImport())


def __getattr__(name: str) -> Any:
    """The model classes (torch) and `Zoo` (datasets), imported on first use: `from vitzoo_hf import Zoo` works."""
    if name in _MODEL_CLASSES:
        register()
        from vitzoo_hf import modeling

        return getattr(modeling, name)
    if name == "Zoo":
        from vitzoo_hf.zoo import Zoo

        return Zoo
    raise AttributeError(f"module 'vitzoo_hf' has no attribute {name!r}")


__all__ = [*_MODEL_CLASSES, "Zoo", "ZooError", "__version__", "register"]
