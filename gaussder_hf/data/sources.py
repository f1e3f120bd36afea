"""Readers of the ORIGINAL benchmark files, in their official formats, and where to download them.

The sources of the rescaled dataset builders of :mod:`gaussder_hf.data` (formerly
``gaussder_hf.dataset_sources``, which still imports, with a ``DeprecationWarning``).

Three datasets are read (docs/design.md §4):

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
md5s, and :func:`verify_md5` checks a downloaded file against them. :func:`verify_files` checks
the files a reader uses against :data:`OFFICIAL_MD5`, the md5s of their *content*: the
decompressed IDX data of Fashion-MNIST's ``.gz`` files (so copies that differ only in the gzip
header, like Debian's, pass) and the files inside the CIFAR-10 / STL-10 archives.

Sizes are bounded before anything is allocated, decompressed or written: every file's content
may be at most :data:`SIZE_MARGIN` times its official size, an IDX header may not claim more
than that, and an archive is refused when a member it needs, or the archive as a whole, is
larger. Archives are extracted (only the members that are needed, regular files only, rejecting
absolute paths, ``..`` components, links and duplicates) into a cache folder: ``cache_dir`` if
given (the ``datasets`` builders pass a folder inside the ``cache_dir`` given to them), else
``$GAUSSDER_HF_CACHE/extracted`` (default ``~/.cache/gaussder_hf/extracted``). An extraction is
keyed by the archive's path, device, inode, size, modification and change times and becomes
visible atomically.
"""
from __future__ import annotations

import gzip
import hashlib
import io
import json
import math
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

from ..presets import DATASET_INFO

