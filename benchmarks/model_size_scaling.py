"""Whole networks at growing input sides: GaussDerResNets (one scale channel) against timm's resnet18.

Inference (eval, ``torch.no_grad``) time per image of each network at each side, and the ratio
ours / resnet18 at the same side, median of ``--repeats`` after one warm-up; all sides and both
networks of a model are timed in one round robin.
Batch 1 by default; with ``--pixels N`` every call holds about N pixels (batch
``round(N / side**2)``, at least 1), so that small sides are timed at a batch that keeps the
hardware as busy as one large image does, as in training, instead of at the per-call overhead of
a single small image. Our networks keep the full resolution in every layer (no subsampling), resnet18
downsamples 32x, so the ratio is large at every side; what is measured is how it changes with
the side. Each network's cost per pixel is also given relative to its own at the first side:
the change of the ratio is the quotient of the two, so the table shows which network's cost per
pixel moved (at batch 1, resnet18's falls as the side grows, its deep layers having only a few
pixels to work on in a small image). Peak memory: growth of the peak RSS (``VmHWM`` after
``/proc/self/clear_refs``) over one forward in a fresh process on the CPU (in this one, memory an
earlier case freed and the allocator kept would hide the growth), ``torch.cuda.max_memory_allocated``
on a GPU; ``--no-memory`` leaves it out.

Run: ``python benchmarks/model_size_scaling.py`` (see ``--help``; ``--device cuda`` on a GPU).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

import common
import timm
import torch

import gaussder_hf  # noqa: F401  (registers the presets with timm)
from gaussder_hf.presets import get_preset


def _parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--models', nargs='+', default=['gaussderresnet10_fashionmnist', 'gaussderresnet18_stl10'])
    parser.add_argument('--sizes', type=int, nargs='+', default=[96, 192, 1024])
    parser.add_argument('--max-size', nargs='*', default=['gaussderresnet18_stl10=192'],
                        help='MODEL=SIDE: largest side to run a model at (a full-resolution network at 1024 px '
                             'takes minutes per forward on a CPU)')
    parser.add_argument('--pixels', type=int, default=None,
                        help='pixels per call: batch round(N / side**2), at least 1 (default: batch 1)')
    parser.add_argument('--no-memory', action='store_true', help='do not measure the peak memory')
    parser.add_argument('--memory-child', nargs=4, metavar=('MODEL', 'NETWORK', 'SIDE', 'BATCH'),
                        help=argparse.SUPPRESS)
    common.add_arguments(parser, repeats=3)
    return parser.parse_args(argv)


def _networks(name: str, device) -> dict[str, torch.nn.Module]:
    """The preset ``name`` with one scale channel, and resnet18 with its input channels and 10 classes."""
    preset = get_preset(name)
    ours = timm.create_model(name, initial_scales=preset['initial_scales'][:1])
    ref = timm.create_model('resnet18', in_chans=preset['in_chans'], num_classes=10)
    return {'ours': ours.eval().to(device), 'resnet18': ref.eval().to(device)}


@torch.no_grad()
def _infer(model, x) -> None:
    model(x)


def _peak_memory_mb(model, x, device) -> float:
    """Returns the peak memory growth in MB over one forward in this process."""
    cuda = device.type == 'cuda'
    if cuda:
        common.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
    else:
        with open('/proc/self/clear_refs', 'w') as f:
            f.write('5')
        base = common.status_kb('VmRSS') * 1024
    _infer(model, x)
    if cuda:
        common.synchronize(device)
        peak = torch.cuda.max_memory_allocated(device)
    else:
        peak = common.status_kb('VmHWM') * 1024
    return (peak - base) / 2 ** 20


def _memory_child(name: str, network: str, size: int, batch: int, device) -> None:
    """Prints the peak memory growth of one forward of ``network`` in this (fresh) process as JSON."""
    model = _networks(name, device)[network]
    x = torch.rand(batch, get_preset(name)['in_chans'], size, size, device=device)
    print(json.dumps({'peak_mb': _peak_memory_mb(model, x, device)}))


def _fresh_peak_memory_mb(args, name: str, network: str, size: int, batch: int) -> float:
    """:func:`_memory_child` in a new interpreter with this run's threads and device."""
    command = [sys.executable, os.path.abspath(__file__), '--memory-child', name, network, str(size), str(batch),
               '--threads', str(torch.get_num_threads()), '--device', args.device]
    out = subprocess.run(command, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])['peak_mb']


