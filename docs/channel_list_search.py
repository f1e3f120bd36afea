"""Searches the channel lists that fit both Table 1's fragments and the parameter counts (design.md §3.12).

    PYTHONPATH=. python docs/channel_list_search.py [--step 8] [--top 5] [--monotone] [--dataset stl10]

The extracted Table 1 keeps only the channel counts typeset without over-lines: ``1-48-24----128-10``
(Fashion-MNIST), ``3----256-10`` (CIFAR-10), ``3-----256-10`` (STL-10). Every lost field stood for
a run of two (one over-line) or three (two over-lines) equal values. Reading the runs as maximal
(two neighbouring runs, or a run and a neighbouring plain value, differ; otherwise the table would
have written a longer run), the nine values ``c0 .. c8`` (first layer, blocks 1-8) are:

- Fashion-MNIST: ``48, 24, a, a, b, b, c, c, 128`` (three lost fields over six entries: all pairs);
- CIFAR-10: three runs over eight entries (lengths 3-3-2, 3-2-3 or 2-3-3), then 256;
- STL-10: four pairs ``a, a, b, b, c, c, d, d``, then 256.

For every assignment of values (multiples of ``--step`` up to 512) this counts the parameters of
the GaussDerResNet and of the DSGaussDerResNet in closed form (:func:`gaussder_hf.presets.count_parameters`,
which tests/test_presets.py checks against built models) and ranks the lists by the larger of the
two relative errors against Table 1 / Table 4. It does so under four counting conventions: the
depthwise-separable part starting at block 5 or 4 (App. A.2, design.md §7.8) and GD layers with or
without a bias (design.md §2.4). A list "rounds to" the tables when both counts round to the printed
figures (295k, 120k; 1.78M, 547k; 2.07M, 669k). ``--monotone`` keeps only lists whose lost values
never shrink (up to the last plain value), the design rule that, with ``--step 16``, picks the
presets' lists. STL-10 at step 8 counts 16 million lists (about 30 s).
"""
from __future__ import annotations

import argparse
import itertools

import numpy as np

from gaussder_hf.presets import PAPER_PARAMETER_COUNTS, count_parameters

FIXED = {  # dataset: (in_chans, num_classes, zero_order, prefix, runs, last)
    'fashionmnist': (1, 10, False, (48, 24), ((2, 2, 2),), 128),
    'cifar10': (3, 10, False, (), ((3, 3, 2), (3, 2, 3), (2, 3, 3)), 256),
    'stl10': (3, 10, True, (), ((2, 2, 2, 2),), 256),
}
# The printed precision of each count: 295k -> 1,000; 1.78M -> 10,000.
ROUNDING = {'fashionmnist': (1_000, 1_000), 'cifar10': (10_000, 1_000), 'stl10': (10_000, 1_000)}


def _expand(prefix, runs, values, last):
    channels = list(prefix)
    for length, value in zip(runs, values):
        channels += [value] * length
    return channels + [last]


def search(dataset: str, step: int = 8, top: int = 5, separable_from_block: int = 5, bias: bool = False,
           monotone: bool = False):
    """Returns the ``top`` lists of ``dataset`` ordered by the larger relative error of the two counts.

    Also returns how many lists follow the fragment (maximal runs) and how many of them round to
    both printed counts.
    """
    in_chans, num_classes, zero_order, prefix, run_orders, last = FIXED[dataset]
    target_std = PAPER_PARAMETER_COUNTS[f'gaussderresnet18_{dataset}']
    target_ds = PAPER_PARAMETER_COUNTS[f'dsgaussderresnet18_{dataset}']
    grid = np.arange(step, 513, step, dtype=np.int64)
    found, total, rounding = [], 0, 0
    for runs, first in itertools.product(run_orders, grid):
        # All assignments with this first value at once: one array per lost field, counted elementwise.
        values = [np.full(len(grid) ** (len(runs) - 1), first)]
        values += [v.ravel() for v in np.meshgrid(*[grid] * (len(runs) - 1), indexing='ij')]
        heads = [np.full_like(values[0], v) for v in prefix] + values + [np.full_like(values[0], last)]
        maximal = np.logical_and.reduce([a != b for a, b in zip(heads, heads[1:])])
        if monotone:  # the lost values never shrink, up to the last plain value (ResNet-like widening)
            lost = values + [heads[-1]]
            maximal &= np.logical_and.reduce([a <= b for a, b in zip(lost, lost[1:])])
        values = [v[maximal] for v in values]
        channels = _expand(prefix, runs, values, last)
        channels = [np.broadcast_to(np.asarray(c), values[0].shape) for c in channels]
        args = dict(in_chans=in_chans, num_classes=num_classes, channels=channels, zero_order=zero_order, bias=bias)
        standard = count_parameters(**args)
        separable = count_parameters(**args, separable_from_block=separable_from_block)
        e1, e2 = standard / target_std - 1, separable / target_ds - 1
        worst = np.maximum(abs(e1), abs(e2))
        total += worst.size
        rounding += int(rounds_to_tables(dataset, standard, separable).sum())
        for i in np.argsort(worst, kind='stable')[:top]:
            found.append((float(worst[i]), tuple(int(c[i]) for c in channels), int(standard[i]), int(separable[i]),
                          (float(e1[i]), float(e2[i]))))
    found.sort(key=lambda item: item[0])
    return found[:top], total, rounding


def rounds_to_tables(dataset: str, standard, separable):
    """True where both counts round to the printed figures (half-way cases rounded up)."""
    unit_std, unit_ds = ROUNDING[dataset]
    std = np.floor(np.asarray(standard) / unit_std + 0.5) * unit_std
    ds = np.floor(np.asarray(separable) / unit_ds + 0.5) * unit_ds
    return (std == PAPER_PARAMETER_COUNTS[f'gaussderresnet18_{dataset}']) & (
        ds == PAPER_PARAMETER_COUNTS[f'dsgaussderresnet18_{dataset}'])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--step', type=int, default=8)
    parser.add_argument('--top', type=int, default=5)
    parser.add_argument('--dataset', choices=sorted(FIXED), action='append')
    parser.add_argument('--monotone', action='store_true', help='only lists whose lost values never shrink')
    args = parser.parse_args()
    for dataset in args.dataset or list(FIXED):
        for separable_from_block, bias in ((5, False), (4, False), (5, True), (4, True)):
            best, total, rounding = search(dataset, args.step, args.top, separable_from_block, bias, args.monotone)
            print(f'{dataset}: DS from block {separable_from_block}, GD bias {bias}: {total} lists follow the '
                  f'fragment, {rounding} round to both printed counts')
            for _worst, channels, standard, separable, (e1, e2) in best:
                mark = '  rounds to the tables' if rounds_to_tables(dataset, standard, separable) else ''
                print(f'  {"-".join(map(str, channels))}: {standard:,} ({100 * e1:+.2f}%) / '
                      f'{separable:,} ({100 * e2:+.2f}%){mark}')


if __name__ == '__main__':
    main()
