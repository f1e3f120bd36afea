"""GaussDerResNet: scale-covariant and scale-invariant Gaussian derivative ResNets (arXiv:2603.02843).

A scale channel is an 18-layer residual network of Gaussian derivative layers without any
subsampling (§3.3, Fig. 3). Its layer ``k`` works at ``sigma0 * scale_ratio**(k_eff - 1)`` with
``k_eff = floor(k / 2) + 1`` (eq. 28, 29), so both layers of a residual block share a scale. A
multi-scale-channel network runs the same weights at several initial scales ``sigma0`` and pools
the spatially selected class scores over the scale channels (§3.6, eq. 43-46).
"""
from __future__ import annotations

import copy
import math
from typing import Iterable, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from .kernels import check_eps, check_jet_order, check_sigma
from .layers import DSGaussDerConv, GaussDerConv

__all__ = [
    'GaussDerResNet',
    'GaussDerBlock',
    'SPATIAL_POOLS',
    'SCALE_POOLS',
    'spatial_select',
    'pool_scales',
    'transfer_scales',
]

SPATIAL_POOLS = ('center', 'max')
SCALE_POOLS = ('max', 'logsumexp', 'avg')


def spatial_select(maps: torch.Tensor, mode: str) -> torch.Tensor:
    """Returns one value per feature map, ``(B, C, H, W) -> (B, C)`` (§3.4, eq. 38, 39).

    ``'center'`` takes the central pixel, averaging the central two rows/columns along an axis
    of even length (the central 2x2 block of an even-sized image); ``'max'`` is spatial max
    pooling.
    """
    if mode == 'max':
        return maps.amax(dim=(-2, -1))
    if mode == 'center':
        height, width = maps.shape[-2:]
        rows = slice((height - 1) // 2, height // 2 + 1)
        cols = slice((width - 1) // 2, width // 2 + 1)
        return maps[..., rows, cols].mean(dim=(-2, -1))
    raise ValueError(f'spatial_pool must be one of {SPATIAL_POOLS}, got {mode!r}')


def pool_scales(scores: torch.Tensor, mode: str) -> torch.Tensor:
    """Returns the scale-pooled scores, ``(B, S, K) -> (B, K)`` (eq. 44-46).

    ``'logsumexp'`` is normalised as ``logsumexp - log(S)`` (reconstructed), so that it equals
    the common value when all scale channels agree.
    """
    if mode == 'max':
        return scores.amax(dim=1)
    if mode == 'logsumexp':
        return torch.logsumexp(scores, dim=1) - math.log(scores.shape[1])
    if mode == 'avg':
        return scores.mean(dim=1)
    raise ValueError(f'scale_pool must be one of {SCALE_POOLS}, got {mode!r}')


def _check_choice(name: str, value: str, choices: Sequence[str]) -> str:
    if value not in choices:
        raise ValueError(f'{name} must be one of {choices}, got {value!r}')
    return value


def _check_scales(initial_scales: float | Iterable[float]) -> tuple[float, ...]:
    if isinstance(initial_scales, (int, float)) and not isinstance(initial_scales, bool):
        initial_scales = (initial_scales,)
    try:
        scales = tuple(initial_scales)
    except TypeError:
        raise ValueError(f'initial_scales must be a number or a sequence of numbers, got {initial_scales!r}') from None
    if not scales:
        raise ValueError('initial_scales must name at least one scale channel, got an empty sequence')
    for value in scales:
        try:
            check_sigma(value)
        except ValueError:
            raise ValueError(f'every initial scale must be a finite number > 0, got {value!r} in {scales}') from None
    return tuple(float(s) for s in scales)


class GaussDerBlock(nn.Module):
    """Gaussian derivative residual block: ``GD -> BN -> ReLU -> GD -> BN``, skip, ReLU (eq. 32).

    Both GD layers work at the same ``sigma``. When the channel count changes, the skip is a
    1x1 convolution followed by batch normalisation (§3.3).
    """

    def __init__(
            self,
            in_channels: int,
            out_channels: int,
            separable: bool = False,
            jet_order: int = 2,
            zero_order: bool = False,
            eps: float = 0.01,
            device=None,
            dtype=None,
    ):
        super().__init__()
        factory = dict(device=device, dtype=dtype)
        layer = DSGaussDerConv if separable else GaussDerConv
        # No bias in the GD layers: each is followed by batch normalisation, which has its own.
        gd = dict(jet_order=jet_order, zero_order=zero_order, eps=eps, bias=False, **factory)
        self.conv1 = layer(in_channels, out_channels, **gd)
        self.bn1 = nn.BatchNorm2d(out_channels, **factory)
        self.conv2 = layer(out_channels, out_channels, **gd)
        self.bn2 = nn.BatchNorm2d(out_channels, **factory)
        if in_channels != out_channels:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, kernel_size=1, bias=False, **factory),
                nn.BatchNorm2d(out_channels, **factory),
            )
        else:
            self.downsample = None

    def forward(self, x: torch.Tensor, sigma: float) -> torch.Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        x = F.relu(self.bn1(self.conv1(x, sigma)))
        x = self.bn2(self.conv2(x, sigma))
        return F.relu(x + shortcut)


