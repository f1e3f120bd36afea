"""Rescaled validation splits: choosing settings on scale generalisation without the test images.

``rescaled_validation=True`` adds ``validation_s0p500`` ... ``validation_s2p000`` to a rescaled
dataset; ``recipes/evaluate.py --split validation`` evaluates on them.
"""
from __future__ import annotations

import json

import numpy as np
import pytest
import timm
import torch
from datasets import load_dataset
from fashion_mnist import FASHION_DIR, needs_fashion
from PIL import Image
from recipe_modules import load_recipe
from scipy import ndimage

import gaussder_hf  # noqa: F401  (registers the builders with datasets)
from gaussder_hf.analysis import rescaled_test_splits
from gaussder_hf.data.sources import read_fashion_mnist
from gaussder_hf.rescaling import SIZE_FACTORS, size_factor_name

LIMIT = 12
VALIDATION_START = 50_000  # Fashion-MNIST's validation split: the last 10,000 official training images
recipe = load_recipe('evaluate')


@pytest.fixture(scope='module')
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp('cache')


@pytest.fixture(scope='module')
def with_validation(cache):
    return load_dataset('rescaled_fashion_mnist', data_dir=FASHION_DIR, max_examples=LIMIT, rescaled_validation=True,
                        cache_dir=str(cache))


def test_split_names():
    assert size_factor_name(2 ** -0.75, 'validation') == 'validation_s0p595'
    assert size_factor_name(2.0) == 'test_s2p000'
    with pytest.raises(ValueError, match="split must be one of .* got 'train'"):
        size_factor_name(1.0, 'train')


@needs_fashion
def test_validation_splits_are_the_validation_originals_rescaled(with_validation):
    expected_names = [f'validation_s{s:.3f}'.replace('.', 'p') for s in SIZE_FACTORS]
    assert set(expected_names) <= set(with_validation)
    originals, labels = read_fashion_mnist(FASHION_DIR, 'train')
    originals = originals[VALIDATION_START:VALIDATION_START + LIMIT]
    labels = labels[VALIDATION_START:VALIDATION_START + LIMIT]
    for s, name in zip(SIZE_FACTORS, expected_names):
        split = with_validation[name]
        assert split['label'] == labels.tolist(), name
        assert set(split['size_factor']) == {np.float32(s)}, name
        images = np.stack([np.asarray(image) for image in split['image']])
        assert images.shape == (LIMIT, 72, 72), name
        # The object is the original resampled to round(28 s) pixels, centred on black.
        side = round(28 * s)
        top = (72 - side) // 2
        assert not images[:, :top].any() and not images[:, top + side:].any(), name
        assert not images[:, :, :top].any() and not images[:, :, top + side:].any(), name
        # Independent of the rescaling code: the mean grey value scales with the area (within
        # resampling error), and the validation images' ink is the originals' at s = 1.
        ink = images.reshape(LIMIT, -1).astype(np.float64).sum(1)
        np.testing.assert_allclose(ink, originals.reshape(LIMIT, -1).sum(1) * s * s, rtol=0.08, err_msg=name)
    at_one = np.stack([np.asarray(image) for image in with_validation['validation_s1p000']['image']])
    np.testing.assert_array_equal(at_one[:, 22:50, 22:50], originals)
    # Rescaled about the canvas centre: an object's centre of mass moves s times its offset from
    # the centre of the original (to within a pixel of resampling and rounding).
    for s, name in zip(SIZE_FACTORS, expected_names):
        for image, original in zip(with_validation[name]['image'][:4], originals):
            got = np.array(ndimage.center_of_mass(np.asarray(image, dtype=np.float64)))
            expected = 35.5 + s * (np.array(ndimage.center_of_mass(original.astype(np.float64))) - 13.5)
            np.testing.assert_allclose(got, expected, atol=1.0, err_msg=name)


@needs_fashion
def test_the_test_splits_do_not_change(with_validation, tmp_path):
    plain = load_dataset('rescaled_fashion_mnist', data_dir=FASHION_DIR, max_examples=LIMIT,
                         cache_dir=str(tmp_path))
    assert not any(name.startswith('validation_s') for name in plain)
    for s in SIZE_FACTORS:
        name = size_factor_name(s)
        a = np.stack([np.asarray(image) for image in plain[name]['image']])
        b = np.stack([np.asarray(image) for image in with_validation[name]['image']])
        np.testing.assert_array_equal(a, b, err_msg=name)
    with pytest.raises(ValueError, match=r"no split\(s\) \['validation_s0p500'.*rescaled_validation=True"):
        rescaled_test_splits(plain, 'rescaled_fashion_mnist', 'validation')


