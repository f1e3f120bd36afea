"""Image processor of GaussDerResNets: normalisation, no resizing.

A GaussDerResNet is scale invariant and accepts any image size, so images are not resized by
default. Optionally an image is mirror-extended, centred, to a canvas, as the rescaled test sets
are (DESIGN.md §4).
"""
from __future__ import annotations

import torch
from transformers.image_processing_backends import TorchvisionBackend
from transformers.image_processing_base import BatchFeature
from transformers.image_utils import PILImageResampling

from .kernels import centred_reflect_index
from .presets import DATASET_INFO

__all__ = ['GaussDerResNetImageProcessor', 'mirror_extend_to_canvas', 'model_normalisation']


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


def mirror_extend_to_canvas(images: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Returns ``images (..., H, W)`` centred on an ``height x width`` canvas by mirror extension.

    The same centring rule as the rescaled datasets (``kernels.centred_reflect_index``); images
    larger than the canvas are centre-cropped along that axis.
    """
    for dim, target in ((-2, height), (-1, width)):
        index = torch.as_tensor(centred_reflect_index(images.shape[dim], target), device=images.device)
        images = images.index_select(dim, index)
    return images


class GaussDerResNetImageProcessor(TorchvisionBackend):
    """Rescales to [0, 1], normalises, converts to the model's channel count; never resizes by default.

    Args:
        num_channels: channels the model expects; RGB images are turned to grey for 1, grey
            images repeated for 3.
        canvas_size: ``{'height': H, 'width': W}`` to mirror-extend every image to, centred
            (``None``: keep each image's own size).
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

    def __init__(self, num_channels: int | None = None, canvas_size: dict | None = None, **kwargs):
        super().__init__(**kwargs)
        if num_channels is not None:
            if num_channels not in (1, 3):
                raise ValueError(f'num_channels must be 1 or 3, got {num_channels!r}')
            self.num_channels = num_channels
        if canvas_size is not None:
            if set(canvas_size) != {'height', 'width'} or min(canvas_size.values()) < 1:
                raise ValueError(f"canvas_size must be {{'height': H, 'width': W}} with H, W >= 1, got {canvas_size!r}")
            self.canvas_size = dict(canvas_size)

    def _to_channels(self, image: torch.Tensor) -> torch.Tensor:
        channels = image.shape[0]
        if channels == 4:  # drop alpha
            image, channels = image[:3], 3
        if channels == self.num_channels:
            return image
        if self.num_channels == 1 and channels == 3:
            # ITU-R 601 luma, as PIL's convert('L').
            weights = torch.tensor([0.299, 0.587, 0.114], dtype=torch.float32).view(3, 1, 1)
            return (image.float() * weights).sum(0, keepdim=True)
        if self.num_channels == 3 and channels == 1:
            return image.expand(3, -1, -1)
        raise ValueError(f'cannot turn a {channels}-channel image into {self.num_channels} channels')

    def _preprocess(self, images: list[torch.Tensor], **kwargs) -> BatchFeature:
        images = [self._to_channels(image) for image in images]
        return_tensors = kwargs.pop('return_tensors', None)
        features = super()._preprocess(images, return_tensors=None, **kwargs)
        pixel_values = features['pixel_values']
        if self.canvas_size is not None:
            pixel_values = [
                mirror_extend_to_canvas(image, self.canvas_size['height'], self.canvas_size['width'])
                for image in pixel_values]
        if return_tensors is not None:
            sizes = {tuple(image.shape) for image in pixel_values}
            if len(sizes) > 1:
                raise ValueError(
                    f'images of different sizes {sorted(sizes)} cannot be stacked into one tensor; '
                    'pass them one at a time or set canvas_size')
            pixel_values = torch.stack(pixel_values)
        return BatchFeature(data={'pixel_values': pixel_values}, tensor_type=return_tensors)

    @classmethod
    def from_preset(cls, name: str, **kwargs) -> 'GaussDerResNetImageProcessor':
        """Returns the processor matching preset ``name`` (its mean, std and channel count)."""
        dataset = name.rsplit('_', 1)[-1]
        if dataset not in DATASET_INFO:
            raise ValueError(f'unknown preset {name!r}')
        info = DATASET_INFO[dataset]
        return cls(num_channels=info['input_size'][0], image_mean=list(info['mean']), image_std=list(info['std']),
                   **kwargs)
