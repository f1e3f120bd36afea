"""The generic builder ``rescaled_images``: any image-classification dataset in the rescaled-benchmark protocol."""
from __future__ import annotations

import numpy as np
import pytest
from datasets import load_dataset
from fashion_mnist import FASHION_DIR
from PIL import Image
from recipe_modules import load_recipe

import gaussder_hf  # noqa: F401  (registers the builders with datasets)
from gaussder_hf.data.sources import CLASS_NAMES, read_fashion_mnist
from gaussder_hf.rescaling import SIZE_FACTORS, size_factor_name

N_TEST = 60
N_TRAIN = 40
FASHION_NAMES = list(CLASS_NAMES['fashion_mnist'])


def _write_folder(root, split, images, labels):
    # Class folders named by the zero-padded label id (Fashion-MNIST's 'T-shirt/top' cannot be a
    # folder name); files by the zero-padded original index.
    for index, (image, label) in enumerate(zip(images, labels)):
        folder = root / split / f'{int(label):02d}'
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(folder / f'{index:05d}.png')


@pytest.fixture(scope='module')
def fashion_folder(tmp_path_factory):
    root = tmp_path_factory.mktemp('fashion_folder')
    test_images, test_labels = read_fashion_mnist(FASHION_DIR, 'test', limit=N_TEST)
    train_images, train_labels = read_fashion_mnist(FASHION_DIR, 'train', limit=N_TRAIN)
    _write_folder(root, 'test', test_images, test_labels)
    _write_folder(root, 'train', train_images, train_labels)
    return root, (train_images, train_labels), (test_images, test_labels)


@pytest.fixture(scope='module')
def generic(fashion_folder, tmp_path_factory):
    root = fashion_folder[0]
    return load_dataset('rescaled_images', base=str(root), canvas_size=72, background='black',
                        class_names=FASHION_NAMES, cache_dir=str(tmp_path_factory.mktemp('cache')))


def test_fashion_mnist_through_the_generic_path_equals_the_dedicated_builder(fashion_folder, generic, tmp_path):
    _, _, (_, test_labels) = fashion_folder
    reference = load_dataset('rescaled_fashion_mnist', data_dir=FASHION_DIR, max_examples=N_TEST, test_only=True,
                             cache_dir=str(tmp_path))
    # imagefolder orders the files by path: by class folder, then by original index.
    order = sorted(range(N_TEST), key=lambda i: (int(test_labels[i]), i))
    test_splits = ['test'] + [size_factor_name(s) for s in SIZE_FACTORS]
    assert set(test_splits) <= set(generic) and set(test_splits) <= set(reference)
    assert generic['test'].features['label'].names == reference['test'].features['label'].names == FASHION_NAMES
    for split in test_splits:
        ours, theirs = generic[split], reference[split]
        assert len(ours) == N_TEST
        expected = np.stack([np.asarray(theirs[i]['image']) for i in order])
        got = np.stack([np.asarray(image) for image in ours['image']])
        assert got.shape == expected.shape == (N_TEST, 72, 72), split
        np.testing.assert_array_equal(got, expected, err_msg=split)
        assert ours['label'] == [theirs[i]['label'] for i in order], split
        assert set(ours['size_factor']) == set(theirs['size_factor']), split


def test_training_folder_gives_train_and_a_carved_validation(fashion_folder, generic):
    _, (train_images, train_labels), _ = fashion_folder
    assert set(generic) == {'train', 'validation', 'test', *(size_factor_name(s) for s in SIZE_FACTORS)}
    train, validation = generic['train'], generic['validation']
    assert (len(train), len(validation)) == (N_TRAIN - 4, 4)  # 10 % of 40
    # Every training original appears exactly once over train + validation, centred on 72x72 black.
    by_index = {}
    for split in (train, validation):
        for example in split:
            image = np.asarray(example['image'])
            assert image.shape == (72, 72) and example['size_factor'] == 1.0
            assert not image[:22].any() and not image[50:].any() and not image[:, :22].any()
            key = image[22:50, 22:50].tobytes()
            assert key not in by_index
            by_index[key] = example['label']
    originals = {image.tobytes(): int(label) for image, label in zip(train_images, train_labels)}
    assert by_index == originals


