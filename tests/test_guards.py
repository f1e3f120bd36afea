"""Values that would be taken silently and change what the network computes are refused with a clear error."""
from __future__ import annotations

import math

import numpy as np
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


def _png(width: int, height: int) -> bytes:
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(np.arange(width * height, dtype=np.uint8).reshape(height, width)).save(buffer, format='PNG')
    return buffer.getvalue()


@pytest.fixture
def no_decoding(monkeypatch):
    """Fails the test if PIL decodes the pixels of any image file."""
    from PIL import ImageFile

    def load(self):
        raise AssertionError('the pixels were decoded')

    monkeypatch.setattr(ImageFile.ImageFile, 'load', load)


def test_images_above_the_pixel_limit_are_refused_before_decoding(tmp_path, monkeypatch, request):
    import datasets
    from PIL import Image

    from gaussder_hf.input_pipeline import InputPipeline, decode_image

    png = _png(40, 30)
    (tmp_path / 'big.png').write_bytes(png)
    # Within the limit it decodes to the stored pixels.
    expected = np.arange(1200, dtype=np.uint8).reshape(1, 30, 40)
    assert np.array_equal(decode_image(png, max_pixels=1200).numpy(), expected)

    request.getfixturevalue('no_decoding')  # from here on, decoding any pixel fails the test
    encoded = [png, str(tmp_path / 'big.png'), tmp_path / 'big.png', {'bytes': png, 'path': None},
               {'bytes': None, 'path': str(tmp_path / 'big.png')}]
    for source in encoded:
        with pytest.raises(ValueError, match=r'40x30 = 1,200 pixels exceeds the limit of 1,199 pixels'):
            decode_image(source, max_pixels=1199)
    # The default is PIL's MAX_IMAGE_PIXELS, made an error (PIL only warns below twice it).
    monkeypatch.setattr(Image, 'MAX_IMAGE_PIXELS', 1000)
    for refuse in (decode_image, GaussDerResNetImageProcessor()):
        with pytest.warns(Image.DecompressionBombWarning):  # PIL itself only warns, and would decode on
            opened = Image.open(tmp_path / 'big.png')
        with pytest.raises(ValueError, match='exceeds the limit of 1,000 pixels'):
            refuse(opened)
    # A datasets Image column read undecoded, as the recipes read it, through the input pipeline.
    column = datasets.Dataset.from_dict({'image': [{'bytes': png, 'path': None}]},
                                        features=datasets.Features({'image': datasets.Image(decode=False)}))
    with pytest.raises(ValueError, match='exceeds the limit of 1,000 pixels'):
        InputPipeline(1, (0.5,), (0.5,))(column[0]['image'])
    with pytest.raises(ValueError, match='max_pixels must be a positive integer or None'):
        InputPipeline(1, (0.5,), (0.5,), max_pixels=0)
