"""The committed checkpoint loads both ways and reproduces its committed results on real data.

``checkpoints/gaussderresnet10_fashionmnist`` and ``results/rescaled_fashion_mnist_cpu_final`` are
written by ``results/rescaled_fashion_mnist_cpu_final/reproduce.sh``; the earlier experiment's
two-stage network, ``results/rescaled_fashion_mnist_cpu/two_stage_model``, and the committed
network's stage 2 continued, ``results/rescaled_fashion_mnist_cpu_stage2_continued/model``, by their
folders' ``reproduce.sh``. Here the weights are run again on the first images of the s = 1 and s = 2 test
splits of rescaled Fashion-MNIST (built from Debian's files) and compared with the per-image
predictions and accuracies that the evaluations committed beside them.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from datasets import load_dataset
from fashion_mnist import FASHION_DIR, needs_fashion
from transformers import AutoModelForImageClassification

import gaussder_hf  # noqa: F401  (registers the models and datasets)
from gaussder_hf.rescaling import size_factor_name

ROOT = Path(__file__).resolve().parents[1]
CHECKPOINT = ROOT / 'checkpoints' / 'gaussderresnet10_fashionmnist'
EVALUATION = ROOT / 'results' / 'rescaled_fashion_mnist_cpu_final' / 'evaluation.json'
LABEL = 'final, 6 channels (training grid)'
# the earlier experiment's network (training split only, grid 1/2 ... 2 sqrt2) and its evaluation
EARLIER = (ROOT / 'results' / 'rescaled_fashion_mnist_cpu' / 'two_stage_model',
           ROOT / 'results' / 'rescaled_fashion_mnist_cpu' / 'evaluation.json', 'multi-scale (6 channels, two-stage)')
# the committed network's stage 2 continued for three more epochs, and its evaluation
CONTINUED = (ROOT / 'results' / 'rescaled_fashion_mnist_cpu_stage2_continued' / 'model',
             ROOT / 'results' / 'rescaled_fashion_mnist_cpu_stage2_continued' / 'evaluation.json',
             'stage 2 continued, four epochs (6 channels)')
SUBSET = 200


@pytest.fixture(scope='module')
def committed():
    return json.loads(EVALUATION.read_text())[LABEL]


@pytest.fixture(scope='module')
def model():
    return timm.create_model(f'local-dir:{CHECKPOINT}', pretrained=True).eval()


def test_the_checkpoint_is_the_evaluated_network():
    evaluated = json.loads(EVALUATION.read_text())
    config = json.loads((CHECKPOINT / 'config.json').read_text())
    assert config['initial_scales'] == pytest.approx(evaluated[LABEL]['initial_scales'], rel=1e-15)
    # the evaluation grid adds the large boundary channel 2 sqrt2 to the same weights (App. A.4, A.5)
    wider = evaluated['final, 7 channels (evaluation grid)']['initial_scales']
    assert wider == pytest.approx(config['initial_scales'] + [2 * math.sqrt(2)], rel=1e-15)


def test_the_checkpoint_folder_is_what_save_for_hub_writes():
    names = {p.name for p in CHECKPOINT.iterdir()}
    assert {'model.safetensors', 'config.json', 'README.md'} <= names
    assert not any(name.endswith(('.bin', '.pkl', '.pt', '.pth')) for name in names), names


def test_timm_and_transformers_load_the_same_network(model):
    hf = AutoModelForImageClassification.from_pretrained(CHECKPOINT).eval()
    assert model.initial_scales == tuple(hf.config.initial_scales)
    assert len(model.initial_scales) == 6
    x = torch.rand(2, 1, 40, 40)
    with torch.no_grad():
        torch.testing.assert_close(hf(pixel_values=x).logits, model(x), rtol=1e-5, atol=1e-5)


def test_the_model_card_carries_the_committed_accuracies(committed):
    card = (CHECKPOINT / 'README.md').read_text()
    for s in ('0.5', '1.0', '2.0'):
        assert f'{100 * committed["accuracy"][s]:.2f}%' in card, s


@pytest.fixture(scope='module')
def test_images(tmp_path_factory):
    return load_dataset('rescaled_fashion_mnist', data_dir=FASHION_DIR, max_examples=SUBSET,
                        cache_dir=str(tmp_path_factory.mktemp('cache')))


@needs_fashion
# s = 2 repeats the check on another split (15 s): kept for `pytest -m slow`.
@pytest.mark.parametrize('size_factor', [1.0, pytest.param(2.0, marks=pytest.mark.slow)])
def test_committed_weights_reproduce_committed_predictions(size_factor, model, committed, test_images):
    _check_predictions(model, committed, test_images, size_factor)


@needs_fashion
@pytest.mark.slow
@pytest.mark.parametrize('network', [EARLIER, CONTINUED], ids=['earlier two-stage', 'stage 2 continued'])
def test_the_other_committed_networks_reproduce_their_committed_predictions(network, test_images):
    folder, evaluation, label = network
    model = timm.create_model(f'local-dir:{folder}', pretrained=True).eval()
    _check_predictions(model, json.loads(evaluation.read_text())[label], test_images, 1.0)


def _check_predictions(model, committed, data, size_factor):
    split = data[size_factor_name(size_factor)]
    mean, std = model.pretrained_cfg['mean'][0], model.pretrained_cfg['std'][0]
    x = torch.from_numpy(np.stack([np.asarray(image, dtype=np.float32) / 255 for image in split['image']]))
    x = ((x - mean) / std)[:, None]
    labels = torch.tensor(split['label'])
    with torch.no_grad():
        predictions = torch.cat([model(chunk).argmax(-1) for chunk in x.split(50)])

    expected = torch.tensor(committed['predictions'][str(size_factor)][:SUBSET])
    # Another BLAS may flip an image whose top two logits nearly tie; no more than one in 200.
    assert (predictions == expected).sum().item() >= SUBSET - 1
    accuracy = (predictions == labels).float().mean().item()
    committed_subset = (expected == labels).float().mean().item()
    assert abs(accuracy - committed_subset) <= 1 / SUBSET + 1e-9
    # The subset is a sample of the committed 1000: within 3 standard errors of its accuracy.
    full = committed['accuracy'][str(size_factor)]
    assert abs(accuracy - full) <= 3 * math.sqrt(full * (1 - full) / SUBSET) + 1 / SUBSET
