"""The rescaled datasets as Hugging Face datasets, built from the real Fashion-MNIST files."""
import os

import datasets
import datasets.load
import numpy as np
import pytest
from datasets import load_dataset
from fashion_mnist import FASHION_DIR, needs_fashion

import gaussder_hf  # noqa: F401  (registers the builders)
from gaussder_hf.data import BUILDERS, builder_for, split_names, stl10_split_ids
from gaussder_hf.data.export import export_dataset, push_dataset_folder
from gaussder_hf.data.sources import read_fashion_mnist

LIMIT = 40  # originals per split: enough to check everything, fast enough for CI

SPLITS = ['train', 'validation', 'test', 'test_s0p500', 'test_s0p595', 'test_s0p707', 'test_s0p841', 'test_s1p000',
          'test_s1p189', 'test_s1p414', 'test_s1p682', 'test_s2p000']


@pytest.fixture(scope='module')
def fashion(tmp_path_factory):
    cache = tmp_path_factory.mktemp('cache')
    return load_dataset('rescaled_fashion_mnist', data_dir=FASHION_DIR, max_examples=LIMIT, cache_dir=str(cache))


def test_the_load_dataset_hook_is_in_place():
    # Pins the hook: if a datasets release stops routing names through this function, fail here.
    assert datasets.load.dataset_module_factory._gaussder_hf_names == tuple(BUILDERS)
    module = datasets.load.dataset_module_factory('rescaled_cifar10')
    assert module.module_path == 'gaussder_hf.data.rescaled_cifar10'
    assert datasets.load.import_main_class(module.module_path) is BUILDERS['rescaled_cifar10']


def test_split_names_follow_the_papers_file_naming():
    assert split_names() == SPLITS


@needs_fashion
def test_fashion_splits_features_and_sizes(fashion):
    assert list(fashion) == SPLITS
    for split, ds in fashion.items():
        assert len(ds) == LIMIT, split
        assert ds.features['label'].names[0] == 'T-shirt/top' and ds.features['label'].names[9] == 'Ankle boot'
        image = ds[0]['image']
        assert image.size == (72, 72) and image.mode == 'L'
    assert set(fashion['train'].unique('size_factor')) == {1.0}
    assert fashion['test_s0p707'][0]['size_factor'] == pytest.approx(2 ** -0.5, abs=1e-6)


@needs_fashion
def test_labels_are_preserved_and_splits_come_from_the_right_originals(fashion):
    _, train_labels = read_fashion_mnist(FASHION_DIR, 'train')
    _, test_labels = read_fashion_mnist(FASHION_DIR, 'test', limit=LIMIT)
    assert fashion['train']['label'] == train_labels[:LIMIT].tolist()
    assert fashion['validation']['label'] == train_labels[50_000:50_000 + LIMIT].tolist()
    for split in SPLITS[2:]:
        assert fashion[split]['label'] == test_labels.tolist(), split


def _box_sizes(images, threshold=16) -> np.ndarray:
    """Height and width of the box of pixels > threshold (above the faint bicubic tails), ``(N, 2)``."""
    sizes = []
    for image in images:
        pixels = np.asarray(image) > threshold
        rows, cols = np.flatnonzero(pixels.any(axis=1)), np.flatnonzero(pixels.any(axis=0))
        sizes.append((rows[-1] - rows[0] + 1, cols[-1] - cols[0] + 1))
    return np.array(sizes, dtype=float)


@needs_fashion
def test_object_grows_with_the_size_factor(fashion):
    originals, _ = read_fashion_mnist(FASHION_DIR, 'test', limit=LIMIT)
    before = _box_sizes(originals)
    for split in SPLITS[3:]:
        s = fashion[split][0]['size_factor']
        factor = round(28 * s) / 28  # the image is resized to round(28 s) pixels
        error = _box_sizes(fashion[split]['image']) - factor * before
        # Within 1 px for the median object, 2.5 px for every one (edges sit on the pixel grid
        # and the interpolation blurs them); a factor one step of 2**(1/4) off misses by >= 3 px.
        assert abs(np.median(error)) <= 1 and np.abs(error).max() <= 2.5, (split, np.median(error), error.max())


@needs_fashion
def test_builds_are_deterministic(fashion, tmp_path):
    again = builder_for('rescaled_fashion_mnist', data_dir=FASHION_DIR, max_examples=LIMIT, cache_dir=str(tmp_path))
    again.download_and_prepare()
    rebuilt = again.as_dataset()
    for split in ('train', 'test_s0p595', 'test_s2p000'):
        a = fashion[split].cast_column('image', datasets.Image(decode=False))
        b = rebuilt[split].cast_column('image', datasets.Image(decode=False))
        assert [x['bytes'] for x in a['image']] == [x['bytes'] for x in b['image']], split


