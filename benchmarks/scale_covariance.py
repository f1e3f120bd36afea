"""Scale covariance of randomly initialised GaussDerResNets on real Fashion-MNIST images (run by hand).

For each preset and size factor s, compares the spatially max-pooled class scores of scale
channel sigma0 on the s = 1 image with those on the image rescaled by s (bicubic, antialiased,
centred on a black canvas): of channel s * sigma0 (matched), of channel sigma0 (unmatched), and
those of a plain 3x3-conv ResNet of the same widths without subsampling (plain). Errors are
mean relative L2 errors over the 10 class scores (defined below; tests/test_scale_covariance.py checks them).
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
import time

import common
import torch
import torch.nn as nn
import torch.nn.functional as F
from torchvision.transforms import InterpolationMode
from torchvision.transforms.v2 import functional as TF

import gaussder_hf
from gaussder_hf.data.sources import FASHION_MNIST_DEBIAN_DIR, read_fashion_mnist
from gaussder_hf.model import spatial_select

FASHION_MNIST_DIR = os.environ.get('FASHION_MNIST_DIR', FASHION_MNIST_DEBIAN_DIR)

# ---------------------------------------------------------------------------------------------
# The measurement (tests/test_scale_covariance.py checks its numbers)
# ---------------------------------------------------------------------------------------------

def load_test_images(count: int, in_chans: int = 1, start: int = 0) -> torch.Tensor:
    """Returns ``count`` Fashion-MNIST test images as floats in [0, 1], ``(count, in_chans, 28, 28)``.

    Grayscale is replicated to ``in_chans`` channels (for the RGB presets).
    """
    images, _ = read_fashion_mnist(FASHION_MNIST_DIR, 'test', limit=start + count)
    x = torch.from_numpy(images[start:start + count].copy()).float().div_(255.0).unsqueeze(1)
    return x.expand(-1, in_chans, -1, -1).contiguous()


def rescaled_size(size: int, s: float) -> int:
    """Returns the side of an image of side ``size`` rescaled by ``s``: ``round(size * s)``."""
    return max(1, int(round(size * s)))


def rescale_on_canvas(images: torch.Tensor, s: float, canvas: int) -> torch.Tensor:
    """Rescales ``images`` by ``s`` (bicubic, antialiased, clamped to [0, 1]) and centres them on a black canvas.

    The object occupies rows/columns ``offset .. offset + n - 1`` with ``offset = (canvas - n) // 2``
    and ``n = round(28 * s)``, so its centre ``offset + (n - 1) / 2`` is the canvas centre
    ``(canvas - 1) / 2`` exactly when ``canvas - n`` is even, and half a pixel up-left of it
    otherwise (the same rule for every ``s``; the sizes used here are all even).
    """
    size = images.shape[-1]
    n = rescaled_size(size, s)
    if n > canvas:
        raise ValueError(f'a {size}px image rescaled by {s} ({n}px) does not fit on a {canvas}px canvas')
    if n != size:
        images = TF.resize(images, [n, n], interpolation=InterpolationMode.BICUBIC, antialias=True)
    images = images.clamp(0.0, 1.0)
    out = images.new_zeros(*images.shape[:-2], canvas, canvas)
    offset = (canvas - n) // 2
    out[..., offset:offset + n, offset:offset + n] = images
    return out


class PlainConvResNet(nn.Module):
    """Plain 3x3-conv ResNet without subsampling, the GaussDerResNet's layout with 3x3 convolutions.

    Stem ``conv3x3 -> BN -> ReLU``, one residual block ``conv3x3 -> BN -> ReLU -> conv3x3 -> BN``
    (+ identity, or 1x1 conv + BN when the width changes, then ReLU) per entry of ``channels[1:]``,
    head ``conv3x3 -> BN`` to ``num_classes``, then the spatial selection ``spatial_pool`` (spatial
    max pooling by default). Convolutions have no bias and the same He-uniform initialisation as
    the GaussDerResNet's layers, 1x1 skips included. Zero padding: on a black canvas it agrees with
    the GD layers' mirror extension wherever the margin is wide enough.
    """

    def __init__(self, in_chans: int, num_classes: int, channels, spatial_pool: str = 'max'):
        super().__init__()
        channels = tuple(channels)
        self.spatial_pool = spatial_pool

        def conv(cin, cout):
            layer = nn.Conv2d(cin, cout, 3, padding=1, bias=False)
            nn.init.kaiming_uniform_(layer.weight, nonlinearity='relu')
            return layer

        self.stem = nn.Sequential(conv(in_chans, channels[0]), nn.BatchNorm2d(channels[0]), nn.ReLU())
        self.blocks = nn.ModuleList()
        for cin, cout in zip(channels[:-1], channels[1:]):
            block = nn.Module()
            block.body = nn.Sequential(
                conv(cin, cout), nn.BatchNorm2d(cout), nn.ReLU(), conv(cout, cout), nn.BatchNorm2d(cout))
            block.skip = nn.Identity()
            if cin != cout:
                skip = nn.Conv2d(cin, cout, 1, bias=False)
                nn.init.kaiming_uniform_(skip.weight, nonlinearity='relu')
                block.skip = nn.Sequential(skip, nn.BatchNorm2d(cout))
            self.blocks.append(block)
        self.head = nn.Sequential(conv(channels[-1], num_classes), nn.BatchNorm2d(num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        for block in self.blocks:
            x = F.relu(block.body(x) + block.skip(x))
        return spatial_select(self.head(x), self.spatial_pool)


def relative_l2_error(reference: torch.Tensor, other: torch.Tensor) -> float:
    """Returns the mean over images of ``||reference - other|| / ||reference||`` over the last axis."""
    return ((reference - other).norm(dim=-1) / reference.norm(dim=-1)).mean().item()


def centred(scores: torch.Tensor) -> torch.Tensor:
    """Returns class scores ``(..., K)`` with their mean over the classes removed."""
    return scores - scores.mean(dim=-1, keepdim=True)


def build_networks(preset: str, sigma0: float, seed: int = 0, spatial_pool: str | None = 'max'):
    """Returns ``(gaussderresnet, plain)``: the preset with one scale channel ``sigma0`` and a plain
    3x3-conv ResNet of the same widths, both randomly initialised, eval mode, both with the spatial
    selection ``spatial_pool`` (``None``: the preset's own)."""
    torch.manual_seed(seed)
    overrides = dict(initial_scales=(sigma0,))
    if spatial_pool is not None:
        overrides['spatial_pool'] = spatial_pool
    model = gaussder_hf.create_gaussderresnet(preset, **overrides).eval()
    plain = PlainConvResNet(model.in_chans, model.num_classes, model.channels, model.spatial_pool).eval()
    return model, plain


@torch.no_grad()
def reference_scores(model, plain, images: torch.Tensor, sigma0: float, canvas: int):
    """Returns the ``s = 1`` scores: channel ``sigma0`` of ``model`` ``(B, K)`` and ``plain`` ``(B, K)``."""
    x = rescale_on_canvas(images, 1.0, canvas)
    scores = model.with_initial_scales((sigma0,)).forward_scale_channels(x)[:, 0]
    return scores, plain(x)


@torch.no_grad()
def rescaled_scores(model, plain, images: torch.Tensor, s: float, sigma0: float, canvas: int):
    """Returns the scores on the image rescaled by ``s``: ``(matched, unmatched, plain)``, each ``(B, K)``.

    ``matched`` is scale channel ``s * sigma0``, ``unmatched`` scale channel ``sigma0``.
    """
    x = rescale_on_canvas(images, s, canvas)
    scores = model.with_initial_scales((sigma0, s * sigma0)).forward_scale_channels(x)
    return scores[:, 1], scores[:, 0], plain(x)


def covariance_errors(model, plain, images: torch.Tensor, s: float, sigma0: float, canvas: int, reference=None,
                      centre: bool = True):
    """Returns ``{'matched', 'unmatched', 'plain', 'spread', 'plain_spread'}`` mean relative L2 errors for ``s``.

    ``matched``: channel ``s * sigma0`` on the rescaled image against channel ``sigma0`` on the
    ``s = 1`` image; ``unmatched``: channel ``sigma0`` on both; ``plain``: the plain conv net on both;
    ``spread`` (``plain_spread``): the ``s = 1`` scores of the GaussDerResNet (the plain net) against
    their mean over the images, i.e. how much they depend on the image at all. With ``centre``
    (default) every score vector first loses its mean over the classes (:func:`centred`).
    ``reference`` reuses :func:`reference_scores`.
    """
    ref, plain_ref = reference if reference is not None else reference_scores(model, plain, images, sigma0, canvas)
    matched, unmatched, plain_scores = rescaled_scores(model, plain, images, s, sigma0, canvas)
    if centre:
        ref, plain_ref, matched, unmatched, plain_scores = map(
            centred, (ref, plain_ref, matched, unmatched, plain_scores))
    return dict(
        matched=relative_l2_error(ref, matched),
        unmatched=relative_l2_error(ref, unmatched),
        plain=relative_l2_error(plain_ref, plain_scores),
        spread=relative_l2_error(ref, ref.mean(dim=0, keepdim=True).expand_as(ref)),
        plain_spread=relative_l2_error(plain_ref, plain_ref.mean(dim=0, keepdim=True).expand_as(plain_ref)),
    )


PRESETS = [
    'gaussderresnet18_fashionmnist', 'dsgaussderresnet18_fashionmnist',
    'gaussderresnet18_cifar10', 'dsgaussderresnet18_cifar10',
    'gaussderresnet18_stl10', 'dsgaussderresnet18_stl10',
]
FACTORS = {'sqrt2': math.sqrt(2.0), '2': 2.0}


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
    common.add_arguments(parser, threads=None, device=None, repeats=None)  # errors, not timings, on the CPU
    args = parser.parse_args(argv)
    common.setup(args)

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
            train, _ = read_fashion_mnist(FASHION_MNIST_DIR, 'train', limit=16)
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
