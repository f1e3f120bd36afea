"""Does the model still need glibc malloc tuning? Throughput and page faults, default vs tuned.

A prototype spent about half of its CPU time in page faults: large temporary tensors were
freed back to the kernel (glibc serves allocations above ``M_MMAP_THRESHOLD`` with fresh
``mmap``s and trims the heap top) and re-faulted on the next call; keeping freed memory in
the process (``MALLOC_MMAP_THRESHOLD_``, ``MALLOC_TRIM_THRESHOLD_``, ``MALLOC_TOP_PAD_``)
doubled its evaluation throughput. This runs the same evaluation (and training steps) in fresh
subprocesses with the default allocator settings and with that tuning, alternating, and
prints images/s and minor page faults per image. A ratio near 1 means users get the speed
without tuning their allocator.

Run: ``python benchmarks/allocator.py`` (``--help``).
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys

import common

# glibc caps M_MMAP_THRESHOLD at 32 MiB on 64-bit systems (a larger value is ignored).
TUNED = {
    'MALLOC_MMAP_THRESHOLD_': str(32 << 20),
    'MALLOC_TRIM_THRESHOLD_': str(1 << 32),
    'MALLOC_TOP_PAD_': str(1 << 28),
}


def _parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--model', default='gaussderresnet10_fashionmnist')
    parser.add_argument('--scales', type=int, default=6, help='first N scale channels of the preset')
    parser.add_argument('--size', type=int, default=72)
    parser.add_argument('--batch', type=int, default=16)
    parser.add_argument('--iterations', type=int, default=4, help='timed calls per child (after one warm-up)')
    parser.add_argument('--rounds', type=int, default=2, help='children per setting, alternating')
    parser.add_argument('--child', choices=['infer', 'train'], help=argparse.SUPPRESS)
    common.add_arguments(parser, threads=None, device=None, repeats=None)  # glibc's allocator: the CPU; --rounds repeat
    return parser.parse_args(argv)


def _child(args) -> None:
    import timm
    import torch
    import torch.nn.functional as F

    import gaussder_hf  # noqa: F401
    from gaussder_hf.presets import get_preset

    common.setup(args)
    torch.manual_seed(0)
    model = timm.create_model(args.model, initial_scales=get_preset(args.model)['initial_scales'][:args.scales])
    x = torch.rand(args.batch, model.in_chans, args.size, args.size)
    y = torch.randint(0, 10, (args.batch,))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)

    def call():
        if args.child == 'infer':
            model.eval()
            with torch.no_grad():
                model(x)
        else:
            model.train()
            optimizer.zero_grad(set_to_none=True)
            F.cross_entropy(model(x), y).backward()
            optimizer.step()

    call()
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    seconds = common.time_call(lambda: [call() for _ in range(args.iterations)])
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults
    images = args.iterations * args.batch
    print(json.dumps({'img_s': images / seconds, 'faults_per_image': faults / images}))


def main(argv=None) -> None:
    args = _parse_args(argv)
    if args.child:
        return _child(args)
    settings = {'default': {}, 'tuned': TUNED}
    results = {(kind, name): [] for kind in ('infer', 'train') for name in settings}
    for kind in ('infer', 'train'):
        for _ in range(args.rounds):
            for name, extra in settings.items():
                env = {k: v for k, v in os.environ.items() if k not in TUNED} | extra
                out = subprocess.run([sys.executable, __file__, '--child', kind, '--model', args.model,
                                      '--scales', str(args.scales), '--size', str(args.size), '--batch',
                                      str(args.batch), '--iterations', str(args.iterations)]
                                     + (['--threads', str(args.threads)] if args.threads else []),
                                     env=env, check=True, capture_output=True, text=True).stdout
                results[kind, name].append(json.loads(out.strip().splitlines()[-1]))
    print(f'{args.model}, {args.scales} scale channel(s), batch {args.batch}, {args.size}x{args.size}; '
          f'{args.iterations} calls per child after a warm-up, best of {args.rounds} children per setting')
    print('tuned = ' + ' '.join(f'{k}={v}' for k, v in TUNED.items()))
    for kind in ('infer', 'train'):
        best = {name: max(results[kind, name], key=lambda r: r['img_s']) for name in settings}
        faults = {name: statistics.median(r['faults_per_image'] for r in results[kind, name]) for name in settings}
        print(f'  {kind:5s}  default {best["default"]["img_s"]:7.2f} img/s ({faults["default"]:8.0f} faults/img)'
              f'   tuned {best["tuned"]["img_s"]:7.2f} img/s ({faults["tuned"]:8.0f} faults/img)'
              f'   tuned / default = {best["tuned"]["img_s"] / best["default"]["img_s"]:.2f}')


if __name__ == '__main__':
    main()
