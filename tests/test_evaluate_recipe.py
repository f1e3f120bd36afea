"""recipes/evaluate.py on real rescaled Fashion-MNIST: JSON, figures, and accuracies recomputed directly."""
import json
from fractions import Fraction

import datasets
import huggingface_hub.constants
import numpy as np
import pytest
import timm
import torch
from accelerate.utils import set_seed
from datasets import load_dataset
from fashion_mnist import FASHION_DIR, needs_fashion
from recipe_modules import load_recipe

import gaussder_hf
from gaussder_hf.analysis import evaluate
from gaussder_hf.rescaling import SIZE_FACTORS, size_factor_name

LIMIT = 16        # originals per split: the whole file stays fast on 2 CPU cores
BATCH_SIZE = 7    # several batches per split, the last one partial
PNG_MAGIC = b'\x89PNG\r\n\x1a\n'


recipe = load_recipe('evaluate')


@pytest.fixture(scope='module')
def run(tmp_path_factory, small_checkpoint):
    """Evaluates a tiny saved GaussDerResNet and a random timm resnet18 baseline once for the module."""
    tmp = tmp_path_factory.mktemp('evaluate')
    _, checkpoint = small_checkpoint(tmp / 'ckpt' / 'tiny', 'gaussderresnet18_fashionmnist', initial_scales=(1.0, 2.0))
    results = recipe.evaluate_models(
        [str(checkpoint), 'baseline=resnet18'], 'rescaled_fashion_mnist', data_dir=FASHION_DIR,
        max_examples=LIMIT, batch_size=BATCH_SIZE, output_dir=str(tmp / 'out'), cache_dir=str(tmp / 'cache'))
    return dict(results=results, checkpoint=checkpoint, out=tmp / 'out', cache=tmp / 'cache')


def _images(split, mean, std):
    x = torch.from_numpy(np.stack([np.asarray(im, dtype=np.float32) / 255 for im in split['image']]))[:, None]
    return (x - mean) / std, torch.tensor(split['label'])


@needs_fashion
def test_json_structure_and_figures(run):
    out = run['out']
    on_disk = json.loads((out / 'evaluation.json').read_text())
    assert on_disk == run['results']
    assert list(on_disk) == ['tiny', 'baseline']
    keys = [str(s) for s in SIZE_FACTORS]
    assert '0.5946035575013605' in keys
    for _label, entry in on_disk.items():
        assert set(entry) == {'model', 'dataset', 'size_factors', 'num_examples', 'accuracy', 'winners',
                              'initial_scales'}
        assert entry['dataset'] == 'rescaled_fashion_mnist'
        assert entry['size_factors'] == list(SIZE_FACTORS)
        assert list(entry['accuracy']) == keys and list(entry['num_examples']) == keys
        assert all(n == LIMIT for n in entry['num_examples'].values())
        assert all(0.0 <= a <= 1.0 for a in entry['accuracy'].values())
    assert on_disk['tiny']['model'] == str(run['checkpoint'])
    assert on_disk['tiny']['initial_scales'] == [1.0, 2.0]
    assert list(on_disk['tiny']['winners']) == keys
    for counts in on_disk['tiny']['winners'].values():
        assert len(counts) == 2 and sum(counts) == LIMIT
    assert on_disk['baseline']['model'] == 'resnet18'
    assert on_disk['baseline']['winners'] is None and on_disk['baseline']['initial_scales'] is None
    figures = sorted(p.name for p in out.glob('*.png'))
    assert figures == ['scale_generalisation.png', 'scale_selection_tiny.png']  # none for the baseline
    for name in figures:
        assert (out / name).read_bytes()[:8] == PNG_MAGIC


@needs_fashion
def test_accuracies_and_winners_equal_a_direct_computation(run):
    ds = load_dataset('rescaled_fashion_mnist', data_dir=FASHION_DIR, max_examples=LIMIT, cache_dir=str(run['cache']))
    tiny = timm.create_model(f'local-dir:{run["checkpoint"]}', pretrained=True).eval()
    set_seed(0)  # the recipe seeds 0 before creating each model
    baseline = timm.create_model('resnet18', in_chans=1, num_classes=10).eval()
    for s in SIZE_FACTORS:
        x, y = _images(ds[size_factor_name(s)], 0.5, 0.5)  # the tiny net's cfg; the fallback for resnet18's RGB cfg
        with torch.no_grad():
            for label, model in (('tiny', tiny), ('baseline', baseline)):
                prediction = torch.cat([model(chunk).argmax(-1) for chunk in x.split(BATCH_SIZE)])
                expected = Fraction(int((prediction == y).sum()), len(y))
                assert Fraction(run['results'][label]['accuracy'][str(s)]) == expected, (label, s)
            batches = list(zip(x.split(BATCH_SIZE), y.split(BATCH_SIZE)))
            assert run['results']['tiny']['winners'][str(s)] == evaluate(tiny, batches)['winners'], s


