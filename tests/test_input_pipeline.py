"""The one input pipeline: channels, canvas, [0, 1], normalisation, shared by training, evaluation and the processor.

References are independent of the code under test: numpy's ``np.pad`` (zeros, ``'reflect'``)
for the placement with the centring rule ``offset = (canvas - n) // 2`` written out, PIL's
``convert('L')`` for RGB to grey, the rescaled dataset the builder stores, and the committed
checkpoint's per-image predictions on the ``test_s1p000`` split
(``results/rescaled_fashion_mnist_cpu/evaluation.json``, written by ``recipes/evaluate.py``
from the dataset, not through the image processor).
"""
from __future__ import annotations

import gzip
import hashlib
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from fashion_mnist import FASHION_DIR, needs_fashion
from PIL import Image
from recipe_modules import load_recipe

import gaussder_hf
from gaussder_hf.data import dataset_background, processor_settings
from gaussder_hf.data.sample import (
    DATA_DIR_ENV,
    FASHION_MNIST_SAMPLE_DIR,
    FASHION_MNIST_SAMPLE_MD5,
    default_data_source,
)
from gaussder_hf.data.sources import read_fashion_mnist
from gaussder_hf.image_processing import GaussDerResNetImageProcessor
from gaussder_hf.input_pipeline import InputPipeline, decode_image, image_channels, place_on_canvas, to_model_channels

ROOT = Path(__file__).resolve().parents[1]
CHECKPOINT = ROOT / 'checkpoints' / 'gaussderresnet10_fashionmnist'
EVALUATION = ROOT / 'results' / 'rescaled_fashion_mnist_cpu_final' / 'evaluation.json'
LABEL = 'final, 6 channels (training grid)'




