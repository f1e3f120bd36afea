"""Tiny reader of the IDX files of Debian's ``dataset-fashion-mnist`` package, for tests and benchmarks.

The files (``/usr/share/datasets/fashion-mnist/{train,t10k}-{images-idx3,labels-idx1}-ubyte.gz``)
are gzip-compressed IDX: a big-endian header ``0x00 0x00 <dtype> <ndim>``, ``ndim`` big-endian
uint32 sizes, then the data. Fashion-MNIST uses unsigned bytes (dtype code ``0x08``): images are
``(N, 28, 28)`` and labels ``(N,)``. Only gzip and numpy are needed.
"""
from __future__ import annotations

import gzip
import os
import struct

import numpy as np

__all__ = ['FASHION_MNIST_DIR', 'read_idx', 'load_fashion_mnist', 'fashion_mnist_available']

FASHION_MNIST_DIR = os.environ.get('FASHION_MNIST_DIR', '/usr/share/datasets/fashion-mnist')

_UBYTE = 0x08
_FILES = {
    'train': ('train-images-idx3-ubyte.gz', 'train-labels-idx1-ubyte.gz'),
    'test': ('t10k-images-idx3-ubyte.gz', 't10k-labels-idx1-ubyte.gz'),
}


def read_idx(path: str, ndim: int | None = None, limit: int | None = None) -> np.ndarray:
    """Returns the unsigned-byte IDX array stored (gzip-compressed or not) at ``path``.

    ``ndim`` checks the number of dimensions given by the magic number; ``limit`` reads only the
    first ``limit`` entries along the first axis. Raises ``ValueError`` on a bad magic number and
    on truncated files (fewer bytes than the header announces).
    """
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
                shape[0] = min(shape[0], int(limit))
            count = int(np.prod(shape))
            data = f.read(count)
        except (EOFError, gzip.BadGzipFile) as exc:  # truncated or corrupt gzip stream
            raise ValueError(f'{path}: truncated or corrupt gzip stream ({exc})') from exc
    if len(data) < count:
        raise ValueError(f'{path}: truncated IDX data: {len(data)} of {count} bytes for shape {tuple(shape)}')
    return np.frombuffer(data, dtype=np.uint8).reshape(shape)


def load_fashion_mnist(split: str = 'test', limit: int | None = None, root: str = FASHION_MNIST_DIR):
    """Returns ``(images, labels)``: uint8 arrays of shapes ``(N, 28, 28)`` and ``(N,)``."""
    if split not in _FILES:
        raise ValueError(f'split must be one of {sorted(_FILES)}, got {split!r}')
    image_file, label_file = (os.path.join(root, name) for name in _FILES[split])
    images = read_idx(image_file, ndim=3, limit=limit)
    labels = read_idx(label_file, ndim=1, limit=limit)
    if images.shape[1:] != (28, 28):
        raise ValueError(f'{image_file}: expected 28x28 images, got {images.shape[1:]}')
    if len(images) != len(labels):
        raise ValueError(f'{split}: {len(images)} images but {len(labels)} labels')
    if labels.size and labels.max() > 9:
        raise ValueError(f'{label_file}: labels must lie in 0..9, got a {labels.max()}')
    return images, labels


def fashion_mnist_available(root: str = FASHION_MNIST_DIR) -> bool:
    """Tells whether the test split's files are present under ``root``."""
    return all(os.path.isfile(os.path.join(root, name)) for name in _FILES['test'])
