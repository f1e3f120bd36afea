"""Paired comparison of the two scale-channel dropout modes on the rescaled validation images.

Reads evaluation.json (written by ``recipes/evaluate.py --split validation --save_predictions``),
scores every prediction against the validation labels read from the official files, and writes
comparison.json: per size factor the two accuracies, the images only one of them gets right, and
the exact McNemar p-value (a two-sided binomial test on those discordant images); the same pooled
over all nine size factors. Prints the table.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from scipy.stats import binomtest

from gaussder_hf.data import builder_for

HERE = Path(__file__).parent
DATA_DIR = '/usr/share/datasets/fashion-mnist'
A, B = 'dropout score', 'dropout channel'


def main() -> None:
    evaluation = json.loads((HERE / 'evaluation.json').read_text())
    for label in (A, B):
        if evaluation[label].get('split') != 'validation':
            raise ValueError(f'{label!r} in evaluation.json was not evaluated on the validation images')
    builder = builder_for('rescaled_fashion_mnist', data_dir=DATA_DIR)
    _, labels = builder.read_split(Path(DATA_DIR), 'validation')
    rows, right_a, right_b = {}, [], []
    for s in evaluation[A]['accuracy']:
        predicted_a = np.asarray(evaluation[A]['predictions'][s])
        predicted_b = np.asarray(evaluation[B]['predictions'][s])
        truth = labels[:len(predicted_a)]
        a, b = predicted_a == truth, predicted_b == truth
        if not np.allclose([a.mean(), b.mean()], [evaluation[A]['accuracy'][s], evaluation[B]['accuracy'][s]]):
            raise ValueError(f'the saved predictions at size factor {s} do not give the saved accuracies')
        right_a.append(a)
        right_b.append(b)
        rows[s] = _paired(a, b)
    rows['all'] = _paired(np.concatenate(right_a), np.concatenate(right_b))
    (HERE / 'comparison.json').write_text(json.dumps({'a': A, 'b': B, 'rows': rows}, indent=2))
    print(f'{"size factor":>11} | {A:>15} | {B:>15} | only {A.split()[-1]} | only {B.split()[-1]} | McNemar p')
    for s, row in rows.items():
        name = s if s == 'all' else f'{float(s):.3f}'
        print(f'{name:>11} | {100 * row["accuracy_a"]:14.2f}% | {100 * row["accuracy_b"]:14.2f}% | '
              f'{row["only_a"]:10d} | {row["only_b"]:12d} | {row["p_value"]:.3g}')


def _paired(a: np.ndarray, b: np.ndarray) -> dict:
    only_a, only_b = int((a & ~b).sum()), int((b & ~a).sum())
    p = binomtest(only_a, only_a + only_b, 0.5).pvalue if only_a + only_b else 1.0
    return {'n': len(a), 'accuracy_a': float(a.mean()), 'accuracy_b': float(b.mean()), 'only_a': only_a,
            'only_b': only_b, 'p_value': float(p)}


if __name__ == '__main__':
    main()