def test_validation_carving_is_deterministic_and_follows_the_seed(fashion_folder, tmp_path):
    root = fashion_folder[0]

    def validation(seed, cache):
        ds = load_dataset('rescaled_images', base=str(root), canvas_size=28, seed=seed, validation_fraction=0.25,
                          size_factors=[1.0], cache_dir=str(tmp_path / cache))
        return [np.asarray(image).tobytes() for image in ds['validation']['image']]

    first, again, other = validation(0, 'a'), validation(0, 'b'), validation(1, 'c')
    assert len(first) == 10 and first == again and first != other


def _solid(mode, size, colour):
    return Image.new(mode, size, colour)


def test_mixed_modes_and_sizes_are_rescaled_from_their_own_size(tmp_path):
    root = tmp_path / 'mixed'
    (root / 'test' / 'a').mkdir(parents=True)
    (root / 'test' / 'b').mkdir(parents=True)
    (root / 'train' / 'a').mkdir(parents=True)
    (root / 'train' / 'b').mkdir(parents=True)
    _solid('L', (6, 4), 200).save(root / 'test' / 'a' / '0.png')                     # grey, 4 rows x 6 columns
    _solid('RGBA', (8, 8), (10, 20, 30, 0)).save(root / 'test' / 'a' / '1.png')       # alpha is dropped
    palette = _solid('RGB', (8, 8), (40, 50, 60)).convert('P', palette=Image.Palette.ADAPTIVE)
    palette.save(root / 'test' / 'b' / '2.png')
    _solid('RGB', (10, 10), (90, 80, 70)).save(root / 'test' / 'b' / '3.png')
    for i, name in enumerate('ab'):
        for j in range(5):
            _solid('RGB', (4, 4), (i * 100, j, 0)).save(root / 'train' / name / f'{j}.png')
    ds = load_dataset('rescaled_images', base=str(root), cache_dir=str(tmp_path / 'cache'))
    test = [np.asarray(image) for image in ds['test']['image']]
    # Default canvas: twice the largest test side (10); any grey image in a colour dataset becomes RGB.
    assert all(image.shape == (20, 20, 3) for image in test)
    grey, rgba, palette, rgb = test
    np.testing.assert_array_equal(grey[8:12, 7:13], np.full((4, 6, 3), 200))  # centred: (20 - 4) // 2, (20 - 6) // 2
    assert grey.sum() == 200 * 3 * 24
    np.testing.assert_array_equal(rgba[6:14, 6:14], np.broadcast_to([10, 20, 30], (8, 8, 3)))
    np.testing.assert_array_equal(palette[6:14, 6:14], np.broadcast_to([40, 50, 60], (8, 8, 3)))
    # At s = 2 the 10x10 image fills the 20x20 canvas; the 6x4 grey one is 12x8.
    big = [np.asarray(image) for image in ds['test_s2p000']['image']]
    np.testing.assert_array_equal(big[3], np.broadcast_to([90, 80, 70], (20, 20, 3)))
    assert (big[0][..., 0] > 0).sum() == 12 * 8
    assert ds['train'].features['label'].names == ['a', 'b'] and len(ds['validation']) == 1


def test_an_image_larger_than_the_canvas_is_centre_cropped(tmp_path):
    root = tmp_path / 'crop'
    for split in ('train', 'test'):
        for name in 'ab':
            (root / split / name).mkdir(parents=True)
            image = np.zeros((10, 10), np.uint8)
            image[:, 5:] = 255  # left half black, right half white
            for j in range(3):
                Image.fromarray(image).save(root / split / name / f'{j}.png')
    ds = load_dataset('rescaled_images', base=str(root), canvas_size=8, size_factors=[1.0, 2.0],
                      cache_dir=str(tmp_path / 'cache'))
    cropped = np.asarray(ds['test_s2p000'][0]['image'])
    # 20x20 at s = 2, offset (8 - 20) // 2 = -6: canvas columns 0..3 are image columns 6..9 (black), 4..7 white.
    assert cropped.shape == (8, 8)
    assert not cropped[:, :3].any() and (cropped[:, 5:] == 255).all()


@pytest.fixture(scope='module')
def small_folder(tmp_path_factory):
    root = tmp_path_factory.mktemp('small')
    for split in ('train', 'test'):
        for name in ('cat', 'dog'):
            (root / split / name).mkdir(parents=True)
            for j in range(3):
                _solid('L', (5, 5), 10 * j).save(root / split / name / f'{j}.png')
    return root


