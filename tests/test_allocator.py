"""The allocator setting the docs recommend for large images: freed blocks reused, no page faults, no pile-up."""
import json
import os
import platform
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# A child allocates, fills and frees a 96 MiB tensor five times (an aligned block, as PyTorch asks
# for) and prints, for the last three times, the minor page faults (the kernel's count, getrusage)
# and the resident memory after the fill. glibc's defaults serve such a block with a fresh mmap and
# unmap it when it is freed, so every fill faults in all its 4 KiB pages again (~24,600).
_CHILD = textwrap.dedent('''
    import json, resource
    import torch

    def rss_mb():
        with open('/proc/self/status') as f:
            return next(int(line.split()[1]) for line in f if line.startswith('VmRSS:')) / 1024

    fills = []
    for _ in range(5):
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        block = torch.empty(24 * 2 ** 20)
        block.fill_(1.0)
        fills.append((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before, rss_mb()))
        del block
    print(json.dumps(fills[2:]))
''')


def _fills(setting: dict) -> list[tuple[int, float]]:
    environment = {k: v for k, v in os.environ.items() if not k.startswith(('GLIBC_TUNABLES', 'MALLOC_'))}
    out = subprocess.run([sys.executable, '-c', _CHILD], env=environment | setting, check=True,
                         capture_output=True, text=True, timeout=300).stdout
    return json.loads(out.strip().splitlines()[-1])


@pytest.mark.skipif(platform.system() != 'Linux' or platform.libc_ver()[0] != 'glibc', reason='glibc only')
def test_the_recommended_setting_reuses_freed_blocks_without_faults_or_growth(load_benchmark):
    allocator = load_benchmark('allocator')
    default = _fills({})
    kept = _fills(allocator.KEEP_FREED)
    assert all(faults > 20_000 for faults, _ in default), default
    assert all(faults < 100 for faults, _ in kept), kept
    # the same block reused: the resident memory stays put (it grew by 96 MB a fill when the
    # per-thread cache pinned each freed block, without tcache_count=0)
    assert kept[-1][1] - kept[0][1] < 10, kept
    without_tcache_setting = _fills({'GLIBC_TUNABLES': re.sub(r':?glibc\.malloc\.tcache_count=0', '',
                                                              allocator.KEEP_FREED['GLIBC_TUNABLES'])})
    assert without_tcache_setting[-1][1] - without_tcache_setting[0][1] > 150, without_tcache_setting


def test_the_docs_give_the_benchmarked_setting(load_benchmark):
    line = 'GLIBC_TUNABLES=' + load_benchmark('allocator').KEEP_FREED['GLIBC_TUNABLES']
    assert line in (ROOT / 'README.md').read_text()
    assert line in (ROOT / 'benchmarks' / 'README.md').read_text()
