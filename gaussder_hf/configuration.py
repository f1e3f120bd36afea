"""``GaussDerResNetConfig``: the transformers configuration of a GaussDerResNet.

One ``config.json`` serves both libraries: the transformers fields below, plus the keys timm's
``hf-hub:`` / ``local-dir:`` loaders read (``architecture``, ``num_classes``, ``num_features``,
``model_args``, ``pretrained_cfg``, ``label_names``), written by :meth:`to_dict` and accepted
(used for the labels only when id2label is missing) when a config is read back.
"""
from __future__ import annotations

import math

from huggingface_hub.dataclasses import strict
from transformers import PreTrainedConfig

from .kernels import MAX_JET_ORDER
from .model import SCALE_POOLS, SPATIAL_POOLS
from .presets import DATASET_INFO, PRESETS, get_preset

__all__ = ['GaussDerResNetConfig']

_DEFAULT = PRESETS['gaussderresnet18_fashionmnist']

# Keys transformers itself may pass back when reading a saved config.
_TRANSFORMERS_KEYS = {
    'num_labels', 'torch_dtype', 'name_or_path', '_commit_hash', 'transformers_version', 'output_attentions',
    'attn_implementation', 'experts_implementation', 'model_type',
}
# Keys that make the same config.json loadable by timm.
_TIMM_KEYS = {'architecture', 'num_classes', 'num_features', 'model_args', 'pretrained_cfg', 'label_names'}