@pytest.mark.parametrize('options, message', [
    ({'image_column': 'picture'}, "image_column 'picture' is not a column"),
    ({'label_column': 'category'}, "label_column 'category' is not a column"),
    ({'background': 'white'}, "background must be one of ('black', 'mirror'), got 'white'"),
    ({'size_factors': [1.0, -2.0]}, 'size_factor must be a positive finite number, got -2.0'),
    ({'size_factors': [1.0, 'big']}, "got 'big'"),
    ({'test_split': 'holdout'}, "split 'holdout' is not in base"),
    ({'class_names': ['cat']}, 'class_names has 1 names but label column'),
    ({'canvas_size': 0}, 'canvas_size must be a positive int'),
    ({'validation_fraction': 1.5}, 'validation_fraction must be a number strictly between 0 and 1, got 1.5'),
    ({'validation_split': 'test'}, "validation_split 'test' is also the train or test split"),
])
def test_bad_options_name_the_bad_value(small_folder, tmp_path, options, message):
    with pytest.raises(ValueError) as error:
        load_dataset('rescaled_images', base=str(small_folder), cache_dir=str(tmp_path), **options)
    assert message in str(error.value)


def test_an_empty_class_folder_is_refused(small_folder, tmp_path):
    root = tmp_path / 'empty_class'
    for split in ('train', 'test'):
        for name in ('cat', 'dog'):
            (root / split / name).mkdir(parents=True)
        _solid('L', (5, 5), 1).save(root / split / 'cat' / '0.png')
        _solid('L', (5, 5), 1).save(root / split / 'dog' / '0.png')
    (root / 'test' / 'bird').mkdir()
    with pytest.raises(ValueError, match='class folders without images: test/bird'):
        load_dataset('rescaled_images', base=str(root), cache_dir=str(tmp_path / 'cache'))


def test_images_without_class_folders_have_no_labels(tmp_path):
    root = tmp_path / 'flat'
    for split in ('train', 'test'):
        (root / split).mkdir(parents=True)
        for j in range(3):
            _solid('L', (5, 5), j).save(root / split / f'{j}.png')
    with pytest.raises(ValueError, match=r"class names \['test', 'train'\] are split names .* class subfolders"):
        load_dataset('rescaled_images', base=str(root), cache_dir=str(tmp_path / 'cache'))
    # A single folder of images without any subfolder: imagefolder gives no label column at all.
    flat = tmp_path / 'flatter'
    flat.mkdir()
    for j in range(3):
        _solid('L', (5, 5), j).save(flat / f'{j}.png')
    with pytest.raises(ValueError, match='no ClassLabel column .*label_column='):
        load_dataset('rescaled_images', base=str(flat), test_split='train', test_only=True,
                     cache_dir=str(tmp_path / 'cache2'))


def test_ambiguous_image_columns_and_integer_labels_in_a_parquet_base(tmp_path):
    import datasets

    images = [_solid('L', (4, 4), v) for v in (0, 50, 100, 150)]
    features = datasets.Features({'front': datasets.Image(), 'back': datasets.Image(), 'kind': datasets.Value('int64')})
    table = {'front': images, 'back': images[::-1], 'kind': [0, 1, 0, 1]}
    root = tmp_path / 'parquet'
    (root / 'data').mkdir(parents=True)
    for split in ('train', 'test'):
        datasets.Dataset.from_dict(table, features=features).to_parquet(str(root / 'data' / f'{split}-0.parquet'))
    with pytest.raises(ValueError, match=r'several Image columns \(front, back\).*image_column='):
        load_dataset('rescaled_images', base=str(root), cache_dir=str(tmp_path / 'c1'))
    with pytest.raises(ValueError, match="label column 'kind' holds integers .*class_names="):
        load_dataset('rescaled_images', base=str(root), image_column='back', label_column='kind',
                     cache_dir=str(tmp_path / 'c2'))
    ds = load_dataset('rescaled_images', base=str(root), image_column='back', label_column='kind',
                      class_names=['even', 'odd'], canvas_size=4, size_factors=[1.0],
                      validation_fraction=0.25, cache_dir=str(tmp_path / 'c3'))
    assert ds['test'].features['label'].names == ['even', 'odd']
    assert [int(np.asarray(image)[0, 0]) for image in ds['test']['image']] == [150, 100, 50, 0]


