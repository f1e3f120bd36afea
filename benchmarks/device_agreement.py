"""CUDA results against CPU results: GD layers and every preset, forward and backward.

The same weights and inputs (built on the CPU with one seed, then copied) are run on the CPU and
on ``--device`` in these precisions:

* ``fp32``: float32 with TF32 switched off (``torch.backends.{cuda.matmul,cudnn}.allow_tf32``);
* ``default``: float32 with PyTorch's own defaults, TF32 off for matrix products and on for cuDNN
  convolutions: what a user gets who sets nothing; the CPU reference is CPU float32;
* ``tf32``: float32 with TF32 allowed for matrix products and convolutions (what a user gets
  with ``torch.set_float32_matmul_precision('high')``; cuDNN convolutions use TF32 by default);
  the CPU has no TF32, so its reference is CPU float32;
* ``bf16``: float32 weights under ``torch.autocast(device, dtype=torch.bfloat16)``, against the
  CPU under bfloat16 autocast.

Compared: the output and the gradients of ``(out * probe).sum()`` with respect to the input and
to every parameter (``probe`` a fixed random tensor), for ``bf16`` the output only (its
gradients are dominated by bfloat16 rounding on either device). The error of a case is the worst
relative L2 error ``||device - cpu|| / ||cpu||`` over these tensors.

What "equal within tolerance" means: two correct float32 implementations differ by about as much
as each differs from the exact result, and that depends on the case's conditioning (a GD layer
whose sigma is large next to the image differentiates an almost flat image: its weight
gradients lose digits to cancellation on any device). So each case also runs on the CPU in
float64, and ``cond`` is the CPU float32 error against it. A ``fp32`` / ``tf32`` row passes if
its error is at most ``max(tol, 10 * cond)``; a ``bf16`` row if it is at most ``--tol-bf16``.
The exit status is 1 if any row fails.

Layers: ``GaussDerConv`` and ``DSGaussDerConv`` at several sigmas. Presets: each
``gaussderresnet18_*`` / ``dsgaussderresnet18_*`` with its first ``--scales`` scale channels at
its training input size, once in eval mode (running BN statistics) and once in train mode with
scale-channel dropout off (dropout draws differ between the devices' generators).

Run on a GPU: ``python benchmarks/device_agreement.py`` (``--device cuda``, the default).
``--device cpu`` is a dry run on machines without a GPU (the CPU against itself: every error is
0); ``--reference float64`` compares every precision with CPU float64 instead (accuracy rather
than agreement).
"""
from __future__ import annotations

import argparse
import contextlib
import sys
import time

import common
import timm
import torch

import gaussder_hf  # noqa: F401  (registers the presets with timm)
from gaussder_hf.layers import DSGaussDerConv, GaussDerConv
from gaussder_hf.presets import DATASET_INFO, PRESETS, get_preset


def _parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--sigmas', type=float, nargs='+', default=[0.7, 2.0, 6.0, 16.0])
    parser.add_argument('--layer-size', type=int, default=48, help='image size of the layer cases')
    parser.add_argument('--presets', nargs='+', default=[p for p in PRESETS if p.startswith(('gauss', 'dsgauss'))
                                                         and '18_' in p])
    parser.add_argument('--scales', type=int, default=2, help='first N scale channels of each preset')
    parser.add_argument('--size', type=int, default=None, help='preset input size (default: its training size)')
    parser.add_argument('--batch', type=int, default=2)
    parser.add_argument('--precisions', nargs='+', default=['fp32', 'default', 'tf32', 'bf16'],
                        choices=['fp32', 'default', 'tf32', 'bf16'])
    parser.add_argument('--tol-fp32', type=float, default=1e-4)
    parser.add_argument('--tol-tf32', type=float, default=2e-2, help='tolerance of the tf32 and default rows')
    parser.add_argument('--tol-bf16', type=float, default=5e-2)
    parser.add_argument('--reference', choices=['same', 'float64'], default='same',
                        help='compare with the CPU in the same precision (default) or with CPU float64')
    parser.add_argument('--no-layers', action='store_true')
    parser.add_argument('--no-presets', action='store_true')
    common.add_arguments(parser, threads=None, device='cuda', repeats=None)  # a comparison, not a timing: no --repeats
    return parser.parse_args(argv)


@contextlib.contextmanager
def _precision(device: torch.device, precision: str):
    """float32 with TF32 off, on, or on for convolutions alone (PyTorch's defaults), or bfloat16
    autocast, restoring the global flags after."""
    saved = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    torch.backends.cuda.matmul.allow_tf32 = precision == 'tf32'
    torch.backends.cudnn.allow_tf32 = precision in ('tf32', 'default')
    try:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == 'bf16'):
            yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def relative_error(value: torch.Tensor, reference: torch.Tensor) -> float:
    """``||value - reference|| / ||reference||`` in float64 on the CPU (0 when both are zero)."""
    value, reference = value.detach().double().cpu(), reference.detach().double().cpu()
    norm = reference.norm().item()
    difference = (value - reference).norm().item()
    if norm == 0.0:
        return 0.0 if difference == 0.0 else float('inf')
    return difference / norm


def _probe(shape) -> torch.Tensor:
    """The fixed random weights of the output in the loss: the same for every run of a case."""
    return torch.randn(shape, generator=torch.Generator().manual_seed(0))


