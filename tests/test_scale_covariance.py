"""Scale covariance of a randomly initialised GaussDerResNet on real Fashion-MNIST images.

Each 28x28 test image (float in [0, 1]) is rescaled by a size factor ``s`` (bicubic, antialiased)
and pasted centred on a black ``canvas x canvas`` image. With spatial max pooling, the class
scores of the scale channel with initial scale ``sigma0`` on the ``s = 1`` image should equal
those of the channel with initial scale ``s * sigma0`` on the rescaled image (matched channels,
scale covariance, paper §3.5), up to discretisation and boundary effects. The same channel
``sigma0`` on the rescaled image (unmatched) and a plain 3x3-conv ResNet of similar size
without subsampling serve as the references the matched error must beat.

Error: per image ``||a - b|| / ||a||`` over the 10 class scores, averaged over the images.

The network is used as initialised, in eval mode: its batch normalisations have the default
running statistics (mean 0, variance 1), so they are the identity (up to the BN epsilon), there
are no biases, and the network is positively homogeneous. Its max-pooled class scores share a
large common component (the class-mean part is about 97% of their norm), which makes every
relative error small. That component is shared by the three errors compared here, and the
scores still depend on the image: the test checks that the spread of the scores over the
images is well above the matched error, so a network whose scores do not depend on the image
fails. Calibrating the BN running statistics in train mode on real images was tried and
rejected: the BN biases make the random 18-layer network amplify small perturbations with
depth (the feature-map covariance error grows from ~15% after layer 1 to ~45% at the output
for sigma0 = 1, s = 2, instead of staying flat), so the matched error exceeds the unmatched
one. ``benchmarks/scale_covariance.py --calibrate-bn`` reproduces this.

Margins (sigma0 = 1, canvas 160, measured with seed 0 on test images 0-11): matched 2.2% / 3.1%
for s = sqrt2 / 2, unmatched 9.9% / 15.0%, plain 11.5% / 17.9%, so matched / plain is ~0.2 against
the required 0.25. That ratio depends on the weights and the images: on images 0-5 alone it is
0.24 / 0.25 (seed 0), and seed 2 on images 0-11 gives 0.29 at s = sqrt2. At sigma0 = 1 the
matched error is set by discretisation (it falls to ~1% at sigma0 = 2); the plain net's error is
bounded by how much its scores depend on the image at all (its spread over images is ~0.2).

The long sweep (several sigma0 and canvases, all presets) is ``benchmarks/scale_covariance.py``;
another seed and other images are under ``@pytest.mark.slow`` here.
"""
from __future__ import annotations

import math
import os
import sys

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from torchvision.transforms import InterpolationMode
from torchvision.transforms.v2 import functional as TF

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from fashion_mnist import fashion_mnist_available, load_fashion_mnist, read_idx  # noqa: E402

import gaussder_hf  # noqa: E402


# ---------------------------------------------------------------------------------------------
# Helpers, shared with benchmarks/scale_covariance.py
# ---------------------------------------------------------------------------------------------

def load_test_images(count: int, in_chans: int = 1, start: int = 0) -> torch.Tensor:
    """Returns ``count`` Fashion-MNIST test images as floats in [0, 1], ``(count, in_chans, 28, 28)``.

    Grayscale is replicated to ``in_chans`` channels (for the RGB presets).
    """
    images, _ = load_fashion_mnist('test', limit=start + count)
    x = torch.from_numpy(images[start:start + count].copy()).float().div_(255.0).unsqueeze(1)
    return x.expand(-1, in_chans, -1, -1).contiguous()


def rescaled_size(size: int, s: float) -> int:
    """Returns the side of an image of side ``size`` rescaled by ``s``: ``round(size * s)``."""
    return max(1, int(round(size * s)))


def rescale_on_canvas(images: torch.Tensor, s: float, canvas: int) -> torch.Tensor:
    """Rescales ``images`` by ``s`` (bicubic, antialiased, clamped to [0, 1]) and centres them on a black canvas.

    The object occupies rows/columns ``offset .. offset + n - 1`` with ``offset = (canvas - n) // 2``
    and ``n = round(28 * s)``, so its centre ``offset + (n - 1) / 2`` is the canvas centre
    ``(canvas - 1) / 2`` exactly when ``canvas - n`` is even, and half a pixel up-left of it
    otherwise (the same rule for every ``s``; the sizes used here are all even).
    """
    size = images.shape[-1]
    n = rescaled_size(size, s)
    if n > canvas:
        raise ValueError(f'a {size}px image rescaled by {s} ({n}px) does not fit on a {canvas}px canvas')
    if n != size:
        images = TF.resize(images, [n, n], interpolation=InterpolationMode.BICUBIC, antialias=True)
    images = images.clamp(0.0, 1.0)
    out = images.new_zeros(*images.shape[:-2], canvas, canvas)
    offset = (canvas - n) // 2
    out[..., offset:offset + n, offset:offset + n] = images
    return out


