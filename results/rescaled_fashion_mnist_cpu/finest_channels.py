"""Why the finest scale channels rarely win at size factor 1/2: measurements on a trained GaussDerResNet.

At s = 1/2 a network trained at s = 1 with sigma0 = 1 should, by the scale covariance of the
continuous model (docs/design.md §3), see the test image in the scale channel sigma0 = 1/2 as it saw
the training images in sigma0 = 1. The committed checkpoint instead picks sigma0 = 0.71 for most
images at s = 1/2. Two candidate causes, measured separately on the first ``--num_images`` test
images (originals from the IDX files):

1. **Antialiasing blur.** The test images are downscaled with antialiased bicubic interpolation,
   which adds blur of its own. Added blur of standard deviation ``b`` (in test pixels) makes the
   matching channel *finer*: ``sigma0**2 = (1/2)**2 - b**2`` in the continuous model. So if the
   blur were the cause, images downscaled without antialiasing (sharper, aliased) should move the
   winners toward 0.5, and images blurred further should move them toward coarser channels.
2. **Discretisation at small sigma.** The first layer's sigma at sigma0 = 1/2 is 1/2 pixel, where
   the discrete Gaussian derivative differs most from the continuous one. Control: the same
   s = 1/2 images upsampled by 2 (bicubic) back to the training resolution carry no more
   information, but are seen by the sigma0 = 1 channel on the grid it was trained on. If the
   sigma0 = 1 channel on the upsampled images does much better than the sigma0 = 1/2 channel on
   the native ones, the loss is in the discretisation, not in the images.

Each scale channel is also evaluated alone (its own class scores, no pooling), which shows how
good the channel that the continuous theory names is, whichever channel wins the max pooling.

Usage: python results/rescaled_fashion_mnist_cpu/finest_channels.py [--num_images 1000] [--model FOLDER]
[--output FILE]. ``--model`` is a folder written by ``gaussder_hf.save_for_hub`` (default: this experiment's
two-stage network, ``two_stage_model/``); writes ``--output`` (default: finest_channels.json next to this
script) and prints a table.
"""
from __future__ import annotations

import argparse
import gzip
import json
import math
import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torchvision.transforms.v2 import InterpolationMode
from torchvision.transforms.v2 import functional as TF

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
MODEL = HERE / 'two_stage_model'
CANVAS = 72
# both grids of six training channels (1/2 ... 2 sqrt2 and 2**-1.5 ... 2) and 2**-1.25 between the finest two
SCALES = (2 ** -1.5, 2 ** -1.25, 0.5, 2 ** -0.5, 1.0, 2 ** 0.5, 2.0, 2 * 2 ** 0.5)


def read_idx(path: Path, count: int) -> np.ndarray:
    with gzip.open(path, 'rb') as f:
        data = f.read()
    dims = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i:8 + 4 * i], 'big') for i in range(dims))
    array = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * dims).reshape(shape)
    return array[:count]


def downscale(originals: torch.Tensor, s: float, antialias: bool, extra_blur: float = 0.0) -> torch.Tensor:
    """Returns uint8 ``(N, 1, 72, 72)``: each 28x28 original resized by ``s`` and centred on black.

    ``antialias=True`` with ``extra_blur=0`` is the datasets' rescaling (checked against
    :func:`gaussder_hf.rescaling.rescale_batch` in :func:`main`); ``extra_blur`` adds a sampled
    Gaussian blur of that standard deviation (test pixels) after the resize.
    """
    from gaussder_hf.rescaling import place_on_canvas, rescaled_size

    n = rescaled_size(28, s)
    x = originals.to(torch.float32)
    if n != 28:
        x = TF.resize(x, [n, n], interpolation=InterpolationMode.BICUBIC, antialias=antialias)
    x = x.round().clamp(0, 255)
    x = place_on_canvas(x, CANVAS, 'black')
    if extra_blur > 0:
        radius = math.ceil(4 * extra_blur)
        t = torch.arange(-radius, radius + 1, dtype=torch.float32)
        g = torch.exp(-t ** 2 / (2 * extra_blur ** 2))
        g = g / g.sum()
        x = F.conv2d(x, g.view(1, 1, 1, -1), padding=(0, radius))
        x = F.conv2d(x, g.view(1, 1, -1, 1), padding=(radius, 0))
        x = x.round().clamp(0, 255)
    return x.to(torch.uint8)


def upsample_twice(images: torch.Tensor) -> torch.Tensor:
    """Returns the 72x72 canvases bicubically upsampled to 144x144 and centre-cropped to 72x72 (uint8)."""
    x = TF.resize(images.to(torch.float32), [2 * CANVAS, 2 * CANVAS], interpolation=InterpolationMode.BICUBIC,
                  antialias=False)
    off = CANVAS // 2
    return x[..., off:off + CANVAS, off:off + CANVAS].round().clamp(0, 255).to(torch.uint8)


