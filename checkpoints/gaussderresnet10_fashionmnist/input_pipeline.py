"""The one input pipeline of the networks: training, evaluation and the image processor all call it.

An image goes through four steps, in this order:

1. :func:`decode_image`: a PIL image, numpy array or torch tensor becomes a ``(C, H, W)`` tensor
   with ``C`` = 1 (grey) or 3 (RGB), by one rule (:func:`image_channels`): PIL modes are grey
   or colour by their bands; arrays and tensors by their channel count, alpha dropped (2 = grey +
   alpha, 4 = RGBA). :func:`to_model_channels` then gives the model its channels: grey is
   repeated for an RGB model; RGB becomes grey by ITU-R 601-2 luma, computed for 8-bit images
   exactly as PIL's ``convert('L')`` does (the rescaled datasets store what PIL decodes).
   Encoded images (a path, bytes, a ``datasets`` Image dict read with ``decode=False``) are
   opened by :func:`open_image`, which refuses an image of more than ``PIL.Image.MAX_IMAGE_PIXELS``
   pixels (or ``max_pixels``) from its header, before any pixel is decoded.
2. :func:`place_on_canvas`: centred on a canvas by the rescaled datasets' own placement
   (:func:`gaussder_hf.rescaling.place_on_canvas`, the function their builders call), on black
   or mirror-extended, so an image at its native size lands on exactly the pixels its rescaled
   dataset at size factor 1 put it on. An image larger than the canvas is never cropped: the
   canvas grows to cover it (the networks are fully convolutional and accept any size).
3. :func:`to_unit_range`: integers scaled to [0, 1] by their type's maximum (uint8 / 255).
4. :func:`normalise`: ``(x - mean) / std`` per channel, with :func:`model_normalisation`'s
   statistics in training and evaluation alike.

The canvas background follows the data the network was trained on (:func:`gaussder_hf.data.dataset_background`:
black for Fashion-MNIST, mirror extension for CIFAR-10 and STL-10, as their builders draw them).
Training inserts its augmentation between steps 3 and 4 (:class:`InputPipeline`'s ``augment``).
"""
from __future__ import annotations

import io
import math
import numbers
import os
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from . import rescaling
from .rescaling import check_background

__all__ = [
    'GREY_MODES', 'InputPipeline', 'check_pixel_count', 'decode_image', 'image_channels', 'model_normalisation',
    'normalise', 'open_image', 'pixel_limit', 'place_on_canvas', 'to_model_channels', 'to_unit_range',
]

#: PIL modes read as grey (their alpha band, if any, dropped); every other mode is read as RGB.
GREY_MODES = frozenset({'1', 'L', 'LA', 'La', 'I', 'I;16', 'I;16L', 'I;16B', 'I;16N', 'F'})

# PIL's convert('L'): L = (19595 R + 38470 G + 7471 B + 2**15) >> 16, i.e. ITU-R 601-2 luma
# (0.299, 0.587, 0.114) in 16-bit fixed point, rounded.
_LUMA_FIXED = (19595, 38470, 7471)
_LUMA = (0.299, 0.587, 0.114)


def _is_pil(image) -> bool:
    return type(image).__module__.startswith('PIL.') and hasattr(image, 'mode') and hasattr(image, 'getbands')


def _channel_axis(shape: tuple[int, ...], channels_first: bool) -> int | None:
    """Returns the channel axis of a 3-D array (0 or 2), None for a 2-D one."""
    if len(shape) == 2:
        return None
    if len(shape) != 3:
        raise ValueError(f'an image must have 2 dimensions (H, W) or 3 (channels first or last), got shape {shape}')
    first, last = shape[0] in (1, 2, 3, 4), shape[2] in (1, 2, 3, 4)
    if first and (channels_first or not last):
        return 0
    if last:
        return 2
    raise ValueError(f'cannot find the channel axis of an image of shape {shape}: '
                     'expected 1 (grey), 2 (grey + alpha), 3 (RGB) or 4 (RGBA) channels first or last')


