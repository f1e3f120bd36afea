"""Tests of gaussder_hf.rescaling (rescaled datasets, paper §4.1) on synthetic and real Fashion-MNIST images.

Geometry used throughout: an axis of ``N`` samples resized to ``n = round(N * s)`` samples has
the actual scale ``a = n / N`` (pixel edges map to pixel edges), and the centring rule puts
resized sample 0 at canvas position ``offset = (m - n) // 2``; so a continuous coordinate ``u`` of
the original lands at ``offset + a * u`` on the canvas.
"""
import math
import os
import re
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from gaussder_hf.rescaling import (
    SIZE_FACTORS,
    benchmark_size_factor,
    check_canvas,
    rescale_batch,
    rescaled_size,
    size_factor_name,
)

sys.path.insert(0, os.path.dirname(__file__))
from fashion_mnist import fashion_mnist_available, load_fashion_mnist  # noqa: E402

NAMES = ['test_s0p500', 'test_s0p595', 'test_s0p707', 'test_s0p841', 'test_s1p000',
         'test_s1p189', 'test_s1p414', 'test_s1p682', 'test_s2p000']

needs_fmnist = pytest.mark.skipif(not fashion_mnist_available(), reason='Debian dataset-fashion-mnist not installed')


@pytest.fixture(scope='module')
def fmnist():
    return load_fashion_mnist('test', limit=1000)[0]


def _extents(images: np.ndarray, threshold: int = 0):
    """Per image: (first, stop) of rows and of cols holding a pixel > threshold."""
    mask = images > threshold
    out = []
    for profile in (mask.any(axis=2), mask.any(axis=1)):
        first = profile.argmax(axis=1)
        stop = profile.shape[1] - profile[:, ::-1].argmax(axis=1)
        out.append((first, stop))
    return out


def _reference_resize(images: np.ndarray, h: int, w: int) -> np.ndarray:
    x = torch.from_numpy(np.array(images)).to(torch.float32)
    grey = x.ndim == 3
    x = x[:, None] if grey else x.permute(0, 3, 1, 2)
    y = F.interpolate(x, size=(h, w), mode='bicubic', align_corners=False, antialias=True)
    y = y.round().clamp(0, 255).to(torch.uint8)
    y = y[:, 0] if grey else y.permute(0, 2, 3, 1)
    return y.numpy()


def _repeated_reflection(n: int, positions) -> np.ndarray:
    """Independent reference of mirror extension: reflect about the edge samples until inside."""
    out = []
    for p in positions:
        while not 0 <= p < n:
            p = -p if p < 0 else 2 * (n - 1) - p
        out.append(p)
    return np.array(out)


def test_size_factors_and_names():
    assert len(SIZE_FACTORS) == 9
    assert SIZE_FACTORS == tuple(2.0 ** (k / 4) for k in range(-4, 5))
    assert SIZE_FACTORS[0] == 0.5 and SIZE_FACTORS[4] == 1.0 and SIZE_FACTORS[-1] == 2.0
    assert [size_factor_name(s) for s in SIZE_FACTORS] == NAMES
    assert [rescaled_size(28, s) for s in SIZE_FACTORS] == [14, 17, 20, 24, 28, 33, 40, 47, 56]
    assert [rescaled_size(32, s) for s in SIZE_FACTORS] == [16, 19, 23, 27, 32, 38, 45, 54, 64]
    assert [rescaled_size(96, s) for s in SIZE_FACTORS] == [48, 57, 68, 81, 96, 114, 136, 161, 192]
    assert rescaled_size(3, 0.01) == 1


def test_matches_bicubic_antialias_and_placement():
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (6, 28, 28), dtype=np.uint8)
    for s in (SIZE_FACTORS[0], SIZE_FACTORS[3], SIZE_FACTORS[6]):
        n = rescaled_size(28, s)
        o = (72 - n) // 2
        y = rescale_batch(x, s, 72)
        assert y.shape == (6, 72, 72) and y.dtype == np.uint8
        np.testing.assert_array_equal(y[:, o:o + n, o:o + n], _reference_resize(x, n, n))
        rest = y.copy()
        rest[:, o:o + n, o:o + n] = 0
        assert not rest.any()


