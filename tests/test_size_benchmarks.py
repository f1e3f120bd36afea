"""The smoothing-method benchmarks run end to end on tiny inputs and report what they claim to."""
from __future__ import annotations

import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / 'benchmarks'


def test_smoothing_cost_times_every_method(load_benchmark, capsys):
    load_benchmark('smoothing_cost').main(['--sizes', '8', '24', '--sigmas', '0.7', '3', '--channels', '2',
                                           '--repeats', '1', '--threads', '1'])
    out = capsys.readouterr().out
    assert 'conv / dense time' in out and 'banded / dense time' in out
    rows = [line for line in out.splitlines() if line.strip().startswith(('0.7 ', '3 '))]
    # two ratio tables, the fastest-vs-rule table and the per-pixel table, one row per sigma each
    assert len(rows) == 8
    # on sides this small every method measured is slower than the rule's choice, the dense product
    assert all('/dense' in cell for line in rows if 'dense/' in line for cell in line.split('|')[1].split())


def test_smoothing_cost_times_chunk_sizes_and_restores_the_default(load_benchmark, capsys):
    from gaussder_hf import kernels

    default = kernels._CHUNK_BYTES
    load_benchmark('smoothing_cost').main(['--sizes', '8', '24', '--sigmas', '3', '--channels', '2', '--batch', '3',
                                           '--chunk-mib', '0', '0.001', '4', '--methods', 'dense', 'banded',
                                           '--repeats', '1', '--threads', '1'])
    rows = [line.split() for line in capsys.readouterr().out.splitlines() if line.strip().startswith(('8 ', '24 '))]
    assert [(row[0], row[2]) for row in rows] == [('8', 'dense'), ('8', 'banded'), ('24', 'dense'), ('24', 'banded')]
    assert all(len(row) == 8 for row in rows)  # side sigma method | ms | two ratios
    assert kernels._CHUNK_BYTES == default
    with pytest.raises(SystemExit, match='-1'):
        load_benchmark('smoothing_cost').main(['--sizes', '8', '--chunk-mib', '-1', '--threads', '1'])


def test_size_scaling_reports_before_and_after_per_side(load_benchmark, capsys):
    load_benchmark('size_scaling').main(['--sizes', '12', '20', '--sigmas', '1', '--channels', '2', '--repeats', '1',
                                         '--dense-max-size', '12', '--threads', '1'])
    out = capsys.readouterr().out
    rows = [line.split() for line in out.splitlines() if line.strip().startswith(('12 ', '20 '))]
    assert [row[0] for row in rows] == ['12', '20']
    assert rows[0][2] == 'dense' and rows[1][7] == '-'  # no dense timing above --dense-max-size


def test_model_size_scaling_compares_with_resnet18(load_benchmark, capsys):
    load_benchmark('model_size_scaling').main(['--models', 'gaussderresnet10_fashionmnist', 'gaussderresnet18_stl10',
                                               '--sizes', '16', '24', '--max-size', 'gaussderresnet18_stl10=16',
                                               '--repeats', '1', '--threads', '1', '--no-memory'])
    out = capsys.readouterr().out
    assert 'gaussderresnet10_fashionmnist     24     1 |' in out
    assert out.splitlines()[-2].endswith('|            -        -')  # --no-memory
    assert 'gaussderresnet18_stl10            24       | skipped' in out


def test_model_size_scaling_holds_the_pixels_per_call(load_benchmark, capsys):
    load_benchmark('model_size_scaling').main(['--models', 'gaussderresnet10_fashionmnist', '--sizes', '8', '16',
                                               '--pixels', '256', '--repeats', '1', '--threads', '1', '--no-memory'])
    rows = [line.split() for line in capsys.readouterr().out.splitlines()
            if line.startswith('gaussderresnet10_fashionmnist')]
    assert [(row[1], row[2]) for row in rows] == [('8', '4'), ('16', '1')]  # 256 pixels: 4 of 8x8, 1 of 16x16


def test_model_size_scaling_splits_the_change_of_the_ratio_between_the_networks(load_benchmark, capsys):
    load_benchmark('model_size_scaling').main(['--models', 'gaussderresnet10_fashionmnist', '--sizes', '8', '16',
                                               '--repeats', '1', '--threads', '1', '--no-memory'])
    rows = [line.replace('|', ' ').split() for line in capsys.readouterr().out.splitlines()
            if line.startswith('gaussderresnet10_fashionmnist')]
    (_, _, _, ours0, ref0, _, *relative0), (_, _, _, ours1, ref1, _, *relative1) = rows
    assert relative0[:3] == ['1.00', '1.00', '1.00']  # ratio, ours per pixel, resnet18 per pixel
    change1, pp_ours1, pp_ref1 = map(float, relative1[:3])
    # the cost per pixel relative to the first side, from the printed times per image (rounded to
    # 0.05 ms either way: a relative error of up to 0.05 / t on each)
    for relative, first, second in ((pp_ours1, ours0, ours1), (pp_ref1, ref0, ref1)):
        first, second = float(first), float(second)
        assert relative == pytest.approx(second / first / 4, rel=0.05 / first + 0.05 / second + 0.01, abs=0.01)
    # the change of the ratio is the quotient of the two networks' changes (each printed to 0.005)
    assert change1 == pytest.approx(pp_ours1 / pp_ref1, rel=0.005 / pp_ours1 + 0.005 / pp_ref1 + 0.005 / change1)


