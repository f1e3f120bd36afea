"""Measures the cost model that picks the Gaussian smoothing method: 'dense', 'banded' and 'conv'.

Smoothing (``gaussder_hf.kernels.gaussian_smooth`` with ``pad``, the call a GD layer makes: mirror
extension by the radius of the difference stencils included) is timed forward + backward with each
method forced (:func:`gaussder_hf.kernels.smoothing_method`) on a grid of image sides and
sigmas, the methods interleaved, median of ``--repeats``. The tables give each method's time
over the first one's (< 1: faster), the fastest method per case against the one the rule the
package uses now picks (``kernels.chosen_smoothing_method``), and the times per pixel and channel.

With ``--chunk-mib``, each method is timed instead at several sizes of the chunks of signals the
matrix methods go through at a time (``0``: all signals in one chunk), against the first size.

Run: ``python benchmarks/smoothing_cost.py`` (see ``--help``; ``--device cuda`` on a GPU).
"""
from __future__ import annotations

import argparse

import common
import torch

from gaussder_hf import kernels


def _parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--sizes', type=int, nargs='+', default=[32, 64, 96, 128, 192, 256, 384, 512, 1024])
    parser.add_argument('--sigmas', type=float, nargs='+', default=[0.7, 1.0, 2.0, 4.0, 6.0, 10.0, 16.0])
    parser.add_argument('--channels', type=int, default=24)
    parser.add_argument('--batch', type=int, default=1)
    parser.add_argument('--pixels', type=int, default=None,
                        help='pixels per call instead of --batch: batch round(N / side**2), at least 1, per side')
    parser.add_argument('--pad', type=int, default=1, help='mirror extension after smoothing (1 for a 2-jet)')
    parser.add_argument('--eps', type=float, default=0.01)
    parser.add_argument('--forward-only', action='store_true')
    parser.add_argument('--methods', nargs='+', default=['dense', 'banded', 'conv'],
                        choices=['dense', 'banded', 'conv'],
                        help='methods timed, interleaved; ratios are to the first')
    parser.add_argument('--chunk-mib', type=float, nargs='+', default=None,
                        help='time the methods at these chunk sizes in MiB (0: no chunks); ratios are to the first')
    common.add_arguments(parser, repeats=5)
    return parser.parse_args(argv)


def _chunk_budgets(args: argparse.Namespace, device: torch.device, backward: bool) -> None:
    """Times each method at each chunk size of ``--chunk-mib``, interleaved, and prints the ratios."""
    budgets = args.chunk_mib
    if any(b < 0 for b in budgets):
        raise SystemExit(f'--chunk-mib must be sizes >= 0 in MiB, got {budgets}')
    default = kernels._CHUNK_BYTES
    label = {b: f'{b:g} MiB' if b else 'no chunks' for b in budgets}

    def timed(method, budget):
        kernels._CHUNK_BYTES = int(budget * 2 ** 20) if budget else 2 ** 62
        try:
            _smooth(x, sigma, args.eps, args.pad, method, backward)
        finally:
            kernels._CHUNK_BYTES = default

    print(f'time per chunk size / time at {label[budgets[0]]} (< 1: faster); ms at {label[budgets[0]]}')
    print(f'{"side":>5} {"sigma":>6} {"method":>7} | {"ms":>9} | ' + ' '.join(f'{label[b]:>10}' for b in budgets[1:]))
    for size in args.sizes:
        x = torch.randn(_batch(args, size), args.channels, size, size, device=device, requires_grad=backward)
        for sigma in args.sigmas:
            cases = {(m, b): (lambda m=m, b=b: timed(m, b)) for m in args.methods for b in budgets}
            median = common.medians(common.round_robin(cases, args.repeats, warmup=1, device=device))
            for m in args.methods:
                first = median[m, budgets[0]]
                ratios = ' '.join(f'{median[m, b] / first:10.2f}' for b in budgets[1:])
                print(f'{size:5d} {sigma:6g} {m:>7} | {first * 1e3:9.1f} | {ratios}', flush=True)


