"""Whole-model speed, FLOPs and training memory of the preset GaussDerResNets vs timm's resnet18.

For each preset (at its training input size) and for ``timm.create_model('resnet18',
in_chans=C, num_classes=10)`` at the SAME input size, in one run:

* inference throughput (eval mode, ``torch.no_grad``) and training throughput (train mode,
  cross-entropy forward + backward + AdamW step), images/s, median of ``--repeats`` timed
  rounds after ``--warmup`` untimed ones; the cases are timed round-robin so that slow drifts
  of the machine hit all of them alike;
* forward FLOPs per image counted by ``torch.utils.flop_counter.FlopCounterMode`` (batch 1).
  The counter sees only matrix products and convolutions (1 multiply-add = 2 FLOPs); BN, ReLU,
  mirror padding, pooling and elementwise ops are not counted, for either network. For ours the
  count splits into ``conv`` (the 3x3 convolutions that fold the central differences and the
  channel mix together, plus the 1x1 shortcut convolutions: the "mixing" FLOPs) and ``smooth``
  (the Gaussian smoothing, done at the presets' input sizes as a dense ``(H+2) x H`` matrix
  product per axis: counted as a full GEMM although most matrix entries are zero at small sigma,
  so these FLOPs are real work for the BLAS but not useful arithmetic; on images of ~600 px and
  more the cost model switches to depthwise convolutions, which the counter books under ``conv``).
  The achieved FLOP rate is counted forward FLOPs x images/s; for training it uses the usual
  3x forward (forward + backward) convention;
* peak training memory per sample of one preset (default: the STL-10 preset, 96x96, all six
  scale channels), with and without gradient checkpointing. Each case runs in a fresh
  subprocess: the peak RSS is reset (``/proc/self/clear_refs``) after model, optimizer and
  input construction, and the peak RSS (``VmHWM``) after one training step minus the RSS
  before it, divided by the batch, is reported (falls back to ``ru_maxrss`` growth). This
  includes the weight gradients and AdamW state (a few MB) and allocator slack.

Run: ``python benchmarks/model_speed.py`` (see ``--help``; the full presets are slow on a few
cores, so ``--scales``, ``--batch`` and ``--repeats`` shrink the run). ``--device cuda`` runs it
on a GPU; memory is then the peak of ``torch.cuda.max_memory_allocated`` over a training step
(after one step that allocates AdamW's state), in this process.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys

import common
import timm
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

import gaussder_hf  # noqa: F401  (registers the presets with timm)
from gaussder_hf.presets import DATASET_INFO, get_preset

DEFAULT_PRESETS = ['gaussderresnet18_fashionmnist', 'gaussderresnet18_cifar10', 'gaussderresnet18_stl10']


def _parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--presets', nargs='+', default=DEFAULT_PRESETS)
    parser.add_argument('--scales', type=int, default=6, help='use the first N scale channels of each preset')
    parser.add_argument('--batch', type=int, default=8, help='batch of the throughput runs')
    parser.add_argument('--mem-preset', default='gaussderresnet18_stl10')
    parser.add_argument('--mem-scales', type=int, default=6, help='scale channels of the memory runs')
    parser.add_argument('--mem-batch', type=int, default=2)
    parser.add_argument('--mem-budget-gb', type=float, default=80.0, help='memory to extrapolate the batch to')
    parser.add_argument('--no-memory', action='store_true', help='skip the memory runs')
    parser.add_argument('--no-speed', action='store_true', help='skip the throughput and FLOP runs')
    parser.add_argument('--memory-child', nargs=2, metavar=('CKPT', 'BATCH'), help=argparse.SUPPRESS)
    common.add_arguments(parser, repeats=5, warmup=1)  # on CUDA the memory comes from torch.cuda's allocator
    return parser.parse_args(argv)


def _input_size(preset: str) -> tuple[int, int, int]:
    dataset = preset.rsplit('_', 1)[1]
    return tuple(DATASET_INFO[dataset]['input_size'])


def _ours(preset: str, scales: int) -> torch.nn.Module:
    initial = get_preset(preset)['initial_scales'][:scales]
    return timm.create_model(preset, initial_scales=initial)


def _resnet18(in_chans: int) -> torch.nn.Module:
    return timm.create_model('resnet18', in_chans=in_chans, num_classes=10)


def _flops(model: torch.nn.Module, shape) -> tuple[float, float, float]:
    """Returns forward FLOPs per image: (total, convolution, matrix products)."""
    model.eval()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(torch.rand(1, *shape, device=next(model.parameters()).device))
    counts = {str(op): n for op, n in counter.get_flop_counts()['Global'].items()}
    conv = sum(n for op, n in counts.items() if 'convolution' in op)
    total = counter.get_total_flops()
    return float(total), float(conv), float(total - conv)


class _Case:
    def __init__(self, label, model, shape, batch):
        self.label, self.model, self.shape, self.batch = label, model, shape, batch
        self.device = next(model.parameters()).device
        self.x = torch.rand(batch, *shape, device=self.device)
        self.y = torch.randint(0, 10, (batch,), device=self.device)
        self.optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
        self.infer_times: list[float] = []
        self.train_times: list[float] = []

    def infer(self) -> None:
        self.model.eval()
        with torch.no_grad():
            self.model(self.x)

    def train(self) -> None:
        """One training step: cross-entropy forward + backward + AdamW step."""
        self.model.train()
        self.optimizer.zero_grad(set_to_none=True)
        F.cross_entropy(self.model(self.x), self.y).backward()
        self.optimizer.step()


_base_maxrss = 0


def _reset_peak() -> int | None:
    """Resets the peak RSS (Linux ``clear_refs`` 5) and returns the current RSS in kB.

    Without it the import of timm/transformers leaves a peak above the later baseline. Where it
    is not available, falls back to ``ru_maxrss`` (returns None).
    """
    global _base_maxrss
    try:
        with open('/proc/self/clear_refs', 'w') as f:
            f.write('5')
        return common.status_kb('VmRSS')
    except OSError:
        _base_maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return None


def _memory_child(preset: str, scales: int, ckpt: bool, batch: int) -> None:
    """Runs one training step in this (fresh) process and prints the peak RSS growth as JSON."""
    torch.manual_seed(0)
    model = _ours(preset, scales).train()
    model.set_grad_checkpointing(ckpt)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    x = torch.rand(batch, *_input_size(preset))
    y = torch.randint(0, 10, (batch,))
    base = _reset_peak()

    def step():
        optimizer.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        optimizer.step()

    seconds = common.time_call(step)
    peak = common.status_kb('VmHWM') if base is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    if base is None:
        base = _base_maxrss
    print(json.dumps(dict(base_kb=base, peak_kb=peak, seconds=seconds)))


def _memory_cuda(args) -> list[dict]:
    """Peak allocated CUDA memory over one training step, per sample, checkpointing off and on."""
    device = torch.device(args.device)
    results = []
    for ckpt in (False, True):
        torch.manual_seed(0)
        model = _ours(args.mem_preset, args.mem_scales).to(device).train()
        model.set_grad_checkpointing(ckpt)
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
        x = torch.rand(args.mem_batch, *_input_size(args.mem_preset), device=device)
        y = torch.randint(0, 10, (args.mem_batch,), device=device)

        def step(model=model, optimizer=optimizer, x=x, y=y):
            optimizer.zero_grad(set_to_none=True)
            F.cross_entropy(model(x), y).backward()
            optimizer.step()

        for _ in range(2):  # the first step also allocates AdamW's state and cuDNN workspaces
            common.synchronize(device)
            torch.cuda.reset_peak_memory_stats(device)
            base = torch.cuda.memory_allocated(device)
            seconds = common.time_call(step, device)
        peak = torch.cuda.max_memory_allocated(device)
        record = dict(base_kb=base // 1024, peak_kb=peak // 1024, seconds=seconds, ckpt=ckpt,
                      per_sample_gb=(peak - base) / args.mem_batch / 1e9)
        results.append(record)
        print(f'  memory ckpt={ckpt}: {record}', flush=True)
        del model, optimizer
        torch.cuda.empty_cache()
    return results


def _memory(args) -> list[dict]:
    if torch.device(args.device).type == 'cuda':
        return _memory_cuda(args)
    results = []
    for ckpt in (False, True):
        command = [sys.executable, os.path.abspath(__file__), '--memory-child', str(int(ckpt)), str(args.mem_batch),
                   '--mem-preset', args.mem_preset, '--mem-scales', str(args.mem_scales),
                   '--threads', str(args.threads)]
        out = subprocess.run(command, check=True, capture_output=True, text=True).stdout
        record = json.loads(out.strip().splitlines()[-1])
        record['ckpt'] = ckpt
        record['per_sample_gb'] = (record['peak_kb'] - record['base_kb']) * 1024 / args.mem_batch / 1e9
        results.append(record)
        print(f'  memory ckpt={ckpt}: {record}', flush=True)
    return results


def main(argv=None) -> None:
    args = _parse_args(argv)
    device = common.setup(args)
    if args.memory_child:
        _memory_child(args.mem_preset, args.mem_scales, bool(int(args.memory_child[0])), int(args.memory_child[1]))
        return
    torch.manual_seed(0)
    where = (f'{torch.cuda.get_device_name(device)}, TF32 matmul {torch.backends.cuda.matmul.allow_tf32} / cuDNN '
             f'{torch.backends.cudnn.allow_tf32}' if device.type == 'cuda' else platform.machine())
    print(f'torch {torch.__version__}, timm {timm.__version__}, {where}, '
          f'{torch.get_num_threads()} threads; batch {args.batch}, {args.scales} scale channel(s), '
          f'median of {args.repeats} after {args.warmup} warm-up', flush=True)

    rows = []
    if not args.no_speed:
        cases, flops = [], {}
        for preset in args.presets:
            shape = _input_size(preset)
            for label, model in ((preset, _ours(preset, args.scales)), (f'resnet18 ({preset.rsplit("_", 1)[1]})',
                                                                      _resnet18(shape[0]))):
                model = model.to(device)
                flops[label] = _flops(model, shape)
                cases.append(_Case(label, model, shape, args.batch))
        calls = {(case.label, kind): getattr(case, kind) for case in cases for kind in ('infer', 'train')}
        for r in range(args.repeats):
            # The warm-up before the first round: kernels and smoothing matrices are cached on the first call.
            samples = common.round_robin(calls, 1, args.warmup if r == 0 else 0, device)
            for case in cases:
                case.infer_times += samples[case.label, 'infer']
                case.train_times += samples[case.label, 'train']
            print(f'  round {r + 1}/{args.repeats} done', flush=True)
        for case in cases:
            total, conv, mm = flops[case.label]
            infer = case.batch / statistics.median(case.infer_times)
            train = case.batch / statistics.median(case.train_times)
            rows.append(dict(label=case.label, shape=case.shape, total=total, conv=conv, mm=mm,
                             infer=infer, train=train, rate_i=total * infer, rate_t=3 * total * train,
                             conv_rate_i=conv * infer))

    memory = [] if args.no_memory else _memory(args)

    print()
    if rows:
        header = (f'{"network":34s} {"input":>8s} | {"GFLOP/img":>9s} {"conv":>7s} {"smooth":>7s} | '
                  f'{"inf img/s":>9s} {"train img/s":>11s} | {"inf GFLOP/s":>11s} {"(conv only)":>11s} '
                  f'{"train GFLOP/s":>13s}')
        print(header)
        print('-' * len(header))
        for row in rows:
            size = 'x'.join(map(str, row['shape']))
            smooth = f'{row["mm"] / 1e9:7.2f}' if row['label'].startswith('gauss') else f'{"-":>7s}'
            print(f'{row["label"]:34s} {size:>8s} | {row["total"] / 1e9:9.2f} {row["conv"] / 1e9:7.2f} {smooth} | '
                  f'{row["infer"]:9.2f} {row["train"]:11.2f} | {row["rate_i"] / 1e9:11.1f} '
                  f'{row["conv_rate_i"] / 1e9:11.1f} {row["rate_t"] / 1e9:13.1f}')
        print()
        print('ratios ours / resnet18 at the same input size:')
        for ours, ref in zip(rows[0::2], rows[1::2]):
            print(f'  {ours["label"]:32s} FLOPs x{ours["total"] / ref["total"]:6.1f} '
                  f'(conv x{ours["conv"] / ref["conv"]:.1f}) | '
                  f'throughput inf {ours["infer"] / ref["infer"]:.4f} train {ours["train"] / ref["train"]:.4f} | '
                  f'FLOP rate inf {ours["rate_i"] / ref["rate_i"]:.2f} '
                  f'(conv only {ours["conv_rate_i"] / ref["rate_i"]:.2f}) '
                  f'train {ours["rate_t"] / ref["rate_t"]:.2f}  (goal: >= 0.50)')
    if memory:
        plain, ckpt = memory
        print()
        how = ('CUDA (peak allocated over one step / batch)' if device.type == 'cuda'
               else 'CPU (peak RSS growth over one step / batch)')
        print(f'peak training memory per sample, {args.mem_preset} {"x".join(map(str, _input_size(args.mem_preset)))}, '
              f'{args.mem_scales} scale channels, batch {args.mem_batch}, {how}:')
        for rec in memory:
            fits = int(args.mem_budget_gb // max(rec['per_sample_gb'], 1e-9))
            print(f'  checkpointing {"on " if rec["ckpt"] else "off"}: {rec["per_sample_gb"]:6.2f} GB/sample '
                  f'(step {rec["seconds"]:.1f} s) -> extrapolated from {device.type.upper()}: ~{fits} samples in '
                  f'{args.mem_budget_gb:g} GB (benchmarks/max_batch.py measures it on a GPU)')
        print(f'  checkpointing saves x{plain["per_sample_gb"] / ckpt["per_sample_gb"]:.1f} '
              f'(step time x{ckpt["seconds"] / plain["seconds"]:.2f})')


if __name__ == '__main__':
    main()
