"""The rescaled benchmark datasets as Hugging Face ``datasets`` builders.

After ``import gaussder_hf``, ``load_dataset('rescaled_fashion_mnist' | 'rescaled_cifar10' |
'rescaled_stl10', ...)`` works by bare name, and so does ``load_dataset('rescaled_images', base=...)``,
which turns any image-classification dataset into the same splits (:mod:`.rescaled_images`).
datasets 5 has no loading scripts; the narrowest
hook is ``datasets.load.dataset_module_factory``, which maps a name to the module holding its
builder: it is wrapped so that these names map to this package's modules and every other
name goes to datasets unchanged. ``tests/test_datasets.py`` pins the hook, so a datasets release
that moves it fails loudly instead of silently loading something else.

Importing this module imports neither datasets nor the builders: the hook is put in place when
datasets is imported (:mod:`gaussder_hf._registration`), and a builder's module is imported
when its name is first used (``BUILDERS``, ``builder_for``, ``load_dataset``).
"""
from __future__ import annotations

import functools
import hashlib
import importlib
import inspect
from typing import TYPE_CHECKING

from ..presets import DATASET_INFO

if TYPE_CHECKING:  # at run time __getattr__ imports these on first use: the builders need datasets and torch
    from .builder import RescaledConfig, RescaledImageBuilder, split_names
    from .rescaled_cifar10 import RescaledCIFAR10
    from .rescaled_fashion_mnist import RescaledFashionMNIST
    from .rescaled_images import RescaledImages, RescaledImagesConfig
    from .rescaled_stl10 import RescaledSTL10, stl10_split_ids

    BUILDERS: dict[str, type[RescaledImageBuilder]]

__all__ = [
    'BUILDERS', 'BUILDER_NAMES', 'RescaledCIFAR10', 'RescaledConfig', 'RescaledFashionMNIST', 'RescaledImageBuilder',
    'RescaledImages', 'RescaledImagesConfig', 'RescaledSTL10',
    'builder_for', 'dataset_background', 'processor_settings', 'split_names', 'stl10_split_ids',
]

# Dataset name -> (module, class) of its builder. ``BUILDERS`` is the same mapping with the
# classes imported; the names alone (``BUILDER_NAMES``) import nothing, for the command line
# and for the load_dataset hook, which imports a builder only when its name is asked for.
_BUILDER_CLASSES = {
    'rescaled_fashion_mnist': ('rescaled_fashion_mnist', 'RescaledFashionMNIST'),
    'rescaled_cifar10': ('rescaled_cifar10', 'RescaledCIFAR10'),
    'rescaled_stl10': ('rescaled_stl10', 'RescaledSTL10'),
    'rescaled_images': ('rescaled_images', 'RescaledImages'),
}
#: The dataset names ``load_dataset`` finds.
BUILDER_NAMES: tuple[str, ...] = tuple(_BUILDER_CLASSES)
_GENERIC = ('rescaled_images',)

# Other public name -> the submodule that defines it.
_LAZY_NAMES = {
    'RescaledConfig': 'builder', 'RescaledImageBuilder': 'builder', 'split_names': 'builder',
    'RescaledCIFAR10': 'rescaled_cifar10', 'RescaledFashionMNIST': 'rescaled_fashion_mnist',
    'RescaledImages': 'rescaled_images', 'RescaledImagesConfig': 'rescaled_images',
    'RescaledSTL10': 'rescaled_stl10', 'stl10_split_ids': 'rescaled_stl10',
}


def _builder_class(name: str) -> type[RescaledImageBuilder]:
    module, cls = _BUILDER_CLASSES[name]
    return getattr(importlib.import_module(f'{__name__}.{module}'), cls)