def _batch(args: argparse.Namespace, size: int) -> int:
    """Returns the batch of a side: ``--batch``, or ``round(--pixels / side**2)`` (at least 1)."""
    return args.batch if args.pixels is None else max(1, round(args.pixels / size ** 2))


def _batching(args: argparse.Namespace) -> str:
    return f'batch {args.batch}' if args.pixels is None else f'about {args.pixels} pixels per call'


def _smooth(x: torch.Tensor, sigma: float, eps: float, pad: int, method: str, backward: bool) -> None:
    with kernels.smoothing_method(method):
        y = kernels.gaussian_smooth(x, sigma, eps, 2, pad=pad)
    if backward:
        x.grad = None
        y.sum().backward()


def main(argv=None) -> None:
    args = _parse_args(argv)
    if args.pixels is not None and args.pixels < 1:
        raise SystemExit(f'--pixels must be a positive number of pixels, got {args.pixels}')
    device = common.setup(args)
    backward = not args.forward_only
    methods = args.methods
    if args.chunk_mib is not None:
        print(f'# torch {torch.__version__}, {device}, {torch.get_num_threads()} threads; {_batching(args)}, '
              f'{args.channels} channels, pad {args.pad}, eps {args.eps}; '
              f'{"forward" if args.forward_only else "forward + backward"}, median of {args.repeats}, interleaved')
        _chunk_budgets(args, device, backward)
        return
    print(f'# torch {torch.__version__}, {device}, {torch.get_num_threads()} threads; {_batching(args)}, '
          f'{args.channels} channels, pad {args.pad}, eps {args.eps}; '
          f'{"forward" if args.forward_only else "forward + backward"}, median of {args.repeats}, '
          f'{", ".join(methods)} interleaved')
    times: dict[tuple[int, float, str], float] = {}
    for size in args.sizes:
        x = torch.randn(_batch(args, size), args.channels, size, size, device=device, requires_grad=backward)
        for sigma in args.sigmas:
            # One warm-up call per method builds the cached operators.
            cases = {m: (lambda m=m: _smooth(x, sigma, args.eps, args.pad, m, backward)) for m in methods}
            median = common.medians(common.round_robin(cases, args.repeats, warmup=1, device=device))
            for method in methods:
                times[size, sigma, method] = median[method]
        print(f'  side {size:5d} done', flush=True)
    sizes = ' '.join(f'{s:>7d}' for s in args.sizes)
    for method in methods[1:]:
        print()
        print(f'{method} / {methods[0]} time (< 1: {method} faster)')
        print(f'{"sigma":>6} {"taps":>5} | {sizes}')
        for sigma in args.sigmas:
            taps = 2 * kernels.truncation_radius(sigma, args.eps) + 1
            row = ' '.join(f'{times[s, sigma, method] / times[s, sigma, methods[0]]:7.2f}' for s in args.sizes)
            print(f'{sigma:6g} {taps:5d} | {row}')
    print()
    print('fastest method measured / method the rule picks (kernels.chosen_smoothing_method)')
    print(f'{"sigma":>6} {"taps":>5} | ' + ' '.join(f'{s:>15d}' for s in args.sizes))
    for sigma in args.sigmas:
        taps = 2 * kernels.truncation_radius(sigma, args.eps) + 1
        cells = []
        for s in args.sizes:
            fastest = min(methods, key=lambda m: times[s, sigma, m])
            chosen = kernels.chosen_smoothing_method(sigma, args.eps, (s, s), signals=_batch(args, s) * args.channels,
                                                     device=device)
            cells.append(f'{fastest + "/" + chosen:>15}')
        print(f'{sigma:6g} {taps:5d} | ' + ' '.join(cells))
    print()
    print('per pixel and channel, ns: ' + ' / '.join(methods))
    for sigma in args.sigmas:
        cells = []
        for s in args.sizes:
            scale = 1e9 / (_batch(args, s) * args.channels * s * s)
            cells.append('/'.join(f'{times[s, sigma, m] * scale:.1f}' for m in methods))
        print(f'{sigma:6g} | ' + ' '.join(f'{c:>17}' for c in cells))


if __name__ == '__main__':
    main()
