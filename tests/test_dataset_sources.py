"""Readers of the original benchmark files (gaussder_hf.data.sources).

Fashion-MNIST is read from Debian's real files. CIFAR-10 and STL-10 are not available offline, so
small files are written here in the exact official layouts (Python-2-style pickles of numpy
arrays; column-major STL-10 binaries; the official archive and folder names) with a known image
pattern: a red top-left pixel, green growing along the width and blue along the height, so that a
swapped channel order or a transposed image fails.
"""
from __future__ import annotations

import gzip
import hashlib
import importlib
import io
import os
import pickle
import pickletools
import struct
import sys
import tarfile
import warnings

import numpy as np
import pytest

from gaussder_hf.data import sources as ds
from gaussder_hf.presets import DATASET_INFO

FMNIST_DIR = os.environ.get('FASHION_MNIST_DIR', ds.FASHION_MNIST_DEBIAN_DIR)
needs_fashion_mnist = pytest.mark.skipif(
    not os.path.isfile(os.path.join(FMNIST_DIR, 't10k-images-idx3-ubyte.gz')) and not os.environ.get('CI'),
    reason="Debian's dataset-fashion-mnist is not installed (apt-get install -y dataset-fashion-mnist)")


def _md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


# ---------------------------------------------------------------------------------------------
# API surface
# ---------------------------------------------------------------------------------------------

def test_sources_and_class_names():
    assert set(ds.SOURCES) == {'fashion_mnist', 'cifar10', 'stl10'}
    names = {s.name for s in ds.SOURCES['fashion_mnist']}
    assert names == {'train-images-idx3-ubyte.gz', 'train-labels-idx1-ubyte.gz',
                     't10k-images-idx3-ubyte.gz', 't10k-labels-idx1-ubyte.gz'}
    for files in ds.SOURCES.values():
        for f in files:
            assert f.url.endswith('/' + f.name) and len(f.md5) == 32 and int(f.md5, 16) >= 0
    assert ds.SOURCES['cifar10'][0].name == 'cifar-10-python.tar.gz'
    assert ds.SOURCES['stl10'][0].name == 'stl10_binary.tar.gz'
    assert ds.CLASS_NAMES['fashion_mnist'] == DATASET_INFO['fashionmnist']['class_names']
    assert ds.CLASS_NAMES['cifar10'] == DATASET_INFO['cifar10']['class_names']
    assert ds.CLASS_NAMES['stl10'] == DATASET_INFO['stl10']['class_names']
    assert all(len(v) == 10 for v in ds.CLASS_NAMES.values())
    with pytest.raises(ValueError, match='unknown dataset'):
        ds.check_files('mnist', '.')


def test_the_old_module_path_still_imports_with_a_deprecation_warning(monkeypatch):
    import gaussder_hf
    # The attribute first: looking it up (hasattr) imports the lazy submodule (and warns), which
    # the next line then forgets, so that the import below runs the module and warns again.
    with warnings.catch_warnings():
        warnings.simplefilter('ignore', DeprecationWarning)
        monkeypatch.delattr(gaussder_hf, 'dataset_sources', raising=False)
    monkeypatch.delitem(sys.modules, 'gaussder_hf.dataset_sources', raising=False)
    with pytest.warns(DeprecationWarning, match='gaussder_hf.data.sources'):
        old = importlib.import_module('gaussder_hf.dataset_sources')
    assert old is ds
    from gaussder_hf.dataset_sources import OFFICIAL_MD5, read_fashion_mnist
    assert read_fashion_mnist is ds.read_fashion_mnist and OFFICIAL_MD5 is ds.OFFICIAL_MD5
    assert gaussder_hf.dataset_sources is ds


def test_verify_md5(tmp_path):
    path = tmp_path / 'file.bin'
    path.write_bytes(b'hello')
    ds.verify_md5(path, _md5(b'hello'))
    ds.verify_md5(str(path), _md5(b'hello').upper())
    with pytest.raises(ValueError) as info:
        ds.verify_md5(path, '0' * 32)
    message = str(info.value)
    assert 'file.bin' in message and '0' * 32 in message and _md5(b'hello') in message


