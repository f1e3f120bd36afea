"""Readers of the ORIGINAL benchmark files, in their official formats, and where to download them.

Three datasets are read (DESIGN.md §4):

* Fashion-MNIST: the four gzip-compressed IDX files of Zalando research. Debian's
  ``dataset-fashion-mnist`` package installs them at ``/usr/share/datasets/fashion-mnist``
  (:data:`FASHION_MNIST_DEBIAN_DIR`).
* CIFAR-10, "python version": ``cifar-10-python.tar.gz`` or its extracted folder
  ``cifar-10-batches-py/`` of pickled dicts. The pickles are read with a restricted unpickler
  that only resolves numpy's array reconstruction, so a tampered file cannot execute code.
* STL-10, binary version: ``stl10_binary.tar.gz`` or its extracted folder ``stl10_binary/``
  (only the labelled ``train_*`` / ``test_*`` files are used; the unlabelled images are skipped).

Every reader returns ``(images, labels)``: uint8 images, channels-last for RGB, and int64
labels ``0..9`` whose names are :data:`CLASS_NAMES` (one source: ``presets.DATASET_INFO``).
Missing files raise ``FileNotFoundError`` listing every expected file and where it was looked
for; truncated or malformed files raise ``ValueError`` naming the file and the problem — never a
silently short array. Nothing is downloaded here: :data:`SOURCES` gives the official URLs and
md5s, and :func:`verify_md5` checks a file against them.

Archives are extracted (only the members that are needed, regular files only, rejecting
absolute paths, ``..`` components and links) into a cache folder: ``cache_dir`` if given, else
``$GAUSSDER_HF_CACHE/extracted`` (default ``~/.cache/gaussder_hf/extracted``). An extraction is
keyed by the archive's path, size and modification time and becomes visible atomically.
"""
from __future__ import annotations

import gzip
import hashlib
import os
import pathlib
import pickle
import shutil
import struct
import tarfile
import tempfile
import zlib
from dataclasses import dataclass

import numpy as np

from .presets import DATASET_INFO

__all__ = [
    'SourceFile', 'SOURCES', 'CLASS_NAMES', 'FASHION_MNIST_DEBIAN_DIR', 'FASHION_MNIST_DEBIAN_MD5',
    'FASHION_MNIST_IDX_MD5', 'check_files', 'verify_md5', 'read_idx', 'read_fashion_mnist', 'read_cifar10',
    'read_stl10',
]


@dataclass(frozen=True)
class SourceFile:
    """One official file: its name, official download URL and md5."""
    name: str
    url: str
    md5: str


_FASHION_MNIST_URL = 'http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/'

SOURCES: dict[str, tuple[SourceFile, ...]] = {
    'fashion_mnist': tuple(SourceFile(name, _FASHION_MNIST_URL + name, md5) for name, md5 in (
        ('train-images-idx3-ubyte.gz', '8d4fb7e6c68d591d4c3dfef9ec88bf0d'),
        ('train-labels-idx1-ubyte.gz', '25c81989df183df01b3e8a0aad5dffbe'),
        ('t10k-images-idx3-ubyte.gz', 'bef4ecab320f06d8554ea6380940ec79'),
        ('t10k-labels-idx1-ubyte.gz', 'bb300cfdad3c16e7a12a480ee83cd310'),
    )),
    'cifar10': (SourceFile('cifar-10-python.tar.gz', 'https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz',
                           'c58f30108f718f92721af3b95e74349a'),),
    'stl10': (SourceFile('stl10_binary.tar.gz', 'http://ai.stanford.edu/~acoates/stl10/stl10_binary.tar.gz',
                         '91f7769df0f17e558f3565bffb0c7dfb'),),
}

