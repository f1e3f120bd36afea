"""Does the model need glibc malloc tuning? Throughput, page faults and memory, default vs tuned.

PyTorch takes CPU memory from ``malloc``. glibc serves every block above its mmap threshold (at
most 32 MiB on 64-bit systems) with a fresh ``mmap`` and unmaps it when it is freed, so each
such tensor is faulted in page by page again, on one core. A prototype spent about half of its
CPU time there; the current layers make no temporary larger than a layer's maps, but on large
images those maps are themselves far above 32 MiB (24 channels of 1024 x 1024 px: 100 MB).

This runs the same evaluation (and training steps) in fresh subprocesses with glibc's default
settings and with each tuning below, alternating, and prints images/s, minor page faults per
image and the resident memory after the timed calls (its growth over them: whether freed memory
is reused or piles up):

* ``threshold``: the mmap threshold at its 32 MiB cap, freed heap memory kept
  (``MALLOC_MMAP_THRESHOLD_``, ``MALLOC_TRIM_THRESHOLD_``, ``MALLOC_TOP_PAD_``); larger blocks are
  still mmapped.
* ``heap`` (:data:`KEEP_FREED`): no mmapped blocks at all and freed memory kept, one
  ``GLIBC_TUNABLES`` variable. Its ``tcache_count=0`` matters: an aligned allocation leaves a
  small remainder that the per-thread cache would hold on to, pinning the freed block before it,
  so that blocks of one size were never reused and the heap grew by one block per call.

Run: ``python benchmarks/allocator.py`` (``--help``); ``--size 1024 --batch 1 --scales 1`` for a
large image.
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

# What benchmarks/README.md ("Allocator") recommends for CPU work on large images.
KEEP_FREED = {'GLIBC_TUNABLES': 'glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=4294967296:'
                                'glibc.malloc.top_pad=268435456:glibc.malloc.tcache_count=0'}
SETTINGS = {
    'default': {},
    # glibc caps M_MMAP_THRESHOLD at 32 MiB on 64-bit systems (a larger value is ignored).
    'threshold': {'MALLOC_MMAP_THRESHOLD_': str(32 << 20), 'MALLOC_TRIM_THRESHOLD_': str(1 << 32),
                  'MALLOC_TOP_PAD_': str(1 << 28)},
    'heap': KEEP_FREED,
}
_VARIABLES = {name for setting in SETTINGS.values() for name in setting}


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
    rss = common.status_kb('VmRSS')
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    seconds = common.time_call(lambda: [call() for _ in range(args.iterations)])
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults
    images = args.iterations * args.batch
    after = common.status_kb('VmRSS')
    print(json.dumps({'img_s': images / seconds, 'faults_per_image': faults / images,
                      'rss_mb': after / 1024, 'rss_growth_mb': (after - rss) / 1024}))


def main(argv=None) -> None:
    args = _parse_args(argv)
    if args.child:
        return _child(args)
    results = {(kind, name): [] for kind in ('infer', 'train') for name in SETTINGS}
    for kind in ('infer', 'train'):
        for _ in range(args.rounds):
            for name, extra in SETTINGS.items():
                env = {k: v for k, v in os.environ.items() if k not in _VARIABLES} | extra
                out = subprocess.run([sys.executable, __file__, '--child', kind, '--model', args.model,
                                      '--scales', str(args.scales), '--size', str(args.size), '--batch',
                                      str(args.batch), '--iterations', str(args.iterations)]
                                     + (['--threads', str(args.threads)] if args.threads else []),
                                     env=env, check=True, capture_output=True, text=True).stdout
                results[kind, name].append(json.loads(out.strip().splitlines()[-1]))
    print(f'{args.model}, {args.scales} scale channel(s), batch {args.batch}, {args.size}x{args.size}; '
          f'{args.iterations} calls per child after a warm-up, best of {args.rounds} children per setting')
    for name, setting in SETTINGS.items():
        print(f'{name:9s} = ' + (' '.join(f'{k}={v}' for k, v in setting.items()) or "glibc's defaults"))
    for kind in ('infer', 'train'):
        best = {name: max(results[kind, name], key=lambda r: r['img_s']) for name in SETTINGS}
        for name in SETTINGS:
            runs = results[kind, name]
            print(f'  {kind:5s} {name:9s} {best[name]["img_s"]:8.2f} img/s '
                  f'({statistics.median(r["faults_per_image"] for r in runs):8.0f} faults/img, '
                  f'RSS {statistics.median(r["rss_mb"] for r in runs):6.0f} MB, '
                  f'{max(r["rss_growth_mb"] for r in runs):+5.0f} MB over the calls)'
                  f'   / default = {best[name]["img_s"] / best["default"]["img_s"]:.2f}')


if __name__ == '__main__':
    main()
