"""One checkpoint, whoever wrote it: each writer's folder loads in each reader with identical logits.

Writers: ``gaussder_hf.save_for_hub``, transformers' ``save_pretrained``, a ``Trainer``
checkpoint and timm's ``save_for_hf``. Readers: timm's ``local-dir:``, transformers'
``AutoModelForImageClassification`` and the ``image-classification`` pipeline. The models have
5 classes and 3 input channels, unlike the preset's 10 and 1, so a reader that took either from
anywhere but the folder would fail.
"""
import json
import shutil

import numpy as np
import pytest
import timm
import torch
from PIL import Image
from safetensors.torch import load_file, save_file
from transformers import (
    AutoConfig,
    AutoImageProcessor,
    AutoModelForImageClassification,
    Trainer,
    TrainingArguments,
    pipeline,
)
from transformers.dynamic_module_utils import get_class_from_dynamic_module

from gaussder_hf import (
    GaussDerResNet,
    GaussDerResNetConfig,
    GaussDerResNetForImageClassification,
    GaussDerResNetImageProcessor,
    save_for_hub,
)
from gaussder_hf.architecture import ARCHITECTURE, architecture_of, check_architecture
from gaussder_hf.hub import config_from_model

NAME = 'gaussderresnet10_fashionmnist'
SCALES = (1.0, 2.0)
LABELS = ['ant', 'bee', 'cat', 'dog', 'eel']
WRITERS = ['save_for_hub', 'save_pretrained', 'trainer', 'timm_save_for_hf']


def _calibrated(net: GaussDerResNet) -> GaussDerResNet:
    # Non-trivial batch-norm statistics, so that a reader that skipped them would show.
    torch.manual_seed(1)
    with torch.no_grad():
        net.train()(torch.rand(4, 3, 16, 16) * 3)
    return net.eval()


def _timm_net() -> GaussDerResNet:
    torch.manual_seed(0)
    return _calibrated(timm.create_model(NAME, num_classes=5, in_chans=3, initial_scales=SCALES))


def _hf_model() -> GaussDerResNetForImageClassification:
    torch.manual_seed(0)
    config = GaussDerResNetConfig.from_preset(
        NAME, num_channels=3, mean=[0.5] * 3, std=[0.5] * 3, initial_scales=list(SCALES),
        id2label=dict(enumerate(LABELS)), label2id={n: i for i, n in enumerate(LABELS)})
    model = GaussDerResNetForImageClassification(config)
    _calibrated(model.gaussderresnet)
    return model


def _processor() -> GaussDerResNetImageProcessor:
    return GaussDerResNetImageProcessor(num_channels=3, image_mean=[0.5] * 3, image_std=[0.5] * 3)


@pytest.fixture(scope='module', params=WRITERS)
def written(request, tmp_path_factory):
    """(writer, folder, reference network) for each writer."""
    folder = tmp_path_factory.mktemp(request.param) / 'checkpoint'
    if request.param == 'save_for_hub':
        net = _timm_net()
        save_for_hub(net, folder, class_names=LABELS)
    elif request.param == 'save_pretrained':
        model = _hf_model()
        model.save_pretrained(folder)
        _processor().save_pretrained(folder)
        net = model.gaussderresnet
    elif request.param == 'trainer':
        model = _hf_model()
        data = [{'pixel_values': torch.rand(3, 16, 16), 'labels': i % 5} for i in range(4)]
        args = TrainingArguments(
            output_dir=str(folder.parent / 'run'), max_steps=1, per_device_train_batch_size=4, report_to=[],
            use_cpu=True, save_strategy='steps', save_steps=1, learning_rate=0.1)
        Trainer(model=model, args=args, train_dataset=data, processing_class=_processor()).train()
        folder = folder.parent / 'run' / 'checkpoint-1'
        net = model.gaussderresnet.eval()
    else:
        net = _timm_net()
        timm.models.save_for_hf(net, folder, safe_serialization=True)
    return request.param, folder, net


def _transformers_model(writer, folder):
    if writer == 'timm_save_for_hf':
        # AutoConfig reads a timm folder as transformers' TimmWrapper, whose constructor passes
        # num_classes twice when timm >= 1.0.31 recorded it in model_args (see the xfail below).
        config = AutoConfig.from_pretrained(folder)
        assert type(config).__name__ == 'TimmWrapperConfig'
        config.model_args.pop('num_classes', None)
        return AutoModelForImageClassification.from_pretrained(folder, config=config).eval()
    return AutoModelForImageClassification.from_pretrained(folder).eval()


def test_timm_local_dir(written):
    _, folder, net = written
    loaded = timm.create_model(f'local-dir:{folder}', pretrained=True).eval()
    assert (loaded.num_classes, loaded.in_chans, loaded.initial_scales) == (5, 3, SCALES)
    x = torch.rand(2, 3, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), net(x), rtol=0, atol=0)


