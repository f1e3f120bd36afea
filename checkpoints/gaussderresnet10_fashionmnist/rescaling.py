"""Rescaling of images for the rescaled benchmark datasets (paper §4.1).

This module is the one place that rescales images for the rescaled Fashion-MNIST, CIFAR-10 and
STL-10 datasets. Size factors are ``s = 2**(k/4)`` for ``k = -4..4`` (:data:`SIZE_FACTORS`);
training data is at ``s = 1`` only, the test set is copied once per size factor and each copy is
named by :func:`size_factor_name`.

:func:`rescale_batch` resizes a batch of uint8 images by ``s`` with bicubic interpolation with
anti-aliasing (the paper used Matlab's ``imresize`` default; here
``torchvision.transforms.v2.functional.resize(..., BICUBIC, antialias=True)`` on float32
batches, then rounding and clamping to 0..255) and centres the result on a fixed canvas:

- ``background='black'``: the resized image is pasted on zeros (Fashion-MNIST: 28x28 originals
  on a 72x72 canvas);
- ``background='mirror'``: the resized image is mirror-extended to the canvas (CIFAR-10: 32x32 on
  64x64; STL-10 test copies: 96x96 on 192x192). Mirror extension reflects about the edge samples
  without repeating them (numpy's ``'reflect'``), repeated as often as needed when the pad is
  wider than the image (:func:`gaussder_hf.kernels.reflect_index`).

Centring rule, the same on each axis and for every ``s``: an image of ``n`` samples on a canvas of
``m`` samples has its first sample at canvas position ``offset = (m - n) // 2``, i.e. canvas
sample ``i`` shows image sample ``i - offset``. When ``m - n`` is odd the extra sample of
padding goes to the bottom/right. When the resized image is larger than the canvas the offset is
negative and the canvas is a centre crop (the extra cropped sample, if any, comes off the
top/left).

The placement itself is :func:`place_on_canvas`, which the image processor and the recipes'
input pipeline (:mod:`gaussder_hf.input_pipeline`) call too, so an image given to a trained
network at its native size lands on exactly the pixels the rescaled dataset put it on.

Everything is vectorised over the batch (one resize call per chunk of at most 2048 images) and
deterministic; no global state is touched.

Why this module is top-level and not in :mod:`gaussder_hf.data`: besides the dataset builders,
the input pipeline (:mod:`gaussder_hf.input_pipeline`) places every image with it, and the input
pipeline is copied flat into saved model folders as remote code, where a ``from .data`` import
has nothing to import. The mirror extension it uses is the one boundary rule of
:mod:`gaussder_hf.kernels` (:func:`~gaussder_hf.kernels.centred_reflect_index`), not a copy.
"""
from __future__ import annotations

import math
import numbers

import numpy as np
import torch
from torchvision.transforms.v2 import InterpolationMode
from torchvision.transforms.v2 import functional as TF

from .kernels import centred_reflect_index

__all__ = [
    'SIZE_FACTORS', 'BACKGROUNDS', 'RESCALED_SPLITS', 'size_factor_name', 'benchmark_size_factor', 'rescaled_size',
    'check_canvas',
    'check_background', 'place_on_canvas', 'rescale_batch',
]

#: The nine size factors ``2**(k/4)``, ``k = -4..4`` (0.5 ... 2.0).
SIZE_FACTORS: tuple[float, ...] = tuple(2.0 ** (k / 4) for k in range(-4, 5))

#: Accepted values of ``rescale_batch(..., background=...)``.
BACKGROUNDS = ('black', 'mirror')

# Images per resize call, and a bound on the float32 elements of one chunk (input or output),
# so large images (STL-10 at s = 2 is 3x192x192) get smaller chunks.
_CHUNK_IMAGES = 2048
_CHUNK_ELEMENTS = 1 << 24


def _check_size_factor(s) -> float:
    if isinstance(s, bool) or not isinstance(s, numbers.Real):
        raise ValueError(f'size_factor must be a positive finite number, got {s!r}')
    value = float(s)
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f'size_factor must be a positive finite number, got {s!r}')
    return value