@needs_fashion
def test_export_loads_without_the_package_and_card_describes_it(fashion, tmp_path):
    folder = export_dataset(fashion, tmp_path / 'out', builder_for('rescaled_fashion_mnist', max_examples=LIMIT))
    card = (folder / 'README.md').read_text()
    assert 'configs:' in card and 'test_s1p414' in card and 'MIT' in card and 'arXiv:2603.02843' in card
    reloaded = load_dataset(str(folder))  # plain parquet: the gaussder_hf builders are not involved
    assert list(reloaded) == SPLITS
    assert reloaded['test_s2p000'].features == fashion['test_s2p000'].features
    assert reloaded['test_s2p000'][3]['label'] == fashion['test_s2p000'][3]['label']
    assert np.array_equal(np.asarray(reloaded['test_s2p000'][3]['image']),
                          np.asarray(fashion['test_s2p000'][3]['image']))


@needs_fashion
def test_push_dataset_folder_uploads_the_export(fashion, tmp_path, recording_api):
    with pytest.raises(ValueError, match='not an exported dataset folder'):
        push_dataset_folder(tmp_path, 'someone/data')
    folder = export_dataset(fashion, tmp_path / 'out')
    api = recording_api
    assert push_dataset_folder(folder, 'someone/rescaled_fashion_mnist', api=api) == 'commit-url'
    (_, repo, create), (_, repo2, upload) = api.calls
    assert repo == repo2 == 'someone/rescaled_fashion_mnist'
    assert create['repo_type'] == upload['repo_type'] == 'dataset'
    assert upload['folder_path'] == folder and 'data/*.parquet' in upload['allow_patterns']
    assert upload['delete_patterns'] == ['data/*.parquet']  # shards of an earlier upload do not survive


@needs_fashion
def test_reexport_replaces_the_earlier_export_whole(fashion, tmp_path):
    folder = export_dataset(fashion, tmp_path / 'out', max_shard_size=20_000)  # several shards per split
    assert len(list((folder / 'data').glob('train-*.parquet'))) > 1
    (folder / '.gitattributes').write_text('*.parquet filter=lfs\n')  # not the export's: kept
    export_dataset(fashion, folder)
    assert sorted(p.name for p in (folder / 'data').iterdir()) == sorted(
        f'{split}-00000-of-00001.parquet' for split in SPLITS)
    assert (folder / '.gitattributes').read_text() == '*.parquet filter=lfs\n'
    assert sorted(p.name for p in tmp_path.iterdir()) == ['out']  # no temporary folder left
    reloaded = load_dataset(str(folder))  # stale shards would fail datasets' split-size check
    assert {split: len(ds) for split, ds in reloaded.items()} == {split: LIMIT for split in SPLITS}


