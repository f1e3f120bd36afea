"""Integrity of the original files: md5 checks by content, a content-keyed build cache and size bounds.

Fashion-MNIST cases use Debian's real files (or copies of them); CIFAR-10 and STL-10 cases use
small files in the official formats (Python-2 pickles, tar.gz archives, STL-10 binaries), the
pickles written opcode by opcode so that each departure from numpy's own array pickling is exact.
"""
from __future__ import annotations

import gzip
import io
import os
import pickle
import shutil
import struct
import tarfile
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
from datasets import load_dataset
from test_dataset_sources import _cifar_row, _idx, _pattern, _py2_pickle, _write_cifar, _write_stl

import gaussder_hf  # noqa: F401  (registers the builders)
from gaussder_hf.data import sources as ds

FASHION_DIR = ds.FASHION_MNIST_DEBIAN_DIR
needs_fashion = pytest.mark.skipif(
    not os.path.isfile(os.path.join(FASHION_DIR, 't10k-labels-idx1-ubyte.gz')) and not os.environ.get('CI'),
    reason="Debian's dataset-fashion-mnist is not installed (apt-get install -y dataset-fashion-mnist)")
T10K = ('t10k-images-idx3-ubyte.gz', 't10k-labels-idx1-ubyte.gz')


def _fashion_copy(folder, labels=None):
    """Fashion-MNIST in ``folder``: links to Debian's files, the t10k labels rewritten if ``labels`` is given."""
    folder.mkdir(parents=True, exist_ok=True)
    for source in ds.SOURCES['fashion_mnist']:
        os.symlink(os.path.join(FASHION_DIR, source.name), folder / source.name)
    if labels is not None:
        (folder / T10K[1]).unlink()
        (folder / T10K[1]).write_bytes(gzip.compress(_idx((len(labels),), labels.astype(np.uint8).tobytes())))
    return folder


# ---------------------------------------------------------------------------------------------
# md5 of local files, by content
# ---------------------------------------------------------------------------------------------

@needs_fashion
def test_local_gz_files_are_checked_by_their_decompressed_content(tmp_path):
    labels = ds.read_idx(os.path.join(FASHION_DIR, T10K[1]))
    # Re-compressed with another gzip header (name, time stamp) and level: the same content, passes.
    folder = tmp_path / 'recompressed'
    folder.mkdir()
    for name in T10K:
        raw = gzip.decompress(Path(FASHION_DIR, name).read_bytes())
        (folder / name).write_bytes(gzip.compress(raw, compresslevel=1, mtime=0))
        assert ds.content_md5(folder / name) == ds.FASHION_MNIST_IDX_MD5[name]
    md5s = ds.verify_files('fashion_mnist', {name: folder / name for name in T10K})
    assert md5s == {name: ds.FASHION_MNIST_IDX_MD5[name] for name in T10K}

    relabelled = labels.copy()
    relabelled[:5] = (relabelled[:5] + 1) % 10
    (folder / T10K[1]).write_bytes(gzip.compress(_idx((10_000,), relabelled.tobytes())))
    with pytest.raises(ValueError) as info:
        ds.verify_files('fashion_mnist', {name: folder / name for name in T10K})
    message = str(info.value)
    assert str(folder / T10K[1]) in message and ds.FASHION_MNIST_IDX_MD5[T10K[1]] in message
    assert 'decompressed content' in message and "Debian's" in message

    # A small .gz that expands far past the official size is refused while decompressing.
    (folder / T10K[1]).write_bytes(gzip.compress(bytes(16 << 20)))
    with pytest.raises(ValueError, match=r't10k-labels-idx1-ubyte.gz: decompresses to more than the 20,016 bytes'):
        ds.verify_files('fashion_mnist', {name: folder / name for name in T10K})


@needs_fashion
def test_a_changed_source_is_refused_instead_of_served_from_the_cache(tmp_path):
    folder = _fashion_copy(tmp_path / 'fm')
    cache = str(tmp_path / 'cache')
    built = load_dataset('rescaled_fashion_mnist', data_dir=str(folder), max_examples=3, cache_dir=cache)
    real = ds.read_idx(os.path.join(FASHION_DIR, T10K[1]))
    assert built['test']['label'] == real[:3].tolist()
    relabelled = real.copy()
    relabelled[:3] = (relabelled[:3] + 1) % 10
    shutil.rmtree(folder)
    _fashion_copy(folder, labels=relabelled)
    with pytest.raises(ValueError, match=r't10k-labels-idx1-ubyte.gz: the md5 of its decompressed content'):
        load_dataset('rescaled_fashion_mnist', data_dir=str(folder), max_examples=3, cache_dir=cache)


