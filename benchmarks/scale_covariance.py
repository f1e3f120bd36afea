"""Scale covariance of randomly initialised GaussDerResNets on real Fashion-MNIST images (run by hand).

For each preset and size factor s, compares the spatially max-pooled class scores of scale
channel sigma0 on the s = 1 image with those on the image rescaled by s (bicubic, antialiased,
centred on a black canvas): of channel s * sigma0 (matched), of channel sigma0 (unmatched), and
those of a plain 3x3-conv ResNet of the same widths without subsampling (plain). Errors are
mean relative L2 errors over the 10 class scores (tests/test_scale_covariance.py defines them).
The RGB presets see the grayscale image replicated to 3 channels.

Part 2 sweeps sigma0 and the canvas for the Fashion-MNIST preset: the matched error should fall
as sigma0 grows (discretisation) and as the canvas grows (boundary).

Extra columns: ``spread`` (``p_spr`` for the plain net) is the relative distance of the s = 1
scores to their mean over the images (how much the scores depend on the image); ``*_c`` are the same
errors after removing each score vector's mean over the classes (the random network's max-pooled scores share a large
common component that makes all raw relative errors small). ``--calibrate-bn`` adds rows for
networks whose BN running statistics were set by one train-mode pass over real images.

    python benchmarks/scale_covariance.py                 # everything, ~15-25 min on 2 CPU cores
    python benchmarks/scale_covariance.py --no-sweep --presets gaussderresnet18_fashionmnist
"""
from __future__ import annotations

import argparse
import math
import os
import sys
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, 'tests'))
from fashion_mnist import load_fashion_mnist  # noqa: E402
from test_scale_covariance import (  # noqa: E402
    build_networks,
    load_test_images,
    reference_scores,
    relative_l2_error,
    rescale_on_canvas,
    rescaled_scores,
)

PRESETS = [
    'gaussderresnet18_fashionmnist', 'dsgaussderresnet18_fashionmnist',
    'gaussderresnet18_cifar10', 'dsgaussderresnet18_cifar10',
    'gaussderresnet18_stl10', 'dsgaussderresnet18_stl10',
]
FACTORS = {'sqrt2': math.sqrt(2.0), '2': 2.0}


def centred(scores: torch.Tensor) -> torch.Tensor:
    return scores - scores.mean(dim=-1, keepdim=True)


@torch.no_grad()
def calibrate_bn(net, images: torch.Tensor, canvas: int, sigma0: float | None) -> None:
    """Sets every BN's running statistics from one train-mode pass over ``images`` at s = 1."""
    for module in net.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.reset_running_stats()
            module.momentum = None  # cumulative average: one pass gives the batch statistics
    net.train()
    x = rescale_on_canvas(images, 1.0, canvas)
    if sigma0 is None:
        net(x)
    else:
        net.forward_channel(x, sigma0)
    net.eval()


def measure(model, plain, images, sigma0, canvas, factors, plain_cache=None):
    """Returns one dict of errors per size factor (the s = 1 forward is shared)."""
    ref, plain_ref = reference_scores(model, plain, images, sigma0, canvas)
    rows = []
    for name, s in factors.items():
        matched, unmatched, plain_scores = rescaled_scores(model, plain, images, s, sigma0, canvas)
        spread_ref = ref.mean(dim=0, keepdim=True).expand_as(ref)
        rows.append(dict(
            s=name,
            matched=relative_l2_error(ref, matched),
            unmatched=relative_l2_error(ref, unmatched),
            plain=relative_l2_error(plain_ref, plain_scores),
            spread=relative_l2_error(ref, spread_ref),
            plain_spread=relative_l2_error(plain_ref, plain_ref.mean(dim=0, keepdim=True).expand_as(plain_ref)),
            matched_c=relative_l2_error(centred(ref), centred(matched)),
            unmatched_c=relative_l2_error(centred(ref), centred(unmatched)),
            plain_c=relative_l2_error(centred(plain_ref), centred(plain_scores)),
            common=(ref.mean(dim=-1).abs() * math.sqrt(ref.shape[-1]) / ref.norm(dim=-1)).mean().item(),
        ))
    return rows


HEADER = (f'{"network":<34} {"sigma0":>6} {"canvas":>6} {"s":>5} | {"matched":>7} {"unmatch":>7} {"plain":>7} | '
          f'{"m/u":>5} {"m/p":>5} | {"spread":>6} {"p_spr":>6} {"common":>6} | {"m_c":>6} {"u_c":>6} {"p_c":>6}')