def test_model_size_scaling_refuses_a_pixel_count_below_one(load_benchmark):
    with pytest.raises(SystemExit, match='--pixels must be a positive number of pixels, got 0'):
        load_benchmark('model_size_scaling').main(['--pixels', '0'])


@pytest.mark.parametrize('threads, train_layout', [(1, 'channels_last'), (2, 'channels_last_mix')])
def test_maps_layout_times_the_layouts_and_names_what_auto_picks(load_benchmark, capsys, threads, train_layout):
    load_benchmark('maps_layout').main(['--models', 'gaussderresnet10_fashionmnist', 'gaussderresnet18_stl10',
                                        '--shapes', '2x12', '--modes', 'infer', 'train', '--repeats', '1',
                                        '--threads', str(threads)])
    rows = [line.replace('|', ' ').split() for line in capsys.readouterr().out.splitlines()
            if line.startswith('gaussderresnet')]
    assert [(row[0], row[1], row[2], row[-1]) for row in rows] == [
        ('gaussderresnet10_fashionmnist', 'infer', '2x12', 'channels_last'),
        ('gaussderresnet10_fashionmnist', 'train', '2x12', train_layout),
        ('gaussderresnet18_stl10', 'infer', '2x12', 'contiguous'),
        ('gaussderresnet18_stl10', 'train', '2x12', 'contiguous')]
    for row in rows:  # each ratio is the quotient of the times printed
        plain, last, ratio, mix, mix_ratio = map(float, row[3:8])
        assert ratio == pytest.approx(last / plain, rel=0.05, abs=0.01)
        assert mix_ratio == pytest.approx(mix / plain, rel=0.05, abs=0.01)


def test_maps_layout_refuses_a_malformed_shape(load_benchmark, capsys):
    with pytest.raises(SystemExit):
        load_benchmark('maps_layout').main(['--shapes', '16by96'])
    assert "shapes are BATCHxSIDE, e.g. 16x96, got '16by96'" in capsys.readouterr().err


def test_reparam_times_the_folded_models_and_reports_their_logits(load_benchmark, capsys):
    load_benchmark('reparam').main(['--models', 'gaussderresnet10_fashionmnist', '--shapes', '2x12', '--repeats', '1'])
    rows = [line.replace('|', ' ').split() for line in capsys.readouterr().out.splitlines()
            if line.startswith('gaussderresnet10_fashionmnist')]
    assert len(rows) == 1
    built, timm_folded, all_folded, timm_ratio, folded_ratio, diff = map(float, rows[0][2:8])
    for ratio, time in ((timm_ratio, timm_folded), (folded_ratio, all_folded)):  # quotients of the printed times
        assert ratio == pytest.approx(time / built, rel=0.05 / built + 0.05 / time + 0.01)
    assert diff < 1e-4  # folding changes the logits by rounding only


def test_shapes_are_batch_x_side(load_benchmark):
    common = load_benchmark('common')
    assert common.batch_and_side('16x96') == (16, 96) and common.batch_and_side('1X512') == (1, 512)
    for bad in ('16', '0x96', 'axb'):
        with pytest.raises(Exception, match=bad):
            common.batch_and_side(bad)


@pytest.mark.skipif(platform.system() != 'Linux' or platform.libc_ver()[0] != 'glibc', reason='glibc only')
def test_model_size_scaling_measures_peak_memory_where_the_allocator_keeps_freed_blocks(load_benchmark):
    # Under the recommended allocator setting freed memory stays resident, so once the 128 px case has
    # grown the heap, a forward of the same bytes (4 images of 64 px) would add nothing to the peak
    # resident memory of the same process. Each measurement runs in a fresh one instead.
    environment = os.environ | load_benchmark('allocator').KEEP_FREED
    out = subprocess.run([sys.executable, str(BENCHMARKS / 'model_size_scaling.py'), '--models',
                          'gaussderresnet10_fashionmnist', '--sizes', '128', '64', '--pixels', '16384',
                          '--repeats', '1', '--threads', '1'], env=environment, check=True, capture_output=True,
                         text=True, timeout=600).stdout
    rows = [line.split('|') for line in out.splitlines() if line.startswith('gaussderresnet10_fashionmnist')]
    assert [row[0].split()[1:] for row in rows] == [['128', '1'], ['64', '4']]
    one_map_mb = 16384 * 24 * 4 / 2 ** 20  # float32, 24 channels
    for row in rows:
        ours, resnet18 = map(float, row[-1].split())
        assert ours > one_map_mb and resnet18 > 0, out


def test_model_size_scaling_times_all_sides_in_one_round_robin(load_benchmark, monkeypatch, capsys):
    # The ratio to the first side divides times of different sides: taken in the same rounds, a drift
    # of the machine's speed during the run cannot show up as a change with the side.
    benchmark = load_benchmark('model_size_scaling')
    rounds = []
    round_robin = benchmark.common.round_robin
    monkeypatch.setattr(benchmark.common, 'round_robin', lambda cases, *a, **k: rounds.append(set(cases)) or
                        round_robin(cases, *a, **k))
    benchmark.main(['--models', 'gaussderresnet10_fashionmnist', '--sizes', '8', '16', '--repeats', '1',
                    '--threads', '1', '--no-memory'])
    assert rounds == [{('ours', 8), ('resnet18', 8), ('ours', 16), ('resnet18', 16)}]