def test_the_build_cache_is_keyed_by_the_sources_content(tmp_path, monkeypatch):
    # Files without an official md5 are not refused, so only the cache key can tell their versions apart.
    monkeypatch.setitem(ds.OFFICIAL_MD5, 'stl10', {})
    folder = _write_stl(tmp_path / 'src', n_train=2, n_test=4)
    cache = str(tmp_path / 'cache')
    first = load_dataset('rescaled_stl10', data_dir=str(tmp_path / 'src'), cache_dir=cache)
    labels = (folder / 'test_y.bin').read_bytes()
    stat = (folder / 'test_y.bin').stat()
    (folder / 'test_y.bin').write_bytes(bytes(1 + (b % 10) for b in labels))  # every label + 1, same size
    os.utime(folder / 'test_y.bin', ns=(stat.st_atime_ns, stat.st_mtime_ns))  # and the old time stamp
    second = load_dataset('rescaled_stl10', data_dir=str(tmp_path / 'src'), cache_dir=cache)
    assert first['test'].cache_files[0]['filename'] != second['test'].cache_files[0]['filename']
    assert second['test']['label'] == [(label + 1) % 10 for label in first['test']['label']]
    assert ds.verify_files('stl10', {'test_y.bin': folder / 'test_y.bin'})['test_y.bin'] == ds.content_md5(
        folder / 'test_y.bin')


def test_extraction_goes_under_the_cache_dir_given(tmp_path, monkeypatch):
    default = tmp_path / 'default_cache'
    monkeypatch.setenv('GAUSSDER_HF_CACHE', str(default))
    folder = _write_cifar(tmp_path / 'src')
    monkeypatch.setitem(ds.OFFICIAL_MD5, 'cifar10', {n: ds.content_md5(folder / n) for n in ds.OFFICIAL_MD5['cifar10']})
    (tmp_path / 'data').mkdir()
    with tarfile.open(tmp_path / 'data' / 'cifar-10-python.tar.gz', 'w:gz') as tar:
        tar.add(folder, arcname=folder.name)
    cache = tmp_path / 'cache'
    built = load_dataset('rescaled_cifar10', data_dir=str(tmp_path / 'data'), cache_dir=str(cache), max_examples=1)
    assert len(built['test']) == 1
    extracted = list((cache / 'gaussder_hf' / 'extracted').iterdir())
    assert len(extracted) == 1 and (extracted[0] / 'cifar-10-batches-py' / 'test_batch').is_file()
    assert not default.exists()


# ---------------------------------------------------------------------------------------------
# Archives: bounds from the tar headers
# ---------------------------------------------------------------------------------------------

