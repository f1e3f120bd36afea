"""Values that would be taken silently and change what the network computes are refused with a clear error."""
from __future__ import annotations

import math

import pytest
import timm
import torch

from gaussder_hf import GaussDerResNet, GaussDerResNetConfig, GaussDerResNetImageProcessor

_TINY = dict(channels=(4, 4), initial_scales=(1.0,))


@pytest.mark.parametrize('field, value', [('std', [0.0]), ('std', [-0.5]), ('std', [math.nan]), ('mean', [math.inf])])
def test_normalisation_must_be_finite_with_positive_std(field, value):
    # std = 0 divided every pixel by zero: every prediction became class 0.
    with pytest.raises(ValueError, match=f'{field} must hold finite numbers'):
        GaussDerResNetConfig(**{field: value})
    with pytest.raises(ValueError, match=f'image_{field} must hold finite numbers'):
        GaussDerResNetImageProcessor(**{f'image_{field}': value})


@pytest.mark.parametrize('field, value, message', [
    ('zero_order', 'no', 'zero_order must be a bool'),
    ('zero_order', 1, 'zero_order must be a bool'),
    ('separable_from_block', 2.5, 'separable_from_block must be None or an integer'),
    ('separable_from_block', True, 'separable_from_block must be None or an integer'),
    ('initial_scales', '1.0', 'initial_scales must be a'),
    ('jet_order', '2', 'jet_order must be an integer in 1..3'),
])
def test_mistyped_architecture_arguments_are_refused(field, value, message):
    with pytest.raises(ValueError, match=message):
        GaussDerResNet(**{**_TINY, field: value})
    with pytest.raises(ValueError, match=message):
        timm.create_model('gaussderresnet10_fashionmnist', **{field: value})
    with pytest.raises(ValueError, match=message):
        GaussDerResNetConfig(**{field: value})


def test_integer_input_and_dtype_mismatch_get_clear_errors():
    model = GaussDerResNet(**_TINY).eval()
    pixels = torch.randint(0, 256, (1, 1, 9, 9), dtype=torch.uint8)
    with pytest.raises(TypeError, match=r'floating-point input.*uint8.*x\.float\(\) / 255'):
        model(pixels)
    with pytest.raises(TypeError, match=r'input dtype torch\.float64 differs from the model dtype torch\.float32'):
        model(pixels.double() / 255)
    # A float64 model takes float64 input, and computes what the float32 one does.
    x = pixels.float() / 255
    expected = model(x)
    got = model.double()(x.double())
    assert got.dtype == torch.float64
    torch.testing.assert_close(got.float(), expected, rtol=1e-4, atol=1e-5)
