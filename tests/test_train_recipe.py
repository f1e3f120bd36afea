"""recipes/train.py on real Fashion-MNIST subsets: learning, exact resume, two processes, configs."""
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import timm
import torch
from fashion_mnist import needs_fashion
from recipe_modules import load_recipe

from gaussder_hf.model import GaussDerResNet

ROOT = Path(__file__).resolve().parents[1]
recipe = load_recipe('train')

SMOKE = str(ROOT / 'recipes' / 'configs' / 'smoke.yaml')


def _losses(log: Path) -> list[float]:
    return [r['loss'] for r in map(json.loads, log.read_text().splitlines()) if 'loss' in r]


def test_config_rejects_typos_and_bad_values(tmp_path):
    with pytest.raises(ValueError, match=r"unknown config key\(s\) \['lr_rate'\]"):
        recipe.load_config(SMOKE, ['lr_rate=0.1'])
    bad = tmp_path / 'bad.yaml'
    bad.write_text('model: gaussderresnet18_fashionmnist\nbatchsize: 8\n')
    with pytest.raises(ValueError, match="'batchsize'"):
        recipe.load_config(str(bad))
    with pytest.raises(ValueError, match="'batch_size' must be.*'eight'"):
        recipe.load_config(SMOKE, ['batch_size=eight'])
    with pytest.raises(ValueError, match="mixed_precision.*'fp8'"):
        recipe.load_config(SMOKE, ['mixed_precision=fp8'])
    with pytest.raises(ValueError, match="dynamo_backend must be one of .*'inductor'.*got 'inductr'"):
        recipe.load_config(SMOKE, ['dynamo_backend=inductr'])
    assert recipe.load_config(SMOKE, ['lr=1e-3', 'weight_decay=5E-2']).lr == 0.001  # YAML 1.2 floats
    for override, allowed in [('lr=.inf', 'a finite number > 0'), ('lr=0', 'a finite number > 0'),
                              ('weight_decay=.nan', 'a finite number >= 0'), ('max_steps=0', r'None \(unset\) or >= 1'),
                              ('label_smoothing=-0.1', r'in \[0, 1\)'), ('label_smoothing=1', r'in \[0, 1\)'),
                              ('warmup_epochs=-1', 'a finite number >= 0'),
                              ('max_examples=0', r'None \(unset\) or >= 1'),
                              ('num_workers=-1', '>= 0')]:
        key, value = override.split('=')
        with pytest.raises(ValueError, match=f"'{key}' must be {allowed}, got"):
            recipe.load_config(SMOKE, [override])
    for empty in ('output_dir=', "output_dir=''", 'output_dir=" "'):
        with pytest.raises(ValueError, match="'output_dir' must be the path of a folder"):
            recipe.load_config(SMOKE, [empty])
    with pytest.raises(ValueError, match='resume and overwrite exclude each other'):
        recipe.load_config(SMOKE, ['overwrite=true'], resume=True)
    cfg = recipe.load_config(SMOKE, ['lr=0.02', 'model_args={initial_scales: [1.0]}'])
    assert cfg.lr == 0.02 and cfg.model_args == {'initial_scales': [1.0]}
    overrides = recipe._flags_to_overrides(['--push_to_hub', '--hub_model_id', 'me/m', '--lr=0.5', 'epochs=2'])
    assert overrides == ['push_to_hub=true', 'hub_model_id=me/m', 'lr=0.5', 'epochs=2']
    with pytest.raises(ValueError, match='push_to_hub needs hub_model_id'):
        recipe.load_config(SMOKE, ['push_to_hub=true'])


@pytest.mark.parametrize('name', ['rescaled_fashion_mnist', 'rescaled_cifar10', 'rescaled_stl10',
                                  'rescaled_fashion_mnist_stage1', 'rescaled_fashion_mnist_stage2'])
def test_preset_configs_load_and_follow_table_2(name):
    cfg = recipe.load_config(str(ROOT / 'recipes' / 'configs' / f'{name}.yaml'))
    assert cfg.weight_decay == 0.025 and cfg.label_smoothing == 0.1
    table2 = {'rescaled_fashion_mnist': (64, 32, 0.0, 0.01), 'rescaled_cifar10': (45, 90, 8.0, 0.01),
              'rescaled_stl10': (17, 119, 8.0, 0.01), 'rescaled_fashion_mnist_stage1': (128, 16, 0.0, 0.01),
              'rescaled_fashion_mnist_stage2': (64, 16, 0.0, 0.005)}
    assert (cfg.batch_size, cfg.epochs, cfg.warmup_epochs, cfg.lr) == table2[name]


