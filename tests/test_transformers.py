"""GaussDerResNets in transformers: config, Auto classes, pipeline, Trainer, one checkpoint for timm too."""
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from PIL import Image
from transformers import (
    AutoConfig,
    AutoImageProcessor,
    AutoModelForImageClassification,
    Trainer,
    TrainingArguments,
    pipeline,
)
from transformers.modeling_outputs import ImageClassifierOutputWithNoAttention

import gaussder_hf
from gaussder_hf import GaussDerResNet, GaussDerResNetConfig, GaussDerResNetForImageClassification, save_for_hub
from gaussder_hf.architecture import ARCHITECTURE

FASHION_CLASSES = ['T-shirt/top', 'Trouser', 'Pullover', 'Dress', 'Coat', 'Sandal', 'Shirt', 'Sneaker', 'Bag',
                   'Ankle boot']


@pytest.fixture(scope='module')
def checkpoint(tmp_path_factory):
    """A save_for_hub folder of a (randomly initialised, BN-calibrated) two-channel Fashion-MNIST model."""
    torch.manual_seed(0)
    model = timm.create_model('gaussderresnet18_fashionmnist', initial_scales=(1.0, 2.0))
    with torch.no_grad():  # non-trivial BN statistics, so that a loader that skipped them would show
        model.train()(torch.rand(4, 1, 20, 20) * 3)
    model.eval()
    folder = save_for_hub(model, tmp_path_factory.mktemp('ckpt') / 'gaussderresnet18_fashionmnist')
    return model, folder


def test_config_round_trip_and_presets_by_name(tmp_path):
    config = GaussDerResNetConfig.from_preset('gaussderresnet18_stl10', scale_pool='avg')
    assert config.model_type == 'gaussderresnet'
    assert (config.num_channels, config.zero_order, config.spatial_pool, config.scale_pool) == (3, True, 'max', 'avg')
    assert config.id2label[2] == 'car' and config.num_labels == 10
    config.save_pretrained(tmp_path)
    again = AutoConfig.from_pretrained(tmp_path)
    assert isinstance(again, GaussDerResNetConfig)
    saved, loaded = config.to_dict(), again.to_dict()
    saved.pop('_name_or_path'), loaded.pop('_name_or_path')
    assert loaded == saved
    model = GaussDerResNetForImageClassification(again)
    assert model.gaussderresnet.channels == tuple(gaussder_hf.PRESETS['gaussderresnet18_stl10']['channels'])


@pytest.mark.parametrize('kwargs, pattern', [
    (dict(scale_pol='max'), r"unknown key\(s\) \['scale_pol'\]"),
    (dict(jet_order=5), 'jet_order.*5'),
    (dict(scale_pool='median'), "scale_pool.*'median'"),
    (dict(eps=2.0), 'eps.*2.0'),
    (dict(initial_scales=[1.0, -2.0]), r'initial_scales.*-2.0'),
    (dict(preset='resnet50'), "preset.*'resnet50'"),
])
def test_config_rejects_bad_and_unknown_keys(kwargs, pattern):
    with pytest.raises(ValueError, match=pattern):
        GaussDerResNetConfig(**kwargs)


def test_config_typo_in_a_saved_file_raises(tmp_path):
    GaussDerResNetConfig().save_pretrained(tmp_path)
    data = json.loads((tmp_path / 'config.json').read_text())
    data['scale_ratoi'] = data.pop('scale_ratio')
    (tmp_path / 'config.json').write_text(json.dumps(data))
    with pytest.raises(ValueError, match='scale_ratoi'):
        AutoConfig.from_pretrained(tmp_path)


def test_config_accepts_the_keys_pretrained_config_itself_takes(tmp_path):
    # Keys transformers writes (auto_map, _name_or_path), transformers 4 configs and Trainer
    # checkpoints carry (use_cache, torchscript, finetuning_task, ...): none is a model key.
    extra = dict(use_cache=False, auto_map={'AutoConfig': 'configuration.GaussDerResNetConfig'},
                 finetuning_task='fashion', torchscript=False, _name_or_path='somewhere', tie_word_embeddings=False,
                 problem_type='single_label_classification', pad_token_id=None, architectures=['X'])
    config = GaussDerResNetConfig(**extra)
    assert config.finetuning_task == 'fashion' and config.auto_map == extra['auto_map']
    config.save_pretrained(tmp_path)
    data = json.loads((tmp_path / 'config.json').read_text())
    data.update(extra)
    (tmp_path / 'config.json').write_text(json.dumps(data))
    again = AutoConfig.from_pretrained(tmp_path)
    assert isinstance(again, GaussDerResNetConfig) and again.torchscript is False


