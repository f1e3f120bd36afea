"""Scale augmentation in recipes/train.py: the rescaled datasets' own rescaling, log-uniform, reproducible draws."""
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from fashion_mnist import FASHION_DIR, needs_fashion
from recipe_modules import load_recipe

ROOT = Path(__file__).resolve().parents[1]
recipe = load_recipe('train')

SMOKE = str(ROOT / 'recipes' / 'configs' / 'smoke.yaml')
TINY = ['max_examples=64', 'batch_size=16', 'evaluate_at_end=false', 'evaluate_every_epoch=false']
SQRT2 = math.sqrt(2.0)


def _config(tmp_path, *overrides, **kwargs):
    return recipe.load_config(SMOKE, TINY + [f'cache_dir={tmp_path / "cache"}', f'output_dir={tmp_path / "run"}']
                              + list(overrides), **kwargs)


@pytest.fixture(scope='module')
def fashion(tmp_path_factory):
    """The first 8 originals of every split of rescaled Fashion-MNIST, built in a temporary cache."""
    from datasets import load_dataset

    import gaussder_hf  # noqa: F401  (registers the builders)

    return load_dataset('rescaled_fashion_mnist', data_dir=FASHION_DIR, max_examples=8,
                        cache_dir=str(tmp_path_factory.mktemp('cache')))


def _training_set(tmp_path, data, *overrides):
    """The training dataset train.py builds, without the other augmentations."""
    import timm

    cfg = _config(tmp_path, 'hflip=false', *overrides)
    model = timm.create_model('resnet18', num_classes=10, in_chans=1)  # any model: a timm baseline here
    return recipe.make_dataset(cfg, data, model, train=True)


@needs_fashion
@pytest.mark.parametrize('k', [-2, 1])  # s = 1/sqrt2 (the object shrinks), 2**(1/4) (it grows)
def test_fixed_size_factor_gives_the_rescaled_test_split_pixel_for_pixel(tmp_path, fashion, k):
    from gaussder_hf.data.sources import read_fashion_mnist
    from gaussder_hf.rescaling import rescale_batch, size_factor_name

    s = 2.0 ** (k / 4)
    # The test split at s = 1 as if it were training data: its augmented images must be the builder's test_s split.
    dataset = _training_set(tmp_path, fashion['test'], f'scale_augmentation=[{s!r}, {s!r}]')
    assert isinstance(dataset.transform, recipe.ScaleAugmentation)
    expected = fashion[size_factor_name(s)]
    for index in range(len(expected)):
        with torch.random.fork_rng(devices=[]):
            got = dataset.transform.pixels(dataset.split[index]['image'])  # [0, 1], before normalisation
        want = torch.from_numpy(np.array(expected[index]['image']))[None].to(torch.float32) / 255
        assert torch.equal(got, want), index
    # And the training set proper against the official files, read independently and rescaled.
    train = _training_set(tmp_path, fashion['train'], f'scale_augmentation=[{s!r}, {s!r}]')
    originals, _ = read_fashion_mnist(FASHION_DIR, 'train', limit=8)
    want = torch.from_numpy(rescale_batch(originals, s, 72, 'black'))[:, None].to(torch.float32) / 255
    # After normalisation (resnet18 on 1 channel: mean = std = 0.5), undone here.
    assert train.transform.pipeline.mean == (0.5,) and train.transform.pipeline.std == (0.5,)
    got = torch.stack([train[index]['pixel_values'] for index in range(8)]) * 0.5 + 0.5
    assert torch.allclose(got, want, atol=1e-6)
    assert not torch.allclose(got, torch.stack([
        torch.from_numpy(np.array(train.split[i]['image'])) for i in range(8)])[:, None].float() / 255, atol=0.01)


def test_draws_are_log_uniform_reproducible_and_new_every_epoch():
    low, high = 0.5, 2.0
    augmentation = recipe.ScaleAugmentation(None, low, high, 28, 72, 'black')

    def draws(seed, epoch, n=2000):
        out = []
        for index in range(n):
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(recipe.example_seed(seed, epoch, index))
                out.append(augmentation.draw())
        return np.log(out)

    logs = draws(0, 0)
    assert low <= math.exp(logs.min()) and math.exp(logs.max()) <= high
    # log s uniform on [log low, log high]: mean in the middle, std (log high - log low) / sqrt 12, flat histogram.
    width = math.log(high) - math.log(low)
    assert abs(logs.mean() - (math.log(low) + math.log(high)) / 2) < 0.05 * width
    assert abs(logs.std() - width / math.sqrt(12)) < 0.05 * width
    counts, _ = np.histogram(logs, bins=4, range=(math.log(low), math.log(high)))
    assert counts.min() > 400 and counts.max() < 600  # 500 expected per bin
    assert logs.min() < math.log(low) + 0.01 * width and logs.max() > math.log(high) - 0.01 * width
    assert np.array_equal(draws(0, 0, 50), logs[:50])
    assert not np.isclose(draws(0, 1, 50), logs[:50]).any()
    assert not np.isclose(draws(1, 0, 50), logs[:50]).any()


@needs_fashion
def test_augmented_images_repeat_per_seed_index_and_epoch_and_change_across_epochs(tmp_path, fashion):
    dataset = _training_set(tmp_path, fashion['train'], 'scale_augmentation=[0.5, 2.0]')
    first = [dataset[i]['pixel_values'] for i in range(4)]
    assert all(torch.equal(a, dataset[i]['pixel_values']) for i, a in enumerate(first))
    dataset.epoch = 1
    assert not any(torch.equal(a, dataset[i]['pixel_values']) for i, a in enumerate(first))


