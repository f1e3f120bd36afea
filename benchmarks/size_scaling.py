"""How a GD layer's cost per pixel grows with the image side, against a plain 3x3 convolution.

``GaussDerConv(C, C)`` (2-jet) forward + backward at several sigmas and image sides, batch 1,
against ``nn.Conv2d(C, C, 3, padding=1)`` and a 1x1 convolution from ``C * J`` to ``C``
channels (the mix the layer has to do once the jet exists) on the same side, in one run. Each
GD case runs twice: ``before``, with the dense smoothing forced (a ``(H+2) x H`` matrix
product per axis: what every size used before the cost model), and ``after``, the method the
cost model picks (``auto``); ``--compare`` adds GD / 3x3 columns with each smoothing method
forced ('dense', 'banded', 'conv'). Per side, every case is warmed up once and the cases are
then timed round-robin, median of ``--repeats``; ratios are within one side's round-robin.

Also, with ``--memory``: RSS growth over forwards at ``--memory-sizes`` distinct sides at the
six initial scales of a preset's first layer (each side once, each scale once), in a fresh
subprocess, reported in MB.

Run: ``python benchmarks/size_scaling.py`` (see ``--help``; ``--device cuda`` on a GPU).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

import common
import torch

from gaussder_hf import kernels
from gaussder_hf.layers import GaussDerConv


def _parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--channels', type=int, default=24)
    parser.add_argument('--sizes', type=int, nargs='+', default=[64, 96, 128, 256, 512, 1024, 2048])
    parser.add_argument('--sigmas', type=float, nargs='+', default=[0.7, 2.0, 6.0, 16.0])
    parser.add_argument('--dense-max-size', type=int, default=1024,
                        help='largest side at which the dense ("before") case is timed (it grows as side**3)')
    parser.add_argument('--compare', nargs='*', default=['dense', 'banded', 'conv'],
                        choices=['dense', 'banded', 'conv'],
                        help='smoothing methods also timed forced, as extra GD/3x3 columns (a method the cost '
                             'model picks anyway reuses the "after" timing; dense obeys --dense-max-size)')
    parser.add_argument('--memory', action='store_true', help='also measure RSS growth over many sides')
    parser.add_argument('--memory-sizes', type=int, default=20)
    parser.add_argument('--preset', default='gaussderresnet18_stl10', help='whose first layer and scales --memory uses')
    parser.add_argument('--memory-child', action='store_true', help=argparse.SUPPRESS)
    parser.add_argument('--skip-speed', action='store_true')
    common.add_arguments(parser, repeats=3)
    return parser.parse_args(argv)


def _step(fn, inputs) -> None:
    """One forward + backward (``loss = out.sum()``), the gradients of ``inputs`` cleared first."""
    for tensor in inputs:
        tensor.grad = None
    fn().sum().backward()


def _speed(args: argparse.Namespace, device: torch.device) -> None:
    torch.manual_seed(0)
    c = args.channels
    gd = GaussDerConv(c, c, jet_order=2, device=device)
    conv3 = torch.nn.Conv2d(c, c, 3, padding=1, device=device)
    conv1 = torch.nn.Conv2d(c * gd.jet_size, c, 1, device=device)
    print(f'# torch {torch.__version__}, {device}, {torch.get_num_threads()} threads; GaussDerConv {c}->{c}, 2-jet, '
          f'batch 1; forward + backward (loss = out.sum(), grads to input and weights); median of {args.repeats} '
          f'round-robin repeats after 1 warm-up; before = dense smoothing forced, after = cost model')
    rows = []
    for size in args.sizes:
        x = torch.randn(1, c, size, size, device=device, requires_grad=True)
        mixed = torch.randn(1, c * gd.jet_size, size, size, device=device, requires_grad=True)
        cases = {'conv3x3': (lambda: conv3(x), [x, *conv3.parameters()]),
                 'conv1x1': (lambda: conv1(mixed), [mixed, *conv1.parameters()])}
        for sigma in args.sigmas:
            chosen = kernels.chosen_smoothing_method(sigma, gd.eps, (size, size), signals=c, device=device)
            forced = [m for m in args.compare if m != chosen and m != 'dense']
            for label, method in (('before', 'dense'), ('after', 'auto'), *((m, m) for m in forced)):
                if label == 'before' and size > args.dense_max_size:
                    continue

                def run(s=sigma, m=method):
                    with kernels.smoothing_method(m):
                        return gd(x, s)
                cases[f'{label}@{sigma:g}'] = (run, [x, *gd.parameters()])
        steps = {name: (lambda fn=fn, inputs=inputs: _step(fn, inputs)) for name, (fn, inputs) in cases.items()}
        median = common.medians(common.round_robin(steps, args.repeats, warmup=1, device=device))
        ms = {name: 1e3 * seconds for name, seconds in median.items()}
        for sigma in args.sigmas:
            method = kernels.chosen_smoothing_method(sigma, gd.eps, (size, size), signals=c, device=device)
            before = ms.get(f'before@{sigma:g}')
            after = ms[f'after@{sigma:g}']
            # GD / 3x3 with each compared method forced (the 'after' timing where it is the chosen one).
            forced = {m: (after if m == method else ms.get(f'{"before" if m == "dense" else m}@{sigma:g}'))
                      for m in args.compare}
            rows.append((size, sigma, method, ms['conv3x3'], ms['conv1x1'], before, after, forced))
        print(f'  side {size} done', flush=True)
    print()
    header = (f'{"side":>5} {"sigma":>5} {"method":>6} | {"conv3x3":>8} {"conv1x1":>8} | {"before":>8} {"after":>8} | '
              f'{"before/3x3":>10} {"after/3x3":>9} {"after/1x1":>9} | {"ns/px after":>11}'
              + (' | ' + ' '.join(f'{m + "/3x3":>10}' for m in args.compare) if args.compare else ''))
    print(header)
    print('-' * len(header))
    for size, sigma, method, c3, c1, before, after, forced in rows:
        b = f'{before:8.1f}' if before is not None else f'{"-":>8}'
        br = f'{before / c3:10.2f}' if before is not None else f'{"-":>10}'
        print(f'{size:5d} {sigma:5g} {method:>6} | {c3:8.1f} {c1:8.1f} | {b} {after:8.1f} | {br} {after / c3:9.2f} '
              f'{after / c1:9.2f} | {1e6 * after / size ** 2:11.1f}'
              + (' | ' + ' '.join(f'{v / c3:10.2f}' if v is not None else f'{"-":>10}' for v in forced.values())
                 if forced else ''))


def _memory_child(args: argparse.Namespace) -> None:
    from gaussder_hf.presets import get_preset
    if args.threads:  # the smoothing rule depends on the thread count: the parent's
        torch.set_num_threads(args.threads)
    preset = get_preset(args.preset)
    scales = list(preset['initial_scales'] if isinstance(preset, dict) else preset.initial_scales)[:6]
    in_chans = preset['in_chans'] if isinstance(preset, dict) else preset.in_chans
    width = (preset['channels'] if isinstance(preset, dict) else preset.channels)[0]
    layer = GaussDerConv(in_chans, width, jet_order=2)

    def rss_mb() -> float:
        with open('/proc/self/statm') as f:
            return int(f.read().split()[1]) * os.sysconf('SC_PAGE_SIZE') / 2 ** 20

    sizes = [int(round(64 * (1024 / 64) ** (i / (args.memory_sizes - 1)))) for i in range(args.memory_sizes)]
    with torch.no_grad():
        layer(torch.rand(1, in_chans, 32, 32), scales[0])
        start = rss_mb()
        for size in sizes:
            x = torch.rand(1, in_chans, size, size)
            for sigma in scales:
                layer(x, sigma)
            del x
        end = rss_mb()
    print(json.dumps({'sizes': sizes, 'scales': scales, 'in_chans': in_chans, 'width': width, 'start_mb': start,
                      'end_mb': end, 'cache_mb': kernels.operator_cache_bytes() / 2 ** 20,
                      'threads': torch.get_num_threads()}))


def _memory(args: argparse.Namespace) -> None:
    results = {}
    for method in ('dense', 'auto'):
        code = ('import sys; sys.path.insert(0, "benchmarks"); from gaussder_hf import kernels; '
                'import size_scaling as b; '
                f'ctx = kernels.smoothing_method({method!r}); ctx.__enter__(); '
                'b._memory_child(b._parse_args('
                f'["--memory-sizes", "{args.memory_sizes}", "--preset", "{args.preset}", '
                f'"--threads", "{torch.get_num_threads()}"]))')
        out = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, check=True,
                             cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        results[method] = json.loads(out.stdout.strip().splitlines()[-1])
    r = results['auto']
    print(f'\nRSS over {len(r["sizes"])} distinct sides {r["sizes"][0]}..{r["sizes"][-1]} x {len(r["scales"])} scales '
          f'{[round(s, 2) for s in r["scales"]]} ({args.preset} first layer, {r["in_chans"]}->{r["width"]}, '
          f'no_grad, {r["threads"]} threads), fresh process each:')
    for method, r in results.items():
        label = 'before (dense forced)' if method == 'dense' else 'after (cost model)  '
        print(f'  {label}: RSS {r["start_mb"]:7.0f} -> {r["end_mb"]:7.0f} MB (+{r["end_mb"] - r["start_mb"]:.0f} MB), '
              f'operator cache {r["cache_mb"]:.1f} MB')


def main(argv=None) -> None:
    args = _parse_args(argv)
    device = common.setup(args)
    if args.memory_child:
        _memory_child(args)
        return
    if not args.skip_speed:
        _speed(args, device)
    if args.memory:
        _memory(args)


if __name__ == '__main__':
    main()
