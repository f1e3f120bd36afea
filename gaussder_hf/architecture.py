"""The architecture of a GaussDerResNet as data: one table of its hyperparameters, one validation.

:data:`ARCHITECTURE` lists every hyperparameter that fixes the network a checkpoint holds, once:
its name (the :class:`~gaussder_hf.GaussDerResNet` argument and attribute, the key of timm's
``model_args`` and of the presets), its :class:`~gaussder_hf.GaussDerResNetConfig` field, default,
and the rule a value must satisfy. Everything else is derived from it: the transformers config
fields, the model arguments a config gives, the config a built model gives (``save_for_hub``), and
the ``model_args`` in ``config.json`` that timm reads. :func:`check_architecture` is the one
validation; the model and the config both call it, so a bad value gets the same error either way.

The class count is not in the table: transformers keeps it as ``id2label`` (with the class
names), timm as ``num_classes``. Nor are the training-time switches only the model takes
(``drop_rate``, ``drop_path_rate``, ``global_pool``, ``bn_momentum``): no checkpoint records them,
and none changes what a trained network computes in evaluation. ``bn_eps`` does (it is in every
normalisation's denominator), so it is in the table and travels with the weights.

The module also names, once, what the checkpoint files of both libraries share: the weights file
(:data:`WEIGHTS_NAME`) and timm's ``pretrained_cfg`` (:func:`timm_pretrained_cfg`).
"""
from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from operator import attrgetter
from types import MappingProxyType
from typing import Any

from .kernels import MAX_JET_ORDER
from .presets import PRESETS

__all__ = [
    'ARCHITECTURE', 'DEFAULT_PRESET', 'Hyperparameter', 'PAPER_ID', 'SCALE_DROPOUT_MODES', 'SCALE_POOLS',
    'SPATIAL_POOLS', 'WEIGHTS_NAME', 'architecture_of', 'check_architecture', 'check_hyperparameter',
    'timm_pretrained_cfg',
]

# The weights file of every checkpoint folder, for timm and transformers alike: safetensors only.
WEIGHTS_NAME = 'model.safetensors'
PAPER_ID = 'arXiv:2603.02843'

# Spatial selections that give one value per map: the paper's two (eq. 38, 39) and two of timm's.
SPATIAL_POOLS = ('center', 'max', 'avg', 'avgmax')
SCALE_POOLS = ('max', 'logsumexp', 'avg')
# Scale-channel dropout (design.md §3.10): 'score' drops single class scores of the (B, S, K)
# tensor like nn.Dropout; 'channel' drops whole scale channels from the scale pooling.
SCALE_DROPOUT_MODES = ('score', 'channel')

# The preset whose values are the defaults of the model and the config.
DEFAULT_PRESET = 'gaussderresnet18_fashionmnist'


class _Invalid(ValueError):
    """A value breaks its rule; :func:`check_architecture` adds the name and the value to the message."""


def _is_int(value) -> bool:
    """Returns whether ``value`` is an integer and not a bool (``True`` would read as 1)."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_finite(value) -> bool:
    """Returns whether ``value`` is a finite real number and not a bool or a string."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)


def _integer(low: int | None = None, high: int | None = None) -> Callable:
    def check(value, _):
        if not _is_int(value) or (low is not None and value < low) or (high is not None and value > high):
            raise _Invalid
        return int(value)
    return check


def _sequence(item_ok: Callable, convert: type, item: str, item_rule: str, scalar: bool = False) -> Callable:
    """Returns a check of a non-empty sequence (or, with ``scalar``, a single value) of valid items."""
    def check(value, _):
        if scalar and _is_finite(value):
            value = (value,)
        # A string would iterate into its characters.
        if isinstance(value, (str, bytes)) or not hasattr(value, '__iter__'):
            raise _Invalid
        values = tuple(value)
        if not values:
            raise _Invalid
        bad = [v for v in values if not item_ok(v)]
        if bad:
            raise _Invalid(f'every {item} must be {item_rule}, got {bad[0]!r} in {value!r}')
        return tuple(convert(v) for v in values)
    return check


