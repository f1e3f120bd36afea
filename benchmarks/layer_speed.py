"""Times a Gaussian derivative layer against its floors: forward + backward, one run, one table.

The layer (``GaussDerConv``, and ``DSGaussDerConv`` alongside) is timed at several scales and
compared with what the same amount of channel mixing costs on its own, measured in the same run:

* ``conv1x1``: ``F.conv2d`` with a 1x1 kernel from ``C_in * J`` to ``C_out`` channels (the
  mixing the layer has to do once the jet exists), same pixels;
* ``gemm``: the same mixing as a plain batched matrix product (``torch.matmul`` + bias);
* ``dense``: the naive form, :func:`gaussder_hf.layers.dense_reference` (one convolution with
  the composed filter, whose cost grows with sigma**2). It is very slow at large sigma, so it is
  run once, at a smaller batch, and scaled to the full batch; where even that would take longer
  than ``--dense-budget`` seconds it is extrapolated from the largest measured sigma by the
  filter area. Both are said in the output.

Every timed step is ``loss = out.sum(); loss.backward()`` with gradients to the input and to the
weights. Kernels and smoothing matrices are cached on their first call, so every case is run
``--warmup`` times before timing; the cases are then timed round-robin (``--repeats`` rounds,
which spreads slow drifts of the machine over all cases) and the median is reported.

Run: ``python benchmarks/layer_speed.py`` (see ``--help``; ``--device cuda`` on a GPU).
"""
from __future__ import annotations

import argparse
import os
import platform

import common
import torch
import torch.nn.functional as F

from gaussder_hf.kernels import stencil_radius, truncation_radius
from gaussder_hf.layers import DSGaussDerConv, GaussDerConv, dense_reference


def _parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--batch', type=int, default=8)
    parser.add_argument('--channels', type=int, default=64, help='input channels (and output, unless --out-channels)')
    parser.add_argument('--out-channels', type=int, default=None)
    parser.add_argument('--size', type=int, default=96, help='image height and width')
    parser.add_argument('--sigmas', type=float, nargs='+', default=[0.7, 2.0, 6.0, 16.0, 32.0])
    parser.add_argument('--jet-order', type=int, default=2)
    parser.add_argument('--zero-order', action='store_true')
    parser.add_argument('--eps', type=float, default=0.01)
    parser.add_argument('--dtype', choices=['float32', 'float64'], default='float32')
    parser.add_argument('--dense-batch', type=int, default=1, help='batch of the dense reference run')
    parser.add_argument('--dense-budget', type=float, default=60.0,
                        help='seconds a dense run may take; longer ones are extrapolated instead')
    parser.add_argument('--no-dense', action='store_true', help='skip the dense reference')
    parser.add_argument('--no-ds', action='store_true', help='skip DSGaussDerConv')
    common.add_arguments(parser, repeats=7, warmup=2)
    return parser.parse_args(argv)


def _step(fn, inputs):
    """Runs one forward + backward; clears the gradients of ``inputs`` first."""
    for tensor in inputs:
        tensor.grad = None
    fn().sum().backward()