@needs_fashion
def test_smoke_training_learns_evaluates_and_pushes_a_loadable_model(tmp_path, monkeypatch, recording_api):
    import timm
    from datasets import load_dataset
    from huggingface_hub import ModelCard
    from transformers import AutoModelForImageClassification

    import gaussder_hf

    monkeypatch.setattr(gaussder_hf.hub, 'HfApi', lambda token=None: recording_api)  # no network here
    flags = ['--push_to_hub', '--hub_model_id', 'someone/smoke']  # as on the command line
    cfg = recipe.load_config(SMOKE, [f'output_dir={tmp_path / "run"}', f'cache_dir={tmp_path / "cache"}']
                             + recipe._flags_to_overrides(flags))
    result = recipe.train(cfg)
    losses = _losses(result['log'])
    assert len(losses) == result['step'] == 16
    assert sum(losses[-4:]) / 4 < sum(losses[:4]) / 4  # the loss goes down
    assert result['val_accuracy'] > 0.2  # ten classes: chance is 0.1
    assert (tmp_path / 'run' / 'config.yaml').is_file()

    # The pushed folder: what would be uploaded, with the evaluation in its card.
    model_dir = result['model_dir']
    (_, repo, _), (_, _, upload) = recording_api.calls
    assert repo == 'someone/smoke' and Path(upload['folder_path']) == model_dir
    accuracy = result['evaluation']['accuracy']
    assert len(accuracy) == 9 and (tmp_path / 'run' / 'evaluation' / 'scale_generalisation.png').is_file()
    card = ModelCard.load(model_dir / 'README.md')
    assert sorted(r.metric_value for r in card.data.eval_results) == sorted(accuracy.values())

    # It loads back in timm and transformers and reproduces the accuracy at s = 1.
    data = load_dataset(cfg.dataset, data_dir=cfg.data_dir, max_examples=cfg.max_examples, cache_dir=cfg.cache_dir)
    split = data['test_s1p000']
    in_timm = timm.create_model(f'local-dir:{model_dir}', pretrained=True).eval()
    in_transformers = AutoModelForImageClassification.from_pretrained(model_dir).eval()
    dataset = recipe.make_dataset(cfg, split, in_timm, train=False)
    pixels = torch.stack([dataset[i]['pixel_values'] for i in range(len(dataset))])
    labels = torch.tensor(split['label'])
    with torch.no_grad():
        for model in (in_timm, lambda x: in_transformers(pixel_values=x).logits):
            got = float((model(pixels).argmax(-1) == labels).float().mean())
            assert got == pytest.approx(accuracy['1.0'], abs=1e-9)


@needs_fashion
def test_resume_reproduces_the_uninterrupted_run_exactly(tmp_path, crashed_copy):
    common = [f'cache_dir={tmp_path / "cache"}', 'max_examples=64', 'batch_size=16', 'epochs=3', 'save_every=2',
              'keep_checkpoints=10', 'evaluate_at_end=false']
    full = recipe.train(recipe.load_config(SMOKE, common + [f'output_dir={tmp_path / "a"}']))
    # A crash after step 6 (mid-epoch) leaves checkpoint 6 and a half-written save of step 8.
    crashed = crashed_copy(tmp_path / 'a', tmp_path / 'b', 6)
    (crashed / '.partial-checkpoint-00000008').mkdir()
    resumed = recipe.train(recipe.load_config(SMOKE, common + [f'output_dir={crashed}'], resume=True))
    assert resumed['step'] == full['step'] == 12
    a, b = full['model'].state_dict(), resumed['model'].state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    # The steps after 6 were rolled back and logged again, once each.
    assert _losses(crashed / 'log.jsonl') == _losses(tmp_path / 'a' / 'log.jsonl')
    assert recipe.newest_checkpoint(crashed).name == 'checkpoint-00000012'
    assert not list(crashed.glob('.partial*')) and not (crashed / '.lock').exists()


@pytest.fixture
def restore_accelerate_state():
    from accelerate.state import AcceleratorState

    yield
    AcceleratorState._reset_state(True)  # the other tests run without compilation
    torch._dynamo.reset()


