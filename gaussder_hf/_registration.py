"""Registration with timm, transformers and datasets, run when each of them is imported.

``import gaussder_hf`` registers

* the GaussDerResNets with timm (``timm.create_model('gaussderresnet10_fashionmnist')``),
* the configuration, model and image processor with transformers' Auto classes (a saved folder
  loads with ``AutoModelForImageClassification.from_pretrained`` and ``pipeline`` without
  ``trust_remote_code``),
* the rescaled datasets with ``datasets.load_dataset`` (``load_dataset('rescaled_fashion_mnist')``),

but imports none of these libraries: together they take many seconds to import, and most uses
need one of them at most (``gaussder_hf.kernels`` needs torch only). Each registration runs at
once if its library is already imported, and otherwise right after the library's own import
finishes: a finder on ``sys.meta_path`` hands the library's module to its usual loader, wrapped
so that the registration follows its execution. The module itself is left as the usual loader
makes it (its ``__loader__`` and ``__spec__.loader`` are the usual loader's).

A registration imports gaussder_hf modules that import the library themselves
(``gaussder_hf.model`` imports timm): when such a module is what imported the library, it is only
half executed when the library's import ends, and importing it again then would fail as a
circular import. So registrations wait for the end of the outermost import, on the same thread,
of the libraries and of gaussder_hf's submodules (the finder wraps those too, to see them end).
A registration that fails warns instead of breaking the import of the library.
"""
from __future__ import annotations

import importlib
import importlib.abc
import sys
import threading
import warnings
from collections.abc import Callable

__all__ = ['install']

_PACKAGE = __name__.rpartition('.')[0]


def _register_with_timm() -> None:
    importlib.import_module(f'{_PACKAGE}.timm_models')  # its @register_model decorators do the work


def _register_with_transformers() -> None:
    from transformers import AutoConfig, AutoImageProcessor, AutoModelForImageClassification

    from .configuration import GaussDerResNetConfig
    from .image_processing import GaussDerResNetImageProcessor
    from .modeling import GaussDerResNetForImageClassification

    AutoConfig.register(GaussDerResNetConfig.model_type, GaussDerResNetConfig, exist_ok=True)
    AutoModelForImageClassification.register(
        GaussDerResNetConfig, GaussDerResNetForImageClassification, exist_ok=True)
    AutoImageProcessor.register(
        GaussDerResNetConfig, image_processor_classes={'torchvision': GaussDerResNetImageProcessor}, exist_ok=True)
    # Every folder transformers saves (save_pretrained, Trainer checkpoints, save_for_hub) then
    # carries an auto_map and a copy of the defining modules, so that it loads with
    # trust_remote_code=True where gaussder_hf is not installed.
    GaussDerResNetConfig.register_for_auto_class('AutoConfig')
    GaussDerResNetForImageClassification.register_for_auto_class('AutoModelForImageClassification')
    GaussDerResNetImageProcessor.register_for_auto_class('AutoImageProcessor')


def _register_with_datasets() -> None:
    from .data import _register

    _register()


#: Library (top-level module) -> the registration that runs once it is imported.
REGISTRATIONS: dict[str, Callable[[], None]] = {
    'timm': _register_with_timm,
    'transformers': _register_with_transformers,
    'datasets': _register_with_datasets,
}

_pending: dict[str, Callable[[], None]] = {}
_installed = False
_lock = threading.Lock()
_local = threading.local()  # depth: watched imports executing on this thread; running: in _run_ready


def _watched(name: str) -> bool:
    return name in _pending or name.startswith(f'{_PACKAGE}.')


def _run_ready() -> None:
    """Runs every pending registration whose library is imported, unless one is running on this thread."""
    if getattr(_local, 'running', False):
        return  # the loop below picks up what became ready meanwhile
    _local.running = True
    try:
        while True:
            with _lock:
                ready = next((library for library in _pending if library in sys.modules), None)
                if ready is None:
                    return
                register = _pending.pop(ready)
            try:
                register()
            except Exception as error:  # the user's import of the library must not fail because of this
                warnings.warn(f'{_PACKAGE} could not register with {ready}: {type(error).__name__}: {error}',
                              RuntimeWarning, stacklevel=2)
    finally:
        _local.running = False


class _NotifyingLoader(importlib.abc.Loader):
    """The usual loader of a watched module, followed by the registrations it made ready."""

    def __init__(self, loader: importlib.abc.Loader):
        self.loader = loader

    def __getattr__(self, name: str):
        # A spec found without importing (importlib.util.find_spec) keeps this wrapper as its loader:
        # is_package, get_source, get_resource_reader... are the usual loader's.
        if name == 'loader':
            raise AttributeError(name)
        return getattr(self.loader, name)

    def create_module(self, spec):
        return self.loader.create_module(spec)

    def exec_module(self, module) -> None:
        module.__loader__ = self.loader  # the module looks as if this wrapper never existed
        if getattr(module, '__spec__', None) is not None:
            module.__spec__.loader = self.loader
        _local.depth = getattr(_local, 'depth', 0) + 1
        try:
            self.loader.exec_module(module)
        finally:
            _local.depth -= 1
        if _local.depth == 0:
            _run_ready()


class _PostImportFinder(importlib.abc.MetaPathFinder):
    """Finds watched modules with the finders after it and wraps their loader (see the module docstring)."""

    def find_spec(self, fullname, path, target=None):
        if not _pending or not _watched(fullname):
            return None
        for finder in list(sys.meta_path):
            if isinstance(finder, _PostImportFinder):
                continue
            find_spec = getattr(finder, 'find_spec', None)
            spec = find_spec(fullname, path, target) if find_spec is not None else None
            if spec is not None:
                break
        else:
            return None
        if spec.loader is not None and hasattr(spec.loader, 'exec_module'):
            spec.loader = _NotifyingLoader(spec.loader)
        return spec


def install() -> None:
    """Registers with each library now if it is imported, or else as soon as it is (idempotent)."""
    global _installed
    with _lock:
        if not _installed:
            _pending.update(REGISTRATIONS)
            _installed = True
        if not any(isinstance(finder, _PostImportFinder) for finder in sys.meta_path):
            sys.meta_path.insert(0, _PostImportFinder())
    _run_ready()
