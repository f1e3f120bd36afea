"""Discrete scale-space primitives: the discrete analogue of the Gaussian, central differences
and the scale-normalised N-jet (Perzanowski & Lindeberg, arXiv:2603.02843, §3.9).

This module is the bottom of the import graph: it depends on torch, numpy and scipy only.

Smoothing has three exact implementations, chosen per call by a cost model measured on a CPU
(``benchmarks/smoothing_cost.py``, ``benchmarks/size_scaling.py``, ``benchmarks/README.md``):

* ``'banded'``: the mirror-extended axis is cut into tiles of ``T`` samples and every output
  tile is ``m`` ``T x T`` band-matrix products of the input tiles it overlaps (two tiles of
  ``T >= 2 N``, or three of 16 samples where that is cheaper), all tiles in one GEMM: ``m T``
  multiply-adds per sample at matrix-product speed, whatever the side.
* ``'conv'``: the input is mirror-extended (:func:`reflect_index`, repeated reflection for
  kernels wider than the image) and convolved depthwise with the truncated 1-D kernel along
  each axis. Its cost per pixel grows with the kernel's support, not with the image side; in
  a GD layer the layout passes around it make it slower than ``'banded'``, so it is used only
  when forced.
* ``'dense'``: one ``(size + 2 pad) x size`` matrix product per axis with the mirror extension
  folded into the matrix. Its cost per pixel grows with the image side, not with sigma, and it
  is the faster one on small and mid-sized images, where one GEMM beats the stencils and the
  layout passes around them. For a call whose maps fit in one cache-sized chunk (below), with
  more than one intra-op thread ``'banded'`` takes over later (its element-wise passes scale
  worse than the GEMMs); a larger call (a large image, or a batch) takes ``'banded'`` from a
  smaller side, with any number of threads.

On a CPU the two matrix methods take the signals (every channel of every image) a few at a time,
in chunks of about 4 MiB, so that their passes over the buffers run in the cache instead of at
memory speed; this makes their cost per pixel nearly independent of the batch size and of the
image side beyond the tile.

All give the same numbers up to rounding (the same taps, summed in another order).
:func:`smoothing_method` forces any one, e.g. for tests and benchmarks.

The fixed operators (dense matrices, kernel taps, reflection indices, difference stencils)
are built on first use and kept in one least-recently-used cache bounded by bytes
(:func:`set_operator_cache_budget`, :func:`operator_cache_bytes`, :func:`clear_caches`), so a
network fed images of many sizes does not accumulate matrices without bound
(:func:`operator_cache_info` counts its hits and misses).

What the layers (:mod:`gaussder_hf.layers`) build on: :func:`gaussian_smooth` with ``pad``
(smoothing and the mirror extension the difference stencils need, in one pass),
:func:`difference_basis` (the central differences of the jet on their common support of radius
:func:`stencil_radius`), :func:`separable_filters` (the outer products that turn 1-D filters into
the jet's N-D filters) and :func:`conv_nd`.

The boundary rule, mirror extension (:func:`reflect_index`), has its one home here: smoothing,
:func:`mirror_pad` and the canvases of :mod:`gaussder_hf.rescaling` (:func:`centred_reflect_index`)
all use it.
"""
from __future__ import annotations

import contextlib
import math
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from functools import lru_cache
from itertools import product
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F

__all__ = [
    'MAX_JET_ORDER',
    'check_sigma',
    'check_eps',
    'check_jet_order',
    'stencil_radius',
    'truncation_radius',
    'discrete_gaussian_kernel',
    'difference_stencil',
    'difference_basis',
    'separable_filters',
    'jet_indices',
    'jet_normalisation',
    'reflect_index',
    'centred_reflect_index',
    'mirror_pad',
    'smoothing_matrix',
    'smoothing_method',
    'chosen_smoothing_method',
    'uses_conv_smoothing',
    'clear_caches',
    'OperatorCacheInfo',
    'operator_cache_info',
    'operator_cache_bytes',
    'set_operator_cache_budget',
    'gaussian_smooth',
    'gaussian_jet',
    'is_channels_last',
    'to_maps_layout',
    'composed_kernel_1d',
    'conv_nd',
]

MAX_JET_ORDER = 3
_MAX_RADIUS = 100_000  # a kernel wider than this is a typo in sigma, not a request


def check_sigma(sigma: float) -> float:
    """Returns ``sigma`` as a float after checking that it is a finite positive number."""
    if isinstance(sigma, torch.Tensor):
        if sigma.numel() != 1:
            raise ValueError(f'sigma must be a scalar, got a tensor of shape {tuple(sigma.shape)}')
        sigma = sigma.item()
    try:
        value = float(sigma)
    except (TypeError, ValueError):
        raise ValueError(f'sigma must be a positive number, got {sigma!r}') from None
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f'sigma must be a finite number > 0, got {sigma!r}')
    return value


def check_eps(eps: float) -> float:
    """Returns ``eps`` as a float after checking that it lies in the open interval (0, 1)."""
    try:
        value = float(eps)
    except (TypeError, ValueError):
        raise ValueError(f'eps must be a number in (0, 1), got {eps!r}') from None
    if not 0.0 < value < 1.0:
        raise ValueError(f'eps (relative truncation error) must lie in (0, 1), got {eps!r}')
    return value


def check_jet_order(jet_order: int) -> int:
    """Returns ``jet_order`` after checking that it is an integer in 1..3."""
    if isinstance(jet_order, bool) or not isinstance(jet_order, (int, np.integer)):
        raise ValueError(f'jet_order must be an integer in 1..{MAX_JET_ORDER}, got {jet_order!r}')
    if not 1 <= jet_order <= MAX_JET_ORDER:
        raise ValueError(f'jet_order must be in 1..{MAX_JET_ORDER}, got {jet_order}')
    return int(jet_order)


def stencil_radius(jet_order: int) -> int:
    """Returns r, the radius of the common support of the central differences of the N-jet.

    ``r = (jet_order + 1) // 2``: the stencils of orders 1 and 2 (eq. 57, 58) reach one sample
    to each side, those of order 3 (eq. 60) two. It is how far a GD layer mirror-extends the
    smoothed input so that its output keeps the input's size.
    """
    return (check_jet_order(jet_order) + 1) // 2


def _assume_constant_result(fn: Callable) -> Callable:
    """``torch.compiler.assume_constant_result`` without importing ``torch._dynamo`` (about a second) now.

    That decorator imports Dynamo only to set this marker, which Dynamo reads when it traces a
    call of ``fn``; ``tests/test_lazy_import.py`` checks that both mark a function alike.
    """
    fn._dynamo_marked_constant = True
    return fn


# The cached tensors must be real even when they are first built while tracing (torch.export,
# torch.compile run the forward under a fake-tensor mode): a fake tensor left in a cache would
# come back to later eager calls.
try:
    from torch._subclasses.fake_tensor import unset_fake_temporarily as _unset_fake_mode
except ImportError:  # pragma: no cover - older torch
    _unset_fake_mode = contextlib.nullcontext


def _constant(array, device: torch.device | None, dtype: torch.dtype | None = None) -> torch.Tensor:
    """Returns ``array`` as a real, ordinary tensor for a cache: outside any fake-tensor mode and
    outside inference mode (a tensor first built under ``torch.inference_mode`` could never be
    used again in a computation that autograd records)."""
    with _unset_fake_mode(), torch.inference_mode(False):
        return torch.as_tensor(np.array(array, order='C'), device=device, dtype=dtype)


class OperatorCacheInfo(NamedTuple):
    """Statistics of the operator cache since the last :func:`clear_caches`."""

    hits: int  #: look-ups answered from the cache
    misses: int  #: look-ups that built their operator
    entries: int  #: operators held now
    nbytes: int  #: bytes of tensor storage held now
    budget_bytes: int  #: the most bytes it keeps (:func:`set_operator_cache_budget`)


class _OperatorCache:
    """A least-recently-used cache of tensors bounded by the bytes it holds.

    Keys carry everything the tensor depends on (sigma, eps, size, pad, device, dtype). When an
    insertion takes the total over the budget, the least recently used entries are dropped; an
    entry larger than the whole budget is returned but not kept.
    """

    def __init__(self, budget_bytes: int):
        self.budget_bytes = int(budget_bytes)
        self._entries: OrderedDict[tuple, torch.Tensor] = OrderedDict()
        self._bytes = 0
        self.hits = 0
        self.misses = 0
        self._lock = threading.Lock()

    def get(self, key: tuple, build: Callable[[], torch.Tensor]) -> torch.Tensor:
        with self._lock:
            tensor = self._entries.get(key)
            if tensor is not None:
                self.hits += 1
                self._entries.move_to_end(key)
                return tensor
            self.misses += 1
        tensor = build()
        size = tensor.untyped_storage().nbytes()
        with self._lock:
            if key in self._entries or size > self.budget_bytes:
                return self._entries.get(key, tensor)
            self._entries[key] = tensor
            self._bytes += size
            self._evict()
        return tensor

    def _evict(self) -> None:
        while self._bytes > self.budget_bytes and self._entries:
            _, old = self._entries.popitem(last=False)
            self._bytes -= old.untyped_storage().nbytes()

    def resize(self, budget_bytes: int) -> None:
        with self._lock:
            self.budget_bytes = int(budget_bytes)
            self._evict()

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self._bytes = 0
            self.hits = self.misses = 0

    def info(self) -> OperatorCacheInfo:
        with self._lock:
            return OperatorCacheInfo(self.hits, self.misses, len(self._entries), self._bytes, self.budget_bytes)

    @property
    def nbytes(self) -> int:
        return self._bytes


# 64 MiB holds every dense operator the cost model ever picks for the preset scales at a few
# image sizes (one 256 x 258 float32 matrix is 0.26 MB); the conv path needs only kernel taps.
_DEFAULT_CACHE_BUDGET = 64 * 2 ** 20
_CACHE = _OperatorCache(_DEFAULT_CACHE_BUDGET)


def clear_caches() -> None:
    """Drops every cached operator (dense smoothing matrices, kernel taps, reflection indices,
    difference stencils) and resets the statistics of :func:`operator_cache_info`. They are
    rebuilt on next use; results do not change."""
    _CACHE.clear()
    _kernel_np.cache_clear()
    _stencil_basis_cached.cache_clear()


def operator_cache_bytes() -> int:
    """Returns the bytes of tensor storage the operator cache holds now."""
    return _CACHE.nbytes