@needs_fashion
def test_main_with_a_labelled_spec_prints_the_table(run, tmp_path, capsys):
    recipe.main(['--model', 'rn18=resnet18', '--dataset', 'rescaled_fashion_mnist', '--data_dir', FASHION_DIR,
                 '--max_examples', str(LIMIT), '--output_dir', str(tmp_path), '--cache_dir', str(run['cache'])])
    printed = capsys.readouterr().out
    assert 'size factor' in printed and 'rn18' in printed and '0.595' in printed
    written = json.loads((tmp_path / 'evaluation.json').read_text())
    assert list(written) == ['rn18']
    assert written['rn18']['accuracy'] == run['results']['baseline']['accuracy']  # same seed, same weights
    assert 'predictions' not in written['rn18']  # only on request


@needs_fashion
def test_saved_predictions_are_the_per_image_classes_behind_the_accuracy(run, tmp_path):
    ds = load_dataset('rescaled_fashion_mnist', data_dir=FASHION_DIR, max_examples=LIMIT, cache_dir=str(run['cache']))
    recipe.main(['--model', f'tiny={run["checkpoint"]}', '--dataset', 'rescaled_fashion_mnist', '--data_dir',
                 FASHION_DIR, '--max_examples', str(LIMIT), '--output_dir', str(tmp_path), '--cache_dir',
                 str(run['cache']), '--batch_size', str(BATCH_SIZE), '--save_predictions'])
    written = json.loads((tmp_path / 'evaluation.json').read_text())['tiny']
    tiny = timm.create_model(f'local-dir:{run["checkpoint"]}', pretrained=True).eval()
    for s in SIZE_FACTORS:
        x, y = _images(ds[size_factor_name(s)], 0.5, 0.5)
        with torch.no_grad():
            direct = torch.cat([tiny(chunk).argmax(-1) for chunk in x.split(BATCH_SIZE)])
        assert written['predictions'][str(s)] == direct.tolist(), s
        assert Fraction(written['accuracy'][str(s)]) == Fraction(int((direct == y).sum()), LIMIT)


@needs_fashion
def test_size_factors_evaluate_those_splits_only(run, tmp_path, capsys):
    # The same network on two of the nine splits, given as a user types them (0.707 for 2**-0.5):
    # the same accuracies and winners as in the run over all nine, and only those two anywhere.
    recipe.main(['--model', f'tiny={run["checkpoint"]}', '--dataset', 'rescaled_fashion_mnist', '--data_dir',
                 FASHION_DIR, '--max_examples', str(LIMIT), '--output_dir', str(tmp_path), '--cache_dir',
                 str(run['cache']), '--batch_size', str(BATCH_SIZE), '--size_factors', '2', '0.707'])
    written = json.loads((tmp_path / 'evaluation.json').read_text())['tiny']
    keys = [str(2 ** -0.5), str(2.0)]
    assert written['size_factors'] == [2 ** -0.5, 2.0]
    assert list(written['accuracy']) == keys and list(written['winners']) == keys
    for key in keys:
        assert written['accuracy'][key] == run['results']['tiny']['accuracy'][key]
        assert written['winners'][key] == run['results']['tiny']['winners'][key]
    rows = [line.split('|')[0].strip() for line in capsys.readouterr().out.splitlines() if '%' in line]
    assert rows == ['0.707', '2.000']


@pytest.mark.parametrize('size_factors, message', [
    (['0.6'], "size factor 0.6 is not one of"),
    (['3'], "size factor 3.0 is not one of"),
    (['-1'], 'positive finite number, got -1.0'),
    ([], 'size_factors is empty'),
])
def test_a_size_factor_without_a_split_is_refused_before_any_data(tmp_path, size_factors, message):
    with pytest.raises(ValueError, match=message):
        recipe.evaluate_models(['resnet18'], 'rescaled_fashion_mnist', cache_dir=str(tmp_path / 'cache'),
                               size_factors=[float(s) for s in size_factors])
    assert not (tmp_path / 'cache').exists()


