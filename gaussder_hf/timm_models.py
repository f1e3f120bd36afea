"""GaussDerResNets as timm models (Perzanowski & Lindeberg, arXiv:2603.02843).

Importing :mod:`gaussder_hf` registers ``gaussderresnet18_{fashionmnist,cifar10,stl10}``,
``dsgaussderresnet18_*`` and ``gaussderresnet10_fashionmnist`` with timm.

``timm.create_model(name, pretrained=True)`` loads the weights that ship inside the package
(:data:`PACKAGED_CHECKPOINTS`, offline); for every other model it fails at once, naming what
exists. Any model loads a checkpoint folder (``'local-dir:...'``, ``'hf-hub:...'`` or
``pretrained_cfg_overlay=dict(file=folder)``) or a weights file (``pretrained_cfg_overlay=
dict(file='....safetensors')``). A folder's ``config.json`` sets the architecture, the number
of classes and of input channels; explicit keyword arguments override it (a new head for
another ``num_classes``, an adapted first layer for another ``in_chans``). Weights are only
ever read from safetensors, and a missing, extra or mis-shaped tensor is an error.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import safe_open
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from timm.models._builder import resolve_pretrained_cfg
from timm.models._hub import download_from_hf

from .architecture import WEIGHTS_NAME, timm_pretrained_cfg
from .model import GaussDerResNet, rename_legacy_keys
from .presets import DATASET_INFO, PRESETS, get_preset

__all__ = ['checkpoint_filter_fn', 'default_cfgs', 'create_timm_model', 'PACKAGED_CHECKPOINTS']

# Prefix of the network's parameters inside GaussDerResNetForImageClassification
# (its base_model_prefix): checkpoints written by transformers' save_pretrained and Trainer.
HF_PREFIX = 'gaussderresnet.'


def _checkpoints_root() -> Path:
    package = Path(__file__).resolve().parent
    if (package / 'checkpoints').is_dir():  # installed wheel: the committed checkpoints ship inside
        return package / 'checkpoints'
    return package.parent / 'checkpoints'  # source checkout: they stay at the repo root


def _packaged_checkpoints() -> dict[str, Path]:
    root = _checkpoints_root()
    return {name: root / name for name in PRESETS
            if (root / name / WEIGHTS_NAME).is_file() and (root / name / 'config.json').is_file()}


# Registered models whose trained weights ship with the package: name -> checkpoint folder.
PACKAGED_CHECKPOINTS = _packaged_checkpoints()


def checkpoint_filter_fn(state_dict: dict[str, torch.Tensor], model: GaussDerResNet) -> dict[str, torch.Tensor]:
    """Returns ``state_dict`` adapted to ``model``: input channels of the first layer and the classifier.

    timm's own input-conv adaptation handles 4-D conv weights only; a GD layer's weight is
    ``(C_out, C_in, J)``. Summing over input channels gives a 1-channel layer with the same
    response to grey images; repeating and rescaling gives more channels (as timm does).
    """
    # transformers' save_pretrained and Trainer store the network under its base_model_prefix.
    if state_dict and all(k.startswith(HF_PREFIX) for k in state_dict):
        state_dict = {k[len(HF_PREFIX):]: v for k, v in state_dict.items()}
    state_dict = rename_legacy_keys(state_dict)  # the parameter names of earlier versions
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
    _check_complete(state_dict, model)
    return state_dict


def _check_complete(state_dict: dict[str, torch.Tensor], model: GaussDerResNet) -> None:
    """Raises unless ``state_dict`` fills every tensor of ``model`` (bar a dropped head) with the right shape.

    timm loads non-strictly whenever the head is replaced, which would leave a missing tensor
    randomly initialised without a word; an extra tensor means another architecture.
    """
    expected = model.state_dict()
    replaced_head = 'head_conv.weight' not in state_dict and model.head_conv is not None
    missing = [k for k in expected if k not in state_dict and not (replaced_head and k.startswith('head_'))]
    unexpected = [k for k in state_dict if k not in expected]
    mismatched = [f'{k}: checkpoint {tuple(v.shape)}, model {tuple(expected[k].shape)}'
                  for k, v in state_dict.items() if k in expected and v.shape != expected[k].shape]
    problems = []
    if missing:
        problems.append(f'missing tensor(s) {missing}')
    if unexpected:
        problems.append(f'unexpected tensor(s) {unexpected}')
    if mismatched:
        problems.append(f'shape mismatch {mismatched}')
    if problems:
        raise ValueError(
            'the checkpoint does not fit the GaussDerResNet built from its config: ' + '; '.join(problems)
            + ' (a truncated file, or architecture arguments that differ from the checkpoint\'s)')


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
        kwargs = _pretrained_kwargs(variant, kwargs)
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


def _no_weights_message(variant: str) -> str:
    shipped = ', '.join(sorted(PACKAGED_CHECKPOINTS)) or 'none'
    return (
        f'no pretrained weights are published for {variant!r} (models with weights: {shipped}). Train one with '
        f'recipes/train.py, then load its folder with timm.create_model(\'local-dir:<folder>\', pretrained=True), '
        f"'hf-hub:<repo id>' or pretrained_cfg_overlay=dict(file='<folder or .safetensors file>')")


def _read_folder_config(cfg: dict, cache_dir) -> dict | None:
    """Returns the ``config.json`` of the checkpoint folder the resolved ``cfg`` points at, if any.

    Rewrites ``cfg['file']`` from a folder to the weights file in it.
    """
    if cfg.get('source') == 'hf-hub':  # timm has fetched (or found cached) config.json already
        return json.loads(Path(download_from_hf(cfg['hf_hub_id'], 'config.json', cache_dir=cache_dir)).read_text())
    file = cfg.get('file')
    if cfg.get('source') == 'local-dir' or (file and Path(file).is_dir()):
        folder = Path(file)
        config_file = folder / 'config.json'
        if cfg.get('source') != 'local-dir':
            cfg['file'] = str(folder / WEIGHTS_NAME)
        return json.loads(config_file.read_text()) if config_file.is_file() else None
    return None


def _folder_model_args(config: dict) -> dict:
    """Returns the :class:`GaussDerResNet` arguments a checkpoint's ``config.json`` describes."""
    model_type = config.get('model_type')
    if model_type is not None:
        from .configuration import GaussDerResNetConfig  # imports transformers: only when needed

        if model_type != GaussDerResNetConfig.model_type:
            raise ValueError(f'config.json describes a {model_type!r} model, not a GaussDerResNet')
        # The fields are the source of truth; reading checks that timm's copy agrees.
        return GaussDerResNetConfig.from_dict(dict(config)).model_args()
    # A folder written by timm's own save_for_hf: model_args plus the class and channel counts.
    pretrained_cfg = config.get('pretrained_cfg', {})
    args = dict(config.get('model_args', {}))
    num_classes = config.get('num_classes', pretrained_cfg.get('num_classes'))
    if num_classes is not None:
        args.setdefault('num_classes', num_classes)
    if pretrained_cfg.get('input_size'):
        args.setdefault('in_chans', pretrained_cfg['input_size'][0])
    return args