def _is_encoded(image) -> bool:
    return isinstance(image, (str, os.PathLike, bytes, bytearray, dict))


def pixel_limit(max_pixels: int | None = None) -> int | None:
    """Returns the largest pixel count an image may have: ``max_pixels``, else ``PIL.Image.MAX_IMAGE_PIXELS``.

    ``None`` from PIL (``PIL.Image.MAX_IMAGE_PIXELS = None``) means no limit.
    """
    if max_pixels is None:
        from PIL import Image

        return Image.MAX_IMAGE_PIXELS
    if isinstance(max_pixels, bool) or not isinstance(max_pixels, numbers.Integral) or max_pixels < 1:
        raise ValueError(f'max_pixels must be a positive integer or None (PIL.Image.MAX_IMAGE_PIXELS), '
                         f'got {max_pixels!r}')
    return int(max_pixels)


def check_pixel_count(size: tuple[int, int], max_pixels: int | None = None, source=None) -> None:
    """Raises ValueError if an image of ``size`` (width, height) has more pixels than :func:`pixel_limit` allows.

    PIL itself only warns up to twice its ``MAX_IMAGE_PIXELS`` and then decodes anyway: a small
    compressed file can ask for gigabytes (a decompression bomb). Here the limit is an error.
    """
    limit = pixel_limit(max_pixels)
    width, height = size
    if limit is not None and width * height > limit:
        name = f' {source!r}' if isinstance(source, (str, os.PathLike)) else ''
        raise ValueError(
            f'image{name} of {width}x{height} = {width * height:,} pixels exceeds the limit of {limit:,} pixels '
            '(a possible decompression bomb) and is not decoded; raise the limit with max_pixels= or '
            'PIL.Image.MAX_IMAGE_PIXELS if the image is trusted')


def open_image(source, max_pixels: int | None = None):
    """Opens an encoded image lazily and returns it as a PIL image after checking its pixel count.

    Args:
        source: a file path, the encoded bytes, or a ``{'bytes': ..., 'path': ...}`` dict as a
            ``datasets`` Image column gives with ``decode=False``; a PIL image is checked and
            returned as it is.
        max_pixels: the most pixels allowed (default ``PIL.Image.MAX_IMAGE_PIXELS``); a larger
            image raises ValueError after reading its header only, before any pixel is decoded.
    """
    from PIL import Image

    limit = pixel_limit(max_pixels)  # checked first: a bad limit is a bad argument, whatever the file
    if _is_pil(source):  # opened already (lazily, if from a file): checked the same way
        check_pixel_count(source.size, limit)
        return source
    if isinstance(source, dict):
        if source.get('bytes') is not None:
            source = source['bytes']
        elif source.get('path') is not None:
            source = source['path']
        else:
            raise ValueError(f"an encoded image dict needs 'bytes' or 'path', got keys {sorted(source)}")
    if isinstance(source, (bytes, bytearray)):
        stream, name = io.BytesIO(source), None
    elif isinstance(source, (str, os.PathLike)):
        stream, name = source, source
    else:
        raise TypeError(f'an encoded image is a path, bytes or a {{"bytes", "path"}} dict, got {type(source).__name__}')
    with warnings.catch_warnings():
        # PIL warns above its limit; the check below turns that into an error (at our limit).
        warnings.simplefilter('ignore', Image.DecompressionBombWarning)
        try:
            image = Image.open(stream)
        except Image.DecompressionBombError as error:  # PIL's own hard stop, at twice its limit
            raise ValueError(f'image{" " + repr(str(name)) if name else ""} is refused by PIL ({error}); raise '
                             'PIL.Image.MAX_IMAGE_PIXELS if the image is trusted') from None
    try:
        check_pixel_count(image.size, limit, name)
    except ValueError:
        image.close()
        raise
    return image