class PlainConvResNet(nn.Module):
    """Plain 3x3-conv ResNet without subsampling, the GaussDerResNet's layout with 3x3 convolutions.

    Stem ``conv3x3 -> BN -> ReLU``, one residual block ``conv3x3 -> BN -> ReLU -> conv3x3 -> BN``
    (+ identity, or 1x1 conv + BN when the width changes, then ReLU) per entry of ``channels[1:]``,
    head ``conv3x3 -> BN`` to ``num_classes``, spatial max pooling. Convolutions have no bias and
    the same He-uniform initialisation as the GD layers (the 1x1 skips keep PyTorch's default, as in
    the GaussDerResNet). Zero padding: on a black canvas it agrees with the GD layers' mirror
    extension wherever the margin is wide enough.
    """

    def __init__(self, in_chans: int, num_classes: int, channels):
        super().__init__()
        channels = tuple(channels)

        def conv(cin, cout):
            layer = nn.Conv2d(cin, cout, 3, padding=1, bias=False)
            nn.init.kaiming_uniform_(layer.weight, nonlinearity='relu')
            return layer

        self.stem = nn.Sequential(conv(in_chans, channels[0]), nn.BatchNorm2d(channels[0]), nn.ReLU())
        self.blocks = nn.ModuleList()
        for cin, cout in zip(channels[:-1], channels[1:]):
            block = nn.Module()
            block.body = nn.Sequential(
                conv(cin, cout), nn.BatchNorm2d(cout), nn.ReLU(), conv(cout, cout), nn.BatchNorm2d(cout))
            block.skip = (nn.Identity() if cin == cout
                          else nn.Sequential(nn.Conv2d(cin, cout, 1, bias=False), nn.BatchNorm2d(cout)))
            self.blocks.append(block)
        self.head = nn.Sequential(conv(channels[-1], num_classes), nn.BatchNorm2d(num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        for block in self.blocks:
            x = F.relu(block.body(x) + block.skip(x))
        return self.head(x).amax(dim=(-2, -1))


def relative_l2_error(reference: torch.Tensor, other: torch.Tensor) -> float:
    """Returns the mean over images of ``||reference - other|| / ||reference||`` over the last axis."""
    return ((reference - other).norm(dim=-1) / reference.norm(dim=-1)).mean().item()


def build_networks(preset: str, sigma0: float, seed: int = 0):
    """Returns ``(gaussderresnet, plain)``: the preset with spatial max pooling and one scale channel
    ``sigma0``, and a plain 3x3-conv ResNet of the same widths, both randomly initialised, eval mode."""
    torch.manual_seed(seed)
    model = gaussder_hf.create_gaussderresnet(preset, initial_scales=(sigma0,), spatial_pool='max').eval()
    plain = PlainConvResNet(model.in_chans, model.num_classes, model.channels).eval()
    return model, plain


@torch.no_grad()
def reference_scores(model, plain, images: torch.Tensor, sigma0: float, canvas: int):
    """Returns the ``s = 1`` scores: channel ``sigma0`` of ``model`` ``(B, K)`` and ``plain`` ``(B, K)``."""
    x = rescale_on_canvas(images, 1.0, canvas)
    scores = model.with_initial_scales((sigma0,)).forward_scale_channels(x)[:, 0]
    return scores, plain(x)


@torch.no_grad()
def rescaled_scores(model, plain, images: torch.Tensor, s: float, sigma0: float, canvas: int):
    """Returns the scores on the image rescaled by ``s``: ``(matched, unmatched, plain)``, each ``(B, K)``.

    ``matched`` is scale channel ``s * sigma0``, ``unmatched`` scale channel ``sigma0``.
    """
    x = rescale_on_canvas(images, s, canvas)
    scores = model.with_initial_scales((sigma0, s * sigma0)).forward_scale_channels(x)
    return scores[:, 1], scores[:, 0], plain(x)


def covariance_errors(model, plain, images: torch.Tensor, s: float, sigma0: float, canvas: int, reference=None):
    """Returns ``{'matched', 'unmatched', 'plain', 'spread'}`` mean relative L2 errors for size factor ``s``.

    ``matched``: channel ``s * sigma0`` on the rescaled image against channel ``sigma0`` on the
    ``s = 1`` image; ``unmatched``: channel ``sigma0`` on both; ``plain``: the plain conv net on both;
    ``spread``: the ``s = 1`` scores against their mean over the images (how much they depend on
    the image). ``reference`` reuses :func:`reference_scores`.
    """
    ref, plain_ref = reference if reference is not None else reference_scores(model, plain, images, sigma0, canvas)
    matched, unmatched, plain_scores = rescaled_scores(model, plain, images, s, sigma0, canvas)
    return dict(
        matched=relative_l2_error(ref, matched),
        unmatched=relative_l2_error(ref, unmatched),
        plain=relative_l2_error(plain_ref, plain_scores),
        spread=relative_l2_error(ref, ref.mean(dim=0, keepdim=True).expand_as(ref)),
    )


# ---------------------------------------------------------------------------------------------
# Tests
# ---------------------------------------------------------------------------------------------

# Skipped on a developer machine without the data; never in CI (CI=true), where .ci/run
# installs the package and a missing dataset must fail loudly instead of passing silently.
needs_data = pytest.mark.skipif(
    not fashion_mnist_available() and not os.environ.get('CI'),
    reason="Debian's dataset-fashion-mnist is not installed (apt-get install -y dataset-fashion-mnist)")

# 12 images take ~45 s on 2 CPU cores. At sigma0 = 1 the matched / plain ratio (~0.2) is close to
# the required 1/4 and varies with the images and the seed (see the module docstring).
NUM_IMAGES = 12


def check_covariance(errors: dict, s: float) -> None:
    where = f's = {s:.4g}: {", ".join(f"{k} {v:.4f}" for k, v in errors.items())}'
    assert errors['matched'] <= 0.05, where
    assert errors['matched'] <= 0.5 * errors['unmatched'], where
    assert errors['matched'] <= 0.25 * errors['plain'], where
    # Not a network whose scores ignore the image (which would pass the three checks above).
    assert errors['spread'] >= 4 * errors['matched'], where


def test_idx_reader_checks_magic_and_sizes(tmp_path):
    import gzip
    import struct

    images = bytes(range(256)) * 3 + bytes(16)  # 2 x 28 x 14 bytes = 784
    good = struct.pack('>BBBBIII', 0, 0, 8, 3, 2, 28, 14) + images
    path = tmp_path / 'good.gz'
    path.write_bytes(gzip.compress(good))
    array = read_idx(str(path), ndim=3)
    assert array.shape == (2, 28, 14) and array.dtype.name == 'uint8' and array[0, 0, 1] == 1
    assert read_idx(str(path), limit=1).shape == (1, 28, 14)
    with pytest.raises(ValueError, match='expected 1 dimensions'):
        read_idx(str(path), ndim=1)
    cases = {
        'truncated IDX data': good[:-1],
        'truncated IDX header': good[:10],
        'bad IDX magic number': b'\x00\x00\x0d\x03' + good[4:],
    }
    for message, data in cases.items():
        path = tmp_path / 'bad.gz'
        path.write_bytes(gzip.compress(data))
        with pytest.raises(ValueError, match=message):
            read_idx(str(path))
    path.write_bytes(gzip.compress(good)[:-20])  # the gzip stream itself is cut
    with pytest.raises(ValueError, match='truncated'):
        read_idx(str(path))


def test_rescale_on_canvas_keeps_the_centre():
    torch.manual_seed(0)
    images = torch.rand(2, 1, 28, 28)
    for s in (1.0, math.sqrt(2.0), 2.0):
        x = rescale_on_canvas(images, s, 160)
        n = rescaled_size(28, s)
        assert x.shape == (2, 1, 160, 160)
        assert float(x.min()) >= 0.0 and float(x.max()) <= 1.0
        rows = x.abs().sum(dim=(0, 1, 3)).nonzero().flatten()
        assert int(rows[0]) == (160 - n) // 2 and int(rows[-1]) == (160 - n) // 2 + n - 1
        centre = (int(rows[0]) + int(rows[-1])) / 2
        assert abs(centre - 79.5) <= 0.5
    with pytest.raises(ValueError, match='does not fit'):
        rescale_on_canvas(images, 2.0, 40)


@needs_data
def test_scale_covariance_fashion_mnist():
    """Matched scale channels agree to <= 5%, <= 1/2 the unmatched and <= 1/4 the plain-conv error."""
    sigma0, canvas = 1.0, 160
    model, plain = build_networks('gaussderresnet18_fashionmnist', sigma0)
    images = load_test_images(NUM_IMAGES)
    reference = reference_scores(model, plain, images, sigma0, canvas)
    for s in (math.sqrt(2.0), 2.0):
        check_covariance(covariance_errors(model, plain, images, s, sigma0, canvas, reference), s)


@needs_data
@pytest.mark.slow
@pytest.mark.parametrize('sigma0', [1.0, 2.0])
def test_scale_covariance_fashion_mnist_slow(sigma0):
    """Other weights (seed 1), 16 other images, and sigma0 = 2 as well as 1."""
    canvas = 160
    model, plain = build_networks('gaussderresnet18_fashionmnist', sigma0, seed=1)
    images = load_test_images(16, start=100)
    reference = reference_scores(model, plain, images, sigma0, canvas)
    for s in (math.sqrt(2.0), 2.0):
        check_covariance(covariance_errors(model, plain, images, s, sigma0, canvas, reference), s)
