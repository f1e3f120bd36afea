"""Figures that show what a GaussDerResNet sees (paper §8, App. A.6), written as PNGs.

    python recipes/visualize.py --model local-dir:checkpoints/my_model --image shoe.png --out figures/
    python recipes/visualize.py --model gaussderresnet18_fashionmnist --pretrained --image shoe.png --layer 18

Writes activation_maps.png (class maps in fine / medium / coarse scale channels), receptive_fields.png
(composed filters of --layer) and scale_space.png (first-layer jet of the input at several sigma).
"""
from __future__ import annotations

import argparse
from pathlib import Path

import timm
import torch

import gaussder_hf
from gaussder_hf.input_pipeline import open_image
from gaussder_hf.visualize import plot_activation_maps, plot_receptive_fields, plot_scale_space


def visualize(model_name: str, image_path: str, out: str, pretrained: bool = False, layer: int = 18,
              class_index: int | None = None) -> list[Path]:
    """Writes the three figures for one image; returns their paths."""
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
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    names = cfg.get('label_names')
    paths = [out_dir / 'activation_maps.png', out_dir / 'receptive_fields.png', out_dir / 'scale_space.png']
    with torch.no_grad():
        plot_activation_maps(model, image, paths[0], class_index=class_index, class_names=names)
    plot_receptive_fields(model, layer, paths[1])
    plot_scale_space(model, image, paths[2])
    return paths


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--model', required=True, help="timm name, 'local-dir:FOLDER' or 'hf-hub:ORG/NAME'")
    parser.add_argument('--pretrained', action='store_true', help='load the weights of a registered name')
    parser.add_argument('--image', required=True, help='image file')
    parser.add_argument('--out', default='figures', help='folder for the PNGs')
    parser.add_argument('--layer', type=int, default=18, help='GD layer (1-based) whose receptive fields to draw')
    parser.add_argument('--class-index', type=int, help='class to show (default: the predicted one)')
    args = parser.parse_args(argv)
    for path in visualize(args.model, args.image, args.out, args.pretrained, args.layer, args.class_index):
        print(path)


if __name__ == '__main__':
    main()
