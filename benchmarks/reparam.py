"""Inference with the batch normalisations folded into the layers before them, against the model as trained.

For each network and ``BATCHxSIDE`` shape: eval-mode inference of the model as built, of
``timm.utils.reparameterize_model(model)`` (the residual blocks folded, what timm's
``validate.py --reparam`` runs) and of the model after its own ``reparameterize()`` (every batch
normalisation folded), cases interleaved, median of ``--repeats`` after one warm-up, and the largest
difference of their logits from the model's.

Run: ``python benchmarks/reparam.py`` (see ``--help``; ``--device cuda`` on a GPU).
"""
from __future__ import annotations

import argparse
import copy

import common
import timm
import torch
from timm.utils.model import reparameterize_model


def _parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--models', nargs='+',
                        default=['gaussderresnet10_fashionmnist', 'gaussderresnet18_fashionmnist'])
    parser.add_argument('--shapes', type=common.batch_and_side, nargs='+', default=[(1, 96), (16, 96), (1, 512)],
                        help='BATCHxSIDE input shapes (default: 1x96 16x96 1x512)')
    parser.add_argument('--scales', type=common.scale_count, default=1, help='first N scale channels of the preset')
    common.add_arguments(parser, threads=1, repeats=3)
    return parser.parse_args(argv)


def main(argv=None) -> None:
    args = _parse_args(argv)
    device = common.setup(args)
    print(f'# torch {torch.__version__}, timm {timm.__version__}, {device}, {torch.get_num_threads()} threads; '
          f'inference, {args.scales} scale channel(s), median of {args.repeats} after 1 warm-up, cases interleaved')
    header = (f'{"network":30s} {"shape":>8s} | {"as built ms":>11s} {"timm reparam":>12s} {"all folded":>10s} | '
              f'{"timm / built":>12s} {"folded / built":>14s} | max |logit diff|')
    print(header)
    print('-' * len(header))
    for name in args.models:
        preset, model = common.preset_model(name, args.scales, device)
        model.eval()
        folded = copy.deepcopy(model)
        folded.reparameterize()
        cases = {'built': model, 'timm': reparameterize_model(model), 'folded': folded}
        for batch, side in args.shapes:
            x = torch.rand(batch, preset['in_chans'], side, side, device=device)
            with torch.no_grad():
                logits = {key: net(x) for key, net in cases.items()}
                calls = {key: (lambda net=net: net(x)) for key, net in cases.items()}
                t = common.medians(common.round_robin(calls, args.repeats, warmup=0, device=device))
            diff = max((logits[key] - logits['built']).abs().max().item() for key in ('timm', 'folded'))
            print(f'{name:30s} {f"{batch}x{side}":>8s} | {1e3 * t["built"]:11.1f} {1e3 * t["timm"]:12.1f} '
                  f'{1e3 * t["folded"]:10.1f} | {t["timm"] / t["built"]:12.2f} {t["folded"] / t["built"]:14.2f} | '
                  f'{diff:.2e}', flush=True)


if __name__ == '__main__':
    main()
