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