def operator_cache_info() -> OperatorCacheInfo:
    """Returns the hits, misses, entries and bytes of the operator cache since :func:`clear_caches`.

    Every eager smoothing call looks its operators up (a dense matrix per axis, or the kernel taps
    and, for kernels wider than the image, reflection indices); a miss builds one. Calls traced
    by ``torch.compile`` build their operators in the graph and do not count.
    """
    return _CACHE.info()


def set_operator_cache_budget(budget_bytes: int) -> int:
    """Sets the byte budget of the operator cache (dropping entries over it); returns the old budget.

    Args:
        budget_bytes: the most bytes of cached operators to keep, >= 0 (0 caches nothing).
    """
    if isinstance(budget_bytes, bool) or not isinstance(budget_bytes, (int, np.integer)) or budget_bytes < 0:
        raise ValueError(f'budget_bytes must be an integer >= 0, got {budget_bytes!r}')
    old = _CACHE.budget_bytes
    _CACHE.resize(int(budget_bytes))
    return old


@lru_cache(maxsize=4096)  # a few hundred bytes per (sigma, eps)
def _kernel_np(sigma: float, eps: float) -> np.ndarray:
    from scipy.special import ive  # here, not at the top: importing scipy.special costs more than the module

    t = sigma * sigma
    # T(n; t) = exp(-t) I_n(t) (eq. 56) is scipy's exponentially scaled Bessel function ive.
    # Grow the support until the two-sided tail mass 1 - sum_{|n|<=N} T(n; t) is <= eps.
    radius = max(1, int(math.ceil(4 * sigma)))
    while True:
        n = np.arange(0, radius + 1)
        half = ive(n, t)
        tail = 1.0 - (half[0] + 2.0 * half[1:].sum())
        if tail <= eps:
            # The smallest N with tail(N) <= eps: walk back while a shorter support still passes.
            cumulative = half[0] + 2.0 * np.cumsum(half[1:])
            tails = 1.0 - np.concatenate([[half[0]], cumulative])
            smallest = int(np.argmax(tails <= eps))
            half = half[: smallest + 1]
            break
        radius *= 2
        if radius > _MAX_RADIUS:
            raise ValueError(f'sigma={sigma} with eps={eps} needs a kernel wider than {_MAX_RADIUS}')
    kernel = np.concatenate([half[:0:-1], half])
    kernel.setflags(write=False)
    return kernel


def truncation_radius(sigma: float, eps: float = 0.01) -> int:
    """Returns N, the half-width of the truncated discrete Gaussian kernel (docs/design.md §1).

    N is the smallest integer with tail mass ``1 - sum_{|n|<=N} T(n; sigma**2) <= eps``.
    """
    return (len(_kernel_np(check_sigma(sigma), check_eps(eps))) - 1) // 2


