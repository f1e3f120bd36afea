"""Rescaled STL-10 (paper §4.1.3): 96x96 RGB training images, test copies mirror-extended to 192x192.

The paper removed about 10% of the labelled images by hand, which cannot be reproduced from the
original files. This builder uses a deterministic split of the same sizes instead:

* every labelled image has an id: official training image ``i`` is id ``i`` (0..4999), official
  test image ``j`` is id ``5000 + j`` (5000..12999);
* ``kept_ids`` (a config option, e.g. a hand-cleaned list) keeps only those ids; default all;
* ``test`` / ``test_s*`` = the first 3,600 kept ids from the official test set, ``validation`` =
  the next 1,000, ``train`` = the kept official training images followed by the remaining kept
  official test images, up to 7,000. With all ids kept, the last 1,400 official test images
  are not used (as the paper's 7,000 / 1,000 / 3,600 leave ~1,400 of the 13,000 out);
* with fewer than 4,600 kept official test images, test and validation share them 36:10.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..presets import DATASET_INFO
from .builder import RescaledImageBuilder, canvas_side
from .sources import read_stl10

OFFICIAL_TRAIN = 5_000
SPLIT_SIZES = dict(train=7_000, validation=1_000, test=3_600)


def stl10_split_ids(kept_ids=None, official_train: int = OFFICIAL_TRAIN, official_test: int = 8_000) -> dict:
    """Returns the ids of every split (see the module docstring), as sorted int arrays."""
    all_ids = np.arange(official_train + official_test)
    if kept_ids is not None:
        kept = np.unique(np.asarray(kept_ids, dtype=np.int64))
        bad = kept[(kept < 0) | (kept >= len(all_ids))]
        if bad.size:
            raise ValueError(f'kept_ids must lie in 0..{len(all_ids) - 1}, got {bad[:5].tolist()}')
        all_ids = kept
    train_origin = all_ids[all_ids < official_train]
    test_origin = all_ids[all_ids >= official_train]
    n_test, n_validation = SPLIT_SIZES['test'], SPLIT_SIZES['validation']
    if len(test_origin) < n_test + n_validation:  # few kept ids (or small files): keep the 36:10 ratio
        n_test = round(len(test_origin) * n_test / (n_test + n_validation))
        n_validation = len(test_origin) - n_test
    test = test_origin[:n_test]
    validation = test_origin[n_test:n_test + n_validation]
    rest = test_origin[n_test + n_validation:]
    train = np.concatenate([train_origin, rest])[:SPLIT_SIZES['train']]
    return dict(train=train, validation=validation, test=test)


class RescaledSTL10(RescaledImageBuilder):
    """STL-10 (labelled) at size factor 1 for training, and its test set at nine size factors 1/2 .. 2."""

    SOURCE = 'stl10'
    TRAIN_CANVAS = canvas_side('stl10')
    TEST_CANVAS = canvas_side('stl10', 'test_input_size')
    BACKGROUND = DATASET_INFO['stl10']['background']
    DESCRIPTION = (
        'Rescaled STL-10: 96x96 STL-10 images for training at size factor 1; test images rescaled (bicubic, '
        'antialiased) by size factors 2**(k/4), k = -4..4, and mirror-extended to 192x192. Deterministic '
        '7,000 / 1,000 / 3,600 split of the labelled images (see the builder docstring).')
    HOMEPAGE = 'https://cs.stanford.edu/~acoates/stl10/'
    LICENSE = 'unknown (STL-10, Coates et al. 2011)'

    def read_split(self, data_dir: Path, split: str):
        train_images, train_labels = read_stl10(data_dir, 'train')
        test_images, test_labels = read_stl10(data_dir, 'test')
        ids = stl10_split_ids(self.config.kept_ids, len(train_images), len(test_images))[split]
        images = np.concatenate([train_images, test_images])
        labels = np.concatenate([train_labels, test_labels])
        return images[ids], labels[ids]