@pytest.mark.parametrize('value', [[0.0, 1.0], [-1.0, 2.0], [2.0, 1.0], [0.5, float('inf')], [float('nan'), 1.0],
                                   [1.0], [0.5, 1.0, 2.0], 1.5, 'wide', [True, 2.0], ['0.5', '2']])
def test_bad_scale_augmentation_is_refused_naming_the_value(tmp_path, value):
    with pytest.raises(ValueError, match=r"'scale_augmentation'.*0 < low <= high.*got") as error:
        _config(tmp_path, scale_augmentation=value)
    assert repr(value) in str(error.value)


def test_good_scale_augmentation_is_kept_as_a_list_of_floats(tmp_path):
    assert _config(tmp_path, 'scale_augmentation=[1, 2]').scale_augmentation == [1.0, 2.0]
    assert _config(tmp_path, scale_augmentation=(0.75, 0.75)).scale_augmentation == [0.75, 0.75]
    assert _config(tmp_path).scale_augmentation is None
    assert 'scale_augmentation' not in recipe.RESUMABLE_CHANGES


def test_a_dataset_without_known_originals_is_refused():
    with pytest.raises(ValueError, match=r"scale_augmentation needs .*'rescaled_images'"):
        recipe.scale_augmentation_geometry('rescaled_images')
    assert recipe.scale_augmentation_geometry('rescaled_cifar10') == (32, 64, 'mirror')


@needs_fashion
def test_smoke_training_with_scale_augmentation_runs_and_a_resume_may_not_change_it(tmp_path):
    cfg = _config(tmp_path, 'max_steps=2', 'save_every=2', 'scale_augmentation=[0.7071, 1.4142]')
    result = recipe.train(cfg)
    assert result['step'] == 2
    losses = [line for line in (tmp_path / 'run' / 'log.jsonl').read_text().splitlines() if '"loss"' in line]
    assert len(losses) == 2
    with pytest.raises(ValueError, match=r'scale_augmentation: \[0\.7071, 1\.4142\] -> \[0\.5, 2\.0\]'):
        recipe.train(_config(tmp_path, 'max_steps=4', 'scale_augmentation=[0.5, 2.0]', resume=True))
    with pytest.raises(ValueError, match=r'scale_augmentation: \[0\.7071, 1\.4142\] -> None'):
        recipe.train(_config(tmp_path, 'max_steps=4', resume=True))
    # A run recorded before the key existed trained without it: it resumes without, not with.
    manifest_path = tmp_path / 'run' / 'checkpoint-00000002' / 'manifest.json'
    manifest = json.loads(manifest_path.read_text())
    del manifest['config']['scale_augmentation']
    manifest_path.write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match=r"scale_augmentation: None -> \[0\.7071, 1\.4142\]"):
        recipe.train(_config(tmp_path, 'max_steps=4', 'scale_augmentation=[0.7071, 1.4142]', resume=True))
    assert recipe.train(_config(tmp_path, 'max_steps=3', resume=True))['step'] == 3


@needs_fashion
def test_a_resumed_run_with_scale_augmentation_is_the_uninterrupted_one(tmp_path, crashed_copy):
    def losses(folder):
        records = [json.loads(line) for line in (folder / 'log.jsonl').read_text().splitlines()]
        return [r['loss'] for r in records if 'loss' in r]

    # 4 steps per epoch: 6 steps cross into epoch 1, whose size factors are drawn anew.
    common = ['max_steps=6', 'save_every=2', 'keep_checkpoints=10', 'scale_augmentation=[0.5, 2.0]']
    full = recipe.train(_config(tmp_path, *common, f'output_dir={tmp_path / "a"}'))
    crashed = crashed_copy(tmp_path / 'a', tmp_path / 'b', 2)  # killed after its checkpoint at step 2
    resumed = recipe.train(_config(tmp_path, *common, f'output_dir={crashed}', resume=True))
    assert resumed['step'] == full['step'] == 6
    a, b = full['model'].state_dict(), resumed['model'].state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert losses(crashed) == losses(tmp_path / 'a')
    # The augmentation reaches the training batches: without it the same seed gives other losses.
    plain = recipe.train(_config(tmp_path, 'max_steps=2', f'output_dir={tmp_path / "c"}'))
    assert plain['step'] == 2 and losses(tmp_path / 'c')[0] != losses(tmp_path / 'a')[0]


@pytest.mark.parametrize('dataset', ['rescaled_cifar10', 'rescaled_stl10'])
def test_mirror_extended_training_canvases_give_back_their_originals_exactly(dataset):
    from gaussder_hf.rescaling import rescale_batch

    side, canvas, background = recipe.scale_augmentation_geometry(dataset)
    originals = np.random.default_rng(0).integers(0, 256, (2, side, side, 3), dtype=np.uint8)
    training = rescale_batch(originals, 1.0, canvas, background)  # what the builder stores at size factor 1
    augmentation = recipe.ScaleAugmentation(type('Pipeline', (), {'max_pixels': None})(), 0.5, 2.0, side, canvas,
                                            background)
    for s in (2.0 ** -0.5, 1.0, 2.0 ** 0.75):
        want = torch.from_numpy(rescale_batch(originals, s, canvas, background)).permute(0, 3, 1, 2)
        for image, expected in zip(training, want):
            assert torch.equal(augmentation.rescale(image, s), expected)