def _real(ok: Callable[[float], bool]) -> Callable:
    def check(value, _):
        if not _is_finite(value) or not ok(value):
            raise _Invalid
        return float(value)
    return check


def _choice(choices: tuple[str, ...]) -> Callable:
    def check(value, _):
        if not isinstance(value, str) or value not in choices:
            raise _Invalid
        return value
    return check


def _bool(value, _):
    if not isinstance(value, bool):  # bool('no') is True: a string must not switch a term on
        raise _Invalid
    return value


def _optional_positive(value, _):
    if value is None:
        return None
    if not _is_finite(value) or not value > 0:
        raise _Invalid
    return float(value)


def _first_separable_block(value, checked):
    if value is None:
        return None
    if not _is_int(value) or not 1 <= value <= len(checked['channels']):
        raise _Invalid
    return int(value)


@dataclass(frozen=True)
class Hyperparameter:
    """One architecture hyperparameter of a GaussDerResNet.

    Attributes:
        name: the model argument and attribute, the key in the presets and timm's ``model_args``.
        allowed: what a valid value is, as the error message states it.
        check: ``check(value, checked) -> value``: returns the value in its canonical form (tuples,
            floats) or raises; ``checked`` holds the entries above it, already checked.
        default: the value of a model or config that does not state it.
        annotation: the type of the :class:`~gaussder_hf.GaussDerResNetConfig` field.
        example: a valid value other than the default (documentation and tests).
        config_name: the config field, where transformers spells it differently.
        attribute: where a built model keeps the value (a dotted path), where it is not ``name``.
    """

    name: str
    allowed: str | Callable[[Mapping], str]
    check: Callable[[Any, Mapping], Any]
    default: Any
    annotation: str
    example: Any
    config_name: str = ''
    attribute: str = ''

    @property
    def field(self) -> str:
        """The :class:`~gaussder_hf.GaussDerResNetConfig` field."""
        return self.config_name or self.name

    @property
    def label(self) -> str:
        """The name errors give: both spellings where the config field differs."""
        return self.name if self.field == self.name else f'{self.name} (config field {self.field})'

    def read(self, model) -> Any:
        """Returns this hyperparameter of the built network ``model``."""
        return attrgetter(self.attribute or self.name)(model)


_D = PRESETS[DEFAULT_PRESET]

#: The architecture hyperparameters, in the order the model takes them (entries may depend on earlier ones).
ARCHITECTURE: tuple[Hyperparameter, ...] = (
    Hyperparameter(
        'in_chans', 'an integer >= 1', _integer(1), _D['in_chans'], 'int', example=3, config_name='num_channels'),
    Hyperparameter(
        'channels', 'a non-empty sequence of integers >= 1 (first layer, then each residual block)',
        _sequence(lambda c: _is_int(c) and c >= 1, int, 'channel count', 'an integer >= 1'), _D['channels'],
        'list[int] | tuple[int, ...]', example=(4, 6)),
    Hyperparameter(
        'jet_order', f'an integer in 1..{MAX_JET_ORDER}', _integer(1, MAX_JET_ORDER), _D['jet_order'], 'int',
        example=3),
    Hyperparameter('zero_order', 'a bool (True or False)', _bool, _D['zero_order'], 'bool', example=True),
    Hyperparameter(
        'initial_scales', 'a number or a non-empty sequence of finite numbers > 0',
        _sequence(lambda s: _is_finite(s) and s > 0, float, 'initial scale', 'a finite number > 0', scalar=True),
        _D['initial_scales'], 'list[float] | tuple[float, ...]', example=(0.9, 1.8)),
    Hyperparameter(
        'scale_ratio', 'a finite number > 0', _real(lambda r: r > 0), _D['scale_ratio'], 'float', example=1.25),
    Hyperparameter(
        'eps', 'a number in (0, 1) (the relative truncation error of the kernels)', _real(lambda e: 0 < e < 1),
        _D['eps'], 'float', example=0.02),
    Hyperparameter(
        'spatial_pool', f'one of {SPATIAL_POOLS}', _choice(SPATIAL_POOLS), _D['spatial_pool'], 'str', example='max'),
    Hyperparameter(
        'scale_pool', f'one of {SCALE_POOLS}', _choice(SCALE_POOLS), _D['scale_pool'], 'str', example='logsumexp'),
    Hyperparameter(
        'scale_dropout', 'a number in [0, 1)', _real(lambda p: 0 <= p < 1), _D['scale_dropout'], 'float',
        example=0.1, attribute='scale_dropout.p'),
    # 'score' is also what configs written before this hyperparameter existed meant.
    Hyperparameter(
        'scale_dropout_mode', f'one of {SCALE_DROPOUT_MODES}', _choice(SCALE_DROPOUT_MODES), 'score', 'str',
        example='channel'),
    # timm's bn_eps (its scripts' --bn-eps): None keeps PyTorch's 1e-5, and configs written before
    # this entry existed meant that.
    Hyperparameter(
        'bn_eps', "None or a finite number > 0 (the epsilon of every batch normalisation; None: PyTorch's 1e-5)",
        _optional_positive, _D['bn_eps'], 'float | None', example=1e-3),
    Hyperparameter(
        'separable_from_block', lambda checked: f'None or an integer in 1..{len(checked["channels"])}',
        _first_separable_block, _D['separable_from_block'], 'int | None', example=1),
)