@pytest.mark.parametrize('key, value, pattern', [
    ('model_args', {'initial_scales': [1.0]}, r'model_args\.initial_scales: \[1\.0\]'),
    ('model_args', {'channels': [8, 8]}, r'model_args\.channels'),
    ('model_args', {'scale_pools': 'max'}, r"unknown key\(s\) \['scale_pools'\]"),
    ('num_classes', 5, 'num_classes: 5 != 10'),
    ('label_names', list('abcdefghij'), 'label_names'),
    ('pretrained_cfg', {'input_size': [3, 72, 72]}, r'pretrained_cfg\.input_size'),
])
def test_disagreeing_copies_of_the_architecture_are_an_error_in_both_libraries(tmp_path, key, value, pattern):
    model = timm.create_model('gaussderresnet10_fashionmnist', initial_scales=(1.0, 2.0))
    folder = save_for_hub(model, tmp_path / 'ckpt')
    data = json.loads((folder / 'config.json').read_text())
    data[key] = dict(data[key], **value) if isinstance(value, dict) else value
    (folder / 'config.json').write_text(json.dumps(data))
    with pytest.raises(ValueError, match=pattern):
        AutoModelForImageClassification.from_pretrained(folder)
    with pytest.raises(ValueError, match=pattern):
        timm.create_model(f'local-dir:{folder}', pretrained=True)


def test_forward_returns_transformers_output_with_loss():
    config = GaussDerResNetConfig(initial_scales=[1.0], channels=[4, 4, 6])
    model = GaussDerResNetForImageClassification(config)
    out = model(pixel_values=torch.rand(2, 1, 12, 12), labels=torch.tensor([1, 7]))
    assert isinstance(out, ImageClassifierOutputWithNoAttention)
    assert out.logits.shape == (2, 10)
    expected = torch.nn.functional.cross_entropy(out.logits, torch.tensor([1, 7]))
    torch.testing.assert_close(out.loss, expected)


def test_checkpoint_folder_contents(checkpoint):
    _, folder = checkpoint
    code = ['architecture.py', 'configuration.py', 'image_processing.py', 'input_pipeline.py', 'kernels.py',
            'layers.py', 'model.py', 'modeling.py', 'presets.py', 'rescaling.py']
    assert sorted(os.listdir(folder)) == sorted(
        ['README.md', 'config.json', 'model.safetensors', 'preprocessor_config.json', *code])
    for name in code:  # the package's own modules, for trust_remote_code
        assert (folder / name).read_bytes() == (Path(gaussder_hf.__file__).parent / name).read_bytes()
    config = json.loads((folder / 'config.json').read_text())
    assert config['auto_map'] == {
        'AutoConfig': 'configuration.GaussDerResNetConfig',
        'AutoImageProcessor': 'image_processing.GaussDerResNetImageProcessor',
        'AutoModelForImageClassification': 'modeling.GaussDerResNetForImageClassification'}
    assert config['model_type'] == 'gaussderresnet'
    assert config['architecture'] == 'gaussderresnet18_fashionmnist' and config['num_classes'] == 10
    assert config['label_names'] == FASHION_CLASSES
    card = (folder / 'README.md').read_text()
    assert card.startswith('---\n') and 'arXiv:2603.02843' in card and 'T-shirt/top' in card


def test_timm_and_transformers_load_the_same_checkpoint_identically(checkpoint):
    model, folder = checkpoint
    x = torch.rand(3, 1, 28, 28)
    hf = AutoModelForImageClassification.from_pretrained(folder).eval()
    local = timm.create_model(f'local-dir:{folder}', pretrained=True).eval()
    assert isinstance(hf, GaussDerResNetForImageClassification)
    with torch.no_grad():
        reference = model(x)
        torch.testing.assert_close(hf(pixel_values=x).logits, reference, rtol=0, atol=0)
        torch.testing.assert_close(local(x), reference, rtol=0, atol=0)
    assert hf.config.id2label[9] == 'Ankle boot'


