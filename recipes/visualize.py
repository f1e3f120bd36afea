"""Figures that show what a GaussDerResNet sees (paper §8, App. A.6), written as PNGs.

    python recipes/visualize.py --model local-dir:checkpoints/my_model --image shoe.png --output_dir figures/
    python recipes/visualize.py --model gaussderresnet18_fashionmnist --pretrained --image shoe.png --layer 18

Writes activation_maps.png (class maps in fine / medium / coarse scale channels), receptive_fields.png
(composed filters of --layer) and scale_space.png (first-layer jet of the input at several sigma)
to --output_dir (``--out`` is its deprecated spelling).
"""
from __future__ import annotations

import argparse
import warnings
from pathlib import Path

import timm
import torch

import gaussder_hf
from gaussder_hf.input_pipeline import open_image
from gaussder_hf.visualize import plot_activation_maps, plot_receptive_fields, plot_scale_space


def visualize(model_name: str, image_path: str, output_dir: str | None = None, pretrained: bool = False,
              layer: int = 18, class_index: int | None = None, out: str | None = None) -> list[Path]:
    """Writes the three figures for one image to ``output_dir`` (``out``: deprecated spelling); returns their paths."""
    output_dir = _output_dir(output_dir, out)
    # ---- model: any timm name, 'local-dir:' folder or 'hf-hub:' id of a GaussDerResNet
    pretrained = pretrained or model_name.startswith(('local-dir:', 'hf-hub:'))
    model = timm.create_model(model_name, pretrained=pretrained).eval()
    if not isinstance(model, gaussder_hf.GaussDerResNet):
        raise ValueError(f'{model_name!r} is not a GaussDerResNet')
    depth = len(model.gd_layers())
    if isinstance(layer, bool) or not isinstance(layer, int) or not 1 <= layer <= depth:
        # Checked before anything is drawn: a figure of another layer than asked would mislead.
        raise ValueError(f'layer must be a GD layer of {model_name!r}, 1..{depth}, got {layer!r}')
    # ---- input: normalised like the model's training data, never resized
    cfg = model.pretrained_cfg
    processor = gaussder_hf.GaussDerResNetImageProcessor(
        num_channels=model.in_chans, image_mean=list(cfg['mean']), image_std=list(cfg['std']))
    # open_image refuses an image above PIL.Image.MAX_IMAGE_PIXELS before decoding it (PIL only warns).
    image = processor(open_image(image_path), return_tensors='pt')['pixel_values'][0]
    # ---- figures
    out_dir = Path(output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    names = cfg.get('label_names')
    paths = [out_dir / 'activation_maps.png', out_dir / 'receptive_fields.png', out_dir / 'scale_space.png']
    with torch.no_grad():
        plot_activation_maps(model, image, paths[0], class_index=class_index, class_names=names)
    plot_receptive_fields(model, layer, paths[1])
    plot_scale_space(model, image, paths[2])
    return paths


def _output_dir(output_dir: str | None, out: str | None) -> str:
    if out is None:
        if output_dir is None:
            raise TypeError('visualize() needs output_dir, the folder for the figures')
        return output_dir
    if output_dir is not None and output_dir != out:
        raise ValueError(f'give the figure folder once: output_dir={output_dir!r} and its deprecated spelling '
                         f'out={out!r} differ')
    warnings.warn('out (--out) is deprecated; use output_dir (--output_dir), the name every recipe uses',
                  FutureWarning, stacklevel=3)
    return out


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--model', required=True, help="timm name, 'local-dir:FOLDER' or 'hf-hub:ORG/NAME'")
    parser.add_argument('--pretrained', action='store_true', help='load the weights of a registered name')
    parser.add_argument('--image', required=True, help='image file')
    parser.add_argument('--output_dir', '--output-dir', help='folder for the PNGs (default: figures)')
    parser.add_argument('--out', help='deprecated spelling of --output_dir')
    parser.add_argument('--layer', type=int, default=18, help='GD layer (1-based) whose receptive fields to draw')
    parser.add_argument('--class-index', type=int, help='class to show (default: the predicted one)')
    args = parser.parse_args(argv)
    if args.out is not None and args.output_dir not in (None, args.out):
        parser.error(f'--output_dir {args.output_dir!r} and its deprecated spelling --out {args.out!r} name '
                     'different folders: give --output_dir only')
    output_dir = args.output_dir or (None if args.out is not None else 'figures')
    for path in visualize(args.model, args.image, output_dir, args.pretrained, args.layer, args.class_index,
                          out=args.out):
        print(path)


if __name__ == '__main__':
    main()