__all__ = [
    'SourceFile', 'SOURCES', 'CLASS_NAMES', 'FASHION_MNIST_DEBIAN_DIR', 'FASHION_MNIST_DEBIAN_MD5',
    'FASHION_MNIST_IDX_MD5', 'OFFICIAL_MD5', 'OFFICIAL_SIZE', 'SIZE_MARGIN', 'check_files', 'content_md5',
    'verify_md5', 'verify_files', 'read_idx', 'read_fashion_mnist', 'read_cifar10', 'read_stl10',
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

# md5 of the content of every file a reader uses: the decompressed IDX file for Fashion-MNIST,
# the files inside the official archives for CIFAR-10 and STL-10 (the md5s torchvision's CIFAR10
# and STL10 datasets check, too). STL-10's class_names.txt has none: read_stl10 compares it word
# by word.
OFFICIAL_MD5: dict[str, dict[str, str]] = {
    'fashion_mnist': FASHION_MNIST_IDX_MD5,
    'cifar10': {
        'data_batch_1': 'c99cafc152244af753f735de768cd75f',
        'data_batch_2': 'd4bba439e000b95fd0a9bffe97cbabec',
        'data_batch_3': '54ebc095f3ab1f0389bbae665268c751',
        'data_batch_4': '634d18415352ddfa80567beed471001a',
        'data_batch_5': '482c414d41f54cd18b22e5b47cb7c3cb',
        'test_batch': '40351d587109b95175f43aff81a1287e',
        'batches.meta': '5ff9c542aee3614f3951f8cda6e48888',
    },
    'stl10': {
        'train_X.bin': '918c2871b30a85fa023e0c44e0bee87f',
        'train_y.bin': '5a34089d4802c674881badbb80307741',
        'test_X.bin': '7f263ba9f9e0b06b93213547f721ac82',
        'test_y.bin': '36f9794fa4beb8a2c72628de14fa638e',
    },
}

# Size in bytes of each file's content (decompressed for .gz) and of each archive's uncompressed
# tar stream. Exact where the format fixes it (IDX: 16 or 8 header bytes + the data; STL-10:
# 3x96x96 bytes per image, one per label); upper estimates for the pickled CIFAR-10 batches
# (10,000 x 3,072 image bytes plus ~0.3 MB of labels and file names), the small text / meta
# files and the archives. Content beyond SIZE_MARGIN times these is refused before it is read.
SIZE_MARGIN = 2
OFFICIAL_SIZE: dict[str, dict[str, int]] = {
    'fashion_mnist': {
        'train-images-idx3-ubyte.gz': 16 + 60_000 * 28 * 28,
        'train-labels-idx1-ubyte.gz': 8 + 60_000,
        't10k-images-idx3-ubyte.gz': 16 + 10_000 * 28 * 28,
        't10k-labels-idx1-ubyte.gz': 8 + 10_000,
    },
    'cifar10': {
        **{f'data_batch_{i}': 31_100_000 for i in range(1, 6)},
        'test_batch': 31_100_000,
        'batches.meta': 4_096,
        'cifar-10-python.tar.gz': 190_000_000,
    },
    'stl10': {
        'train_X.bin': 5_000 * 3 * 96 * 96,
        'train_y.bin': 5_000,
        'test_X.bin': 8_000 * 3 * 96 * 96,
        'test_y.bin': 8_000,
        'class_names.txt': 4_096,
        'stl10_binary.tar.gz': 3_200_000_000,  # including the 2.8 GB of unlabelled images
    },
}
_MAX_ARCHIVE_MEMBERS = 1_000  # the official archives hold about ten


def _max_bytes(dataset: str, name: str) -> int:
    return SIZE_MARGIN * OFFICIAL_SIZE[dataset][name]


def _too_large(where, size: int, dataset: str, name: str) -> ValueError:
    return ValueError(f'{where}: {size:,} bytes, more than the {_max_bytes(dataset, name):,} allowed for '
                      f'{name} ({SIZE_MARGIN}x the official {OFFICIAL_SIZE[dataset][name]:,}): not the official file')


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


def content_md5(path, max_bytes: int | None = None) -> str:
    """Returns the md5 of the content of ``path``: what it decompresses to if it ends in .gz, else its bytes.

    Reads 1 MiB at a time. ``ValueError`` naming the file when the content is larger than
    ``max_bytes`` (counted while decompressing, so a small .gz cannot expand without bound) or the
    gzip stream is truncated or corrupt.
    """
    path = pathlib.Path(path)
    gz = path.name.endswith('.gz')
    digest, total = hashlib.md5(), 0
    try:
        with (gzip.open if gz else open)(path, 'rb') as f:
            while chunk := f.read(1 << 20):
                total += len(chunk)
                if max_bytes is not None and total > max_bytes:
                    raise ValueError(f'{path}: {"decompresses to" if gz else "holds"} more than the {max_bytes:,} '
                                     f'bytes allowed for it: not the official file')
                digest.update(chunk)
    except (EOFError, gzip.BadGzipFile, zlib.error) as exc:
        raise ValueError(f'{path}: truncated or corrupt gzip stream ({exc})') from exc
    return digest.hexdigest()


def _stat_key(path: pathlib.Path) -> list[int]:
    # ctime changes with every write and cannot be set back (unlike mtime, e.g. by `cp -p` or `touch -d`).
    st = path.stat()
    return [st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns]


def _read_record(record: pathlib.Path | None) -> dict:
    try:
        known = json.loads(record.read_text()) if record is not None and record.is_file() else {}
    except (OSError, ValueError):  # unreadable or half-written: hash again
        return {}
    return known if isinstance(known, dict) else {}


def _write_record(record: pathlib.Path, known: dict) -> None:
    tmp = None
    try:
        record.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f'.{record.name}-', dir=record.parent)
        with os.fdopen(fd, 'w') as f:
            json.dump(known, f)
        os.replace(tmp, record)  # atomic: readers see the old or the new record, never half of one
    except OSError:  # e.g. a read-only or full cache: the files are hashed again next time, nothing else changes
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)