# Debian's files are the upstream files re-wrapped: the deflate streams are byte-identical, but
# the gzip header lost the stored file name and got a 2020 time stamp, so the md5s of the .gz
# files differ from the upstream ones in SOURCES (each upstream md5 is reproduced by putting
# back the header ``1f8b 0808 <2017-08-31 mtime> 00 03 <name>\0``). The md5s of the
# decompressed IDX payloads, FASHION_MNIST_IDX_MD5, are the same for both.
FASHION_MNIST_DEBIAN_DIR = '/usr/share/datasets/fashion-mnist'
FASHION_MNIST_DEBIAN_MD5 = {
    'train-images-idx3-ubyte.gz': 'cf8536b0aa1a6ac5fa3f23001093305c',
    'train-labels-idx1-ubyte.gz': '10bea18fdb374794d4bb42e356e600c9',
    't10k-images-idx3-ubyte.gz': 'f78720b4224f21cce2f2ccf2d7a94c9a',
    't10k-labels-idx1-ubyte.gz': '0d30e22e447f3c33dab9ed536400ac01',
}
FASHION_MNIST_IDX_MD5 = {  # md5 of the decompressed file, keyed by the .gz name
    'train-images-idx3-ubyte.gz': 'f4a8712d7a061bf5bd6d2ca38dc4d50a',
    'train-labels-idx1-ubyte.gz': '9018921c3c673c538a1fc5bad174d6f9',
    't10k-images-idx3-ubyte.gz': '8181f5470baa50b63fa0f6fddb340f0a',
    't10k-labels-idx1-ubyte.gz': '15d484375f8d13e6eb1aabb0c3f46965',
}

CLASS_NAMES: dict[str, tuple[str, ...]] = {
    'fashion_mnist': tuple(DATASET_INFO['fashionmnist']['class_names']),
    'cifar10': tuple(DATASET_INFO['cifar10']['class_names']),
    'stl10': tuple(DATASET_INFO['stl10']['class_names']),
}

_SPLITS = ('train', 'test')

# Files of each split. For archives: (archive name, folder inside the archive, member files).
_FASHION_MNIST_FILES = {
    'train': ('train-images-idx3-ubyte.gz', 'train-labels-idx1-ubyte.gz'),
    'test': ('t10k-images-idx3-ubyte.gz', 't10k-labels-idx1-ubyte.gz'),
}
_ARCHIVES = {
    'cifar10': ('cifar-10-python.tar.gz', 'cifar-10-batches-py', {
        'train': tuple(f'data_batch_{i}' for i in range(1, 6)) + ('batches.meta',),
        'test': ('test_batch', 'batches.meta'),
    }),
    'stl10': ('stl10_binary.tar.gz', 'stl10_binary', {
        'train': ('train_X.bin', 'train_y.bin', 'class_names.txt'),
        'test': ('test_X.bin', 'test_y.bin', 'class_names.txt'),
    }),
}


def _all_members(split_files: dict) -> tuple[str, ...]:
    return tuple(dict.fromkeys(name for split in _SPLITS for name in split_files[split]))


def _check_split(split: str) -> None:
    if split not in _SPLITS:
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")


def _check_limit(limit) -> int | None:
    if limit is None:
        return None
    if isinstance(limit, bool) or not isinstance(limit, (int, np.integer)) or limit < 0:
        raise ValueError(f'limit must be None or an integer >= 0, got {limit!r}')
    return int(limit)


# ---------------------------------------------------------------------------------------------
# Files, md5, archives
# ---------------------------------------------------------------------------------------------

def verify_md5(path, expected_md5: str) -> None:
    """Raises ``ValueError`` naming ``path``, the expected and the actual md5 if they differ."""
    path = pathlib.Path(path)
    digest = hashlib.md5()
    with open(path, 'rb') as f:
        for chunk in iter(lambda: f.read(1 << 20), b''):
            digest.update(chunk)
    actual = digest.hexdigest()
    if actual != expected_md5.lower():
        raise ValueError(f'{path}: md5 mismatch: expected {expected_md5}, got {actual} '
                         f'(corrupt, truncated or not the official file)')


def _default_cache_dir() -> pathlib.Path:
    root = os.environ.get('GAUSSDER_HF_CACHE') or os.path.join(os.path.expanduser('~'), '.cache', 'gaussder_hf')
    return pathlib.Path(root) / 'extracted'


def _safe_member_name(archive: pathlib.Path, member: tarfile.TarInfo) -> str:
    """Returns the member's normalised relative name; ValueError for absolute / '..' / link / special."""
    name = member.name.replace('\\', '/')
    parts = [p for p in name.split('/') if p not in ('', '.')]
    if name.startswith('/') or (len(name) > 1 and name[1] == ':') or '..' in parts:
        raise ValueError(f'{archive}: unsafe archive member {member.name!r} (absolute path or ..); not extracting')
    if not (member.isfile() or member.isdir()):
        raise ValueError(f'{archive}: refusing archive member {member.name!r}: '
                         f'only regular files and folders are extracted (links and devices are not)')
    return '/'.join(parts)


