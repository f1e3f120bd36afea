"""The smoothing-method benchmarks run end to end on tiny inputs and report what they claim to."""
from __future__ import annotations


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
                                               '--repeats', '1', '--threads', '1'])
    out = capsys.readouterr().out
    assert 'gaussderresnet10_fashionmnist     24 |' in out
    assert 'gaussderresnet18_stl10            24 | skipped' in out
