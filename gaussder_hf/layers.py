"""Gaussian derivative layers (Perzanowski & Lindeberg, arXiv:2603.02843, eq. 3, 31, 53-55).

A Gaussian derivative (GD) layer is a learned linear combination of scale-normalised Gaussian
derivatives of its input channels. The weights do not depend on the scale: ``sigma`` is given
per call, so one layer serves every scale channel of a multi-scale-channel network.

Efficient form (used in ``forward``): one separable discrete Gaussian smoothing per input
channel (a dense matrix product per axis with the extension folded in on small images,
block-Toeplitz GEMMs on tiles of the mirror-extended input on large ones: see
:mod:`gaussder_hf.kernels`), then the central differences and the channel mix together as one
small convolution of the smoothed input: ``sum_alpha w[j, i, alpha] delta^alpha`` is a
3x3 filter in 2-D (5x5 for jet_order 3). The jet ``(B, C_in, J, H, W)`` is never materialised,
which on CPU costs less than the 1x1 mix over ``C_in * J`` channels alone. The dense form (one
convolution with the composed kernel, whose size grows with sigma) is kept only as a
reference, :func:`dense_reference`, for tests and benchmarks.

Low precision (``torch.autocast`` with bfloat16 or float16): the differences of the jet
subtract nearby smoothed values, so smoothed maps rounded to 8 mantissa bits first leave the
``sigma**|alpha|``-normalised derivatives mostly rounding noise at sigma >= 2 (relative error
0.5 at sigma 2, > 1 beyond). Under autocast the jet is therefore computed in float32 and only
the channel mix, the part that carries the FLOPs, runs in the autocast dtype.
"""
from __future__ import annotations

import contextlib
import contextvars
import math
import warnings
from collections.abc import Iterator

import torch
import torch.nn as nn
from torch.nn.utils.fusion import fuse_conv_bn_weights

from .kernels import (
    check_eps,
    check_jet_order,
    check_sigma,
    composed_kernel_1d,
    conv_nd,
    difference_basis,
    gaussian_jet,
    gaussian_smooth,
    is_channels_last,
    jet_indices,
    jet_normalisation,
    mirror_pad,
    separable_filters,
    stencil_radius,
    truncation_radius,
)

__all__ = ['GaussDerConv', 'DSGaussDerConv', 'dense_reference', 'tf32_hazard']


def tf32_hazard(device: torch.device | str, dtype: torch.dtype) -> str | None:
    """Returns why float32 GD layers on ``device`` would not compute in float32 now, or ``None``.

    On NVIDIA GPUs from Ampere on, PyTorch may run float32 convolutions (``torch.backends.cudnn.
    allow_tf32``, on by default) and matrix products (``torch.backends.cuda.matmul.allow_tf32``,
    i.e. ``torch.set_float32_matmul_precision('high')``) in TF32, with a 10-bit mantissa. A GD
    layer's central differences subtract nearby smoothed values, so that rounding is amplified:
    measured on an H200, weight gradients off by 8% (sigma 2) to 860% (sigma 16) with TF32
    matrix products, and the presets' gradients off by 5-64% with cuDNN's TF32 alone.
    """
    device = torch.device(device)
    if device.type != 'cuda' or dtype != torch.float32:
        return None
    if torch.cuda.is_available() and torch.cuda.get_device_capability(device) < (8, 0):
        return None  # no TF32 before Ampere
    flags = [name for name, on in (('torch.backends.cudnn.allow_tf32', torch.backends.cudnn.allow_tf32),
                                   ('torch.backends.cuda.matmul.allow_tf32', torch.backends.cuda.matmul.allow_tf32))
             if on]
    if not flags:
        return None
    return (f'GD layers in float32 on {device.type} with TF32 enabled ({", ".join(f + " = True" for f in flags)}): '
            'their central differences cancel, and TF32 rounding makes their gradients differ from float32 by '
            '5% to several times their size. For float32 results set torch.backends.cudnn.allow_tf32 = False '
            "and torch.set_float32_matmul_precision('highest'); silence this warning if TF32 is what you want.")