@pytest.mark.slow  # compiling a training step takes ~10 s; the model's one-graph compile runs by default
@needs_fashion
def test_compiled_training_matches_eager_resumes_and_saves_plain_weights(tmp_path, restore_accelerate_state,
                                                                          crashed_copy, monkeypatch):
    # aot_eager: Dynamo's capture and AOTAutograd's joint trace, no C++ compiler needed.
    # Traced code keeps the plain layout; so does the eager run here, so that the two round alike
    # (with one thread the eager network would run channels-last).
    monkeypatch.setattr(GaussDerResNet, 'maps_layout', 'contiguous')
    common = [f'cache_dir={tmp_path / "cache"}', 'max_examples=64', 'batch_size=16', 'epochs=2', 'save_every=2',
              'keep_checkpoints=10', 'evaluate_at_end=false', 'evaluate_every_epoch=false']
    torch._dynamo.reset()
    eager = recipe.train(recipe.load_config(SMOKE, common + [f'output_dir={tmp_path / "eager"}']))
    from accelerate.state import AcceleratorState
    from torch._dynamo.utils import counters

    # accelerate keeps one state per process: a different backend in the same process is refused...
    with pytest.raises(ValueError, match="dynamo_backend='aot_eager' cannot take effect"):
        recipe.train(recipe.load_config(SMOKE, common + [f'output_dir={tmp_path / "x"}', 'dynamo_backend=aot_eager']))
    # ...and takes effect in a fresh one (here: a fresh state).
    AcceleratorState._reset_state(True)
    counters.clear()
    compiled = recipe.train(recipe.load_config(SMOKE, common + [f'output_dir={tmp_path / "compiled"}',
                                                                'dynamo_backend=aot_eager']))
    assert counters['stats']['unique_graphs'] >= 1  # the model did go through torch.compile
    assert compiled['step'] == eager['step'] == 8
    torch.testing.assert_close(_losses(compiled['log']), _losses(eager['log']), rtol=1e-4, atol=1e-5)
    a, b = eager['model'].state_dict(), compiled['model'].state_dict()
    assert sorted(a) == sorted(b)  # no '_orig_mod.' prefix from the compile wrapper
    for key in a:
        torch.testing.assert_close(b[key], a[key], rtol=1e-3, atol=1e-4, msg=key)
    saved = timm.create_model(f'local-dir:{compiled["model_dir"]}', pretrained=True)
    assert all(torch.equal(saved.state_dict()[k], b[k]) for k in b)

    # A compiled run resumes from its own checkpoint and ends where the uninterrupted one did.
    crashed = crashed_copy(tmp_path / 'compiled', tmp_path / 'crashed', 4)
    resumed = recipe.train(recipe.load_config(SMOKE, common + [f'output_dir={crashed}', 'dynamo_backend=aot_eager'],
                                              resume=True))
    c = resumed['model'].state_dict()
    assert all(torch.equal(c[k], b[k]) for k in b)


@needs_fashion
def test_two_processes_gather_the_same_validation_accuracy(tmp_path):
    run = tmp_path / 'ddp'
    env = dict(os.environ, ACCELERATE_USE_CPU='1', OMP_NUM_THREADS='1')
    command = [sys.executable, '-m', 'accelerate.commands.launch', '--multi_gpu', '--num_processes', '2',
               '--num_machines', '1', '--mixed_precision', 'no', '--dynamo_backend', 'no',
               str(ROOT / 'recipes' / 'train.py'), '--config', SMOKE, f'output_dir={run}',
               f'cache_dir={tmp_path / "cache"}', 'max_examples=96', 'batch_size=8', 'epochs=1',
               'evaluate_at_end=false']
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    records = [json.loads(line) for line in (run / 'log.jsonl').read_text().splitlines()]
    # 96 examples, 2 processes x 8 per step: 6 steps, each logged once (main process only).
    assert [r['step'] for r in records if 'loss' in r] == [1, 2, 3, 4, 5, 6]
    # The cosine schedule spans the 6 steps of both processes together: lr(s) = 0.01 (1 + cos(pi s / 6)) / 2.
    expected = [0.005 * (1 + math.cos(math.pi * s / 6)) for s in range(1, 7)]
    assert [r['lr'] for r in records if 'loss' in r] == pytest.approx(expected, abs=1e-12)
    gathered = [r['val_accuracy'] for r in records if 'val_accuracy' in r][-1]
    # The same weights evaluated in one process give the same accuracy over all 96 images.
    import timm
    from datasets import load_dataset

    import gaussder_hf  # noqa: F401

    model = timm.create_model(f'local-dir:{run / "model"}', pretrained=True).eval()
    cfg = recipe.load_config(SMOKE, [f'cache_dir={tmp_path / "cache"}', 'max_examples=96'])
    data = load_dataset(cfg.dataset, data_dir=cfg.data_dir, max_examples=96, cache_dir=cfg.cache_dir)
    dataset = recipe.make_dataset(cfg, data['validation'], model, train=False)
    with torch.no_grad():
        batch = torch.stack([dataset[i]['pixel_values'] for i in range(len(dataset))])
        labels = torch.tensor([dataset[i]['labels'] for i in range(len(dataset))])
        single = int((model(batch).argmax(-1) == labels).sum()) / len(labels)  # float32 would round 10/96
    assert len(dataset) == 96 and gathered == pytest.approx(single, abs=1e-9)


