"""GaussDerResNet: scale-covariant and scale-invariant Gaussian derivative ResNets (arXiv:2603.02843).

A scale channel is an 18-layer residual network of Gaussian derivative layers without any
subsampling (§3.3, Fig. 3). Its layer ``k`` works at ``sigma0 * scale_ratio**(k_eff - 1)`` with
``k_eff = floor(k / 2) + 1`` (eq. 28, 29), so both layers of a residual block share a scale. A
multi-scale-channel network runs the same weights at several initial scales ``sigma0`` and pools
the spatially selected class scores over the scale channels (§3.6, eq. 43-46).

Beyond the paper, the network honours timm's model contract: ``drop_rate`` (channel dropout on
the maps entering the last GD layer), ``drop_path_rate`` (stochastic depth over the residual
blocks), ``global_pool`` (timm's pooling names mapped onto the spatial selection, see
:data:`GLOBAL_POOLS`), ``bn_momentum``/``bn_eps``, and ``forward_intermediates`` with
``feature_info`` for ``features_only`` backbones.
"""
from __future__ import annotations

import contextlib
import copy
import math
import re
import warnings
from collections.abc import Iterable, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import DropPath
from timm.models._features import feature_take_indices  # not re-exported by timm.models
from torch.nn.modules import module as _torch_module  # the global hook registries
from torch.nn.utils.fusion import fuse_conv_bn_weights
from torch.utils.checkpoint import checkpoint

from .architecture import (
    ARCHITECTURE,
    SCALE_DROPOUT_MODES,
    SCALE_POOLS,
    SPATIAL_POOLS,
    check_architecture,
    check_hyperparameter,
)
from .kernels import check_sigma, to_maps_layout
from .layers import DSGaussDerConv, GaussDerConv, mixing_channels_last

__all__ = [
    'GaussDerResNet',
    'GaussDerBlock',
    'SPATIAL_POOLS',
    'GLOBAL_POOLS',
    'MAPS_LAYOUTS',
    'SCALE_POOLS',
    'spatial_select',
    'pool_scales',
    'scale_channel_keep_mask',
    'SCALE_DROPOUT_MODES',
    'transfer_scales',
]

# The architecture hyperparameters (their defaults, rules and checkpoint names) live in one
# table, :data:`gaussder_hf.architecture.ARCHITECTURE`; SPATIAL_POOLS, SCALE_POOLS and
# SCALE_DROPOUT_MODES are re-exported from there.
_DEFAULTS = {p.name: p.default for p in ARCHITECTURE}

# timm's ``global_pool`` names (and the paper's 'center') -> the spatial selection they give.
# The classifier of a GaussDerResNet is a GD layer applied to maps, so the spatial selection
# acts on its class maps, after the classifier, not on features before it as in a CNN:
# - 'fast' is timm's fast spatial mean, numerically 'avg';
# - '' (timm: no pooling) keeps the maps: the output is dense, ``(B, num_classes, H, W)``,
#   pooled over the scale channels pixel by pixel;
# - 'catavgmax' concatenates mean and max, which would turn num_classes class maps into
#   2 * num_classes scores, so it is only allowed without classifier (``num_classes=0``), where
#   it gives ``(B, 2 * num_features)`` pooled features as in timm.
GLOBAL_POOLS = {
    'center': 'center', 'avg': 'avg', 'fast': 'avg', 'max': 'max', 'avgmax': 'avgmax',
    'catavgmax': 'catavgmax', '': '',
}
_SPATIAL_MODES = SPATIAL_POOLS + ('catavgmax', '')


# Layouts of the maps inside the network (GaussDerResNet.set_maps_layout).
MAPS_LAYOUTS = ('auto', 'channels_last', 'channels_last_mix', 'contiguous')

# On a CPU, oneDNN's 3x3 convolution on channels-last maps beat the plain layout by 2-3x with 24
# channels (19-41 GMAC/s against 61-77 on maps that leave the cache, one thread; forward + backward
# likewise with two threads), while with 32 and 64 channels the plain layout held its own
# (benchmarks/README.md, "Channels-last handover"). Channels-last maps cost the matrix smoothing a
# copy of every group of images into the plain layout and back (kernels.py, ``_groups_of_images``;
# the banded forward takes images of more than a chunk in their own order instead).
# Measured on whole networks with one thread (benchmarks/maps_layout.py; "Channels-last maps"):
# GaussDerResNet-10 (24 channels) took 0.68-0.94x the time of an inference from 1 x 96 to 1 x 1024 px and
# 0.77-0.88x a training step; the paper's presets, whose multiply-adds are mostly in layers of 32-256
# channels, took 1.02-1.31x an inference and 0.94-1.15x a step. With two threads PyTorch's channels-last
# batch norm backward is slow (forward + backward 15 against 8 ms, 64 images of 48 px, 24 channels; its
# forward is as fast as the plain one): inference took 0.62-0.90x the time channels-last from 1 x 96 to
# 1 x 1024 px, training steps 1.02-1.03x on images of 48-96 px and 0.66-0.85x from 128 px (where the
# smoothing runs in the images' memory order), while plain maps with channels-last mixing convolutions
# ('channels_last_mix') took 0.85-0.88x on the small images. So 'auto', on a CPU where at least half
# the mixing multiply-adds are in layers with a channel count that is not a multiple of 32
# (GaussDerResNet-10: all of them; the presets: 3-28%), lays the maps out channels-last, except
# 'channels_last_mix' for training with several threads on images under 128 px; plain elsewhere.
_ALIGNED_CHANNELS = 32
_CHANNELS_LAST_FROM_SHARE = 0.5
_CHANNELS_LAST_TRAINING_FROM_SIDE = 128