def test_antialiasing_on_downscale():
    # A one-pixel checkerboard halved: anti-aliased it is a flat mid-grey; aliased it would be 0 or 255.
    board = (np.indices((32, 32)).sum(axis=0) % 2 * 255).astype(np.uint8)[None]
    y = rescale_batch(board, 0.5, 16)
    assert abs(int(y[0, 4:12, 4:12].min()) - 128) <= 2 and abs(int(y[0, 4:12, 4:12].max()) - 128) <= 2


@pytest.mark.parametrize('s', SIZE_FACTORS)
def test_solid_rectangle_box_scales_and_stays_centred(s):
    # A solid 255 rectangle: the half-maximum crossing of a step edge lies on the (scaled) edge, so
    # the box of pixels > 127 is exact up to the pixel grid: +-1 px per size, <= 1 px for the centre.
    x = np.zeros((2, 28, 28), dtype=np.uint8)
    x[0, 4:24, 6:22] = 255   # centred: 20 rows, 16 cols
    x[1, 2:20, 9:27] = 255   # off-centre
    n = rescaled_size(28, s)
    a, o = n / 28, (72 - n) // 2
    (r0, r1), (c0, c1) = _extents(x, 127)
    (R0, R1), (C0, C1) = _extents(rescale_batch(x, s, 72), 127)
    for lo, hi, LO, HI in ((r0, r1, R0, R1), (c0, c1, C0, C1)):
        assert np.all(np.abs((HI - LO) - a * (hi - lo)) <= 1)
        assert np.all(np.abs((LO + HI) / 2 - (o + a * (lo + hi) / 2)) <= 1)
    # The centred rectangle stays at the canvas centre.
    assert abs((R0[0] + R1[0]) / 2 - 36) <= 1 and abs((C0[0] + C1[0]) / 2 - 36) <= 1


@needs_fmnist
def test_fashion_mnist_bounding_box_scales_and_stays_centred(fmnist):
    # The bounding box of real images on black. The nonzero box is blurred by the interpolation:
    # bicubic tails (and the negative lobes of the two separable passes multiplying into small
    # positives in the corners) reach up to the kernel's support, 2 samples of the coarser grid
    # (2 * max(1, s) px), beyond the scaled edges, and faint 1..3 grey-level fringes come and go
    # with rounding; so it is only checked loosely per image (its centre tightly, as the blur is
    # symmetric). The box of pixels > 16 (6% of full scale, above the tails) must grow by the
    # factor to within 1 px for the median image, and within 2.5 px for every image (each edge
    # is on the pixel grid, +-0.5 px, and can move by a sample of the coarser grid with the blur).
    # A wrong factor (s**-1, or one step of 2**(1/4) off) is off by >= 3 px for most objects.
    x = fmnist
    for threshold in (0, 16):
        (r0, r1), (c0, c1) = _extents(x, threshold)
        for s in SIZE_FACTORS:
            y = rescale_batch(x, s, 72)
            n = rescaled_size(28, s)
            a, o = n / 28, (72 - n) // 2
            support = 2 * max(1.0, s)
            (R0, R1), (C0, C1) = _extents(y, threshold)
            for lo, hi, LO, HI in ((r0, r1, R0, R1), (c0, c1, C0, C1)):
                size_err = (HI - LO) - a * (hi - lo)
                centre_err = (LO + HI) / 2 - (o + a * (lo + hi) / 2)
                info = (threshold, s, np.median(size_err), size_err.min(), size_err.max(), np.abs(centre_err).max())
                assert np.mean(np.abs(centre_err) <= 1) >= 0.99, info
                assert np.abs(centre_err).max() <= 1.5, info
                if threshold:
                    assert abs(np.median(size_err)) <= 1, info
                    assert np.abs(size_err).max() <= 2.5, info
                else:
                    assert -2 <= size_err.min() and size_err.max() <= 2 * support + 1, info