def _tensor_io(cfg: dict) -> tuple[int | None, int | None]:
    """Returns (classes, input channels) of a bare weights file or state dict, read from its tensor shapes."""
    shapes = {}
    if cfg.get('state_dict'):
        shapes = {k: tuple(v.shape) for k, v in cfg['state_dict'].items()}
    elif cfg.get('file') and str(cfg['file']).endswith('.safetensors') and Path(cfg['file']).is_file():
        with safe_open(cfg['file'], framework='pt') as weights:
            # safe_open is not iterable: keys() it is.
            shapes = {k: tuple(weights.get_slice(k).get_shape()) for k in weights.keys()}  # noqa: SIM118
    shapes = {k[len(HF_PREFIX):] if k.startswith(HF_PREFIX) else k: v for k, v in shapes.items()}
    head, stem = shapes.get('head_conv.weight'), shapes.get('stem_conv.weight')
    return (head[0] if head else None), (stem[1] if stem else None)


def _pretrained_kwargs(variant: str, kwargs: dict) -> dict:
    """Returns ``kwargs`` with the architecture of the pretrained source and its resolved ``pretrained_cfg``.

    Fails at once, before any download attempt, for a model without published weights.
    """
    kwargs = dict(kwargs)
    cfg = resolve_pretrained_cfg(variant, kwargs.pop('pretrained_cfg', None),
                                 kwargs.pop('pretrained_cfg_overlay', None)).to_dict()
    if not (cfg.get('state_dict') or cfg.get('file') or cfg.get('url') or cfg.get('hf_hub_id')):
        raise ValueError(_no_weights_message(variant))
    if cfg.get('source') == 'hf-hub':
        cfg['hf_hub_filename'] = WEIGHTS_NAME  # never timm's fallback to a pickled pytorch_model.bin
    folder_config = _read_folder_config(cfg, kwargs.get('cache_dir'))
    if folder_config is not None:
        # timm pre-fills the keyword arguments with the folder's model_args: those are not the
        # user's, so the folder's own values replace them; anything else the user passed wins.
        from_folder = kwargs.pop('pretrained_model_args', None) or {}
        folder_args = _folder_model_args(folder_config)
        for key, value in folder_args.items():
            if key not in kwargs or (key in from_folder and kwargs[key] == from_folder[key]):
                kwargs[key] = value
        kwargs['pretrained_model_args'] = from_folder
        source_classes, source_chans = folder_args.get('num_classes'), folder_args.get('in_chans')
        if cfg.get('source') not in ('local-dir', 'hf-hub'):
            # A folder given as a file overlay: its preprocessing, not the named preset's (timm
            # itself reads it from the folder for local-dir and hf-hub sources).
            folder_cfg = folder_config.get('pretrained_cfg', {})
            cfg.update({k: folder_cfg[k] for k in ('input_size', 'mean', 'std', 'interpolation', 'crop_pct')
                        if k in folder_cfg})
            if folder_config.get('label_names'):
                cfg['label_names'] = folder_config['label_names']
    else:
        source_classes, source_chans = _tensor_io(cfg)
    # Describe what the checkpoint holds, so that timm replaces the head (and the first layer is
    # adapted) exactly when the model asked for differs from it.
    if source_classes is not None:
        cfg['num_classes'] = source_classes
    if source_chans is not None and cfg.get('input_size'):
        cfg['input_size'] = (source_chans, *cfg['input_size'][1:])
    kwargs['pretrained_cfg'] = cfg
    return kwargs


def _cfg(variant: str) -> dict:
    dataset = variant.rsplit('_', 1)[1]
    info = DATASET_INFO[dataset]
    # Only weights that exist are named: timm.list_models(pretrained=True) lists what loads.
    folder = PACKAGED_CHECKPOINTS.get(variant)
    return timm_pretrained_cfg(
        input_size=info['input_size'], mean=info['mean'], std=info['std'], num_classes=PRESETS[variant]['num_classes'],
        file=str(folder) if folder else None, test_input_size=info['test_input_size'], pool_size=None,
        paper_name='Scale-invariant Gaussian derivative residual networks',
        origin_url='https://arxiv.org/abs/2603.02843')


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
