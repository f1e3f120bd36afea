"""gaussder_hf: scale-invariant Gaussian derivative residual networks (arXiv:2603.02843)."""
from . import (
    data,  # registers the rescaled datasets with datasets.load_dataset
    timm_models,  # registers the models with timm
)
from .configuration import GaussDerResNetConfig
from .hub import push_to_hub, save_for_hub
from .image_processing import GaussDerResNetImageProcessor
from .kernels import discrete_gaussian_kernel, gaussian_jet, gaussian_smooth, jet_indices, truncation_radius
from .layers import DSGaussDerConv, GaussDerConv
from .model import GaussDerBlock, GaussDerResNet, pool_scales, spatial_select, transfer_scales
from .modeling import GaussDerResNetForImageClassification, GaussDerResNetPreTrainedModel
from .presets import DEFAULT_INITIAL_SCALES, HUB_NAMESPACE, PRESETS, geometric_scales, get_preset

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


def _register_with_transformers() -> None:
    from transformers import AutoConfig, AutoImageProcessor, AutoModelForImageClassification

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


_register_with_transformers()

__all__ = [
    'DEFAULT_INITIAL_SCALES', 'DSGaussDerConv', 'GaussDerBlock', 'GaussDerConv', 'GaussDerResNet', 'PRESETS',
    'GaussDerResNetConfig', 'GaussDerResNetForImageClassification', 'GaussDerResNetImageProcessor',
    'GaussDerResNetPreTrainedModel', 'HUB_NAMESPACE', 'push_to_hub', 'save_for_hub',
    'create_gaussderresnet', 'discrete_gaussian_kernel', 'gaussian_jet', 'gaussian_smooth', 'geometric_scales',
    'get_preset', 'jet_indices', 'pool_scales', 'spatial_select', 'transfer_scales', 'truncation_radius',
]
