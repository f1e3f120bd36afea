"""Move a trained GaussDerResNet to another grid of scale channels, without retraining (App. A.4, A.5).

    # single-scale-channel training -> the six channels of the source's preset (2**-1.5 ... 2)
    python recipes/transfer.py runs/single/model checkpoints/multi
    # the denser grid of App. A.5: ratio 2**(1/4) over the same range, plus the large boundary channel
    python recipes/transfer.py runs/model runs/dense --grid 0.3535533905932738 1.189207115002721 11 \
        --boundary 2.8284271247461903
    python recipes/transfer.py SRC DST --initial_scales 0.5,1,2

All scale channels share their weights, so the trained weights serve any set of initial scales
``sigma0``. SRC is a folder written by ``gaussder_hf.save_for_hub`` (or ``local-dir:`` /
``hf-hub:``); DST gets a new ``save_for_hub`` folder with the same weights and the new
``initial_scales``. An existing checkpoint in DST is only replaced with ``--overwrite``.
"""
from __future__ import annotations

import argparse
import math
from pathlib import Path

import timm

import gaussder_hf
from gaussder_hf.hub import WEIGHTS_NAME

# The largest initial scale accepted, in pixels. The first GD layer smooths over about 6 sigma0
# pixels and the deeper ones over sigma0 times powers of the scale ratio: beyond 1024 px even the
# first layer averages over more than 6000 px, wider than any image these networks see, so such
# a channel sees a constant. A grid that gets there is a slip (a ratio of 2 over 40 channels).
MAX_INITIAL_SCALE = 1024.0


def check_initial_scales(scales) -> tuple[float, ...]:
    """Returns ``scales`` as a tuple; raises ``ValueError`` naming a scale too coarse for any image."""
    scales = (scales,) if isinstance(scales, (int, float)) else tuple(scales)
    for sigma0 in scales:
        if isinstance(sigma0, (int, float)) and sigma0 > MAX_INITIAL_SCALE:  # inf included; <= 0: the model says
            raise ValueError(f'initial scale sigma0 = {sigma0:.4g} is beyond {MAX_INITIAL_SCALE:g} pixels: a scale '
                             f'channel that coarse has no image size to work on')
    return scales


def transfer(source: str, destination: str, initial_scales=None, summary: str = '',
             overwrite: bool = False) -> gaussder_hf.GaussDerResNet:
    """Saves ``source``'s weights on ``initial_scales`` (default: its preset's six) to ``destination``."""
    if initial_scales is not None:
        initial_scales = check_initial_scales(initial_scales)
    dest = Path(destination)
    if (dest / WEIGHTS_NAME).exists() and not overwrite:
        raise FileExistsError(f'{dest / WEIGHTS_NAME} exists; pass overwrite=True (--overwrite) to replace it')
    name = source if source.startswith(('local-dir:', 'hf-hub:')) else f'local-dir:{source}'
    if name.startswith('local-dir:') and not Path(name[len('local-dir:'):]).is_dir():
        raise ValueError(f'no such checkpoint folder {name[len("local-dir:"):]!r}')
    model = timm.create_model(name, pretrained=True)
    if not isinstance(model, gaussder_hf.GaussDerResNet):
        raise ValueError(f'{source!r} is not a GaussDerResNet checkpoint')
    if initial_scales is None:  # the training grid of the source's preset
        preset = gaussder_hf.PRESETS.get((getattr(model, 'pretrained_cfg', None) or {}).get('architecture'))
        initial_scales = preset['initial_scales'] if preset else gaussder_hf.DEFAULT_INITIAL_SCALES
    scales = initial_scales
    transferred = model.with_initial_scales(scales).eval()
    transferred.pretrained_cfg = model.pretrained_cfg
    from_scales = ', '.join(f'{s:.4g}' for s in model.initial_scales)
    to_scales = ', '.join(f'{s:.4g}' for s in transferred.initial_scales)
    note = (f'Weights transferred without retraining (App. A.4/A.5 of the paper) from `{source}` '
            f'(initial scales {from_scales}) to the initial scales {to_scales}.')
    gaussder_hf.save_for_hub(transferred, dest, summary=f'{summary} {note}'.strip(),
                             canvas_size=_source_canvas_size(name))
    return transferred


def _source_canvas_size(name: str) -> dict | None:
    """The source's image-processor canvas, so that pipelines of the transfer see the same inputs."""
    from transformers import AutoImageProcessor

    location = name.split(':', 1)[1]
    try:
        processor = AutoImageProcessor.from_pretrained(location)
    except OSError:  # a checkpoint without preprocessor_config.json (e.g. one saved by timm alone)
        return None
    return getattr(processor, 'canvas_size', None)


def _scales(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(v) for v in text.split(','))
    except ValueError:
        raise argparse.ArgumentTypeError(f'initial scales are comma-separated numbers, got {text!r}') from None


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog='\n'.join(__doc__.split('\n')[1:]))
    parser.add_argument('source', help="checkpoint folder, 'local-dir:FOLDER' or 'hf-hub:ORG/NAME'")
    parser.add_argument('destination', help='folder for the transferred checkpoint')
    scales = parser.add_mutually_exclusive_group()
    scales.add_argument('--initial_scales', '--initial-scales', type=_scales, help='e.g. 0.5,0.7071,1,1.4142,2')
    scales.add_argument('--grid', nargs=3, type=float, metavar=('FIRST', 'RATIO', 'COUNT'),
                        help='geometric grid FIRST * RATIO**i, i < COUNT')
    parser.add_argument('--boundary', type=float, action='append', default=[],
                        help='extra boundary channel(s) appended to --grid (App. A.5)')
    parser.add_argument('--summary', default='', help='text for the model card (how the source was trained)')
    parser.add_argument('--overwrite', action='store_true', help='replace a checkpoint already in DESTINATION')
    args = parser.parse_args(argv)
    initial_scales = args.initial_scales
    if args.grid:
        first, ratio, count = args.grid
        if not math.isfinite(count) or count != int(count) or count < 1:
            parser.error(f'--grid COUNT must be a whole number >= 1, got {count}')
        if not (math.isfinite(ratio) and ratio > 0):
            parser.error(f'--grid RATIO must be a finite number > 0, got {ratio}')
        if first > 0:
            # In logarithms: the largest scale of an absurd grid may not even be a float.
            log_largest = math.log(first) + max(0.0, (count - 1) * math.log(ratio))
            if log_largest > math.log(MAX_INITIAL_SCALE) + 1e-12:  # 1024 itself passes despite rounding
                decades = log_largest / math.log(10)
                largest = f'{math.exp(log_largest):.4g}' if log_largest < 700 else f'10^{decades:.0f}'
                parser.error(f'--grid {first:g} {ratio:g} {int(count)} reaches sigma0 = {largest}, beyond '
                             f'{MAX_INITIAL_SCALE:g} pixels, which no image size can use; use fewer channels or a '
                             f'smaller ratio')
        initial_scales = gaussder_hf.geometric_scales(first, ratio, int(count))
    if args.boundary:
        if initial_scales is None:
            parser.error('--boundary needs --grid or --initial_scales')
        initial_scales = tuple(initial_scales) + tuple(args.boundary)
    model = transfer(args.source, args.destination, initial_scales, args.summary, args.overwrite)
    print(f'wrote {args.destination} (initial scales {", ".join(f"{s:.4g}" for s in model.initial_scales)})')


if __name__ == '__main__':
    main()
