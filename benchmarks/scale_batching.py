"""All scale channels of a GD layer in one batched pass vs one after another.

A GaussDerResNet runs the same layer at S sigmas, one per scale channel. Our smoothing
operators are ``(H + 2) x H`` matrices whatever sigma is, so the S channels can share one
batched pass with no padding of kernels to the widest support: a broadcast batched GEMM per
axis with the S matrices stacked, then one grouped 3x3 convolution (groups = S) whose S weight
groups are the layer's mixing weights at each sigma. The sequential form is the layer's own
``forward`` called S times (what ``GaussDerResNet`` does).

Forward + backward (``loss = out.sum()``), median of ``--repeats`` rounds after a warm-up,
both forms timed round-robin in one run; outputs compared.

Run: ``python benchmarks/scale_batching.py`` (``--help``).
"""
from __future__ import annotations

import argparse

import common
import torch
import torch.nn.functional as F

from gaussder_hf.kernels import smoothing_matrix, stencil_radius
from gaussder_hf.layers import GaussDerConv
from gaussder_hf.presets import DEFAULT_INITIAL_SCALES


def _parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--batch', type=int, default=8)
    parser.add_argument('--channels', type=int, default=24, help='C_in = C_out')
    parser.add_argument('--size', type=int, default=72)
    parser.add_argument('--layer', type=int, default=5, help='sigma = initial scale * 1.13**(layer - 1)')
    common.add_arguments(parser, device=None, repeats=7)  # the CPU's batched matrix products
    return parser.parse_args(argv)


def sequential(layer: GaussDerConv, x: torch.Tensor, sigmas) -> torch.Tensor:
    """``x`` is ``(S, B, C, H, W)``: scale channel s at ``sigmas[s]``."""
    return torch.stack([layer(x[s], sigma) for s, sigma in enumerate(sigmas)])


def batched(layer: GaussDerConv, x: torch.Tensor, sigmas) -> torch.Tensor:
    """The same as :func:`sequential`, in one pass over all scale channels."""
    channels, batch, c_in, height, width = x.shape
    pad = stencil_radius(layer.jet_order)
    factory = dict(device=x.device, dtype=x.dtype)
    rows = torch.stack([smoothing_matrix(s, layer.eps, height, pad=pad, **factory) for s in sigmas])
    cols = torch.stack([smoothing_matrix(s, layer.eps, width, pad=pad, **factory) for s in sigmas])
    smoothed = x @ cols[:, None, None].mT                        # (S, B, C, H, W + 2 pad)
    smoothed = rows[:, None, None] @ smoothed                    # (S, B, C, H + 2 pad, W + 2 pad)
    smoothed = smoothed.transpose(0, 1).reshape(batch, channels * c_in, height + 2 * pad, width + 2 * pad)
    filters = torch.cat([
        layer.difference_filters(layer.mixing_weight(s).view(layer.out_channels, c_in, layer.jet_size))
        for s in sigmas])                                        # (S * C_out, C_in, 3, 3)
    bias = None if layer.bias is None else layer.bias.repeat(channels)
    out = F.conv2d(smoothed, filters, bias, groups=channels)     # (B, S * C_out, H, W)
    return out.view(batch, channels, layer.out_channels, height, width).transpose(0, 1)


def _step(fn, layer, x, sigmas) -> None:
    """One forward + backward (``loss = out.sum()``), the gradients cleared first."""
    layer.zero_grad(set_to_none=True)
    x.grad = None
    fn(layer, x, sigmas).sum().backward()


def main(argv=None) -> None:
    args = _parse_args(argv)
    common.setup(args)
    torch.manual_seed(0)
    sigmas = [s * 1.13 ** (args.layer - 1) for s in DEFAULT_INITIAL_SCALES]
    layer = GaussDerConv(args.channels, args.channels)
    x = torch.rand(len(sigmas), args.batch, args.channels, args.size, args.size, requires_grad=True)
    with torch.no_grad():
        torch.testing.assert_close(batched(layer, x, sigmas), sequential(layer, x, sigmas), rtol=1e-4, atol=1e-4)
    steps = {name: (lambda fn=fn: _step(fn, layer, x, sigmas)) for name, fn in
             (('sequential', sequential), ('batched', batched))}
    median = common.medians(common.round_robin(steps, args.repeats, warmup=1))
    print(f'torch {torch.__version__}, {torch.get_num_threads()} threads; GaussDerConv {args.channels}->'
          f'{args.channels}, batch {args.batch}, {args.size}x{args.size}, {len(sigmas)} scale channels at sigma '
          + ', '.join(f'{s:.2f}' for s in sigmas) + f'; forward + backward, median of {args.repeats}; outputs equal')
    for name, seconds in median.items():
        print(f'  {name:10s} {1000 * seconds:8.1f} ms   x{median["sequential"] / seconds:.2f} vs sequential')


if __name__ == '__main__':
    main()
