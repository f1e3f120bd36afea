"""Scale covariance of a randomly initialised GaussDerResNet on real Fashion-MNIST images.

Each 28x28 test image (float in [0, 1]) is rescaled by a size factor ``s`` (bicubic, antialiased)
and pasted centred on a black ``canvas x canvas`` image. The class scores of the scale channel
with initial scale ``sigma0`` on the ``s = 1`` image should equal those of the channel with
initial scale ``s * sigma0`` on the rescaled image (matched channels, scale covariance, paper
§3.5), up to discretisation and boundary effects. The same channel ``sigma0`` on the rescaled
image (unmatched) and a plain 3x3-conv ResNet of the same widths without subsampling serve as the
references the matched error must beat.

What is measured:

- the preset's own spatial selection: the central pixel for Fashion-MNIST (eq. 38), whose
  covariance needs the object centred on the canvas, which the rescaling keeps; spatial max
  pooling (eq. 39) in the slow tests;
- class scores with their mean over the classes removed (:func:`centred`). The network is used as
  initialised, in eval mode (BN is the identity up to its epsilon), and the scores of such a
  random network share a large class-independent part (about 97% of their norm under spatial max
  pooling) that would hide most of the error: an error relative to the raw scores is small for
  any network. What decides the class is the centred part, and its relative error is measured;
- the ratio matched / unmatched, not only the raw matched error: it says how much of the change
  caused by rescaling the matched channel undoes.

Error: per image ``||a - b|| / ||a||`` over the 10 centred class scores, averaged over the images.

Measured (seed 0, ``PYTHONPATH=. python tests/test_scale_covariance.py``), matched / unmatched at
s = sqrt2 and s = 2:

| network, canvas, images | selection | sigma0 = 1 | sigma0 = 2 |
|---|---|---|---|
| 10-layer, 72, 0-31 | central pixel | 0.146 / 0.823, 0.192 / 1.315 | 0.072 / 0.694, 0.066 / 1.107 |
| 10-layer, 72, 0-31 | spatial max | 0.103 / 0.274, 0.127 / 0.380 | 0.031 / 0.335, 0.543 / 0.567 |
| 18-layer, 160, 0-11 | central pixel | 0.171 / 0.614, 0.195 / 1.061 | 0.033 / 0.788, 0.031 / 1.158 |
| 18-layer, 160, 0-11 | spatial max | 0.078 / 0.188, 0.098 / 0.310 | 0.024 / 0.351, 0.027 / 0.527 |

The matched error is mostly discretisation error at the finest scales: it falls several times from
sigma0 = 1 to sigma0 = 2. Seeds 1 and 2 give matched / unmatched ratios of 0.16 / 0.13 and 0.18 /
0.14 for the 10-layer network at the central pixel. The one failure of covariance in the table,
spatial max at sigma0 = 2, s = 2 on the 72x72 canvas (channel sigma0 = 4), is the canvas boundary:
the maximum over the map reaches the border, where the mirror extension is not a rescaled copy;
the central pixel and the 160x160 canvas do not see it.

Calibrating the BN running statistics in train mode on real images was tried and rejected: the BN
biases make the random 18-layer network amplify small perturbations with depth, so the matched
error exceeds the unmatched one. ``benchmarks/scale_covariance.py --calibrate-bn`` reproduces this.
"""
from __future__ import annotations

import math
import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from fashion_mnist import fashion_mnist_available, read_idx  # noqa: E402

# The measurement is benchmarks/scale_covariance.py's; these tests check its numbers.
sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'benchmarks'))
from scale_covariance import (  # noqa: E402
    build_networks,
    covariance_errors,
    load_test_images,
    reference_scores,
    rescale_on_canvas,
    rescaled_size,
)

# ---------------------------------------------------------------------------------------------
# Tests
# ---------------------------------------------------------------------------------------------

# Skipped on a developer machine without the data; never in CI (CI=true), where .ci/run
# installs the package and a missing dataset must fail loudly instead of passing silently.
needs_data = pytest.mark.skipif(
    not fashion_mnist_available() and not os.environ.get('CI'),
    reason="Debian's dataset-fashion-mnist is not installed (apt-get install -y dataset-fashion-mnist)")

def check_covariance(errors: dict, s: float, max_matched: float, max_ratio: float) -> None:
    where = f's = {s:.4g}: {", ".join(f"{k} {v:.4f}" for k, v in errors.items())}'
    assert errors['matched'] <= max_matched, where
    # The matched channel undoes most of what rescaling changed in the unmatched one.
    assert errors['matched'] <= max_ratio * errors['unmatched'], where
    # Not a network whose scores ignore the image (which would pass the checks above).
    assert errors['spread'] >= 2 * errors['matched'], where
    # Against the plain conv net, each error is taken relative to how much the net's scores vary over
    # the images: a small receptive field makes the plain net's scores nearly image-independent, so
    # its raw error says little.
    assert errors['matched'] / errors['spread'] <= 0.5 * errors['plain'] / errors['plain_spread'], where


