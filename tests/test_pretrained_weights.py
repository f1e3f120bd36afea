"""``pretrained=True`` is truthful: the shipped Fashion-MNIST weights load offline, other models fail at once."""
import shutil
import subprocess
import sys
import time
import zipfile
from pathlib import Path
from string import Template

import pytest
import timm
import torch
from safetensors.torch import load_file
from transformers import AutoModelForImageClassification

import gaussder_hf
from gaussder_hf import GaussDerResNet, get_preset
from gaussder_hf.hub import _code_files

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = 'gaussderresnet10_fashionmnist'
CHECKPOINT = ROOT / 'checkpoints' / SHIPPED


def test_pretrained_true_loads_the_committed_weights():
    model = timm.create_model(SHIPPED, pretrained=True).eval()
    # The reference is built by hand from the committed file, without timm's loaders.
    reference = GaussDerResNet(**get_preset(SHIPPED))
    reference.load_state_dict(load_file(CHECKPOINT / 'model.safetensors'), strict=True)
    reference.eval()
    hf = AutoModelForImageClassification.from_pretrained(CHECKPOINT).eval()
    x = torch.rand(2, 1, 20, 20)
    with torch.no_grad():
        expected = reference(x)
        torch.testing.assert_close(model(x), expected, rtol=0, atol=0)
        torch.testing.assert_close(hf(pixel_values=x).logits, expected, rtol=0, atol=0)
    assert Path(model.pretrained_cfg['file']).parent.name == SHIPPED


@pytest.mark.parametrize('name', sorted(set(gaussder_hf.PRESETS) - {SHIPPED}))
def test_a_model_without_weights_fails_at_once_naming_the_alternatives(name):
    start = time.perf_counter()
    with pytest.raises(ValueError) as error:
        timm.create_model(name, pretrained=True)
    assert time.perf_counter() - start < 2.0  # no download attempts, no retries
    message = str(error.value)
    assert name in message and SHIPPED in message
    assert 'recipes/train.py' in message and 'local-dir:' in message


def test_list_models_lists_only_what_loads():
    ours = set(gaussder_hf.PRESETS)
    assert [m for m in timm.list_models(pretrained=True) if m.split('.')[0] in ours] == [SHIPPED]
    assert set(timm.list_models('*gaussderresnet*')) == ours


def test_a_weights_file_loads_for_a_model_without_published_weights(tmp_path):
    name = 'dsgaussderresnet18_stl10'
    source = timm.create_model(name, initial_scales=(1.0,)).eval()
    folder = gaussder_hf.save_for_hub(source, tmp_path / 'ckpt')
    x = torch.rand(1, 3, 12, 12)
    for overlay in (dict(file=str(folder)), dict(file=str(folder / 'model.safetensors'))):
        loaded = timm.create_model(name, pretrained=True, initial_scales=(1.0,), pretrained_cfg_overlay=overlay)
        with torch.no_grad():
            torch.testing.assert_close(loaded.eval()(x), source(x), rtol=0, atol=0)


def test_the_committed_folder_carries_the_package_model_code():
    # Its copies serve trust_remote_code; after a change to the model code, refresh them with
    #   python -c "from gaussder_hf.hub import write_model_code as w; w('checkpoints/gaussderresnet10_fashionmnist')"
    package = Path(gaussder_hf.__file__).parent
    stale = [n for n in _code_files() if (CHECKPOINT / n).read_bytes() != (package / n).read_bytes()]
    assert not stale, f'stale model code in {CHECKPOINT}: {stale}; refresh it with gaussder_hf.hub.write_model_code'


@pytest.mark.slow
def test_the_wheel_ships_the_checkpoint(tmp_path):
    # Built from a copy: setuptools leaves build/ and *.egg-info beside the sources.
    source = tmp_path / 'src'
    ignore = shutil.ignore_patterns('.git', 'build', '*.egg-info', '__pycache__', 'results')
    shutil.copytree(ROOT, source, ignore=ignore)
    subprocess.run([sys.executable, '-m', 'pip', 'wheel', str(source), '-w', str(tmp_path), '--no-deps', '-q'],
                   check=True, timeout=600, cwd=tmp_path)
    (wheel,) = tmp_path.glob('gaussder_hf-*.whl')
    names = set(zipfile.ZipFile(wheel).namelist())
    inside = f'gaussder_hf/checkpoints/{SHIPPED}/'
    expected = {'model.safetensors', 'config.json', 'preprocessor_config.json', *_code_files()}
    assert {inside + n for n in expected} <= names
    assert 'gaussder_hf/model_cards/gaussderresnet.md' in names


def test_the_committed_model_card_has_the_tested_snippets():
    # The template's snippets run as written (test_transformers.py, test_import_free.py); the
    # committed card must carry the same ones.
    template = (ROOT / 'model_cards' / 'gaussderresnet.md').read_text()
    section = template[template.index('## How to use'):template.index('## Evaluation')]
    expected = Template(section).substitute(repo_id=f'{gaussder_hf.HUB_NAMESPACE}/{SHIPPED}')
    assert expected in (CHECKPOINT / 'README.md').read_text()