_tf32_warned = False


def _warn_tf32_once(x: torch.Tensor) -> None:
    global _tf32_warned
    if _tf32_warned or not x.is_cuda or torch.compiler.is_compiling():
        return
    message = tf32_hazard(x.device, x.dtype)
    if message is not None:
        _tf32_warned = True
        warnings.warn(message, UserWarning, stacklevel=4)


def _memory_format(x: torch.Tensor) -> torch.memory_format:
    """Returns the memory format of ``x`` (channels-last only when ``x`` is laid out that way)."""
    if is_channels_last(x):
        return torch.channels_last if x.ndim == 4 else torch.channels_last_3d
    return torch.contiguous_format


# Set by a network for the calls of its layers (``GaussDerResNet.set_maps_layout('channels_last_mix')``):
# its maps stay in the plain layout, and each GaussDerConv hands its mixing convolution a channels-last
# copy of the smoothed input (oneDNN's 3x3 convolution runs 2-3x faster so at 24 channels) and takes
# the output back plain. A context variable, so that concurrent calls from other threads keep theirs.
_mixing_channels_last: contextvars.ContextVar[bool] = contextvars.ContextVar('mixing_channels_last', default=False)


@contextlib.contextmanager
def mixing_channels_last() -> Iterator[None]:
    """Runs the mixing convolution of every :class:`GaussDerConv` called inside the block on channels-last
    maps (plain-layout inputs and outputs stay plain)."""
    token = _mixing_channels_last.set(True)
    try:
        yield
    finally:
        _mixing_channels_last.reset(token)