def _extract(dataset: str, archive: pathlib.Path, cache_dir) -> pathlib.Path:
    """Extracts the needed members of ``archive`` (once) and returns the extracted folder."""
    _, folder, split_files = _ARCHIVES[dataset]
    wanted = _all_members(split_files)
    stat = archive.stat()
    key = hashlib.sha256(f'{archive.resolve()}:{stat.st_size}:{stat.st_mtime_ns}'.encode()).hexdigest()[:16]
    root = pathlib.Path(cache_dir) if cache_dir is not None else _default_cache_dir()
    final = root / f'{folder}-{key}'
    if all((final / folder / name).is_file() for name in wanted):
        return final / folder
    root.mkdir(parents=True, exist_ok=True)
    tmp = pathlib.Path(tempfile.mkdtemp(prefix=f'.{folder}-', dir=root))
    try:
        (tmp / folder).mkdir()
        found = set()
        try:
            with tarfile.open(archive, 'r:*') as tar:
                for member in tar:
                    name = _safe_member_name(archive, member)
                    top, _, rest = name.partition('/')
                    if top != folder or rest not in wanted or not member.isfile():
                        continue
                    source = tar.extractfile(member)
                    with open(tmp / folder / rest, 'wb') as out:
                        shutil.copyfileobj(source, out, 1 << 20)
                    found.add(rest)
        except (tarfile.TarError, EOFError, gzip.BadGzipFile, zlib.error) as exc:
            raise ValueError(f'{archive}: truncated or corrupt archive ({type(exc).__name__}: {exc})') from exc
        missing = [f'{folder}/{name}' for name in wanted if name not in found]
        if missing:
            raise ValueError(f'{archive}: the archive lacks {", ".join(missing)} (not the official archive?)')
        try:
            os.rename(tmp, final)
        except OSError:  # another process extracted it first (or a stale incomplete copy exists)
            if not all((final / folder / name).is_file() for name in wanted):
                shutil.rmtree(final, ignore_errors=True)
                os.rename(tmp, final)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return final / folder


def _locate(dataset: str, data_dir, split: str | None = None, cache_dir=None) -> dict[str, pathlib.Path]:
    if dataset not in SOURCES:
        raise ValueError(f'unknown dataset {dataset!r}; expected one of {sorted(SOURCES)}')
    data_dir = pathlib.Path(data_dir).expanduser()
    where = '' if data_dir.is_dir() else ' (the folder does not exist)'
    if dataset == 'fashion_mnist':
        names = _FASHION_MNIST_FILES[split] if split else tuple(s.name for s in SOURCES[dataset])
        paths = {name: data_dir / name for name in names}
        missing = [name for name, path in paths.items() if not path.is_file()]
        if missing:
            urls = {s.name: s.url for s in SOURCES[dataset]}
            raise FileNotFoundError(
                f'Fashion-MNIST: looked in {data_dir}{where} for the gzip-compressed IDX files '
                f'{", ".join(names)}; missing: {", ".join(missing)}. Download them from '
                f'{", ".join(urls[n] for n in missing)} or install Debian\'s dataset-fashion-mnist '
                f'({FASHION_MNIST_DEBIAN_DIR}).')
        return paths

    archive_name, folder, split_files = _ARCHIVES[dataset]
    names = split_files[split] if split else _all_members(split_files)
    candidates = [data_dir / folder, data_dir]  # the extracted folder, or data_dir being that folder
    for candidate in candidates:
        if all((candidate / name).is_file() for name in names):
            return {name: candidate / name for name in names}
    archive = data_dir / archive_name
    if archive.is_file():
        extracted = _extract(dataset, archive, cache_dir)
        return {archive_name: archive, **{name: extracted / name for name in names}}
    present = candidates[0] if candidates[0].is_dir() else candidates[1]
    missing = [name for name in names if not (present / name).is_file()]
    raise FileNotFoundError(
        f'{dataset}: looked in {data_dir}{where} for the official archive {archive_name} (not found) or its '
        f'extracted folder {data_dir / folder}/ (or {data_dir} itself) with {", ".join(names)}; '
        f'missing in {present}: {", ".join(missing)}. Download {SOURCES[dataset][0].url} '
        f'(md5 {SOURCES[dataset][0].md5}).')