def image_channels(image) -> int:
    """Returns 1 if ``image`` is grey, 3 if it is colour: the one rule every part of the package uses.

    PIL images: grey for :data:`GREY_MODES`, colour for every other mode (RGB, RGBA, P, CMYK...).
    numpy arrays (channels last unless only the first axis can be channels) and torch tensors
    (channels first unless only the last axis can be): 2-D or 1 or 2 channels (grey + alpha) are
    grey, 3 or 4 (RGBA) colour.
    """
    if _is_pil(image):
        return 1 if image.mode in GREY_MODES else 3
    if _is_encoded(image):  # reads the header only
        with open_image(image, max_pixels=None) as opened:
            return 1 if opened.mode in GREY_MODES else 3
    if isinstance(image, (np.ndarray, torch.Tensor)):
        shape = tuple(image.shape)
        axis = _channel_axis(shape, channels_first=isinstance(image, torch.Tensor))
        return 1 if axis is None or shape[axis] in (1, 2) else 3
    raise TypeError(f'an image must be a PIL image, a numpy array, a torch tensor, or a path, bytes or '
                    f'{{"bytes", "path"}} dict of an encoded image, got {type(image).__name__}')


def decode_image(image, max_pixels: int | None = None) -> torch.Tensor:
    """Returns ``image`` as a ``(C, H, W)`` tensor, ``C`` = :func:`image_channels` (alpha dropped), dtype kept.

    ``image`` may also be encoded: a file path, the file's bytes, or the ``{'bytes', 'path'}``
    dict of a ``datasets`` Image column read with ``decode=False`` (:func:`open_image`). A PIL
    or encoded image with more than ``max_pixels`` pixels (default ``PIL.Image.MAX_IMAGE_PIXELS``)
    is refused before its pixels are decoded. PIL colour modes other than RGB (palette, CMYK,
    RGBA...) are converted to RGB by PIL.
    """
    if _is_encoded(image):
        image = open_image(image, max_pixels)
    elif _is_pil(image):
        check_pixel_count(image.size, max_pixels)  # before np.array below decodes a lazily opened file
    channels = image_channels(image)
    if _is_pil(image):
        if channels == 3 and image.mode != 'RGB':
            image = image.convert('RGB')
        array = np.array(image)
        if array.dtype == bool:  # mode '1'
            array = array.astype(np.uint8) * 255
        tensor = torch.from_numpy(array)
        tensor = tensor.unsqueeze(0) if tensor.ndim == 2 else tensor.permute(2, 0, 1)
        return tensor[:channels].contiguous()  # 'LA': drop the alpha band
    if isinstance(image, np.ndarray):
        # torch cannot share read-only memory (e.g. np.asarray of a PIL image): copy those.
        tensor = torch.from_numpy(image if image.flags.writeable else np.array(image))
    else:
        tensor = image
    axis = _channel_axis(tuple(tensor.shape), channels_first=not isinstance(image, np.ndarray))
    if axis is None:
        tensor = tensor.unsqueeze(0)
    elif axis == 2:
        tensor = tensor.permute(2, 0, 1)
    if min(tensor.shape[-2:]) < 1:
        raise ValueError(f'an image must have H, W >= 1, got shape {tuple(image.shape)}')
    return tensor[:channels].contiguous()