class _GaussDerBase(nn.Module):
    """Shared bookkeeping of the standard and the depthwise-separable GD layer."""

    def __init__(
            self,
            in_channels: int,
            out_channels: int,
            jet_order: int,
            zero_order: bool,
            eps: float,
            spatial_dims: int,
    ):
        super().__init__()
        for name, value in (('in_channels', in_channels), ('out_channels', out_channels)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f'{name} must be a positive integer, got {value!r}')
        if spatial_dims not in (1, 2, 3):
            raise ValueError(f'spatial_dims must be 1, 2 or 3, got {spatial_dims!r}')
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.jet_order = check_jet_order(jet_order)
        self.zero_order = bool(zero_order)
        self.eps = check_eps(eps)
        self.spatial_dims = spatial_dims
        self.alphas = jet_indices(self.jet_order, spatial_dims, self.zero_order)

    @property
    def jet_size(self) -> int:
        """Returns J, the number of Gaussian derivatives per input channel."""
        return len(self.alphas)

    def jet_factors(self, sigma: float, device=None, dtype=None) -> torch.Tensor:
        """Returns ``sigma**|alpha| / alpha!`` for every member of the jet, shape ``(J,)``."""
        return torch.tensor([jet_normalisation(a, sigma) for a in self.alphas], device=device, dtype=dtype)

    def check_input(self, x: torch.Tensor) -> None:
        if not isinstance(x, torch.Tensor):
            raise ValueError(f'expected a tensor input, got {type(x).__name__}')
        if x.ndim != self.spatial_dims + 2:
            raise ValueError(
                f'expected a {self.spatial_dims + 2}-D input (B, C, *spatial), got shape {tuple(x.shape)}')
        if x.shape[1] != self.in_channels:
            raise ValueError(f'expected {self.in_channels} input channels, got {x.shape[1]} (shape {tuple(x.shape)})')
        _warn_tf32_once(x)

    def fold_batch_norm(self, norm: nn.BatchNorm2d) -> None:
        """Folds the batch normalisation ``norm`` that follows this layer, as it acts in evaluation
        (running statistics), into the layer's output weights and bias: afterwards the layer alone
        computes what the pair computed in evaluation, up to rounding.

        The layer is linear in its output weights, so the per-channel affine map of ``norm`` moves into
        them (``torch.nn.utils.fusion.fuse_conv_bn_weights``); a layer without a bias gets one.
        """
        if norm.running_mean is None or norm.running_var is None:
            raise ValueError('only a batch normalisation with running statistics can be folded '
                             '(track_running_stats=True)')
        if norm.num_features != self.out_channels:
            raise ValueError(f'the batch normalisation has {norm.num_features} features, the layer '
                             f'{self.out_channels} output channels')
        weight, self.bias = fuse_conv_bn_weights(getattr(self, self._output_weight), self.bias, norm.running_mean,
                                                 norm.running_var, norm.eps, norm.weight, norm.bias)
        setattr(self, self._output_weight, weight)

    def jet(self, x: torch.Tensor, sigma: float) -> torch.Tensor:
        """Returns the un-normalised jet ``delta^alpha T_sigma * x``, shape ``(B, C_in, J, *spatial)``."""
        return gaussian_jet(
            x, sigma, self.jet_order, zero_order=self.zero_order, eps=self.eps, scale_normalised=False)

    def float32_jet(self, x: torch.Tensor, sigma: float) -> torch.Tensor:
        """Returns :meth:`jet` computed in float32 outside autocast, flattened to ``(B, C_in * J, *spatial)``."""
        with torch.autocast(x.device.type, enabled=False):
            jet = self.jet(x.float(), sigma)
        return jet.flatten(1, 2)

    def smoothed(self, x: torch.Tensor, sigma: float) -> torch.Tensor:
        """Returns ``T_sigma * x`` mirror-extended by the radius of the difference stencils."""
        return gaussian_smooth(x, sigma, self.eps, self.spatial_dims, pad=stencil_radius(self.jet_order))

    def difference_filters(self, weight: torch.Tensor) -> torch.Tensor:
        """Returns ``sum_alpha weight[..., alpha] delta^alpha`` as small filters, shape ``(*lead, *K)``.

        ``weight`` has shape ``(*lead, J)``; ``K`` is the common support ``2 r + 1`` of the
        central differences (r = 1 for jet_order <= 2, 2 for jet_order = 3).
        """
        basis = difference_basis(self.jet_order, self.spatial_dims, self.zero_order, device=weight.device,
                                 dtype=weight.dtype)
        return torch.matmul(weight, basis.view(self.jet_size, -1)).view(*weight.shape[:-1], *basis.shape[1:])

    def basis(self, sigma: float, dtype=torch.float64) -> torch.Tensor:
        """Returns the composed kernels ``c_alpha sigma**|alpha| delta^alpha T_sigma``, ``(J, *K)``.

        All kernels share one odd support, so that they can be combined into a dense filter.
        """
        radius = truncation_radius(sigma, self.eps) + stencil_radius(self.jet_order)
        one_d = [composed_kernel_1d(sigma, order, self.eps, radius) for order in range(self.jet_order + 1)]
        kernels = separable_filters(one_d, self.alphas)
        factors = self.jet_factors(sigma, dtype=kernels.dtype).view(-1, *([1] * self.spatial_dims))
        return (kernels * factors).to(dtype)

    def extra_repr(self) -> str:
        return (f'{self.in_channels}, {self.out_channels}, jet_order={self.jet_order}, '
                f'zero_order={self.zero_order}, eps={self.eps}')