def discrete_gaussian_kernel(
        sigma: float,
        eps: float = 0.01,
        *,
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Returns the truncated 1-D discrete analogue of the Gaussian, ``exp(-t) I_n(t)``, t = sigma**2.

    Eq. (56) of the paper (Lindeberg 1990). The kernel has odd length ``2N + 1`` with
    ``N = truncation_radius(sigma, eps)``; it is not renormalised after truncation, so it sums
    to ``1 - tail`` with ``tail <= eps``.

    Args:
        sigma: standard deviation (scale parameter), > 0.
        eps: relative truncation error bound, in (0, 1).
        device: device of the returned tensor.
        dtype: dtype of the returned tensor.
    """
    kernel = _kernel_np(check_sigma(sigma), check_eps(eps))
    return torch.tensor(kernel, device=device, dtype=dtype)


# Central differences (eq. 57, 58): delta_x = [-1/2, 0, 1/2], delta_xx = [1, -2, 1]; order 3 is
# delta_x * delta_xx and order 4 is delta_xx * delta_xx (eq. 60). Written as correlation
# stencils, index 0 is the left neighbour.
_STENCILS = {
    0: (1.0,),
    1: (-0.5, 0.0, 0.5),
    2: (1.0, -2.0, 1.0),
    3: (-0.5, 1.0, 0.0, -1.0, 0.5),
    4: (1.0, -4.0, 6.0, -4.0, 1.0),
}


def difference_stencil(order: int, *, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """Returns the central difference operator of the given order (0..4) as a 1-D stencil.

    Eq. (57), (58) and (60): the stencil ``s`` acts as ``(delta f)(n) = sum_k s[k] f(n + k - r)``
    with ``r = len(s) // 2``.
    """
    if order not in _STENCILS:
        raise ValueError(f'difference order must be in 0..4, got {order!r}')
    return torch.tensor(_STENCILS[order], dtype=dtype)


def jet_indices(jet_order: int, spatial_dims: int = 2, zero_order: bool = False) -> tuple[tuple[int, ...], ...]:
    """Returns the multi-indices ``alpha`` of the N-jet, graded by total order (eq. 6, 7, 50, 51).

    ``alpha[d]`` is the order of differentiation along spatial tensor dimension ``d`` (for an
    image ``(..., H, W)``, ``alpha = (order along H, order along W)``). Within one total order the
    indices are sorted with the last axis first, so the 2-jet in 2-D is
    ``(0, 1), (1, 0), (0, 2), (1, 1), (2, 0)``, i.e. ``L_x, L_y, L_xx, L_xy, L_yy``.
    """
    check_jet_order(jet_order)
    if spatial_dims not in (1, 2, 3):
        raise ValueError(f'spatial_dims must be 1, 2 or 3, got {spatial_dims!r}')
    lowest = 0 if zero_order else 1
    indices = [a for a in product(range(jet_order + 1), repeat=spatial_dims) if lowest <= sum(a) <= jet_order]
    indices.sort(key=lambda a: (sum(a), a))
    return tuple(indices)


def jet_normalisation(alpha: Sequence[int], sigma: float = 1.0) -> float:
    """Returns ``sigma**|alpha| / alpha!``: scale normalisation (gamma = 1) times the Taylor factor.

    The scale normalisation ``sigma**|alpha|`` (§3.1, Lindeberg 1998) makes the jet at scale
    ``s * sigma`` of an image rescaled by ``s`` equal the jet at ``sigma`` of the original. The
    ``1 / alpha!`` factor of eq. (3) is our reconstruction (docs/design.md §2); the weights are
    learned, so it only affects initialisation.
    """
    # A list, not a generator: torch.compile traces a generator argument of math.prod only with a graph break.
    factorial = math.prod([math.factorial(a) for a in alpha])
    return sigma ** sum(alpha) / factorial


def reflect_index(size: int, pad: int) -> np.ndarray:
    """Returns the source indices of a mirror-extended axis of length ``size + 2 * pad``.

    Mirror extension reflects about the edge samples without repeating them (numpy's
    ``'reflect'``), repeated as often as needed, so a pad wider than the signal never fails.
    A signal of length 1 is extended by its only value.
    """
    positions = np.arange(-pad, size + pad)
    if size == 1:
        return np.zeros_like(positions)
    period = 2 * (size - 1)
    positions = np.mod(positions, period)
    return np.where(positions < size, positions, period - positions)


def centred_reflect_index(size: int, target: int) -> np.ndarray:
    """Returns source indices that centre a signal of length ``size`` on ``target`` samples by mirror extension.

    The signal starts at ``offset = (target - size) // 2`` (an odd extra sample goes after it);
    a negative offset centre-crops. Used wherever an image is mirror-extended onto a canvas.
    """
    offset = (target - size) // 2
    pad = max(abs(offset), abs(target - size - offset))
    start = pad - offset  # position -offset of the signal, in reflect_index's coordinates
    return reflect_index(size, pad)[start:start + target]


def _reflect_index_tensor(size: int, pad: int, device: torch.device) -> torch.Tensor:
    if torch.compiler.is_compiling():
        return _traced_reflect_index(size, pad, device)
    return _CACHE.get(('reflect', size, pad, device), lambda: _constant(reflect_index(size, pad), device))


def mirror_pad(x: torch.Tensor, pad: int, dims: Sequence[int]) -> torch.Tensor:
    """Returns ``x`` mirror-extended by ``pad`` samples on both sides of every dimension in ``dims``."""
    for dim in dims:
        size = x.shape[dim]
        if pad < size:
            # The common case goes through F.pad, which is faster than a gather.
            x = _reflect_pad_1d(x, pad, dim)
        else:
            x = x.index_select(dim, _reflect_index_tensor(size, pad, x.device))
    return x


def _reflect_pad_1d(x: torch.Tensor, pad: int, dim: int) -> torch.Tensor:
    if pad == 0:
        return x
    dim = dim % x.ndim
    left = x.narrow(dim, 1, pad).flip(dim)
    right = x.narrow(dim, x.shape[dim] - 1 - pad, pad).flip(dim)
    return torch.cat([left, x, right], dim=dim)


def _smoothing_matrix_np(sigma: float, eps: float, size: int) -> np.ndarray:
    kernel = _kernel_np(sigma, eps)
    radius = (len(kernel) - 1) // 2
    source = reflect_index(size, radius)  # position i + n - radius of the extension -> sample
    matrix = np.zeros((size, size))
    rows = np.repeat(np.arange(size), len(kernel))
    cols = source[np.arange(size)[:, None] + np.arange(len(kernel))[None, :]].ravel()
    np.add.at(matrix, (rows, cols), np.tile(kernel, size))
    return matrix


def _smoothing_matrix_cached(
        sigma: float, eps: float, size: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    # Transposed and contiguous: smoothing along the last axis is then one plain GEMM, x @ M.T.
    return _CACHE.get(('matrix', sigma, eps, size, device, dtype),
                      lambda: _constant(_smoothing_matrix_np(sigma, eps, size).T, device, dtype))


def smoothing_matrix(
        sigma: float,
        eps: float,
        size: int,
        *,
        pad: int = 0,
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Returns the ``(size + 2 pad, size)`` matrix M of discrete Gaussian smoothing with mirror extension.

    ``(M @ f)[i] = sum_{|n|<=N} T(n; sigma**2) f_ext(i + n)`` where ``f_ext`` is ``f`` mirror
    extended (:func:`reflect_index`). Folding the boundary into a dense matrix makes smoothing a
    single matrix product whose cost does not depend on sigma, and kernels wider than the
    signal need no special case. This is the operator of the ``'dense'`` smoothing method.
    With ``pad > 0`` the smoothed signal is mirror-extended by ``pad`` samples on both sides too
    (the rows of the ``pad = 0`` matrix at the reflected positions).

    The matrix is shared with the operator cache: treat it as read-only.
    """
    sigma, eps = check_sigma(sigma), check_eps(eps)
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 1:
        raise ValueError(f'size must be an integer >= 1, got {size!r}')
    pad = _check_pad(pad)
    device = torch.device(device) if device is not None else torch.device('cpu')
    return _smoothing_operator(sigma, eps, int(size), pad, device, dtype)


def _check_pad(pad: int) -> int:
    if isinstance(pad, bool) or not isinstance(pad, (int, np.integer)) or pad < 0:
        raise ValueError(f'pad must be an integer >= 0, got {pad!r}')
    return int(pad)


def _padded_smoothing_matrix_cached(
        sigma: float, eps: float, size: int, pad: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    # Smoothing followed by mirror extension by ``pad`` as one (size + 2 pad, size) matrix: the
    # rows of M at the reflected positions. Extending the smoothed signal costs no extra pass.
    def build():
        return _constant(_smoothing_matrix_np(sigma, eps, size)[reflect_index(size, pad)], device, dtype)

    return _CACHE.get(('padded matrix', sigma, eps, size, pad, device, dtype), build)


def _smoothing_operator(sigma: float, eps: float, size: int, pad: int, device: torch.device, dtype: torch.dtype):
    """Returns the ``(size + 2 pad, size)`` operator: smoothing, then mirror extension by ``pad``."""
    if torch.compiler.is_compiling():
        return _traced_smoothing_operator(sigma, eps, size, pad, device, dtype)
    if pad == 0:
        return _smoothing_matrix_cached(sigma, eps, size, device, dtype).mT
    return _padded_smoothing_matrix_cached(sigma, eps, size, pad, device, dtype)


# Under torch.compile the numpy/scipy code that builds the operators cannot be traced (and the
# eager caches cannot be consulted), so the graph builds them from Python constants that Dynamo
# evaluates once while tracing: the kernel taps and the stencil basis. Building a matrix is one
# scatter of size * (2N + 1) taps, negligible next to the products it feeds.

@_assume_constant_result
def _kernel_taps(sigma: float, eps: float) -> tuple[float, ...]:
    return tuple(_kernel_np(sigma, eps).tolist())


def _traced_reflect_index(size: int, pad: int, device: torch.device) -> torch.Tensor:
    """:func:`reflect_index` in torch operations, for traced code."""
    positions = torch.arange(-pad, size + pad, device=device)
    if size == 1:
        return torch.zeros_like(positions)
    period = 2 * (size - 1)
    positions = torch.remainder(positions, period)
    return torch.where(positions < size, positions, period - positions)


def _traced_smoothing_operator(sigma: float, eps: float, size: int, pad: int, device: torch.device,
                               dtype: torch.dtype) -> torch.Tensor:
    taps = _kernel_taps(sigma, eps)
    width = len(taps)
    source = _traced_reflect_index(size, (width - 1) // 2, device)
    columns = source[torch.arange(size, device=device)[:, None] + torch.arange(width, device=device)[None, :]]
    values = torch.tensor(taps, device=device, dtype=torch.float64).expand(size, width)
    matrix = torch.zeros(size, size, device=device, dtype=torch.float64).scatter_add(1, columns, values)
    if pad:
        matrix = matrix[_traced_reflect_index(size, pad, device)]
    return matrix.to(dtype)


def _conv_taps(sigma: float, eps: float, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """Returns the truncated kernel as a tensor, the weights of the ``'conv'`` smoothing method."""
    if torch.compiler.is_compiling():
        return torch.tensor(_kernel_taps(sigma, eps), device=device, dtype=dtype)
    return _CACHE.get(('taps', sigma, eps, device, dtype), lambda: _constant(_kernel_np(sigma, eps), device, dtype))


def _smooth_along(x: torch.Tensor, matrix: torch.Tensor, dim: int) -> torch.Tensor:
    """Returns ``matrix`` applied along ``dim`` of ``x``: ``y[..., i, ...] = sum_j matrix[i, j] x[..., j, ...]``."""
    if dim == x.ndim - 1:
        return x @ matrix.mT
    # (before, size, after) is a view of a contiguous x, and M @ x3 a broadcast batched GEMM:
    # no transposes.
    shape = x.shape
    x3 = x.contiguous().view(math.prod(shape[:dim]), shape[dim], math.prod(shape[dim + 1:]))
    return torch.matmul(matrix, x3).view(*shape[:dim], matrix.shape[0], *shape[dim + 1:])


# Both matrix methods make several passes over whole buffers (dense: one product per axis; banded:
# the extension, one product per axis, the crop). Over all signals at once, the buffers of a large
# image or a large batch leave the caches and every pass runs at memory speed. A few signals at a
# time keep a chunk's buffers in the cache between its passes: on a 2-core x86 CPU (24 channels,
# forward + backward) banded ran 2-3x faster from 512 px and on batches of 96-192 px images, dense
# 1.2-1.3x on such batches; chunks of 1-4 MiB were best, 16 MiB lost part of the gain
# (benchmarks/README.md, "Smoothing in cache-sized chunks"). Bit-identical: every signal is
# smoothed alone either way.
_CHUNK_BYTES = 4 * 2 ** 20
_MIN_BLOCK_TILES = 4


def _signals_per_chunk(lengths: Sequence[int], element_size: int, device: torch.device | None = None) -> int:
    """Returns how many signals with buffers of shape ``lengths`` one chunk takes (at least one).

    Chunks are for CPU caches only: on other devices all signals go in one chunk (a GPU would
    pay a kernel launch per chunk and op).
    """
    if device is not None and device.type != 'cpu':
        return 2 ** 62
    return max(1, _CHUNK_BYTES // max(1, math.prod(lengths) * element_size))


_CHANNELS_LAST = {2: torch.channels_last, 3: torch.channels_last_3d}


def is_channels_last(x: torch.Tensor) -> bool:
    """Returns whether the maps ``x`` (``(B, C, *spatial)``, 2-D or 3-D) are laid out channels-last.

    Decided by the strides, as the convolutions decide it: a map with one channel or one pixel
    fits both layouts, and counts as channels-last only when its channel stride is 1 (e.g. made
    by ``torch.empty(..., memory_format=torch.channels_last)``).
    """
    layout = _CHANNELS_LAST.get(x.ndim - 2)
    return (layout is not None and x.shape[2:].numel() > 1 and x.stride(1) == 1
            and x.is_contiguous(memory_format=layout))


def _groups_of_images(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """Returns ``fn`` (maps ``(B, C, *spatial)`` in the plain layout -> the same, other spatial sizes)
    applied to the channels-last maps ``x``, as channels-last maps.

    The matrix methods smooth every channel of every image as a signal of its own, which the plain
    layout stores contiguously; channels-last stores the channels of a pixel together. The images go
    through in groups of about one chunk (``_CHUNK_BYTES``, at least one image): each group is copied
    into the plain layout, smoothed, and written into its slice of the channels-last result, so that
    for images up to a chunk the copies work on data in the cache.
    """
    per_group = max(1, _CHUNK_BYTES // max(1, x[:1].numel() * x.element_size()))
    out = None
    for start in range(0, x.shape[0], per_group):
        y = fn(_plain_layout(x[start:start + per_group]))
        if out is None:
            out = torch.empty(x.shape[0], *y.shape[1:], dtype=y.dtype, device=y.device,
                              memory_format=_CHANNELS_LAST[x.ndim - 2])
        out[start:start + per_group] = y
    return out


# Above this many pixels per map, the copy of channels-last images into the plain layout goes one image
# at a time through the blocked transpose PyTorch has for 2-D matrices; the general copy ran 2.9x
# slower on 192 px images of 24 channels (0.87 against 2.5 ms an image, one thread) and 1.3x faster
# on 96 px ones.
_GENERAL_TRANSPOSE_MAX_PIXELS = 128 * 128


def _plain_layout(x: torch.Tensor) -> torch.Tensor:
    """Returns the channels-last maps ``x`` (``(B, C, *spatial)``) in the plain layout."""
    channels, pixels = x.shape[1], x.shape[2:].numel()
    if channels == 1:  # the same memory in both layouts: only the strides change
        return x.as_strided(x.shape, [math.prod(x.shape[d + 1:]) for d in range(x.ndim)])
    if pixels <= _GENERAL_TRANSPOSE_MAX_PIXELS:
        return x.contiguous()
    out = x.new_empty(x.shape)
    for image, plain in zip(x, out):
        plain.view(channels, pixels).copy_(image.movedim(0, -1).reshape(pixels, channels).t())
    return out


def to_maps_layout(x: torch.Tensor, channels_last: bool) -> torch.Tensor:
    """Returns the maps ``x`` (``(B, C, *spatial)``, 2-D or 3-D) laid out channels-last or, with
    ``channels_last=False``, not channels-last; ``x`` itself where it already is."""
    if is_channels_last(x) == channels_last:
        return x
    if channels_last:
        return torch.empty_like(x, memory_format=_CHANNELS_LAST[x.ndim - 2]).copy_(x)
    return _plain_layout(x)


def _groups_apply(x: torch.Tensor, spatial_dims: int) -> bool:
    """Whether a matrix-method call on ``x`` goes through :func:`_groups_of_images` (channels-last maps on
    the CPU, outside traced code: a GPU or the compiler handle layouts themselves)."""
    return (x.ndim == spatial_dims + 2 and x.device.type == 'cpu' and x.shape[0] > 0 and is_channels_last(x)
            and not torch.compiler.is_compiling())


# The dense method goes through chunks only for calls of more than this many bytes. Chunks paid from
# about 64 MB (smoothing alone, 24 channels, forward + backward, one thread: 0.78x the time of the
# plain products on 114 images of 96 px, 0.84x on 16 of 192 px, tied on 64 of 96 px); on smaller
# calls the autograd.Function that carries them cost 1.02-1.10x (16-32 images of 96 px, 4 of 160).
_DENSE_CHUNKED_FROM_BYTES = 32 * 2 ** 20


def _smooth_dense(x: torch.Tensor, sigma: float, eps: float, spatial_dims: int, pad: int) -> torch.Tensor:
    spatial = x.shape[x.ndim - spatial_dims:]
    matrices = [_smoothing_operator(sigma, eps, size, pad, x.device, x.dtype) for size in spatial]
    chunked = x.device.type == 'cpu' and x.numel() * x.element_size() > _DENSE_CHUNKED_FROM_BYTES
    if torch.compiler.is_compiling() or not (chunked or _groups_apply(x, spatial_dims)):
        # The last axis goes last: its backward (a plain GEMM) makes any incoming gradient contiguous.
        # A batched GEMM fed an expanded gradient (e.g. from ``.sum()``) falls off the BLAS path and
        # is ~100x slower on CPU.
        for dim, matrix in enumerate(matrices, start=x.ndim - spatial_dims):
            x = _smooth_along(x, matrix, dim)
        return x
    return _DenseSmoothing.apply(x, *matrices)


def _dense_forward(x: torch.Tensor, matrices: Sequence[torch.Tensor]) -> torch.Tensor:
    """``matrices[k]`` applied along trailing axis ``k`` of ``x``, in cache-sized chunks of signals; no autograd."""
    spatial_dims = len(matrices)
    if _groups_apply(x, spatial_dims):
        return _groups_of_images(lambda group: _dense_forward(group, matrices), x)
    lead = x.shape[:x.ndim - spatial_dims]
    signals = x.reshape(-1, *x.shape[x.ndim - spatial_dims:])
    out_spatial = [matrix.shape[0] for matrix in matrices]
    out = x.new_empty(signals.shape[0], *out_spatial)
    per_chunk = _signals_per_chunk(out_spatial, x.element_size(), x.device)
    for start in range(0, signals.shape[0], per_chunk):
        y = signals[start:start + per_chunk]
        for dim, matrix in enumerate(matrices[:-1], start=1):
            y = _smooth_along(y, matrix, dim)
        torch.matmul(y, matrices[-1].mT, out=out[start:start + per_chunk])  # the last axis: into the output
    return out.view(*lead, *out_spatial)


class _DenseSmoothing(torch.autograd.Function):
    """The ``'dense'`` method: ``(size + 2 pad, size)`` matrix products along the trailing axes, signals
    in cache-sized chunks (see ``_CHUNK_BYTES``). Its adjoint is the same products with the
    transposed matrices, so the backward is this function again, and differentiable again."""

    @staticmethod
    def forward(ctx, x, *matrices):
        ctx.save_for_backward(*matrices)
        with torch.autocast(x.device.type, enabled=False):
            return _dense_forward(x, matrices)

    @staticmethod
    def backward(ctx, grad):
        matrices = ctx.saved_tensors
        # An expanded gradient (from ``.sum()``) would take a batched GEMM off the BLAS path.
        if not is_channels_last(grad):
            grad = grad.contiguous()
        return _DenseSmoothing.apply(grad, *(matrix.mT for matrix in matrices)), *(None,) * len(matrices)


def _mirror_extend(x: torch.Tensor, pad: int) -> torch.Tensor:
    """Returns ``x`` of shape ``(B, C, *spatial)`` mirror-extended by ``pad`` along every spatial dim,
    reflecting as often as needed (:func:`reflect_index`)."""
    for dim in range(2, x.ndim):
        x = x.index_select(dim, _reflect_index_tensor(x.shape[dim], pad, x.device))
    return x


def _smooth_conv(x: torch.Tensor, sigma: float, eps: float, spatial_dims: int, pad: int) -> torch.Tensor:
    """The ``'conv'`` smoothing method: a depthwise convolution with the 1-D kernel per axis.

    The result may be channels-last (2-D, 3-D): it is what the convolutions that consume it
    run fastest on.
    """
    # Every signal of x becomes one channel of a depthwise convolution: (1, N, *spatial).
    lead, spatial = x.shape[:-spatial_dims], x.shape[-spatial_dims:]
    taps = _conv_taps(sigma, eps, x.device, x.dtype)
    radius = (taps.shape[0] - 1) // 2
    y = x.reshape(1, -1, *spatial)
    channels = y.shape[1]
    if spatial_dims in _CHANNELS_LAST and y.dtype != torch.float64:
        # oneDNN's depthwise kernels are several times faster on channels-last maps (measured,
        # benchmarks/README.md); float64 has no oneDNN kernels and keeps the plain layout.
        y = y.contiguous(memory_format=_CHANNELS_LAST[spatial_dims])
    # Smoothing the input extended by radius + pad gives the smoothed signal extended by pad:
    # the extension is symmetric about every edge sample, and so is its smoothing.
    extension = radius + pad
    if all(extension < size for size in spatial):
        # One reflection per side: F.pad's 'reflect' is numpy's, i.e. :func:`reflect_index`, and
        # it keeps the channels-last layout. (Zero padding inside the convolutions with the
        # border rows fixed afterwards saves this pass, but its autograd costs more than it saves.)
        y = F.pad(y, [extension] * (2 * spatial_dims), mode='reflect')
    else:
        # A kernel wider than the image reflects more than once: gather with the general rule.
        y = _mirror_extend(y, extension)
    conv = _CONV[spatial_dims]
    for axis in range(spatial_dims):
        shape = [1] * spatial_dims
        shape[axis] = taps.shape[0]
        y = conv(y, taps.view(1, 1, *shape).expand(channels, 1, *shape).contiguous(), groups=channels)
    return y.reshape(*lead, *y.shape[2:])


# The 'banded' method: block-Toeplitz GEMMs. Along one axis the signal mirror-extended by
# e = radius + pad is cut into tiles of T samples (continued by reflection after its end, up to a
# whole number of output tiles plus m - 1). Output tile t needs the m = 1 + ceil(2 radius / T)
# input tiles t .. t + m - 1, so y_t = sum_j X_{t+j} @ W_j with the m T x T band matrices
# [W_0 | ... | W_{m-1}] of the 1-D kernel: K = m T multiply-adds per sample at GEMM speed,
# whatever the image side (dense: side per sample; conv: taps per sample at depthwise-convolution
# speed). All axes are extended in one pass first and each axis's products then run over the
# extended length of the others.
_BAND_MIN_TILE = 16  # tiles narrower than this leave the GEMMs too small to run at BLAS speed


def _band_layout(radius: int) -> tuple[int, int]:
    """Returns ``(T, m)``, the tile length and the tiles each output tile reads.

    Two tiles of ``T >= 2 radius`` (a multiple of 8, the SIMD width, at least ``_BAND_MIN_TILE``),
    or three 16-sample tiles where that needs fewer multiply-adds: radii 13..16 (sigma about
    4.6..6), K = 48 instead of 64. Measured in the GD layer (benchmarks/README.md, "Three tiles
    for sigma 6"): three tiles took 0.70-0.98x the time of two at sigma 6 and 256-512 px (tied
    at 1024-2048, where both are memory-bound), but tied or lost where they only matched K
    (sigma 3.5-4) or where more or longer tiles were needed (sigma 8: 0.91-1.11x, sigma 16 with
    three 48-sample tiles or seven 16-sample ones: 1.06-1.16x), so nothing else uses them.
    """
    two = (-(-max(2 * radius, _BAND_MIN_TILE) // 8) * 8, 2)
    three = (_BAND_MIN_TILE, 3)
    if 2 * radius <= 2 * _BAND_MIN_TILE and three[0] * three[1] < two[0] * two[1]:
        return three
    return two


def _band_matrix_np(sigma: float, eps: float, tile: int, span: int) -> np.ndarray:
    kernel = _kernel_np(sigma, eps)
    # window[q, j] = kernel[q - j]: output j of a tile from the span T samples of tiles t .. t + m - 1.
    window = np.zeros((span * tile, tile))
    for j in range(tile):
        window[j:j + len(kernel), j] = kernel
    return np.concatenate(np.split(window, span, axis=0), axis=1)  # [W_0 | ... | W_{m-1}], (T, m T)


def _traced_band_matrix(sigma: float, eps: float, tile: int, span: int, device: torch.device,
                        dtype: torch.dtype) -> torch.Tensor:
    """:func:`_band_matrix_np` in torch operations, for traced code."""
    taps = torch.tensor(_kernel_taps(sigma, eps), device=device, dtype=torch.float64)
    offset = torch.arange(span * tile, device=device)[:, None] - torch.arange(tile, device=device)[None, :]
    inside = (offset >= 0) & (offset < taps.shape[0])
    window = torch.where(inside, taps[offset.clamp(0, taps.shape[0] - 1)], torch.zeros((), dtype=torch.float64,
                                                                                      device=device))
    return torch.cat(window.split(tile, dim=0), dim=1).to(dtype)


def _band_matrix(sigma: float, eps: float, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """Returns ``[W_0 | ... | W_{m-1}]``, the ``(T, m T)`` band matrices of the ``'banded'`` method."""
    tile, span = _band_layout((len(_kernel_taps(sigma, eps)) - 1) // 2)
    if torch.compiler.is_compiling():
        return _traced_band_matrix(sigma, eps, tile, span, device, dtype)
    return _CACHE.get(('band', sigma, eps, tile, span, device, dtype),
                      lambda: _constant(_band_matrix_np(sigma, eps, tile, span), device, dtype))


def _band_geometry(size: int, band: torch.Tensor, pad: int) -> tuple[int, int]:
    """Returns (output tiles, extended length): ``size + 2 pad`` outputs in whole tiles, plus the
    ``m - 1`` input tiles the last of them reads."""
    tile = band.shape[0]
    tiles = -(-(size + 2 * pad) // tile)
    return tiles, (tiles + band.shape[1] // tile - 1) * tile


def _band_products(extended: torch.Tensor, band: torch.Tensor, dim: int, adjoint: bool,
                   out: torch.Tensor) -> torch.Tensor:
    """The tile products of an extended axis (contiguous, a whole number of tiles) into ``out`` (contiguous,
    the same shape, not overlapping ``extended``), which is returned.

    Forward: ``y_t = sum_j X_{t+j} @ W_j`` (the last ``m - 1`` tiles of every line are left as garbage).
    Adjoint: ``g_t = sum_j G_{t-j} @ W_j^T`` (G's last ``m - 1`` tiles of every line must be zero).
    The tiles of all lines are rows of one matrix, so along the last axis each band matrix is a
    single GEMM; along the others, one batched GEMM over windows of ``m`` adjacent ``(T, after)``
    blocks does all of them at once. No transposes, no copies of the input.
    """
    tile = band.shape[0]
    span = band.shape[1] // tile
    blocks = band.split(tile, dim=1)
    if dim == extended.ndim - 1:
        rows, result = extended.view(-1, tile), out.view(-1, tile)
        count = rows.shape[0]
        if adjoint:
            torch.mm(rows, blocks[0].mT, out=result)
            for j in range(1, span):
                result[j:].addmm_(rows[:count - j], blocks[j].mT)
        else:
            written = result[:count - span + 1]
            torch.mm(rows[span - 1:], blocks[span - 1], out=written)
            for j in range(span - 1):
                written.addmm_(rows[j:count - span + 1 + j], blocks[j])
        return out
    # Other axes: tiles t .. t + m - 1 of a line are one contiguous (m T, after) matrix, so each
    # output tile is a single product with K = m T, [W_0^T | ... | W_{m-1}^T] @ [X_t; ...; X_{t+m-1}]
    # (adjoint: [W_{m-1} | ... | W_0] @ [G_{t-m+1}; ...; G_t]), read through an overlapping strided
    # view: one batched GEMM writes every tile once, where a product and accumulating products
    # pass over the output m times. The windows run across line ends too: forward, that only
    # writes the garbage last tiles of a line; adjoint, a line's first tiles read the previous
    # line's last ones, which are zero.
    after = math.prod(extended.shape[dim + 1:])
    count = extended.numel() // (tile * after)
    result = out.view(count, tile, after)
    windows = extended.as_strided((count - span + 1, span * tile, after), (tile * after, after, 1),
                                  extended.storage_offset())
    if adjoint:
        weights = torch.cat(blocks[::-1], dim=1)
        # The first m - 1 tiles of the first line have fewer than m tiles before them.
        gradient = extended.view(count * tile, after)
        for t in range(span - 1):
            torch.mm(weights[:, (span - 1 - t) * tile:], gradient[:(t + 1) * tile], out=result[t])
        written = result[span - 1:]
    else:
        weights, written = torch.cat([block.mT for block in blocks], dim=1), result[:count - span + 1]
    torch.bmm(weights.expand(count - span + 1, tile, span * tile), windows, out=written)
    return out


# F.pad(mode='reflect') of (signals, *spatial) with an output buffer (it has none of its own).
_REFLECTION_PAD = {1: torch.ops.aten.reflection_pad1d.out, 2: torch.ops.aten.reflection_pad2d.out,
                   3: torch.ops.aten.reflection_pad3d.out}


def _banded_extend(x: torch.Tensor, spatial_dims: int, extension: int, pad: int, band: torch.Tensor,
                   out: torch.Tensor) -> torch.Tensor:
    """Returns ``x`` mirror-extended by ``extension`` before every trailing spatial axis and continued
    by reflection up to the whole-tile length of :func:`_band_geometry` after it: one contiguous tensor.

    The samples past ``size + 2 extension`` only reach outputs beyond ``size + 2 pad``, which are
    cut off, so they may be anything finite; continuing the reflection lets a single
    ``F.pad(mode='reflect')`` extend all axes at once. (Per-axis edge copies, flips and tail fills
    were about as many passes again, and each small one pays a parallel region that scales badly.)
    Where one reflection per side suffices the result is written into ``out`` (and returned).
    """
    spatial = x.shape[x.ndim - spatial_dims:]
    lengths = [_band_geometry(size, band, pad)[1] for size in spatial]
    after = [length - size - extension for size, length in zip(spatial, lengths)]
    if all(extension < size and tail < size for size, tail in zip(spatial, after)):
        # F.pad's 'reflect' (this op, with an output buffer) is numpy's, i.e. :func:`reflect_index`.
        widths = [w for size, tail in zip(reversed(spatial), reversed(after)) for w in (extension, tail)]
        _REFLECTION_PAD[spatial_dims](x.reshape(-1, *spatial), widths, out=out.view(-1, *lengths))
        return out
    # A kernel wider than the signal reflects more than once: gather with the general rule.
    for dim, (size, length) in enumerate(zip(spatial, lengths), start=x.ndim - spatial_dims):
        x = x.index_select(dim, _band_index(size, extension, length, x.device))
    return x


def _banded_forward(x: torch.Tensor, band: torch.Tensor, spatial_dims: int, extension: int, pad: int) -> torch.Tensor:
    """Smoothing along the trailing ``spatial_dims`` axes of ``x`` then mirror extension by ``pad``; no autograd.

    All axes are extended at once (:func:`_banded_extend`); the products along one axis run over the
    whole extended length of the others (smoothing an axis commutes with extending another), so
    every product works on one contiguous buffer and nothing is copied between the axes. The signals
    go through in cache-sized chunks, each written into its slice of one contiguous output.
    """
    if _groups_apply(x, spatial_dims):
        if _pixel_major(x, spatial_dims, extension, pad, band):
            return _banded_forward_pixel_major(x, band, extension, pad)
        return _groups_of_images(lambda group: _banded_forward(group, band, spatial_dims, extension, pad), x)
    lead, spatial = x.shape[:x.ndim - spatial_dims], x.shape[x.ndim - spatial_dims:]
    lengths = [_band_geometry(size, band, pad)[1] for size in spatial]
    signals = x.reshape(-1, *spatial)
    out = x.new_empty(signals.shape[0], *(size + 2 * pad for size in spatial))
    per_chunk = _signals_per_chunk(lengths, x.element_size(), x.device)
    workspace = _Workspace(x, min(per_chunk, signals.shape[0]), lengths)
    for start in range(0, signals.shape[0], per_chunk):
        chunk = signals[start:start + per_chunk]
        y = _banded_extend(chunk, spatial_dims, extension, pad, band, out=workspace.buffer(len(chunk)))
        for dim in range(1, y.ndim):
            y = _band_products(y, band, dim, adjoint=False, out=workspace.other(y))
        # Drop the last m - 1 tiles of every line and the samples past size + 2 pad, straight into the
        # contiguous output: the convolution that consumes it would copy a strided view in its forward
        # and again in its backward (the view is what autograd saves for the weight gradient).
        for dim, size in enumerate(spatial, start=1):
            y = y.narrow(dim, 0, size + 2 * pad)
        out[start:start + per_chunk] = y
    return out.view(*lead, *out.shape[1:])


def _banded_adjoint(grad: torch.Tensor, band: torch.Tensor, spatial_dims: int, extension: int,
                    pad: int) -> torch.Tensor:
    """The adjoint of :func:`_banded_forward`: ``grad`` of its output -> gradient of its input; no autograd.

    Like the forward, in cache-sized chunks of signals written into one contiguous result.
    """
    if _groups_apply(grad, spatial_dims):
        inputs = grad.narrow(2, pad, grad.shape[2] - 2 * pad).narrow(3, pad, grad.shape[3] - 2 * pad) \
            if spatial_dims == 2 else grad  # the shape of the forward's input, for the rule
        if _pixel_major(inputs, spatial_dims, extension, pad, band):
            return _banded_adjoint_pixel_major(grad, band, extension, pad)
        return _groups_of_images(lambda group: _banded_adjoint(group, band, spatial_dims, extension, pad), grad)
    lead = grad.shape[:grad.ndim - spatial_dims]
    spatial = [n - 2 * pad for n in grad.shape[grad.ndim - spatial_dims:]]
    lengths = [_band_geometry(size, band, pad)[1] for size in spatial]
    signals = grad.reshape(-1, *grad.shape[grad.ndim - spatial_dims:])
    out = grad.new_empty(signals.shape[0], *spatial)
    per_chunk = _signals_per_chunk(lengths, grad.element_size(), grad.device)
    workspace = _Workspace(grad, min(per_chunk, signals.shape[0]), lengths)
    for start in range(0, signals.shape[0], per_chunk):
        out[start:start + per_chunk] = _banded_adjoint_chunk(signals[start:start + per_chunk], band, spatial,
                                                             lengths, extension, pad, workspace)
    return out.view(*lead, *spatial)


# Channels-last images from this side (in units of K = m T, the multiply-adds per sample) go through
# the banded method in their memory order (:func:`_banded_forward_pixel_major`, and its adjoint)
# whatever their size, where the cost model (measured on the plain layout) would take dense in groups
# of images copied into the plain layout. Smoothing alone, 24 channels, channels-last
# (benchmarks/README.md, "Channels-last maps in their own order"), the memory order against dense
# in groups: forward 0.73-0.88x at 96 px for K = 32, 0.92-1.10x for K = 48, 0.44-0.67x at 192 px
# for K = 32 and 48, 1.23-1.44x for K = 176; below 96 px dense won (0.93-1.56x); forward + backward
# at 96 px 0.80-0.92x for K = 32 (one thread; 0.86-1.03x with two), 1.49-1.68x for K = 48.
_PIXEL_MAJOR_SIDE_PER_PRODUCT_WIDTH = 3


def _pixel_major_side(x: torch.Tensor, product_width: int) -> bool:
    """Whether the images ``x`` ``(B, C, H, W)`` are wide enough for the memory order whatever their
    size, with ``product_width`` (K = m T) multiply-adds per sample."""
    return min(x.shape[2:]) >= _PIXEL_MAJOR_SIDE_PER_PRODUCT_WIDTH * product_width


def _pixel_major(x: torch.Tensor, spatial_dims: int, extension: int, pad: int, band: torch.Tensor) -> bool:
    """Whether the banded forward takes the channels-last images ``x`` in their own memory order
    (:func:`_banded_forward_pixel_major`) rather than in groups made plain: 2-D images of more than one
    chunk each, whose copies into the plain layout and back would run at memory speed, or of a side
    of at least ``_PIXEL_MAJOR_SIDE_PER_PRODUCT_WIDTH`` product widths."""
    large = x[:1].numel() * x.element_size() > _CHUNK_BYTES
    if spatial_dims != 2 or not (large or _pixel_major_side(x, band.shape[1])):
        return False
    width = x.shape[3]
    return extension < width and _band_geometry(width, band, pad)[1] - width - extension < width


class _RowBlocks:
    """The blocks of output rows in which the memory-order banded method (forward and adjoint) goes
    through channels-last images of ``height x width`` pixels and ``channels`` channels, and its two
    work buffers.

    A block holds whole tiles of output rows, at least ``_MIN_BLOCK_TILES`` of them (the ``m - 1``
    tiles of input rows a block shares with the next are read twice), its buffers about a chunk.
    """

    def __init__(self, like: torch.Tensor, height: int, width: int, channels: int, band: torch.Tensor,
                 extension: int, pad: int):
        self.height, self.width, self.extension = height, width, extension
        self.out_h, self.out_w = height + 2 * pad, width + 2 * pad
        self.tile, self.span = band.shape[0], band.shape[1] // band.shape[0]
        length_h, self.length_w = (_band_geometry(n, band, pad)[1] for n in (height, width))
        self.index = _band_index(height, extension, length_h, like.device)
        row = max(width, self.length_w) * channels
        self.tiles = max(_MIN_BLOCK_TILES, _CHUNK_BYTES // (row * like.element_size() * self.tile) - self.span + 1)
        self.buffers = like.new_empty(2, (self.tiles + self.span - 1) * self.tile * row)

    def buffer(self, i: int, *shape: int) -> torch.Tensor:
        return self.buffers[i, :math.prod(shape)].view(shape)

    def __iter__(self) -> Iterator[tuple[int, int, int, int | None]]:
        """Yields ``(first, rows, reads, source)`` per block: its output rows ``first .. first + rows - 1``
        read the input rows at extended positions ``first .. first + reads - 1`` along ``H``, which are
        the image's rows ``source ..`` where they lie inside it (``source`` is ``None`` where the block
        reaches into the mirror extension and its rows are gathered by :attr:`index`)."""
        for first in range(0, self.out_h, self.tiles * self.tile):
            rows = min(self.tiles * self.tile, self.out_h - first)
            reads = (-(-rows // self.tile) + self.span - 1) * self.tile
            source = first - self.extension
            yield first, rows, reads, source if 0 <= source and source + reads <= self.height else None


def _banded_forward_pixel_major(x: torch.Tensor, band: torch.Tensor, extension: int, pad: int) -> torch.Tensor:
    """:func:`_banded_forward` of channels-last images ``(B, C, H, W)``, in their memory order ``(B, H, W, C)``.

    One pass over each image in cache-sized blocks of output rows (:class:`_RowBlocks`), nothing
    transposed: the input rows a block reads along ``H`` (a slice of the image, gathered in reflection
    order only at its borders) are smoothed along ``H`` with all of ``W x C`` as the columns of the
    products, then extended and smoothed along ``W`` (the channels the trailing axis), and the block
    is written into the channels-last result, where its rows are contiguous. The full-size maps are
    read once (plus the rows the blocks share) and written once; everything between stays in the cache.
    """
    pixels = x.permute(0, 2, 3, 1)
    batch, height, width, channels = pixels.shape
    blocks = _RowBlocks(x, height, width, channels, band, extension, pad)
    length_w = blocks.length_w
    out = torch.empty(batch, channels, blocks.out_h, blocks.out_w, dtype=x.dtype, device=x.device,
                      memory_format=torch.channels_last)
    out_pixels = out.permute(0, 2, 3, 1)
    for image in range(batch):
        for first, rows, reads, source in blocks:
            if source is not None:
                block = pixels[image, source:source + reads]  # a contiguous slice of the image
            else:
                block = torch.index_select(pixels[image], 0, blocks.index[first:first + reads],
                                           out=blocks.buffer(0, reads, width, channels))
            along_h = _band_products(block, band, 0, adjoint=False, out=blocks.buffer(1, reads, width, channels))
            extended = blocks.buffer(0, rows, length_w, channels)
            _REFLECTION_PAD[2](along_h[:rows], [0, 0, extension, length_w - width - extension], out=extended)
            along_w = _band_products(extended, band, 1, adjoint=False, out=blocks.buffer(1, rows, length_w, channels))
            out_pixels[image, first:first + rows] = along_w[:, :blocks.out_w]
    return out


def _banded_adjoint_pixel_major(grad: torch.Tensor, band: torch.Tensor, extension: int, pad: int) -> torch.Tensor:
    """:func:`_banded_adjoint` of channels-last gradients ``(B, C, H + 2 pad, W + 2 pad)``: the transpose of
    :func:`_banded_forward_pixel_major`, block by block in the same memory order. The input rows of
    neighbouring blocks overlap, so each block's gradient is added into the result."""
    grad_pixels = grad.permute(0, 2, 3, 1)
    batch, out_h, out_w, channels = grad_pixels.shape
    height, width = out_h - 2 * pad, out_w - 2 * pad
    blocks = _RowBlocks(grad, height, width, channels, band, extension, pad)
    length_w = blocks.length_w
    out = torch.empty(batch, channels, height, width, dtype=grad.dtype, device=grad.device,
                      memory_format=torch.channels_last).zero_()
    out_pixels = out.permute(0, 2, 3, 1)
    for image in range(batch):
        for first, rows, reads, source in blocks:
            # Along W: the block's gradient up to whole tiles (the tail zero), the adjoint products,
            # then the mirror extension folded back (no output reads past W + 2 extension).
            along_w = blocks.buffer(0, rows, length_w, channels)
            along_w[:, out_w:].zero_()
            along_w[:, :out_w] = grad_pixels[image, first:first + rows]
            extended = _band_products(along_w, band, 1, adjoint=True, out=blocks.buffer(1, rows, length_w, channels))
            folded = extended[:, extension:extension + width]
            folded[:, 1:1 + extension].add_(extended[:, :extension].flip(1))
            after = extended[:, extension + width:2 * extension + width]
            folded[:, width - 1 - extension:width - 1].add_(after.flip(1))
            # Along H: rows past the block's outputs are zero, then the products read back onto the input rows.
            along_h = blocks.buffer(0, reads, width, channels)
            along_h[:rows] = folded
            along_h[rows:].zero_()
            rows_grad = _band_products(along_h, band, 0, adjoint=True, out=blocks.buffer(1, reads, width, channels))
            if source is not None:
                out_pixels[image, source:source + reads].add_(rows_grad)
            else:
                out_pixels[image].index_add_(0, blocks.index[first:first + reads], rows_grad)
    return out


class _Workspace:
    """Two buffers for the chunks of one banded call, each the extended shape of a whole chunk.

    Every pass of a chunk writes into the buffer its input is not in, so a call allocates two
    buffers however many chunks it has instead of fresh temporaries per chunk and pass (with
    glibc's default settings, many temporaries change which large allocations of the surrounding
    layers are served from fresh, page-faulting memory: benchmarks/README.md, "Smoothing in
    cache-sized chunks").
    """

    def __init__(self, like: torch.Tensor, signals: int, lengths: Sequence[int]):
        self.lengths = tuple(lengths)
        self.size = math.prod(lengths)
        self.buffers = like.new_empty(2, signals * self.size)

    def buffer(self, signals: int, index: int = 0) -> torch.Tensor:
        return self.buffers[index, :signals * self.size].view(signals, *self.lengths)

    def other(self, y: torch.Tensor) -> torch.Tensor:
        """Returns the buffer ``y`` (shape ``(signals, *lengths)``) does not lie in."""
        first = self.buffers[0].data_ptr() <= y.data_ptr() < self.buffers[1].data_ptr()
        return self.buffer(y.shape[0], 1 if first else 0)


def _banded_adjoint_chunk(grad: torch.Tensor, band: torch.Tensor, spatial: Sequence[int], lengths: Sequence[int],
                          extension: int, pad: int, workspace: _Workspace) -> torch.Tensor:
    """:func:`_banded_adjoint` of signals ``(N, *spatial + 2 pad)``: a view of a workspace buffer."""
    # Zeros up to the whole-tile length: the adjoint products need the last m - 1 tiles of every
    # line zero. Only the tails are zeroed (F.pad would fill the whole buffer, then copy over it).
    extended = workspace.buffer(grad.shape[0])
    region = extended
    for dim, n in enumerate(grad.shape[1:], start=1):
        region.narrow(dim, n, region.shape[dim] - n).zero_()
        region = region.narrow(dim, 0, n)
    region.copy_(grad)
    for dim in reversed(range(1, grad.ndim)):
        extended = _band_products(extended, band, dim, adjoint=True, out=workspace.other(extended))
    # Fold the mirror extension back onto the samples it copied (the gradient past
    # size + 2 extension is zero: no output within size + 2 pad reads those samples).
    for dim, size in enumerate(spatial, start=1):
        if extension < size:
            folded = extended.narrow(dim, extension, size)
            folded.narrow(dim, 1, extension).add_(extended.narrow(dim, 0, extension).flip(dim))
            folded.narrow(dim, size - 1 - extension, extension).add_(
                extended.narrow(dim, extension + size, extension).flip(dim))
        else:
            shape = list(extended.shape)
            shape[dim] = size
            folded = extended.new_zeros(shape).index_add_(
                dim, _reflect_index_tensor(size, extension, grad.device), extended.narrow(dim, 0, size + 2 * extension))
        extended = folded
    return extended


class _BandedSmoothing(torch.autograd.Function):
    """The ``'banded'`` method along the trailing ``spatial_dims`` axes with a hand-written backward (its
    adjoint, in the same GEMMs): autograd through the slices would zero-fill and add several full-size buffers."""

    @staticmethod
    def forward(ctx, x, band, spatial_dims, extension, pad):
        ctx.save_for_backward(band)
        ctx.geometry = (spatial_dims, extension, pad)
        with torch.autocast(x.device.type, enabled=False):
            return _banded_forward(x, band, spatial_dims, extension, pad)

    @staticmethod
    def backward(ctx, grad):
        (band,) = ctx.saved_tensors
        return _BandedAdjoint.apply(grad, band, *ctx.geometry), None, None, None, None


class _BandedAdjoint(torch.autograd.Function):
    """The adjoint of :class:`_BandedSmoothing`, so that its backward is differentiable too."""

    @staticmethod
    def forward(ctx, grad, band, spatial_dims, extension, pad):
        ctx.save_for_backward(band)
        ctx.geometry = (spatial_dims, extension, pad)
        with torch.autocast(grad.device.type, enabled=False):
            return _banded_adjoint(grad, band, spatial_dims, extension, pad)

    @staticmethod
    def backward(ctx, grad):
        (band,) = ctx.saved_tensors
        return _BandedSmoothing.apply(grad, band, *ctx.geometry), None, None, None, None


def _band_index(size: int, extension: int, length: int, device: torch.device) -> torch.Tensor:
    """Source indices of positions ``-extension .. length - extension - 1`` (repeated reflection), cached."""
    if torch.compiler.is_compiling():
        return _traced_band_index(size, extension, length, device)
    def build():
        positions = np.arange(-extension, length - extension)
        if size == 1:
            return _constant(np.zeros_like(positions), device)
        positions = np.remainder(positions, 2 * (size - 1))
        return _constant(np.where(positions < size, positions, 2 * (size - 1) - positions), device)
    return _CACHE.get(('band index', size, extension, length, device), build)


def _traced_band_index(size: int, extension: int, length: int, device: torch.device) -> torch.Tensor:
    """Source indices of positions ``-extension .. length - extension - 1`` (repeated reflection)."""
    positions = torch.arange(-extension, length - extension, device=device)
    if size == 1:
        return torch.zeros_like(positions)
    period = 2 * (size - 1)
    positions = torch.remainder(positions, period)
    return torch.where(positions < size, positions, period - positions)


def _traced_banded_along(x: torch.Tensor, band: torch.Tensor, dim: int, extension: int, pad: int) -> torch.Tensor:
    """:func:`_banded_forward` in differentiable, traceable operations (torch.compile, torch.export).

    The reflection simply continues past the extension instead of zeros: those samples only
    reach outputs beyond ``size + 2 pad``, which are cut off.
    """
    size, tile, width = x.shape[dim], band.shape[0], band.shape[1]
    span = width // tile
    tiles, length = _band_geometry(size, band, pad)
    extended = x.index_select(dim, _traced_band_index(size, extension, length, x.device))
    before, after = x.shape[:dim], x.shape[dim + 1:]
    if dim == x.ndim - 1:
        z = extended.reshape(-1, tiles + span - 1, tile) @ band
    else:
        z = torch.matmul(band.mT, extended.reshape(-1, tile, math.prod(after))).view(
            -1, tiles + span - 1, width, math.prod(after))
    y = sum(z[:, j:j + tiles, j * tile:(j + 1) * tile] for j in range(span))
    return y.reshape(*before, tiles * tile, *after).narrow(dim, 0, size + 2 * pad)


def _smooth_banded(x: torch.Tensor, sigma: float, eps: float, spatial_dims: int, pad: int) -> torch.Tensor:
    """The ``'banded'`` smoothing method: block-Toeplitz GEMMs along each axis (see above)."""
    radius = (len(_kernel_taps(sigma, eps)) - 1) // 2
    band = _band_matrix(sigma, eps, x.device, x.dtype)
    compiling = torch.compiler.is_compiling()
    if not compiling:
        return _BandedSmoothing.apply(x, band, spatial_dims, radius + pad, pad)
    for dim in range(x.ndim - spatial_dims, x.ndim):
        x = _traced_banded_along(x, band, dim, radius + pad, pad)
    return x


# Cost model of the smoothing methods, measured on a 2-core x86 CPU, one thread (benchmarks/README.md,
# "Smoothing method"). Smoothing alone (benchmarks/smoothing_cost.py; per pixel and channel,
# forward + backward): dense grows with the side (about 0.09 ns per sample of side here, 0.23 in
# an earlier run), banded with the tile (about 10 + 0.25 T ns up to 512 px; at 1024 px all methods
# are memory-bound near 35-50 ns), conv with the taps at depthwise speed. Alone, banded beat
# dense from side 192 for T = 16 (sigma <= 2), 256 for T = 32 (sigma 6) and 512 for T = 88
# (sigma 16). Inside a GD layer (benchmarks/size_scaling.py, 24 and 64 channels) banded won at
# 256 for T = 16 but lost at 256 for T = 32 and at 512 for T = 88 while its output was a strided
# view the mixing convolution copied. With a contiguous output (24 and 64 channels, 160..288 px):
# banded ties dense at 160 px and wins from 192 for T = 16, ties at 192, wins at 256 and is
# mixed at 224 for T = 32; for T = 88 dense still wins at 512. The rule is banded from shortest
# side >= 96 + 5 T (T = 16: 176, 32: 256, 88: 536), dense below, written per multiply-add as
# 96 + 2.5 K with K = 2 T. Sigma 6's three 16-sample tiles (K = 48) then give 216: measured, the
# two methods tied at 192 px and banded won from 224. Conv alone was as fast as
# banded for narrow kernels, but in the layer it pays the layout passes around the mixing
# convolution and lost to banded at every side 256..2048, so the cost model no longer picks it
# (smoothing_method('conv') does).
# With more than one thread the crossover moves up (see _banded_threshold): the GEMMs of both
# methods scale with the threads, but banded's element-wise passes (the mirror extension, the
# zero tail of the gradient, the folds of the adjoint) each pay a parallel region, and on a loaded
# machine the second thread of a region is often descheduled. Measured in the layer with two
# threads (24 channels), with the strided output: dense won at 384 px for every sigma, the two
# tied at 512 px for T <= 32. With the contiguous output, in two runs: banded won from 384 px
# for T = 16 (by 1.3-1.5x in the second), at 448-512 for T = 32 and at 768 for T = 88, where
# dense still won at 448-512. Rule with two or more threads: banded from 320 + 4 T (T = 16:
# 384, 32: 448, 88: 672), i.e. 320 + 2 K; sigma 6 with K = 48: 416 (banded measured faster from
# 352 px there, so the rule errs towards dense by one step).
# All of the above is for calls whose maps fit in one chunk (_CHUNK_BYTES; single images up to
# about 200 px with 24 channels), where a benchmark's repeated calls find their data in the cache.
# A call holding more goes through the chunks with its input read from memory and its output
# written there; measured so (benchmarks/smoothing_cost.py --pixels 1048576, 24 channels, 64..384
# px, forward + backward; "Smoothing in cache-sized chunks"), dense's cost per pixel still grows with
# the side (10 ns at 64 px, 16 at 256) while banded's falls (12 to 8 for T = 16), and the crossover
# no longer depends on the threads: banded tied dense at 96 px and won from 128 for T = 16 (K = 32),
# tied at 128 for sigma 6 (K = 48) and for T = 88 (K = 176) lost up to 320 and tied at 384, with
# one thread and with two. Where the two tie, training steps favoured dense: a GaussDerResNet-10
# step on 16 images of 96 px took 1.05x as long with banded there (interleaved, one thread).
# Rule for such calls: banded from 32 + 2.5 K (112, 152 and 472 px), erring towards dense.
_BANDED_BASE_SIDE = {1: 96, 2: 320, 'streaming': 32}
_BANDED_SIDE_PER_PRODUCT_WIDTH = {1: 2.5, 2: 2.0, 'streaming': 2.5}  # per multiply-add K = m T


@_assume_constant_result
def _intra_op_threads() -> int:
    """``torch.get_num_threads()``, a constant under ``torch.compile`` (the rule in force when traced)."""
    return torch.get_num_threads()


def _banded_threshold(radius: int, streaming: bool = False) -> int:
    """Returns the shortest image side from which the cost model takes ``'banded'`` over ``'dense'``:
    for a call whose maps fit in one chunk, ``96 + 2.5 K`` with one intra-op thread, ``320 + 2 K``
    with more (measured with two); for a larger call (``streaming``), ``32 + 2.5 K`` with any number
    of threads; ``K = m T``, the multiply-adds per sample of :func:`_band_layout`."""
    regime = 'streaming' if streaming else min(_intra_op_threads(), 2)
    tile, span = _band_layout(radius)
    return math.ceil(_BANDED_BASE_SIDE[regime] + _BANDED_SIDE_PER_PRODUCT_WIDTH[regime] * tile * span)


_METHODS = ('auto', 'dense', 'banded', 'conv')
_forced_method = 'auto'


@contextlib.contextmanager
def smoothing_method(method: str) -> Iterator[None]:
    """Forces the smoothing implementation inside a ``with`` block (tests, benchmarks).

    Args:
        method: ``'dense'`` (matrix product per axis), ``'banded'`` (block-Toeplitz GEMMs on
            tiles of the mirror-extended signal), ``'conv'`` (depthwise convolution of the
            mirror-extended signal) or ``'auto'`` (the cost model, the default).
    """
    global _forced_method
    if method not in _METHODS:
        raise ValueError(f'smoothing method must be one of {_METHODS}, got {method!r}')
    previous, _forced_method = _forced_method, method
    try:
        yield
    finally:
        _forced_method = previous


def _method_for(sigma: float, eps: float, spatial_shape: Sequence[int], streaming: bool = False) -> str:
    """Returns the smoothing method for signals of ``spatial_shape``: the forced one or the cost model's.

    ``streaming``: the call holds more than one chunk of maps on a CPU (see :func:`_banded_threshold`).
    """
    if _forced_method != 'auto':
        return _forced_method
    radius = (len(_kernel_taps(sigma, eps)) - 1) // 2  # (traceable: a constant under torch.compile)
    smallest = min(spatial_shape)
    if smallest >= _banded_threshold(radius, streaming):
        return 'banded'
    return 'dense'


def _streams(nbytes: int, device: torch.device) -> bool:
    """Whether a call smoothing maps of ``nbytes`` in all goes through several chunks (CPU only).

    Traced code (torch.compile, torch.export) has no chunks, so it keeps the rule of one chunk.
    """
    return device.type == 'cpu' and nbytes > _CHUNK_BYTES and not torch.compiler.is_compiling()


def chosen_smoothing_method(
        sigma: float,
        eps: float,
        spatial_shape: Sequence[int],
        *,
        signals: int = 1,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str = 'cpu',
) -> str:
    """Returns the method smoothing at ``sigma`` takes now for a call with ``signals`` maps of
    ``spatial_shape`` (batch times channels, e.g. ``x.shape[:2].numel()`` for an image batch ``x``)
    in ``dtype`` on ``device``: ``'dense'``, ``'banded'`` or ``'conv'`` (the cost model, or the method
    a :func:`smoothing_method` block forces)."""
    if isinstance(signals, bool) or not isinstance(signals, int) or signals < 1:
        raise ValueError(f'signals must be a positive integer, got {signals!r}')
    element_size = torch.empty((), dtype=dtype).element_size()
    streaming = _streams(signals * math.prod(spatial_shape) * element_size, torch.device(device))
    return _method_for(check_sigma(sigma), check_eps(eps), spatial_shape, streaming)


def uses_conv_smoothing(sigma: float, eps: float, spatial_shape: Sequence[int], **call) -> bool:
    """Returns whether smoothing at ``sigma`` of signals of ``spatial_shape`` takes the ``'conv'`` method
    (``call``: the keywords of :func:`chosen_smoothing_method`)."""
    return chosen_smoothing_method(sigma, eps, spatial_shape, **call) == 'conv'


def _smooth_padded(x: torch.Tensor, sigma: float, eps: float, spatial_dims: int, pad: int) -> torch.Tensor:
    """Returns ``x`` smoothed along its trailing ``spatial_dims`` dims and mirror-extended by ``pad``."""
    if x.numel() == 0:
        return _smooth_dense(x, sigma, eps, spatial_dims, pad)
    spatial = x.shape[x.ndim - spatial_dims:]
    method = _method_for(sigma, eps, spatial, _streams(x.numel() * x.element_size(), x.device))
    if (method == 'dense' and _forced_method == 'auto' and spatial_dims == 2 and _groups_apply(x, spatial_dims)
            and _pixel_major_side(x, math.prod(_band_layout((len(_kernel_taps(sigma, eps)) - 1) // 2)))):
        # Channels-last maps: the banded method in their memory order beats the dense one, which needs
        # them in the plain layout (a copy each way).
        method = 'banded'
    if method == 'conv':
        return _smooth_conv(x, sigma, eps, spatial_dims, pad)
    if method == 'banded':
        return _smooth_banded(x, sigma, eps, spatial_dims, pad)
    return _smooth_dense(x, sigma, eps, spatial_dims, pad)


def gaussian_smooth(
        x: torch.Tensor,
        sigma: float,
        eps: float = 0.01,
        spatial_dims: int | None = None,
        *,
        pad: int = 0,
) -> torch.Tensor:
    """Returns ``x`` smoothed separably with the discrete Gaussian along its trailing spatial dims.

    Mirror extension at the boundary (:func:`reflect_index`). The smoothing method (``'dense'``
    or ``'banded'``; ``'conv'`` when forced) follows the cost model of the module docstring.

    Args:
        x: tensor ``(..., *spatial)``.
        sigma: scale (standard deviation of the Gaussian), > 0.
        eps: relative truncation error of the discrete Gaussian.
        spatial_dims: number of trailing spatial dimensions, 1..3 (default ``x.ndim - 2``).
        pad: also mirror-extend the smoothed result by ``pad`` samples on both sides of every
            spatial dimension (what the difference stencils of a GD layer need, see
            :func:`stencil_radius`); this costs no extra pass over the data.

    Returns:
        Tensor ``(..., *(n + 2 pad for n in spatial))``. On the ``'conv'`` path it may be
        channels-last, the layout the convolutions that consume it run fastest on.
    """
    spatial_dims = _check_signal(x, spatial_dims)
    sigma, eps = check_sigma(sigma), check_eps(eps)
    return _smooth_padded(x, sigma, eps, spatial_dims, _check_pad(pad))


def separable_filters(one_d: Sequence[torch.Tensor], alphas: Sequence[Sequence[int]]) -> torch.Tensor:
    """Returns the separable N-D filters ``one_d[alpha[0]] x one_d[alpha[1]] x ...`` for every ``alpha``.

    This is how the jet's filters are built from 1-D ones (eq. 59): the filter of ``delta^alpha``
    (or of ``delta^alpha T_sigma``) is the outer product over the axes of the 1-D filter of order
    ``alpha[d]`` along axis ``d``.

    Args:
        one_d: 1-D filters of one common length ``K``, indexed by the order of differentiation.
        alphas: multi-indices, e.g. :func:`jet_indices`.

    Returns:
        Tensor ``(len(alphas), K, ..., K)`` with one axis of length ``K`` per entry of ``alpha``.
    """
    filters = []
    for alpha in alphas:
        kernel = one_d[alpha[0]]
        for order in alpha[1:]:
            kernel = torch.outer(kernel.reshape(-1), one_d[order]).reshape(*kernel.shape, -1)
        filters.append(kernel)
    return torch.stack(filters)


@lru_cache(maxsize=64)
def _stencil_basis_cached(
        jet_order: int, spatial_dims: int, zero_order: bool, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    # The difference operators delta^alpha of the jet as correlation filters on one common
    # support of radius stencil_radius(jet_order), shape (J, *(2 radius + 1,) * spatial_dims).
    radius = stencil_radius(jet_order)
    with _unset_fake_mode(), torch.inference_mode(False):
        one_d = []
        for order in range(jet_order + 1):
            own = len(_STENCILS[order]) // 2
            one_d.append(F.pad(difference_stencil(order), (radius - own, radius - own)))
        basis = separable_filters(one_d, jet_indices(jet_order, spatial_dims, zero_order))
        return basis.to(device=device, dtype=dtype)


def difference_basis(
        jet_order: int,
        spatial_dims: int = 2,
        zero_order: bool = False,
        *,
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float64,
) -> torch.Tensor:
    """Returns the central differences ``delta^alpha`` of the N-jet as correlation filters on one support.

    Eq. (57)-(60), combined over the axes by :func:`separable_filters`; every filter is
    zero-padded to the common radius ``r = stencil_radius(jet_order)``, so that a weighted sum
    over the jet, ``sum_alpha w[alpha] delta^alpha``, is one small filter (3x3 in 2-D for
    jet_order <= 2, 5x5 for 3). The filters act on a signal mirror-extended by ``r``.

    The tensor is shared with a cache: treat it as read-only.

    Args:
        jet_order: highest total order of differentiation, 1..3.
        spatial_dims: 1, 2 or 3.
        zero_order: also include the identity (``alpha = 0``) as the first filter.
        device: device of the returned tensor.
        dtype: dtype of the returned tensor.

    Returns:
        Tensor ``(J, *(2 r + 1,) * spatial_dims)`` whose ``J`` members follow :func:`jet_indices`.
    """
    jet_order = check_jet_order(jet_order)
    if spatial_dims not in (1, 2, 3):
        raise ValueError(f'spatial_dims must be 1, 2 or 3, got {spatial_dims!r}')
    device = torch.device(device) if device is not None else torch.device('cpu')
    return _stencil_basis(jet_order, int(spatial_dims), bool(zero_order), device, dtype)


def _stencil_basis(
        jet_order: int, spatial_dims: int, zero_order: bool, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    if torch.compiler.is_compiling():
        values = _stencil_basis_values(jet_order, spatial_dims, zero_order)
        return torch.tensor(values, device=device, dtype=dtype)
    return _stencil_basis_cached(jet_order, spatial_dims, zero_order, device, dtype)


@_assume_constant_result
def _stencil_basis_values(jet_order: int, spatial_dims: int, zero_order: bool) -> list:
    return _stencil_basis_cached(jet_order, spatial_dims, zero_order, torch.device('cpu'), torch.float64).tolist()


_CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}


def conv_nd(spatial_dims: int) -> Callable[..., torch.Tensor]:
    """Returns torch's functional convolution (a correlation) for signals with 1, 2 or 3 spatial dims."""
    if spatial_dims not in _CONV:
        raise ValueError(f'spatial_dims must be 1, 2 or 3, got {spatial_dims!r}')
    return _CONV[spatial_dims]


def _check_signal(x: torch.Tensor, spatial_dims: int | None) -> int:
    if not isinstance(x, torch.Tensor):
        raise ValueError(f'expected a tensor, got {type(x).__name__}')
    if spatial_dims is None:
        spatial_dims = x.ndim - 2
    if spatial_dims not in (1, 2, 3):
        raise ValueError(
            f'expected a batch of 1-D, 2-D or 3-D signals shaped (B, C, *spatial), got shape {tuple(x.shape)}')
    if x.ndim < spatial_dims + 1:
        raise ValueError(f'a tensor of shape {tuple(x.shape)} has fewer than {spatial_dims} spatial dims')
    return spatial_dims


def gaussian_jet(
        x: torch.Tensor,
        sigma: float,
        jet_order: int = 2,
        *,
        zero_order: bool = False,
        eps: float = 0.01,
        scale_normalised: bool = True,
) -> torch.Tensor:
    """Returns the (scale-normalised) N-jet of a batch of 1-D, 2-D or 3-D signals.

    Eq. (59): ``sigma**|alpha| delta^alpha (T_sigma * f)``, one separable smoothing per input
    channel shared by every derivative order, followed by central differences. The
    ``1 / alpha!`` Taylor factor is not applied (see :func:`jet_normalisation`).

    Args:
        x: tensor ``(B, C, *spatial)`` with 1, 2 or 3 spatial dimensions.
        sigma: scale (standard deviation of the Gaussian), > 0.
        jet_order: highest total order of differentiation, 1..3.
        zero_order: also return the smoothed signal itself as the first jet member.
        eps: relative truncation error of the discrete Gaussian.
        scale_normalised: multiply each derivative by ``sigma**|alpha|`` (gamma = 1).

    Returns:
        Tensor ``(B, C, J, *spatial)`` whose ``J`` members follow :func:`jet_indices`.
    """
    spatial_dims = _check_signal(x, None)
    sigma, eps = check_sigma(sigma), check_eps(eps)
    check_jet_order(jet_order)
    # Smoothing then differencing the mirror-extended smoothed signal equals differencing the
    # mirror-extended input and then smoothing: the smoothed extension keeps the mirror symmetry.
    # The extension is folded into the smoothing matrices, and all differences of the jet are
    # one convolution whose output channels are already laid out as (C, J): no stack.
    smoothed = _smooth_padded(x, sigma, eps, spatial_dims, stencil_radius(jet_order))
    basis = _stencil_basis(jet_order, spatial_dims, bool(zero_order), x.device, x.dtype)
    if scale_normalised:
        orders = [sum(alpha) for alpha in jet_indices(jet_order, spatial_dims, zero_order)]
        factors = torch.tensor([sigma ** order for order in orders], device=x.device, dtype=x.dtype)
        basis = basis * factors.view(-1, *([1] * spatial_dims))
    batch, channels, jet_size = x.shape[0], x.shape[1], basis.shape[0]
    conv = _CONV[spatial_dims]
    if spatial_dims == 3 or channels == 0:
        # A grouped conv3d with several outputs per group is ~50x slower on CPU than treating
        # every channel as a batch entry of a single-channel convolution (which also allows C = 0).
        jet = conv(smoothed.reshape(batch * channels, 1, *smoothed.shape[2:]), basis.unsqueeze(1))
    else:
        jet = conv(smoothed, basis.unsqueeze(1).repeat(channels, *([1] * (spatial_dims + 1))), groups=channels)
    return jet.reshape(batch, channels, jet_size, *x.shape[2:])


def composed_kernel_1d(sigma: float, order: int, eps: float = 0.01, radius: int | None = None) -> torch.Tensor:
    """Returns the 1-D kernel ``delta^order * T_sigma`` (float64), zero-padded to ``radius``.

    The composed kernel is what one axis of a Gaussian derivative filter looks like; it is
    used to draw receptive fields and as the dense reference for the efficient layer.
    """
    smooth = discrete_gaussian_kernel(sigma, eps, dtype=torch.float64)
    stencil = difference_stencil(order)
    # As correlation filters compose by full convolution, k[m] = sum_j s[j] T[m - j]; conv1d is
    # a correlation, hence the flipped stencil.
    kernel = torch.nn.functional.conv1d(
        smooth.view(1, 1, -1), stencil.flip(0).view(1, 1, -1), padding=len(stencil) - 1).view(-1)
    own_radius = (len(kernel) - 1) // 2
    if radius is not None:
        if radius < own_radius:
            raise ValueError(f'radius {radius} is smaller than the kernel radius {own_radius}')
        kernel = torch.nn.functional.pad(kernel, (radius - own_radius, radius - own_radius))
    return kernel