def _rng_image(shape, seed=0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


# ---- placement --------------------------------------------------------------------------------

@pytest.mark.parametrize('n, canvas', [(28, 72), (5, 8), (32, 64), (7, 9)])
def test_black_and_mirror_placement_follow_the_centring_rule(n, canvas):
    image = _rng_image((2, n, n + 1))
    before, after = (canvas - n) // 2, canvas - n - (canvas - n) // 2
    before_w, after_w = (canvas - n - 1) // 2, canvas - n - 1 - (canvas - n - 1) // 2
    pads = ((0, 0), (before, after), (before_w, after_w))
    black = place_on_canvas(torch.from_numpy(image), canvas, 'black').numpy()
    np.testing.assert_array_equal(black, np.pad(image, pads))
    if n > 1:
        mirror = place_on_canvas(torch.from_numpy(image), canvas, 'mirror').numpy()
        np.testing.assert_array_equal(mirror, np.pad(image, pads, mode='reflect'))


def test_an_image_larger_than_the_canvas_is_never_cropped():
    image = torch.from_numpy(_rng_image((1, 80, 50)))
    for background in ('black', 'mirror'):
        out = place_on_canvas(image, 72, background)
        assert out.shape == (1, 80, 72)  # rows: the canvas grew to 80; columns: centred on 72
        torch.testing.assert_close(out[:, :, 11:61], image)
    processor = GaussDerResNetImageProcessor(canvas_size={'height': 72, 'width': 72})
    big = Image.fromarray(_rng_image((90, 100)))
    pixels = processor(big, return_tensors='pt')['pixel_values']
    assert pixels.shape == (1, 1, 90, 100)
    torch.testing.assert_close(pixels[0, 0], (torch.from_numpy(np.array(big)).float() / 255 - 0.5) / 0.5)


# ---- one rule for grey and RGB -------------------------------------------------------------

def test_grey_or_rgb_is_decided_by_one_rule_and_alpha_is_dropped():
    rgb = _rng_image((6, 5, 3), seed=1)
    rgba = np.concatenate([rgb, _rng_image((6, 5, 1), seed=2)], axis=-1)
    grey = _rng_image((6, 5), seed=3)
    grey_alpha = np.stack([grey, _rng_image((6, 5), seed=4)], axis=-1)
    cases = [
        (Image.fromarray(grey), 1), (Image.fromarray(grey_alpha, 'LA'), 1), (Image.fromarray(rgb), 3),
        (Image.fromarray(rgba, 'RGBA'), 3), (Image.fromarray(rgb).convert('P'), 3),
        (grey, 1), (grey[..., None], 1), (grey_alpha, 1), (rgb, 3), (rgba, 3),
        (torch.from_numpy(grey)[None], 1), (torch.from_numpy(rgba).permute(2, 0, 1), 3),
    ]
    for image, channels in cases:
        assert image_channels(image) == channels, image
        decoded = decode_image(image)
        assert decoded.shape == (channels, 6, 5), (image, decoded.shape)
    np.testing.assert_array_equal(decode_image(rgba).numpy(), rgb.transpose(2, 0, 1))
    np.testing.assert_array_equal(decode_image(Image.fromarray(grey_alpha, 'LA')).numpy()[0], grey)
    with pytest.raises(ValueError, match='channel axis'):
        image_channels(np.zeros((6, 5, 7), dtype=np.uint8))
    with pytest.raises(TypeError, match='PIL image'):
        image_channels([[0, 1]])


def test_16_bit_and_bilevel_images_are_scaled_to_the_unit_range():
    values = (np.arange(20).reshape(4, 5) * 3000).astype(np.uint16)
    pipeline = InputPipeline(1, (0.0,), (1.0,))
    for image in (Image.fromarray(values), Image.fromarray(values.astype(np.int32)), values):
        np.testing.assert_allclose(pipeline(image)[0].numpy(), values / 65535, rtol=0, atol=1e-7)
    np.testing.assert_array_equal(pipeline(Image.fromarray(np.eye(3, dtype=bool)))[0].numpy(), np.eye(3))
    with pytest.raises(ValueError, match=r'\[0, 1\]'):
        pipeline(np.full((3, 3), 2.0, dtype=np.float32))


def test_rgb_to_grey_is_pils_luma_bit_for_bit():
    rgb = _rng_image((40, 30, 3), seed=5)
    expected = np.asarray(Image.fromarray(rgb).convert('L'))
    got = to_model_channels(decode_image(Image.fromarray(rgb)), 1)
    np.testing.assert_array_equal(got[0].numpy(), expected)
    grey = to_model_channels(decode_image(expected), 3)
    assert grey.shape == (3, 40, 30) and all(torch.equal(grey[c], grey[0]) for c in range(3))


def test_training_evaluation_and_the_processor_see_the_same_tensors():
    from gaussder_hf.analysis import evaluation_transform  # what recipes/evaluate.py and train.py evaluate with

    train_recipe = load_recipe('train')
    cfg = train_recipe.TrainConfig(hflip=False)
    for mode, channels, mean, std in (('L', 1, (0.5,), (0.5,)), ('RGB', 3, (0.4, 0.5, 0.6), (0.2, 0.25, 0.3))):
        images = [Image.fromarray(_rng_image((9, 11, 3), seed=s)).convert(mode) for s in range(3)]
        train = train_recipe.image_transform(cfg, channels, mean, std, train=True)
        evaluate = evaluation_transform(InputPipeline(channels, mean, std))
        processor = GaussDerResNetImageProcessor(num_channels=channels, image_mean=list(mean), image_std=list(std))
        by_processor = processor(images, return_tensors='pt')['pixel_values']
        by_evaluation = torch.stack(evaluate({'image': images, 'label': [0, 1, 2]})['pixel_values'])
        by_training = torch.stack([train(image) for image in images])
        reference = (torch.from_numpy(np.stack([np.array(i) for i in images])).float() / 255)
        reference = reference[:, None] if channels == 1 else reference.permute(0, 3, 1, 2)
        reference = (reference - torch.tensor(mean).view(-1, 1, 1)) / torch.tensor(std).view(-1, 1, 1)
        for got in (by_processor, by_evaluation, by_training):
            torch.testing.assert_close(got, reference, rtol=0, atol=1e-6)
    # A grey image for an RGB model and an RGB one for a grey model: the same rule everywhere.
    rgb = Image.fromarray(_rng_image((9, 11, 3), seed=7))
    grey_processor = GaussDerResNetImageProcessor(num_channels=1)
    torch.testing.assert_close(grey_processor(rgb, return_tensors='pt')['pixel_values'][0],
                               InputPipeline(1, (0.5,), (0.5,))(rgb.convert('L')))


# ---- the processor's canvas and background --------------------------------------------------

def test_background_follows_the_training_data_and_is_saved(tmp_path):
    assert (dataset_background('fashionmnist'), dataset_background('cifar10'), dataset_background('stl10')) == (
        'black', 'mirror', 'mirror')
    assert GaussDerResNetImageProcessor.from_preset('gaussderresnet18_cifar10').background == 'mirror'
    # What recipes/train.py saves with a trained network: the test split's canvas at s = 1.
    assert processor_settings('rescaled_fashion_mnist') == {'canvas_size': {'height': 72, 'width': 72},
                                                            'background': 'black'}
    assert processor_settings('rescaled_stl10') == {'canvas_size': {'height': 192, 'width': 192},
                                                    'background': 'mirror'}
    assert processor_settings('my/exported_folder') == {}
    committed = json.loads((CHECKPOINT / 'preprocessor_config.json').read_text())
    assert committed['background'] == 'black' and committed['canvas_size'] == {'height': 72, 'width': 72}
    for preset, background in (('gaussderresnet10_fashionmnist', 'black'), ('gaussderresnet18_cifar10', 'mirror')):
        model = timm.create_model(preset, channels=[4, 4, 4], initial_scales=1.0)
        folder = gaussder_hf.save_for_hub(model, tmp_path / preset, canvas_size={'height': 40, 'width': 40})
        saved = json.loads((folder / 'preprocessor_config.json').read_text())
        assert saved['background'] == background
        from transformers import AutoImageProcessor
        assert AutoImageProcessor.from_pretrained(folder).background == background
    with pytest.raises(ValueError, match="background must be one of .*'grey'"):
        GaussDerResNetImageProcessor(background='grey')
    with pytest.raises(ValueError, match='do_resize=True'):
        GaussDerResNetImageProcessor(do_resize=True)


def _sample(limit: int):
    return read_fashion_mnist(FASHION_MNIST_SAMPLE_DIR, 'test', limit)


def test_processor_output_is_the_rescaled_test_split_at_size_factor_1(tmp_path):
    from datasets import load_dataset

    images, labels = _sample(200)
    processor = GaussDerResNetImageProcessor.from_pretrained(CHECKPOINT)
    pixels = processor([Image.fromarray(image) for image in images], return_tensors='pt')['pixel_values']
    split = load_dataset('rescaled_fashion_mnist', data_dir=str(FASHION_MNIST_SAMPLE_DIR), test_only=True,
                         max_examples=200, cache_dir=str(tmp_path))['test_s1p000']
    stored = torch.from_numpy(np.stack([np.asarray(image) for image in split['image']])).float()
    assert split['label'] == labels.tolist()
    as_uint8 = ((pixels[:, 0] * 0.5 + 0.5) * 255).round()  # undo the normalisation (mean = std = 0.5)
    torch.testing.assert_close(pixels[:, 0], (stored / 255 - 0.5) / 0.5, rtol=0, atol=1e-6)
    torch.testing.assert_close(as_uint8, stored, rtol=0, atol=0)
    padded = np.pad(images, ((0, 0), (22, 22), (22, 22)))  # (72 - 28) // 2 = 22 on each side, black
    torch.testing.assert_close(as_uint8, torch.from_numpy(padded).float(), rtol=0, atol=0)


# ---- the committed checkpoint through pipeline('image-classification') on native 28x28 images --

def _pipeline_accuracy(images, labels):
    from transformers import pipeline

    classifier = pipeline('image-classification', model=str(CHECKPOINT))
    outputs = classifier([Image.fromarray(image) for image in images], top_k=1, batch_size=50)
    label2id = classifier.model.config.label2id
    predicted = np.array([label2id[output[0]['label']] for output in outputs])
    committed = np.array(json.loads(EVALUATION.read_text())[LABEL]['predictions']['1.0'][:len(images)])
    return predicted, committed, float(np.mean(predicted == labels)), float(np.mean(committed == labels))


def test_pipeline_on_native_images_scores_what_the_rescaled_split_scores():
    images, labels = _sample(100)  # the embedded real test images: no download, no Debian package
    predicted, committed, accuracy, split_accuracy = _pipeline_accuracy(images, labels)
    assert abs(accuracy - split_accuracy) <= 0.01, (accuracy, split_accuracy)
    assert accuracy >= 0.8  # a tiled or cropped input scored 62% on these 100
    assert np.mean(predicted == committed) >= 0.99


@pytest.mark.slow
@needs_fashion
def test_pipeline_on_1000_native_images_scores_what_the_rescaled_split_scores():
    images, labels = read_fashion_mnist(FASHION_DIR, 'test', 1000)
    predicted, committed, accuracy, split_accuracy = _pipeline_accuracy(images, labels)
    assert abs(accuracy - split_accuracy) <= 0.01, (accuracy, split_accuracy)
    assert np.mean(predicted == committed) >= 0.99


# ---- the data a fresh install runs on -------------------------------------------------------

@needs_fashion
def test_embedded_sample_is_the_start_of_the_official_test_set():
    images, labels = _sample(None)
    official_images, official_labels = read_fashion_mnist(FASHION_DIR, 'test', len(images))
    assert len(images) == 500
    np.testing.assert_array_equal(images, official_images)
    np.testing.assert_array_equal(labels, official_labels)
    assert 'Zalando SE' in (FASHION_MNIST_SAMPLE_DIR / 'LICENSE').read_text()


@needs_fashion
def test_embedded_sample_md5_is_that_of_the_official_files_first_500_records(tmp_path):
    # The builder checks the sample against FASHION_MNIST_SAMPLE_MD5; recompute it from the
    # official files: an IDX header claiming 500 items, then their first 500 records.
    for name, record in (('t10k-images-idx3-ubyte.gz', 28 * 28), ('t10k-labels-idx1-ubyte.gz', 1)):
        with gzip.open(Path(FASHION_DIR) / name) as f:
            content = f.read()
        header_size = 4 + 4 * content[3]
        header = content[:4] + (500).to_bytes(4, 'big') + content[8:header_size]
        body = content[header_size:header_size + 500 * record]
        assert FASHION_MNIST_SAMPLE_MD5[name] == hashlib.md5(header + body).hexdigest()
    # A changed sample (one label relabelled) is refused like a changed official file.
    copy = tmp_path / 'sample'
    shutil.copytree(FASHION_MNIST_SAMPLE_DIR, copy)
    labels = bytearray(gzip.decompress((copy / 't10k-labels-idx1-ubyte.gz').read_bytes()))
    labels[8] = (labels[8] + 1) % 10
    (copy / 't10k-labels-idx1-ubyte.gz').write_bytes(gzip.compress(bytes(labels)))
    from datasets import load_dataset

    with pytest.raises(ValueError, match='md5'):
        load_dataset('rescaled_fashion_mnist', data_dir=str(copy), test_only=True, cache_dir=str(tmp_path / 'c'))


def test_default_data_source_is_the_full_data_if_present_else_the_sample(tmp_path, monkeypatch):
    monkeypatch.setenv(DATA_DIR_ENV, str(tmp_path))
    source = default_data_source('rescaled_fashion_mnist')
    assert source.is_sample and source.test_only and str(tmp_path) in source.description
    for name in ('train-images-idx3-ubyte.gz', 'train-labels-idx1-ubyte.gz', 't10k-images-idx3-ubyte.gz',
                 't10k-labels-idx1-ubyte.gz'):
        (tmp_path / name).write_bytes(b'')
    source = default_data_source('rescaled_fashion_mnist')
    assert source.data_dir == str(tmp_path) and not source.test_only
    assert default_data_source('rescaled_cifar10').data_dir is None  # downloaded


def test_downloads_have_their_http_client_declared():
    import fsspec
    import tomllib

    fsspec.get_filesystem_class('http')  # ImportError without aiohttp: what datasets downloads through
    dependencies = tomllib.loads((ROOT / 'pyproject.toml').read_text())['project']['dependencies']
    assert any(re.match(r'aiohttp\b', dependency) for dependency in dependencies)


def _readme_main_job() -> list[str]:
    block = re.search(r'```bash\n(.*?)```', (ROOT / 'README.md').read_text(), re.S).group(1)
    return shlex.split(block.splitlines()[2])


def test_readme_main_job_runs_on_the_embedded_sample_without_the_full_data(tmp_path):
    argv = _readme_main_job()
    assert argv[:2] == ['python', 'recipes/evaluate.py'] and '--data_dir' not in argv
    argv[argv.index('--max_examples') + 1] = '6'  # the README's line with fewer images, to stay fast
    env = dict(os.environ, **{DATA_DIR_ENV: str(tmp_path / 'empty'), 'HF_DATASETS_CACHE': str(tmp_path / 'cache'),
                              'PYTHONPATH': str(ROOT) + os.pathsep + os.environ.get('PYTHONPATH', '')})
    result = subprocess.run([sys.executable] + argv[1:] + ['--out_dir', str(tmp_path / 'out')], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert 'real Fashion-MNIST test images that ship with gaussder_hf' in result.stdout
    assert 'apt-get install dataset-fashion-mnist' in result.stdout
    rows = re.findall(r'^\s+(\d\.\d{3}) \|\s+(\d+\.\d\d)%$', result.stdout, re.M)
    assert [row[0] for row in rows] == ['0.500', '0.595', '0.707', '0.841', '1.000', '1.189', '1.414', '1.682',
                                        '2.000']
    evaluation = json.loads((tmp_path / 'out' / 'evaluation.json').read_text())
    assert next(iter(evaluation.values()))['num_examples']['1.0'] == 6
    assert (tmp_path / 'out' / 'scale_generalisation.png').stat().st_size > 0