def to_model_channels(image: torch.Tensor, num_channels: int) -> torch.Tensor:
    """Returns a decoded ``(C, H, W)`` image with ``num_channels`` (1 or 3) channels.

    Grey to RGB repeats the channel; RGB to grey is ITU-R 601-2 luma, for uint8 in PIL's fixed
    point (bit-identical to ``PIL.Image.convert('L')``), for floats in floating point.
    """
    if num_channels not in (1, 3):
        raise ValueError(f'num_channels must be 1 or 3, got {num_channels!r}')
    channels = image.shape[0]
    if channels not in (1, 3):
        raise ValueError(f'a decoded image has 1 or 3 channels, got {channels} (shape {tuple(image.shape)})')
    if channels == num_channels:
        return image
    if num_channels == 3:
        return image.expand(3, -1, -1).contiguous()
    if image.dtype == torch.uint8:
        weights = torch.tensor(_LUMA_FIXED, dtype=torch.int64).view(3, 1, 1)
        return ((image.to(torch.int64) * weights).sum(0, keepdim=True) + (1 << 15)).bitwise_right_shift(16).to(
            torch.uint8)
    if not image.is_floating_point():
        raise ValueError(f'RGB to grey needs a uint8 or floating-point image, got dtype {image.dtype}')
    weights = torch.tensor(_LUMA, dtype=image.dtype, device=image.device).view(3, 1, 1)
    return (image * weights).sum(0, keepdim=True)


def _canvas_pair(canvas) -> tuple[int, int]:
    if isinstance(canvas, dict):
        if set(canvas) != {'height', 'width'}:
            raise ValueError(f"a canvas dict must be {{'height': H, 'width': W}}, got {canvas!r}")
        canvas = (canvas['height'], canvas['width'])
    return rescaling.check_canvas(canvas)


def place_on_canvas(image: torch.Tensor, canvas, background: str) -> torch.Tensor:
    """Returns ``image (..., H, W)`` centred on ``canvas`` as the rescaled datasets place it; never crops.

    ``canvas``: an int (square), ``(height, width)`` or ``{'height': H, 'width': W}``; ``None``
    leaves the image as it is. An axis longer than the canvas keeps its full length (the canvas
    grows to it), so no part of the image is lost. ``background``: ``'black'`` or ``'mirror'``.
    """
    check_background(background)
    if canvas is None:
        return image
    height, width = _canvas_pair(canvas)
    height, width = max(height, image.shape[-2]), max(width, image.shape[-1])
    if (height, width) == tuple(image.shape[-2:]):
        return image
    return rescaling.place_on_canvas(image, (height, width), background)


def to_unit_range(image: torch.Tensor, uint8_factor: float = 1 / 255) -> torch.Tensor:
    """Returns ``image`` as float32 in [0, 1]: uint8 times ``uint8_factor``, other integers over their maximum.

    16-bit images (uint16, or int32 as PIL's mode 'I' reads) are divided by 65535. Floating-point
    images are taken to be in [0, 1] already; values outside raise ValueError.
    """
    if image.dtype == torch.uint8:
        # A division, as torchvision's ToDtype(scale=True): x / 255 exactly, not x * float32(1/255).
        return image.to(torch.float32) / (1.0 / uint8_factor)
    if image.dtype == torch.bool:
        return image.to(torch.float32)
    if image.dtype in (torch.uint16, torch.int32):  # PIL's 16-bit modes ('I;16' reads as uint16, 'I' as int32)
        image = image.to(torch.int64)  # few operations exist for uint16
        low, high = (int(image.min()), int(image.max())) if image.numel() else (0, 0)
        if low < 0 or high > 65535:
            raise ValueError(f'16-bit image values must lie in 0..65535, got {low}..{high}')
        return image.to(torch.float32) / 65535.0
    if image.is_floating_point():
        if image.numel() and (float(image.min()) < 0.0 or float(image.max()) > 1.0):
            raise ValueError(f'floating-point images must lie in [0, 1], got values in '
                             f'[{float(image.min()):.4g}, {float(image.max()):.4g}]')
        return image.to(torch.float32)
    raise ValueError(f'unsupported image dtype {image.dtype}; expected uint8, uint16 or int32 (16-bit), bool or '
                     'floating point')


