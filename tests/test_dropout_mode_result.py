"""The committed comparison of the scale-channel dropout modes, recomputed from its predictions.

results/dropout_mode_cpu/ holds both models' predictions on the rescaled validation images; the
counts and p-values in comparison.json, and the default mode of the presets, must follow from them.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from fashion_mnist import FASHION_DIR, needs_fashion
from scipy.stats import binomtest

import gaussder_hf
from gaussder_hf.data.sources import read_fashion_mnist

RESULT = Path(__file__).resolve().parents[1] / 'results' / 'dropout_mode_cpu'


@pytest.fixture(scope='module')
def committed():
    return json.loads((RESULT / 'evaluation.json').read_text()), json.loads((RESULT / 'comparison.json').read_text())


@needs_fashion
def test_the_comparison_follows_from_the_predictions(committed):
    evaluation, comparison = committed
    _, labels = read_fashion_mnist(FASHION_DIR, 'train')
    validation_labels = labels[50_000:]  # the last 10,000 training images are the validation split
    a, b = evaluation[comparison['a']], evaluation[comparison['b']]
    assert a['split'] == b['split'] == 'validation'
    pooled_a, pooled_b = [], []
    for s, row in comparison['rows'].items():
        if s == 'all':
            continue
        truth = validation_labels[:row['n']]
        right_a, right_b = np.asarray(a['predictions'][s]) == truth, np.asarray(b['predictions'][s]) == truth
        assert right_a.mean() == pytest.approx(a['accuracy'][s]) and right_b.mean() == pytest.approx(b['accuracy'][s])
        only_a, only_b = int((right_a & ~right_b).sum()), int((right_b & ~right_a).sum())
        assert (row['only_a'], row['only_b']) == (only_a, only_b), s
        assert row['p_value'] == pytest.approx(binomtest(only_a, only_a + only_b).pvalue), s
        pooled_a.append(right_a)
        pooled_b.append(right_b)
    pooled_a, pooled_b = np.concatenate(pooled_a), np.concatenate(pooled_b)
    assert comparison['rows']['all']['n'] == len(pooled_a) == 9000
    assert comparison['rows']['all']['accuracy_a'] == pytest.approx(pooled_a.mean())


def test_the_presets_default_is_the_mode_that_generalised_better(committed):
    evaluation, comparison = committed
    pooled = comparison['rows']['all']
    better = comparison['a'] if pooled['accuracy_a'] > pooled['accuracy_b'] else comparison['b']
    assert pooled['p_value'] < 0.05  # a difference the test supports, not a coin toss
    mode = better.split()[-1]  # labels 'dropout score' / 'dropout channel'
    assert {preset['scale_dropout_mode'] for preset in gaussder_hf.PRESETS.values()} == {mode}