def test_a_label_out_of_range_is_named(tmp_path):
    import datasets

    features = datasets.Features({'image': datasets.Image(), 'label': datasets.Value('int64')})
    root = tmp_path / 'parquet'
    (root / 'data').mkdir(parents=True)
    for split in ('train', 'test'):
        table = {'image': [_solid('L', (4, 4), 0)] * 3, 'label': [0, 1, 2 if split == 'test' else 1]}
        datasets.Dataset.from_dict(table, features=features).to_parquet(str(root / 'data' / f'{split}-0.parquet'))
    with pytest.raises(ValueError, match="'test' example 2 has label 2; labels must be 0..1"):
        load_dataset('rescaled_images', base=str(root), label_column='label', class_names=['a', 'b'],
                     cache_dir=str(tmp_path / 'c'))


def test_data_dir_is_the_base_and_a_changed_file_is_rebuilt(small_folder, tmp_path):
    import shutil

    root = tmp_path / 'copy'
    shutil.copytree(small_folder, root)
    cache = str(tmp_path / 'cache')
    first = load_dataset('rescaled_images', data_dir=str(root), canvas_size=5, size_factors=[1.0], cache_dir=cache)
    assert np.asarray(first['test'][0]['image']).max() == 0  # cat/0.png is black
    _solid('L', (5, 5), 77).save(root / 'test' / 'cat' / '0.png')
    again = load_dataset('rescaled_images', data_dir=str(root), canvas_size=5, size_factors=[1.0], cache_dir=cache)
    assert (np.asarray(again['test'][0]['image']) == 77).all()


def test_without_a_base_and_the_fixed_settings_helpers(tmp_path):
    from gaussder_hf.data import dataset_background, processor_settings

    with pytest.raises(ValueError, match='rescaled_images needs base='):
        load_dataset('rescaled_images', cache_dir=str(tmp_path))
    with pytest.raises(ValueError, match="'rescaled_images' has no fixed background"):
        dataset_background('rescaled_images')
    assert processor_settings('rescaled_images') == {'background': 'black'}  # canvas chosen from the data
    assert processor_settings('rescaled_images', {'canvas_size': 64, 'background': 'mirror'}) == {
        'canvas_size': {'height': 64, 'width': 64}, 'background': 'mirror'}


def test_a_16_bit_image_is_refused_with_its_path(tmp_path):
    root = tmp_path / 'deep'
    for split in ('train', 'test'):
        for name in 'ab':
            (root / split / name).mkdir(parents=True)
            for j in range(2):
                _solid('L', (4, 4), j).save(root / split / name / f'{j}.png')
    Image.fromarray(np.full((4, 4), 4000, np.uint16)).save(root / 'test' / 'b' / '9.png')
    with pytest.raises(ValueError, match=r"'test' example 4 \(.*9\.png\) has PIL mode 'I;16'.*8-bit"):
        load_dataset('rescaled_images', base=str(root), cache_dir=str(tmp_path / 'cache'))


def test_the_recipes_train_and_evaluate_on_a_folder_of_images(fashion_folder, tmp_path):
    # recipes/train.py with `dataset: rescaled_images` and its options in `dataset_args`: a few
    # steps, the end-of-run evaluation on every size factor, and the saved image processor on the
    # dataset's canvas and background.
    import json
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    recipe = load_recipe('train')
    args = {'base': str(fashion_folder[0]), 'canvas_size': 72, 'background': 'black', 'class_names': FASHION_NAMES}
    cfg = recipe.load_config(str(root / 'recipes' / 'configs' / 'smoke.yaml'), [
        'dataset=rescaled_images', 'data_dir=null', f'dataset_args={json.dumps(args)}', 'max_examples=null',
        'batch_size=8', 'max_steps=2', 'evaluate_every_epoch=false', f'cache_dir={tmp_path / "cache"}',
        f'output_dir={tmp_path / "run"}'])
    result = recipe.train(cfg)
    assert result['step'] == 2
    evaluation = json.loads((tmp_path / 'run' / 'evaluation' / 'evaluation.json').read_text())
    accuracy = evaluation['model']['accuracy']
    assert len(accuracy) == len(SIZE_FACTORS) and all(0 <= a <= 1 for a in accuracy.values())
    assert evaluation['model']['num_examples'][str(1.0)] == N_TEST
    processor = json.loads((tmp_path / 'run' / 'model' / 'preprocessor_config.json').read_text())
    assert processor['canvas_size'] == {'height': 72, 'width': 72} and processor['background'] == 'black'