def test_pipeline_on_a_pil_image(checkpoint):
    _, folder = checkpoint
    assert type(AutoImageProcessor.from_pretrained(folder)).__name__ == 'GaussDerResNetImageProcessor'
    classifier = pipeline('image-classification', model=str(folder))
    image = Image.fromarray((np.random.default_rng(0).random((28, 28)) * 255).astype(np.uint8))
    predictions = classifier(image, top_k=3)
    assert len(predictions) == 3
    assert all(p['label'] in FASHION_CLASSES for p in predictions)
    scores = [p['score'] for p in predictions]
    assert scores == sorted(scores, reverse=True) and 0 < sum(scores) <= 1 + 1e-6
    rgb = Image.fromarray((np.random.default_rng(1).random((30, 26, 3)) * 255).astype(np.uint8))
    assert classifier(rgb)[0]['label'] in FASHION_CLASSES  # RGB turned to grey by the processor


def test_image_processor_normalises_and_never_resizes():
    processor = gaussder_hf.GaussDerResNetImageProcessor.from_preset('gaussderresnet18_stl10')
    pixels = np.zeros((30, 41, 3), dtype=np.uint8)
    pixels[..., 0] = 255
    out = processor(Image.fromarray(pixels), return_tensors='pt')['pixel_values']
    assert out.shape == (1, 3, 30, 41)
    torch.testing.assert_close(out[0, :, 0, 0], torch.tensor([1.0, -1.0, -1.0]))
    canvas = gaussder_hf.GaussDerResNetImageProcessor.from_preset('gaussderresnet18_stl10',
                                                                  canvas_size={'height': 50, 'width': 45})
    assert canvas(Image.fromarray(pixels), return_tensors='pt')['pixel_values'].shape == (1, 3, 50, 45)
    with pytest.raises(ValueError, match='canvas_size'):
        gaussder_hf.GaussDerResNetImageProcessor(canvas_size={'height': 0, 'width': 3})


def test_mirror_extension_to_canvas_is_centred_and_never_crops():
    from gaussder_hf.input_pipeline import place_on_canvas
    row = torch.arange(5.0).view(1, 1, 5)
    torch.testing.assert_close(place_on_canvas(row, (1, 9), 'mirror'), torch.tensor([[[2.0, 1, 0, 1, 2, 3, 4, 3, 2]]]))
    torch.testing.assert_close(place_on_canvas(row, (1, 3), 'mirror'), row)


def test_trainer_step_changes_the_weights(tmp_path):
    config = GaussDerResNetConfig(initial_scales=[1.0, 1.4], channels=[4, 4, 6])
    model = GaussDerResNetForImageClassification(config)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    torch.manual_seed(0)
    data = [{'pixel_values': torch.rand(1, 12, 12), 'labels': i % 10} for i in range(8)]
    args = TrainingArguments(output_dir=str(tmp_path), max_steps=2, per_device_train_batch_size=4, report_to=[],
                             use_cpu=True, save_strategy='no', learning_rate=1e-2)
    result = Trainer(model=model, args=args, train_dataset=data).train()
    assert np.isfinite(result.training_loss)
    changed = [k for k, v in model.state_dict().items() if k.endswith('weight') and not torch.equal(v, before[k])]
    assert 'gaussderresnet.stem_conv.weight' in changed and 'gaussderresnet.head_conv.weight' in changed


def test_fine_tuning_with_other_labels_keeps_every_other_weight(checkpoint):
    model, folder = checkpoint
    tuned = AutoModelForImageClassification.from_pretrained(
        folder, num_labels=3, ignore_mismatched_sizes=True, id2label={0: 'a', 1: 'b', 2: 'c'},
        label2id={'a': 0, 'b': 1, 'c': 2})
    assert tuned.config.num_labels == 3 and tuned.gaussderresnet.head_conv.weight.shape[0] == 3
    source, target = model.state_dict(), tuned.gaussderresnet.state_dict()
    kept = [k for k in source if not k.startswith(('head_conv.', 'head_norm.'))]
    assert all(torch.equal(source[k], target[k]) for k in kept)
    assert tuned(pixel_values=torch.rand(1, 1, 16, 16)).logits.shape == (1, 3)