def test_init_from_a_checkpoint_with_other_classes_keeps_every_other_weight(tmp_path, small_checkpoint):
    source, folder = small_checkpoint(tmp_path / 'five', 'gaussderresnet18_fashionmnist',
                                      model_args={'num_classes': 5}, class_names=list('abcde'))
    cfg = recipe.load_config(SMOKE, [f'init_from={folder}', 'model_args={initial_scales: [1.0, 2.0]}'])
    model = recipe.build_model(cfg, num_classes=10, in_chans=1)
    assert model.num_classes == 10 and model.initial_scales == (1.0, 2.0)
    before, after = source.state_dict(), model.state_dict()
    kept = [k for k in before if not k.startswith(('head_conv.', 'head_norm.'))]
    assert kept and all(torch.equal(before[k], after[k]) for k in kept)
    assert after['head_conv.weight'].shape[0] == 10


def test_crop_size_centre_crops_train_and_validation_images_and_rejects_bad_values():
    import datasets
    import numpy as np
    import timm
    from PIL import Image

    pixels = np.random.default_rng(0).integers(0, 256, size=(72, 72), dtype=np.uint8)
    split = datasets.Dataset.from_dict({'image': [Image.fromarray(pixels)], 'label': [3]},
                                       features=datasets.Features({'image': datasets.Image(),
                                                                   'label': datasets.Value('int64')}))
    model = timm.create_model('gaussderresnet10_fashionmnist')
    full = recipe.make_dataset(recipe.load_config(SMOKE), split, model, train=False)[0]['pixel_values']
    for train in (False, True):
        cfg = recipe.load_config(SMOKE, ['crop_size=48', 'hflip=false'])
        cropped = recipe.make_dataset(cfg, split, model, train=train)[0]['pixel_values']
        assert cropped.shape == (1, 48, 48)
        torch.testing.assert_close(cropped, full[:, 12:60, 12:60], rtol=0, atol=0)
    with pytest.raises(ValueError, match='crop_size 80 is larger than the 72x72 images'):
        recipe.make_dataset(recipe.load_config(SMOKE, ['crop_size=80']), split, model, train=True)
    with pytest.raises(ValueError, match="'crop_size' must be None or >= 1, got 0"):
        recipe.load_config(SMOKE, ['crop_size=0'])


def test_cpu_experiment_configs_train_the_small_variant_and_resnet18_alike():
    gd = recipe.load_config(str(ROOT / 'recipes' / 'configs' / 'rescaled_fashion_mnist_cpu.yaml'))
    r18 = recipe.load_config(str(ROOT / 'recipes' / 'configs' / 'rescaled_fashion_mnist_resnet18_cpu.yaml'))
    assert gd.model == 'gaussderresnet10_fashionmnist' and gd.model_args == {'initial_scales': [1.0]}
    assert r18.model == 'resnet18' and r18.crop_size is None
    same = ('dataset', 'batch_size', 'epochs', 'lr', 'warmup_epochs', 'weight_decay', 'label_smoothing', 'hflip')
    assert [getattr(gd, k) for k in same] == [getattr(r18, k) for k in same]


def test_a_timm_baseline_is_saved_with_its_training_normalisation_and_no_pickle(tmp_path):
    # A 1-channel resnet18 trains on (x - 0.5) / 0.5 (ImageNet's RGB statistics don't fit it);
    # its saved config must say so, or every evaluation of the checkpoint sees shifted inputs.
    model = timm.create_model('resnet18', in_chans=1, num_classes=10)
    used = recipe.normalisation(model)
    assert used == ((0.5,), (0.5,))
    # Its home is the input pipeline; the spelling through the image processor module still works.
    from gaussder_hf.input_pipeline import model_normalisation
    with pytest.warns(FutureWarning, match='gaussder_hf.input_pipeline'):
        from gaussder_hf.image_processing import model_normalisation as old_spelling
    assert old_spelling is model_normalisation
    folder = recipe.save_model(model, tmp_path / 'resnet18', recipe.load_config(None))
    assert (folder / 'model.safetensors').is_file() and not list(folder.glob('*.bin'))
    loaded = timm.create_model(f'local-dir:{folder}', pretrained=True)
    assert (tuple(loaded.pretrained_cfg['mean']), tuple(loaded.pretrained_cfg['std'])) == used
