"""The accuracy tables in README.md are the committed evaluations, value for value.

Each table that starts with ``| size factor |`` names its models by the labels under which
``recipes/evaluate.py`` stored them in a committed ``results/*/evaluation.json``; every cell must
be that evaluation's accuracy at that size factor, rounded to one decimal of a percent.
"""
from __future__ import annotations

import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _readme_tables() -> list[list[list[str]]]:
    tables, current = [], None
    for line in (ROOT / 'README.md').read_text().splitlines():
        if line.startswith('| size factor |'):
            current = []
            tables.append(current)
        if current is not None and line.startswith('|'):
            current.append([cell.strip() for cell in line.strip('|').split('|')])
        elif current is not None:
            current = None
    return tables


def _committed_evaluations() -> dict[str, dict]:
    results = {}
    for path in sorted((ROOT / 'results').glob('*/evaluation.json')):
        for label, result in json.loads(path.read_text()).items():
            results.setdefault(label, result)
    return results


def test_readme_accuracy_tables_equal_the_committed_evaluations():
    tables, evaluations = _readme_tables(), _committed_evaluations()
    assert len(tables) >= 2  # the CPU result and the scale-augmentation comparison
    for header, _, *rows in tables:
        assert [row[0] for row in rows] == ['0.500', '0.595', '0.707', '0.841', '1.000', '1.189', '1.414',
                                            '1.682', '2.000']
        for column, label in enumerate(header[1:], start=1):
            assert label in evaluations, f'README column {label!r} is no model of a committed evaluation.json'
            accuracy = evaluations[label]['accuracy']
            by_size = {f'{float(s):.3f}': value for s, value in accuracy.items()}
            for row in rows:
                assert row[column] == f'{100 * by_size[row[0]]:.1f}%', (label, row[0])


def test_whole_test_split_figures_agree_with_the_first_1000_and_the_readme():
    final = ROOT / 'results' / 'rescaled_fashion_mnist_cpu_final'
    whole = json.loads((final / 'full_test.json').read_text())['size_factors']
    first = json.loads((final / 'evaluation.json').read_text())['final, 6 channels (training grid)']
    readme = (ROOT / 'README.md').read_text()
    for s, entry in whole.items():
        assert entry['count'] == 10000
        # recipes/evaluate.py's accuracy on the first 1000 images is full_test.py's on the same images
        assert entry['accuracy_first_1000'] == first['accuracy'][s]
        # the whole split is the first 1000 and the other 9000, weighted
        assert abs(entry['accuracy'] - (entry['accuracy_first_1000'] + 9 * entry['accuracy_other_9000']) / 10) < 1e-12
    half, one = whole['0.5']['accuracy'], whole['1.0']['accuracy']
    assert (f'{100 * half:.1f}% at s = 1/2 against {100 * one:.1f}% at s = 1,\n  {100 * (one - half):.1f} points'
            in readme)
    # the ends of [1/sqrt2, 2] on whole splits, and the largest gap the README states for them
    low, high = whole[str(2 ** -0.5)]['accuracy'], whole['2.0']['accuracy']
    gap = max(one - low, one - high)
    assert (f'{100 * low:.1f}% at s = 1/sqrt2 and {100 * high:.1f}% at s = 2 against {100 * one:.1f}% at s = 1,\n'
            f'  within {100 * gap:.1f} points' in readme)
    assert gap < 0.03  # the paper's shape: within 3 points of s = 1 over [1/sqrt2, 2]
    # the committed checkpoint's card states the same whole-split figures
    card = (ROOT / 'checkpoints' / 'gaussderresnet10_fashionmnist' / 'README.md').read_text()
    stated = card[card.index('on all 10,000 test images'):]
    for s, entry in whole.items():
        assert f's = {float(s):.3g}: {100 * entry["accuracy"]:.1f}%' in stated, s