def normalise(image: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """Returns ``(image - mean) / std`` per channel of a ``(C, H, W)`` or ``(B, C, H, W)`` float image."""
    channels = image.shape[-3]
    if len(mean) != channels or len(std) != channels:
        raise ValueError(f'mean and std need one value per channel ({channels}), got mean {tuple(mean)} '
                         f'and std {tuple(std)}')
    if any(not (math.isfinite(s) and s > 0) for s in std):
        raise ValueError(f'std must hold finite numbers > 0, got {tuple(std)}')
    if any(not math.isfinite(m) for m in mean):
        raise ValueError(f'mean must hold finite numbers, got {tuple(mean)}')
    mean_t = torch.tensor(mean, dtype=image.dtype, device=image.device).view(-1, 1, 1)
    std_t = torch.tensor(std, dtype=image.dtype, device=image.device).view(-1, 1, 1)
    return (image - mean_t) / std_t


def model_normalisation(
        model: torch.nn.Module, in_chans: int | None = None) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Returns the ``(mean, std)`` a timm model's inputs are normalised with, in training and evaluation alike.

    The model's ``pretrained_cfg`` statistics where they have one value per input channel, else
    0.5 per channel (e.g. ImageNet's RGB statistics on a 1-channel timm baseline).
    """
    in_chans = in_chans if in_chans is not None else getattr(model, 'in_chans', 3)
    cfg = getattr(model, 'pretrained_cfg', None) or {}
    mean, std = cfg.get('mean'), cfg.get('std')
    if mean is None or std is None or len(mean) != in_chans or len(std) != in_chans:
        return (0.5,) * in_chans, (0.5,) * in_chans
    return tuple(float(m) for m in mean), tuple(float(s) for s in std)


@dataclass
class InputPipeline:
    """The chain decode -> model channels -> canvas -> [0, 1] -> (augment) -> normalise, as one callable.

    Args:
        num_channels: channels of the model (1 or 3).
        mean, std: per-channel normalisation (:func:`model_normalisation`).
        canvas: canvas to centre every image on (int, ``(H, W)`` or ``{'height', 'width'}``);
            ``None`` keeps each image's size. Never crops.
        background: ``'black'`` or ``'mirror'`` (:func:`gaussder_hf.data.dataset_background`).
        augment: applied to the float image in [0, 1] before normalisation (training).
        uint8_factor: what uint8 values are multiplied by (1/255).
        max_pixels: the most pixels an encoded or PIL image may have; larger ones are refused
            before decoding (default ``PIL.Image.MAX_IMAGE_PIXELS``, see :func:`open_image`).
    """

    num_channels: int
    mean: Sequence[float]
    std: Sequence[float]
    canvas: object = None
    background: str = 'black'
    augment: Callable[[torch.Tensor], torch.Tensor] | None = None
    uint8_factor: float = 1 / 255
    max_pixels: int | None = None

    def __post_init__(self):
        pixel_limit(self.max_pixels)
        if isinstance(self.num_channels, bool) or self.num_channels not in (1, 3):
            raise ValueError(f'num_channels must be 1 or 3, got {self.num_channels!r}')
        check_background(self.background)
        if self.canvas is not None:
            _canvas_pair(self.canvas)
        self.mean, self.std = tuple(float(m) for m in self.mean), tuple(float(s) for s in self.std)
        if len(self.mean) != self.num_channels or len(self.std) != self.num_channels:
            raise ValueError(f'mean and std need {self.num_channels} value(s), got {self.mean} and {self.std}')
        if not isinstance(self.uint8_factor, numbers.Real) or not self.uint8_factor > 0:
            raise ValueError(f'uint8_factor must be a positive number, got {self.uint8_factor!r}')

    def pixels(self, image) -> torch.Tensor:
        """Returns the image in the model's channels on its canvas, in [0, 1], before augmentation."""
        image = to_model_channels(decode_image(image, self.max_pixels), self.num_channels)
        image = place_on_canvas(image, self.canvas, self.background)
        return to_unit_range(image, self.uint8_factor)

    def __call__(self, image) -> torch.Tensor:
        x = self.pixels(image)
        if self.augment is not None:
            x = self.augment(x)
        return normalise(x, self.mean, self.std)