def _archive(path, folder, extra_headers=()):
    """tar.gz of ``folder`` followed by raw tar headers (claimed sizes need not match the data after them)."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode='w') as tar:
        tar.add(folder, arcname=folder.name)
        end = tar.offset  # after the last member, before the end-of-archive blocks
    body = buffer.getvalue()[:end]
    for info, data in extra_headers:
        body += info.tobuf(format=tarfile.GNU_FORMAT) + data + b'\0' * (-len(data) % 512)
    path.write_bytes(gzip.compress(body + b'\0' * 1024))


def test_archive_members_are_bounded_before_anything_is_written(tmp_path):
    src = _write_cifar(tmp_path / 'src')
    (src / 'test_batch').unlink()

    def member(name, size):
        info = tarfile.TarInfo(f'cifar-10-batches-py/{name}')
        info.size = size
        return info, b'x' * 1024  # the header claims far more than follows

    cases = {
        'big': ([member('test_batch', 100_000_000)],
                r"archive member 'cifar-10-batches-py/test_batch': 100,000,000 bytes, more than the 62,200,000 "
                r"allowed for test_batch \(2x the official 31,100,000\)"),
        'huge': ([member('test_batch', 50_000_000_000)],
                 r"archive member 'cifar-10-batches-py/test_batch' ends 50,000,\d{3},\d{3} bytes into the "
                 r"uncompressed archive, past the 380,000,000 allowed"),
        'twice': ([member('test_batch', 1024), member('test_batch', 1024)],
                  r"archive member 'cifar-10-batches-py/test_batch' appears twice"),
        'many': ([member(f'extra_{i}', 0) for i in range(1_001)], 'more than 1000 archive members'),
        # A GNU long-name block is read whole by tarfile before the member it names is seen: its
        # claimed 300 MB must not be allocated up front.
        'long name': ([(tarfile.TarInfo('././@LongLink'), 300_000_000, tarfile.GNUTYPE_LONGNAME)],
                      'truncated or corrupt archive'),
    }
    tracemalloc.start()
    try:
        for case, (headers, message) in cases.items():
            data_dir = tmp_path / case
            data_dir.mkdir()
            archive = data_dir / 'cifar-10-python.tar.gz'
            if case == 'long name':
                (info, size, kind), = headers
                info.size, info.type = size, kind
                headers = [(info, b'cifar-10-batches-py/test_batch')]
            _archive(archive, src, [(info, b'' if info.size == 0 else data) for info, data in headers])
            assert archive.stat().st_size < 100_000
            cache = tmp_path / f'cache_{case}'
            with pytest.raises(ValueError, match=message) as info:
                ds.check_files('cifar10', data_dir, cache_dir=cache)
            assert str(archive) in str(info.value)
            assert list(cache.iterdir()) == []  # the partial extraction is gone, nothing was published
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 50 * 2 ** 20, f'{peak:,} bytes allocated'


# ---------------------------------------------------------------------------------------------
# CIFAR-10 pickles: arrays only from bytes in the file
# ---------------------------------------------------------------------------------------------

def _global(module: str, name: str) -> bytes:
    return b'c' + module.encode() + b'\n' + name.encode() + b'\n'


def _int(n: int) -> bytes:
    return b'J' + struct.pack('<i', n)


def _str(data: bytes) -> bytes:  # Python 2 str (BINSTRING), as in the official files
    return b'T' + struct.pack('<i', len(data)) + data


def _tuple(*items: bytes) -> bytes:
    return b'(' + b''.join(items) + b't'


def _dtype(name=b'u1', state=None) -> bytes:
    state = state or _tuple(_int(3), _str(b'|'), b'N', b'N', b'N', _int(-1), _int(-1), _int(0))
    return _global('numpy', 'dtype') + _tuple(_str(name), _int(0), _int(1)) + b'R' + state + b'b'


def _array(shape, raw: bytes, dtype: bytes | None = None) -> bytes:
    """numpy's own protocol-2 pickling: _reconstruct(ndarray, (0,), 'b'), then BUILD with (1, shape, dtype, F, raw)."""
    placeholder = _global('numpy.core.multiarray', '_reconstruct') + _tuple(
        _global('numpy', 'ndarray'), _tuple(_int(0)), _str(b'b')) + b'R'
    return placeholder + _tuple(_int(1), _tuple(*map(_int, shape)), dtype or _dtype(), b'\x89', raw) + b'b'


def _batch(data: bytes, n_labels: int, extra: bytes = b'') -> bytes:
    labels = b'(' + _int(3) * n_labels + b'l'
    return b'\x80\x02}(' + _str(b'data') + data + _str(b'labels') + labels + extra + b'u.'


def test_the_hand_written_pickles_match_numpys_own(tmp_path):
    images = np.stack([_cifar_row(_pattern(i, 32)) for i in (10, 11)])
    hand = _batch(_array((2, 3072), _str(images.tobytes())), 2)
    # numpy's pickle of the same dict, rewritten like Python 2 would have written it.
    numpy_made = _py2_pickle({b'data': images, b'labels': [3, 3]})
    assert pickle.loads(hand, encoding='bytes')[b'data'].tobytes() == images.tobytes()
    for i, payload in enumerate((hand, numpy_made)):
        _write_cifar(tmp_path / str(i), overrides={'test_batch': payload})
        read, labels = ds.read_cifar10(tmp_path / str(i), 'test')
        assert np.array_equal(read, np.stack([_pattern(10, 32), _pattern(11, 32)])) and labels.tolist() == [3, 3]