def test_two_epoch_stage2_whole_split_figures_agree_with_its_first_1000_and_the_readme():
    folder = ROOT / 'results' / 'rescaled_fashion_mnist_cpu_stage2_two_epochs'
    whole = json.loads((folder / 'full_test.json').read_text())['size_factors']
    first = json.loads((folder / 'evaluation.json').read_text())['stage 2 for two epochs (6 channels)']
    one_epoch = json.loads((ROOT / 'results' / 'rescaled_fashion_mnist_cpu_final' / 'full_test.json').read_text())
    readme = ' '.join((ROOT / 'README.md').read_text().split())  # the figures wrap across lines
    for s, entry in whole.items():
        assert entry['count'] == 10000
        assert entry['accuracy_first_1000'] == first['accuracy'][s]
        assert abs(entry['accuracy'] - (entry['accuracy_first_1000'] + 9 * entry['accuracy_other_9000']) / 10) < 1e-12
    half, one = whole['0.5']['accuracy'], whole['1.0']['accuracy']
    earlier = one_epoch['size_factors']['1.0']['accuracy'] - one_epoch['size_factors']['0.5']['accuracy']
    assert (f'{100 * half:.1f}% at s = 1/2 against {100 * one:.1f}% at s = 1, {100 * (one - half):.1f} points '
            f'(one epoch: {100 * earlier:.1f})' in readme)
    low, high = whole[str(2 ** -0.5)]['accuracy'], whole['2.0']['accuracy']
    assert (f'{100 * low:.1f}% at s = 1/sqrt2 and {100 * high:.1f}% at s = 2, within '
            f'{100 * max(one - low, one - high):.1f} points' in readme)
    # the change the second epoch made on whole splits, as the README states it
    changes = {s: whole[s]['accuracy'] - one_epoch['size_factors'][s]['accuracy'] for s in whole}
    rest = [changes[s] for s in whole if s != '0.5']
    assert (f'moved s = 1/2 by {100 * changes["0.5"]:+.1f} points on the whole split and the rest by '
            f'{100 * min(rest):.1f} to {100 * max(rest):+.1f}' in readme)
    winners = whole['0.5']['winners']
    assert f'`sigma0 = 1/sqrt2` still wins for {100 * winners[2] / 10000:.0f}% of the images' in readme


def test_continued_stage2_whole_split_figures_agree_with_its_first_1000_and_the_readme():
    folder = ROOT / 'results' / 'rescaled_fashion_mnist_cpu_stage2_continued'
    whole = json.loads((folder / 'full_test.json').read_text())['size_factors']
    first = json.loads((folder / 'evaluation.json').read_text())['stage 2 continued, four epochs (6 channels)']
    readme = ' '.join((ROOT / 'README.md').read_text().split())  # the figures wrap across lines
    assert sorted(whole, key=float) == ['0.5', str(2 ** -0.5), '1.0', '2.0']
    for s, entry in whole.items():
        assert entry['count'] == 10000
        assert entry['accuracy_first_1000'] == first['accuracy'][s]
        assert abs(entry['accuracy'] - (entry['accuracy_first_1000'] + 9 * entry['accuracy_other_9000']) / 10) < 1e-12
    half, one, two = (whole[s]['accuracy'] for s in ('0.5', '1.0', '2.0'))
    assert f'{100 * half:.1f}% at s = 1/2 against {100 * one:.1f}% at s = 1, {100 * (one - half):.1f} points' in readme
    assert f'{100 * two:.1f}% at s = 2, {100 * (one - two):.1f} points below s = 1' in readme
    low = whole[str(2 ** -0.5)]['accuracy']
    assert (f'On the whole split `s = 1/sqrt2` is {100 * low:.1f}% (first 1000 images: 89.6%), '
            f'{100 * (one - low):.1f} points' in readme)
    winners = whole['0.5']['winners']
    assert f'`sigma0 = 1/sqrt2` wins for {100 * winners[2] / 10000:.0f}% of the images' in readme