def measure(preset: str, sigma0: float, canvas: int, images: torch.Tensor, seed: int = 0,
            spatial_pool: str | None = None, factors: tuple[float, ...] = (2 ** 0.5, 2.0)) -> dict:
    """Returns ``{s: covariance_errors(...)}`` on centred scores for a randomly initialised ``preset``."""
    model, plain = build_networks(preset, sigma0, seed=seed, spatial_pool=spatial_pool)
    reference = reference_scores(model, plain, images, sigma0, canvas)
    return {s: covariance_errors(model, plain, images, s, sigma0, canvas, reference) for s in factors}


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


# The 10-layer preset on the dataset's 72x72 canvas: 16 images take ~2 s on one CPU core.
SMALL = 'gaussderresnet10_fashionmnist'


@needs_data
def test_scale_covariance_at_the_central_pixel():
    """Matched channels: centred scores within 25% and at most 0.3 x the unmatched error.

    Measured (seed 0, images 0-15): matched 0.160 / 0.202, unmatched 0.837 / 1.443 (ratios 0.19 / 0.14)
    at s = sqrt2 / 2; relative to the spread over images, 0.12 / 0.15 against the plain net's 0.46 / 0.71.
    """
    images = load_test_images(16)
    errors = measure(SMALL, 1.0, 72, images)
    for s, e in errors.items():
        check_covariance(e, s, max_matched=0.25, max_ratio=0.3)
    # The matched error is discretisation error: it falls at a coarser initial scale.
    coarser = measure(SMALL, 2.0, 72, images, factors=(2.0,))
    assert coarser[2.0]['matched'] < 0.6 * errors[2.0]['matched'], (coarser, errors)


@needs_data
def test_scale_covariance_under_spatial_max_pooling():
    """Measured (seed 0, images 0-15): matched 0.106 / 0.135, unmatched 0.305 / 0.413 (ratios 0.35 / 0.33)."""
    for s, e in measure(SMALL, 1.0, 72, load_test_images(16), spatial_pool='max').items():
        check_covariance(e, s, max_matched=0.2, max_ratio=0.45)


@needs_data
def test_raw_scores_hide_the_error_that_centred_scores_show():
    # The reason the errors are measured on centred scores: the class-independent part of a random
    # network's scores makes the raw relative error several times smaller.
    model, plain = build_networks(SMALL, 1.0, spatial_pool='max')
    images = load_test_images(8)
    reference = reference_scores(model, plain, images, 1.0, 72)
    raw = covariance_errors(model, plain, images, 2.0, 1.0, 72, reference, centre=False)
    centred_errors = covariance_errors(model, plain, images, 2.0, 1.0, 72, reference)
    assert centred_errors['unmatched'] > 3 * raw['unmatched'], (raw, centred_errors)


@needs_data
@pytest.mark.slow
@pytest.mark.parametrize('spatial_pool, sigma0, max_matched, max_ratio', [
    ('center', 1.0, 0.25, 0.35),  # measured 0.171 / 0.195, ratios 0.28 / 0.18
    ('max', 1.0, 0.15, 0.5),      # measured 0.078 / 0.098, ratios 0.42 / 0.32
    ('center', 2.0, 0.06, 0.1),   # measured 0.033 / 0.031, ratios 0.04 / 0.03
    ('max', 2.0, 0.06, 0.15),     # measured 0.024 / 0.027, ratios 0.07 / 0.05
])
def test_scale_covariance_of_the_paper_network(spatial_pool, sigma0, max_matched, max_ratio):
    """The 18-layer preset on a 160x160 canvas, 12 images (about a minute per case on one core).

    Measured at s = sqrt2 / 2, seed 0, images 0-11. Under spatial max pooling at sigma0 = 1 the
    matched channel removes only about 60% of the unmatched error: the maximum moves over the map,
    and the finest layers' discretisation error enters wherever it lands.
    """
    images = load_test_images(12)
    errors = measure('gaussderresnet18_fashionmnist', sigma0, 160, images, spatial_pool=spatial_pool)
    for s, e in errors.items():
        check_covariance(e, s, max_matched=max_matched, max_ratio=max_ratio)


@needs_data
@pytest.mark.slow
@pytest.mark.parametrize('sigma0', [1.0, 2.0])
def test_scale_covariance_other_weights_and_images(sigma0):
    """Other weights (seed 1), 16 other images, and sigma0 = 2 as well as 1."""
    images = load_test_images(16, start=100)
    for s, e in measure(SMALL, sigma0, 72, images, seed=1).items():
        check_covariance(e, s, max_matched=0.25, max_ratio=0.3)


if __name__ == '__main__':  # prints the numbers quoted in the module docstring
    torch.set_num_threads(1)
    for preset, canvas, count in ((SMALL, 72, 32), ('gaussderresnet18_fashionmnist', 160, 12)):
        for pool in ('center', 'max'):
            for sigma0 in (1.0, 2.0):
                for s, e in measure(preset, sigma0, canvas, load_test_images(count), spatial_pool=pool).items():
                    print(f'{preset} canvas {canvas}, {count} images, {pool}, sigma0 {sigma0}, s {s:.4g}: '
                          + ', '.join(f'{k} {v:.3f}' for k, v in e.items())
                          + f', matched/unmatched {e["matched"] / e["unmatched"]:.3f}')
