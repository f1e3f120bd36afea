"""``GaussDerResNetConfig``: the transformers configuration of a GaussDerResNet.

One ``config.json`` serves both libraries. The architecture fields are built from the table of
hyperparameters (:data:`gaussder_hf.architecture.ARCHITECTURE`, which also checks them) and are
the one source of truth for the architecture; :meth:`to_dict` derives from them the keys timm's ``hf-hub:`` /
``local-dir:`` loaders read (``architecture``, ``num_classes``, ``num_features``, ``model_args``,
``pretrained_cfg``, ``label_names``). Reading a config back checks that every derived key still
agrees with the fields, so that a hand-edited file can never make timm and transformers build two
different networks.
"""
from __future__ import annotations

import math
from collections.abc import Mapping

from huggingface_hub.dataclasses import strict
from transformers import GenerationConfig, PreTrainedConfig

from .architecture import ARCHITECTURE, DEFAULT_PRESET, check_architecture, timm_pretrained_cfg
from .presets import DATASET_INFO, PRESETS, get_preset

__all__ = ['GaussDerResNetConfig']

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


def _is_finite(value) -> bool:
    """Returns whether ``value`` is a finite real number and not a bool or a string."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


@strict
class GaussDerResNetConfig(PreTrainedConfig):
    r"""Configuration of a :class:`~gaussder_hf.GaussDerResNet` (arXiv:2603.02843).

    The fields ``num_channels`` (the model's ``in_chans``) to ``separable_from_block`` are one per
    entry of :data:`gaussder_hf.architecture.ARCHITECTURE`, with its default (the preset
    ``gaussderresnet18_fashionmnist``) and its check.

    Args:
        num_channels: input (colour) channels.
        channels: output channels of the first GD layer and of each residual block.
        jet_order: highest order of the Gaussian derivatives, 1..3.
        zero_order: zero-order term in every layer after the first.
        initial_scales: ``sigma0`` of each scale channel.
        scale_ratio: ratio between the scales of consecutive effective layers.
        eps: relative truncation error of the discrete Gaussian kernels.
        spatial_pool: ``'center'``, ``'max'``, ``'avg'`` or ``'avgmax'``.
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

    # One field per architecture hyperparameter, built from the table (architecture.ARCHITECTURE),
    # with its default. The annotations stay strings, as in the rest of this class: huggingface_hub's
    # strict dataclasses then leave the checking to check_architecture, which the model runs too.
    __annotations__.update({p.field: p.annotation for p in ARCHITECTURE})
    locals().update({p.field: p.default for p in ARCHITECTURE})
    preset: str | None = DEFAULT_PRESET
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

        # The architecture: checked by the model's own validation, and kept in canonical form as
        # JSON stores it (lists, floats).
        checked = check_architecture({p.name: getattr(self, p.field) for p in ARCHITECTURE})
        for parameter in ARCHITECTURE:
            setattr(self, parameter.field, _plain(checked[parameter.name]))
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
    def from_model_args(cls, model_args: Mapping, **fields) -> GaussDerResNetConfig:
        """Returns the configuration of the network built from ``model_args``; keyword arguments set other fields.

        ``model_args`` are :class:`~gaussder_hf.GaussDerResNet` arguments (a preset, or what
        :func:`~gaussder_hf.architecture.architecture_of` reads off a model); ``num_classes`` is
        ignored: the classes are ``id2label``'s.
        """
        unknown = set(model_args) - {p.name for p in ARCHITECTURE} - {'num_classes'}
        if unknown:
            raise ValueError(f'unknown GaussDerResNet argument(s) {sorted(unknown)}')
        architecture = {p.field: _plain(model_args[p.name]) for p in ARCHITECTURE if p.name in model_args}
        return cls(**{**architecture, **fields})

    @classmethod
    def from_preset(cls, name: str, **overrides) -> GaussDerResNetConfig:
        """Returns the configuration of preset ``name``; keyword arguments override fields."""
        args = get_preset(name)
        info = DATASET_INFO[name.rsplit('_', 1)[1]]
        fields = dict(
            preset=name, image_size=list(info['input_size'][1:]), mean=list(info['mean']), std=list(info['std']),
            id2label=dict(enumerate(info['class_names'])), label2id={n: i for i, n in enumerate(info['class_names'])})
        fields.update(overrides)
        return cls.from_model_args(args, **fields)

    def model_args(self) -> dict:
        """Returns the :class:`~gaussder_hf.GaussDerResNet` constructor arguments."""
        args = {p.name: getattr(self, p.field) for p in ARCHITECTURE}
        return dict(args, num_classes=self.num_labels)

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
            pretrained_cfg=timm_pretrained_cfg(
                input_size=[self.num_channels, *self.image_size], mean=list(self.mean), std=list(self.std),
                num_classes=num_classes),
        )

    def to_dict(self) -> dict:
        output = super().to_dict()
        output.update(self._timm_dict())
        return output
