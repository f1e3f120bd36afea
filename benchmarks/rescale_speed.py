"""Times building the rescaled Fashion-MNIST copies with ``rescale_batch`` against a PIL loop.

The rescaled Fashion-MNIST dataset (paper §4.1) needs, on a 72x72 black canvas:
train (50,000) and validation (10,000) at s = 1, and the 10,000 test images at each of the nine
size factors ``2**(k/4)``, ``k = -4..4``: 150,000 images in all. This script builds all of them
with :func:`gaussder_hf.rescaling.rescale_batch` (batched, float32 bicubic with anti-aliasing)
and, in the same run, times the obvious baseline on a subset (``--pil-subset`` images per size
factor): a per-image Python loop of ``PIL.Image.resize(..., Image.BICUBIC)`` (PIL's bicubic also
anti-aliases when downscaling) pasted on a black ``Image.new('L', (72, 72))``. The baseline's
time for 150,000 images is extrapolated from its per-size-factor rates (train and validation
use the s = 1 rate). It also reports the max and mean absolute pixel difference between the two
outputs on the subset: they are not identical (float vs 8-bit intermediate, different rounding).

The data come from Debian's ``dataset-fashion-mnist`` package (``--root``, IDX files, gzip), read
by the package's IDX reader (``gaussder_hf.data.sources.read_idx``). Train = the first
50,000 images of the training file, validation = the last 10,000 (just for timing; the dataset
builder defines the real split).

Run: ``python benchmarks/rescale_speed.py`` (see ``--help``).
"""
from __future__ import annotations

import argparse
import math
import os
import platform

import common
import numpy as np
import torch
from PIL import Image

from gaussder_hf.data.sources import read_idx
from gaussder_hf.rescaling import SIZE_FACTORS, rescale_batch, rescaled_size, size_factor_name

CANVAS = 72


def pil_rescale(images: np.ndarray, s: float, canvas: int = CANVAS) -> np.ndarray:
    """The baseline: one PIL resize + paste per image, same sizes and centring rule."""
    n = rescaled_size(images.shape[1], s)
    offset = (canvas - n) // 2
    out = np.empty((len(images), canvas, canvas), dtype=np.uint8)
    for i, image in enumerate(images):
        resized = Image.fromarray(image, mode='L').resize((n, n), Image.BICUBIC)
        page = Image.new('L', (canvas, canvas))
        page.paste(resized, (offset, offset))
        out[i] = np.asarray(page)
    return out


def _parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--root', default=os.environ.get('FASHION_MNIST_DIR', '/usr/share/datasets/fashion-mnist'))
    parser.add_argument('--pil-subset', type=int, default=2000, help='images per size factor for the PIL baseline')
    common.add_arguments(parser, threads=None, device=None, repeats=3)  # numpy and PIL on the CPU: no --device
    return parser.parse_args(argv)


def _timed(fn, *args):
    """Returns ``fn(*args)`` and the seconds it took."""
    out = []
    seconds = common.time_call(lambda: out.append(fn(*args)))
    return out[0], seconds


def main(argv=None) -> None:
    args = _parse_args(argv)
    common.setup(args)
    train_all = read_idx(os.path.join(args.root, 'train-images-idx3-ubyte.gz'), ndim=3)
    test = read_idx(os.path.join(args.root, 't10k-images-idx3-ubyte.gz'), ndim=3)
    train, val = train_all[:50000], train_all[50000:]
    subset = test[:args.pil_subset]
    print(f'{platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, '
          f'{torch.get_num_threads()} threads, PIL {Image.__version__}; best of {args.repeats} rounds')
    rescale_batch(test[:64], SIZE_FACTORS[0], CANVAS)  # warm up

    # Every copy: (name, images, s). Ours and PIL are timed back to back per copy and the rounds
    # go round-robin over the copies, so a slow spell of the machine hits both alike.
    copies = [('train', train, 1.0), ('validation', val, 1.0)]
    copies += [(size_factor_name(s), test, s) for s in SIZE_FACTORS]
    ours = {name: math.inf for name, _, _ in copies}
    pil = dict(ours)
    diffs = {}
    for _ in range(args.repeats):
        for name, images, s in copies:
            out, t = _timed(rescale_batch, images, s, CANVAS)
            ours[name] = min(ours[name], t)
            if name == 'validation':
                continue  # same work per image as train (s = 1)
            reference, t = _timed(pil_rescale, images[:len(subset)], s)
            pil[name] = min(pil[name], t)
            diff = np.abs(out[:len(subset)].astype(np.int16) - reference.astype(np.int16))
            diffs[name] = (diff.max(), diff.mean())
    pil['validation'] = pil['train']
    diffs['validation'] = diffs['train']

    print(f'\n{"copy":<12} {"images":>6} {"size":>4} {"ours img/s":>11} {"PIL img/s":>10} {"ratio":>6} '
          f'{"max|diff|":>9} {"mean|diff|":>10}')
    total_ours = total_pil = 0.0
    n_total = 0
    for name, images, s in copies:
        n = len(images)
        rate_ours, rate_pil = n / ours[name], len(subset) / pil[name]
        total_ours += ours[name]
        total_pil += n / rate_pil
        n_total += n
        print(f'{name:<12} {n:>6} {rescaled_size(28, s):>4} {rate_ours:>11.0f} {rate_pil:>10.0f} '
              f'{rate_ours / rate_pil:>6.1f} {diffs[name][0]:>9d} {diffs[name][1]:>10.3f}')
    print(f'\nall {n_total} images on {CANVAS}x{CANVAS}: ours {total_ours:.2f} s ({n_total / total_ours:.0f} img/s); '
          f'PIL loop ~{total_pil:.1f} s ({n_total / total_pil:.0f} img/s, extrapolated from {len(subset)} images '
          f'per copy); ours is {total_pil / total_ours:.1f}x faster')


if __name__ == '__main__':
    main()
