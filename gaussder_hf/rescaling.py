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

Everything is vectorised over the batch (one resize call per chunk of at most 2048 images) and
deterministic; no global state is touched.
"""
from __future__ import annotations

import math
import numbers

import numpy as np
import torch
from torchvision.transforms.v2 import InterpolationMode
from torchvision.transforms.v2 import functional as TF

from .kernels import centred_reflect_index

__all__ = ['SIZE_FACTORS', 'BACKGROUNDS', 'size_factor_name', 'rescaled_size', 'rescale_batch']

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


def size_factor_name(s: float) -> str:
    """Returns the name of the test split at size factor ``s``, e.g. ``'test_s0p595'``.

    The name is ``'test_s'`` followed by ``f'{s:.3f}'`` with the decimal point replaced by ``'p'``:
    ``test_s0p500, test_s0p595, test_s0p707, test_s0p841, test_s1p000, test_s1p189, test_s1p414,
    test_s1p682, test_s2p000`` for :data:`SIZE_FACTORS`.
    """
    value = _check_size_factor(s)
    return 'test_s' + f'{value:.3f}'.replace('.', 'p')


def rescaled_size(size: int, s: float) -> int:
    """Returns the side length ``round(size * s)`` (Python's ``round``), at least 1."""
    if isinstance(size, bool) or not isinstance(size, numbers.Integral) or size < 1:
        raise ValueError(f'size must be a positive integer, got {size!r}')
    value = _check_size_factor(s)
    return max(1, int(round(int(size) * value)))


def _check_canvas(canvas) -> tuple[int, int]:
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


def _placement_index(n: int, m: int, mirror: bool) -> tuple[np.ndarray | None, slice, slice]:
    """Returns how a resized axis of ``n`` samples goes onto a canvas axis of ``m`` samples.

    With ``mirror``: ``(index, ...)`` where canvas sample ``i`` is image sample ``index[i]``.
    Otherwise ``(None, dst, src)``: canvas slice ``dst`` receives image slice ``src`` (zeros elsewhere).
    """
    if mirror:
        return centred_reflect_index(n, m), slice(None), slice(None)
    offset = (m - n) // 2
    lo, hi = max(offset, 0), min(offset + n, m)
    return None, slice(lo, hi), slice(lo - offset, hi - offset)


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
    ch, cw = _check_canvas(canvas)
    if background not in BACKGROUNDS:
        raise ValueError(f'background must be one of {BACKGROUNDS}, got {background!r}')
    x = _as_uint8_array(images)
    grey = x.ndim == 3
    if grey:
        x = x[..., None]
    n_images, height, width, channels = x.shape
    out_shape = (n_images, ch, cw) if grey else (n_images, ch, cw, channels)
    if s == 1.0 and (ch, cw) == (height, width):
        return np.array(x.reshape(out_shape), order='C')

    h, w = rescaled_size(height, s), rescaled_size(width, s)
    mirror = background == 'mirror'
    row_index, row_dst, row_src = _placement_index(h, ch, mirror)
    col_index, col_dst, col_src = _placement_index(w, cw, mirror)
    if mirror:
        row_index = torch.from_numpy(row_index)
        col_index = torch.from_numpy(col_index)

    out = np.zeros((n_images, ch, cw, channels), dtype=np.uint8)
    out_t = torch.from_numpy(out)
    chunk = max(1, min(_CHUNK_IMAGES, _CHUNK_ELEMENTS // (channels * max(height * width, h * w))))
    for begin in range(0, n_images, chunk):
        part = _chunk_tensor(x[begin:begin + chunk])  # (n, H, W, C) uint8
        if (h, w) != (height, width):
            batch = part.permute(0, 3, 1, 2).to(torch.float32)  # (n, C, H, W)
            batch = TF.resize(batch, [h, w], interpolation=InterpolationMode.BICUBIC, antialias=True)
            part = batch.round_().clamp_(0, 255).to(torch.uint8).permute(0, 2, 3, 1)  # (n, h, w, C)
        if mirror:
            out_t[begin:begin + chunk] = part.index_select(1, row_index).index_select(2, col_index)
        else:
            out_t[begin:begin + chunk, row_dst, col_dst] = part[:, row_src, col_src]
    return out.reshape(out_shape)
