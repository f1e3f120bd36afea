"""gaussder_hf: scale-invariant Gaussian derivative residual networks (arXiv:2603.02843)."""
from .kernels import discrete_gaussian_kernel, gaussian_jet, gaussian_smooth, jet_indices, truncation_radius
from .layers import DSGaussDerConv, GaussDerConv
from .model import GaussDerBlock, GaussDerResNet, pool_scales, spatial_select, transfer_scales
from .presets import DEFAULT_INITIAL_SCALES, HUB_NAMESPACE, PRESETS, geometric_scales, get_preset
from . import timm_models  # registers the models with timm

__version__ = '0.1.0'


def create_gaussderresnet(name: str, **overrides) -> GaussDerResNet:
    """Returns a randomly initialised :class:`GaussDerResNet` built from preset ``name``.

    Keyword arguments override single preset fields, e.g. ``initial_scales=(1.0,)``.
    """
    args = get_preset(name)
    unknown = set(overrides) - set(args) - {'device', 'dtype'}
    if unknown:
        raise ValueError(f'unknown GaussDerResNet argument(s) {sorted(unknown)} for preset {name!r}')
    args.update(overrides)
    return GaussDerResNet(**args)


__all__ = [
    'DEFAULT_INITIAL_SCALES', 'DSGaussDerConv', 'GaussDerBlock', 'GaussDerConv', 'GaussDerResNet', 'PRESETS',
    'create_gaussderresnet', 'discrete_gaussian_kernel', 'gaussian_jet', 'gaussian_smooth', 'geometric_scales',
    'get_preset', 'jet_indices', 'pool_scales', 'spatial_select', 'transfer_scales', 'truncation_radius',
]
