"""``import gaussder_hf`` is cheap, and everything it used to do at once still happens when needed.

The package imports neither timm, transformers, datasets nor ``torch._dynamo``; its public names
are imported on first access, and the registrations with timm, transformers and datasets run
when those libraries are imported, before or after the package. What a process has imported
can only be seen in a fresh interpreter, so those checks run in child processes.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

import gaussder_hf
from gaussder_hf import _registration, kernels

ROOT = Path(__file__).resolve().parents[1]


def _run_child(script: str) -> str:
    env = dict(os.environ, OMP_NUM_THREADS='1', MKL_NUM_THREADS='1')
    env['PYTHONPATH'] = os.pathsep.join(filter(None, [str(ROOT), env.get('PYTHONPATH')]))
    result = subprocess.run([sys.executable, '-W', 'error::RuntimeWarning', '-c', textwrap.dedent(script)],
                            capture_output=True, text=True, env=env, cwd=ROOT, timeout=300, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout.strip().splitlines()[-1]


def test_importing_the_package_and_its_primitives_imports_no_heavy_library():
    imported = json.loads(_run_child('''
        import json, sys
        HEAVY = ('timm', 'transformers', 'datasets', 'torch._dynamo', 'torchvision', 'scipy.special')
        import gaussder_hf
        package = [name for name in HEAVY if name in sys.modules]
        import gaussder_hf.kernels, gaussder_hf.layers
        primitives = [name for name in HEAVY if name in sys.modules]
        import timm  # registers the models, which must not bring transformers or datasets along
        assert 'gaussderresnet10_fashionmnist' in timm.list_models('gaussder*')
        with_timm = [name for name in ('transformers', 'datasets') if name in sys.modules]
        print(json.dumps({'package': package, 'primitives': primitives, 'with_timm': with_timm}))
    '''))
    assert imported == {'package': [], 'primitives': [], 'with_timm': []}


# Each library registers through one of two paths: already imported when the package is, or
# imported later. 'mixed' takes both in one process, and transformers comes in through the
# package's own lazy names (gaussder_hf.configuration imports it while half executed).
ORDERS = {
    'mixed': ('import datasets, timm', 'import gaussder_hf'),
    'libraries_first': ('import datasets, timm, transformers', 'import gaussder_hf'),
    'package_first': ('import gaussder_hf', 'import datasets, timm, transformers'),
}


@pytest.mark.parametrize('order', ['mixed', pytest.param('libraries_first', marks=pytest.mark.slow),
                                   pytest.param('package_first', marks=pytest.mark.slow)])
def test_registrations_work_whichever_is_imported_first(order, tmp_path):
    first, then = ORDERS[order]
    result = json.loads(_run_child(f'''
        import json
        {first}
        {then}
        import torch
        torch.set_num_threads(1)
        from gaussder_hf import (GaussDerResNet, GaussDerResNetConfig, GaussDerResNetForImageClassification,
                                 GaussDerResNetImageProcessor)
        from gaussder_hf.data import RescaledFashionMNIST
        from transformers import AutoConfig, AutoImageProcessor, AutoModelForImageClassification

        net = timm.create_model('gaussderresnet10_fashionmnist', num_classes=3, initial_scales=(1.0,))
        folder = {str(tmp_path)!r}
        GaussDerResNetConfig.from_preset('gaussderresnet10_fashionmnist', num_labels=3).save_pretrained(folder)
        GaussDerResNetImageProcessor().save_pretrained(folder)
        config = AutoConfig.from_pretrained(folder)
        model = AutoModelForImageClassification.from_config(config)
        processor = AutoImageProcessor.from_pretrained(folder)
        builder = datasets.load_dataset_builder('rescaled_fashion_mnist', cache_dir=folder + '/cache')
        model.save_pretrained(folder + '/saved')
        processor.save_pretrained(folder + '/saved')
        auto_map = {{}}
        for file in ('config.json', 'preprocessor_config.json'):
            with open(folder + '/saved/' + file) as opened:
                auto_map.update(json.load(opened).get('auto_map', {{}}))
        print(json.dumps({{
            'timm': type(net) is GaussDerResNet,
            'config': type(config) is GaussDerResNetConfig,
            'model': type(model) is GaussDerResNetForImageClassification,
            'processor': type(processor) is GaussDerResNetImageProcessor,
            'auto_map': sorted(auto_map),
            'datasets': type(builder) is RescaledFashionMNIST,
        }}))
    '''))
    assert result == {'timm': True, 'config': True, 'model': True, 'processor': True, 'datasets': True,
                      'auto_map': ['AutoConfig', 'AutoImageProcessor', 'AutoModelForImageClassification']}


def test_every_public_name_resolves_to_its_defining_module():
    import importlib

    for name in gaussder_hf.__all__:
        value = getattr(gaussder_hf, name)
        module = importlib.import_module(getattr(value, '__module__', None) or 'gaussder_hf.presets')
        assert getattr(module, name, value) is value, name
        assert name in dir(gaussder_hf), name
    for submodule in ('kernels', 'layers', 'model', 'hub', 'data', 'timm_models'):
        assert getattr(gaussder_hf, submodule) is sys.modules[f'gaussder_hf.{submodule}']
    assert gaussder_hf.GaussDerResNetConfig.__module__ == 'gaussder_hf.configuration'
    with pytest.raises(AttributeError, match="has no attribute 'GaussDerResnet'"):
        gaussder_hf.GaussDerResnet  # noqa: B018


def test_a_failing_registration_warns_instead_of_breaking_the_import(monkeypatch):
    def register():
        raise RuntimeError('incompatible release')

    monkeypatch.setattr(_registration, '_pending', {'json': register})  # json: a module surely imported
    with pytest.warns(RuntimeWarning, match='could not register with json: RuntimeError: incompatible release'):
        _registration._run_ready()
    assert _registration._pending == {}


def test_the_deferred_constant_marker_marks_like_torch_compiler():
    def marked_by_torch():
        return 1

    def marked_here():
        return 1

    torch.compiler.assume_constant_result(marked_by_torch)
    kernels._assume_constant_result(marked_here)
    assert vars(marked_here) == vars(marked_by_torch) != {}