def check_files(dataset: str, data_dir, *, cache_dir=None) -> dict[str, pathlib.Path]:
    """Returns ``{file name: path}`` of the official files of ``dataset`` found in ``data_dir``.

    ``dataset`` is ``'fashion_mnist'``, ``'cifar10'`` or ``'stl10'``. Fashion-MNIST needs its
    four ``.gz`` files in ``data_dir``. CIFAR-10 and STL-10 accept the extracted folder
    (``data_dir/cifar-10-batches-py/`` or ``data_dir/stl10_binary/``, or ``data_dir`` itself being
    that folder) or else the official archive in ``data_dir``, which is then extracted into
    ``cache_dir`` (see the module docstring); the returned dict then also holds the archive under
    its name, so that callers can :func:`verify_md5` it against :data:`SOURCES`. Raises
    ``FileNotFoundError`` listing every expected file, where it was looked for and what is missing;
    ``ValueError`` for a corrupt or unsafe archive.
    """
    return _locate(dataset, data_dir, None, cache_dir)


# ---------------------------------------------------------------------------------------------
# Fashion-MNIST: gzip-compressed IDX
# ---------------------------------------------------------------------------------------------

_UBYTE = 0x08


def read_idx(path, ndim: int | None = None, limit: int | None = None) -> np.ndarray:
    """Returns the unsigned-byte IDX array stored (gzip-compressed if ``path`` ends in .gz) at ``path``.

    IDX: big-endian header ``0x00 0x00 0x08 <ndim>``, ``ndim`` big-endian uint32 sizes, then the
    bytes. ``ndim`` checks the number of dimensions of the magic number; ``limit`` reads only the
    first ``limit`` entries along the first axis. ``ValueError`` naming the file on a bad magic
    number, a truncated header or payload, a corrupt gzip stream and (without ``limit``) on bytes
    after the payload.
    """
    path = str(path)
    limit = _check_limit(limit)
    opener = gzip.open if path.endswith('.gz') else open
    with opener(path, 'rb') as f:
        try:
            magic = f.read(4)
            if len(magic) < 4:
                raise ValueError(f'{path}: truncated IDX header ({len(magic)} of 4 magic bytes)')
            zero1, zero2, dtype, dims = magic
            if zero1 != 0 or zero2 != 0 or dtype != _UBYTE or dims < 1:
                raise ValueError(
                    f'{path}: bad IDX magic number 0x{magic.hex()} (expected 0x0000 08 <ndim>, unsigned bytes)')
            if ndim is not None and dims != ndim:
                raise ValueError(f'{path}: expected {ndim} dimensions, the magic number says {dims}')
            raw = f.read(4 * dims)
            if len(raw) < 4 * dims:
                raise ValueError(f'{path}: truncated IDX header ({len(raw)} of {4 * dims} size bytes)')
            shape = list(struct.unpack(f'>{dims}I', raw))
            if limit is not None:
                shape[0] = min(shape[0], limit)
            count = int(np.prod(shape, dtype=np.int64))
            data = f.read(count)
            extra = f.read(1) if limit is None and len(data) == count else b''  # also checks the gzip CRC
        except (EOFError, gzip.BadGzipFile, zlib.error) as exc:  # truncated or corrupt gzip stream
            raise ValueError(f'{path}: truncated or corrupt gzip stream ({exc})') from exc
    if len(data) < count:
        raise ValueError(f'{path}: truncated IDX data: {len(data)} of {count} bytes for shape {tuple(shape)}')
    if extra:
        raise ValueError(f'{path}: unexpected bytes after the IDX data of shape {tuple(shape)}')
    return np.frombuffer(data, dtype=np.uint8).reshape(shape)


