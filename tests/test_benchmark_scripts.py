"""The GPU benchmark scripts, exercised on the CPU: their logic, their verdicts, their refusals.

``benchmarks/device_agreement.py`` and ``benchmarks/max_batch.py`` are meant for a GPU; what can
be checked without one is checked here, so that time on a GPU is not spent on their bugs.
"""
from __future__ import annotations

import pytest
import torch


@pytest.fixture(scope='module')
def max_batch(load_benchmark):
    return load_benchmark('max_batch')


@pytest.fixture(scope='module')
def device_agreement(load_benchmark):
    return load_benchmark('device_agreement')


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


# ---------------------------------------------------------------------------------------------
# benchmarks/common.py: the shared options and the one timing rule
# ---------------------------------------------------------------------------------------------

@pytest.fixture(scope='module')
def common(load_benchmark):
    return load_benchmark('common')


def test_round_robin_warms_up_then_interleaves_the_cases(common):
    calls = []
    cases = {'a': lambda: calls.append('a'), 'b': lambda: calls.append('b')}
    samples = common.round_robin(cases, repeats=3, warmup=2)
    assert calls == ['a', 'a', 'b', 'b'] + ['a', 'b'] * 3
    assert {name: len(values) for name, values in samples.items()} == {'a': 3, 'b': 3}
    assert all(value >= 0 for values in samples.values() for value in values)
    assert common.medians({'a': [3.0, 1.0, 2.0], 'b': [4.0, 1.0]}) == {'a': 2.0, 'b': 2.5}


def test_time_call_measures_the_call(common):
    import time

    assert 0.05 <= common.time_call(lambda: time.sleep(0.05)) < 5


def test_shared_options_and_their_refusals(common):
    import argparse

    parser = common.add_arguments(argparse.ArgumentParser(), repeats=3, warmup=1)
    args = parser.parse_args(['--threads', '1'])
    assert (args.threads, args.device, args.repeats, args.warmup) == (1, 'cpu', 3, 1)
    assert common.setup(args) == torch.device('cpu') and torch.get_num_threads() == 1
    assert not hasattr(common.add_arguments(argparse.ArgumentParser(), device=None).parse_args([]), 'device')
    with pytest.raises(SystemExit, match='--repeats must be >= 1, got 0'):
        common.setup(parser.parse_args(['--repeats', '0', '--threads', '1']))
    with pytest.raises(SystemExit, match="--device gpu0: not a torch device"):
        common.setup(parser.parse_args(['--device', 'gpu0', '--threads', '1']))
    if not torch.cuda.is_available():
        with pytest.raises(SystemExit, match='--device cuda: no CUDA device is available here'):
            common.setup(parser.parse_args(['--device', 'cuda', '--threads', '1']))


def test_max_batch_still_takes_its_former_steps_option(max_batch):
    assert max_batch._parse_args(['--steps', '2']).repeats == 2
    assert max_batch._parse_args([]).repeats == 5


# ---------------------------------------------------------------------------------------------
# the quick mode of the other timing benchmarks (the smoothing ones: tests/test_size_benchmarks.py)
# ---------------------------------------------------------------------------------------------

def test_layer_speed_quick_mode(load_benchmark, capsys):
    load_benchmark('layer_speed').main(['--batch', '1', '--channels', '2', '--size', '12', '--sigmas', '0.7', '2',
                                        '--repeats', '1', '--warmup', '1', '--no-dense', '--threads', '1'])
    out = capsys.readouterr().out
    assert 'median of 1 round-robin repeats after 1 warm-up' in out
    assert [line.split()[0] for line in out.splitlines() if line.strip().startswith(('0.7 ', '2 '))] == ['0.7', '2']


def test_scale_batching_quick_mode(load_benchmark, capsys):
    load_benchmark('scale_batching').main(['--batch', '1', '--channels', '2', '--size', '12', '--repeats', '1',
                                           '--threads', '1'])
    out = capsys.readouterr().out
    assert 'outputs equal' in out and 'x1.00 vs sequential' in out and ' batched ' in out


def test_model_speed_quick_mode(load_benchmark, capsys):
    load_benchmark('model_speed').main(['--presets', 'gaussderresnet10_fashionmnist', '--scales', '1', '--batch', '1',
                                        '--repeats', '1', '--warmup', '1', '--no-memory', '--threads', '1'])
    out = capsys.readouterr().out
    assert 'round 1/1 done' in out and 'ratios ours / resnet18' in out


@pytest.mark.slow
def test_compile_speed_quick_mode(load_benchmark, capsys):
    load_benchmark('compile_speed').main(['--scales', '1', '--size', '16', '--batch', '1', '--repeats', '1',
                                          '--warmup', '1', '--no-train', '--threads', '1'])
    assert 'compiled fp32' in capsys.readouterr().out


def test_max_batch_times_a_smaller_batch_when_repeated_steps_run_out_of_memory(max_batch):
    class Trainer:
        """Fits one step at any batch up to 86, but repeated steps only up to 80."""
        optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)

        def __init__(self):
            self.calls = []

        def step(self, batch):
            self.calls.append(batch)
            if batch > 80 and self.calls.count(batch) > 1:
                raise torch.cuda.OutOfMemoryError('CUDA out of memory')
            return 0.5

    trainer = Trainer()
    batch, times, _ = max_batch.time_surviving_batch(trainer, 86, 3, torch.device('cpu'))
    assert (batch, times) == (80, [0.5] * 3)  # 86 * 15 // 16 = 80
    assert trainer.calls == [86, 86, 80, 80, 80, 80]
