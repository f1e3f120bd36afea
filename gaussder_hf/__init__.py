"""gaussder_hf: scale-invariant Gaussian derivative residual networks (arXiv:2603.02843).

Importing the package is cheap: it imports neither torch, timm, transformers nor datasets. The
names below are imported from their modules on first access (PEP 562), and the registrations
with timm, transformers and datasets run as soon as each library is imported, before or after
this package (:mod:`gaussder_hf._registration`).
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from . import _registration
from .presets import DEFAULT_INITIAL_SCALES, HUB_NAMESPACE, PRESETS, geometric_scales, get_preset

if TYPE_CHECKING:  # what type checkers and IDEs see; at run time __getattr__ imports these on first use
    from .configuration import GaussDerResNetConfig
    from .hub import push_to_hub, save_for_hub
    from .image_processing import GaussDerResNetImageProcessor
    from .kernels import discrete_gaussian_kernel, gaussian_jet, gaussian_smooth, jet_indices, truncation_radius
    from .layers import DSGaussDerConv, GaussDerConv
    from .model import GaussDerBlock, GaussDerResNet, pool_scales, spatial_select, transfer_scales
    from .modeling import GaussDerResNetForImageClassification, GaussDerResNetPreTrainedModel

__version__ = '0.1.0'

# Public name -> the submodule that defines it (imported by __getattr__ on first access).
_LAZY_NAMES = {
    'GaussDerResNetConfig': 'configuration',
    'push_to_hub': 'hub',
    'save_for_hub': 'hub',
    'GaussDerResNetImageProcessor': 'image_processing',
    'discrete_gaussian_kernel': 'kernels',
    'gaussian_jet': 'kernels',
    'gaussian_smooth': 'kernels',
    'jet_indices': 'kernels',
    'truncation_radius': 'kernels',
    'DSGaussDerConv': 'layers',
    'GaussDerConv': 'layers',
    'GaussDerBlock': 'model',
    'GaussDerResNet': 'model',
    'pool_scales': 'model',
    'spatial_select': 'model',
    'transfer_scales': 'model',
    'GaussDerResNetForImageClassification': 'modeling',
    'GaussDerResNetPreTrainedModel': 'modeling',
}
# Submodules reachable as attributes (``gaussder_hf.kernels``) without importing them first.
_SUBMODULES = (
    'analysis', 'cli', 'configuration', 'data', 'dataset_sources', 'hub', 'image_processing', 'input_pipeline',
    'kernels', 'layers', 'model', 'modeling', 'presets', 'rescaling', 'run_folder', 'timm_models', 'visualize',
)


def __getattr__(name: str):
    module = _LAZY_NAMES.get(name)
    if module is not None:
        value = getattr(importlib.import_module(f'{__name__}.{module}'), name)
        globals()[name] = value  # later lookups do not come back here
        return value
    if name in _SUBMODULES:
        return importlib.import_module(f'{__name__}.{name}')
    raise AttributeError(f'module {__name__!r} has no attribute {name!r}')


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY_NAMES) | set(_SUBMODULES))


def create_gaussderresnet(name: str, **overrides) -> GaussDerResNet:
    """Returns a randomly initialised :class:`GaussDerResNet` built from preset ``name``.

    Keyword arguments override single preset fields, e.g. ``initial_scales=(1.0,)``.
    """
    from .model import GaussDerResNet

    args = get_preset(name)
    unknown = set(overrides) - set(args) - {'device', 'dtype'}
    if unknown:
        raise ValueError(f'unknown GaussDerResNet argument(s) {sorted(unknown)} for preset {name!r}')
    args.update(overrides)
    return GaussDerResNet(**args)


__all__ = [
    'DEFAULT_INITIAL_SCALES', 'DSGaussDerConv', 'GaussDerBlock', 'GaussDerConv', 'GaussDerResNet', 'PRESETS',
    'GaussDerResNetConfig', 'GaussDerResNetForImageClassification', 'GaussDerResNetImageProcessor',
    'GaussDerResNetPreTrainedModel', 'HUB_NAMESPACE', 'push_to_hub', 'save_for_hub',
    'create_gaussderresnet', 'discrete_gaussian_kernel', 'gaussian_jet', 'gaussian_smooth', 'geometric_scales',
    'get_preset', 'jet_indices', 'pool_scales', 'spatial_select', 'transfer_scales', 'truncation_radius',
]

# Last, so that a registration run at once (its library already imported) finds the package complete.
_registration.install()
