"""The shared Hugging Face ``datasets`` builder of the rescaled benchmarks (paper §4.1, docs/design.md §4).

Training and validation data at size factor 1; the test set once per size factor
``s = 2**(k/4)``, ``k = -4..4``, in splits named ``test_s0p500`` ... ``test_s2p000``, plus ``test``
(s = 1); with ``rescaled_validation=True`` the validation set likewise (``validation_s0p500`` ...),
for choosing settings on scale generalisation without the test images. Each dataset module
defines one subclass that fills in the class attributes.
"""
from __future__ import annotations

import hashlib
import inspect
import os
from dataclasses import dataclass
from pathlib import Path

import datasets
import numpy as np

from ..presets import DATASET_INFO
from ..rescaling import SIZE_FACTORS, rescale_batch, size_factor_name
from .sources import CLASS_NAMES, SOURCES, check_files, verify_files, verify_md5

__all__ = ['RescaledConfig', 'RescaledImageBuilder', 'canvas_side', 'check_rescaled_validation', 'split_names']

_CITATION = """\
@article{perzanowski2026gaussderresnets,
  title   = {Scale-invariant Gaussian derivative residual networks},
  author  = {Perzanowski, Andrzej and Lindeberg, Tony},
  journal = {arXiv preprint arXiv:2603.02843},
  year    = {2026}
}
"""


def canvas_side(dataset: str, key: str = 'input_size') -> int:
    """Returns the side of the square canvas of ``DATASET_INFO[dataset][key]``, a ``(C, H, W)`` input size.

    The presets state the input sizes the models train (``input_size``) and are tested on
    (``test_input_size``); the builders draw their canvases from them.
    """
    _, height, width = DATASET_INFO[dataset][key]
    if height != width:
        raise ValueError(f'{dataset} {key} must be square, got {height}x{width}')
    return height


def split_names() -> list[str]:
    """Returns every split of a rescaled dataset: train, validation, test and one per size factor."""
    return ['train', 'validation', 'test'] + [size_factor_name(s) for s in SIZE_FACTORS]


def check_rescaled_validation(rescaled_validation, test_only: bool) -> None:
    """Raises ValueError for a ``rescaled_validation`` that is not a bool or needs what ``test_only`` leaves out."""
    if not isinstance(rescaled_validation, bool):
        raise ValueError(f'rescaled_validation must be True or False, got {rescaled_validation!r}')
    if rescaled_validation and test_only:
        raise ValueError('rescaled_validation=True needs the validation images, but test_only=True builds '
                         'the test splits alone')


@dataclass
class RescaledConfig(datasets.BuilderConfig):
    """Configuration of a rescaled dataset.

    Args:
        max_examples: use only the first ``max_examples`` originals of every split (quick
            builds and tests); ``None`` uses all.
        kept_ids: ids of the original images to keep (e.g. a hand-cleaned list), applied
            before the split; ``None`` keeps all. Ids are dataset specific (see each builder).
        test_only: build only the test splits (``test`` and ``test_s*``) from the official test
            files alone, e.g. from the package's embedded Fashion-MNIST sample
            (:mod:`gaussder_hf.data.sample`), which has no training images.
        rescaled_validation: also build ``validation_s0p500`` ... ``validation_s2p000``: the
            validation originals at every size factor on the test canvas, so that settings can be
            chosen by scale generalisation without looking at the test images.
    """

    max_examples: int | None = None
    kept_ids: tuple[int, ...] | None = None
    test_only: bool = False
    rescaled_validation: bool = False

    def __post_init__(self):
        super().__post_init__()
        self.validate()

    def validate(self) -> None:
        """Raises ValueError naming a bad option (datasets sets options after construction, too)."""
        if self.max_examples is not None and (isinstance(self.max_examples, bool) or not isinstance(
                self.max_examples, int) or self.max_examples < 1):
            raise ValueError(f'max_examples must be a positive integer or None, got {self.max_examples!r}')
        if self.kept_ids is not None:
            self.kept_ids = tuple(int(i) for i in self.kept_ids)
        if not isinstance(self.test_only, bool):
            raise ValueError(f'test_only must be True or False, got {self.test_only!r}')
        check_rescaled_validation(self.rescaled_validation, self.test_only)


