"""The GPU benchmark scripts, exercised on the CPU: their logic, their verdicts, their refusals.

``benchmarks/device_agreement.py`` and ``benchmarks/max_batch.py`` are meant for a GPU; what can
be checked without one is checked here, so that time on a GPU is not spent on their bugs.
"""
from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

BENCHMARKS = Path(__file__).resolve().parents[1] / 'benchmarks'


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f'benchmarks_{name}', BENCHMARKS / f'{name}.py')
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope='module')
def max_batch():
    return _load('max_batch')


@pytest.fixture(scope='module')
def device_agreement():
    return _load('device_agreement')


@pytest.mark.parametrize('threshold', [0, 1, 5, 7, 8, 9, 63, 64, 65, 1000, 4095, 4096, 10_000])
def test_largest_fitting_finds_the_threshold_of_a_monotone_predicate(max_batch, threshold):
    calls = []

    def fits(batch):
        calls.append(batch)
        return batch <= threshold

    found = max_batch.largest_fitting(fits, start=8, limit=4096)
    assert found == min(threshold, 4096)
    # Doubling then bisection: a few dozen trials at most, never a batch above the limit.
    assert max(calls) <= 4096
    assert len(calls) <= 2 * 13 + 2


def test_largest_fitting_rejects_a_bad_range(max_batch):
    with pytest.raises(ValueError, match='start=0'):
        max_batch.largest_fitting(lambda b: True, start=0, limit=8)
    with pytest.raises(ValueError, match='limit=4'):
        max_batch.largest_fitting(lambda b: True, start=8, limit=4)


def test_max_batch_refuses_the_cpu_naming_the_device(max_batch):
    with pytest.raises(SystemExit, match='--device cpu'):
        max_batch.main(['--device', 'cpu'])


def test_relative_error_against_a_hand_computed_value(device_agreement):
    reference = torch.tensor([3.0, 4.0])  # norm 5
    assert device_agreement.relative_error(torch.tensor([3.0, 4.5]), reference) == pytest.approx(0.5 / 5)
    assert device_agreement.relative_error(torch.zeros(2), torch.zeros(2)) == 0.0
    assert device_agreement.relative_error(torch.ones(2), torch.zeros(2)) == float('inf')


_SMALL = ['--device', 'cpu', '--sigmas', '0.7', '6', '--layer-size', '20', '--presets',
          'gaussderresnet18_fashionmnist', 'dsgaussderresnet18_stl10', '--scales', '1', '--size', '20']


def test_device_agreement_dry_run_is_exact_on_one_device(device_agreement, capsys):
    # The CPU against itself, same code, same precision: every error must be exactly 0.
    status = device_agreement.main(_SMALL + ['--precisions', 'fp32', 'bf16'])
    out = capsys.readouterr().out
    assert status == 0, out
    rows = [line for line in out.splitlines() if ' PASS' in line or ' FAIL' in line]
    # 2 layer classes x 2 sigmas + 2 presets x (eval, train).
    assert len(rows) == 8
    assert all(line.count('0.0e+00 PASS') == 2 for line in rows), out
    assert '16 of 16 comparisons within tolerance' in out


def test_device_agreement_detects_float32_rounding_against_float64(device_agreement, capsys):
    # float32 differs from float64 by 1e-7 .. 1e-3 relative: a 1e-12 tolerance must fail every row,
    # and the error must equal the case's cond (CPU float32 against float64, computed separately).
    status = device_agreement.main(_SMALL + ['--precisions', 'fp32', '--tol-fp32', '1e-12', '--no-presets',
                                             '--reference', 'float64'])
    out = capsys.readouterr().out
    assert status == 1
    rows = [line.split() for line in out.splitlines() if line.endswith(' s)') and ' FAIL' in line]
    assert len(rows) == 4 and '4 FAILED' in out
    for row in rows:
        cond, error = float(row[3]), float(row[5])
        assert 1e-8 < error == cond, row


def test_device_agreement_names_a_missing_cuda_device(device_agreement):
    if torch.cuda.is_available():
        pytest.skip('this machine has a CUDA device')
    with pytest.raises(SystemExit, match='--device cuda: no CUDA device'):
        device_agreement.main(['--device', 'cuda'])
