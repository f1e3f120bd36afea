"""What every benchmark shares: the standard options and the one way of timing a case.

Options (:func:`add_arguments`): ``--threads`` (``torch.set_num_threads``; default: all cores, or torch's own),
``--device`` (``cpu``, ``cuda``, ``cuda:1`` ...) and ``--repeats`` (timed rounds per case, the
median is reported), each where the benchmark has a use for it, and :func:`setup` applies them.

Timing (:func:`round_robin`): every case is run ``warmup`` times untimed first (kernels,
smoothing operators and compiled graphs are built on a first call), then the cases are timed
in turn, ``repeats`` rounds, so that slow drifts of the machine's speed spread over all of
them; on a GPU every timed call is synchronised before and after. :func:`medians` reduces the
samples to the median per case.

The scripts import this module as ``common``: run as ``python benchmarks/NAME.py``, Python puts
this folder first on ``sys.path``.
"""
from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable, Mapping

import torch

__all__ = ['add_arguments', 'batch_and_side', 'preset_model', 'scale_count', 'setup', 'synchronize', 'time_call',
           'round_robin', 'medians', 'status_kb']


def add_arguments(parser: argparse.ArgumentParser, *, threads: int | None = os.cpu_count(),
                  device: str | None = 'cpu', repeats: int | None = 5,
                  warmup: int | None = None) -> argparse.ArgumentParser:
    """Adds the shared options to ``parser``; ``None`` leaves an option out (a benchmark with no use for it).

    Args:
        threads: default of ``--threads`` (``None``: torch's own, which follows ``$OMP_NUM_THREADS``).
        device: default of ``--device``; ``None``: the benchmark runs on the CPU only (no option).
        repeats: default of ``--repeats`` (timed rounds per case).
        warmup: default of ``--warmup`` (untimed runs per case before timing); ``None``: no option.
    """
    parser.add_argument('--threads', type=int, default=threads,
                        help='torch.set_num_threads (default: ' + ('%(default)s' if threads else
                                                                   "torch's own: $OMP_NUM_THREADS or the cores") + ')')
    if device is not None:
        parser.add_argument('--device', default=device,
                            help="torch device, e.g. 'cpu', 'cuda' (timings synchronised) (default: %(default)s)")
    if repeats is not None:
        parser.add_argument('--repeats', type=int, default=repeats,
                            help='timed rounds per case, the median is reported (default: %(default)s)')
    if warmup is not None:
        parser.add_argument('--warmup', type=int, default=warmup,
                            help='untimed runs per case before timing (default: %(default)s)')
    return parser


def batch_and_side(text: str) -> tuple[int, int]:
    """The argparse type of an input shape ``BATCHxSIDE`` (e.g. ``16x96``): ``(batch, side)``."""
    try:
        batch, side = (int(v) for v in text.lower().split('x'))
    except ValueError:
        raise argparse.ArgumentTypeError(f'shapes are BATCHxSIDE, e.g. 16x96, got {text!r}') from None
    if batch < 1 or side < 1:
        raise argparse.ArgumentTypeError(f'batch and side must be positive, got {text!r}')
    return batch, side


def scale_count(text: str) -> int:
    """The argparse type of ``--scales``: how many of a preset's initial scales to run, at least 1."""
    try:
        count = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f'--scales must be a whole number, got {text!r}') from None
    if count < 1:
        raise argparse.ArgumentTypeError(f'--scales must be at least 1, got {count}')
    return count


def preset_model(name: str, scales: int, device: torch.device | str | None = None) -> tuple[dict, torch.nn.Module]:
    """Returns the preset ``name`` and its timm model on the preset's first ``scales`` initial scales."""
    import timm

    import gaussder_hf  # noqa: F401  (registers the presets with timm)
    from gaussder_hf.presets import get_preset

    preset = get_preset(name)
    return preset, timm.create_model(name, initial_scales=preset['initial_scales'][:scales]).to(device)


def setup(args: argparse.Namespace, cuda_hint: str = '') -> torch.device | None:
    """Applies ``--threads``; returns the ``--device`` (None without one), refusing a CUDA device that is absent."""
    if getattr(args, 'threads', None):
        torch.set_num_threads(args.threads)
    if getattr(args, 'repeats', 1) < 1:
        raise SystemExit(f'--repeats must be >= 1, got {args.repeats}')
    if getattr(args, 'warmup', 0) < 0:
        raise SystemExit(f'--warmup must be >= 0, got {args.warmup}')
    if getattr(args, 'device', None) is None:
        return None
    try:
        device = torch.device(args.device)
    except RuntimeError as error:
        raise SystemExit(f'--device {args.device}: not a torch device ({error})') from None
    if device.type == 'cuda' and not torch.cuda.is_available():
        raise SystemExit(f'--device {args.device}: no CUDA device is available here' + cuda_hint)
    return device


def synchronize(device: torch.device | str | None) -> None:
    """Waits for the device's queued work (CUDA only): a timing then covers the work, not its launch."""
    if device is not None and torch.device(device).type == 'cuda':
        torch.cuda.synchronize(device)


def time_call(fn: Callable[[], object], device: torch.device | str | None = None) -> float:
    """Returns the seconds one call of ``fn`` takes, synchronised on ``device`` before and after."""
    synchronize(device)
    start = time.perf_counter()
    fn()
    synchronize(device)
    return time.perf_counter() - start


def round_robin(cases: Mapping[str, Callable[[], object]], repeats: int, warmup: int = 1,
                device: torch.device | str | None = None) -> dict[str, list[float]]:
    """Returns ``{case: [seconds per timed call]}``: ``warmup`` untimed calls per case, then ``repeats`` rounds."""
    for fn in cases.values():
        for _ in range(warmup):
            fn()
            synchronize(device)
    samples: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(repeats):
        for name, fn in cases.items():
            samples[name].append(time_call(fn, device))
    return samples


def medians(samples: Mapping[str, list[float]]) -> dict[str, float]:
    """Returns the median of every case's samples (seconds)."""
    return {name: statistics.median(values) for name, values in samples.items()}


def status_kb(field: str) -> int:
    """Returns a memory figure of this process from ``/proc/self/status`` in KiB (``'VmRSS'``: resident now,
    ``'VmHWM'``: its peak). Linux only; raises KeyError for a field the kernel does not report."""
    with open('/proc/self/status') as f:
        for line in f:
            if line.startswith(field + ':'):
                return int(line.split()[1])
    raise KeyError(field)