@pytest.mark.parametrize('spec, message', [
    ('no_such_model_xyz', 'unknown model'),
    ('local-dir:/no/such/folder', 'no such folder'),
    ('./no/such/checkpoint', 'no such folder'),
    ('=resnet18', 'empty label'),
    ('single (sigma0 = 1)=resnet18', "a label cannot contain '='"),
    ('final: six channels=resnet18', "a label cannot contain '=', ':'"),
])
def test_a_bad_model_spec_fails_before_any_data_is_built(spec, message, tmp_path):
    with pytest.raises(ValueError, match=message):
        recipe.evaluate_models([spec], 'rescaled_fashion_mnist', data_dir=str(tmp_path), cache_dir=str(tmp_path))


def test_labels_must_be_unique(tmp_path):
    with pytest.raises(ValueError, match='duplicate model label'):
        recipe.evaluate_models(['resnet18', 'resnet18'], 'rescaled_fashion_mnist', cache_dir=str(tmp_path))


def test_an_unknown_dataset_fails_clearly(tmp_path, monkeypatch):
    # Offline, so the Hub look-up fails at once instead of retrying.
    monkeypatch.setattr(datasets.config, 'HF_HUB_OFFLINE', True)
    monkeypatch.setattr(huggingface_hub.constants, 'HF_HUB_OFFLINE', True)
    with pytest.raises(ValueError, match="could not load dataset 'no_such_dataset_xyz'.*rescaled_fashion_mnist"):
        recipe.evaluate_models(['resnet18'], 'no_such_dataset_xyz', cache_dir=str(tmp_path / 'cache'),
                               output_dir=str(tmp_path / 'out'))
    # A dataset that loads but has no rescaled test splits.
    folder = tmp_path / 'plain'
    folder.mkdir()
    (folder / 'train.csv').write_text('image,label\na,0\n')
    with pytest.raises(ValueError, match='has no split'):
        recipe.evaluate_models(['resnet18'], str(folder), cache_dir=str(tmp_path / 'cache'),
                               output_dir=str(tmp_path / 'out'))
    assert not (tmp_path / 'out').exists()


@needs_fashion
def test_non_finite_logits_are_refused(run, tmp_path, small_checkpoint):
    """A checkpoint with a NaN weight gets an error, not an accuracy (argmax of NaN scores picks a class)."""
    broken, _ = small_checkpoint(tmp_path / 'fine', 'gaussderresnet18_fashionmnist', initial_scales=(1.0, 2.0))
    with torch.no_grad():
        broken.head_conv.weight[0, 0, 0] = float('nan')
    checkpoint = gaussder_hf.save_for_hub(broken, tmp_path / 'broken')
    with pytest.raises(ValueError, match=r"model 'broken' gives non-finite logits .* split test_s0p500"):
        recipe.evaluate_models([str(checkpoint)], 'rescaled_fashion_mnist', data_dir=FASHION_DIR,
                               max_examples=LIMIT, batch_size=BATCH_SIZE, output_dir=str(tmp_path / 'out'),
                               cache_dir=str(run['cache']))


@needs_fashion
def test_the_deprecated_out_dir_spelling_still_writes_there(run, tmp_path, capsys):
    args = ['--model', 'rn18=resnet18', '--dataset', 'rescaled_fashion_mnist', '--data_dir', FASHION_DIR,
            '--max_examples', str(LIMIT), '--cache_dir', str(run['cache'])]
    with pytest.warns(FutureWarning, match='--output_dir'):
        recipe.main(args + ['--out_dir', str(tmp_path / 'cli')])
    assert json.loads((tmp_path / 'cli' / 'evaluation.json').read_text())['rn18']['accuracy'] == \
        run['results']['baseline']['accuracy']
    # The keyword of evaluate_models: accepted with the warning (the spec then fails before any data is built)
    with pytest.warns(FutureWarning, match='output_dir'), pytest.raises(ValueError, match='unknown model'):
        recipe.evaluate_models(['no_such_model_xyz'], 'rescaled_fashion_mnist', out_dir=str(tmp_path / 'api'))
    with pytest.raises(ValueError, match="output_dir='.*b' and its deprecated spelling out_dir='.*a' differ"):
        recipe.evaluate_models(['resnet18'], 'rescaled_fashion_mnist', output_dir=str(tmp_path / 'b'),
                               out_dir=str(tmp_path / 'a'))
    capsys.readouterr()
    with pytest.raises(SystemExit):
        recipe.main(args + ['--out_dir', str(tmp_path / 'a'), '--output_dir', str(tmp_path / 'b')])
    assert "--output_dir '" in capsys.readouterr().err and not (tmp_path / 'a').exists()