class GaussDerResNet(nn.Module):
    """Multi-scale-channel Gaussian derivative residual network (§3.3-3.6).

    Layer 1 is a GD layer (never with a zero-order term, §3.8.1) with BN and ReLU; then
    ``len(channels) - 1`` residual blocks (8 in the paper's 18-layer network); the last layer is
    a GD layer with ``num_classes`` outputs and BN. No subsampling anywhere, so any input size
    works. Every scale channel shares all weights; only the initial scale differs.

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
        spatial_pool: ``'center'`` (central pixel) or ``'max'`` (spatial max pooling).
        scale_pool: ``'max'``, ``'logsumexp'`` or ``'avg'`` pooling over scale channels.
        scale_dropout: dropout rate on the per-scale-channel scores before scale pooling.
        separable_from_block: first residual block (1-based) built from depthwise-separable GD
            layers, as in the DSGaussDerResNet; ``None`` for standard layers throughout.
    """

    def __init__(
            self,
            in_chans: int = 1,
            num_classes: int = 10,
            channels: Sequence[int] = (24, 24, 24, 48, 48, 48, 64, 64, 128),
            jet_order: int = 2,
            zero_order: bool = False,
            initial_scales: float | Sequence[float] = (1.0,),
            scale_ratio: float = 1.13,
            eps: float = 0.01,
            spatial_pool: str = 'center',
            scale_pool: str = 'max',
            scale_dropout: float = 0.0,
            separable_from_block: int | None = None,
            device=None,
            dtype=None,
    ):
        super().__init__()
        channels = tuple(channels)
        if isinstance(in_chans, bool) or not isinstance(in_chans, int) or in_chans < 1:
            raise ValueError(f'in_chans must be a positive integer, got {in_chans!r}')
        if not channels or any(isinstance(c, bool) or not isinstance(c, int) or c < 1 for c in channels):
            raise ValueError(f'channels must be a non-empty sequence of positive integers, got {channels!r}')
        num_blocks = len(channels) - 1
        if separable_from_block is not None and not 1 <= separable_from_block <= num_blocks + 1:
            raise ValueError(
                f'separable_from_block must be None or in 1..{num_blocks + 1}, got {separable_from_block!r}')
        if not 0.0 <= scale_dropout < 1.0:
            raise ValueError(f'scale_dropout must lie in [0, 1), got {scale_dropout!r}')
        self.in_chans = in_chans
        self.num_classes = num_classes
        self.channels = channels
        self.jet_order = check_jet_order(jet_order)
        self.zero_order = bool(zero_order)
        self.initial_scales = _check_scales(initial_scales)
        self.scale_ratio = check_sigma(scale_ratio)  # any finite positive ratio
        self.eps = check_eps(eps)
        self.spatial_pool = _check_choice('spatial_pool', spatial_pool, SPATIAL_POOLS)
        self.scale_pool = _check_choice('scale_pool', scale_pool, SCALE_POOLS)
        self.separable_from_block = separable_from_block
        self.grad_checkpointing = False

        factory = dict(device=device, dtype=dtype)
        gd = dict(jet_order=jet_order, eps=eps, **factory)
        self.stem_conv = GaussDerConv(in_chans, channels[0], zero_order=False, bias=False, **gd)
        self.stem_norm = nn.BatchNorm2d(channels[0], **factory)
        self.blocks = nn.ModuleList([
            GaussDerBlock(
                channels[b - 1], channels[b],
                separable=separable_from_block is not None and b >= separable_from_block,
                zero_order=zero_order, **gd)
            for b in range(1, num_blocks + 1)
        ])
        self.num_features = self.head_hidden_size = channels[-1]
        self.head_conv: GaussDerConv | None = None
        self.head_norm: nn.BatchNorm2d | None = None
        self.reset_classifier(num_classes)
        self.scale_dropout = nn.Dropout(scale_dropout)

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

    def _features(self, x: torch.Tensor, sigma0: float) -> torch.Tensor:
        """Returns the maps entering the last GD layer in the scale channel ``sigma0``, ``(B, C, H, W)``."""
        self._check_input(x)
        sigma0 = check_sigma(sigma0)
        x = F.relu(self.stem_norm(self.stem_conv(x, self.layer_scale(1, sigma0))))
        for b, block in enumerate(self.blocks, start=1):
            sigma = self.layer_scale(2 * b, sigma0)
            if self.grad_checkpointing and torch.is_grad_enabled():
                x = checkpoint(block, x, sigma, use_reentrant=False)
            else:
                x = block(x, sigma)
        return x

    def _head(self, features: torch.Tensor, sigma0: float) -> torch.Tensor:
        if self.head_conv is None:  # classifier removed: the features are the output
            return features
        return self.head_norm(self.head_conv(features, self.layer_scale(self.num_layers, sigma0)))

    def forward_channel(self, x: torch.Tensor, sigma0: float) -> torch.Tensor:
        """Returns the final-layer maps of the scale channel with initial scale ``sigma0``, ``(B, K, H, W)``."""
        return self._head(self._features(x, sigma0), sigma0)

    def forward_scale_channels(self, x: torch.Tensor) -> torch.Tensor:
        """Returns the spatially selected class scores of every scale channel, ``(B, S, num_classes)``.

        Taken after spatial selection and before scale-channel dropout and scale pooling. The
        scale channels run one after another, so inference holds one channel's maps at a time.
        """
        return torch.stack(
            [spatial_select(self.forward_channel(x, sigma0), self.spatial_pool) for sigma0 in self.initial_scales],
            dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Returns the class logits ``(B, num_classes)``, pooled over the scale channels (eq. 43)."""
        return self._pool(self.forward_scale_channels(x))

    def _pool(self, scores: torch.Tensor) -> torch.Tensor:
        if self.head_conv is not None:
            scores = self.scale_dropout(scores)
        return pool_scales(scores, self.scale_pool)

    # The timm model contract. Features keep one map per scale channel, ``(B, S, C, H, W)``,
    # because the last GD layer needs each channel's own scale.

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Returns the maps entering the last GD layer, per scale channel, ``(B, S, num_features, H, W)``."""
        return torch.stack([self._features(x, sigma0) for sigma0 in self.initial_scales], dim=1)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Returns logits ``(B, num_classes)`` from :meth:`forward_features` output.

        With ``pre_logits=True`` (or no classifier) it returns the spatially selected features
        pooled over scale channels, ``(B, num_features)``.
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

    def get_classifier(self) -> nn.Module:
        """Returns the classifier: the last GD layer (an identity after ``reset_classifier(0)``)."""
        return self.head_conv if self.head_conv is not None else nn.Identity()

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        """Replaces the last GD layer and its BN by freshly initialised ones with ``num_classes`` outputs.

        ``num_classes=0`` removes the classifier: the network then returns pooled features.
        ``global_pool`` (timm's name) sets the spatial selection, ``'center'`` or ``'max'``.
        """
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 0:
            raise ValueError(f'num_classes must be an integer >= 0, got {num_classes!r}')
        if global_pool is not None:
            self.spatial_pool = _check_choice('global_pool', global_pool, SPATIAL_POOLS)
        self.num_classes = num_classes
        factory = dict(device=self.stem_norm.weight.device, dtype=self.stem_norm.weight.dtype)
        if num_classes:
            self.head_conv = GaussDerConv(
                self.num_features, num_classes, jet_order=self.jet_order, zero_order=self.zero_order,
                eps=self.eps, bias=False, **factory)
            self.head_norm = nn.BatchNorm2d(num_classes, **factory)
        else:
            self.head_conv = None
            self.head_norm = None

    def group_matcher(self, coarse: bool = False) -> dict:
        """Returns regexes grouping parameters into stem and blocks (timm's layer-wise lr decay)."""
        return dict(stem=r'^stem_', blocks=r'^blocks\.(\d+)' if coarse else [(r'^blocks\.(\d+)', None), (r'^head_', (99999,))])

    def with_initial_scales(self, initial_scales: float | Sequence[float]) -> 'GaussDerResNet':
        """Returns a copy of this network with the same weights on another grid of scale channels."""
        return transfer_scales(self, initial_scales)

    def _check_input(self, x: torch.Tensor) -> None:
        if not isinstance(x, torch.Tensor):
            raise ValueError(f'expected a tensor input, got {type(x).__name__}')
        if x.ndim != 4:
            raise ValueError(f'expected a 4-D input (B, C, H, W), got shape {tuple(x.shape)}')
        if x.shape[1] != self.in_chans:
            raise ValueError(f'expected {self.in_chans} input channels, got {x.shape[1]} (shape {tuple(x.shape)})')

    def extra_repr(self) -> str:
        scales = ', '.join(f'{s:.4g}' for s in self.initial_scales)
        return (f'initial_scales=({scales}), scale_ratio={self.scale_ratio}, '
                f'spatial_pool={self.spatial_pool!r}, scale_pool={self.scale_pool!r}')


def transfer_scales(model: GaussDerResNet, initial_scales: float | Sequence[float]) -> GaussDerResNet:
    """Returns a copy of ``model`` with the same weights on the scale channels ``initial_scales``.

    Since all scale channels share their weights, moving a trained network to another grid of
    initial scales needs no retraining: single-scale-channel to multi-scale-channel transfer
    (App. A.4) and the denser grid with an extra boundary channel (App. A.5), e.g.
    ``transfer_scales(model, geometric_scales(0.5, 2**0.25, 11) + (4.0,))``. The input model is
    left untouched.
    """
    scales = _check_scales(initial_scales)
    clone = copy.deepcopy(model)
    clone.initial_scales = scales
    return clone
