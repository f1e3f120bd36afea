"""Measures the cost model that picks the Gaussian smoothing method: 'dense' against 'conv'.

Smoothing (``gaussder_hf.kernels.gaussian_smooth`` with ``pad``, the call a GD layer makes: mirror
extension by the radius of the difference stencils included) is timed forward + backward with each
method forced (:func:`gaussder_hf.kernels.smoothing_method`) on a grid of image sides and
sigmas, the two methods interleaved, median of ``--repeats``. The table gives conv / dense
(< 1: conv is faster) and, per sigma, the smallest side from which conv wins at every larger
measured side, against the rule the package uses now (``uses_conv_smoothing``).

Run: ``python benchmarks/smoothing_cost.py`` (see ``--help``; ``--device cuda`` on a GPU).
"""
from __future__ import annotations

import argparse

import common
import torch

from gaussder_hf import kernels


def _parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--sizes', type=int, nargs='+', default=[32, 48, 64, 96, 128, 192, 256, 384, 512])
    parser.add_argument('--sigmas', type=float, nargs='+', default=[0.7, 1.0, 2.0, 4.0, 6.0, 10.0, 16.0])
    parser.add_argument('--channels', type=int, default=24)
    parser.add_argument('--batch', type=int, default=1)
    parser.add_argument('--pad', type=int, default=1, help='mirror extension after smoothing (1 for a 2-jet)')
    parser.add_argument('--eps', type=float, default=0.01)
    parser.add_argument('--forward-only', action='store_true')
    common.add_arguments(parser, repeats=5)
    return parser.parse_args(argv)


def _smooth(x: torch.Tensor, sigma: float, eps: float, pad: int, method: str, backward: bool) -> None:
    with kernels.smoothing_method(method):
        y = kernels.gaussian_smooth(x, sigma, eps, 2, pad=pad)
    if backward:
        x.grad = None
        y.sum().backward()


def main(argv=None) -> None:
    args = _parse_args(argv)
    device = common.setup(args)
    backward = not args.forward_only
    print(f'# torch {torch.__version__}, {device}, {torch.get_num_threads()} threads; batch {args.batch}, '
          f'{args.channels} channels, pad {args.pad}, eps {args.eps}; '
          f'{"forward" if args.forward_only else "forward + backward"}, median of {args.repeats}, '
          f'dense and conv interleaved')
    ratios: dict[tuple[int, float], float] = {}
    times: dict[tuple[int, float], tuple[float, float]] = {}
    for size in args.sizes:
        x = torch.randn(args.batch, args.channels, size, size, device=device, requires_grad=backward)
        for sigma in args.sigmas:
            # One warm-up call per method builds the cached operators.
            cases = {m: (lambda m=m: _smooth(x, sigma, args.eps, args.pad, m, backward)) for m in ('dense', 'conv')}
            median = common.medians(common.round_robin(cases, args.repeats, warmup=1, device=device))
            dense, conv = median['dense'], median['conv']
            ratios[size, sigma] = conv / dense
            times[size, sigma] = (dense, conv)
        print(f'  side {size:5d} done', flush=True)
    print()
    print('conv / dense time (< 1: conv faster)')
    sizes = ' '.join(f'{s:>7d}' for s in args.sizes)
    print(f'{"sigma":>6} {"taps":>5} | {sizes} | conv wins from | rule picks conv from')
    for sigma in args.sigmas:
        taps = 2 * kernels.truncation_radius(sigma, args.eps) + 1
        row = ' '.join(f'{ratios[s, sigma]:7.2f}' for s in args.sizes)
        wins = None
        for s in reversed(args.sizes):
            if ratios[s, sigma] >= 1.0:
                break
            wins = s
        rule = next((s for s in args.sizes if kernels.uses_conv_smoothing(sigma, args.eps, (s, s))), None)
        print(f'{sigma:6g} {taps:5d} | {row} | {str(wins or "-"):>14} | {str(rule or "-"):>20}')
    print()
    print('per pixel and channel, ns: dense / conv')
    for sigma in args.sigmas:
        cells = []
        for s in args.sizes:
            dense, conv = times[s, sigma]
            scale = 1e9 / (args.batch * args.channels * s * s)
            cells.append(f'{dense * scale:5.1f}/{conv * scale:5.1f}')
        print(f'{sigma:6g} | ' + ' '.join(cells))


if __name__ == '__main__':
    main()