class GaussDerConv(_GaussDerBase):
    """Gaussian derivative layer, eq. (3)/(31).

    ``out_j = sum_i sum_alpha w[j, i, alpha] c_alpha sigma**|alpha| delta^alpha (T_sigma * f_i) + b_j``
    with ``c_alpha = 1 / alpha!`` (reconstructed) and ``alpha`` running over the N-jet of
    :func:`~gaussder_hf.kernels.jet_indices`.

    Args:
        in_channels: number of input channels ``C_in``.
        out_channels: number of output channels ``C_out``.
        jet_order: highest order of differentiation N, 1..3.
        zero_order: include the smoothed input itself (order 0) in the jet (§3.8.1).
        eps: relative truncation error of the discrete Gaussian kernel.
        bias: add a learned bias per output channel.
        spatial_dims: number of spatial dimensions of the input (2 for images).
    """

    _output_weight = 'weight'  # what :meth:`fold_batch_norm` scales

    def __init__(
            self,
            in_channels: int,
            out_channels: int,
            jet_order: int = 2,
            zero_order: bool = False,
            eps: float = 0.01,
            bias: bool = True,
            spatial_dims: int = 2,
            device=None,
            dtype=None,
    ):
        super().__init__(in_channels, out_channels, jet_order, zero_order, eps, spatial_dims)
        factory = dict(device=device, dtype=dtype)
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels, self.jet_size, **factory))
        self.bias = nn.Parameter(torch.empty(out_channels, **factory)) if bias else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """He-uniform initialisation over the ``C_in * J`` inputs of each output (§5.2)."""
        fan_in = self.in_channels * self.jet_size
        bound = math.sqrt(6.0 / fan_in)
        nn.init.uniform_(self.weight, -bound, bound)
        if self.bias is not None:
            nn.init.zeros_(self.bias)

    def mixing_weight(self, sigma: float) -> torch.Tensor:
        """Returns the weights with ``c_alpha sigma**|alpha|`` folded in, shape ``(C_out, C_in * J)``.

        Folding the normalisation into the small weight tensor instead of scaling the large jet
        saves one pass over the jet; ``forward`` folds these weights into difference filters.
        """
        factors = self.jet_factors(sigma, self.weight.device, self.weight.dtype)
        return (self.weight * factors).reshape(self.out_channels, -1)

    def forward(self, x: torch.Tensor, sigma: float) -> torch.Tensor:
        self.check_input(x)
        sigma = check_sigma(sigma)
        # sum_i sum_alpha w[j, i, alpha] delta^alpha (T * f_i) = sum_i (sum_alpha w[j, i, alpha]
        # delta^alpha) * (T * f_i): the central differences and the channel mix fold into one
        # small dense convolution (3x3 in 2-D) of the smoothed, mirror-extended input. The jet
        # itself is never materialised.
        if torch.is_autocast_enabled(x.device.type):
            # Low precision: the jet in float32, the mix as a 1x1 convolution in the autocast dtype.
            weight = self.mixing_weight(sigma).view(self.out_channels, -1, *([1] * self.spatial_dims))
            out = conv_nd(self.spatial_dims)(self.float32_jet(x, sigma), weight, self.bias)
            return out.contiguous(memory_format=_memory_format(x))
        weight = self.mixing_weight(sigma).view(self.out_channels, self.in_channels, self.jet_size)
        smoothed = self.smoothed(x, sigma)
        if not torch.compiler.is_compiling() and _mixing_channels_last.get() and smoothed.ndim == 4:
            smoothed = smoothed.contiguous(memory_format=torch.channels_last)
        out = conv_nd(self.spatial_dims)(smoothed, self.difference_filters(weight), self.bias)
        # The convolutional smoothing hands over channels-last maps (faster for both convolutions);
        # the output keeps the layout of the input.
        return out.contiguous(memory_format=_memory_format(x))

    def composed_kernel(self, sigma: float) -> torch.Tensor:
        """Returns the dense filter of the layer at ``sigma``, shape ``(C_out, C_in, *K)``.

        This is the layer's receptive field: convolving the mirror-extended input with it gives
        the same result as ``forward`` (see :func:`dense_reference`).
        """
        sigma = check_sigma(sigma)
        basis = self.basis(sigma, self.weight.dtype).to(self.weight.device)
        return torch.einsum('oij,j...->oi...', self.weight, basis)