@needs_fashion
def test_export_refuses_a_foreign_folder_and_a_failed_export_changes_nothing(fashion, tmp_path, monkeypatch):
    from gaussder_hf.data import export as export_module

    foreign = tmp_path / 'notes'
    foreign.mkdir()
    (foreign / 'notes.txt').write_text('mine')
    with pytest.raises(ValueError, match=r'export folder .*notes is not empty \(notes.txt\) and holds no earlier '
                                         r'export'):
        export_dataset(fashion, foreign)
    assert [p.name for p in foreign.iterdir()] == ['notes.txt']

    folder = export_dataset(fashion, tmp_path / 'out')
    (folder / 'data' / 'keep.csv').write_text('mine')
    with pytest.raises(ValueError, match=r'data holds files an export does not write \(keep.csv\)'):
        export_dataset(fashion, folder)
    (folder / 'data' / 'keep.csv').unlink()

    before = {p.relative_to(folder): p.read_bytes() for p in folder.rglob('*') if p.is_file()}

    def fails(dataset, target, builder, max_shard_size):
        (target / 'data').mkdir()
        (target / 'data' / 'train-00000-of-00002.parquet').write_bytes(b'half')
        raise OSError('disk full')

    monkeypatch.setattr(export_module, '_write_export', fails)
    with pytest.raises(OSError, match='disk full'):
        export_dataset(fashion, folder)
    assert {p.relative_to(folder): p.read_bytes() for p in folder.rglob('*') if p.is_file()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ['notes', 'out']

    # A failure while swapping (here: the card cannot be moved in) puts the earlier export back.
    monkeypatch.undo()
    rename, failed = os.rename, []

    def card_fails(source, target):  # the new card cannot be moved in, once
        if str(target) == str(folder / 'README.md') and not failed:
            failed.append(source)
            raise OSError('read-only')
        rename(source, target)

    monkeypatch.setattr(export_module.os, 'rename', card_fails)
    with pytest.raises(OSError, match='read-only'):
        export_dataset(fashion, folder)
    monkeypatch.undo()
    assert {p.relative_to(folder): p.read_bytes() for p in folder.rglob('*') if p.is_file()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ['notes', 'out']


def test_missing_data_dir_lists_the_expected_files(tmp_path):
    with pytest.raises(FileNotFoundError, match='t10k-images-idx3-ubyte.gz'):
        load_dataset('rescaled_fashion_mnist', data_dir=str(tmp_path / 'nowhere'), cache_dir=str(tmp_path / 'c'))


def test_unknown_config_and_option_are_rejected(tmp_path):
    with pytest.raises(ValueError, match='mnist_small'):
        load_dataset('rescaled_fashion_mnist', 'mnist_small', data_dir=FASHION_DIR, cache_dir=str(tmp_path))
    with pytest.raises(ValueError, match='max_exampels'):
        load_dataset('rescaled_fashion_mnist', data_dir=FASHION_DIR, max_exampels=3, cache_dir=str(tmp_path))
    with pytest.raises(ValueError, match='max_examples.*0'):
        builder_for('rescaled_fashion_mnist', data_dir=FASHION_DIR, max_examples=0)
    with pytest.raises(ValueError, match="unknown dataset 'rescaled_mnist'"):
        builder_for('rescaled_mnist')


def test_stl10_split_is_deterministic_and_respects_kept_ids():
    ids = stl10_split_ids()
    assert {k: len(v) for k, v in ids.items()} == {'train': 7000, 'validation': 1000, 'test': 3600}
    every = np.concatenate(list(ids.values()))
    assert len(np.unique(every)) == len(every)  # disjoint
    assert ids['test'][0] == 5000 and ids['train'][0] == 0
    kept = [i for i in range(13_000) if i % 10]  # drop 10%
    cleaned = stl10_split_ids(kept)
    assert not any(i % 10 == 0 for split in cleaned.values() for i in split)
    with pytest.raises(ValueError, match='13000'):
        stl10_split_ids([1, 13_000])


# CIFAR-10 and STL-10 cannot be downloaded here: build them from small files in the exact
# official layouts, written by the readers' tests, whose md5s then stand in for the official ones.
from test_dataset_sources import _pattern, _tar_gz, _write_cifar, _write_stl  # noqa: E402


def accept_as_official(monkeypatch, dataset: str, folder) -> None:
    """Makes the builders' md5 check accept the files in ``folder`` as the official files of ``dataset``."""
    from gaussder_hf.data import sources
    md5s = {name: sources.content_md5(folder / name) for name in sources.OFFICIAL_MD5[dataset]}
    monkeypatch.setitem(sources.OFFICIAL_MD5, dataset, md5s)


def test_cifar10_from_the_official_archive(tmp_path, monkeypatch):
    folder = _write_cifar(tmp_path / 'src')
    accept_as_official(monkeypatch, 'cifar10', folder)
    archive_dir = tmp_path / 'archive'
    archive_dir.mkdir()
    _tar_gz(archive_dir / 'cifar-10-python.tar.gz', folder)
    ds = load_dataset('rescaled_cifar10', data_dir=str(archive_dir), cache_dir=str(tmp_path / 'cache'))
    assert list(ds) == SPLITS
    # 5 batches of 2: batches 1-4 train, batch 5 validation; the test batch has 3 images.
    assert (len(ds['train']), len(ds['validation']), len(ds['test_s0p500'])) == (8, 2, 3)
    assert ds.num_columns['train'] == 3 and ds['train'].features['label'].names[1] == 'automobile'
    for split in ('train', 'test_s1p000', 'test_s2p000'):
        image = np.asarray(ds[split][0]['image'])
        assert image.shape == (64, 64, 3)
    # At s = 2 the 32x32 image exactly fills the canvas: top-left is the original's red pixel.
    top_left = np.asarray(ds['test_s2p000'][0]['image'])[0, 0]
    assert top_left[0] > 200 and top_left[1] < 60
    # At s = 1 the 32x32 original sits in the middle and is mirror-extended around it.
    centre = np.asarray(ds['test'][0]['image'])[16:48, 16:48]
    assert np.array_equal(centre, _pattern(10, 32))  # test image index 10 in the writer's numbering
    assert ds['test'][0]['label'] == (3 * 10) % 10


def test_stl10_from_the_official_binaries_with_kept_ids(tmp_path, monkeypatch):
    accept_as_official(monkeypatch, 'stl10', _write_stl(tmp_path, n_train=3, n_test=4))
    ds = load_dataset('rescaled_stl10', data_dir=str(tmp_path), cache_dir=str(tmp_path / 'cache'))
    # 3 train-origin ids 0..2 and 4 test-origin ids 3..6, shared 36:10 by test and validation.
    assert (len(ds['train']), len(ds['validation']), len(ds['test']), len(ds['test_s2p000'])) == (3, 1, 3, 3)
    assert np.asarray(ds['train'][0]['image']).shape == (96, 96, 3)
    assert np.asarray(ds['test_s1p000'][0]['image']).shape == (192, 192, 3)
    assert ds['train'].features['label'].names == list(gaussder_hf.presets.DATASET_INFO['stl10']['class_names'])
    centre = np.asarray(ds['test'][0]['image'])[48:144, 48:144]
    assert np.array_equal(centre, _pattern(10, 96))
    kept = load_dataset('rescaled_stl10', data_dir=str(tmp_path), kept_ids=[0, 2, 3, 4, 5, 6],
                        cache_dir=str(tmp_path / 'cache2'))
    assert (len(kept['train']), len(kept['test'])) == (2, 3)
    assert np.array_equal(np.asarray(kept['train'][1]['image']), _pattern(2, 96))  # id 1 was dropped


def test_corrupt_sources_fail_loudly(tmp_path, monkeypatch):
    folder = _write_stl(tmp_path)
    accept_as_official(monkeypatch, 'stl10', folder)
    (folder / 'test_X.bin').write_bytes(b'\x00' * 1000)
    with pytest.raises(ValueError, match='test_X.bin: md5 .* but the official test_X.bin has md5'):
        load_dataset('rescaled_stl10', data_dir=str(tmp_path), cache_dir=str(tmp_path / 'cache'))
    accept_as_official(monkeypatch, 'stl10', folder)  # past the md5 check, the reader's own check
    with pytest.raises(ValueError, match='test_X.bin: 1000 bytes is not a multiple'):
        load_dataset('rescaled_stl10', data_dir=str(tmp_path), cache_dir=str(tmp_path / 'cache'))


def _serve_downloads(monkeypatch, files: dict, md5: dict):
    """Makes the builders' downloads resolve to local files: url -> path, with the given md5s."""
    from gaussder_hf.data import builder as builder_module
    from gaussder_hf.data.sources import SourceFile

    sources = {'stl10': tuple(SourceFile(name, f'https://example.invalid/{name}', md5[name]) for name in files)}
    monkeypatch.setattr(builder_module, 'SOURCES', sources)

    def download(self, url_or_urls):
        return {name: str(files[url.rsplit('/', 1)[1]]) for name, url in url_or_urls.items()}

    monkeypatch.setattr(datasets.DownloadManager, 'download', download)


def test_download_path_checks_md5_and_builds(tmp_path, monkeypatch):
    import hashlib
    folder = _write_stl(tmp_path / 'src', n_train=2, n_test=4)
    archive = tmp_path / 'served' / 'stl10_binary.tar.gz'
    archive.parent.mkdir()
    _tar_gz(archive, folder)
    real_md5 = hashlib.md5(archive.read_bytes()).hexdigest()
    monkeypatch.setenv('GAUSSDER_HF_CACHE', str(tmp_path / 'extract'))
    _serve_downloads(monkeypatch, {'stl10_binary.tar.gz': archive}, {'stl10_binary.tar.gz': '0' * 32})
    with pytest.raises(ValueError, match='stl10_binary.tar.gz.*0{32}'):
        load_dataset('rescaled_stl10', cache_dir=str(tmp_path / 'cache'))
    _serve_downloads(monkeypatch, {'stl10_binary.tar.gz': archive}, {'stl10_binary.tar.gz': real_md5})
    ds = load_dataset('rescaled_stl10', cache_dir=str(tmp_path / 'cache2'))
    assert (len(ds['train']), len(ds['test_s0p500'])) == (2, 3)


@needs_fashion
def test_cli_builds_and_exports(tmp_path, capsys):
    from gaussder_hf.cli import main
    assert main(['datasets', 'export', 'rescaled_fashion_mnist', '--data-dir', FASHION_DIR, '--max-examples', '3',
                 '--cache-dir', str(tmp_path / 'cache'), '--output-dir', str(tmp_path / 'out')]) == 0
    printed = capsys.readouterr().out
    assert 'built rescaled_fashion_mnist' in printed and 'test_s2p000' in printed
    assert len(list((tmp_path / 'out' / 'data').glob('*.parquet'))) == 12
    # the older spelling --output still works (the build is cached: only the export runs again)
    assert main(['datasets', 'export', 'rescaled_fashion_mnist', '--data-dir', FASHION_DIR, '--max-examples', '3',
                 '--cache-dir', str(tmp_path / 'cache'), '--output', str(tmp_path / 'older')]) == 0
    assert len(list((tmp_path / 'older' / 'data').glob('*.parquet'))) == 12
    with pytest.raises(SystemExit):
        main(['datasets', 'build', 'rescaled_mnist'])