def main(argv=None) -> None:
    args = _parse_args(argv)
    device = common.setup(args)
    torch.manual_seed(0)
    dtype = getattr(torch, args.dtype)
    c_in, c_out = args.channels, args.out_channels or args.channels
    batch, size = args.batch, args.size
    layer_kw = dict(jet_order=args.jet_order, zero_order=args.zero_order, eps=args.eps, dtype=dtype, device=device)
    gd = GaussDerConv(c_in, c_out, **layer_kw)
    ds = DSGaussDerConv(c_in, c_out, **layer_kw)
    jet_size = gd.jet_size
    x = torch.randn(batch, c_in, size, size, dtype=dtype, device=device, requires_grad=True)

    # Floors: the channel mix alone, on an input that already has C_in * J channels.
    factory = dict(dtype=dtype, device=device, requires_grad=True)
    mixed = torch.randn(batch, c_in * jet_size, size, size, **factory)
    w_conv = torch.randn(c_out, c_in * jet_size, 1, 1, **factory)
    w_gemm = torch.randn(c_out, c_in * jet_size, **factory)
    b = torch.zeros(c_out, **factory)
    cases = {
        'conv1x1': (lambda: F.conv2d(mixed, w_conv, b), [mixed, w_conv, b]),
        'gemm': (lambda: torch.matmul(w_gemm, mixed.view(batch, c_in * jet_size, -1)) + b.view(1, -1, 1),
                 [mixed, w_gemm, b]),
    }
    for sigma in args.sigmas:
        cases[f'gd@{sigma:g}'] = ((lambda s=sigma: gd(x, s)), [x, *gd.parameters()])
        if not args.no_ds:
            cases[f'ds@{sigma:g}'] = ((lambda s=sigma: ds(x, s)), [x, *ds.parameters()])

    where = (torch.cuda.get_device_name(device) if device.type == 'cuda' else
             f'{platform.processor() or platform.machine()}, {os.cpu_count()} cores')
    print(f'# {where}, torch {torch.__version__}, {torch.get_num_threads()} threads, {args.dtype}'
          + (f', TF32 matmul {torch.backends.cuda.matmul.allow_tf32} / cuDNN {torch.backends.cudnn.allow_tf32}'
             if device.type == 'cuda' else ''))
    print(f'# batch {batch}, {c_in}->{c_out} channels, {size}x{size}, jet_order={args.jet_order} '
          f'(J={jet_size}), zero_order={args.zero_order}, eps={args.eps}; forward + backward '
          f'(loss = out.sum(), grads to input and weights); median of {args.repeats} round-robin '
          f'repeats after {args.warmup} warm-up runs')

    steps = {name: (lambda fn=fn, inputs=inputs: _step(fn, inputs)) for name, (fn, inputs) in cases.items()}
    samples = common.round_robin(steps, args.repeats, args.warmup, device)
    ms = {name: 1e3 * seconds for name, seconds in common.medians(samples).items()}
    spread = {name: 1e3 * (max(values) - min(values)) for name, values in samples.items()}

    dense_ms: dict[float, tuple[float, str]] = {}
    if not args.no_dense:
        dense_ms = _time_dense(gd, args, dtype)

    conv, gemm = ms['conv1x1'], ms['gemm']
    print()
    print(f'floor conv1x1 ({c_in * jet_size}->{c_out}, 1x1): {conv:8.1f} ms  '
          f'(min..max {spread["conv1x1"]:.1f} ms apart)')
    print(f'floor gemm    ({c_out}x{c_in * jet_size} @ {c_in * jet_size}x{size * size}, x{batch}): '
          f'{gemm:8.1f} ms  (min..max {spread["gemm"]:.1f} ms apart)')
    print()
    header = (f'{"sigma":>6} {"radius":>6} | {"GD ms":>8} {"GD/conv":>8} {"GD/gemm":>8} |'
              + ('' if args.no_ds else f' {"DS ms":>8} {"DS/conv":>8} |')
              + ('' if args.no_dense else f' {"dense ms":>10} {"dense/GD":>9}  note'))
    print(header)
    print('-' * len(header))
    for sigma in args.sigmas:
        g = ms[f'gd@{sigma:g}']
        row = f'{sigma:6g} {truncation_radius(sigma, args.eps):6d} | {g:8.1f} {g / conv:8.2f} {g / gemm:8.2f} |'
        if not args.no_ds:
            d = ms[f'ds@{sigma:g}']
            row += f' {d:8.1f} {d / conv:8.2f} |'
        if not args.no_dense:
            value, note = dense_ms[sigma]
            row += f' {value:10.0f} {value / g:9.1f}  {note}'
        print(row)
    print()
    for label, prefix in (('GD', 'gd'), ('DS', 'ds')):
        if prefix == 'ds' and args.no_ds:
            continue
        times = [ms[f'{prefix}@{s:g}'] for s in args.sigmas]
        line = (f'{label} spread over sigma {min(args.sigmas):g}..{max(args.sigmas):g}: '
                f'max/min {max(times) / min(times):.2f}')
        if 0.7 in args.sigmas and 16.0 in args.sigmas:
            change = ms[f'{prefix}@16'] / ms[f'{prefix}@0.7'] - 1.0
            line += f'; sigma 0.7 -> 16: {100 * change:+.0f}%'
        print(line)
    gd_times = [ms[f'gd@{s:g}'] for s in args.sigmas]
    print(f'GD vs conv1x1 floor: {min(gd_times) / conv:.2f}x .. {max(gd_times) / conv:.2f}x '
          f'(target: flat within +-30% from sigma 0.7 to 16, and <= 2x the 1x1 conv)')


def _time_dense(gd: GaussDerConv, args: argparse.Namespace, dtype: torch.dtype) -> dict[float, tuple[float, str]]:
    """Times ``dense_reference`` once per sigma at ``--dense-batch``, scaled to the full batch."""
    dense_batch = min(args.dense_batch, args.batch)
    scale = args.batch / dense_batch
    x = torch.randn(dense_batch, gd.in_channels, args.size, args.size, dtype=dtype, device=gd.weight.device,
                    requires_grad=True)
    inputs = [x, *gd.parameters()]
    result: dict[float, tuple[float, str]] = {}
    last = None  # (sigma, filter area, seconds at dense_batch) of the largest measured sigma
    for sigma in sorted(args.sigmas):
        area = (2 * (truncation_radius(sigma, args.eps) + stencil_radius(args.jet_order)) + 1) ** 2
        predicted = None if last is None else last[2] * area / last[1]
        if predicted is not None and predicted > args.dense_budget:
            result[sigma] = (1e3 * predicted * scale,
                             f'~ extrapolated from sigma {last[0]:g} by filter area (x{area / last[1]:.1f}), '
                             f'x{scale:g} batch')
            continue
        # Warm the composed-kernel computation on a tiny input, then one timed run.
        _step(lambda: dense_reference(gd, x[:, :, :4, :4].detach(), sigma), list(gd.parameters()))
        seconds = common.time_call(lambda: _step(lambda: dense_reference(gd, x, sigma), inputs), x.device)
        last = (sigma, area, seconds)
        note = '1 run' + (f' at batch {dense_batch}, x{scale:g}' if scale != 1 else '')
        result[sigma] = (1e3 * seconds * scale, note)
    return result


if __name__ == '__main__':
    main()
