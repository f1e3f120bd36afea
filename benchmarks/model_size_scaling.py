"""Whole networks at growing input sides: GaussDerResNets (one scale channel) against timm's resnet18.

Inference (eval, ``torch.no_grad``, batch 1) time per image of each network at each side, and
the ratio ours / resnet18 at the same side, cases interleaved, median of ``--repeats`` after one
warm-up. Our networks keep the full resolution in every layer (no subsampling), resnet18
downsamples 32x, so the ratio is large at every side; what is measured is how it changes with
the side. Peak memory: growth of the peak RSS (``VmHWM`` after ``/proc/self/clear_refs``) over
one forward on the CPU, ``torch.cuda.max_memory_allocated`` on a GPU.

Run: ``python benchmarks/model_size_scaling.py`` (see ``--help``; ``--device cuda`` on a GPU).
"""
from __future__ import annotations

import argparse

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
    common.add_arguments(parser, repeats=3)
    return parser.parse_args(argv)


@torch.no_grad()
def _infer(model, x) -> None:
    model(x)


def _peak_memory_mb(model, x, device) -> float:
    """Returns the peak memory growth in MB over one forward."""
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


def main(argv=None) -> None:
    args = _parse_args(argv)
    device = common.setup(args)
    limits = {k: int(v) for k, v in (item.split('=') for item in args.max_size)}
    print(f'# torch {torch.__version__}, timm {timm.__version__}, {device}, {torch.get_num_threads()} threads; '
          f'inference batch 1, one scale channel, median of {args.repeats} after 1 warm-up, cases interleaved')
    rows = []
    for name in args.models:
        preset = get_preset(name)
        ours = timm.create_model(name, initial_scales=preset['initial_scales'][:1]).eval().to(device)
        ref = timm.create_model('resnet18', in_chans=preset['in_chans'], num_classes=10).eval().to(device)
        for size in args.sizes:
            if size > limits.get(name, size):
                rows.append((name, size, None, None, None, None))
                continue
            x = torch.rand(1, preset['in_chans'], size, size, device=device)
            cases = {'ours': ours, 'resnet18': ref}
            memory = {key: _peak_memory_mb(model, x, device) for key, model in cases.items()}  # also the warm-up
            calls = {key: (lambda model=model: _infer(model, x)) for key, model in cases.items()}
            t = common.medians(common.round_robin(calls, args.repeats, warmup=0, device=device))
            rows.append((name, size, t['ours'], t['resnet18'], memory['ours'], memory['resnet18']))
            print(f'  {name} {size} done', flush=True)
    print()
    header = (f'{"network":30s} {"side":>5s} | {"ours ms":>9s} {"resnet18 ms":>11s} {"ratio":>7s} '
              f'{"ratio / at first side":>21s} | {"peak MB ours":>12s} {"resnet18":>8s}')
    print(header)
    print('-' * len(header))
    first = {}
    for name, size, ours, ref, mem_o, mem_r in rows:
        if ours is None:
            print(f'{name:30s} {size:5d} | skipped (--max-size)')
            continue
        ratio = ours / ref
        first.setdefault(name, ratio)
        print(f'{name:30s} {size:5d} | {1e3 * ours:9.1f} {1e3 * ref:11.1f} {ratio:7.1f} {ratio / first[name]:21.2f} | '
              f'{mem_o:12.0f} {mem_r:8.0f}')


if __name__ == '__main__':
    main()
