"""Channels-last against plain maps inside whole networks: the measurement behind ``maps_layout='auto'``.

For each network and each ``BATCHxSIDE`` shape, an inference (eval, ``torch.no_grad``) and a training
step (forward, cross-entropy, backward) with the maps laid out plain, channels-last, and plain with
each mixing convolution on a channels-last copy (``GaussDerResNet.set_maps_layout``), cases
interleaved, median of ``--repeats`` after one warm-up. Prints the times, each against plain, and
the layout ``'auto'`` picks for that input.

Run: ``python benchmarks/maps_layout.py`` (see ``--help``; ``--device cuda`` on a GPU).
"""
from __future__ import annotations

import argparse

import common
import torch
import torch.nn.functional as F

LAYOUTS = ('contiguous', 'channels_last', 'channels_last_mix')


def _parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--models', nargs='+',
                        default=['gaussderresnet10_fashionmnist', 'gaussderresnet18_fashionmnist',
                                 'gaussderresnet18_stl10'])
    parser.add_argument('--shapes', type=common.batch_and_side, nargs='+',
                        default=[(1, 96), (16, 96), (4, 192), (1, 512)],
                        help='BATCHxSIDE input shapes (default: 1x96 16x96 4x192 1x512)')
    parser.add_argument('--modes', nargs='+', choices=['infer', 'train'], default=['infer', 'train'])
    parser.add_argument('--scales', type=common.scale_count, default=1, help='first N scale channels of the preset')
    common.add_arguments(parser, threads=1, repeats=3)
    return parser.parse_args(argv)


def _call(model, x, y, mode):
    if mode == 'infer':
        with torch.no_grad():
            model(x)
    else:
        model.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()


def _auto_layout(model, x, mode: str) -> str:
    """Returns the layout 'auto' gives the maps of ``x`` in ``mode``."""
    model.set_maps_layout('auto')
    with torch.set_grad_enabled(mode == 'train'):  # inference records no gradient
        return model._layout_for(x)


def main(argv=None) -> None:
    args = _parse_args(argv)
    device = common.setup(args)
    print(f'# torch {torch.__version__}, {device}, {torch.get_num_threads()} threads; {args.scales} scale channel(s), '
          f'median of {args.repeats} after 1 warm-up, layouts interleaved')
    header = (f'{"network":30s} {"mode":5s} {"shape":>8s} | {"plain ms":>9s} {"chan-last ms":>12s} '
              f'{"last/plain":>10s} {"mix ms":>8s} {"mix/plain":>9s} | auto')
    print(header)
    print('-' * len(header))
    for name in args.models:
        preset, model = common.preset_model(name, args.scales, device)
        for batch, side in args.shapes:
            x = torch.rand(batch, preset['in_chans'], side, side, device=device)
            y = torch.randint(0, model.num_classes, (batch,), device=device)
            for mode in args.modes:
                model.train(mode == 'train')
                auto = _auto_layout(model, x, mode)

                def case(layout, mode=mode, x=x, y=y):
                    model.set_maps_layout(layout)
                    _call(model, x, y, mode)

                calls = {layout: (lambda layout=layout: case(layout)) for layout in LAYOUTS}
                t = common.medians(common.round_robin(calls, args.repeats, device=device))
                model.set_maps_layout('auto')
                print(f'{name:30s} {mode:5s} {f"{batch}x{side}":>8s} | {1e3 * t["contiguous"]:9.1f} '
                      f'{1e3 * t["channels_last"]:12.1f} {t["channels_last"] / t["contiguous"]:10.2f} '
                      f'{1e3 * t["channels_last_mix"]:8.1f} {t["channels_last_mix"] / t["contiguous"]:9.2f} | {auto}',
                      flush=True)


if __name__ == '__main__':
    main()
