"""torch.compile and bfloat16 autocast vs eager float32, on a whole GaussDerResNet.

One model, one input, three ways of running it, timed round-robin in one run (median of
``--repeats`` rounds after the untimed warm-up, which for the compiled cases includes
compilation):

* ``eager fp32``: the plain module;
* ``compiled fp32``: ``torch.compile(model, fullgraph=True)`` with the default Inductor backend
  (one graph for the whole forward; compile time is printed separately);
* ``compiled, no layout opt`` (with ``--no-layout-opt-case``): the same with Inductor's
  channels-last layout optimisation switched off;
* ``eager bf16``: the plain module under ``torch.autocast(device, dtype=torch.bfloat16)``; the
  GD layers keep their jet in float32 and mix in bfloat16 (see ``gaussder_hf.layers``).

Inference (eval, ``torch.no_grad``) and training (cross-entropy forward + backward + AdamW
step) images/s, and the agreement of each case's eval logits with eager float32 (max abs and
relative L2 error, and top-1 agreement).

Run: ``python benchmarks/compile_speed.py`` (``--help``; ``--device cuda`` on a GPU).
"""
from __future__ import annotations

import argparse
import statistics

import common
import timm
import torch
import torch.nn.functional as F

import gaussder_hf  # noqa: F401  (registers the models)
from gaussder_hf.presets import get_preset


def _parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--model', default='gaussderresnet10_fashionmnist')
    parser.add_argument('--scales', type=int, default=6, help='use the first N scale channels of the preset')
    parser.add_argument('--size', type=int, default=72, help='input height = width')
    parser.add_argument('--batch', type=int, default=8)
    parser.add_argument('--no-train', action='store_true', help='time inference only')
    parser.add_argument('--no-layout-opt-case', action='store_true',
                        help="also time torch.compile with options={'layout_optimization': False} (one more compile)")
    common.add_arguments(parser, repeats=5, warmup=2)  # compilation happens in the warm-up runs
    return parser.parse_args(argv)


class _Case:
    def __init__(self, label, model, forward, x, y, autocast_dtype=None):
        self.label, self.model, self.forward, self.x, self.y = label, model, forward, x, y
        self.autocast_dtype = autocast_dtype
        self.optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
        self.times = {'infer': [], 'train': []}
        self.compile_s = {}

    def _autocast(self):
        return torch.autocast(self.x.device.type, dtype=self.autocast_dtype, enabled=self.autocast_dtype is not None)

    def logits(self) -> torch.Tensor:
        self.model.eval()
        with torch.no_grad(), self._autocast():
            return self.forward(self.x).float()

    def run(self, kind: str) -> None:
        """One inference call or one training step (cross-entropy forward + backward + AdamW step)."""
        if kind == 'infer':
            self.logits()
        else:
            self.model.train()
            self.optimizer.zero_grad(set_to_none=True)
            with self._autocast():
                loss = F.cross_entropy(self.forward(self.x).float(), self.y)
            loss.backward()
            self.optimizer.step()


def main(argv=None) -> None:
    args = _parse_args(argv)
    device = common.setup(args)
    torch.manual_seed(0)
    initial_scales = get_preset(args.model)['initial_scales'][:args.scales]
    in_chans = get_preset(args.model).get('in_chans', 1)
    x = torch.rand(args.batch, in_chans, args.size, args.size, device=args.device)
    y = torch.randint(0, 10, (args.batch,), device=args.device)

    def fresh():
        torch.manual_seed(0)
        return timm.create_model(args.model, initial_scales=initial_scales).to(args.device)

    eager, compiled_model, bf16 = fresh(), fresh(), fresh()
    cases = [
        _Case('eager fp32', eager, eager, x, y),
        _Case('compiled fp32', compiled_model, torch.compile(compiled_model, fullgraph=True), x, y),
        _Case('eager bf16 autocast', bf16, bf16, x, y, torch.bfloat16),
    ]
    if args.no_layout_opt_case:
        # On CPU Inductor runs every graph with convolutions channels-last; this case keeps the
        # eager (contiguous) layout, to separate the layout's effect from the rest of compilation.
        plain = fresh()
        compiled_plain = torch.compile(plain, fullgraph=True, options={'layout_optimization': False})
        cases.insert(2, _Case('compiled, no layout opt', plain, compiled_plain, x, y))
    kinds = ['infer'] + ([] if args.no_train else ['train'])
    print(f'torch {torch.__version__}, {args.device}, {torch.get_num_threads()} threads; {args.model} with '
          f'{len(initial_scales)} scale channel(s), batch {args.batch}, {in_chans}x{args.size}x{args.size}; '
          f'median of {args.repeats} after {args.warmup} warm-up')

    # Reference logits first: training steps below change the weights.
    reference = cases[0].logits()
    agreement = {}
    for case in cases:
        first = []  # the first call compiles
        case.compile_s['infer'] = common.time_call(lambda case=case: first.append(case.logits()), device)
        logits = first[0]
        error = ((logits - reference).norm() / reference.norm()).item()
        agreement[case.label] = ((logits - reference).abs().max().item(), error,
                                 (logits.argmax(1) == reference.argmax(1)).float().mean().item())
    for kind in kinds:
        for case in cases:  # the warm-up, timed as a whole: it holds the compilation
            seconds = common.time_call(lambda case=case: [case.run(kind) for _ in range(args.warmup)], device)
            case.compile_s.setdefault(kind, seconds)
        samples = common.round_robin({case.label: (lambda case=case: case.run(kind)) for case in cases},
                                     args.repeats, warmup=0, device=device)
        for case in cases:
            case.times[kind] = samples[case.label]

    print(f'\n{"case":24s} | {"max|d| logits":>13s} {"rel L2":>8s} {"top-1 =":>8s} | '
          f'{"infer img/s":>11s} {"x eager":>7s} | {"train img/s":>11s} {"x eager":>7s} | first calls s')
    print('-' * 112)
    base = {k: args.batch / statistics.median(cases[0].times[k]) for k in kinds}
    for case in cases:
        rates = {k: args.batch / statistics.median(case.times[k]) for k in kinds}
        max_abs, rel, top1 = agreement[case.label]
        cols = ' | '.join(f'{rates[k]:11.2f} {rates[k] / base[k]:7.2f}' for k in kinds)
        first = ', '.join(f'{k} {case.compile_s[k]:.1f}' for k in ['infer'] + kinds[1:])
        print(f'{case.label:24s} | {max_abs:13.2e} {rel:8.1e} {top1:8.2f} | {cols} | {first}')


if __name__ == '__main__':
    main()