def verify_files(dataset: str, files: dict, *, record=None, expected_md5: dict | None = None) -> dict[str, str]:
    """Checks the files found by :func:`check_files` against :data:`OFFICIAL_MD5`; returns ``{name: content md5}``.

    Every file with an official md5 must match it: the md5 of the decompressed content for a
    ``.gz`` file (Debian's copies of Fashion-MNIST differ from upstream's only in the gzip header,
    and pass), of the file itself otherwise. An archive in ``files`` is skipped: its extracted
    members are in ``files`` too and are checked instead. The returned md5s (also of files without
    an official one, like STL-10's class_names.txt) identify the content, e.g. to key a cache.
    Raises ``ValueError`` naming the file, the expected and the actual md5, or a file larger than
    :data:`SIZE_MARGIN` times its official size (checked before it is hashed).

    ``record`` (a JSON file) remembers each file's md5 with its device, inode, size, modification
    and change times; a file whose five are unchanged is not hashed again (any write changes the
    change time, which cannot be set back), so repeated checks of large files cost a ``stat``.
    ``expected_md5`` replaces :data:`OFFICIAL_MD5` for a known subset of the official files (the
    sample that ships with the package).
    """
    if dataset not in SOURCES:
        raise ValueError(f'unknown dataset {dataset!r}; expected one of {sorted(SOURCES)}')
    archive = _ARCHIVES[dataset][0] if dataset in _ARCHIVES else None
    record = pathlib.Path(record) if record is not None else None
    known = _read_record(record)
    md5s, changed = {}, False
    for name, path in files.items():
        if name == archive:
            continue
        path = pathlib.Path(path)
        gz = name.endswith('.gz')
        limit = _max_bytes(dataset, name) if name in OFFICIAL_SIZE[dataset] else None
        if limit is not None and not gz and path.stat().st_size > limit:
            raise _too_large(path, path.stat().st_size, dataset, name)
        key, entry = _stat_key(path), known.get(str(path.resolve()))
        if isinstance(entry, dict) and entry.get('stat') == key and isinstance(entry.get('md5'), str):
            actual = entry['md5']
        else:
            actual = content_md5(path, limit)
            if _stat_key(path) == key:  # unchanged while it was hashed
                known[str(path.resolve())], changed = {'stat': key, 'md5': actual}, True
        expected = (OFFICIAL_MD5[dataset] if expected_md5 is None else expected_md5).get(name)
        if expected is not None and actual != expected.lower() and archive in files:
            raise ValueError(f'{path} (extracted from {files[archive]}): md5 {actual}, but the official {name} has '
                             f'md5 {expected}: corrupt, modified or not the official archive')
        if expected is not None and actual != expected.lower():
            if gz:
                raise ValueError(
                    f'{path}: the md5 of its decompressed content is {actual}, but the official {name} '
                    f'decompresses to md5 {expected}: corrupt, modified or not the official file (.gz files are '
                    f'compared by their decompressed content, so copies that differ only in the gzip header, '
                    f"like Debian's, pass)")
            raise ValueError(f'{path}: md5 {actual}, but the official {name} has md5 {expected}: corrupt, modified '
                             f'or not the official file')
        md5s[name] = actual
    if record is not None and changed:
        _write_record(record, known)
    return md5s


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


class _BoundedStream(io.RawIOBase):
    """Read-only view of a (decompressing) stream that refuses to deliver more than ``limit`` bytes."""

    def __init__(self, f, limit: int | None, what: str):
        super().__init__()
        self._f, self._left, self._limit, self._what = f, limit, limit, what

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        want = len(buffer) if self._left is None else min(len(buffer), self._left + 1)
        data = self._f.read(want)
        if self._left is not None:
            if len(data) > self._left:
                raise ValueError(f'{self._what}: decompresses to more than the {self._limit:,} bytes allowed '
                                 f'({SIZE_MARGIN}x the official archive): not the official archive')
            self._left -= len(data)
        buffer[:len(data)] = data
        return len(data)


def _extract_members(dataset: str, archive: pathlib.Path, tar: tarfile.TarFile, target: pathlib.Path,
                     archive_limit: int | None) -> set[str]:
    """Writes the needed members of the open ``tar`` into ``target``; every bound is checked from the headers."""
    _, folder, split_files = _ARCHIVES[dataset]
    wanted, found = _all_members(split_files), set()
    for count, member in enumerate(tar, 1):
        if count > _MAX_ARCHIVE_MEMBERS:
            raise ValueError(f'{archive}: more than {_MAX_ARCHIVE_MEMBERS} archive members (the official archive '
                             f'holds about ten): not the official archive')
        name = _safe_member_name(archive, member)
        end = member.offset_data + member.size
        if archive_limit is not None and end > archive_limit:  # before it is skipped over or read
            raise ValueError(
                f'{archive}: archive member {member.name!r} ends {end:,} bytes into the uncompressed archive, past '
                f'the {archive_limit:,} allowed ({SIZE_MARGIN}x the official {OFFICIAL_SIZE[dataset][archive.name]:,}'
                f'): not the official archive')
        top, _, rest = name.partition('/')
        if top != folder or rest not in wanted or not member.isfile():
            continue
        if rest in found:
            raise ValueError(f'{archive}: archive member {member.name!r} appears twice (the official archive holds '
                             f'each file once)')
        if rest in OFFICIAL_SIZE[dataset] and member.size > _max_bytes(dataset, rest):
            raise _too_large(f'{archive}, archive member {member.name!r}', member.size, dataset, rest)
        with open(target / rest, 'wb') as out:
            shutil.copyfileobj(tar.extractfile(member), out, 1 << 20)
        found.add(rest)
    return found