class RescaledImageBuilder(datasets.GeneratorBasedBuilder):
    """Builds a rescaled benchmark from the original files (``data_dir``) or their official URLs."""

    SOURCE: str = ''                   # key of sources.SOURCES
    TRAIN_CANVAS: int = 0              # side of the training / validation images: canvas_side(dataset)
    TEST_CANVAS: int = 0               # side of the test images: canvas_side(dataset, 'test_input_size')
    BACKGROUND: str = 'black'          # 'black' or 'mirror' (rescaling.rescale_batch)
    DESCRIPTION: str = ''
    HOMEPAGE: str = ''
    LICENSE: str = ''

    BUILDER_CONFIG_CLASS = RescaledConfig
    BUILDER_CONFIGS = [RescaledConfig(name='default', version=datasets.Version('1.0.0'))]
    DEFAULT_CONFIG_NAME = 'default'

    def __init__(self, *args, **kwargs):
        # Before datasets looks for a cached build: find and md5-check the original files, and key
        # the cache by their content (datasets keys it by the code hash and the options, data_dir
        # being a path), so that a changed file can never return the build of the old one.
        kwargs = dict(inspect.signature(datasets.DatasetBuilder.__init__).bind_partial(None, *args, **kwargs).arguments)
        kwargs.pop('self')
        kwargs.update(kwargs.pop('config_kwargs', {}))
        cache_root = os.path.expanduser(str(kwargs.get('cache_dir') or datasets.config.HF_DATASETS_CACHE))
        self._extract_dir = Path(cache_root) / 'gaussder_hf' / 'extracted'
        self._source_dir = None
        if kwargs.get('data_dir'):
            self._source_dir, md5s = self._verified_sources(
                Path(kwargs['data_dir']).expanduser(), bool(kwargs.get('test_only')))
            content = hashlib.sha256(repr(sorted(md5s.items())).encode()).hexdigest()[:16]
            kwargs['hash'] = f'{kwargs["hash"]}-{content}' if kwargs.get('hash') else content
        super().__init__(**kwargs)
        self.config.validate()

    def _verified_sources(self, data_dir: Path, test_only: bool = False) -> tuple[Path, dict[str, str]]:
        """Returns the folder the readers should read and the content md5s of the original files in ``data_dir``.

        An archive is extracted into ``<cache_dir>/gaussder_hf/extracted``, and the extracted
        folder is returned. Every file must match its official md5 (sources.verify_files);
        the md5s are remembered in ``<cache_dir>/gaussder_hf/verified.json`` by each file's stat.
        ``test_only`` needs the test files alone; the package's Fashion-MNIST sample is checked
        against its own md5s.
        """
        from .sample import FASHION_MNIST_SAMPLE_DIR, FASHION_MNIST_SAMPLE_MD5

        split = 'test' if test_only else None  # lists what is expected where
        files = check_files(self.SOURCE, data_dir, split=split, cache_dir=self._extract_dir)
        sample = self.SOURCE == 'fashion_mnist' and data_dir.resolve() == FASHION_MNIST_SAMPLE_DIR
        md5s = verify_files(self.SOURCE, files, record=self._extract_dir.parent / 'verified.json',
                            expected_md5=FASHION_MNIST_SAMPLE_MD5 if sample else None)
        folders = {path.parent for name, path in files.items() if name in md5s}
        return (folders.pop() if len(folders) == 1 else data_dir), md5s

    def _info(self) -> datasets.DatasetInfo:
        return datasets.DatasetInfo(
            description=self.DESCRIPTION,
            features=datasets.Features({
                'image': datasets.Image(),
                'label': datasets.ClassLabel(names=list(CLASS_NAMES[self.SOURCE])),
                'size_factor': datasets.Value('float32'),
            }),
            homepage=self.HOMEPAGE,
            license=self.LICENSE,
            citation=_CITATION,
        )

    # -- subclasses ---------------------------------------------------------------------------

    # Reader of the official files, (data_dir, 'train' | 'test', limit) -> (images, labels), and
    # the share (numerator, denominator) of the official training images that form `train`;
    # the rest, at the end, is `validation`.
    READER = None
    TRAIN_SHARE: tuple[int, int] = (1, 1)

    def read_split(self, data_dir: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
        """Returns the original uint8 images and int labels of ``split`` ('train' | 'validation' | 'test')."""
        reader = type(self).READER
        if split == 'test':
            return reader(data_dir, 'test', limit=self.config.max_examples)
        images, labels = reader(data_dir, 'train')
        numerator, denominator = self.TRAIN_SHARE
        cut = len(images) * numerator // denominator
        part = slice(0, cut) if split == 'train' else slice(cut, None)
        return images[part], labels[part]

    # -- datasets' builder interface ---------------------------------------------------------

    def _split_generators(self, dl_manager: datasets.DownloadManager) -> list[datasets.SplitGenerator]:
        data_dir = self._local_files(dl_manager)
        # Read (and so validate) every original split now: a truncated or corrupt file then fails
        # with the reader's own message instead of datasets' generic generation error.
        splits = ('test',) if self.config.test_only else ('train', 'validation', 'test')
        self._originals = {split: self._limited(*self.read_split(data_dir, split)) for split in splits}
        generators = [
            datasets.SplitGenerator(name=split, gen_kwargs=dict(
                data_dir=data_dir, split=split, size_factor=1.0, canvas=self.TRAIN_CANVAS))
            for split in splits if split != 'test'
        ]
        generators.append(datasets.SplitGenerator(name='test', gen_kwargs=dict(
            data_dir=data_dir, split='test', size_factor=1.0, canvas=self.TEST_CANVAS)))
        rescaled = ('test', 'validation') if self.config.rescaled_validation else ('test',)
        generators += [
            datasets.SplitGenerator(name=size_factor_name(s, split), gen_kwargs=dict(
                data_dir=data_dir, split=split, size_factor=s, canvas=self.TEST_CANVAS))
            for split in rescaled for s in SIZE_FACTORS
        ]
        return generators

    def _local_files(self, dl_manager: datasets.DownloadManager) -> Path:
        if self.config.data_dir:
            if self._source_dir is None:  # data_dir set on the config after construction
                self._source_dir, _ = self._verified_sources(
                    Path(self.config.data_dir).expanduser(), self.config.test_only)
            return self._source_dir
        # Download the official files, check their md5 and give them their official names.
        files = SOURCES[self.SOURCE]
        downloaded = dl_manager.download({f.name: f.url for f in files})
        data_dir = Path(dl_manager.download_config.cache_dir or datasets.config.DOWNLOADED_DATASETS_PATH)
        data_dir = data_dir / 'gaussder_hf' / self.SOURCE
        data_dir.mkdir(parents=True, exist_ok=True)
        for f in files:
            verify_md5(downloaded[f.name], f.md5)
            target = data_dir / f.name
            if target.is_symlink() or target.exists():  # our own link from an earlier download
                target.unlink()
            os.symlink(downloaded[f.name], target)
        files = check_files(self.SOURCE, data_dir, cache_dir=self._extract_dir)
        folders = {path.parent for name, path in files.items() if path.parent != data_dir}
        return folders.pop() if len(folders) == 1 else data_dir

    def _limited(self, images: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if self.config.max_examples is not None:
            images, labels = images[: self.config.max_examples], labels[: self.config.max_examples]
        return images, labels

    def _generate_examples(self, data_dir: Path, split: str, size_factor: float, canvas: int):
        originals = getattr(self, '_originals', {})
        if split in originals:
            images, labels = originals[split]
        else:
            images, labels = self._limited(*self.read_split(Path(data_dir), split))
        # Rescale in chunks: vectorised, and bounded in memory for the large training splits.
        chunk = 4096
        for start in range(0, len(images), chunk):
            rescaled = rescale_batch(images[start:start + chunk], size_factor, canvas, self.BACKGROUND)
            for offset, (image, label) in enumerate(zip(rescaled, labels[start:start + chunk])):
                index = start + offset
                yield index, {'image': image, 'label': int(label), 'size_factor': size_factor}