@strict
class GaussDerResNetConfig(PreTrainedConfig):
    r"""Configuration of a :class:`~gaussder_hf.GaussDerResNet` (arXiv:2603.02843).

    Args:
        num_channels: input (colour) channels.
        channels: output channels of the first GD layer and of each residual block.
        jet_order: highest order of the Gaussian derivatives, 1..3.
        zero_order: zero-order term in every layer after the first.
        initial_scales: ``sigma0`` of each scale channel.
        scale_ratio: ratio between the scales of consecutive effective layers.
        eps: relative truncation error of the discrete Gaussian kernels.
        spatial_pool: ``'center'`` or ``'max'``.
        scale_pool: ``'max'``, ``'logsumexp'`` or ``'avg'``.
        scale_dropout: dropout on the per-scale-channel scores during training.
        separable_from_block: first depthwise-separable residual block, or ``None``.
        preset: the registered timm name these settings derive from.
        image_size: nominal training image size (height, width); any size works.
        mean, std: normalisation of the inputs.

    Example::

        config = GaussDerResNetConfig.from_preset('gaussderresnet18_stl10', scale_pool='avg')
    """

    model_type = 'gaussderresnet'

    num_channels: int = _DEFAULT['in_chans']
    channels: list[int] | tuple[int, ...] = _DEFAULT['channels']
    jet_order: int = _DEFAULT['jet_order']
    zero_order: bool = _DEFAULT['zero_order']
    initial_scales: list[float] | tuple[float, ...] = _DEFAULT['initial_scales']
    scale_ratio: float = _DEFAULT['scale_ratio']
    eps: float = _DEFAULT['eps']
    spatial_pool: str = _DEFAULT['spatial_pool']
    scale_pool: str = _DEFAULT['scale_pool']
    scale_dropout: float = _DEFAULT['scale_dropout']
    separable_from_block: int | None = _DEFAULT['separable_from_block']
    preset: str | None = 'gaussderresnet18_fashionmnist'
    image_size: list[int] | tuple[int, ...] = DATASET_INFO['fashionmnist']['input_size'][1:]
    mean: list[float] | tuple[float, ...] = DATASET_INFO['fashionmnist']['mean']
    std: list[float] | tuple[float, ...] = DATASET_INFO['fashionmnist']['std']

    def __post_init__(self, **kwargs):
        unknown = set(kwargs) - _TRANSFORMERS_KEYS - _TIMM_KEYS
        if unknown:
            raise ValueError(f'GaussDerResNetConfig got unknown key(s) {sorted(unknown)}')
        timm_keys = {key: kwargs.pop(key) for key in _TIMM_KEYS & set(kwargs)}
        if self.id2label is None:
            classes = timm_keys.get('num_classes', kwargs.get('num_labels'))
            names = timm_keys.get('label_names')
            if names is None and self.preset in PRESETS and classes in (None, PRESETS[self.preset]['num_classes']):
                names = DATASET_INFO[self.preset.rsplit('_', 1)[1]]['class_names']
            if names is not None:
                self.id2label = dict(enumerate(names))
                self.label2id = {name: i for i, name in enumerate(names)}
            elif classes is not None:
                kwargs['num_labels'] = classes
        # Otherwise the timm keys only restate id2label and the fields: transformers' own values
        # (and a user's overrides of them, e.g. num_labels for fine-tuning) win.
        super().__post_init__(**kwargs)
        self._check()

    def _check(self) -> None:
        def fail(field, message):
            raise ValueError(f'{field} {message}, got {getattr(self, field)!r}')

        if self.num_channels < 1:
            fail('num_channels', 'must be >= 1')
        if not self.channels or any(c < 1 for c in self.channels):
            fail('channels', 'must be a non-empty list of positive integers')
        if not 1 <= self.jet_order <= MAX_JET_ORDER:
            fail('jet_order', f'must be in 1..{MAX_JET_ORDER}')
        if not self.initial_scales or any(not (math.isfinite(s) and s > 0) for s in self.initial_scales):
            fail('initial_scales', 'must be a non-empty list of finite numbers > 0')
        if not (math.isfinite(self.scale_ratio) and self.scale_ratio > 0):
            fail('scale_ratio', 'must be a finite number > 0')
        if not 0 < self.eps < 1:
            fail('eps', 'must lie in (0, 1)')
        if self.spatial_pool not in SPATIAL_POOLS:
            fail('spatial_pool', f'must be one of {SPATIAL_POOLS}')
        if self.scale_pool not in SCALE_POOLS:
            fail('scale_pool', f'must be one of {SCALE_POOLS}')
        if not 0 <= self.scale_dropout < 1:
            fail('scale_dropout', 'must lie in [0, 1)')
        if self.separable_from_block is not None and not 1 <= self.separable_from_block <= len(self.channels):
            fail('separable_from_block', f'must be None or in 1..{len(self.channels)}')
        if self.preset is not None and self.preset not in PRESETS:
            fail('preset', f'must be None or one of {sorted(PRESETS)}')
        if len(self.mean) != self.num_channels or len(self.std) != self.num_channels:
            raise ValueError(f'mean {self.mean!r} and std {self.std!r} need one value per channel ({self.num_channels})')
        if self.num_labels < 1:
            raise ValueError(f'num_labels must be >= 1, got {self.num_labels}')

    @classmethod
    def from_preset(cls, name: str, **overrides) -> 'GaussDerResNetConfig':
        """Returns the configuration of preset ``name``; keyword arguments override fields."""
        args = get_preset(name)
        info = DATASET_INFO[name.rsplit('_', 1)[1]]
        fields = dict(
            num_channels=args.pop('in_chans'), preset=name, image_size=info['input_size'][1:],
            mean=info['mean'], std=info['std'], id2label=dict(enumerate(info['class_names'])),
            label2id={n: i for i, n in enumerate(info['class_names'])})
        args.pop('num_classes')
        fields.update({k: (list(v) if isinstance(v, tuple) else v) for k, v in args.items()})
        fields.update(overrides)
        return cls(**fields)

    def model_args(self) -> dict:
        """Returns the :class:`~gaussder_hf.GaussDerResNet` constructor arguments."""
        return dict(
            in_chans=self.num_channels, num_classes=self.num_labels, channels=tuple(self.channels),
            jet_order=self.jet_order, zero_order=self.zero_order, initial_scales=tuple(self.initial_scales),
            scale_ratio=self.scale_ratio, eps=self.eps, spatial_pool=self.spatial_pool,
            scale_pool=self.scale_pool, scale_dropout=self.scale_dropout,
            separable_from_block=self.separable_from_block)

    def to_dict(self) -> dict:
        output = super().to_dict()
        # timm reads these; transformers ignores them on reading (see __post_init__).
        args = self.model_args()
        num_classes = args.pop('num_classes')
        output['architecture'] = self.preset or 'gaussderresnet18_fashionmnist'
        output['num_classes'] = num_classes
        output['num_features'] = self.channels[-1]
        output['label_names'] = [self.id2label[i] for i in range(num_classes)]
        output['model_args'] = {k: list(v) if isinstance(v, tuple) else v for k, v in args.items()}
        output['pretrained_cfg'] = dict(
            input_size=[self.num_channels, *self.image_size], fixed_input_size=False, interpolation='bicubic',
            crop_pct=1.0, mean=list(self.mean), std=list(self.std), num_classes=num_classes,
            first_conv='stem_conv', classifier='head_conv', license='mit', paper_ids='arXiv:2603.02843',
            hf_hub_filename='model.safetensors')  # timm then never falls back to a pickle
        return output