@needs_fmnist
@pytest.mark.parametrize('s', SIZE_FACTORS)
def test_mirror_is_reflection_of_black_window(fmnist, s):
    x = fmnist[:200]
    n = rescaled_size(28, s)
    o = (72 - n) // 2
    black = rescale_batch(x, s, 72, background='black')
    mirror = rescale_batch(x, s, 72, background='mirror')
    window = black[:, o:o + n, o:o + n]
    np.testing.assert_array_equal(mirror[:, o:o + n, o:o + n], window)
    if o < n:   # pad narrower than the image: numpy's 'reflect'
        np.testing.assert_array_equal(
            mirror, np.pad(window, ((0, 0), (o, 72 - n - o), (o, 72 - n - o)), mode='reflect'))
    idx = _repeated_reflection(n, np.arange(72) - o)
    np.testing.assert_array_equal(mirror, window[:, idx][:, :, idx])


def test_mirror_wide_pad_and_rgb_layout():
    # CIFAR-10 layout: 32x32 RGB on 64x64; s = 0.5 gives 16 px with pads 24 > 16 (repeated reflection),
    # s = 2**(1/4) gives 38 px with odd padding 26 = 13 + 13, s = 2**(-1/4) gives 27 px: pads 18 + 19.
    rng = np.random.default_rng(1)
    x = rng.integers(0, 256, (5, 32, 32, 3), dtype=np.uint8)
    for s in (0.5, SIZE_FACTORS[3], SIZE_FACTORS[5], 2.0):
        n = rescaled_size(32, s)
        o = (64 - n) // 2
        window = rescale_batch(x, s, n, background='black') if n != 32 else x
        mirror = rescale_batch(x, s, 64, background='mirror')
        assert mirror.shape == (5, 64, 64, 3)
        idx = _repeated_reflection(n, np.arange(64) - o)
        np.testing.assert_array_equal(mirror, window[:, idx][:, :, idx])
        np.testing.assert_array_equal(window, _reference_resize(x, n, n))
    # s = 2 exactly fills the canvas: mirror and black agree.
    np.testing.assert_array_equal(rescale_batch(x, 2.0, 64, 'mirror'), rescale_batch(x, 2.0, 64, 'black'))


def test_grey_and_rgb_layouts_agree():
    rng = np.random.default_rng(2)
    rgb = rng.integers(0, 256, (4, 20, 24, 3), dtype=np.uint8)
    for background in ('black', 'mirror'):
        y = rescale_batch(rgb, 1.5, (40, 30), background)
        assert y.shape == (4, 40, 30, 3)
        for c in range(3):
            grey = rescale_batch(rgb[..., c], 1.5, (40, 30), background)
            assert grey.shape == (4, 40, 30)
            np.testing.assert_array_equal(y[..., c], grey)
            np.testing.assert_array_equal(rescale_batch(rgb[..., c:c + 1], 1.5, (40, 30), background)[..., 0], grey)
    # Non-square: rows and cols are resized separately.
    n_h, n_w = rescaled_size(20, 1.5), rescaled_size(24, 1.5)
    y = rescale_batch(rgb, 1.5, (n_h, n_w))
    np.testing.assert_array_equal(y, _reference_resize(rgb, n_h, n_w))