@needs_fashion
@pytest.mark.parametrize('options, message', [
    ({'rescaled_validation': 'yes'}, "rescaled_validation must be True or False, got 'yes'"),
    ({'rescaled_validation': True, 'test_only': True}, 'test_only=True builds the test splits alone'),
])
def test_bad_options_are_named(tmp_path, options, message):
    with pytest.raises(ValueError, match=message):
        load_dataset('rescaled_fashion_mnist', data_dir=FASHION_DIR, max_examples=LIMIT, cache_dir=str(tmp_path),
                     **options)


def test_the_generic_builder_rescales_its_carved_validation(tmp_path):
    root = tmp_path / 'folder'
    # Solid squares, each of its own grey: rescaled, each stays a solid square of its grey.
    grey = iter(range(10, 250, 5))
    for split, count in (('train', 10), ('test', 4)):
        for name in ('a', 'b'):
            (root / split / name).mkdir(parents=True)
            for j in range(count):
                Image.new('L', (8, 8), next(grey)).save(root / split / name / f'{j}.png')
    ds = load_dataset('rescaled_images', base=str(root), canvas_size=20, size_factors=[0.5, 2.0],
                      validation_fraction=0.25, rescaled_validation=True, cache_dir=str(tmp_path / 'cache'))
    assert {'validation_s0p500', 'validation_s2p000'} <= set(ds)
    validation = np.stack([np.asarray(image) for image in ds['validation']['image']])
    greys = validation[:, 10, 10]  # the 8x8 squares at s = 1 on the 20x20 canvas: rows/columns 6..13
    assert len(validation) == 5 and len(set(greys.tolist())) == 5
    for name, side in (('validation_s0p500', 4), ('validation_s2p000', 16)):
        split = ds[name]
        assert split['label'] == ds['validation']['label']
        images = np.stack([np.asarray(image) for image in split['image']]).astype(int)
        assert images.shape == (len(validation), 20, 20)
        top = (20 - side) // 2
        square = images[:, top:top + side, top:top + side]
        assert (np.abs(square - greys[:, None, None].astype(int)) <= 1).all(), name
        images[:, top:top + side, top:top + side] = 0
        assert not images.any(), name  # black around the square


@needs_fashion
def test_evaluate_split_validation_scores_the_validation_images(with_validation, cache, tmp_path, small_checkpoint):
    _, checkpoint = small_checkpoint(tmp_path / 'tiny', 'gaussderresnet10_fashionmnist', initial_scales=(1.0, 2.0))
    recipe.main(['--model', f'tiny={checkpoint}', '--data_dir', FASHION_DIR, '--max_examples', str(LIMIT),
                 '--split', 'validation', '--output_dir', str(tmp_path / 'out'), '--cache_dir', str(cache)])
    written = json.loads((tmp_path / 'out' / 'evaluation.json').read_text())['tiny']
    assert written['split'] == 'validation'
    model = timm.create_model(f'local-dir:{checkpoint}', pretrained=True).eval()
    for s in SIZE_FACTORS:
        split = with_validation[size_factor_name(s, 'validation')]
        x = torch.from_numpy(np.stack([np.asarray(im, dtype=np.float32) / 255 for im in split['image']]))[:, None]
        with torch.no_grad():
            prediction = model((x - 0.5) / 0.5).argmax(-1)
        correct = int((prediction == torch.tensor(split['label'])).sum())
        assert written['accuracy'][str(s)] == pytest.approx(correct / LIMIT, abs=1e-12), s


def test_evaluate_refuses_validation_from_test_only_data(tmp_path):
    with pytest.raises(ValueError, match='validation images are not available'):
        recipe.evaluate_models(['resnet18'], 'rescaled_fashion_mnist', data_dir=str(tmp_path), test_only=True,
                               split='validation', cache_dir=str(tmp_path))
    with pytest.raises(ValueError, match="split must be one of .* got 'train'"):
        recipe.evaluate_models(['resnet18'], 'rescaled_fashion_mnist', data_dir=str(tmp_path), split='train',
                               cache_dir=str(tmp_path))