@torch.no_grad()
def channel_scores(model, images: torch.Tensor, mean: float, std: float, batch: int = 250) -> torch.Tensor:
    """Returns the per-scale-channel class scores ``(N, S, K)`` of uint8 images ``(N, 1, H, W)``."""
    out = []
    for i in range(0, len(images), batch):
        x = (images[i:i + batch].to(torch.float32) / 255 - mean) / std
        out.append(model.forward_scale_channels(x))
    return torch.cat(out)


def summarise(scores: torch.Tensor, labels: torch.Tensor, scales, pooled_scales) -> dict:
    """Accuracy of max pooling over ``pooled_scales``, its winners, and each channel's accuracy alone."""
    index = [scales.index(s) for s in pooled_scales]
    sub = scores[:, index]
    prediction = sub.max(dim=1).values.argmax(dim=1)
    of_prediction = sub.gather(2, prediction.view(-1, 1, 1).expand(-1, sub.shape[1], 1)).squeeze(2)
    winners = torch.bincount(of_prediction.argmax(dim=1), minlength=len(index))
    alone = (scores.argmax(dim=2) == labels[:, None]).float().mean(dim=0)
    return dict(pooled_accuracy=float((prediction == labels).float().mean()),
                winners={f'{s:.4g}': int(w) for s, w in zip(pooled_scales, winners)},
                accuracy_alone={f'{s:.4g}': float(a) for s, a in zip(scales, alone)})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--num_images', type=int, default=1000)
    parser.add_argument('--data_dir', default='/usr/share/datasets/fashion-mnist')
    parser.add_argument('--threads', type=int, default=None)
    parser.add_argument('--model', type=Path, default=MODEL, help='a folder written by save_for_hub')
    parser.add_argument('--output', type=Path, default=HERE / 'finest_channels.json')
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    import timm

    import gaussder_hf  # noqa: F401  (registers the models)
    from gaussder_hf.rescaling import rescale_batch

    data = Path(args.data_dir)
    originals = torch.from_numpy(read_idx(data / 't10k-images-idx3-ubyte.gz', args.num_images).copy())[:, None]
    labels = torch.from_numpy(read_idx(data / 't10k-labels-idx1-ubyte.gz', args.num_images).astype(np.int64))

    model = timm.create_model(f'local-dir:{args.model}', pretrained=True).eval()
    trained = tuple(model.initial_scales)
    mean, std = model.pretrained_cfg['mean'][0], model.pretrained_cfg['std'][0]
    wide = model.with_initial_scales(SCALES).eval()

    # the datasets' own test images at s = 1/2 and s = 1
    for s in (0.5, 1.0):
        ours = downscale(originals, s, antialias=True)[:, 0].numpy()
        theirs = rescale_batch(originals[:, 0].numpy(), s, CANVAS, 'black')
        if not np.array_equal(ours, theirs):
            raise AssertionError(f'the antialiased downscale differs from rescale_batch at s = {s}')

    conditions = {
        's=1 (training size)': downscale(originals, 1.0, antialias=True),
        's=1/2, antialiased (the test split)': downscale(originals, 0.5, antialias=True),
        's=1/2, no antialiasing': downscale(originals, 0.5, antialias=False),
        's=1/2, antialiased + Gaussian blur 0.35 px': downscale(originals, 0.5, antialias=True, extra_blur=0.35),
    }
    control = upsample_twice(conditions['s=1/2, antialiased (the test split)'])
    conditions['s=1/2 antialiased, upsampled x2 (control)'] = control

    results = {'checkpoint': os.path.relpath(args.model.resolve(), ROOT), 'num_images': len(labels),
               'trained_initial_scales': list(trained), 'evaluated_initial_scales': list(SCALES), 'conditions': {}}
    for name, images in conditions.items():
        scores = channel_scores(wide, images, mean, std)
        results['conditions'][name] = dict(
            trained_grid=summarise(scores, labels, SCALES, trained),
            with_finer_channels=summarise(scores, labels, SCALES, SCALES))

    out = args.output
    out.write_text(json.dumps(results, indent=2) + '\n')
    head = ''.join(f'{s:>7.3g}' for s in SCALES)
    print(f'{"condition":46s} pooled | accuracy of each scale channel alone, sigma0 = {head}')
    for name, r in results['conditions'].items():
        alone = ''.join(f'{a:7.3f}' for a in r['trained_grid']['accuracy_alone'].values())
        print(f'{name:46s} {r["trained_grid"]["pooled_accuracy"]:6.3f} | {alone}')
        print(f'{"":46s} winners (trained grid): {r["trained_grid"]["winners"]}')
        print(f'{"":46s} winners (all eight):    {r["with_finer_channels"]["winners"]}  '
              f'pooled {r["with_finer_channels"]["pooled_accuracy"]:.3f}')
    print(f'wrote {os.path.relpath(out)}')


if __name__ == '__main__':
    main()