def read_fashion_mnist(data_dir, split: str, limit: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Returns Fashion-MNIST ``split`` as uint8 images ``(N, 28, 28)`` and int64 labels ``(N,)`` in 0..9.

    ``data_dir`` holds the official ``.gz`` files (e.g. :data:`FASHION_MNIST_DEBIAN_DIR`);
    ``split`` is ``'train'`` (60,000) or ``'test'`` (10,000, the ``t10k`` files).
    """
    _check_split(split)
    limit = _check_limit(limit)
    paths = _locate('fashion_mnist', data_dir, split)
    image_file, label_file = (paths[name] for name in _FASHION_MNIST_FILES[split])
    images = read_idx(image_file, ndim=3, limit=limit)
    labels = read_idx(label_file, ndim=1, limit=limit)
    if images.shape[1:] != (28, 28):
        raise ValueError(f'{image_file}: expected 28x28 images, got {images.shape[1]}x{images.shape[2]}')
    if len(images) != len(labels):
        raise ValueError(f'Fashion-MNIST {split}: {image_file} holds {len(images)} images but '
                         f'{label_file} holds {len(labels)} labels')
    if labels.size and labels.max() > 9:
        raise ValueError(f'{label_file}: labels must lie in 0..9, got {int(labels.max())}')
    return images, labels.astype(np.int64)


# ---------------------------------------------------------------------------------------------
# CIFAR-10: pickled dicts, read without executing code
# ---------------------------------------------------------------------------------------------

def _numpy_reconstruct():
    try:
        from numpy._core.multiarray import _reconstruct
    except ImportError:  # numpy < 2
        from numpy.core.multiarray import _reconstruct
    return _reconstruct


_PICKLE_GLOBALS = {
    ('numpy.core.multiarray', '_reconstruct'): _numpy_reconstruct,
    ('numpy._core.multiarray', '_reconstruct'): _numpy_reconstruct,
    ('numpy', 'ndarray'): lambda: np.ndarray,
    ('numpy', 'dtype'): lambda: np.dtype,
}


class _ForbiddenGlobal(pickle.UnpicklingError):
    pass


class _RestrictedUnpickler(pickle.Unpickler):
    """Unpickler that resolves only numpy's array reconstruction; any other global is refused."""

    def find_class(self, module, name):
        factory = _PICKLE_GLOBALS.get((module, name))
        if factory is None:
            raise _ForbiddenGlobal(
                f'refusing to load global {module}.{name}: a CIFAR-10 batch only needs numpy array reconstruction '
                f'(allowed: {", ".join(sorted(f"{m}.{n}" for m, n in _PICKLE_GLOBALS))})')
        return factory()


def _load_pickle(path: pathlib.Path) -> dict:
    try:
        with open(path, 'rb') as f:
            obj = _RestrictedUnpickler(f, encoding='bytes').load()
    except _ForbiddenGlobal as exc:
        raise pickle.UnpicklingError(f'{path}: {exc}') from None
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError,
            KeyError, struct.error, MemoryError) as exc:
        raise ValueError(f'{path}: truncated or corrupt pickle ({type(exc).__name__}: {exc})') from exc
    if not isinstance(obj, dict):
        raise ValueError(f'{path}: expected a pickled dict, got {type(obj).__name__}')
    # The official files were pickled by Python 2: with encoding='bytes' their keys are bytes.
    return {k.decode('latin1') if isinstance(k, bytes) else k: v for k, v in obj.items()}


def _read_cifar_batch(path: pathlib.Path) -> tuple[np.ndarray, np.ndarray]:
    batch = _load_pickle(path)
    missing = [k for k in ('data', 'labels') if k not in batch]
    if missing:
        raise ValueError(f'{path}: the CIFAR-10 batch lacks the key(s) {missing} (has {sorted(batch)})')
    data, labels = batch['data'], batch['labels']
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        what = f'{data.dtype} array of shape {data.shape}' if isinstance(data, np.ndarray) else type(data).__name__
        raise ValueError(f'{path}: expected data to be a uint8 array of shape (N, 3072), got a {what}')
    try:
        labels = np.asarray(labels)
    except Exception as exc:  # noqa: BLE001 - anything odd in the label list
        raise ValueError(f'{path}: unreadable labels ({exc})') from exc
    if labels.ndim != 1 or (labels.size and labels.dtype.kind not in 'iu'):
        raise ValueError(f'{path}: expected a list of integer labels, got {labels.dtype} of shape {labels.shape}')
    if len(labels) != len(data):
        raise ValueError(f'{path}: {len(data)} images but {len(labels)} labels')
    if labels.size and (labels.min() < 0 or labels.max() > 9):
        raise ValueError(f'{path}: labels must lie in 0..9, got {int(labels.min())}..{int(labels.max())}')
    # Each row: the 1024 red values of the 32x32 image in row-major order, then green, then blue.
    images = data.reshape(len(data), 3, 32, 32).transpose(0, 2, 3, 1)
    return images, labels.astype(np.int64)


def _check_cifar_meta(path: pathlib.Path) -> None:
    meta = _load_pickle(path)
    names = meta.get('label_names')
    if names is None:
        raise ValueError(f'{path}: batches.meta lacks label_names (has {sorted(meta)})')
    names = tuple(n.decode('latin1') if isinstance(n, bytes) else n for n in names)
    if names != CLASS_NAMES['cifar10']:
        raise ValueError(f'{path}: label_names {names} differ from the CIFAR-10 classes {CLASS_NAMES["cifar10"]}')