def _extract(dataset: str, archive: pathlib.Path, cache_dir) -> pathlib.Path:
    """Extracts the needed members of ``archive`` (once) and returns the extracted folder."""
    _, folder, split_files = _ARCHIVES[dataset]
    wanted = _all_members(split_files)
    key = hashlib.sha256(f'{archive.resolve()}:{_stat_key(archive)}'.encode()).hexdigest()[:16]
    root = pathlib.Path(cache_dir) if cache_dir is not None else _default_cache_dir()
    final = root / f'{folder}-{key}'
    if all((final / folder / name).is_file() for name in wanted):
        return final / folder
    root.mkdir(parents=True, exist_ok=True)
    archive_limit = _max_bytes(dataset, archive.name) if archive.name in OFFICIAL_SIZE[dataset] else None
    tmp = pathlib.Path(tempfile.mkdtemp(prefix=f'.{folder}-', dir=root))
    try:
        (tmp / folder).mkdir()
        try:
            # Read as a stream through a bound on the decompressed bytes: tarfile then never
            # allocates more than is present (it would for a long-name header's claimed size) and
            # never decompresses more than the bound.
            with open(archive, 'rb') as raw:
                gz = raw.read(2) == b'\x1f\x8b'
                raw.seek(0)
                stream = _BoundedStream(gzip.GzipFile(fileobj=raw) if gz else raw, archive_limit, str(archive))
                with tarfile.open(fileobj=stream, mode='r|') as tar:
                    found = _extract_members(dataset, archive, tar, tmp / folder, archive_limit)
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


def check_files(dataset: str, data_dir, *, split: str | None = None, cache_dir=None) -> dict[str, pathlib.Path]:
    """Returns ``{file name: path}`` of the official files of ``dataset`` found in ``data_dir``.

    ``dataset`` is ``'fashion_mnist'``, ``'cifar10'`` or ``'stl10'``. Fashion-MNIST needs its
    four ``.gz`` files in ``data_dir``. CIFAR-10 and STL-10 accept the extracted folder
    (``data_dir/cifar-10-batches-py/`` or ``data_dir/stl10_binary/``, or ``data_dir`` itself being
    that folder) or else the official archive in ``data_dir``, which is then extracted into
    ``cache_dir`` (see the module docstring); the returned dict then also holds the archive under
    its name, so that callers can :func:`verify_md5` it against :data:`SOURCES`; pass the dict to
    :func:`verify_files` to check every file's content against :data:`OFFICIAL_MD5`. Raises
    ``FileNotFoundError`` listing every expected file, where it was looked for and what is missing;
    ``ValueError`` for a corrupt, unsafe or oversized archive. ``split`` (``'train'`` or ``'test'``)
    asks for that split's files only.
    """
    if split is not None:
        _check_split(split)
    return _locate(dataset, data_dir, split, cache_dir)


# ---------------------------------------------------------------------------------------------
# Fashion-MNIST: gzip-compressed IDX
# ---------------------------------------------------------------------------------------------

_UBYTE = 0x08


def _read_at_most(f, count: int, chunk: int = 1 << 22) -> bytearray:
    """Reads up to ``count`` bytes, growing the buffer with what arrives (never ``count`` up front)."""
    data = bytearray()
    while len(data) < count:
        piece = f.read(min(chunk, count - len(data)))
        if not piece:
            break
        data += piece
    return data