# ---------------------------------------------------------------------------------------------
# Fashion-MNIST
# ---------------------------------------------------------------------------------------------

@needs_fashion_mnist
def test_fashion_mnist_real_files():
    files = ds.check_files('fashion_mnist', FMNIST_DIR)
    assert sorted(files) == sorted(s.name for s in ds.SOURCES['fashion_mnist'])
    for split, count in (('train', 60000), ('test', 10000)):
        images, labels = ds.read_fashion_mnist(FMNIST_DIR, split)
        assert images.shape == (count, 28, 28) and images.dtype == np.uint8
        assert labels.shape == (count,) and labels.dtype == np.int64
        assert np.array_equal(np.bincount(labels, minlength=10), np.full(10, count // 10))
        assert images.max() == 255 and images.min() == 0
    head, head_labels = ds.read_fashion_mnist(FMNIST_DIR, 'test', limit=7)
    assert np.array_equal(head, images[:7]) and np.array_equal(head_labels, labels[:7])
    assert ds.read_fashion_mnist(FMNIST_DIR, 'test', limit=0)[0].shape == (0, 28, 28)


# Upstream's gzip header (FLG.FNAME set, the 2017 time stamp, no extra flags, OS = Unix, file
# name): Debian's files keep upstream's deflate stream but dropped this header.
_UPSTREAM_MTIME = {'train': 1504176606, 't10k': 1504176627}


@needs_fashion_mnist
def test_fashion_mnist_md5_debian_vs_upstream():
    for source in ds.SOURCES['fashion_mnist']:
        with open(os.path.join(FMNIST_DIR, source.name), 'rb') as f:
            data = f.read()
        assert _md5(data) == ds.FASHION_MNIST_DEBIAN_MD5[source.name]
        assert _md5(data) != source.md5  # Debian re-wrote the gzip header ...
        assert _md5(gzip.decompress(data)) == ds.FASHION_MNIST_IDX_MD5[source.name]
        # ... but the upstream file, and so the md5 in SOURCES, is recovered by restoring it.
        assert data[:4] == b'\x1f\x8b\x08\x00'
        mtime = _UPSTREAM_MTIME[source.name.split('-')[0]]
        upstream = (b'\x1f\x8b\x08\x08' + struct.pack('<I', mtime) + b'\x00\x03'
                    + source.name[:-3].encode() + b'\x00' + data[10:])
        assert _md5(upstream) == source.md5, source.name
    with pytest.raises(ValueError, match='md5 mismatch'):
        ds.verify_md5(os.path.join(FMNIST_DIR, 't10k-labels-idx1-ubyte.gz'), ds.SOURCES['fashion_mnist'][3].md5)


def _idx(shape, data: bytes | None = None, magic=None) -> bytes:
    header = magic if magic is not None else bytes([0, 0, 8, len(shape)])
    payload = data if data is not None else bytes(int(np.prod(shape)))
    return header + struct.pack(f'>{len(shape)}I', *shape) + payload


def _write_fmnist(folder, n=3, images=None, labels=None, split='t10k'):
    folder.mkdir(parents=True, exist_ok=True)
    if images is None:
        images = gzip.compress(_idx((n, 28, 28), (np.arange(n * 784) % 256).astype(np.uint8).tobytes()))
    labels = labels if labels is not None else gzip.compress(_idx((n,), bytes(range(n))))
    (folder / f'{split}-images-idx3-ubyte.gz').write_bytes(images)
    (folder / f'{split}-labels-idx1-ubyte.gz').write_bytes(labels)


def test_fashion_mnist_small_and_bad_files(tmp_path):
    good = tmp_path / 'good'
    _write_fmnist(good)
    images, labels = ds.read_fashion_mnist(good, 'test')
    assert images.shape == (3, 28, 28) and images[0, 0, 1] == 1 and images[0, 1, 0] == 28
    assert labels.tolist() == [0, 1, 2] and labels.dtype == np.int64
    assert ds.read_fashion_mnist(good, 'test', limit=2)[0].shape == (2, 28, 28)
    with pytest.raises(ValueError, match='split'):
        ds.read_fashion_mnist(good, 'val')
    with pytest.raises(ValueError, match='limit'):
        ds.read_fashion_mnist(good, 'test', limit=-1)

    raw_images = _idx((3, 28, 28), (np.arange(3 * 784) % 256).astype(np.uint8).tobytes())
    cases = {
        'truncated IDX data': dict(images=gzip.compress(raw_images[:-1])),
        'truncated IDX header': dict(images=gzip.compress(raw_images[:9])),
        'truncated or corrupt gzip stream': dict(images=gzip.compress(raw_images)[:-30]),
        'bad IDX magic number': dict(images=gzip.compress(b'\x00\x00\x0d\x03' + raw_images[4:])),
        'expected 3 dimensions': dict(images=gzip.compress(_idx((3, 784)))),
        'expected 28x28 images': dict(images=gzip.compress(_idx((3, 32, 32)))),
        'holds 3 images but .* holds 2 labels': dict(labels=gzip.compress(_idx((2,)))),
        'labels must lie in 0..9': dict(labels=gzip.compress(_idx((3,), bytes([0, 1, 10])))),
        'unexpected bytes after': dict(labels=gzip.compress(_idx((3,)) + b'\x00')),
        'truncated or corrupt gzip stream ': dict(labels=gzip.compress(_idx((3,)))[:-4]),  # CRC cut off
    }
    for i, (message, files) in enumerate(cases.items()):
        folder = tmp_path / f'bad{i}'
        _write_fmnist(folder, **files)
        with pytest.raises(ValueError, match=message.strip()) as info:
            ds.read_fashion_mnist(folder, 'test')
        assert 'idx' in str(info.value) or 'ubyte' in str(info.value), message


def test_fashion_mnist_missing_files(tmp_path):
    with pytest.raises(FileNotFoundError) as info:
        ds.read_fashion_mnist(tmp_path / 'nowhere', 'test')
    message = str(info.value)
    assert 'does not exist' in message and str(tmp_path / 'nowhere') in message
    assert 't10k-images-idx3-ubyte.gz' in message and 't10k-labels-idx1-ubyte.gz' in message
    _write_fmnist(tmp_path / 'half')
    ds.read_fashion_mnist(tmp_path / 'half', 'test')  # the test split needs only the t10k files
    with pytest.raises(FileNotFoundError) as info:
        ds.check_files('fashion_mnist', tmp_path / 'half')
    message = str(info.value)
    for source in ds.SOURCES['fashion_mnist']:
        assert source.name in message
    assert 'missing: train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz.' in message
    assert ds.SOURCES['fashion_mnist'][0].url in message


# ---------------------------------------------------------------------------------------------
# CIFAR-10 (python version)
# ---------------------------------------------------------------------------------------------

def _py2_pickle(obj) -> bytes:
    """Pickles ``obj`` like Python 2's cPickle (protocol 2) did for the official CIFAR-10 files.

    Python 3 cannot write Python 2 ``str`` opcodes for bytes at protocol 2, so protocol 3 is
    written and its byte/str opcodes are rewritten to the same-layout BINSTRING opcodes, and
    numpy's module path to the one the official files name (``numpy.core.multiarray``).
    """
    data = pickle.dumps(obj, protocol=3)
    ops = list(pickletools.genops(data))
    out = bytearray()
    for k, (op, _arg, pos) in enumerate(ops):
        end = ops[k + 1][2] if k + 1 < len(ops) else len(data)
        chunk = bytearray(data[pos:end])
        if op.name == 'PROTO':
            chunk[1] = 2
        elif op.name == 'SHORT_BINBYTES':
            chunk[0:1] = b'U'  # SHORT_BINSTRING
        elif op.name in ('BINBYTES', 'BINUNICODE'):
            chunk[0:1] = b'T'  # BINSTRING
        elif op.name == 'GLOBAL':
            chunk = bytearray(bytes(chunk).replace(b'numpy._core.multiarray\n', b'numpy.core.multiarray\n'))
        assert op.name not in ('SHORT_BINUNICODE', 'STACK_GLOBAL', 'FRAME'), op.name
        out += chunk
    return bytes(out)


def _pattern(index: int, size: int) -> np.ndarray:
    """(size, size, 3) uint8: red = 100 + index, green = 2 * column, blue = 2 * row, top-left pure red."""
    rows, cols = np.indices((size, size))
    image = np.stack([np.full((size, size), 100 + index), 2 * cols, 2 * rows], axis=-1).astype(np.uint8)
    image[0, 0] = (255, 0, 0)
    return image


def _cifar_row(image: np.ndarray) -> np.ndarray:
    # The official layout: 1024 red values (row-major), then 1024 green, then 1024 blue.
    return np.concatenate([image[:, :, 0].ravel(), image[:, :, 1].ravel(), image[:, :, 2].ravel()])


CIFAR_BATCHES = [f'data_batch_{i}' for i in range(1, 6)] + ['test_batch']


def _cifar_batch(name: str, per_batch: int = 2) -> tuple[bytes, list[int], list[int]]:
    b = CIFAR_BATCHES.index(name)
    indices = [b * per_batch + j for j in range(per_batch + (name == 'test_batch'))]
    labels = [(3 * i) % 10 for i in indices]
    batch = {
        b'batch_label': f'{name} (small test copy)'.encode(),
        b'labels': labels,
        b'data': np.stack([_cifar_row(_pattern(i, 32)) for i in indices]),
        b'filenames': [f'img_{i}.png'.encode() for i in indices],
    }
    return _py2_pickle(batch), indices, labels


def _write_cifar(root, *, overrides=None):
    folder = root / 'cifar-10-batches-py'
    folder.mkdir(parents=True)
    for name in CIFAR_BATCHES:
        (folder / name).write_bytes(_cifar_batch(name)[0])
    meta = {b'label_names': [n.encode() for n in ds.CLASS_NAMES['cifar10']],
            b'num_cases_per_batch': 10000, b'num_vis': 3072}
    (folder / 'batches.meta').write_bytes(_py2_pickle(meta))
    (folder / 'readme.html').write_text('<html></html>')
    for name, data in (overrides or {}).items():
        (folder / name).write_bytes(data)
    return folder


def _tar_gz(path, folder, extra=()):
    with tarfile.open(path, 'w:gz') as tar:
        tar.add(folder, arcname=folder.name)
        for member, data in extra:
            tar.addfile(member, io.BytesIO(data) if data is not None else None)


def _check_cifar(images, labels, indices):
    assert images.dtype == np.uint8 and images.shape == (len(indices), 32, 32, 3) and images.flags.c_contiguous
    assert labels.dtype == np.int64 and labels.tolist() == [(3 * i) % 10 for i in indices]
    for image, i in zip(images, indices):
        assert tuple(image[0, 0]) == (255, 0, 0)  # red top-left
        assert np.array_equal(image, _pattern(i, 32))
    assert images[0, 5, 7, 1] == 14 and images[0, 5, 7, 2] == 10  # green along the width, blue along the height


def test_cifar10_python_pickle_layout():
    data = _py2_pickle({b'data': np.zeros((1, 3072), np.uint8), b'labels': [0]})
    globals_ = [arg for op, arg, _ in pickletools.genops(data) if op.name == 'GLOBAL']
    assert globals_ == ['numpy.core.multiarray _reconstruct', 'numpy ndarray', 'numpy dtype']
    assert data[:2] == b'\x80\x02'


def test_cifar10_folder(tmp_path):
    folder = _write_cifar(tmp_path)
    files = ds.check_files('cifar10', tmp_path)
    assert set(files) == set(CIFAR_BATCHES) | {'batches.meta'}
    assert all(path.parent == folder for path in files.values())
    images, labels = ds.read_cifar10(tmp_path, 'train')
    _check_cifar(images, labels, list(range(10)))
    images, labels = ds.read_cifar10(tmp_path, 'test')
    _check_cifar(images, labels, [10, 11, 12])
    images, labels = ds.read_cifar10(folder, 'test', limit=2)  # data_dir may be the folder itself
    _check_cifar(images, labels, [10, 11])
    # limit reads only the batches it needs: later batches are not even opened.
    (folder / 'data_batch_3').write_bytes(b'garbage')
    images, labels = ds.read_cifar10(tmp_path, 'train', limit=3)
    _check_cifar(images, labels, [0, 1, 2])
    with pytest.raises(ValueError, match='data_batch_3: truncated or corrupt pickle'):
        ds.read_cifar10(tmp_path, 'train', limit=5)


def test_cifar10_archive(tmp_path):
    src = _write_cifar(tmp_path / 'src')
    data_dir = tmp_path / 'data'
    data_dir.mkdir()
    _tar_gz(data_dir / 'cifar-10-python.tar.gz', src)
    cache = tmp_path / 'cache'
    files = ds.check_files('cifar10', data_dir, cache_dir=cache)
    assert files['cifar-10-python.tar.gz'] == data_dir / 'cifar-10-python.tar.gz'
    assert files['test_batch'].parent.name == 'cifar-10-batches-py' and cache in files['test_batch'].parents
    assert not (files['test_batch'].parent / 'readme.html').exists()  # only the needed members
    stamp = files['test_batch'].stat().st_mtime_ns
    images, labels = ds.read_cifar10(data_dir, 'train', cache_dir=cache)
    _check_cifar(images, labels, list(range(10)))
    assert files['test_batch'].stat().st_mtime_ns == stamp  # extracted once, then reused
    assert [p.name for p in cache.iterdir()] == [files['test_batch'].parent.parent.name]


def test_cifar10_bad_files(tmp_path):
    good, _, _ = _cifar_batch('test_batch')
    bad_shape = _py2_pickle({b'data': np.zeros((3, 3000), np.uint8), b'labels': [0, 1, 2]})
    bad_dtype = _py2_pickle({b'data': np.zeros((3, 3072), np.int32), b'labels': [0, 1, 2]})
    bad_labels = _py2_pickle({b'data': np.zeros((3, 3072), np.uint8), b'labels': [0, 1, 10]})
    few_labels = _py2_pickle({b'data': np.zeros((3, 3072), np.uint8), b'labels': [0, 1]})
    no_data = _py2_pickle({b'labels': [0, 1, 2]})
    bad_meta = _py2_pickle({b'label_names': [b'cat'] * 10})
    cases = [
        ('test_batch', good[:len(good) // 2], 'test_batch: truncated or corrupt pickle'),
        ('test_batch', good[:-1], 'test_batch: truncated or corrupt pickle'),
        ('test_batch', b'', 'test_batch: truncated or corrupt pickle'),
        ('test_batch', bad_shape, r'shape \(N, 3072\)'),
        ('test_batch', bad_dtype, 'uint8'),
        ('test_batch', bad_labels, 'labels must lie in 0..9'),
        ('test_batch', few_labels, '3 images but 2 labels'),
        ('test_batch', no_data, 'lacks the key'),
        ('batches.meta', bad_meta, 'label_names'),
    ]
    for i, (name, data, message) in enumerate(cases):
        root = tmp_path / str(i)
        _write_cifar(root, overrides={name: data})
        with pytest.raises(ValueError, match=message):
            ds.read_cifar10(root, 'test')


class _System:
    def __init__(self, command):
        self.command = command

    def __reduce__(self):
        return os.system, (self.command,)


class _Eval:
    def __reduce__(self):
        return eval, ("__import__('os').system('touch PWNED')",)


def test_cifar10_malicious_pickle_is_refused(tmp_path):
    marker = tmp_path / 'pwned'
    payloads = {
        'system': {b'data': _System(f'touch {marker}'), b'labels': [0]},
        'eval': {b'labels': [_Eval()], b'data': np.zeros((1, 3072), np.uint8)},
    }
    for name, payload in payloads.items():
        for protocol in (2, 4):
            root = tmp_path / f'{name}{protocol}'
            _write_cifar(root, overrides={'test_batch': pickle.dumps(payload, protocol=protocol)})
            with pytest.raises(pickle.UnpicklingError, match='refusing to load global') as info:
                ds.read_cifar10(root, 'test')
            assert 'test_batch' in str(info.value)
            assert ('system' in str(info.value)) if name == 'system' else ('eval' in str(info.value))
    assert not marker.exists() and not (tmp_path / 'PWNED').exists() and not os.path.exists('PWNED')


def test_cifar10_unsafe_or_truncated_archive(tmp_path):
    src = _write_cifar(tmp_path / 'src')
    evil = []
    for name in ('../escaped', '/tmp/gaussder_hf_absolute_escape', 'cifar-10-batches-py/../../escaped2'):
        member = tarfile.TarInfo(name)
        member.size = 4
        evil.append((member, b'evil'))
    link = tarfile.TarInfo('cifar-10-batches-py/test_batch_link')
    link.type, link.linkname = tarfile.SYMTYPE, '/etc/passwd'
    for i, extra in enumerate([[e] for e in evil] + [[(link, None)]]):
        data_dir = tmp_path / f'data{i}'
        data_dir.mkdir()
        _tar_gz(data_dir / 'cifar-10-python.tar.gz', src, extra)
        with pytest.raises(ValueError, match='unsafe archive member|refusing archive member'):
            ds.check_files('cifar10', data_dir, cache_dir=tmp_path / f'cache{i}')
        assert not list((tmp_path / f'cache{i}').iterdir())  # nothing left behind
    assert not (tmp_path / 'escaped').exists() and not (tmp_path / 'escaped2').exists()
    assert not os.path.exists('/tmp/gaussder_hf_absolute_escape')

    whole = tmp_path / 'whole.tar.gz'
    _tar_gz(whole, src)
    data_dir = tmp_path / 'truncated'
    data_dir.mkdir()
    (data_dir / 'cifar-10-python.tar.gz').write_bytes(whole.read_bytes()[:-200])
    with pytest.raises(ValueError, match='cifar-10-python.tar.gz: truncated or corrupt archive'):
        ds.read_cifar10(data_dir, 'test', cache_dir=tmp_path / 'cache_t')
    # An archive that lacks a member.
    (src / 'test_batch').unlink()
    data_dir = tmp_path / 'incomplete'
    data_dir.mkdir()
    _tar_gz(data_dir / 'cifar-10-python.tar.gz', src)
    with pytest.raises(ValueError, match='lacks cifar-10-batches-py/test_batch'):
        ds.read_cifar10(data_dir, 'test', cache_dir=tmp_path / 'cache_i')


def test_cifar10_missing_files(tmp_path):
    with pytest.raises(FileNotFoundError) as info:
        ds.read_cifar10(tmp_path / 'nowhere', 'train')
    message = str(info.value)
    assert 'does not exist' in message and 'cifar-10-python.tar.gz' in message and 'cifar-10-batches-py' in message
    assert all(f'data_batch_{i}' in message for i in range(1, 6)) and ds.SOURCES['cifar10'][0].url in message
    folder = _write_cifar(tmp_path / 'partial')
    (folder / 'data_batch_4').unlink()
    ds.read_cifar10(tmp_path / 'partial', 'test')  # the test split is complete
    with pytest.raises(FileNotFoundError, match=r'missing in .*cifar-10-batches-py: data_batch_4\.'):
        ds.read_cifar10(tmp_path / 'partial', 'train')


# ---------------------------------------------------------------------------------------------
# STL-10 (binary version)
# ---------------------------------------------------------------------------------------------

def _stl_bytes(indices) -> bytes:
    # The official layout (written by Matlab): per image the red, green and blue 96x96 planes,
    # each stored column by column (column-major).
    out = bytearray()
    for i in indices:
        image = _pattern(i, 96)
        for c in range(3):
            out += image[:, :, c].tobytes(order='F')
    return bytes(out)


def _write_stl(root, n_train=3, n_test=4, overrides=None):
    folder = root / 'stl10_binary'
    folder.mkdir(parents=True)
    for split, indices in (('train', range(n_train)), ('test', range(10, 10 + n_test))):
        (folder / f'{split}_X.bin').write_bytes(_stl_bytes(indices))
        (folder / f'{split}_y.bin').write_bytes(bytes(1 + (7 * i) % 10 for i in indices))
    (folder / 'class_names.txt').write_text('\n'.join(ds.CLASS_NAMES['stl10']) + '\n')
    (folder / 'fold_indices.txt').write_text('0 1 2\n')
    (folder / 'unlabeled_X.bin').write_bytes(_stl_bytes([99]))
    for name, data in (overrides or {}).items():
        (folder / name).write_bytes(data)
    return folder


def _check_stl(images, labels, indices):
    assert images.dtype == np.uint8 and images.shape == (len(indices), 96, 96, 3) and images.flags.c_contiguous
    assert labels.dtype == np.int64 and labels.tolist() == [(7 * i) % 10 for i in indices]
    for image, i in zip(images, indices):
        assert tuple(image[0, 0]) == (255, 0, 0)  # red top-left
        assert image[0, 95, 1] == 190 and image[95, 0, 1] == 0  # green grows along the width
        assert image[95, 0, 2] == 190 and image[0, 95, 2] == 0  # blue grows along the height
        assert np.array_equal(image, _pattern(i, 96))


def test_stl10_folder_and_archive(tmp_path):
    folder = _write_stl(tmp_path / 'a')
    files = ds.check_files('stl10', tmp_path / 'a')
    assert set(files) == {'train_X.bin', 'train_y.bin', 'test_X.bin', 'test_y.bin', 'class_names.txt'}
    _check_stl(*ds.read_stl10(tmp_path / 'a', 'train'), [0, 1, 2])
    _check_stl(*ds.read_stl10(tmp_path / 'a', 'test'), [10, 11, 12, 13])
    _check_stl(*ds.read_stl10(folder, 'test', limit=2), [10, 11])
    # The official reader's formula gives the same images.
    raw = np.fromfile(folder / 'test_X.bin', dtype=np.uint8)
    official = np.transpose(np.reshape(raw, (-1, 3, 96, 96)), (0, 3, 2, 1))
    assert np.array_equal(ds.read_stl10(folder, 'test')[0], official)

    data_dir = tmp_path / 'b'
    data_dir.mkdir()
    _tar_gz(data_dir / 'stl10_binary.tar.gz', folder)
    files = ds.check_files('stl10', data_dir, cache_dir=tmp_path / 'cache')
    assert files['stl10_binary.tar.gz'] == data_dir / 'stl10_binary.tar.gz'
    assert not (files['test_X.bin'].parent / 'unlabeled_X.bin').exists()  # the 2.6 GB file is skipped
    _check_stl(*ds.read_stl10(data_dir, 'train', cache_dir=tmp_path / 'cache'), [0, 1, 2])


def test_stl10_bad_files(tmp_path):
    x = _stl_bytes([10, 11, 12, 13])
    cases = [
        ({'test_X.bin': x[:-1]}, 'not a multiple of 27648'),
        ({'test_X.bin': x[:27648 * 3 + 100]}, 'truncated'),
        ({'test_X.bin': x[:27648 * 3]}, 'holds 3 images but .*test_y.bin holds 4 labels'),
        ({'test_y.bin': bytes([1, 2, 3, 0])}, r'labels must lie in 1\.\.10'),
        ({'test_y.bin': bytes([1, 2, 3, 11])}, r'labels must lie in 1\.\.10'),
        ({'class_names.txt': b'cat\ndog\n'}, 'class names'),
    ]
    for i, (overrides, message) in enumerate(cases):
        _write_stl(tmp_path / str(i), overrides=overrides)
        with pytest.raises(ValueError, match=message) as info:
            ds.read_stl10(tmp_path / str(i), 'test')
        assert 'test_' in str(info.value) or 'class_names' in str(info.value)


def test_stl10_missing_files(tmp_path):
    with pytest.raises(FileNotFoundError) as info:
        ds.read_stl10(tmp_path / 'nowhere', 'test')
    message = str(info.value)
    assert 'stl10_binary.tar.gz' in message and 'stl10_binary/' in message
    for name in ('test_X.bin', 'test_y.bin', 'class_names.txt'):
        assert name in message
    folder = _write_stl(tmp_path / 'partial')
    (folder / 'train_y.bin').unlink()
    with pytest.raises(FileNotFoundError, match=r'missing in .*stl10_binary: train_y\.bin\.') as info:
        ds.check_files('stl10', tmp_path / 'partial')
    for name in ('train_X.bin', 'train_y.bin', 'test_X.bin', 'test_y.bin', 'class_names.txt'):
        assert name in str(info.value)
