"""GaussDerResNets as timm models (Perzanowski & Lindeberg, arXiv:2603.02843).

Importing :mod:`gaussder_hf` registers ``gaussderresnet18_{fashionmnist,cifar10,stl10}`` and
``dsgaussderresnet18_*`` with timm, so that ``timm.create_model(name, pretrained=True)`` works,
from the Hub, the offline HF cache, a local folder (``'local-dir:...'``) or a file
(``pretrained_cfg_overlay=dict(file=...)``). Weights are only ever read from safetensors.
"""
from __future__ import annotations

from pathlib import Path

import torch
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model

from .model import GaussDerResNet
from .presets import DATASET_INFO, HUB_NAMESPACE, PRESETS, get_preset

__all__ = ['checkpoint_filter_fn', 'default_cfgs', 'create_timm_model']

PAPER_ID = 'arXiv:2603.02843'
WEIGHTS_NAME = 'model.safetensors'


def checkpoint_filter_fn(state_dict: dict[str, torch.Tensor], model: GaussDerResNet) -> dict[str, torch.Tensor]:
    """Returns ``state_dict`` adapted to ``model``: input channels of the first layer and the classifier.

    timm's own input-conv adaptation handles 4-D conv weights only; a GD layer's weight is
    ``(C_out, C_in, J)``. Summing over input channels gives a 1-channel layer with the same
    response to grey images; repeating and rescaling gives more channels (as timm does).
    """
    state_dict = dict(state_dict)
    stem = state_dict.get('stem_conv.weight')
    if stem is not None and stem.shape[1] != model.in_chans:
        source, target = stem.shape[1], model.in_chans
        if target == 1:
            stem = stem.sum(dim=1, keepdim=True)
        else:
            repeats = -(-target // source)
            stem = stem.repeat(1, repeats, 1)[:, :target] * (source / target)
        state_dict['stem_conv.weight'] = stem
    head = state_dict.get('head_conv.weight')
    if head is not None and head.shape[0] != model.num_classes:
        # Another number of classes: keep everything but the last GD layer and its BN.
        state_dict = {k: v for k, v in state_dict.items() if not k.startswith(('head_conv.', 'head_norm.'))}
    return state_dict


def _check_safetensors_only(kwargs: dict) -> None:
    """Refuses a pretrained source that is not safetensors, before timm would unpickle it."""
    files = []
    for key in ('pretrained_cfg', 'pretrained_cfg_overlay'):
        cfg = kwargs.get(key)
        if hasattr(cfg, 'to_dict'):
            cfg = cfg.to_dict()
        if isinstance(cfg, dict) and cfg.get('file'):
            files.append(Path(cfg['file']))
    for file in files:
        if file.is_dir():
            if not (file / WEIGHTS_NAME).is_file():
                raise ValueError(
                    f'{str(file)!r} has no {WEIGHTS_NAME}: gaussder_hf loads weights from safetensors only and '
                    'never unpickles a .bin/.pth file; convert a trusted one with safetensors.torch.save_file')
        elif file.suffix != '.safetensors':
            raise ValueError(
                f'gaussder_hf loads weights from safetensors only, got file={str(file)!r}; '
                'convert a trusted pickle checkpoint with safetensors.torch.save_file first')


# Layer-config switches of timm.create_model (``set_layer_config``): they choose among timm's
# layer implementations, of which a GaussDerResNet uses none, so they change nothing here.
_LAYER_CONFIG_KEYWORDS = ('scriptable', 'exportable', 'no_jit')


def _data_config_for_channels(cfg: dict, in_chans: int) -> dict:
    """Returns ``cfg`` with ``input_size``, ``test_input_size``, ``mean`` and ``std`` for ``in_chans`` channels.

    timm's scripts read the data config from ``model.pretrained_cfg``; when they build the model
    with another ``in_chans`` than the preset's, the loader must produce that many channels. A
    per-channel statistic is repeated from one channel, averaged otherwise.
    """
    cfg = dict(cfg)
    for key in ('input_size', 'test_input_size'):
        if cfg.get(key) is not None:
            cfg[key] = (in_chans, *tuple(cfg[key])[1:])
    for key in ('mean', 'std'):
        values = cfg.get(key)
        if values is not None and len(values) != in_chans:
            values = tuple(values)
            fill = values[0] if len(set(values)) == 1 else sum(values) / len(values)
            cfg[key] = (fill,) * in_chans
    return cfg


def create_timm_model(variant: str, pretrained: bool = False, **kwargs) -> GaussDerResNet:
    """Returns the timm model ``variant``; keyword arguments override preset fields.

    Takes every keyword timm's train/validate/benchmark/inference scripts pass (``drop_rate``,
    ``drop_path_rate``, ``drop_block_rate``, ``global_pool``, ``bn_momentum``, ``bn_eps``,
    ``scriptable``, ...), and ``features_only=True`` with ``out_indices`` (default: every stage)
    for a backbone returning one map per stage; see docs/features.md.
    """
    if pretrained:
        _check_safetensors_only(kwargs)
    for key in _LAYER_CONFIG_KEYWORDS:
        kwargs.pop(key, None)
    feature_cls = kwargs.pop('feature_cls', 'getter')
    if feature_cls != 'getter':
        raise ValueError(
            f"feature_cls must be 'getter' for a GaussDerResNet, got {feature_cls!r}: its blocks run once per "
            'scale channel, so hooks would see every scale channel separately; forward_intermediates pools them')
    model_args = get_preset(variant)
    model_args.update(kwargs)
    num_stages = len(tuple(model_args['channels']))
    model = build_model_with_cfg(
        GaussDerResNet,
        variant,
        pretrained,
        pretrained_filter_fn=checkpoint_filter_fn,
        feature_cfg=dict(feature_cls='getter', out_indices=tuple(range(num_stages))),
        **model_args,
    )
    # The data config follows the channels the model was built with (a script's --in-chans).
    model.pretrained_cfg = model.default_cfg = _data_config_for_channels(model.pretrained_cfg, model_args['in_chans'])
    return model


def _cfg(variant: str) -> dict:
    dataset = variant.rsplit('_', 1)[1]
    info = DATASET_INFO[dataset]
    return dict(
        hf_hub_id=f'{HUB_NAMESPACE}/{variant}',
        hf_hub_filename=WEIGHTS_NAME,  # safetensors only: never fall back to a pickle
        num_classes=PRESETS[variant]['num_classes'],
        input_size=info['input_size'],
        test_input_size=info['test_input_size'],
        fixed_input_size=False,
        pool_size=None,
        crop_pct=1.0,
        interpolation='bicubic',
        mean=info['mean'],
        std=info['std'],
        first_conv='stem_conv',
        classifier='head_conv',
        license='mit',
        paper_ids=PAPER_ID,
        paper_name='Scale-invariant Gaussian derivative residual networks',
        origin_url='https://arxiv.org/abs/2603.02843',
    )


default_cfgs = generate_default_cfgs({name: _cfg(name) for name in PRESETS})


@register_model
def gaussderresnet18_fashionmnist(pretrained: bool = False, **kwargs) -> GaussDerResNet:
    """GaussDerResNet-18 for rescaled Fashion-MNIST (1x72x72, 295k parameters)."""
    return create_timm_model('gaussderresnet18_fashionmnist', pretrained, **kwargs)


@register_model
def gaussderresnet18_cifar10(pretrained: bool = False, **kwargs) -> GaussDerResNet:
    """GaussDerResNet-18 for rescaled CIFAR-10 (3x64x64, 1.77M parameters)."""
    return create_timm_model('gaussderresnet18_cifar10', pretrained, **kwargs)


@register_model
def gaussderresnet18_stl10(pretrained: bool = False, **kwargs) -> GaussDerResNet:
    """GaussDerResNet-18 for rescaled STL-10 (3x96x96, test 3x192x192, 2.07M parameters)."""
    return create_timm_model('gaussderresnet18_stl10', pretrained, **kwargs)


@register_model
def gaussderresnet10_fashionmnist(pretrained: bool = False, **kwargs) -> GaussDerResNet:
    """A small CPU-trainable GaussDerResNet-10 for rescaled Fashion-MNIST (4 blocks x 24 channels, 25k parameters)."""
    return create_timm_model('gaussderresnet10_fashionmnist', pretrained, **kwargs)


@register_model
def dsgaussderresnet18_fashionmnist(pretrained: bool = False, **kwargs) -> GaussDerResNet:
    """Depthwise-separable GaussDerResNet-18 for rescaled Fashion-MNIST (120k parameters)."""
    return create_timm_model('dsgaussderresnet18_fashionmnist', pretrained, **kwargs)


@register_model
def dsgaussderresnet18_cifar10(pretrained: bool = False, **kwargs) -> GaussDerResNet:
    """Depthwise-separable GaussDerResNet-18 for rescaled CIFAR-10 (548k parameters)."""
    return create_timm_model('dsgaussderresnet18_cifar10', pretrained, **kwargs)


@register_model
def dsgaussderresnet18_stl10(pretrained: bool = False, **kwargs) -> GaussDerResNet:
    """Depthwise-separable GaussDerResNet-18 for rescaled STL-10 (669k parameters)."""
    return create_timm_model('dsgaussderresnet18_stl10', pretrained, **kwargs)
