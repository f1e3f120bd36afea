"""Rescaled CIFAR-10 (paper §4.1.2): 64x64 RGB, the rescaled image mirror-extended to the canvas.

At size factor 2 the 32x32 original exactly fills the 64x64 canvas; smaller size factors are
mirror-extended. Splits: ``train`` = official training batches 1-4 (40,000 images),
``validation`` = batch 5 (10,000), ``test`` and ``test_s*`` = the official test batch.
"""
from __future__ import annotations

from ..presets import DATASET_INFO
from .builder import RescaledImageBuilder, canvas_side
from .sources import read_cifar10


class RescaledCIFAR10(RescaledImageBuilder):
    """CIFAR-10 at size factor 1 for training, and its test set at nine size factors 1/2 .. 2."""

    SOURCE = 'cifar10'
    TRAIN_CANVAS = canvas_side('cifar10')
    TEST_CANVAS = canvas_side('cifar10', 'test_input_size')
    BACKGROUND = DATASET_INFO['cifar10']['background']
    DESCRIPTION = (
        'Rescaled CIFAR-10: 32x32 CIFAR-10 images rescaled (bicubic, antialiased) by size factors 2**(k/4), '
        'k = -4..4, and mirror-extended to 64x64; training and validation at size factor 1.')
    HOMEPAGE = 'https://www.cs.toronto.edu/~kriz/cifar.html'
    READER = staticmethod(read_cifar10)
    TRAIN_SHARE = (4, 5)  # batches 1-4 of 5: 40,000 of 50,000
    LICENSE = 'unknown (CIFAR-10, Krizhevsky 2009)'
