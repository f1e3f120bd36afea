"""Architecture presets of the paper's rescaled benchmarks, as data (Table 1, Table 4).

One dict per registered model name. The timm entrypoints, the transformers config, the recipe
configs and the model cards all read these; nothing else restates them.

The paper's channel lists lost their repeat marks in extraction (DESIGN.md §3). The lists
below were chosen because they reproduce the paper's parameter counts of both the standard and
the depthwise-separable network to within 0.4% (295k / 120k, 1.78M / 547k, 2.07M / 669k): see
the table in README.md and ``tests/test_presets.py``. ``channels[0]`` is the output of the first
layer and ``channels[b]`` the output of residual block ``b``.
"""
from __future__ import annotations

import math
from types import MappingProxyType

__all__ = ['DEFAULT_INITIAL_SCALES', 'PRESETS', 'DATASET_INFO', 'HUB_NAMESPACE', 'geometric_scales', 'get_preset']

# The Hub organisation that hosts every checkpoint of this package (timm cfgs, model cards).
HUB_NAMESPACE = 'gaussder-hf'


def geometric_scales(first: float, ratio: float, count: int) -> tuple[float, ...]:
    """Returns ``count`` initial scales ``first * ratio**i`` (eq. 42)."""
    if count < 1:
        raise ValueError(f'count must be >= 1, got {count!r}')
    if not ratio > 0:
        raise ValueError(f'ratio must be > 0, got {ratio!r}')
    return tuple(first * ratio ** i for i in range(count))


# Inputs in [0, 1] are mapped to [-1, 1]. The first GD layer has no zero-order term, so the
# network ignores a constant offset anyway; the scale only matters relative to BN.
_MEAN_STD_GREY = dict(mean=(0.5,), std=(0.5,))
_MEAN_STD_RGB = dict(mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))

# sigma0 in {1/2, 1/sqrt2, 1, sqrt2, 2, 2 sqrt2}: six channels, ratio sqrt2 (§5.1, reconstructed).
DEFAULT_INITIAL_SCALES = geometric_scales(0.5, math.sqrt(2.0), 6)

_FASHION_MNIST_CLASSES = (
    'T-shirt/top', 'Trouser', 'Pullover', 'Dress', 'Coat', 'Sandal', 'Shirt', 'Sneaker', 'Bag', 'Ankle boot')
_CIFAR10_CLASSES = ('airplane', 'automobile', 'bird', 'cat', 'deer', 'dog', 'frog', 'horse', 'ship', 'truck')
_STL10_CLASSES = ('airplane', 'bird', 'car', 'cat', 'deer', 'dog', 'horse', 'monkey', 'ship', 'truck')

DATASET_INFO = MappingProxyType({
    'fashionmnist': MappingProxyType(dict(
        dataset='rescaled_fashion_mnist', input_size=(1, 72, 72), test_input_size=(1, 72, 72),
        class_names=_FASHION_MNIST_CLASSES, background='black', **_MEAN_STD_GREY)),
    'cifar10': MappingProxyType(dict(
        dataset='rescaled_cifar10', input_size=(3, 64, 64), test_input_size=(3, 64, 64),
        class_names=_CIFAR10_CLASSES, background='mirror', **_MEAN_STD_RGB)),
    'stl10': MappingProxyType(dict(
        dataset='rescaled_stl10', input_size=(3, 96, 96), test_input_size=(3, 192, 192),
        class_names=_STL10_CLASSES, background='mirror', **_MEAN_STD_RGB)),
})

# Architecture per dataset (Table 1). The DS variants differ only in `separable_from_block`.
_ARCHITECTURES = {
    'fashionmnist': dict(
        in_chans=1, num_classes=10, channels=(24, 24, 24, 48, 48, 48, 64, 64, 128),
        jet_order=2, zero_order=False, scale_ratio=1.13, eps=0.01,
        spatial_pool='center', scale_pool='max', scale_dropout=0.2),
    'cifar10': dict(
        in_chans=3, num_classes=10, channels=(48, 48, 64, 64, 64, 128, 160, 256, 256),
        jet_order=2, zero_order=False, scale_ratio=1.2, eps=0.005,
        spatial_pool='center', scale_pool='max', scale_dropout=0.3),
    'stl10': dict(
        in_chans=3, num_classes=10, channels=(16, 32, 32, 96, 128, 128, 192, 192, 256),
        jet_order=2, zero_order=True, scale_ratio=1.32, eps=0.005,
        spatial_pool='max', scale_pool='max', scale_dropout=0.3),
}

# DSGaussDerResNet: standard GD layers in the first layer, the first 4 residual blocks and the
# last layer; depthwise-separable ones in blocks 5-8 (App. A.2).
_DS_FROM_BLOCK = 5


def _build_presets() -> dict[str, MappingProxyType]:
    presets = {}
    for dataset, arch in _ARCHITECTURES.items():
        common = dict(arch, initial_scales=DEFAULT_INITIAL_SCALES)
        presets[f'gaussderresnet18_{dataset}'] = MappingProxyType(dict(common, separable_from_block=None))
        presets[f'dsgaussderresnet18_{dataset}'] = MappingProxyType(dict(common, separable_from_block=_DS_FROM_BLOCK))
    # Not in the paper: a 10-layer variant (first layer, 4 residual blocks of 24 channels, last
    # layer) with Table 1's Fashion-MNIST settings, small enough to train on a laptop CPU. It is
    # the model of the CPU experiment in results/ and of the fast tests and demos.
    presets['gaussderresnet10_fashionmnist'] = MappingProxyType(dict(
        _ARCHITECTURES['fashionmnist'], channels=(24,) * 5, initial_scales=DEFAULT_INITIAL_SCALES,
        separable_from_block=None))
    return presets


PRESETS = MappingProxyType(_build_presets())


def get_preset(name: str) -> dict:
    """Returns a fresh, mutable copy of the model arguments of preset ``name``."""
    if name not in PRESETS:
        raise ValueError(f'unknown preset {name!r}; known presets: {", ".join(sorted(PRESETS))}')
    return dict(PRESETS[name])