def benchmark_size_factor(s) -> float:
    """Returns the member of :data:`SIZE_FACTORS` equal to ``s`` up to rounding (``0.707`` -> ``2**-0.5``).

    The tolerance, 0.2%, accepts the three decimals of the split names and is far below the 19%
    between neighbouring size factors.

    Raises ValueError naming ``s`` if it is none of them: the rescaled datasets hold those nine only.
    """
    value = _check_size_factor(s)
    for member in SIZE_FACTORS:
        if math.isclose(member, value, rel_tol=2e-3):
            return member
    raise ValueError(f'size factor {s!r} is not one of the rescaled splits\' size factors '
                     f'{[round(member, 4) for member in SIZE_FACTORS]}')


#: The original splits that are rescaled to every size factor: ``test`` always, ``validation``
#: on request (the builders' ``rescaled_validation`` option).
RESCALED_SPLITS = ('test', 'validation')


def size_factor_name(s: float, split: str = 'test') -> str:
    """Returns the name of ``split`` rescaled by size factor ``s``, e.g. ``'test_s0p595'``.

    The name is ``split + '_s'`` followed by ``f'{s:.3f}'`` with the decimal point replaced by
    ``'p'``: ``test_s0p500, test_s0p595, test_s0p707, test_s0p841, test_s1p000, test_s1p189,
    test_s1p414, test_s1p682, test_s2p000`` for :data:`SIZE_FACTORS`; ``validation_s0p500`` ...
    for the rescaled validation splits.
    """
    if split not in RESCALED_SPLITS:
        raise ValueError(f'split must be one of {RESCALED_SPLITS}, got {split!r}')
    value = _check_size_factor(s)
    return f'{split}_s' + f'{value:.3f}'.replace('.', 'p')


def rescaled_size(size: int, s: float) -> int:
    """Returns the side length ``round(size * s)`` (Python's ``round``), at least 1."""
    if isinstance(size, bool) or not isinstance(size, numbers.Integral) or size < 1:
        raise ValueError(f'size must be a positive integer, got {size!r}')
    value = _check_size_factor(s)
    return max(1, int(round(int(size) * value)))


def check_canvas(canvas) -> tuple[int, int]:
    """Returns ``canvas`` (an int for a square, or ``(height, width)``) as a pair of positive ints."""
    if isinstance(canvas, numbers.Integral) and not isinstance(canvas, bool):
        canvas = (canvas, canvas)
    if not isinstance(canvas, (tuple, list)) or len(canvas) != 2 or not all(
            isinstance(c, numbers.Integral) and not isinstance(c, bool) for c in canvas):
        raise ValueError(f'canvas must be an int or a pair of ints (height, width), got {canvas!r}')
    if min(canvas) < 1:
        raise ValueError(f'canvas sizes must be at least 1, got {tuple(canvas)!r}')
    return int(canvas[0]), int(canvas[1])


def _as_uint8_array(images) -> np.ndarray:
    if isinstance(images, torch.Tensor):
        if images.dtype != torch.uint8:
            raise ValueError(f'images must be uint8, got dtype {images.dtype}')
        x = images.detach().cpu().numpy()
    elif isinstance(images, np.ndarray):
        if images.dtype != np.uint8:
            raise ValueError(f'images must be uint8, got dtype {images.dtype}')
        x = images
    else:
        raise ValueError(f'images must be a numpy array or a torch tensor, got {type(images).__name__}')
    if x.ndim not in (3, 4):
        raise ValueError(
            f'images must be shaped (N, H, W) or (N, H, W, C), got {x.ndim} dimensions {tuple(x.shape)}')
    if x.ndim == 4 and x.shape[3] not in (1, 3):
        raise ValueError(
            f'images must be channels-last with C = 1 or 3, got shape {tuple(x.shape)} (C = {x.shape[3]})')
    if x.shape[1] < 1 or x.shape[2] < 1:
        raise ValueError(f'images must have H, W >= 1, got shape {tuple(x.shape)}')
    return x


def _chunk_tensor(chunk: np.ndarray) -> torch.Tensor:
    # torch refuses to share read-only memory (np.frombuffer arrays) without a warning: copy those.
    if not chunk.flags.writeable or not chunk.flags.c_contiguous:
        chunk = np.array(chunk, order='C')
    return torch.from_numpy(chunk)


def check_background(background) -> str:
    """Returns ``background`` if it is one of :data:`BACKGROUNDS`, else raises ValueError."""
    if background not in BACKGROUNDS:
        raise ValueError(f'background must be one of {BACKGROUNDS}, got {background!r}')
    return background


