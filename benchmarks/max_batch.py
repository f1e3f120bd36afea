"""Largest training batch that fits in GPU memory, and the training throughput at that batch.

For one preset (default: the STL-10 preset at its 96x96 training size with all six scale
channels), with gradient checkpointing off and on: the batch is doubled from ``--start`` until a
training step (cross-entropy forward + backward + AdamW step) runs out of memory, then bisected
between the last batch that fitted and the first that did not. At the largest batch that fits,
``--steps`` timed steps (after one warm-up) give the training images/s, and
``torch.cuda.max_memory_allocated`` over a step gives the peak memory per sample.

The paper trained STL-10 at batch 17 "due to memory constraints"; this measures what fits on
the device at hand. ``--budget-gb`` caps the memory the process may use
(``torch.cuda.set_per_process_memory_fraction``) to ask what fits in a smaller card.

Run on a GPU: ``python benchmarks/max_batch.py`` (see ``--help``). There is no CPU mode: CPU
memory per sample is measured by ``benchmarks/model_speed.py``.
"""
from __future__ import annotations

import argparse
import gc
import statistics
from collections.abc import Callable

import common
import timm
import torch
import torch.nn.functional as F

import gaussder_hf  # noqa: F401  (registers the presets with timm)
from gaussder_hf.presets import DATASET_INFO, get_preset


def _parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--model', default='gaussderresnet18_stl10')
    parser.add_argument('--scales', type=int, default=6, help='first N scale channels of the preset')
    parser.add_argument('--size', type=int, default=None, help='input height = width (default: the training size)')
    parser.add_argument('--start', type=int, default=8, help='first batch tried')
    parser.add_argument('--limit', type=int, default=4096, help='largest batch tried')
    parser.add_argument('--steps', dest='repeats', type=int, default=argparse.SUPPRESS,
                        help='the same as --repeats (its former name)')
    parser.add_argument('--precision', choices=['fp32', 'tf32', 'bf16'], default='tf32',
                        help='fp32: TF32 off; tf32: TF32 matmuls/convs; bf16: bfloat16 autocast')
    parser.add_argument('--checkpointing', choices=['off', 'on', 'both'], default='both')
    parser.add_argument('--budget-gb', type=float, default=None, help='cap the memory this process may use')
    common.add_arguments(parser, threads=None, device='cuda', repeats=5)  # --repeats: timed steps at the largest batch
    return parser.parse_args(argv)


def largest_fitting(fits: Callable[[int], bool], start: int, limit: int) -> int:
    """Returns the largest ``batch <= limit`` with ``fits(batch)``, or 0 if ``start`` does not fit.

    Assumes ``fits`` is monotone (a batch that fits means every smaller one fits): doubles from
    ``start`` until a batch fails or ``limit`` is reached, then bisects between the last batch
    that fitted and the first that failed.
    """
    if start < 1 or limit < start:
        raise ValueError(f'need 1 <= start <= limit, got start={start!r}, limit={limit!r}')
    if not fits(start):
        low, high = 0, start  # bisect below start
    else:
        low = start
        while True:
            candidate = min(2 * low, limit)
            if candidate == low:
                return low
            if not fits(candidate):
                high = candidate
                break
            low = candidate
    while high - low > 1:
        middle = (low + high) // 2
        if fits(middle):
            low = middle
        else:
            high = middle
    return low


class _Trainer:
    def __init__(self, args, checkpointing: bool):
        self.device = torch.device(args.device)
        info = DATASET_INFO[args.model.rsplit('_', 1)[1]]
        channels, height, width = info['input_size']
        if args.size is not None:
            height = width = args.size
        self.shape = (channels, height, width)
        torch.manual_seed(0)
        scales = tuple(get_preset(args.model)['initial_scales'][:args.scales])
        self.model = timm.create_model(args.model, initial_scales=scales).to(self.device).train()
        self.model.set_grad_checkpointing(checkpointing)
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=1e-3)
        self.bf16 = args.precision == 'bf16'

    def step(self, batch: int) -> float:
        """One training step at ``batch``; returns its seconds."""
        x = torch.rand(batch, *self.shape, device=self.device)
        y = torch.randint(0, 10, (batch,), device=self.device)

        def train_step():
            self.optimizer.zero_grad(set_to_none=True)
            with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16):
                loss = F.cross_entropy(self.model(x).float(), y)
            loss.backward()
            self.optimizer.step()

        return common.time_call(train_step, self.device)

    def fits(self, batch: int) -> bool:
        try:
            seconds = self.step(batch)
        except torch.cuda.OutOfMemoryError:
            fitted = False
        else:
            fitted = True
        self.optimizer.zero_grad(set_to_none=True)
        gc.collect()
        torch.cuda.empty_cache()
        print(f'    batch {batch:5d}: {"fits" if fitted else "out of memory"}'
              + (f' ({seconds:.2f} s)' if fitted else ''), flush=True)
        return fitted