def read_idx(path, ndim: int | None = None, limit: int | None = None, max_bytes: int | None = None) -> np.ndarray:
    """Returns the unsigned-byte IDX array stored (gzip-compressed if ``path`` ends in .gz) at ``path``.

    IDX: big-endian header ``0x00 0x00 0x08 <ndim>``, ``ndim`` big-endian uint32 sizes, then the
    bytes. ``ndim`` checks the number of dimensions of the magic number; ``limit`` reads only the
    first ``limit`` entries along the first axis; ``max_bytes`` bounds the (decompressed) file the
    header may describe. ``ValueError`` naming the file on a bad magic number, a truncated header
    or payload, a header that claims more than ``max_bytes`` (or, uncompressed, more than the file
    holds), a corrupt gzip stream and (without ``limit``) on bytes after the payload. The data is
    read in bounded pieces, so a header claiming more than is present never allocates its claim.
    """
    path = str(path)
    limit = _check_limit(limit)
    gz = path.endswith('.gz')
    opener = gzip.open if gz else open
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
            claimed = 4 + 4 * dims + math.prod(shape)  # exact integers: no int64 wrap-around
            if max_bytes is not None and claimed > max_bytes:
                raise ValueError(f'{path}: the IDX header claims shape {tuple(shape)}, {claimed:,} bytes in all, more '
                                 f'than the {max_bytes:,} allowed for this file')
            if not gz and claimed > os.fstat(f.fileno()).st_size:
                raise ValueError(f'{path}: truncated IDX data: the header claims shape {tuple(shape)}, {claimed:,} '
                                 f'bytes in all, but the file holds {os.fstat(f.fileno()).st_size:,}')
            if limit is not None:
                shape[0] = min(shape[0], limit)
            count = math.prod(shape)
            data = _read_at_most(f, count)
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
    image_name, label_name = _FASHION_MNIST_FILES[split]
    image_file, label_file = paths[image_name], paths[label_name]
    images = read_idx(image_file, ndim=3, limit=limit, max_bytes=_max_bytes('fashion_mnist', image_name))
    labels = read_idx(label_file, ndim=1, limit=limit, max_bytes=_max_bytes('fashion_mnist', label_name))
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

# How numpy pickles an array (protocol 2, as in the official files): ``_reconstruct(ndarray, (0,),
# b'b')`` makes an empty placeholder, then BUILD hands it the state ``(1, shape, dtype,
# is_fortran, raw bytes)``; the dtype is ``dtype('u1', 0, 1)`` with the state ``(3, '|', None,
# None, None, -1, -1, 0)``. Only exactly that path is allowed, through stand-ins that check every
# argument before numpy sees it: an array must be made from bytes present in the file, exactly
# ``prod(shape) x itemsize`` of them, and all arrays together may not hold more bytes than the
# file. Calling ``numpy.ndarray(shape, dtype)`` directly (uninitialised memory of any size) is refused.
_PICKLE_DTYPES = ('u1', 'i1', 'u2', 'i2', 'u4', 'i4', 'u8', 'i8')
_PICKLE_GLOBALS = (
    ('numpy.core.multiarray', '_reconstruct'), ('numpy._core.multiarray', '_reconstruct'),
    ('numpy', 'ndarray'), ('numpy', 'dtype'))


class _RefusedPickle(pickle.UnpicklingError):
    pass


class _PickledNdarray:
    """What the pickle's ``numpy.ndarray`` resolves to: a marker for ``_reconstruct``; calling it is refused."""

    def __call__(self, *args, **kwargs):
        raise _RefusedPickle(
            f'refusing numpy.ndarray{args!r}: it would make an array of uninitialised memory; a CIFAR-10 array '
            f'must be rebuilt from bytes in the file (numpy.core.multiarray._reconstruct(ndarray, (0,), b"b") and '
            f'its state)')


_NDARRAY = _PickledNdarray()


class _PickledDtype:
    """Stand-in for ``numpy.dtype(name, align, copy)`` of a plain integer type; resolved once its state is checked."""

    def __init__(self, name, align=0, copy=1):
        name = name.decode('latin1') if isinstance(name, bytes) else name
        if name not in _PICKLE_DTYPES:
            raise _RefusedPickle(f'refusing numpy dtype {name!r}: allowed are {", ".join(_PICKLE_DTYPES)}')
        self.name, self.byteorder = name, '|'

    def __setstate__(self, state):
        plain = isinstance(state, tuple) and len(state) == 8 and state[0] == 3 and state[2:] == (
            None, None, None, -1, -1, 0)
        order = state[1] if plain else None
        order = order.decode('latin1') if isinstance(order, bytes) else order
        if order not in ('<', '>', '|', '='):
            raise _RefusedPickle(f'refusing the numpy dtype state {state!r}: allowed is (3, byte order, None, None, '
                                 f'None, -1, -1, 0), a plain number')
        self.byteorder = order

    def resolve(self) -> np.dtype:
        dtype = np.dtype(self.name)
        return dtype.newbyteorder(self.byteorder) if self.byteorder in '<>' else dtype