def read_cifar10(data_dir, split: str, limit: int | None = None, *, cache_dir=None) -> tuple[np.ndarray, np.ndarray]:
    """Returns CIFAR-10 ``split`` as uint8 RGB images ``(N, 32, 32, 3)`` and int64 labels ``(N,)``.

    ``train`` is ``data_batch_1`` ... ``data_batch_5`` in order (50,000), ``test`` is
    ``test_batch`` (10,000). ``data_dir`` holds ``cifar-10-python.tar.gz`` or
    ``cifar-10-batches-py/`` (see :func:`check_files`). With ``limit`` only the batches needed for
    the first ``limit`` examples are read. The class order is checked against ``batches.meta``.
    """
    _check_split(split)
    limit = _check_limit(limit)
    paths = _locate('cifar10', data_dir, split, cache_dir)
    _check_cifar_meta(paths['batches.meta'])
    images, labels, count = [], [], 0
    for name in _ARCHIVES['cifar10'][2][split]:
        if name == 'batches.meta' or (limit is not None and count >= limit):
            continue
        x, y = _read_cifar_batch(paths[name])
        images.append(x)
        labels.append(y)
        count += len(x)
    images = np.concatenate(images) if images else np.zeros((0, 32, 32, 3), np.uint8)
    labels = np.concatenate(labels) if labels else np.zeros((0,), np.int64)
    if limit is not None:
        images, labels = images[:limit], labels[:limit]
    return np.ascontiguousarray(images), labels


# ---------------------------------------------------------------------------------------------
# STL-10: raw binary, column-major images
# ---------------------------------------------------------------------------------------------

_STL10_IMAGE_BYTES = 3 * 96 * 96  # 27648


def read_stl10(data_dir, split: str, limit: int | None = None, *, cache_dir=None) -> tuple[np.ndarray, np.ndarray]:
    """Returns STL-10 ``split`` as uint8 RGB images ``(N, 96, 96, 3)`` and int64 labels ``(N,)`` in 0..9.

    ``train`` has 5,000 and ``test`` 8,000 labelled images. ``data_dir`` holds
    ``stl10_binary.tar.gz`` or ``stl10_binary/`` (see :func:`check_files`). Each image is stored
    as 3 x 96 x 96 bytes in column-major order (the official reader reshapes to ``(N, 3, 96, 96)``
    and transposes with ``(0, 3, 2, 1)``); labels are stored as 1..10 and returned as 0..9. With
    ``limit`` only the first ``limit`` images are read from disk. The class order is checked
    against ``class_names.txt``.
    """
    _check_split(split)
    limit = _check_limit(limit)
    paths = _locate('stl10', data_dir, split, cache_dir)
    names_file = paths['class_names.txt']
    names = tuple(line.strip() for line in names_file.read_text(encoding='utf-8').splitlines() if line.strip())
    if names != CLASS_NAMES['stl10']:
        raise ValueError(f'{names_file}: class names {names} differ from the STL-10 classes {CLASS_NAMES["stl10"]}')
    x_file, y_file = paths[f'{split}_X.bin'], paths[f'{split}_y.bin']
    x_size, n_labels = x_file.stat().st_size, y_file.stat().st_size
    if x_size % _STL10_IMAGE_BYTES:
        raise ValueError(f'{x_file}: {x_size} bytes is not a multiple of {_STL10_IMAGE_BYTES} (3x96x96): '
                         f'truncated or not an STL-10 image file')
    n_images = x_size // _STL10_IMAGE_BYTES
    if n_images != n_labels:
        raise ValueError(f'STL-10 {split}: {x_file} holds {n_images} images but {y_file} holds {n_labels} labels')
    n = n_images if limit is None else min(n_images, limit)
    with open(y_file, 'rb') as f:
        labels = np.frombuffer(f.read(n), dtype=np.uint8)
    if labels.size and (labels.min() < 1 or labels.max() > 10):
        raise ValueError(f'{y_file}: labels must lie in 1..10, got {int(labels.min())}..{int(labels.max())}')
    with open(x_file, 'rb') as f:
        data = f.read(n * _STL10_IMAGE_BYTES)
    if len(data) != n * _STL10_IMAGE_BYTES:  # the file shrank while being read
        raise ValueError(f'{x_file}: truncated: read {len(data)} of {n * _STL10_IMAGE_BYTES} bytes')
    images = np.frombuffer(data, dtype=np.uint8).reshape(n, 3, 96, 96).transpose(0, 3, 2, 1)
    return np.ascontiguousarray(images), labels.astype(np.int64) - 1
