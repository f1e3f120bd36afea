"""``GaussDerResNetConfig``: the transformers configuration of a GaussDerResNet.

One ``config.json`` serves both libraries. The transformers fields below are the one source of
truth for the architecture; :meth:`to_dict` derives from them the keys timm's ``hf-hub:`` /
``local-dir:`` loaders read (``architecture``, ``num_classes``, ``num_features``, ``model_args``,
``pretrained_cfg``, ``label_names``). Reading a config back checks that every derived key still
agrees with the fields, so that a hand-edited file can never make timm and transformers build two
different networks.
"""
from __future__ import annotations

import math

from huggingface_hub.dataclasses import strict
from transformers import GenerationConfig, PreTrainedConfig

from .kernels import MAX_JET_ORDER
from .model import SCALE_DROPOUT_MODES, SCALE_POOLS, SPATIAL_POOLS
from .presets import DATASET_INFO, PRESETS, get_preset

__all__ = ['GaussDerResNetConfig']

_DEFAULT = PRESETS['gaussderresnet18_fashionmnist']

# Keys that ``PreTrainedConfig`` itself takes besides its dataclass fields, or that transformers
# writes into config.json (``auto_map`` for remote code, ``_name_or_path``), including the
# transformers 4 keys still found in configs on the Hub and in Trainer checkpoints
# (``torchscript``, ``finetuning_task``, ...) and the generation parameters (``use_cache``, ...)
# that ``PreTrainedConfig`` drops on reading. None of them changes the network.
_PRETRAINED_CONFIG_KEYS = frozenset({
    'num_labels', 'torch_dtype', 'name_or_path', '_name_or_path', '_commit_hash', 'transformers_version',
    'output_attentions', 'attn_implementation', 'experts_implementation', 'per_layer_config', 'model_type',
    'auto_map', 'custom_pipelines', 'tie_last_hidden_states', 'torchscript', 'use_bfloat16', 'tf_legacy_loss',
    'pruned_heads', 'tie_word_embeddings', 'is_decoder', 'cross_attention_hidden_size', 'add_cross_attention',
    'tie_encoder_decoder', 'finetuning_task', 'task_specific_params', 'tokenizer_class', 'prefix',
    'bos_token_id', 'pad_token_id', 'eos_token_id', 'sep_token_id', 'decoder_start_token_id',
    '_attn_implementation_autoset', 'gradient_checkpointing',
}) | frozenset(GenerationConfig._get_default_generation_params())
# Keys that make the same config.json loadable by timm: derived from the fields on writing.
_TIMM_KEYS = frozenset({'architecture', 'num_classes', 'num_features', 'model_args', 'pretrained_cfg', 'label_names'})
# The part of timm's pretrained_cfg that changes what the network computes on an input.
_PRETRAINED_CFG_CHECKED = ('input_size', 'num_classes', 'mean', 'std')


def _plain(value):
    """Returns ``value`` with every tuple turned into a list, as JSON stores it."""
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def _is_int(value) -> bool:
    """Returns whether ``value`` is an integer and not a bool (``True`` would read as 1)."""
    return isinstance(value, int) and not isinstance(value, bool)