class DSGaussDerConv(_GaussDerBase):
    """Depthwise-separable Gaussian derivative layer, eq. (53)-(55), §3.8.2.

    Per input channel a learned combination over its own jet (depthwise), then a 1x1 mix across
    channels (pointwise): ``out_j = sum_i p[j, i] sum_alpha d[i, alpha] c_alpha sigma**|alpha|
    delta^alpha (T_sigma * f_i) + b_j``.

    Args are those of :class:`GaussDerConv`.
    """

    _output_weight = 'pointwise_weight'  # what :meth:`fold_batch_norm` scales

    def __init__(
            self,
            in_channels: int,
            out_channels: int,
            jet_order: int = 2,
            zero_order: bool = False,
            eps: float = 0.01,
            bias: bool = True,
            spatial_dims: int = 2,
            device=None,
            dtype=None,
    ):
        super().__init__(in_channels, out_channels, jet_order, zero_order, eps, spatial_dims)
        factory = dict(device=device, dtype=dtype)
        self.depthwise_weight = nn.Parameter(torch.empty(in_channels, self.jet_size, **factory))
        self.pointwise_weight = nn.Parameter(torch.empty(out_channels, in_channels, **factory))
        self.bias = nn.Parameter(torch.empty(out_channels, **factory)) if bias else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """He-uniform initialisation of both stages, each over its own fan-in."""
        nn.init.uniform_(self.depthwise_weight, -math.sqrt(6.0 / self.jet_size), math.sqrt(6.0 / self.jet_size))
        nn.init.uniform_(self.pointwise_weight, -math.sqrt(6.0 / self.in_channels), math.sqrt(6.0 / self.in_channels))
        if self.bias is not None:
            nn.init.zeros_(self.bias)

    def forward(self, x: torch.Tensor, sigma: float) -> torch.Tensor:
        self.check_input(x)
        sigma = check_sigma(sigma)
        batch, spatial = x.shape[0], x.shape[2:]
        # The depthwise combination over the jet is one small filter per channel (a grouped
        # convolution of the smoothed input), then the pointwise mix is a batched GEMM.
        if torch.is_autocast_enabled(x.device.type):
            # Low precision: the depthwise stage (where the differences cancel, and whose filters
            # must keep their zero sum) in float32, the pointwise mix in the autocast dtype.
            with torch.autocast(x.device.type, enabled=False):
                combined = self._depthwise(x.float(), sigma)
        else:
            combined = self._depthwise(x, sigma)
        out = torch.matmul(self.pointwise_weight, combined.reshape(batch, self.in_channels, -1))
        if self.bias is not None:
            out = out + self.bias.view(1, -1, 1)
        return out.view(batch, self.out_channels, *spatial)

    def _depthwise(self, x: torch.Tensor, sigma: float) -> torch.Tensor:
        depthwise = self.depthwise_weight * self.jet_factors(sigma, x.device, self.depthwise_weight.dtype)
        filters = self.difference_filters(depthwise).unsqueeze(1)  # (C_in, 1, *K)
        return conv_nd(self.spatial_dims)(self.smoothed(x, sigma), filters, groups=self.in_channels)

    def composed_kernel(self, sigma: float) -> torch.Tensor:
        """Returns the dense filter of the layer at ``sigma``, shape ``(C_out, C_in, *K)``."""
        sigma = check_sigma(sigma)
        basis = self.basis(sigma, self.pointwise_weight.dtype).to(self.pointwise_weight.device)
        per_channel = torch.einsum('ij,j...->i...', self.depthwise_weight, basis)
        return torch.einsum('oi,i...->oi...', self.pointwise_weight, per_channel)


def dense_reference(layer: _GaussDerBase, x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Returns the layer's output computed the naive way: one dense convolution per call.

    The input is mirror-extended by the kernel radius and convolved with
    :meth:`composed_kernel`. This is slow (its cost grows with sigma**2) and exists as an
    independent reference for tests and as the anchor of the benchmarks.
    """
    layer.check_input(x)
    kernel = layer.composed_kernel(sigma).to(x.dtype)
    radius = (kernel.shape[-1] - 1) // 2
    padded = mirror_pad(x, radius, range(2, x.ndim))
    return conv_nd(layer.spatial_dims)(padded, kernel, layer.bias)
