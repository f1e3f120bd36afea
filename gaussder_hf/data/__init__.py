"""The rescaled benchmark datasets as Hugging Face ``datasets`` builders.

After ``import gaussder_hf``, ``load_dataset('rescaled_fashion_mnist' | 'rescaled_cifar10' |
'rescaled_stl10', ...)`` works by bare name, and so does ``load_dataset('rescaled_images', base=...)``,
which turns any image-classification dataset into the same splits (:mod:`.rescaled_images`).
datasets 5 has no loading scripts; the narrowest
hook is ``datasets.load.dataset_module_factory``, which maps a name to the module holding its
builder: it is wrapped so that these names map to this package's modules and every other
name goes to datasets unchanged. ``tests/test_datasets.py`` pins the hook, so a datasets release
that moves it fails loudly instead of silently loading something else.
"""
from __future__ import annotations

import functools
import hashlib
import importlib
import inspect

import datasets
import datasets.load

from ..presets import DATASET_INFO
from .builder import RescaledConfig, RescaledImageBuilder, split_names
from .rescaled_cifar10 import RescaledCIFAR10
from .rescaled_fashion_mnist import RescaledFashionMNIST
from .rescaled_images import RescaledImages, RescaledImagesConfig
from .rescaled_stl10 import RescaledSTL10, stl10_split_ids

__all__ = [
    'BUILDERS', 'RescaledCIFAR10', 'RescaledConfig', 'RescaledFashionMNIST', 'RescaledImageBuilder', 'RescaledImages',
    'RescaledImagesConfig', 'RescaledSTL10',
    'builder_for', 'dataset_background', 'processor_settings', 'split_names', 'stl10_split_ids',
]

#: The builders ``load_dataset`` finds by name. ``rescaled_images`` has no fixed source, canvas or
#: background: they are its options (``base=``, ``canvas_size=``, ``background=``...).
BUILDERS: dict[str, type[datasets.GeneratorBasedBuilder]] = {
    'rescaled_fashion_mnist': RescaledFashionMNIST,
    'rescaled_cifar10': RescaledCIFAR10,
    'rescaled_stl10': RescaledSTL10,
    'rescaled_images': RescaledImages,
}
_GENERIC = ('rescaled_images',)


def builder_for(name: str, **kwargs) -> RescaledImageBuilder:
    """Returns the builder of dataset ``name``; ``kwargs`` go to the builder (``data_dir``, ``max_examples``...)."""
    if name not in BUILDERS:
        raise ValueError(f'unknown dataset {name!r}; known: {", ".join(BUILDERS)}')
    return BUILDERS[name](dataset_name=name, **kwargs)


def dataset_background(dataset: str) -> str:
    """Returns the canvas background of a rescaled dataset (name, e.g. ``'rescaled_fashion_mnist'``, or preset key).

    ``'fashionmnist'`` works like ``'rescaled_fashion_mnist'``.

    Read from the dataset's builder (``BACKGROUND``), the one place that draws its canvases.
    """
    name = DATASET_INFO[dataset]['dataset'] if dataset in DATASET_INFO else dataset
    if name in _GENERIC:
        raise ValueError(f'{name!r} has no fixed background: it is the background= option its dataset was built with')
    if name not in BUILDERS:
        raise ValueError(f'unknown dataset {dataset!r}; known: {", ".join(BUILDERS)} or {", ".join(DATASET_INFO)}')
    return BUILDERS[name].BACKGROUND


def processor_settings(dataset: str, dataset_args: dict | None = None) -> dict:
    """Returns ``save_for_hub``'s ``canvas_size`` and ``background`` for a network trained on rescaled ``dataset``.

    The canvas of the dataset's test split at size factor 1 and the dataset's background, so
    that the saved image processor puts an image at its native size where that split has it.
    For ``rescaled_images`` both are its options in ``dataset_args`` (no canvas when it chose
    its own from the data). ``{}`` for a dataset that is not one of the rescaled builders (e.g.
    an exported folder).
    """
    builder = BUILDERS.get(dataset)
    if builder is None:
        return {}
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
    original = datasets.load.dataset_module_factory
    if getattr(original, '_gaussder_hf_names', None):
        return

    @functools.wraps(original)
    def dataset_module_factory(path, *args, **kwargs):
        builder = BUILDERS.get(path)
        if builder is None:
            return original(path, *args, **kwargs)
        return datasets.load.DatasetModule(
            builder.__module__, _module_hash(builder.__module__), {'dataset_name': path})

    dataset_module_factory._gaussder_hf_names = tuple(BUILDERS)
    datasets.load.dataset_module_factory = dataset_module_factory


_register()
