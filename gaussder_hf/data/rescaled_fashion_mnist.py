"""Rescaled Fashion-MNIST (paper §4.1.1): 72x72 grey images, the object centred on black.

Splits from the official files: ``train`` = the first 50,000 official training images,
``validation`` = the last 10,000, ``test`` and ``test_s*`` = the 10,000 official test images.
"""
from __future__ import annotations

from ..presets import DATASET_INFO
from .builder import RescaledImageBuilder, canvas_side
from .sources import read_fashion_mnist


class RescaledFashionMNIST(RescaledImageBuilder):
    """Fashion-MNIST at size factor 1 for training, and its test set at nine size factors 1/2 .. 2."""

    SOURCE = 'fashion_mnist'
    TRAIN_CANVAS = canvas_side('fashionmnist')
    TEST_CANVAS = canvas_side('fashionmnist', 'test_input_size')
    BACKGROUND = DATASET_INFO['fashionmnist']['background']
    DESCRIPTION = (
        'Rescaled Fashion-MNIST: 28x28 Fashion-MNIST images rescaled (bicubic, antialiased) by size factors '
        '2**(k/4), k = -4..4, and centred on a 72x72 black canvas; training and validation at size factor 1.')
    HOMEPAGE = 'https://github.com/zalandoresearch/fashion-mnist'
    READER = staticmethod(read_fashion_mnist)
    TRAIN_SHARE = (5, 6)  # 50,000 of the 60,000 official training images
    LICENSE = 'MIT (Fashion-MNIST, Zalando SE)'