def __getattr__(name: str):
    if name == 'BUILDERS':
        #: The builders ``load_dataset`` finds by name. ``rescaled_images`` has no fixed source,
        #: canvas or background: they are its options (``base=``, ``canvas_size=``, ``background=``...).
        value = {dataset: _builder_class(dataset) for dataset in BUILDER_NAMES}
    elif name in _LAZY_NAMES:
        value = getattr(importlib.import_module(f'{__name__}.{_LAZY_NAMES[name]}'), name)
    else:
        raise AttributeError(f'module {__name__!r} has no attribute {name!r}')
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY_NAMES) | {'BUILDERS'})


def builder_for(name: str, **kwargs) -> RescaledImageBuilder:
    """Returns the builder of dataset ``name``; ``kwargs`` go to the builder (``data_dir``, ``max_examples``...)."""
    if name not in _BUILDER_CLASSES:
        raise ValueError(f'unknown dataset {name!r}; known: {", ".join(BUILDER_NAMES)}')
    return _builder_class(name)(dataset_name=name, **kwargs)


def dataset_background(dataset: str) -> str:
    """Returns the canvas background of a rescaled dataset (name, e.g. ``'rescaled_fashion_mnist'``, or preset key).

    ``'fashionmnist'`` works like ``'rescaled_fashion_mnist'``.

    Read from the dataset's builder (``BACKGROUND``), the one place that draws its canvases.
    """
    name = DATASET_INFO[dataset]['dataset'] if dataset in DATASET_INFO else dataset
    if name in _GENERIC:
        raise ValueError(f'{name!r} has no fixed background: it is the background= option its dataset was built with')
    if name not in _BUILDER_CLASSES:
        raise ValueError(
            f'unknown dataset {dataset!r}; known: {", ".join(BUILDER_NAMES)} or {", ".join(DATASET_INFO)}')
    return _builder_class(name).BACKGROUND


def processor_settings(dataset: str, dataset_args: dict | None = None) -> dict:
    """Returns ``save_for_hub``'s ``canvas_size`` and ``background`` for a network trained on rescaled ``dataset``.

    The canvas of the dataset's test split at size factor 1 and the dataset's background, so
    that the saved image processor puts an image at its native size where that split has it.
    For ``rescaled_images`` both are its options in ``dataset_args`` (no canvas when it chose
    its own from the data). ``{}`` for a dataset that is not one of the rescaled builders (e.g.
    an exported folder).
    """
    if dataset not in _BUILDER_CLASSES:
        return {}
    builder = _builder_class(dataset)
    if dataset in _GENERIC:
        args = dataset_args or {}
        settings = {'background': args.get('background', 'black')}
        side = args.get('test_canvas_size') or args.get('canvas_size')
        if side is not None:
            height, width = (side, side) if isinstance(side, int) else tuple(side)
            settings['canvas_size'] = {'height': height, 'width': width}
        return settings
    return {'canvas_size': {'height': builder.TEST_CANVAS, 'width': builder.TEST_CANVAS},
            'background': builder.BACKGROUND}


@functools.cache
def _module_hash(module_name: str) -> str:
    # Like datasets' packaged modules: the cache is keyed by the code that builds the data.
    source = inspect.getsource(importlib.import_module(module_name))
    shared = inspect.getsource(importlib.import_module(f'{__name__}.builder'))
    return hashlib.sha256((source + shared).encode()).hexdigest()[:16]


def _register() -> None:
    """Routes ``load_dataset``'s names in ``BUILDER_NAMES`` to this package's builders (idempotent).

    Called by :mod:`gaussder_hf._registration` once datasets is imported.
    """
    import datasets.load

    original = datasets.load.dataset_module_factory
    if getattr(original, '_gaussder_hf_names', None):
        return

    @functools.wraps(original)
    def dataset_module_factory(path, *args, **kwargs):
        if not isinstance(path, str) or path not in _BUILDER_CLASSES:
            return original(path, *args, **kwargs)
        module = f'{__name__}.{_BUILDER_CLASSES[path][0]}'
        return datasets.load.DatasetModule(module, _module_hash(module), {'dataset_name': path})

    dataset_module_factory._gaussder_hf_names = BUILDER_NAMES
    datasets.load.dataset_module_factory = dataset_module_factory