def fmt(label, sigma0, canvas, r):
    return (f'{label:<34} {sigma0:>6.3g} {canvas:>6d} {r["s"]:>5} | {r["matched"]:>7.4f} {r["unmatched"]:>7.4f} '
            f'{r["plain"]:>7.4f} | {r["matched"] / r["unmatched"]:>5.2f} {r["matched"] / r["plain"]:>5.2f} | '
            f'{r["spread"]:>6.3f} {r["plain_spread"]:>6.3f} {r["common"]:>6.3f} | '
            f'{r["matched_c"]:>6.3f} {r["unmatched_c"]:>6.3f} '
            f'{r["plain_c"]:>6.3f}')


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--images', type=int, default=8, help='number of Fashion-MNIST test images')
    parser.add_argument('--start', type=int, default=0, help='index of the first test image')
    parser.add_argument('--seed', type=int, default=0, help='torch.manual_seed before building the networks')
    parser.add_argument('--presets', nargs='+', default=PRESETS, choices=PRESETS)
    parser.add_argument('--sigma0', type=float, default=1.0, help='sigma0 of the per-preset table')
    parser.add_argument('--canvas', type=int, default=160, help='canvas of the per-preset table')
    parser.add_argument('--sweep-sigma0', type=float, nargs='+', default=[0.5, 1.0, 2.0])
    parser.add_argument('--sweep-canvases', type=int, nargs='+', default=[72, 112, 160])
    parser.add_argument('--no-presets', action='store_true', help='skip the per-preset table')
    parser.add_argument('--no-sweep', action='store_true', help='skip the sigma0 / canvas sweep')
    parser.add_argument('--calibrate-bn', action='store_true',
                        help='add Fashion-MNIST rows with BN statistics from one train-mode pass on 16 train images')
    parser.add_argument('--threads', type=int, default=None, help='torch.set_num_threads')
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    print(f'torch {torch.__version__}, {torch.get_num_threads()} threads, {args.images} images from #{args.start}, '
          f'seed {args.seed}; errors are mean relative L2 over the 10 class scores')
    print('m/u = matched / unmatched (need <= 0.5), m/p = matched / plain (need <= 0.25), matched <= 0.05;')
    print('spread / p_spr = distance of the s = 1 scores to their mean over the images (GD net / plain net);')
    print('common = class-mean share of the score norm; *_c = errors after removing the class mean\n')
    print(HEADER)
    print('-' * len(HEADER))
    start = time.time()
    if not args.no_presets:
        for preset in args.presets:
            model, plain = build_networks(preset, args.sigma0, seed=args.seed)
            images = load_test_images(args.images, model.in_chans, start=args.start)
            for r in measure(model, plain, images, args.sigma0, args.canvas, FACTORS):
                print(fmt(preset, args.sigma0, args.canvas, r), flush=True)
        if args.calibrate_bn:
            preset = 'gaussderresnet18_fashionmnist'
            train, _ = load_fashion_mnist('train', limit=16)
            calibration = torch.from_numpy(train.copy()).float().div_(255.0).unsqueeze(1)
            for sigma0 in (1.0, 2.0):
                model, plain = build_networks(preset, sigma0, seed=args.seed)
                calibrate_bn(model, calibration, args.canvas, sigma0)
                calibrate_bn(plain, calibration, args.canvas, None)
                images = load_test_images(args.images, 1, start=args.start)
                for r in measure(model, plain, images, sigma0, args.canvas, FACTORS):
                    print(fmt(preset + ' +BN calib', sigma0, args.canvas, r), flush=True)
        print(f'  ({time.time() - start:.0f} s)\n', flush=True)

    if not args.no_sweep:
        preset = 'gaussderresnet18_fashionmnist'
        for sigma0 in args.sweep_sigma0:
            model, plain = build_networks(preset, sigma0, seed=args.seed)
            images = load_test_images(args.images, 1, start=args.start)
            for canvas in args.sweep_canvases:
                for r in measure(model, plain, images, sigma0, canvas, FACTORS):
                    print(fmt(preset, sigma0, canvas, r), flush=True)
        print(f'  ({time.time() - start:.0f} s)', flush=True)


if __name__ == '__main__':
    main()
