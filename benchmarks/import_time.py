"""Times ``import gaussder_hf`` (and its light submodules) against importing torch and timm.

Every measurement is one fresh interpreter that times its own import statement with
``time.perf_counter`` (interpreter start-up is not counted). The statements are run round-robin,
``--repeats`` times each, so that a burst of load on the machine hits all of them alike; the
table gives the median and the spread (min..max) of each, then the ratios that matter:

* ``import gaussder_hf`` against ``import torch, timm``: the package registers its timm models,
  its transformers Auto classes and its datasets builders only when those libraries are
  imported, so importing the package alone should cost far less than torch and timm.
* ``import gaussder_hf.kernels`` / ``.layers`` against ``import torch``: the scale-space
  primitives need torch and numpy only (no timm, transformers, datasets, scipy.special or
  ``torch._dynamo``).

The children see this checkout first on ``PYTHONPATH`` and run with one BLAS/OpenMP thread.

Run: ``python benchmarks/import_time.py --repeats 5``.
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

STATEMENTS = {
    'torch': 'import torch',
    'torch, timm': 'import torch, timm',
    'gaussder_hf': 'import gaussder_hf',
    'gaussder_hf, timm': 'import gaussder_hf, timm',
    'gaussder_hf.kernels': 'import gaussder_hf.kernels',
    'gaussder_hf.layers': 'import gaussder_hf.layers',
}
# (numerator, denominator) pairs reported as ratios of medians.
RATIOS = [
    ('gaussder_hf', 'torch, timm'),
    ('gaussder_hf, timm', 'torch, timm'),
    ('gaussder_hf.kernels', 'torch'),
    ('gaussder_hf.layers', 'torch'),
]

_CHILD = 'import time\nstart = time.perf_counter()\n{statement}\nprint(repr(time.perf_counter() - start))\n'


def time_import(statement: str, python: str = sys.executable) -> float:
    """Returns the seconds one fresh interpreter spends executing ``statement``."""
    env = dict(os.environ, OMP_NUM_THREADS='1', MKL_NUM_THREADS='1')
    env['PYTHONPATH'] = os.pathsep.join(filter(None, [str(ROOT), env.get('PYTHONPATH')]))
    result = subprocess.run([python, '-c', _CHILD.format(statement=statement)], capture_output=True, text=True,
                            env=env, cwd=ROOT, check=False)
    if result.returncode != 0:
        raise RuntimeError(f'{statement!r} failed:\n{result.stderr}')
    return float(result.stdout.strip().splitlines()[-1])


def measure(repeats: int, python: str = sys.executable) -> dict[str, list[float]]:
    """Returns the import times of every statement, ``repeats`` fresh interpreters each, run round-robin."""
    if isinstance(repeats, bool) or not isinstance(repeats, int) or repeats < 1:
        raise ValueError(f'repeats must be an integer >= 1, got {repeats!r}')
    times: dict[str, list[float]] = {name: [] for name in STATEMENTS}
    for _ in range(repeats):
        for name, statement in STATEMENTS.items():
            times[name].append(time_import(statement, python))
    return times


def report(times: dict[str, list[float]]) -> str:
    """Returns the table of medians and spreads, then the ratios of medians."""
    medians = {name: statistics.median(values) for name, values in times.items()}
    lines = [f'{"import":<22}{"median s":>10}{"min s":>9}{"max s":>9}  runs']
    for name, values in times.items():
        lines.append(f'{name:<22}{medians[name]:>10.2f}{min(values):>9.2f}{max(values):>9.2f}  {len(values)}')
    lines.append('')
    for numerator, denominator in RATIOS:
        difference = medians[numerator] - medians[denominator]
        lines.append(f'{numerator} / {denominator}: {medians[numerator] / medians[denominator]:.2f} '
                     f'({difference:+.2f} s)')
    return '\n'.join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--repeats', type=int, default=5, help='fresh interpreters per statement (default 5)')
    parser.add_argument('--python', default=sys.executable, help='interpreter to time (default: this one)')
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error(f'--repeats must be >= 1, got {args.repeats}')
    print(f'python {sys.version.split()[0]}, {os.cpu_count()} CPUs, {args.repeats} runs each, round-robin')
    print(report(measure(args.repeats, args.python)))
    return 0


if __name__ == '__main__':
    sys.exit(main())
