"""Image processor of GaussDerResNets: the package's input pipeline behind transformers' interface.

A GaussDerResNet is scale invariant and accepts any image size, so images are never resized.
Every image goes through :mod:`gaussder_hf.input_pipeline`, the same steps training and
evaluation use: conversion to the model's channels (one rule for grey vs RGB, alpha dropped),
centring on ``canvas_size`` on the ``background`` of the data the network was trained on
(pixel-identical to the rescaled dataset at size factor 1; an image larger than the canvas is
never cropped, the canvas grows to cover it), scaling to [0, 1] and normalisation.
"""
from __future__ import annotations

import math

import torch
from transformers.image_processing_backends import TorchvisionBackend
from transformers.image_processing_base import BatchFeature
from transformers.image_utils import PILImageResampling

from .input_pipeline import InputPipeline, decode_image, normalise, to_model_channels
from .presets import DATASET_INFO
from .rescaling import BACKGROUNDS

__all__ = ['GaussDerResNetImageProcessor']


class GaussDerResNetImageProcessor(TorchvisionBackend):
    """Converts to the model's channels, centres on a canvas, rescales to [0, 1], normalises; never resizes.

    Args:
        num_channels: channels the model expects (1 or 3); RGB images are turned to grey for 1
            (ITU-R 601-2 luma, as PIL), grey images repeated for 3, alpha dropped.
        canvas_size: ``{'height': H, 'width': W}`` to centre every image on, as the rescaled
            datasets do at size factor 1 (``None``: keep each image's own size). An image larger
            than the canvas along an axis keeps its full size along it.
        background: ``'black'`` (Fashion-MNIST) or ``'mirror'`` (CIFAR-10, STL-10): the canvas
            of the data the network was trained on (:func:`gaussder_hf.data.dataset_background`).
            Configs saved before this field existed read as ``'black'``.
    """

    model_input_names = ['pixel_values']
    resample = PILImageResampling.BICUBIC
    image_mean = DATASET_INFO['fashionmnist']['mean']
    image_std = DATASET_INFO['fashionmnist']['std']
    do_resize = False
    do_center_crop = False
    do_rescale = True
    do_normalize = True
    do_convert_rgb = False
    num_channels = 1
    canvas_size = None
    background = 'black'

    def __init__(self, num_channels: int | None = None, canvas_size: dict | None = None,
                 background: str | None = None, **kwargs):
        super().__init__(**kwargs)
        for name in ('do_resize', 'do_center_crop', 'do_pad'):
            if kwargs.get(name):
                raise ValueError(f'{name}=True is not supported: GaussDerResNets are scale invariant and this '
                                 f'processor never resizes, crops or pads an image (use canvas_size to centre it)')
        if num_channels is not None:
            if isinstance(num_channels, bool) or num_channels not in (1, 3):
                raise ValueError(f'num_channels must be 1 or 3, got {num_channels!r}')
            self.num_channels = num_channels
        if canvas_size is not None:
            if (not isinstance(canvas_size, dict) or set(canvas_size) != {'height', 'width'}
                    or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 1
                               for v in canvas_size.values())):
                raise ValueError(f"canvas_size must be {{'height': H, 'width': W}} with H, W >= 1, got {canvas_size!r}")
            self.canvas_size = dict(canvas_size)
        # Checked here, not first at the call: a zero or non-finite std would turn every image
        # into inf/NaN, and a saved processor would carry it on.
        _per_channel(self.image_mean, self.num_channels, 'image_mean')
        _per_channel(self.image_std, self.num_channels, 'image_std', positive=True)
        background = self.background if background is None else background
        if background not in BACKGROUNDS:
            raise ValueError(f'background must be one of {BACKGROUNDS}, got {background!r}')
        self.background = background  # an instance attribute, so that it is saved

    def process_image(self, image, *args, device: torch.device | None = None, **kwargs) -> torch.Tensor:
        """Returns one input image as a ``(num_channels, H, W)`` tensor of its own dtype (decoding, channels)."""
        image = to_model_channels(decode_image(image), self.num_channels)
        return image.to(device) if device is not None else image

    def _preprocess(self, images: list[torch.Tensor], do_rescale: bool = True, rescale_factor: float = 1 / 255,
                    do_normalize: bool = True, image_mean=None, image_std=None, return_tensors=None,
                    do_resize: bool = False, do_center_crop: bool = False, do_pad: bool | None = False,
                    **kwargs) -> BatchFeature:
        for name, value in (('do_resize', do_resize), ('do_center_crop', do_center_crop), ('do_pad', do_pad)):
            if value:
                raise ValueError(f'{name}=True is not supported: this processor never resizes, crops or pads')
        mean = _per_channel(image_mean, self.num_channels, 'image_mean')
        std = _per_channel(image_std, self.num_channels, 'image_std', positive=True)
        pipeline = InputPipeline(self.num_channels, mean, std, canvas=self.canvas_size, background=self.background,
                                 uint8_factor=rescale_factor if do_rescale else 1.0)
        pixel_values = [pipeline.pixels(image) for image in images]
        if do_normalize:
            pixel_values = [normalise(image, mean, std) for image in pixel_values]
        if return_tensors is not None:
            sizes = {tuple(image.shape) for image in pixel_values}
            if len(sizes) > 1:
                raise ValueError(
                    f'images of different sizes {sorted(sizes)} cannot be stacked into one tensor; '
                    'pass them one at a time or set a canvas_size that covers them all')
            pixel_values = torch.stack(pixel_values)
        return BatchFeature(data={'pixel_values': pixel_values}, tensor_type=return_tensors)

    @classmethod
    def from_preset(cls, name: str, **kwargs) -> GaussDerResNetImageProcessor:
        """Returns the processor matching preset ``name``: its mean, std, channel count and canvas background."""
        dataset = name.rsplit('_', 1)[-1]
        if dataset not in DATASET_INFO:
            raise ValueError(f'unknown preset {name!r}')
        info = DATASET_INFO[dataset]
        kwargs.setdefault('background', info['background'])
        return cls(num_channels=info['input_size'][0], image_mean=list(info['mean']), image_std=list(info['std']),
                   **kwargs)


def _per_channel(values, channels: int, name: str, positive: bool = False) -> tuple[float, ...]:
    """Returns ``values`` as one float per channel, checking they are finite (and > 0 if ``positive``)."""
    allowed = 'finite numbers > 0' if positive else 'finite numbers'
    if isinstance(values, (int, float)) and not isinstance(values, bool):
        values = (values,)
    elif isinstance(values, (list, tuple)):
        values = tuple(values)
    else:
        raise ValueError(f'{name} must be a number or a list of {allowed}, got {values!r}')
    if len(values) == 1:
        values = values * channels
    if len(values) != channels:
        raise ValueError(f'{name} needs 1 or {channels} value(s), got {values}')
    if any(isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v)
           or (positive and v <= 0) for v in values):
        raise ValueError(f'{name} must hold {allowed}, got {values!r}')
    return tuple(float(v) for v in values)


def __getattr__(name: str):
    # model_normalisation was reachable from here once; its home is the input pipeline, where
    # training and evaluation take it from. The old spelling keeps working, with a warning.
    if name == 'model_normalisation':
        import warnings

        from .input_pipeline import model_normalisation

        warnings.warn('gaussder_hf.image_processing.model_normalisation is deprecated; import it from '
                      'gaussder_hf.input_pipeline', FutureWarning, stacklevel=2)
        return model_normalisation
    raise AttributeError(f'module {__name__!r} has no attribute {name!r}')