def spatial_select(maps: torch.Tensor, mode: str) -> torch.Tensor:
    """Returns one value per feature map, ``(..., C, H, W) -> (..., C)`` (§3.4, eq. 38, 39).

    ``'center'`` takes the central pixel, averaging the central two rows/columns along an axis
    of even length (the central 2x2 block of an even-sized image); ``'max'`` is spatial max
    pooling, ``'avg'`` the spatial mean and ``'avgmax'`` the mean of the two. ``'catavgmax'``
    concatenates mean and max, ``(..., 2C)``; ``''`` selects nothing and returns ``maps``.
    """
    if mode == 'max':
        return maps.amax(dim=(-2, -1))
    if mode == 'avg':
        return maps.mean(dim=(-2, -1))
    if mode == 'avgmax':
        return 0.5 * (maps.mean(dim=(-2, -1)) + maps.amax(dim=(-2, -1)))
    if mode == 'catavgmax':
        return torch.cat([maps.mean(dim=(-2, -1)), maps.amax(dim=(-2, -1))], dim=-1)
    if mode == 'center':
        height, width = maps.shape[-2:]
        rows = slice((height - 1) // 2, height // 2 + 1)
        cols = slice((width - 1) // 2, width // 2 + 1)
        return maps[..., rows, cols].mean(dim=(-2, -1))
    if mode == '':
        return maps
    raise ValueError(f'spatial_pool must be one of {_SPATIAL_MODES}, got {mode!r}')


def resolve_global_pool(global_pool: str, num_classes: int) -> str:
    """Returns the spatial selection of timm's ``global_pool`` name, checking it suits ``num_classes``."""
    if not isinstance(global_pool, str) or global_pool not in GLOBAL_POOLS:
        raise ValueError(f'global_pool must be one of {tuple(GLOBAL_POOLS)}, got {global_pool!r}')
    mode = GLOBAL_POOLS[global_pool]
    if mode == 'catavgmax' and num_classes:
        raise ValueError(
            f"global_pool='catavgmax' needs num_classes=0, got num_classes={num_classes!r}: the last GD layer "
            "gives class maps, and concatenating their mean and max would give 2 * num_classes scores; "
            "use 'avgmax' for the mean of the two")
    return mode


def pool_scales(scores: torch.Tensor, mode: str, keep: torch.Tensor | None = None) -> torch.Tensor:
    """Returns the scale-pooled scores, ``(B, S, K, ...) -> (B, K, ...)`` (eq. 44-46).

    ``'logsumexp'`` is normalised as ``logsumexp - log(S)`` (reconstructed), so that it equals
    the common value when all scale channels agree.

    ``keep`` (boolean, ``(B, S)``, at least one ``True`` per row) pools each sample over its kept
    scale channels only, as if the others did not exist: the maximum of the kept scores, their
    ``logsumexp - log(S_kept)``, or their mean.
    """
    if mode not in SCALE_POOLS:
        raise ValueError(f'scale_pool must be one of {SCALE_POOLS}, got {mode!r}')
    if keep is None:
        if mode == 'max':
            return scores.amax(dim=1)
        if mode == 'logsumexp':
            return torch.logsumexp(scores, dim=1) - math.log(scores.shape[1])
        return scores.mean(dim=1)
    if keep.dtype != torch.bool or tuple(keep.shape) != tuple(scores.shape[:2]):
        raise ValueError(f'keep must be a boolean mask of shape {tuple(scores.shape[:2])} (batch, scale channels), '
                         f'got {keep.dtype} of shape {tuple(keep.shape)}')
    if not bool(keep.any(dim=1).all()):
        raise ValueError('keep must keep at least one scale channel of every sample')
    mask = keep.view(*keep.shape, *(1,) * (scores.ndim - 2))
    kept = mask.sum(dim=1).to(scores.dtype)
    if mode == 'max':
        return scores.masked_fill(~mask, -math.inf).amax(dim=1)
    if mode == 'logsumexp':
        return torch.logsumexp(scores.masked_fill(~mask, -math.inf), dim=1) - kept.log()
    return scores.masked_fill(~mask, 0.0).sum(dim=1) / kept


def scale_channel_keep_mask(
        batch: int, channels: int, p: float, device=None, generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Returns which scale channels each sample keeps under whole-channel dropout, boolean ``(batch, channels)``.

    Every channel is dropped independently with probability ``p``. Where that would drop all of a
    sample's channels, one of them, drawn uniformly, is kept, so the pooling always has an input
    (this lowers the drop rate by at most ``p**channels``).
    """
    p = _check_rate('scale_dropout', p)
    keep = torch.rand(batch, channels, device=device, generator=generator) >= p
    empty = ~keep.any(dim=1)
    if bool(empty.any()):
        rescue = torch.randint(channels, (batch,), device=device, generator=generator)
        keep[empty, rescue[empty]] = True
    return keep


def _check_rate(name: str, value: float, upper_inclusive: bool = False) -> float:
    """Returns ``value`` as a float after checking it is a probability in [0, 1) (or [0, 1])."""
    try:
        rate = float(value)
    except (TypeError, ValueError):
        rate = math.nan
    if isinstance(value, bool) or not (0.0 <= rate < 1.0 or (upper_inclusive and rate == 1.0)):
        interval = '[0, 1]' if upper_inclusive else '[0, 1)'
        raise ValueError(f'{name} must be a number in {interval}, got {value!r}')
    return rate


def _check_scales(initial_scales: float | Iterable[float]) -> tuple[float, ...]:
    return check_hyperparameter('initial_scales', initial_scales)


class ShortcutConv(nn.Conv2d):
    """The 1x1 projection of a residual shortcut, He-uniform initialised like the GD layers.

    The paper initialises "the network weights" with "a uniform He initialisation" (§5.2): this
    draws from ``U(-b, b)`` with ``b = sqrt(6 / fan_in)``, ``fan_in = C_in``, the rule of the GD
    layers (design.md §2.3), instead of PyTorch's default for ``nn.Conv2d`` (``b = 1 / sqrt(fan_in)``).
    ``nn.Conv2d.reset_parameters(conv)`` still gives that default.
    """

    def reset_parameters(self) -> None:
        nn.init.kaiming_uniform_(self.weight, nonlinearity='relu')  # sqrt(2) * sqrt(3 / fan_in)
        if self.bias is not None:
            nn.init.zeros_(self.bias)


# Earlier versions called the shortcut projection ``downsample`` (timm's ResNet name), although
# the network never subsamples. Checkpoints with that name load everywhere: plain
# ``load_state_dict`` through the hook GaussDerBlock registers, timm through
# ``checkpoint_filter_fn`` and transformers through ``from_pretrained``'s ``key_mapping``, all
# from this one table: old name of a block's submodule -> its name now.
_LEGACY_BLOCK_NAMES = {'downsample': 'shortcut'}
# The same as (pattern, replacement) for ``re.sub`` on a network's state-dict keys.
LEGACY_KEY_RENAMES: tuple[tuple[str, str], ...] = tuple(
    (rf'(blocks\.\d+)\.{old}\.', rf'\1.{new}.') for old, new in _LEGACY_BLOCK_NAMES.items())


def rename_legacy_keys(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Returns ``state_dict`` with the parameter names of earlier versions renamed (see :data:`LEGACY_KEY_RENAMES`)."""
    renamed = {}
    for key, value in state_dict.items():
        for pattern, replacement in LEGACY_KEY_RENAMES:
            key = re.sub(pattern, replacement, key)
        renamed[key] = value
    return renamed


def _rename_legacy_block_keys(module, state_dict, prefix, *args) -> None:
    """Load-state-dict pre-hook of a block: renames the tensors of its submodules' old names in place."""
    for old_name, new_name in _LEGACY_BLOCK_NAMES.items():
        old = f'{prefix}{old_name}.'
        for key in [k for k in state_dict if k.startswith(old)]:
            state_dict[f'{prefix}{new_name}.{key[len(old):]}'] = state_dict.pop(key)


def _hooked(module: nn.Module) -> bool:
    """Whether calling ``module`` runs forward hooks of its own or global ones (what ``nn.Module.__call__``
    checks before taking its fast path)."""
    return bool(module._forward_hooks or module._forward_pre_hooks or _torch_module._global_forward_hooks
                or _torch_module._global_forward_pre_hooks)


# Maps from this size are batch-normalised in place in evaluation (:func:`_normalized`); below it the
# map stays in the cache, the module's kernel is as fast and the scale and shift cost more (one
# 96 px image of GaussDerResNet-10, 0.9 MB maps: 1.04x the time with every map in place).
_IN_PLACE_FROM_BYTES = 4 * 2 ** 20


def _normalized(norm: nn.Module, y: torch.Tensor, producer: nn.Module) -> torch.Tensor:
    """Returns ``norm(y)`` for the output ``y`` of ``producer``, a fresh map nothing else holds.

    A batch normalisation in evaluation is ``y * scale + shift`` per channel; without a gradient
    to record, a large map is normalised in place, one pass over ``y`` instead of a new
    full-resolution map whose pages are first touched (``benchmarks/README.md``, "Batch norm in
    place"). Everywhere else the module is called: in training, with a gradient, under autocast
    (it runs in float32 there), while traced or compiled (the graph may return ``y`` itself), and
    where ``norm`` or ``producer`` (or a module in it) has forward hooks (a hook must see ``norm``
    called, and may keep ``y``).
    """
    # The tracers first: under torch.fx, y is a proxy whose attributes cannot be tested.
    if (torch.fx._symbolic_trace.is_fx_symbolic_tracing() or torch.compiler.is_compiling()
            or torch.jit.is_tracing() or torch.jit.is_scripting()
            or y.numel() * y.element_size() < _IN_PLACE_FROM_BYTES or torch.is_grad_enabled()
            or type(norm) is not nn.BatchNorm2d or norm.training or norm.running_mean is None
            or y.dtype != norm.running_mean.dtype or torch.is_autocast_enabled(y.device.type)
            or _hooked(norm) or any(_hooked(m) for m in producer.modules())):
        return norm(y)
    scale = torch.rsqrt(norm.running_var + norm.eps)
    if norm.weight is not None:
        scale = scale * norm.weight
    shift = -norm.running_mean * scale if norm.bias is None else torch.addcmul(norm.bias, norm.running_mean, scale,
                                                                               value=-1)
    view = (1, -1) + (1,) * (y.ndim - 2)
    return torch.addcmul(shift.view(view), y, scale.view(view), out=y)


def _folded(layer: GaussDerConv | DSGaussDerConv, norm: nn.Module) -> nn.Module:
    """Folds ``norm`` (a batch normalisation, or what replaced one) into ``layer``; returns what replaces it."""
    if isinstance(norm, nn.BatchNorm2d):
        layer.fold_batch_norm(norm)
        return nn.Identity()
    return norm


class GaussDerBlock(nn.Module):
    """Gaussian derivative residual block: ``GD -> BN -> ReLU -> GD -> BN``, skip, ReLU (eq. 32).

    Both GD layers work at the same ``sigma``. When the channel count changes, the skip is
    ``shortcut``, a 1x1 convolution (He-uniform, :class:`ShortcutConv`) followed by batch
    normalisation (§3.3); otherwise it is the identity. ``drop_path`` is the stochastic-depth
    rate: in training, the residual branch of a sample is dropped with this probability (and
    rescaled otherwise) while the shortcut is kept, as in timm's ResNet.
    """

    def __init__(
            self,
            in_channels: int,
            out_channels: int,
            separable: bool = False,
            jet_order: int = 2,
            zero_order: bool = False,
            eps: float = 0.01,
            drop_path: float = 0.0,
            device=None,
            dtype=None,
    ):
        super().__init__()
        factory = dict(device=device, dtype=dtype)
        drop_path = _check_rate('drop_path', drop_path)
        layer = DSGaussDerConv if separable else GaussDerConv
        # No bias in the GD layers: each is followed by batch normalisation, which has its own.
        gd = dict(jet_order=jet_order, zero_order=zero_order, eps=eps, bias=False, **factory)
        self.conv1 = layer(in_channels, out_channels, **gd)
        self.bn1 = nn.BatchNorm2d(out_channels, **factory)
        self.conv2 = layer(out_channels, out_channels, **gd)
        self.bn2 = nn.BatchNorm2d(out_channels, **factory)
        if in_channels != out_channels:
            self.shortcut = nn.Sequential(
                ShortcutConv(in_channels, out_channels, kernel_size=1, bias=False, **factory),
                nn.BatchNorm2d(out_channels, **factory),
            )
        else:
            self.shortcut = None
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.register_load_state_dict_pre_hook(_rename_legacy_block_keys)

    def reparameterize(self) -> None:
        """Folds the batch normalisations into the GD layers and the shortcut, for inference.

        What timm's ``reparameterize_model`` (``validate.py --reparam``, ``benchmark.py --reparam``)
        calls. The block then computes what it computed in evaluation with one pass less per batch
        normalisation; its parameters and state-dict keys change, and training it afterwards trains
        without batch normalisation.
        """
        self.bn1 = _folded(self.conv1, self.bn1)
        self.bn2 = _folded(self.conv2, self.bn2)
        if self.shortcut is not None and isinstance(self.shortcut[1], nn.BatchNorm2d):
            conv, norm = self.shortcut
            conv.weight, conv.bias = fuse_conv_bn_weights(conv.weight, conv.bias, norm.running_mean, norm.running_var,
                                                          norm.eps, norm.weight, norm.bias)
            self.shortcut[1] = nn.Identity()

    @property
    def downsample(self) -> nn.Sequential | None:
        """Deprecated name of :attr:`shortcut` (the network never subsamples)."""
        warnings.warn('GaussDerBlock.downsample is now called shortcut', DeprecationWarning, stacklevel=2)
        return self.shortcut

    def forward(self, x: torch.Tensor, sigma: float) -> torch.Tensor:
        skip = x if self.shortcut is None else self.shortcut(x)
        # ReLU and the residual sum in place, as in torchvision's ResNet: out of place each would
        # allocate and first-touch another full-resolution map (14% of a GaussDerResNet-10
        # forward, one thread, at 1024 px and on 114 images of 96 px alike). The backward of
        # batch norm and of drop-path needs their inputs, not the outputs overwritten here.
        x = F.relu(_normalized(self.bn1, self.conv1(x, sigma), self.conv1), inplace=True)
        x = self.drop_path(_normalized(self.bn2, self.conv2(x, sigma), self.conv2))
        x = x.add_(skip) if x.dtype == torch.promote_types(x.dtype, skip.dtype) else x + skip
        return F.relu(x, inplace=True)


class GaussDerResNet(nn.Module):
    """Multi-scale-channel Gaussian derivative residual network (§3.3-3.6).

    Layer 1 is a GD layer (never with a zero-order term, §3.8.1) with BN and ReLU; then
    ``len(channels) - 1`` residual blocks (8 in the paper's 18-layer network); the last layer is
    a GD layer with ``num_classes`` outputs and BN. No subsampling anywhere, so any input size
    works. Every scale channel shares all weights; only the initial scale differs.

    The architecture arguments (``in_chans`` and ``channels`` .. ``separable_from_block``) are the
    entries of :data:`~gaussder_hf.architecture.ARCHITECTURE`: their defaults are those of the
    preset ``gaussderresnet18_fashionmnist``, and a bad value gets the error the transformers
    config gives.

    Args:
        in_chans: number of input (colour) channels.
        num_classes: number of classes, the output channels of the last GD layer; 0 builds the
            network without classifier, returning scale-pooled features.
        channels: output channels of the first layer followed by those of each residual block.
        jet_order: highest order of the Gaussian derivatives, 1..3.
        zero_order: add the zero-order term to every layer after the first.
        initial_scales: ``sigma0`` of each scale channel; a single value gives a
            single-scale-channel network.
        scale_ratio: ``r``, the ratio of the scales of consecutive effective layers (eq. 29).
        eps: relative truncation error of the discrete Gaussian kernels.
        spatial_pool: ``'center'`` (central pixel), ``'max'`` (spatial max pooling), ``'avg'``
            (spatial mean) or ``'avgmax'`` (mean of the two).
        scale_pool: ``'max'``, ``'logsumexp'`` or ``'avg'`` pooling over scale channels.
        scale_dropout: dropout rate on the per-scale-channel scores before scale pooling.
        scale_dropout_mode: what ``scale_dropout`` drops in training: ``'score'`` single class
            scores of the ``(B, S, K)`` tensor (set to 0, the rest multiplied by ``1/(1-p)``, as
            ``nn.Dropout``); ``'channel'`` whole scale channels of a sample, which then take no part
            in the scale pooling (at least one is always kept; no rescaling). See design.md §3.10.
        separable_from_block: first residual block (1-based) built from depthwise-separable GD
            layers, as in the DSGaussDerResNet; ``None`` for standard layers throughout.
        drop_rate: timm's classifier dropout: channel dropout (whole maps) on the features
            entering the last GD layer, the counterpart of dropping pooled features before a
            linear classifier.
        drop_path_rate: timm's stochastic depth: residual block ``b`` of ``N`` drops its residual
            branch with rate ``drop_path_rate * (b - 1) / (N - 1)``, as in timm's ResNet.
        drop_block_rate: accepted for timm's scripts; only ``None`` or 0 (no DropBlock).
        global_pool: timm's pooling name, overriding ``spatial_pool``: see :data:`GLOBAL_POOLS`.
        bn_momentum: momentum of every batch normalisation; ``None`` keeps PyTorch's 0.1.
        bn_eps: epsilon of every batch normalisation; ``None`` keeps PyTorch's 1e-5.
    """

    maps_layout = 'auto'  # the layout of the maps inside: see set_maps_layout

    def __init__(
            self,
            in_chans: int = _DEFAULTS['in_chans'],
            num_classes: int = 10,
            channels: Sequence[int] = _DEFAULTS['channels'],
            jet_order: int = _DEFAULTS['jet_order'],
            zero_order: bool = _DEFAULTS['zero_order'],
            initial_scales: float | Sequence[float] = _DEFAULTS['initial_scales'],
            scale_ratio: float = _DEFAULTS['scale_ratio'],
            eps: float = _DEFAULTS['eps'],
            spatial_pool: str = _DEFAULTS['spatial_pool'],
            scale_pool: str = _DEFAULTS['scale_pool'],
            scale_dropout: float = _DEFAULTS['scale_dropout'],
            scale_dropout_mode: str = _DEFAULTS['scale_dropout_mode'],
            separable_from_block: int | None = _DEFAULTS['separable_from_block'],
            drop_rate: float = 0.0,
            drop_path_rate: float = 0.0,
            drop_block_rate: float | None = None,
            global_pool: str | None = None,
            bn_momentum: float | None = None,
            bn_eps: float | None = _DEFAULTS['bn_eps'],
            device=None,
            dtype=None,
    ):
        arguments = locals()
        super().__init__()
        # Every architecture hyperparameter (one per entry of ARCHITECTURE) is checked by the
        # validation the transformers config runs too, and comes back in canonical form.
        architecture = check_architecture({p.name: arguments[p.name] for p in ARCHITECTURE})
        channels = architecture['channels']
        num_blocks = len(channels) - 1
        drop_rate = _check_rate('drop_rate', drop_rate)
        drop_path_rate = _check_rate('drop_path_rate', drop_path_rate)
        if drop_block_rate not in (None, 0, 0.0) or isinstance(drop_block_rate, bool):
            raise ValueError(
                f'drop_block_rate must be None or 0, got {drop_block_rate!r}: a GaussDerResNet has no DropBlock '
                '(use drop_rate, drop_path_rate or scale_dropout for regularisation)')
        if bn_momentum is not None:
            bn_momentum = _check_rate('bn_momentum', bn_momentum, upper_inclusive=True)
        self.in_chans = in_chans = architecture['in_chans']
        self.num_classes = num_classes
        self.channels = channels
        self.jet_order = jet_order = architecture['jet_order']
        self.zero_order = zero_order = architecture['zero_order']
        self.initial_scales = architecture['initial_scales']
        self.scale_ratio = architecture['scale_ratio']
        self.eps = eps = architecture['eps']
        # timm's global_pool, where given, overrides the spatial selection.
        self.spatial_pool = architecture['spatial_pool'] if global_pool is None else resolve_global_pool(
            global_pool, num_classes)
        self.scale_pool = architecture['scale_pool']
        self.scale_dropout_mode = architecture['scale_dropout_mode']
        self.separable_from_block = separable_from_block = architecture['separable_from_block']
        self.grad_checkpointing = False
        self.bn_momentum = bn_momentum
        self.bn_eps = architecture['bn_eps']

        factory = dict(device=device, dtype=dtype)
        gd = dict(jet_order=jet_order, eps=eps, **factory)
        self.stem_conv = GaussDerConv(in_chans, channels[0], zero_order=False, bias=False, **gd)
        self.stem_norm = nn.BatchNorm2d(channels[0], **factory)
        # Stochastic depth grows linearly from 0 at the first block to drop_path_rate at the last.
        block_drop_path = [drop_path_rate * (b - 1) / max(num_blocks - 1, 1) for b in range(1, num_blocks + 1)]
        self.blocks = nn.ModuleList([
            GaussDerBlock(
                channels[b - 1], channels[b],
                separable=separable_from_block is not None and b >= separable_from_block,
                zero_order=zero_order, drop_path=block_drop_path[b - 1], **gd)
            for b in range(1, num_blocks + 1)
        ])
        # One feature per stage, all at the input resolution: no layer subsamples.
        self.feature_info = [dict(num_chs=channels[0], reduction=1, module='stem_norm')] + [
            dict(num_chs=channels[b], reduction=1, module=f'blocks.{b - 1}') for b in range(1, num_blocks + 1)]
        self.num_features = self.head_hidden_size = channels[-1]
        # Dropout2d drops whole maps: since spatial selection commutes with zeroing a map, this is
        # timm's dropout of pooled features before the classifier, moved in front of the GD layer.
        self.head_drop = nn.Dropout2d(drop_rate) if drop_rate > 0 else nn.Identity()
        self.head_conv: GaussDerConv | None = None
        self.head_norm: nn.Module | None = None
        self.reset_classifier(num_classes)
        self.scale_dropout = nn.Dropout(architecture['scale_dropout'])
        self._set_bn_hyperparameters(self)

    def _set_bn_hyperparameters(self, module: nn.Module) -> None:
        """Applies ``bn_momentum`` and ``bn_eps`` to every batch normalisation inside ``module``."""
        for norm in module.modules():
            if isinstance(norm, nn.modules.batchnorm._BatchNorm):
                if self.bn_momentum is not None:
                    norm.momentum = self.bn_momentum
                if self.bn_eps is not None:
                    norm.eps = self.bn_eps

    @property
    def global_pool(self) -> str:
        """Returns the spatial selection under its timm name (``''`` for none); see :data:`GLOBAL_POOLS`."""
        return self.spatial_pool

    @property
    def num_layers(self) -> int:
        """Returns the number of GD layers of a scale channel (18 for the paper's network)."""
        return 2 * len(self.blocks) + 2

    def layer_scale(self, layer: int, sigma0: float) -> float:
        """Returns the scale of GD layer ``layer`` (1-based) in the channel with initial scale ``sigma0``.

        Eq. (28), (29): ``sigma0 * scale_ratio**(k_eff - 1)`` with ``k_eff = floor(layer / 2) + 1``.
        """
        if not 1 <= layer <= self.num_layers:
            raise ValueError(f'layer must be in 1..{self.num_layers}, got {layer!r}')
        return sigma0 * self.scale_ratio ** (layer // 2)

    def gd_layers(self) -> list[nn.Module]:
        """Returns the GD layers of a scale channel in order: layer ``k`` (1-based) is item ``k - 1``."""
        layers = [self.stem_conv]
        for block in self.blocks:
            layers += [block.conv1, block.conv2]
        if self.head_conv is not None:
            layers.append(self.head_conv)
        return layers

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recomputes each residual block in the backward pass instead of storing its activations."""
        self.grad_checkpointing = enable

    def reparameterize(self) -> None:
        """Folds every batch normalisation into the layer before it, for inference.

        timm's ``reparameterize_model`` folds those of the residual blocks (it calls the method on a
        model's children); this method folds the first and the last layer's too. The network then
        computes what it computed in evaluation, up to rounding, with one pass less per batch
        normalisation (``benchmarks/README.md``, "Batch norm folded"); see
        :meth:`GaussDerBlock.reparameterize`.
        """
        self.stem_norm = _folded(self.stem_conv, self.stem_norm)
        for block in self.blocks:
            block.reparameterize()
        if self.head_conv is not None:
            self.head_norm = _folded(self.head_conv, self.head_norm)

    def set_maps_layout(self, layout: str = 'auto') -> None:
        """Sets the memory layout of the maps inside the network: ``'channels_last'``, ``'contiguous'``
        (the plain layout), ``'channels_last_mix'`` (plain maps, each GD layer's mixing convolution on a
        channels-last copy of its smoothed input) or ``'auto'`` (the default: on a CPU, where this
        network's channel counts make channels-last faster, channels-last, but ``'channels_last_mix'``
        in training with several intra-op threads on images under 128 px; as measured by
        ``benchmarks/maps_layout.py``). The values are the same in every layout (up to rounding); maps
        the network returns (features, intermediates, class maps) may come in either.
        """
        if layout not in MAPS_LAYOUTS:
            raise ValueError(f'maps layout must be one of {MAPS_LAYOUTS}, got {layout!r}')
        self.maps_layout = layout

    def _layout_for(self, x: torch.Tensor) -> str:
        """Returns the layout of the maps of input ``x`` inside the network (one of :data:`MAPS_LAYOUTS` but 'auto')."""
        if self.maps_layout == 'channels_last_mix' and torch.compiler.is_compiling():
            return 'contiguous'  # the compiler picks the layout of each convolution itself
        if self.maps_layout != 'auto':
            return self.maps_layout
        # Depthwise-separable layers mix with a batched GEMM on the plain layout, float64 has no
        # oneDNN kernels, and traced code leaves layouts to the compiler.
        if (torch.compiler.is_compiling() or x.device.type != 'cpu' or x.dtype not in (torch.float32, torch.bfloat16)
                or self.separable_from_block is not None):
            return 'contiguous'
        work = [(layer.in_channels * layer.out_channels,
                 layer.in_channels % _ALIGNED_CHANNELS != 0 or layer.out_channels % _ALIGNED_CHANNELS != 0)
                for layer in self.gd_layers()]
        misaligned = sum(macs for macs, off in work if off)
        if misaligned < _CHANNELS_LAST_FROM_SHARE * sum(macs for macs, _ in work):
            return 'contiguous'
        if (torch.get_num_threads() != 1 and torch.is_grad_enabled()
                and min(x.shape[2:]) < _CHANNELS_LAST_TRAINING_FROM_SIDE):
            return 'channels_last_mix'  # the channels-last batch norm backward is slow with several threads
        return 'channels_last'

    def _runs_channels_last(self, x: torch.Tensor) -> bool:
        """Whether the maps of input ``x`` are laid out channels-last inside the network."""
        return self._layout_for(x) == 'channels_last'

    @staticmethod
    def _run_block(block: GaussDerBlock, x: torch.Tensor, sigma: float, mix: bool) -> torch.Tensor:
        # The mixing layout is set inside, so that a checkpointed block recomputes in it too.
        if not mix:
            return block(x, sigma)
        with mixing_channels_last():
            return block(x, sigma)

    def _stages(
            self, x: torch.Tensor, sigma0: float, take: Sequence[int] = (), last: int | None = None,
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Runs the scale channel ``sigma0`` through the first layer and the residual blocks.

        Stage 0 is the first layer, stage ``b`` residual block ``b``. Returns the output of stage
        ``last`` (default: the last block) and the outputs of the stages in ``take``, in order.
        """
        self._check_input(x)
        sigma0 = check_sigma(sigma0)
        layout = self._layout_for(x)
        mix = layout == 'channels_last_mix'
        x = to_maps_layout(x, layout == 'channels_last')
        last = len(self.blocks) if last is None else last
        taken = []
        with mixing_channels_last() if mix else contextlib.nullcontext():
            x = F.relu(_normalized(self.stem_norm, self.stem_conv(x, self.layer_scale(1, sigma0)), self.stem_conv),
                       inplace=True)
        if 0 in take:
            taken.append(x)
        for b, block in enumerate(self.blocks, start=1):
            if b > last:
                break
            sigma = self.layer_scale(2 * b, sigma0)
            if self.grad_checkpointing and torch.is_grad_enabled():
                x = checkpoint(self._run_block, block, x, sigma, mix, use_reentrant=False)
            else:
                x = self._run_block(block, x, sigma, mix)
            if b in take:
                taken.append(x)
        return x, taken

    def _features(self, x: torch.Tensor, sigma0: float) -> torch.Tensor:
        """Returns the maps entering the last GD layer in the scale channel ``sigma0``, ``(B, C, H, W)``."""
        return self._stages(x, sigma0)[0]

    def _head(self, features: torch.Tensor, sigma0: float) -> torch.Tensor:
        if self.head_conv is None:  # classifier removed: the features are the output
            return features
        features = self.head_drop(features)
        return _normalized(self.head_norm, self.head_conv(features, self.layer_scale(self.num_layers, sigma0)),
                           self.head_conv)

    def forward_channel(self, x: torch.Tensor, sigma0: float) -> torch.Tensor:
        """Returns the final-layer maps of the scale channel with initial scale ``sigma0``, ``(B, K, H, W)``."""
        return self._head(self._features(x, sigma0), sigma0)

    def forward_scale_channels(self, x: torch.Tensor) -> torch.Tensor:
        """Returns the spatially selected class scores of every scale channel, ``(B, S, num_classes)``.

        With ``global_pool=''`` nothing is selected and the class maps come back, ``(B, S, K, H, W)``.

        Taken after spatial selection and before scale-channel dropout and scale pooling. The
        scale channels run one after another, so inference holds one channel's maps at a time.
        """
        return torch.stack(
            [spatial_select(self.forward_channel(x, sigma0), self.spatial_pool) for sigma0 in self.initial_scales],
            dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Returns the class logits ``(B, num_classes)``, pooled over the scale channels (eq. 43).

        With ``global_pool=''``: dense class maps ``(B, num_classes, H, W)``, pooled over the scale
        channels pixel by pixel.
        """
        return self._pool(self.forward_scale_channels(x))

    def _pool(self, scores: torch.Tensor) -> torch.Tensor:
        """Scale-channel dropout (training only, with a classifier) and scale pooling of ``(B, S, K, ...)`` scores."""
        keep = None
        if self.head_conv is not None and self.training and self.scale_dropout.p > 0:
            if self.scale_dropout_mode == 'channel':
                keep = scale_channel_keep_mask(scores.shape[0], scores.shape[1], self.scale_dropout.p, scores.device)
            else:
                scores = self.scale_dropout(scores)
        return pool_scales(scores, self.scale_pool, keep)

    # The timm model contract. Features keep one map per scale channel, ``(B, S, C, H, W)``,
    # because the last GD layer needs each channel's own scale.

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Returns the maps entering the last GD layer, per scale channel, ``(B, S, num_features, H, W)``."""
        return torch.stack([self._features(x, sigma0) for sigma0 in self.initial_scales], dim=1)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Returns logits ``(B, num_classes)`` from :meth:`forward_features` output.

        With ``pre_logits=True`` (or no classifier) it returns the spatially selected features
        pooled over scale channels, ``(B, num_features)`` (``(B, 2 * num_features)`` for
        ``'catavgmax'``, the maps ``(B, num_features, H, W)`` for ``''``).
        """
        if x.ndim != 5 or x.shape[1] != len(self.initial_scales):
            raise ValueError(
                f'forward_head expects (B, {len(self.initial_scales)}, C, H, W) features from forward_features, '
                f'got shape {tuple(x.shape)}')
        if pre_logits or self.head_conv is None:
            return pool_scales(spatial_select(x, self.spatial_pool), self.scale_pool)
        scores = torch.stack(
            [spatial_select(self._head(x[:, s], sigma0), self.spatial_pool)
             for s, sigma0 in enumerate(self.initial_scales)],
            dim=1)
        return self._pool(scores)

    def _take_indices(self, indices: int | Sequence[int] | None) -> tuple[list[int], int]:
        """Returns timm's absolute stage indices for ``indices``, after checking they exist."""
        num_stages = len(self.blocks) + 1
        allowed = f'None, an int in 1..{num_stages} (the last n stages) or indices in -{num_stages}..{num_stages - 1}'
        def is_int(value) -> bool:
            return isinstance(value, int) and not isinstance(value, bool)

        if indices is None:
            valid = True
        elif is_int(indices):
            valid = 1 <= indices <= num_stages
        elif isinstance(indices, (list, tuple)):
            valid = bool(indices) and all(is_int(i) and -num_stages <= i < num_stages for i in indices)
        else:
            valid = False
        if not valid:
            raise ValueError(f'stage indices must be {allowed}, got {indices!r}')
        return feature_take_indices(num_stages, indices)

    def forward_intermediates(
            self,
            x: torch.Tensor,
            indices: int | Sequence[int] | None = None,
            norm: bool = False,
            stop_early: bool = False,
            output_fmt: str = 'NCHW',
            intermediates_only: bool = False,
    ) -> list[torch.Tensor] | tuple[torch.Tensor, list[torch.Tensor]]:
        """Returns the feature maps of the stages ``indices`` (timm's backbone interface).

        Stage 0 is the first layer, stage ``b`` residual block ``b``. The feature map of a stage
        is pooled over the scale channels pixel by pixel with ``scale_pool``, ``(B, C, H, W)`` at the
        input resolution, which keeps the scale covariance of the maps of one scale channel while
        making their values (approximately) scale invariant; see docs/features.md.

        Args:
            x: input images ``(B, in_chans, H, W)``.
            indices: the last ``n`` stages for an int, the stages listed (negative from the end)
                for a sequence, all for ``None``. The maps come back in network order.
            norm: accepted for timm; the network has no separate final norm, so it changes nothing.
            stop_early: stop after the last requested stage (always done with ``intermediates_only``).
            output_fmt: only ``'NCHW'``.
            intermediates_only: return only the list of maps.

        Returns:
            The list of maps, or ``(features, maps)`` where ``features`` is the output of
            :meth:`forward_features` (per scale channel, ``(B, S, C, H, W)``) for the stages run.
        """
        if output_fmt != 'NCHW':
            raise ValueError(f"output_fmt must be 'NCHW' (the maps are channel-first), got {output_fmt!r}")
        take, max_index = self._take_indices(indices)
        last = max_index if (stop_early or intermediates_only) else len(self.blocks)
        finals, per_channel = [], []
        for sigma0 in self.initial_scales:
            final, taken = self._stages(x, sigma0, take, last)
            finals.append(final)
            per_channel.append(taken)
        intermediates = [
            pool_scales(torch.stack([taken[i] for taken in per_channel], dim=1), self.scale_pool)
            for i in range(len(per_channel[0]))]
        if intermediates_only:
            return intermediates
        return torch.stack(finals, dim=1), intermediates

    def prune_intermediate_layers(
            self,
            indices: int | Sequence[int] = 1,
            prune_norm: bool = False,
            prune_head: bool = True,
    ) -> list[int]:
        """Removes the residual blocks after the last stage in ``indices`` and the classifier.

        Used by timm's ``features_only`` wrapper. Returns the absolute stage indices kept.
        """
        take, max_index = self._take_indices(indices)
        pruned = max_index < len(self.blocks)
        self.blocks = self.blocks[:max_index]
        self.channels = self.channels[:max_index + 1]
        self.feature_info = self.feature_info[:max_index + 1]
        self.num_features = self.head_hidden_size = self.channels[-1]
        if prune_head or pruned:  # the classifier was sized for the last block
            self.reset_classifier(0)
        return take

    def get_classifier(self) -> nn.Module:
        """Returns the classifier: the last GD layer (an identity after ``reset_classifier(0)``)."""
        return self.head_conv if self.head_conv is not None else nn.Identity()

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        """Replaces the last GD layer and its BN by freshly initialised ones with ``num_classes`` outputs.

        ``num_classes=0`` removes the classifier: the network then returns pooled features.
        ``global_pool`` (timm's name, or ``'center'``) sets the spatial selection: see
        :data:`GLOBAL_POOLS`.
        """
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 0:
            raise ValueError(f'num_classes must be an integer >= 0, got {num_classes!r}')
        if global_pool is not None:
            self.spatial_pool = resolve_global_pool(global_pool, num_classes)
        elif self.spatial_pool == 'catavgmax' and num_classes:
            resolve_global_pool('catavgmax', num_classes)  # raises: the current pooling needs no classifier
        self.num_classes = num_classes
        factory = dict(device=self.stem_norm.weight.device, dtype=self.stem_norm.weight.dtype)
        if num_classes:
            self.head_conv = GaussDerConv(
                self.num_features, num_classes, jet_order=self.jet_order, zero_order=self.zero_order,
                eps=self.eps, bias=False, **factory)
            self.head_norm = nn.BatchNorm2d(num_classes, **factory)
            self._set_bn_hyperparameters(self.head_norm)
        else:
            self.head_conv = None
            self.head_norm = None

    def group_matcher(self, coarse: bool = False) -> dict:
        """Returns regexes grouping parameters into stem and blocks (timm's layer-wise lr decay)."""
        blocks = r'^blocks\.(\d+)' if coarse else [(r'^blocks\.(\d+)', None), (r'^head_', (99999,))]
        return dict(stem=r'^stem_', blocks=blocks)

    def with_initial_scales(self, initial_scales: float | Sequence[float]) -> GaussDerResNet:
        """Returns a copy of this network with the same weights on another grid of scale channels."""
        return transfer_scales(self, initial_scales)

    def _check_input(self, x: torch.Tensor) -> None:
        if not isinstance(x, torch.Tensor):
            raise ValueError(f'expected a tensor input, got {type(x).__name__}')
        if x.ndim != 4:
            raise ValueError(f'expected a 4-D input (B, C, H, W), got shape {tuple(x.shape)}')
        if x.shape[1] != self.in_chans:
            raise ValueError(f'expected {self.in_chans} input channels, got {x.shape[1]} (shape {tuple(x.shape)})')
        if not x.is_floating_point():
            raise TypeError(
                f'expected a floating-point input, got dtype {x.dtype}: raw pixels must be scaled and normalised '
                'first, with GaussDerResNetImageProcessor (or x.float() / 255, then the normalisation of '
                "model.pretrained_cfg's mean and std)")
        dtype = self.stem_conv.weight.dtype
        # Under autocast the operations choose their own precision; outside it, input and weights
        # must agree (a float64 model accepts float64 input: model.double()).
        if x.dtype != dtype and not torch.is_autocast_enabled(x.device.type):
            raise TypeError(f'the input dtype {x.dtype} differs from the model dtype {dtype}: convert the input '
                            f'(x.to({dtype})) or the model (model.to({x.dtype}))')

    def extra_repr(self) -> str:
        scales = ', '.join(f'{s:.4g}' for s in self.initial_scales)
        return (f'initial_scales=({scales}), scale_ratio={self.scale_ratio}, '
                f'spatial_pool={self.spatial_pool!r}, scale_pool={self.scale_pool!r}, '
                f'scale_dropout_mode={self.scale_dropout_mode!r}')


def transfer_scales(model: GaussDerResNet, initial_scales: float | Sequence[float]) -> GaussDerResNet:
    """Returns a copy of ``model`` with the same weights on the scale channels ``initial_scales``.

    Since all scale channels share their weights, moving a trained network to another grid of
    initial scales needs no retraining: single-scale-channel to multi-scale-channel transfer
    (App. A.4) and the evaluation grid with the extra large boundary channel (App. A.4, A.5), e.g.
    ``transfer_scales(model, evaluation_scales('gaussderresnet18_fashionmnist'))`` or the denser
    grid ``geometric_scales(2**-1.5, 2**0.25, 11) + (2 * 2**0.5,)``. The input model is left
    untouched.
    """
    scales = _check_scales(initial_scales)
    clone = copy.deepcopy(model)
    clone.initial_scales = scales
    return clone