def test_auto_model(written):
    writer, folder, net = written
    model = _transformers_model(writer, folder)
    x = torch.rand(2, 3, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(model(pixel_values=x).logits, net(x), rtol=0, atol=0)
    if writer != 'timm_save_for_hf':
        assert isinstance(model, GaussDerResNetForImageClassification)
        assert [model.config.id2label[i] for i in range(5)] == LABELS


def test_pipeline(written):
    writer, folder, net = written
    rgb = (np.random.default_rng(0).random((16, 16, 3)) * 255).astype(np.uint8)
    if writer == 'timm_save_for_hf':
        processor = AutoImageProcessor.from_pretrained(folder)  # timm's transforms, from config.json
        classifier = pipeline('image-classification', model=_transformers_model(writer, folder),
                              image_processor=processor)
        pixels = processor(Image.fromarray(rgb), return_tensors='pt')['pixel_values']
        names = [f'LABEL_{i}' for i in range(5)]
    else:
        classifier = pipeline('image-classification', model=str(folder))
        assert type(classifier.image_processor).__name__ == 'GaussDerResNetImageProcessor'
        # The normalisation written out independently of the processor: [0, 1], then mean 0.5, std 0.5.
        pixels = (torch.from_numpy(rgb).permute(2, 0, 1)[None].float() / 255 - 0.5) / 0.5
        names = LABELS
    with torch.no_grad():
        expected = torch.softmax(net(pixels), dim=-1)[0]
    predictions = classifier(Image.fromarray(rgb), top_k=5)
    scores = {p['label']: p['score'] for p in predictions}
    assert sorted(scores) == sorted(names)
    for i, name in enumerate(names):
        assert scores[name] == pytest.approx(expected[i].item(), abs=1e-6)


@pytest.mark.xfail(raises=TypeError, strict=True,
                   reason="transformers' TimmWrapper passes num_classes twice for timm >= 1.0.31 save_for_hf folders")
def test_timm_folder_in_transformers_without_the_config_fix(tmp_path):
    net = _timm_net()
    timm.models.save_for_hf(net, tmp_path, safe_serialization=True)
    AutoModelForImageClassification.from_pretrained(tmp_path)


@pytest.fixture(scope='module')
def broken(tmp_path_factory):
    """Folders of a save_for_hub checkpoint with one tensor missing and one of another shape."""
    source = tmp_path_factory.mktemp('source') / 'checkpoint'
    save_for_hub(_timm_net(), source, class_names=LABELS)
    folders = {}
    for case in ('missing', 'mis-shaped'):
        folder = tmp_path_factory.mktemp(case) / 'checkpoint'
        shutil.copytree(source, folder)
        state = load_file(folder / 'model.safetensors')
        if case == 'missing':
            del state['blocks.1.bn1.running_var']
        else:
            state['blocks.1.bn1.running_var'] = torch.ones(7)
        save_file(state, folder / 'model.safetensors')
        folders[case] = folder
    return folders


@pytest.mark.parametrize('case', ['missing', 'mis-shaped'])
@pytest.mark.parametrize('reader', ['timm', 'auto', 'pipeline'])
def test_a_broken_folder_is_an_error_naming_the_tensor(broken, case, reader):
    folder = broken[case]
    with pytest.raises(ValueError, match=r'blocks\.1\.bn1\.running_var'):
        if reader == 'timm':
            timm.create_model(f'local-dir:{folder}', pretrained=True)
        elif reader == 'auto':
            AutoModelForImageClassification.from_pretrained(folder)
        else:
            pipeline('image-classification', model=str(folder))


def test_explicit_arguments_still_adapt_a_folder(tmp_path):
    # timm's contract: an explicit num_classes gets a new head, in_chans an adapted first layer.
    net = _timm_net()
    folder = save_for_hub(net, tmp_path / 'checkpoint', class_names=LABELS)
    tuned = timm.create_model(f'local-dir:{folder}', pretrained=True, num_classes=2, in_chans=1).eval()
    assert (tuned.num_classes, tuned.in_chans) == (2, 1)
    source, target = net.state_dict(), tuned.state_dict()
    kept = [k for k in source if not k.startswith(('head_', 'stem_conv.'))]
    assert all(torch.equal(source[k], target[k]) for k in kept)
    torch.testing.assert_close(target['stem_conv.weight'], source['stem_conv.weight'].sum(1, keepdim=True))


def test_every_architecture_hyperparameter_survives_every_checkpoint_path(tmp_path):
    # Iterates the table of hyperparameters: an entry added to it is covered here without a change
    # to this test, to the transformers config, to save_for_hub or to the timm loader.
    example = check_architecture({p.name: p.example for p in ARCHITECTURE})
    default = check_architecture({})
    assert all(example[name] != default[name] for name in example), 'an example must differ from its default'
    torch.manual_seed(0)
    net = GaussDerResNet(num_classes=3, **example)
    with torch.no_grad():
        net.train()(torch.rand(4, example['in_chans'], 12, 12))
    net.eval()
    assert architecture_of(net) == example

    config = config_from_model(net)  # model -> transformers config
    assert {p.field: getattr(config, p.field) for p in ARCHITECTURE} == {
        p.field: list(v) if isinstance(v, tuple) else v for p, v in zip(ARCHITECTURE, example.values())}
    hf = GaussDerResNetForImageClassification(config)
    hf.gaussderresnet.load_state_dict(net.state_dict())
    folders = dict(save_for_hub=save_for_hub(net, tmp_path / 'hub'), save_pretrained=tmp_path / 'pretrained')
    hf.save_pretrained(folders['save_pretrained'])

    x = torch.rand(2, example['in_chans'], 12, 12)
    with torch.no_grad():
        expected = net(x)
        for writer, folder in folders.items():
            loaded = {'timm': timm.create_model(f'local-dir:{folder}', pretrained=True).eval(),
                      'auto': AutoModelForImageClassification.from_pretrained(folder).eval().gaussderresnet}
            for reader, model in loaded.items():
                assert architecture_of(model) == example, (writer, reader)
                torch.testing.assert_close(model(x), expected, rtol=0, atol=0)


def test_a_config_written_before_bn_eps_was_recorded_loads_with_pytorchs_epsilon(tmp_path):
    # Folders saved before bn_eps travelled with the weights have no such key: they were built
    # with PyTorch's default, which is what None means.
    torch.manual_seed(0)
    net = _calibrated(timm.create_model(NAME, num_classes=5, in_chans=3, initial_scales=SCALES))
    folder = save_for_hub(net, tmp_path / 'checkpoint', class_names=LABELS)
    config = json.loads((folder / 'config.json').read_text())
    assert config.pop('bn_eps') is None and config['model_args'].pop('bn_eps') is None
    (folder / 'config.json').write_text(json.dumps(config))
    x = torch.rand(2, 3, 16, 16)
    with torch.no_grad():
        expected = net(x)
        for model in (timm.create_model(f'local-dir:{folder}', pretrained=True).eval(),
                      AutoModelForImageClassification.from_pretrained(folder).eval().gaussderresnet):
            assert model.bn_eps is None and model.stem_norm.eps == 1e-5
            torch.testing.assert_close(model(x), expected, rtol=0, atol=0)


def _legacy_folder(folder):
    """A save_for_hub folder whose shortcut projections carry the name of earlier versions, ``downsample``."""
    state = load_file(folder / 'model.safetensors')
    assert any('.shortcut.' in k for k in state)
    save_file({k.replace('.shortcut.', '.downsample.'): v for k, v in state.items()}, folder / 'model.safetensors',
              metadata={'format': 'pt'})
    return load_file(folder / 'model.safetensors')


def test_a_checkpoint_with_the_old_shortcut_names_loads_everywhere(tmp_path):
    torch.manual_seed(0)
    net = _calibrated(timm.create_model(NAME, num_classes=5, in_chans=3, channels=(4, 6, 6), initial_scales=SCALES))
    folder = save_for_hub(net, tmp_path / 'checkpoint', class_names=LABELS)
    legacy = _legacy_folder(folder)
    x = torch.rand(2, 3, 16, 16)
    with torch.no_grad():
        expected = net(x)
        plain = GaussDerResNet(in_chans=3, num_classes=5, channels=(4, 6, 6), initial_scales=SCALES)
        plain.load_state_dict(legacy)  # strict
        auto = AutoModelForImageClassification.from_pretrained(folder).eval()
        # The copy of the model code the folder carries for trust_remote_code, loaded as transformers does.
        remote_class = get_class_from_dynamic_module('modeling.GaussDerResNetForImageClassification', str(folder))
        assert remote_class.__module__.startswith('transformers_modules')
        remote = remote_class.from_pretrained(folder).eval()
        loaded = {
            'load_state_dict': plain.eval(),
            'timm local-dir': timm.create_model(f'local-dir:{folder}', pretrained=True).eval(),
            'timm file': timm.create_model(NAME, pretrained=True, pretrained_cfg_overlay=dict(file=str(folder))).eval(),
            'AutoModel': auto.gaussderresnet,
            'AutoModel remote code': remote.gaussderresnet,
        }
        for reader, model in loaded.items():
            torch.testing.assert_close(model(x), expected, rtol=0, atol=0, msg=reader)
    # Saving again writes the current names.
    auto.save_pretrained(tmp_path / 'again')
    keys = load_file(tmp_path / 'again' / 'model.safetensors').keys()
    assert any('.shortcut.' in k for k in keys) and not any('.downsample.' in k for k in keys)
    with pytest.warns(DeprecationWarning, match='shortcut'):
        assert plain.blocks[0].downsample is plain.blocks[0].shortcut