def time_surviving_batch(trainer, batch: int, repeats: int, device):
    """Times ``repeats`` steps at ``batch``, or at the largest smaller batch (in steps of 1/16) whose
    repeated steps fit: one that fit a single step can still run out of memory when repeated (the
    allocator's blocks fragment). Returns the batch timed, its step times and the memory allocated
    before them (the peak statistics are reset there)."""
    while True:
        try:
            trainer.step(batch)  # warm-up at the final batch
            if device.type == 'cuda':
                torch.cuda.reset_peak_memory_stats(device)
            before = torch.cuda.memory_allocated(device) if device.type == 'cuda' else 0
            return batch, [trainer.step(batch) for _ in range(repeats)], before
        except torch.cuda.OutOfMemoryError:
            trainer.optimizer.zero_grad(set_to_none=True)
            gc.collect()
            if device.type == 'cuda':
                torch.cuda.empty_cache()
            smaller = batch * 15 // 16
            print(f'    batch {batch:5d}: out of memory in repeated steps; timing {smaller} instead', flush=True)
            if smaller < 1:
                raise
            batch = smaller


def main(argv=None) -> None:
    args = _parse_args(argv)
    if torch.device(args.device).type != 'cuda':
        raise SystemExit(f'--device {args.device}: this benchmark measures GPU memory and needs a CUDA device '
                         '(CPU memory per sample: benchmarks/model_speed.py)')
    device = common.setup(args)
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = args.precision == 'tf32'
    torch.backends.cudnn.benchmark = False  # autotuning workspaces would blur the memory bisection
    total_gb = torch.cuda.get_device_properties(device).total_memory / 1e9
    if args.budget_gb is not None:
        if not 0 < args.budget_gb <= total_gb:
            raise SystemExit(f'--budget-gb must be in (0, {total_gb:.1f}], got {args.budget_gb}')
        torch.cuda.set_per_process_memory_fraction(args.budget_gb / total_gb, device)
    print(f'torch {torch.__version__}, {torch.cuda.get_device_name(device)} ({total_gb:.1f} GB'
          + (f', capped at {args.budget_gb:g} GB' if args.budget_gb else '') + f'); {args.model} with '
          f'{args.scales} scale channel(s), {args.precision}; training step = forward + backward + AdamW', flush=True)
    results = []
    for checkpointing in {'off': [False], 'on': [True], 'both': [False, True]}[args.checkpointing]:
        print(f'  checkpointing {"on" if checkpointing else "off"}:', flush=True)
        trainer = _Trainer(args, checkpointing)
        batch = largest_fitting(trainer.fits, args.start, args.limit)
        if batch == 0:
            results.append((checkpointing, 0, 0, float('nan'), float('nan')))
            continue
        largest = batch
        batch, times, before = time_surviving_batch(trainer, batch, args.repeats, device)
        peak_gb = (torch.cuda.max_memory_allocated(device) - before) / 1e9
        results.append((checkpointing, largest, batch, batch / statistics.median(times), peak_gb / batch))
        del trainer
        gc.collect()
        torch.cuda.empty_cache()
    print()
    print(f'{"checkpointing":>13s} | {"largest batch":>13s} | {"timed batch":>11s} | {"train img/s":>11s} | '
          f'{"peak GB/sample":>14s}')
    for checkpointing, largest, batch, rate, per_sample in results:
        print(f'{"on" if checkpointing else "off":>13s} | {largest:13d} | {batch:11d} | {rate:11.1f} | '
              f'{per_sample:14.3f}')


if __name__ == '__main__':
    main()