def test_cifar_arrays_must_come_from_bytes_in_the_file(tmp_path):
    row = _str(bytes(3072))
    memo = _str(bytes(2 * 3072)) + b'q\x01'  # BINPUT 1: the same bytes again below with BINGET 1
    cases = {
        'ndarray': (_batch(_global('numpy', 'ndarray') + _tuple(_tuple(_int(500_000), _int(3072)), _str(b'u1'))
                           + b'R', 500),
                    r'refusing numpy.ndarray\(\(500000, 3072\).*uninitialised memory'),
        'reconstruct': (_batch(_global('numpy.core.multiarray', '_reconstruct') + _tuple(
            _global('numpy', 'ndarray'), _tuple(_int(500_000), _int(3072)), _str(b'b')) + b'R', 500),
            r'refusing numpy _reconstruct.*allowed is only the empty placeholder'),
        'no state': (_batch(_global('numpy.core.multiarray', '_reconstruct') + _tuple(
            _global('numpy', 'ndarray'), _tuple(_int(0)), _str(b'b')) + b'R', 0), 'array without its data'),
        'short': (_batch(_array((500_000, 3072), row), 1),
                  r'shape \(500000, 3072\) and dtype uint8: it needs 1,536,000,000 bytes, the file holds 3,072'),
        'reused': (_batch(_array((2, 3072), memo), 2, _str(b'more') + _array((2, 3072), b'h\x01')),
                   'together they hold more bytes than the file'),
        'object dtype': (_batch(_array((1, 3072), row, _dtype(b'O8')), 1), "refusing numpy dtype 'O8'"),
        'subarray dtype': (_batch(_array((1, 3072), row, _dtype(state=_tuple(
            _int(3), _str(b'|'), _tuple(_dtype(), _tuple(_int(1000))), b'N', b'N', _int(-1), _int(-1), _int(0)))), 1),
            'refusing the numpy dtype state'),
    }
    tracemalloc.start()
    try:
        for i, (case, (payload, message)) in enumerate(cases.items()):
            _write_cifar(tmp_path / str(i), overrides={'test_batch': payload})
            with pytest.raises(pickle.UnpicklingError, match=message) as info:
                ds.read_cifar10(tmp_path / str(i), 'test')
            assert 'test_batch' in str(info.value), case
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 50 * 2 ** 20, f'{peak:,} bytes allocated'  # the claims (1.5 GB) were never allocated

    root = tmp_path / 'oversized'
    folder = _write_cifar(root)
    with open(folder / 'test_batch', 'r+b') as f:
        f.truncate(70 * 2 ** 20)  # sparse: nothing is written, and nothing must be read
    with pytest.raises(ValueError, match=r'test_batch: 73,400,320 bytes, more than the 62,200,000 allowed'):
        ds.read_cifar10(root, 'test')


# ---------------------------------------------------------------------------------------------
# IDX: the header's claim is checked against what is there, without allocating it
# ---------------------------------------------------------------------------------------------

def test_an_idx_header_claiming_more_than_the_file_holds(tmp_path):
    folder = tmp_path / 'fm'
    folder.mkdir()
    (folder / T10K[0]).write_bytes(gzip.compress(_idx((60_000_000, 28, 28), bytes(784))))
    (folder / T10K[1]).write_bytes(gzip.compress(_idx((1,), bytes(1))))
    claim = tmp_path / 'claim.gz'
    claim.write_bytes(gzip.compress(_idx((100_000, 100, 100), bytes(784))))
    raw = tmp_path / 'claim.idx'
    raw.write_bytes(_idx((100_000, 100, 100), bytes(784)))
    tracemalloc.start()
    try:
        with pytest.raises(ValueError, match=r't10k-images-idx3-ubyte.gz: the IDX header claims shape '
                                             r'\(60000000, 28, 28\), 47,040,000,016 bytes in all, more than the '
                                             r'15,680,032 allowed'):
            ds.read_fashion_mnist(folder, 'test')
        with pytest.raises(ValueError, match=r'claim.gz: truncated IDX data: 784 of 1000000000 bytes'):
            ds.read_idx(claim)  # no bound given: the read stops at what the stream holds
        with pytest.raises(ValueError, match=r'claim.idx: truncated IDX data: the header claims shape '
                                             r'\(100000, 100, 100\), 1,000,000,016 bytes in all, but the file '
                                             r'holds 800'):
            ds.read_idx(raw)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 50 * 2 ** 20, f'{peak:,} bytes allocated'
