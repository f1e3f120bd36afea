"""Where the recipes find their data by default, and the real Fashion-MNIST sample that ships with the package.

``fashion_mnist_sample/`` holds the first :data:`FASHION_MNIST_SAMPLE_SIZE` images and labels of
the official Fashion-MNIST test set in the official gzip-compressed IDX format (MIT licence,
Zalando SE: ``fashion_mnist_sample/LICENSE``), so that a fresh install can run the committed
Fashion-MNIST checkpoint on real images without any download. It has no training images: the
rescaled builder reads it with ``test_only=True`` (only the ``test`` and ``test_s*`` splits).

:func:`default_data_source` is the order the recipes look in when no folder is given: the
folder named by ``$GAUSSDER_HF_FASHION_MNIST_DIR``, else Debian's ``dataset-fashion-mnist``
folder, when it holds the four official files; else the embedded sample.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from .sources import FASHION_MNIST_DEBIAN_DIR, SOURCES, check_files

__all__ = ['DATA_DIR_ENV', 'DataSource', 'FASHION_MNIST_SAMPLE_DIR', 'FASHION_MNIST_SAMPLE_MD5',
           'FASHION_MNIST_SAMPLE_SIZE', 'FULL_DATA_HINT', 'default_data_source']

#: The embedded sample: the first 500 official Fashion-MNIST test images and labels.
FASHION_MNIST_SAMPLE_DIR = Path(__file__).resolve().parent / 'fashion_mnist_sample'
FASHION_MNIST_SAMPLE_SIZE = 500
#: md5 of what the sample's files decompress to: the builder checks the sample like official files.
FASHION_MNIST_SAMPLE_MD5 = {
    't10k-images-idx3-ubyte.gz': '4255ad7a7e77f5f027f05fd7644a6d38',
    't10k-labels-idx1-ubyte.gz': '46aa1f456ad6a5c48b50f4f28b2cc651',
}

#: Environment variable naming the folder of the official Fashion-MNIST files (default: Debian's).
DATA_DIR_ENV = 'GAUSSDER_HF_FASHION_MNIST_DIR'

FULL_DATA_HINT = (
    "For the full test set (10,000 images per size factor): `apt-get install dataset-fashion-mnist` "
    f"(files in {FASHION_MNIST_DEBIAN_DIR}), or `--data_dir FOLDER` with the four official .gz files of "
    f"{SOURCES['fashion_mnist'][0].url.rsplit('/', 1)[0]}/, or `--download` to fetch them.")


@dataclass(frozen=True)
class DataSource:
    """Where a dataset is read from: ``data_dir`` (``None``: download), ``test_only``, and a line saying so."""

    data_dir: str | None
    test_only: bool
    description: str

    @property
    def is_sample(self) -> bool:
        return self.test_only and self.data_dir == str(FASHION_MNIST_SAMPLE_DIR)


def default_data_source(dataset: str) -> DataSource:
    """Returns where ``dataset`` is read from when the user names no folder.

    ``rescaled_fashion_mnist``: ``$GAUSSDER_HF_FASHION_MNIST_DIR`` or Debian's folder if the
    four official files are there, else the embedded sample (test splits only). Any other
    dataset: downloaded from its official URL (``data_dir=None``).
    """
    if dataset != 'rescaled_fashion_mnist':
        return DataSource(None, False, f'data: {dataset} from its official files (downloaded once, md5-checked)')
    folder = os.environ.get(DATA_DIR_ENV) or FASHION_MNIST_DEBIAN_DIR
    try:
        check_files('fashion_mnist', folder)
    except FileNotFoundError:
        return DataSource(
            str(FASHION_MNIST_SAMPLE_DIR), True,
            f'data: the {FASHION_MNIST_SAMPLE_SIZE} real Fashion-MNIST test images that ship with gaussder_hf '
            f'(no Fashion-MNIST files in {folder})')
    return DataSource(folder, False, f'data: Fashion-MNIST from {folder}')
