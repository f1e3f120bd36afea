"""Shared test setup: an isolated extraction cache, a stand-in Hub API, small checkpoints, the benchmark scripts."""
from __future__ import annotations

import importlib.util
import shutil
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BENCHMARKS = ROOT / 'benchmarks'


@pytest.fixture(autouse=True)
def _isolated_extraction_cache(tmp_path_factory, monkeypatch):
    # Archives the tests write are extracted under a temporary folder, never the user's cache.
    monkeypatch.setenv('GAUSSDER_HF_CACHE', str(tmp_path_factory.getbasetemp() / 'gaussder_hf_cache'))


@pytest.fixture(autouse=True)
def _restored_thread_count():
    # Tests, and the benchmarks they run with --threads, may set torch's intra-op threads, on which
    # the layers' rules depend: every test starts with the count the test run started with.
    torch = sys.modules.get('torch')  # not imported here: some tests check what an import loads
    threads = torch.get_num_threads() if torch is not None else None
    yield
    if threads is not None and torch.get_num_threads() != threads:
        torch.set_num_threads(threads)


@pytest.fixture
def one_thread(_restored_thread_count):
    """One intra-op thread (the layers' rules depend on the count) for the test; restored after it."""
    import torch

    torch.set_num_threads(1)


class RecordingApi:
    """Stands in for ``huggingface_hub.HfApi`` (no network here): records the calls an upload makes."""

    def __init__(self):
        self.calls = []

    def create_repo(self, repo_id, **kwargs):
        self.calls.append(('create_repo', repo_id, kwargs))

    def upload_folder(self, **kwargs):
        self.calls.append(('upload_folder', kwargs['repo_id'], kwargs))
        return 'commit-url'


@pytest.fixture
def recording_api():
    return RecordingApi()


def _save_small_checkpoint(folder: Path, preset: str = 'gaussderresnet10_fashionmnist', initial_scales=(1.0,),
                           channels=(4, 4, 6), seed: int = 0, model_args: dict | None = None, **save_kwargs):
    import timm
    import torch

    import gaussder_hf

    torch.manual_seed(seed)
    model = timm.create_model(preset, initial_scales=tuple(initial_scales), channels=tuple(channels),
                              **(model_args or {})).eval()
    return model, gaussder_hf.save_for_hub(model, folder, **save_kwargs)


@pytest.fixture(scope='session')
def small_checkpoint():
    """Returns ``save(folder, preset, initial_scales=(1.0,), channels=(4, 4, 6), seed=0, model_args=None, **kwargs)``.

    It saves a small randomly initialised GaussDerResNet (seeded, eval mode; ``model_args`` are
    further preset overrides such as ``num_classes``) with ``gaussder_hf.save_for_hub(**kwargs)``
    and returns ``(model, folder)``.
    """
    return _save_small_checkpoint


def _crashed_copy(run: Path, crashed: Path, *steps: int) -> Path:
    crashed.mkdir()
    for name in ('run.json', 'config.yaml', 'log.jsonl'):
        shutil.copy(run / name, crashed / name)
    for step in steps:
        shutil.copytree(run / f'checkpoint-{step:08d}', crashed / f'checkpoint-{step:08d}')
    return crashed


@pytest.fixture(scope='session')
def crashed_copy():
    """Returns ``copy(run, crashed, *steps)``: the folder a run killed after its checkpoint(s) ``steps`` leaves.

    ``crashed`` gets the run's record, config and full log (which runs on past those steps) and
    the checkpoint folders of ``steps`` only.
    """
    return _crashed_copy


@pytest.fixture(scope='session')
def load_benchmark():
    """Returns a loader of ``benchmarks/<name>.py`` as a module, with their shared ``common`` importable."""

    def load(name: str):
        module_name = f'benchmarks_{name}'
        if module_name not in sys.modules:
            if str(BENCHMARKS) not in sys.path:
                sys.path.insert(0, str(BENCHMARKS))  # as when the script runs: its folder comes first
            spec = importlib.util.spec_from_file_location(module_name, BENCHMARKS / f'{name}.py')
            module = importlib.util.module_from_spec(spec)
            sys.modules[module_name] = module
            spec.loader.exec_module(module)
        return sys.modules[module_name]

    return load