def _megabytes(value: float | None, width: int) -> str:
    return f'{"-":>{width}s}' if value is None else f'{value:{width}.0f}'


def main(argv=None) -> None:
    args = _parse_args(argv)
    if args.pixels is not None and args.pixels < 1:
        raise SystemExit(f'--pixels must be a positive number of pixels, got {args.pixels}')
    device = common.setup(args)
    if args.memory_child:
        name, network, size, batch = args.memory_child
        return _memory_child(name, network, int(size), int(batch), device)
    limits = {k: int(v) for k, v in (item.split('=') for item in args.max_size)}
    batching = 'batch 1' if args.pixels is None else f'about {args.pixels} pixels per call'
    print(f'# torch {torch.__version__}, timm {timm.__version__}, {device}, {torch.get_num_threads()} threads; '
          f'inference, {batching}, one scale channel, median of {args.repeats} after 1 warm-up, '
          'all sides and networks interleaved')
    rows = []
    for name in args.models:
        preset = get_preset(name)
        networks = _networks(name, device)
        # Every side of a model in one round robin: the ratio to the first side compares times taken
        # in the same rounds, so a drift of the machine's speed during the run moves all sides alike.
        calls, shapes, memory = {}, {}, {}
        for size in args.sizes:
            if size > limits.get(name, size):
                continue
            batch = 1 if args.pixels is None else max(1, round(args.pixels / size ** 2))
            x = torch.rand(batch, preset['in_chans'], size, size, device=device)
            shapes[size] = batch
            for key, model in networks.items():
                calls[key, size] = lambda model=model, x=x: _infer(model, x)
                if args.no_memory:
                    memory[key, size] = None
                elif device.type == 'cuda':
                    memory[key, size] = _peak_memory_mb(model, x, device)
                else:
                    memory[key, size] = _fresh_peak_memory_mb(args, name, key, size, batch)
        t = common.medians(common.round_robin(calls, args.repeats, warmup=1, device=device)) if calls else {}
        for size in args.sizes:
            if size not in shapes:
                rows.append((name, size, None, None, None, None, None))
                continue
            batch = shapes[size]
            rows.append((name, size, batch, t['ours', size] / batch, t['resnet18', size] / batch,
                         memory['ours', size], memory['resnet18', size]))
        print(f'  {name} done', flush=True)
    print()
    header = (f'{"network":30s} {"side":>5s} {"batch":>5s} | {"ours ms/img":>11s} {"resnet18 ms/img":>15s} '
              f'{"ratio":>7s} {"ratio / at first side":>21s} | {"per pixel / at first side: ours":>31s} '
              f'{"resnet18":>8s} | {"peak MB ours":>12s} {"resnet18":>8s}')
    print(header)
    print('-' * len(header))
    first = {}
    for name, size, batch, ours, ref, mem_o, mem_r in rows:
        if ours is None:
            print(f'{name:30s} {size:5d} {"":5s} | skipped (--max-size)')
            continue
        first.setdefault(name, (ours / size ** 2, ref / size ** 2))
        per_pixel = (ours / size ** 2 / first[name][0], ref / size ** 2 / first[name][1])
        ratio = ours / ref
        print(f'{name:30s} {size:5d} {batch:5d} | {1e3 * ours:11.1f} {1e3 * ref:15.1f} {ratio:7.1f} '
              f'{per_pixel[0] / per_pixel[1]:21.2f} | {per_pixel[0]:31.2f} {per_pixel[1]:8.2f} '
              f'| {_megabytes(mem_o, 12)} {_megabytes(mem_r, 8)}')


if __name__ == '__main__':
    main()
