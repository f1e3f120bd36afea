"""Fashion-MNIST for tests and benchmarks: a thin re-export of :mod:`gaussder_hf.data.sources`.

Debian's ``dataset-fashion-mnist`` package installs the official gzip-compressed IDX files at
``/usr/share/datasets/fashion-mnist`` (override with ``$FASHION_MNIST_DIR``).
"""
from __future__ import annotations

import os

import pytest

from gaussder_hf.data.sources import FASHION_MNIST_DEBIAN_DIR, read_fashion_mnist, read_idx

__all__ = ['FASHION_DIR', 'FASHION_MNIST_DIR', 'read_idx', 'load_fashion_mnist', 'fashion_mnist_available',
           'needs_fashion']

FASHION_MNIST_DIR = os.environ.get('FASHION_MNIST_DIR', FASHION_MNIST_DEBIAN_DIR)
FASHION_DIR = FASHION_MNIST_DIR

# Tests of the real data skip where it is not installed, but never on CI, which installs it.
needs_fashion = pytest.mark.skipif(
    not os.path.isdir(FASHION_DIR) and not os.environ.get('CI'),
    reason="Debian's dataset-fashion-mnist is not installed (apt-get install -y dataset-fashion-mnist)")


def load_fashion_mnist(split: str = 'test', limit: int | None = None, root: str = FASHION_MNIST_DIR):
    """Returns ``(images, labels)``: uint8 images ``(N, 28, 28)`` and int64 labels ``(N,)``."""
    return read_fashion_mnist(root, split, limit)


def fashion_mnist_available(root: str = FASHION_MNIST_DIR) -> bool:
    """Tells whether the test split's files are present under ``root``."""
    return all(os.path.isfile(os.path.join(root, name))
               for name in ('t10k-images-idx3-ubyte.gz', 't10k-labels-idx1-ubyte.gz'))