def _outputs_and_grads(run, module: torch.nn.Module, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """Returns the output and the gradients of ``(out * probe).sum()`` by name."""
    module.zero_grad(set_to_none=True)
    x = x.detach().clone().requires_grad_(True)
    out = run(module, x)
    (out.float() * _probe(out.shape).to(out.device)).sum().backward()
    result = {'output': out.detach()}
    result['grad input'] = x.grad.detach()
    for name, parameter in module.named_parameters():
        if parameter.grad is not None:
            result[f'grad {name}'] = parameter.grad.detach()
    return result


def _run(make_module, weights, run, x, device: torch.device, precision: str, dtype=torch.float32):
    module = make_module().to(device=device, dtype=dtype)
    module.load_state_dict(weights)
    with _precision(device, precision):
        return _outputs_and_grads(run, module, x.to(device=device, dtype=dtype))


def _worst(got: dict, reference: dict, names) -> tuple[float, str]:
    errors = {name: relative_error(got[name], reference[name]) for name in names}
    worst = max(errors, key=errors.get)
    return errors[worst], worst


def compare(make_module, x: torch.Tensor, run, device: torch.device, precisions, reference: str = 'same'):
    """Returns ``cond`` and, per precision, ``(error, worst tensor)`` of ``device`` against the CPU.

    ``cond`` is the CPU float32 error against CPU float64. ``reference='same'`` compares with the
    CPU in the same precision (CPU float32 for ``tf32``), ``'float64'`` with CPU float64.
    """
    cpu = torch.device('cpu')
    torch.manual_seed(0)
    weights = make_module().state_dict()
    exact = _run(make_module, weights, run, x, cpu, 'fp32', torch.float64)
    cpu32 = _run(make_module, weights, run, x, cpu, 'fp32')
    cond, _ = _worst(cpu32, exact, exact)
    results = {}
    for precision in precisions:
        got = _run(make_module, weights, run, x, device, precision)
        if reference == 'float64':
            base = exact
        elif precision == 'bf16':
            base = _run(make_module, weights, run, x, cpu, 'bf16')
        else:
            base = cpu32
        names = ['output'] if precision == 'bf16' else list(exact)
        results[precision] = _worst(got, base, names)
    return cond, results


def _layer_cases(args):
    for layer_class in (GaussDerConv, DSGaussDerConv):
        for sigma in args.sigmas:
            torch.manual_seed(1)
            # Positive inputs with an offset, like post-ReLU maps: the hard case for low precision.
            x = torch.rand(args.batch, 8, args.layer_size, args.layer_size) + 1.0

            def make(layer_class=layer_class):
                torch.manual_seed(2)
                return layer_class(8, 8)

            yield f'{layer_class.__name__} sigma {sigma:g}', make, x, (lambda m, inp, s=sigma: m(inp, s))


def _preset_cases(args):
    for name in args.presets:
        preset = get_preset(name)
        info = DATASET_INFO[name.rsplit('_', 1)[1]]
        channels, height, width = info['input_size']
        if args.size is not None:
            height = width = args.size
        torch.manual_seed(1)
        x = torch.rand(args.batch, channels, height, width)
        scales = tuple(preset['initial_scales'][:args.scales])
        for mode in ('eval', 'train'):
            def make(name=name, scales=scales, mode=mode):
                torch.manual_seed(2)
                model = timm.create_model(name, initial_scales=scales, scale_dropout=0.0)
                return model.train(mode == 'train')

            yield f'{name} {mode}', make, x, (lambda m, inp: m(inp))


def main(argv=None) -> int:
    args = _parse_args(argv)
    device = common.setup(args, cuda_hint=' (use --device cpu for a dry run of the comparisons on the CPU)')
    tolerance = {'fp32': args.tol_fp32, 'default': args.tol_tf32, 'tf32': args.tol_tf32, 'bf16': args.tol_bf16}
    name = torch.cuda.get_device_name(device) if device.type == 'cuda' else 'CPU'
    print(f'torch {torch.__version__}, timm {timm.__version__}; {args.device} ({name}) against the CPU; '
          f'worst relative L2 error over the output and all gradients (bf16: output only)')
    cases = []
    if not args.no_layers:
        cases += list(_layer_cases(args))
    if not args.no_presets:
        cases += list(_preset_cases(args))
    print(f'reference: {"CPU in the same precision" if args.reference == "same" else "CPU float64"}; '
          'pass: fp32/default/tf32 error <= max(tol, 10 cond), bf16 error <= tol; tol: '
          + ', '.join(f'{p} {tolerance[p]:g}' for p in args.precisions))
    print(f'{"case":40s} {"cond":>8s}   ' + '   '.join(f'{p:>4s} {"error":>8s}     ' for p in args.precisions)
          + 'worst tensor')
    failures = 0
    for label, make, x, run in cases:
        start = time.perf_counter()
        cond, results = compare(make, x, run, device, args.precisions, args.reference)
        cells = []
        for precision in args.precisions:
            error, _ = results[precision]
            bound = tolerance[precision] if precision == 'bf16' or args.reference == 'float64' else \
                max(tolerance[precision], 10 * cond)
            ok = error <= bound
            failures += not ok
            cells.append(f'{precision:>4s} {error:8.1e} {"PASS" if ok else "FAIL"}')
        worst_precision = max(results, key=lambda p: results[p][0])
        print(f'{label:40s} {cond:8.1e}   ' + '   '.join(cells)
              + f'  {worst_precision}: {results[worst_precision][1]} ({time.perf_counter() - start:.1f} s)', flush=True)
    total = len(cases) * len(args.precisions)
    print(f'\n{total - failures} of {total} comparisons within tolerance'
          + (f'; {failures} FAILED' if failures else ''))
    return 1 if failures else 0


if __name__ == '__main__':
    sys.exit(main())