def test_centre_crop_when_larger_than_canvas():
    rng = np.random.default_rng(3)
    x = rng.integers(0, 256, (3, 28, 28), dtype=np.uint8)
    full = rescale_batch(x, 2.0, 56)
    for canvas in (40, 41):
        start = -((canvas - 56) // 2)   # offset = (canvas - n) // 2 is negative: 8 for both
        for background in ('black', 'mirror'):
            np.testing.assert_array_equal(rescale_batch(x, 2.0, canvas, background),
                                          full[:, start:start + canvas, start:start + canvas])


def test_identity_copy_torch_input_and_determinism():
    rng = np.random.default_rng(4)
    x = rng.integers(0, 256, (7, 32, 32, 3), dtype=np.uint8)
    y = rescale_batch(x, 1.0, 32, 'mirror')
    np.testing.assert_array_equal(y, x)
    assert y is not x and not np.shares_memory(y, x)
    # s = 1 on a larger black canvas: the original pasted in the middle.
    y = rescale_batch(x[..., 0], 1.0, 36)
    np.testing.assert_array_equal(y[:, 2:34, 2:34], x[..., 0])
    # torch input, and read-only input (as np.frombuffer gives).
    ro = x.copy()
    ro.flags.writeable = False
    a = rescale_batch(torch.from_numpy(x.copy()), SIZE_FACTORS[2], 64, 'mirror')
    b = rescale_batch(ro, SIZE_FACTORS[2], 64, 'mirror')
    assert a.tobytes() == b.tobytes()
    # Chunked (more images than one chunk) and unchunked give the same bytes.
    big = rng.integers(0, 256, (2100, 9, 9), dtype=np.uint8)
    one = rescale_batch(big, SIZE_FACTORS[1], 12)
    assert one.tobytes() == rescale_batch(big, SIZE_FACTORS[1], 12).tobytes()
    assert one[2050:].tobytes() == rescale_batch(big[2050:], SIZE_FACTORS[1], 12).tobytes()
    assert rescale_batch(big[:0], 0.5, 12).shape == (0, 12, 12)


@pytest.mark.parametrize('kwargs, word', [
    (dict(size_factor=0.0), '0.0'),
    (dict(size_factor=-1.5), '-1.5'),
    (dict(size_factor=math.inf), 'inf'),
    (dict(size_factor=math.nan), 'nan'),
    (dict(size_factor='2'), "'2'"),
    (dict(canvas=0), '0'),
    (dict(canvas=(72, -3)), '-3'),
    (dict(canvas=(72, 72, 72)), '(72, 72, 72)'),
    (dict(background='zeros'), 'zeros'),
    (dict(images=np.zeros((2, 28, 28), dtype=np.float32)), 'float32'),
    (dict(images=torch.zeros((2, 28, 28), dtype=torch.int64)), 'int64'),
    (dict(images=np.zeros((28, 28), dtype=np.uint8)), '(28, 28)'),
    (dict(images=np.zeros((2, 3, 28, 28), dtype=np.uint8)), 'C = 28'),
    (dict(images=[[[0]]]), 'list'),
])
def test_bad_arguments_raise(kwargs, word):
    args = dict(images=np.zeros((2, 28, 28), dtype=np.uint8), size_factor=0.5, canvas=72, background='black')
    args.update(kwargs)
    with pytest.raises(ValueError, match=re.escape(word)):
        rescale_batch(**args)


def test_bad_arguments_of_helpers():
    with pytest.raises(ValueError, match='-0.5'):
        size_factor_name(-0.5)
    with pytest.raises(ValueError, match='0'):
        rescaled_size(0, 1.0)
    with pytest.raises(ValueError, match='nan'):
        rescaled_size(28, math.nan)

    assert check_canvas(72) == (72, 72) and check_canvas([64, 48]) == (64, 48)
    with pytest.raises(ValueError, match=re.escape("'72'")):
        check_canvas('72')


def test_benchmark_size_factor_reads_back_what_a_user_types():
    # 2**(k/4) written with the three decimals of the split names (0.595, 1.189, ...) is itself.
    for k in range(-4, 5):
        exact = 2.0 ** (k / 4)
        assert benchmark_size_factor(float(f'{exact:.3f}')) == exact
        assert benchmark_size_factor(exact) == exact
    for bad, message in ((0.55, 'size factor 0.55 is not one of'), (4, 'size factor 4 is not one of'),
                         (0, 'positive finite number, got 0'), ('1', "positive finite number, got '1'")):
        with pytest.raises(ValueError, match=message):
            benchmark_size_factor(bad)