def _is_finite(value) -> bool:
    """Returns whether ``value`` is a finite real number and not a bool or a string."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


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
        scale_dropout_mode: ``'score'`` (single class scores) or ``'channel'`` (whole scale channels).
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
    scale_dropout_mode: str = 'score'  # what configs written before this field was added meant
    separable_from_block: int | None = _DEFAULT['separable_from_block']
    preset: str | None = 'gaussderresnet18_fashionmnist'
    image_size: list[int] | tuple[int, ...] = DATASET_INFO['fashionmnist']['input_size'][1:]
    mean: list[float] | tuple[float, ...] = DATASET_INFO['fashionmnist']['mean']
    std: list[float] | tuple[float, ...] = DATASET_INFO['fashionmnist']['std']

    def __post_init__(self, **kwargs):
        unknown = set(kwargs) - _PRETRAINED_CONFIG_KEYS - _TIMM_KEYS
        if unknown:
            raise ValueError(
                f'GaussDerResNetConfig got unknown key(s) {sorted(unknown)}; the architecture fields are '
                f'{sorted(f for f in self.__dataclass_fields__ if f not in PreTrainedConfig.__dataclass_fields__)}')
        model_type = kwargs.pop('model_type', self.model_type)
        if model_type != self.model_type:
            raise ValueError(f'GaussDerResNetConfig reads model_type {self.model_type!r} only, got {model_type!r}')
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
        # The labels as the file states them: a num_labels passed to from_pretrained (a new head
        # for fine-tuning) is applied later and must not count as a disagreement of the file.
        file_labels = None if self.id2label is None else [self.id2label[k] for k in sorted(self.id2label, key=int)]
        super().__post_init__(**kwargs)
        self._check()
        self._check_timm_keys(timm_keys, file_labels)

    def _check_timm_keys(self, timm_keys: dict, file_labels: list[str] | None) -> None:
        """Raises unless every timm key read from a file restates what the fields say.

        timm builds the network from ``model_args``/``num_classes``/``pretrained_cfg`` and
        transformers from the fields: a disagreement would silently give two different networks.
        """
        if not timm_keys:
            return
        derived = self._timm_dict(file_labels)
        disagree = []
        for key, value in timm_keys.items():
            if key == 'pretrained_cfg':
                if not isinstance(value, dict):
                    raise ValueError(f'pretrained_cfg must be a mapping, got {value!r}')
                disagree += [f'pretrained_cfg.{k}: {value[k]!r} != {derived[key][k]!r}'
                             for k in _PRETRAINED_CFG_CHECKED if k in value and _plain(value[k]) != derived[key][k]]
            elif key == 'model_args':
                if not isinstance(value, dict):
                    raise ValueError(f'model_args must be a mapping, got {value!r}')
                extra = set(value) - set(derived[key]) - {'num_classes'}
                if extra:
                    raise ValueError(f'config.json model_args has unknown key(s) {sorted(extra)}')
                expected = dict(derived[key], num_classes=derived['num_classes'])
                disagree += [f'model_args.{k}: {value[k]!r} != {expected[k]!r}'
                             for k in sorted(value) if _plain(value[k]) != expected[k]]
            elif _plain(value) != derived[key]:
                disagree.append(f'{key}: {value!r} != {derived[key]!r}')
        if disagree:
            raise ValueError(
                'config.json states the architecture twice and the copies disagree (timm reads the derived '
                'keys, transformers the fields); fix or delete the derived keys: ' + '; '.join(disagree))

    def _check(self) -> None:
        def fail(field, message):
            raise ValueError(f'{field} {message}, got {getattr(self, field)!r}')

        # Types first: JSON and keyword arguments can carry strings ('2', 'no') that Python would
        # silently compare, iterate or take as true.
        if not _is_int(self.num_channels) or self.num_channels < 1:
            fail('num_channels', 'must be an integer >= 1')
        if (not isinstance(self.channels, (list, tuple)) or not self.channels
                or any(not _is_int(c) or c < 1 for c in self.channels)):
            fail('channels', 'must be a non-empty list of positive integers')
        if not _is_int(self.jet_order) or not 1 <= self.jet_order <= MAX_JET_ORDER:
            fail('jet_order', f'must be an integer in 1..{MAX_JET_ORDER}')
        if not isinstance(self.zero_order, bool):
            fail('zero_order', 'must be a bool (true or false)')
        if (not isinstance(self.initial_scales, (list, tuple)) or not self.initial_scales
                or any(not _is_finite(s) or s <= 0 for s in self.initial_scales)):
            fail('initial_scales', 'must be a non-empty list of finite numbers > 0')
        if not _is_finite(self.scale_ratio) or self.scale_ratio <= 0:
            fail('scale_ratio', 'must be a finite number > 0')
        if not _is_finite(self.eps) or not 0 < self.eps < 1:
            fail('eps', 'must lie in (0, 1)')
        if self.spatial_pool not in SPATIAL_POOLS:
            fail('spatial_pool', f'must be one of {SPATIAL_POOLS}')
        if self.scale_pool not in SCALE_POOLS:
            fail('scale_pool', f'must be one of {SCALE_POOLS}')
        if not _is_finite(self.scale_dropout) or not 0 <= self.scale_dropout < 1:
            fail('scale_dropout', 'must lie in [0, 1)')
        if self.scale_dropout_mode not in SCALE_DROPOUT_MODES:
            fail('scale_dropout_mode', f'must be one of {SCALE_DROPOUT_MODES}')
        if self.separable_from_block is not None and (
                not _is_int(self.separable_from_block) or not 1 <= self.separable_from_block <= len(self.channels)):
            fail('separable_from_block', f'must be None or an integer in 1..{len(self.channels)}')
        if self.preset is not None and self.preset not in PRESETS:
            fail('preset', f'must be None or one of {sorted(PRESETS)}')
        if len(self.mean) != self.num_channels or len(self.std) != self.num_channels:
            raise ValueError(
                f'mean {self.mean!r} and std {self.std!r} need one value per channel ({self.num_channels})')
        # A zero or non-finite std (or mean) turns every input into inf/NaN: the network would
        # still answer, with one class for every image.
        if any(not _is_finite(m) for m in self.mean):
            fail('mean', 'must hold finite numbers')
        if any(not _is_finite(s) or s <= 0 for s in self.std):
            fail('std', 'must hold finite numbers > 0')
        if self.num_labels < 1:
            raise ValueError(f'num_labels must be >= 1, got {self.num_labels}')

    @classmethod
    def from_preset(cls, name: str, **overrides) -> GaussDerResNetConfig:
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
            scale_dropout_mode=self.scale_dropout_mode, separable_from_block=self.separable_from_block)

    def _timm_dict(self, labels: list[str] | None = None) -> dict:
        """Returns the keys timm reads, derived from the fields (and ``labels``, default id2label)."""
        args = self.model_args()
        args.pop('num_classes')
        labels = labels if labels is not None else [self.id2label[i] for i in range(self.num_labels)]
        num_classes = len(labels)
        return dict(
            architecture=self.preset or 'gaussderresnet18_fashionmnist',
            num_classes=num_classes,
            num_features=self.channels[-1],
            label_names=list(labels),
            model_args=_plain(args),
            pretrained_cfg=dict(
                input_size=[self.num_channels, *self.image_size], fixed_input_size=False, interpolation='bicubic',
                crop_pct=1.0, mean=list(self.mean), std=list(self.std), num_classes=num_classes,
                first_conv='stem_conv', classifier='head_conv', license='mit', paper_ids='arXiv:2603.02843',
                hf_hub_filename='model.safetensors'),  # timm then never falls back to a pickle
        )

    def to_dict(self) -> dict:
        output = super().to_dict()
        output.update(self._timm_dict())
        return output