_BY_NAME = MappingProxyType({p.name: p for p in ARCHITECTURE})


def check_hyperparameter(name: str, value, checked: Mapping | None = None):
    """Returns ``value`` of hyperparameter ``name`` in canonical form; raises ValueError naming it and the value.

    ``checked`` holds the hyperparameters ``name`` depends on (``channels`` for
    ``separable_from_block``), default their defaults.
    """
    parameter = _BY_NAME[name]
    checked = {p.name: p.default for p in ARCHITECTURE} if checked is None else checked
    try:
        return parameter.check(value, checked)
    except _Invalid as error:
        allowed = parameter.allowed(checked) if callable(parameter.allowed) else parameter.allowed
        if str(error):  # a bad entry of a sequence: the message names it
            raise ValueError(f'{parameter.label} must be {allowed}: {error}') from None
        raise ValueError(f'{parameter.label} must be {allowed}, got {value!r}') from None


def check_architecture(values: Mapping[str, Any]) -> dict[str, Any]:
    """Returns every hyperparameter of ``values`` (keyed by :attr:`Hyperparameter.name`) checked and canonical.

    The one validation of the architecture: :class:`~gaussder_hf.GaussDerResNet` and
    :class:`~gaussder_hf.GaussDerResNetConfig` both call it. A missing entry takes its default.
    """
    unknown = set(values) - set(_BY_NAME)
    if unknown:
        raise ValueError(f'unknown architecture hyperparameter(s) {sorted(unknown)}; known: {list(_BY_NAME)}')
    checked = {}
    for parameter in ARCHITECTURE:
        checked[parameter.name] = check_hyperparameter(
            parameter.name, values.get(parameter.name, parameter.default), checked)
    return checked


def architecture_of(model) -> dict[str, Any]:
    """Returns the hyperparameters of the built :class:`~gaussder_hf.GaussDerResNet` ``model``, keyed by name."""
    return {p.name: p.read(model) for p in ARCHITECTURE}


def timm_pretrained_cfg(input_size, mean, std, num_classes: int, **extra) -> dict:
    """Returns timm's ``pretrained_cfg`` of a GaussDerResNet: the preprocessing and the model facts timm reads.

    ``extra`` adds or replaces keys (timm's default cfgs add ``file`` and ``test_input_size``).
    """
    return dict(
        input_size=input_size, fixed_input_size=False,  # no layer subsamples: any size works
        interpolation='bicubic', crop_pct=1.0, mean=mean, std=std, num_classes=num_classes,
        first_conv='stem_conv', classifier='head_conv', license='mit', paper_ids=PAPER_ID,
        hf_hub_filename=WEIGHTS_NAME,  # timm then never falls back to a pickle
        **extra)