class _PickledArray:
    """Placeholder from ``_reconstruct``; its state must carry exactly the bytes of the array it describes."""

    def __init__(self, budget: list):
        self.array, self._budget = None, budget

    def __setstate__(self, state):
        if not isinstance(state, tuple) or len(state) not in (4, 5) or (len(state) == 5 and state[0] != 1):
            raise _RefusedPickle(f'refusing the numpy array state of type {type(state).__name__}: allowed is '
                                 f'(1, shape, dtype, is_fortran, raw bytes)')
        shape, dtype, fortran, raw = state[-4:]
        if not (isinstance(shape, tuple) and len(shape) <= 32 and all(
                isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in shape)):
            raise _RefusedPickle(f'refusing the numpy array shape {shape!r}: allowed is a tuple of integers >= 0')
        if not isinstance(dtype, _PickledDtype) or not isinstance(raw, bytes) or not isinstance(fortran, (bool, int)):
            raise _RefusedPickle(f'refusing a numpy array state with dtype {type(dtype).__name__} and data '
                                 f'{type(raw).__name__}: allowed are a plain integer dtype and the raw bytes')
        dtype = dtype.resolve()
        need = math.prod(shape) * dtype.itemsize
        if need != len(raw):
            raise _RefusedPickle(f'refusing a numpy array of shape {shape} and dtype {dtype}: it needs {need:,} '
                                 f'bytes, the file holds {len(raw):,} for it')
        self._budget[0] -= need
        if self._budget[0] < 0:
            raise _RefusedPickle('refusing the numpy arrays: together they hold more bytes than the file '
                                 '(the same data reused for several arrays)')
        self.array = np.frombuffer(raw, dtype).reshape(shape, order='F' if fortran else 'C')


class _RestrictedUnpickler(pickle.Unpickler):
    """Unpickler that resolves only numpy's array reconstruction (checked stand-ins); any other global is refused."""

    def __init__(self, file, budget: int, **kwargs):
        super().__init__(file, **kwargs)
        self._budget = [budget]

    def _reconstruct(self, cls, shape, typecode):
        if cls is not _NDARRAY or shape != (0,) or typecode not in (b'b', 'b'):
            raise _RefusedPickle(f'refusing numpy _reconstruct{(cls, shape, typecode)!r}: allowed is only the empty '
                                 f'placeholder numpy pickles write, _reconstruct(ndarray, (0,), b"b")')
        return _PickledArray(self._budget)

    def find_class(self, module, name):
        if (module, name) not in _PICKLE_GLOBALS:
            raise _RefusedPickle(
                f'refusing to load global {module}.{name}: a CIFAR-10 batch only needs numpy array reconstruction '
                f'(allowed: {", ".join(sorted(f"{m}.{n}" for m, n in _PICKLE_GLOBALS))})')
        return {'_reconstruct': self._reconstruct, 'ndarray': _NDARRAY, 'dtype': _PickledDtype}[name]


def _resolve_arrays(obj):
    """Replaces the checked placeholders among the values of the unpickled dict by their arrays.

    Only the top level: a CIFAR-10 batch keeps its arrays there, and a walk through nested,
    possibly shared containers could be made to take exponential time. A placeholder left deeper
    is an inert object that the batch checks refuse.
    """
    def resolve(value):
        if isinstance(value, _PickledArray):
            if value.array is None:
                raise _RefusedPickle('refusing a numpy array without its data (no state after _reconstruct)')
            return value.array
        return value.resolve() if isinstance(value, _PickledDtype) else value

    return {k: resolve(v) for k, v in obj.items()} if isinstance(obj, dict) else resolve(obj)


def _load_pickle(path: pathlib.Path) -> dict:
    size = path.stat().st_size
    if path.name in OFFICIAL_SIZE['cifar10'] and size > _max_bytes('cifar10', path.name):
        raise _too_large(path, size, 'cifar10', path.name)
    try:
        # Read whole (bounded above), so that a length field in the pickle can never make the
        # unpickler allocate more than the file holds.
        data = path.read_bytes()
        obj = _resolve_arrays(_RestrictedUnpickler(io.BytesIO(data), len(data), encoding='bytes').load())
    except _RefusedPickle as exc:
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
    for path, size in ((x_file, x_size), (y_file, n_labels)):
        if size > _max_bytes('stl10', path.name):
            raise _too_large(path, size, 'stl10', path.name)
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