def test_pickle_checkpoints_are_refused(checkpoint, tmp_path):
    model, _ = checkpoint
    folder = save_for_hub(model, tmp_path / 'pickled')
    torch.save(model.state_dict(), folder / 'pytorch_model.bin')
    (folder / 'model.safetensors').unlink()
    with pytest.raises(OSError, match='safetensors only'):
        AutoModelForImageClassification.from_pretrained(folder)
    with pytest.raises(ValueError, match='safetensors only'):
        timm.create_model(f'local-dir:{folder}', pretrained=True)


def _lay_out_hub_cache(cache, repo_id, folder, revision='0123456789abcdef0123456789abcdef01234567'):
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    snapshot = repo / 'snapshots' / revision
    snapshot.mkdir(parents=True)
    for file in folder.iterdir():
        (snapshot / file.name).write_bytes(file.read_bytes())
    (repo / 'refs').mkdir()
    (repo / 'refs' / 'main').write_text(revision)


def test_model_card_snippets_run_from_the_offline_hf_cache(checkpoint, tmp_path):
    """The card's timm and transformers snippets, run as written against the Hub cache, give the logits."""
    model, folder = checkpoint
    name = 'gaussderresnet18_fashionmnist'
    repo_id = f'{gaussder_hf.HUB_NAMESPACE}/{name}'
    cache = tmp_path / 'hub'
    _lay_out_hub_cache(cache, repo_id, folder)
    x = torch.rand(2, 1, 20, 20)
    torch.save(x, tmp_path / 'x.pt')  # a plain tensor for the child process, from this test alone
    with torch.no_grad():
        torch.save(model(x), tmp_path / 'expected.pt')
    script = textwrap.dedent(f'''
        import re, timm, torch
        card = open({str(folder / 'README.md')!r}).read()
        blocks = re.findall(r'```python\\n(.*?)```', card, re.S)
        assert len(blocks) == 3 and all({repo_id!r} in b for b in blocks), blocks
        x = torch.load({str(tmp_path / 'x.pt')!r})
        expected = torch.load({str(tmp_path / 'expected.pt')!r})
        in_timm, in_transformers = {{}}, {{}}
        exec(blocks[0], in_timm)
        exec(blocks[1], in_transformers)
        with torch.no_grad():
            for out in (in_timm['model'](x), in_transformers['model'].eval()(pixel_values=x).logits):
                torch.testing.assert_close(out, expected, rtol=0, atol=0)
        try:  # by name: no weights are published for this model, and it says so at once
            timm.create_model({name!r}, pretrained=True)
            raise AssertionError('pretrained=True without published weights did not fail')
        except ValueError as error:
            assert 'no pretrained weights' in str(error), error
        classifier = in_transformers['classifier']
        print('OK', in_transformers['model'].config.id2label[0], len(classifier(torch.rand(1, 28, 28))))
    ''')
    env = dict(os.environ, HF_HUB_OFFLINE='1', HF_HUB_CACHE=str(cache), HF_HOME=str(tmp_path / 'home'))
    result = subprocess.run([sys.executable, '-c', script], env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert 'OK T-shirt/top 5' in result.stdout


@pytest.mark.parametrize('bad', [-1, 'x'])
@pytest.mark.parametrize('parameter', ARCHITECTURE, ids=lambda p: p.name)
def test_a_bad_hyperparameter_gets_the_same_error_from_the_model_and_the_config(parameter, bad):
    # One validation for both: the same message, naming the hyperparameter and the value. Neither
    # value is valid for any entry of the table (each is a count, a size, a rate, a flag or a name).
    with pytest.raises(ValueError) as from_model:
        GaussDerResNet(**{parameter.name: bad})
    with pytest.raises(ValueError) as from_config:
        GaussDerResNetConfig(**{parameter.field: bad})
    assert str(from_model.value) == str(from_config.value)
    assert str(from_model.value).startswith(f'{parameter.name}') and repr(bad) in str(from_model.value)