def place_on_canvas(images: torch.Tensor, canvas: int | tuple[int, int], background: str = 'black',
                    dims: tuple[int, int] = (-2, -1)) -> torch.Tensor:
    """Returns ``images`` centred on a ``canvas``-sized image along the axes ``dims`` (rows, columns).

    The centring rule of the module docstring: an axis of ``n`` samples starts at canvas position
    ``offset = (m - n) // 2``; ``background='black'`` fills the rest with zeros, ``'mirror'``
    mirror-extends the image (:func:`gaussder_hf.kernels.centred_reflect_index`). An axis longer
    than the canvas is centre-cropped (callers that must not crop grow the canvas first, as
    :func:`gaussder_hf.input_pipeline.place_on_canvas` does). Any dtype and any other axes
    (batch, channels first or last) are kept.
    """
    height, width = check_canvas(canvas)
    check_background(background)
    row_dim, col_dim = (d % images.ndim for d in dims)
    if row_dim == col_dim:
        raise ValueError(f'dims must name two different axes, got {dims!r}')
    n_rows, n_cols = images.shape[row_dim], images.shape[col_dim]
    if (n_rows, n_cols) == (height, width):
        return images.clone()
    if background == 'mirror':
        out = images
        for dim, n, m in ((row_dim, n_rows, height), (col_dim, n_cols, width)):
            out = out.index_select(dim, torch.as_tensor(centred_reflect_index(n, m), device=images.device))
        return out
    shape = list(images.shape)
    shape[row_dim], shape[col_dim] = height, width
    out = images.new_zeros(shape)
    dst, src = [slice(None)] * images.ndim, [slice(None)] * images.ndim
    for dim, n, m in ((row_dim, n_rows, height), (col_dim, n_cols, width)):
        offset = (m - n) // 2
        lo, hi = max(offset, 0), min(offset + n, m)
        dst[dim], src[dim] = slice(lo, hi), slice(lo - offset, hi - offset)
    out[tuple(dst)] = images[tuple(src)]
    return out


def rescale_batch(images, size_factor: float, canvas: int | tuple[int, int], background: str = 'black') -> np.ndarray:
    """Returns ``images`` rescaled by ``size_factor`` and centred on a ``canvas``-sized image.

    ``images``: uint8 numpy array or torch tensor shaped ``(N, H, W)`` (grey) or ``(N, H, W, C)``
    (channels-last, ``C`` = 1 or 3). Each image is resized to ``(rescaled_size(H, s),
    rescaled_size(W, s))`` with bicubic interpolation with anti-aliasing (float32, then rounded and
    clamped to 0..255) and placed on the canvas by the centring rule of the module docstring
    (``offset = (canvas - n) // 2`` per axis; centre-cropped when larger than the canvas), on
    black (``background='black'``) or mirror-extended (``background='mirror'``).
    ``canvas`` is an int (square) or ``(height, width)``.

    Returns a new uint8 numpy array in the same layout, ``(N, canvas_h, canvas_w[, C])``. When
    ``size_factor == 1`` and the canvas equals the image size the result is a copy of the input.
    Raises ``ValueError`` on bad arguments.
    """
    s = _check_size_factor(size_factor)
    ch, cw = check_canvas(canvas)
    check_background(background)
    x = _as_uint8_array(images)
    grey = x.ndim == 3
    if grey:
        x = x[..., None]
    n_images, height, width, channels = x.shape
    out_shape = (n_images, ch, cw) if grey else (n_images, ch, cw, channels)
    if s == 1.0 and (ch, cw) == (height, width):
        return np.array(x.reshape(out_shape), order='C')

    h, w = rescaled_size(height, s), rescaled_size(width, s)
    out = np.zeros((n_images, ch, cw, channels), dtype=np.uint8)
    out_t = torch.from_numpy(out)
    chunk = max(1, min(_CHUNK_IMAGES, _CHUNK_ELEMENTS // (channels * max(height * width, h * w))))
    for begin in range(0, n_images, chunk):
        part = _chunk_tensor(x[begin:begin + chunk])  # (n, H, W, C) uint8
        if (h, w) != (height, width):
            batch = part.permute(0, 3, 1, 2).to(torch.float32)  # (n, C, H, W)
            batch = TF.resize(batch, [h, w], interpolation=InterpolationMode.BICUBIC, antialias=True)
            part = batch.round_().clamp_(0, 255).to(torch.uint8).permute(0, 2, 3, 1)  # (n, h, w, C)
        out_t[begin:begin + chunk] = place_on_canvas(part, (ch, cw), background, dims=(1, 2))
    return out.reshape(out_shape)
