"""Any image-classification dataset as a rescaled benchmark (the protocol of paper §4.1).

``load_dataset('rescaled_images', base=...)`` (after ``import gaussder_hf``) reads ``base`` with
``datasets.load_dataset`` - a local folder of images in class subfolders (datasets' ``imagefolder``,
e.g. ``root/train/<class>/*.png`` and ``root/test/<class>/*.png``), a folder of parquet files, or a
Hub id - and builds the splits of the dedicated rescaled builders: ``train`` and ``validation`` at
size factor 1 on a canvas, ``test`` (size factor 1) and one ``test_sXpYYY`` per size factor
(default ``2**(k/4)``, ``k = -4..4``), with the features ``image``, ``label`` (a ClassLabel with
the real class names) and ``size_factor`` (float32). ``rescaled_validation=True`` adds one
``validation_sXpYYY`` per size factor: the validation images rescaled like the test images.

Every image goes through the pipeline of the dedicated builders: decoded by the one rule of
:mod:`gaussder_hf.input_pipeline` (:func:`~gaussder_hf.input_pipeline.open_image` with its pixel
limit, :func:`~gaussder_hf.input_pipeline.decode_image`), then rescaled and centred on the canvas by
:func:`gaussder_hf.rescaling.rescale_batch` on uint8 arrays. So Fashion-MNIST written out as PNGs
gives, image for image, the test splits of ``rescaled_fashion_mnist``.

Behaviour:

- Channels: the dataset is grey if every image it uses is grey
  (:func:`~gaussder_hf.input_pipeline.image_channels`: PIL modes ``1``, ``L``, ``LA``), else RGB;
  in an RGB dataset grey images are repeated to three channels. Alpha is dropped; palette, CMYK
  and RGBA images become RGB as PIL converts them. 16-bit and float images (PIL modes ``I``,
  ``I;16``, ``F``) are refused: the rescaling works on 8-bit images.
- Image sizes may differ: each image is rescaled from its own size (``round(side * s)`` per axis)
  and centred on the canvas. An image that is larger than the canvas at some size factor is
  centre-cropped to the canvas, the rule :func:`gaussder_hf.rescaling.place_on_canvas` applies
  in every rescaled dataset. The default canvas is twice the largest side of any test image,
  so no test image is cropped at the default size factors.
- Validation: the base's ``validation`` split if it has one, else carved from the training split
  before ``max_examples`` applies: ``max(1, round(validation_fraction * n))`` images (default
  10 %) chosen by ``numpy.random.default_rng(seed).permutation(n)`` (default seed 0) - its first images form
  ``validation``, the rest ``train``; both keep the base's order.
- Labels: the base's one ClassLabel column, its names used as the class names unless
  ``class_names`` gives others (in the order of the label ids; for ``imagefolder`` the sorted
  folder names). A name that cannot be a folder name (Fashion-MNIST's ``'T-shirt/top'``) is
  given that way: name the folders ``00``, ``01``, ... and pass ``class_names``. A missing or
  out-of-range label is an error naming the split and the example. Images lying directly in the
  split folders of an image folder (``imagefolder`` would label them ``train`` / ``test``) are refused.
- A local image folder with an empty class folder (a leaf folder without images) is refused:
  ``imagefolder`` would silently drop that class and renumber the others.
- Order: every split keeps the base's order (``imagefolder`` orders by path: class folder, then
  file name). ``data_dir=`` is taken as ``base`` when ``base`` is not given, so
  ``gaussder-hf datasets build rescaled_images --data-dir FOLDER`` and the recipes' ``data_dir``
  work unchanged.
- The cache is keyed by the options and by the base's fingerprint, which ``datasets`` derives
  from its files (for local files their paths and modification times).
"""
from __future__ import annotations

import hashlib
import inspect
import numbers
import os
from dataclasses import dataclass
from pathlib import Path

import datasets
import numpy as np

from ..input_pipeline import decode_image, image_channels, open_image, to_model_channels
from ..rescaling import SIZE_FACTORS, check_background, check_canvas, rescale_batch, size_factor_name
from .builder import _CITATION, check_rescaled_validation

__all__ = ['RescaledImages', 'RescaledImagesConfig']

# PIL modes whose pixels are not 8-bit: the rescaling pipeline works on uint8 images only.
_NOT_8_BIT = ('I', 'F', 'I;16', 'I;16L', 'I;16B', 'I;16N')
# Images per rescale call while generating (bounded memory for large datasets).
_CHUNK = 512


def _image_suffixes() -> frozenset[str]:
    from datasets.packaged_modules.imagefolder.imagefolder import ImageFolder
    return frozenset(ext.lower() for ext in ImageFolder.EXTENSIONS)


def check_image_folder(root: Path) -> None:
    """Raises ValueError if the image folder ``root`` has a leaf folder without images (an empty class).

    A folder without any image file (e.g. a parquet export) is not an image folder and passes.
    """
    suffixes = _image_suffixes()
    leaves_without_images, has_images = [], False
    for folder, subfolders, files in os.walk(root):
        subfolders[:] = [d for d in subfolders if not d.startswith('.')]
        images = [f for f in files if Path(f).suffix.lower() in suffixes]
        has_images = has_images or bool(images)
        if not subfolders and not images and Path(folder) != root:
            leaves_without_images.append(Path(folder).relative_to(root).as_posix())
    if has_images and leaves_without_images:
        raise ValueError(
            f'image folder {str(root)!r} has class folders without images: {", ".join(sorted(leaves_without_images))}; '
            'imagefolder would drop these classes and renumber the others: add images or remove the folders')


@dataclass
class RescaledImagesConfig(datasets.BuilderConfig):
    """Options of ``load_dataset('rescaled_images', ...)``.

    Args:
        base: what ``datasets.load_dataset`` reads (a local image folder, a parquet folder, a Hub
            id); ``data_dir`` is used when ``base`` is not given.
        base_args: further keyword arguments of that ``datasets.load_dataset`` call (``name``,
            ``data_files``, ``revision``...).
        image_column: the image column; default the base's one Image column.
        label_column: the label column; default the base's one ClassLabel column.
        class_names: the class names in the order of the label ids; default the ClassLabel's names
            (needed when the label column holds plain integers).
        train_split, validation_split, test_split: the base's splits to use. ``validation_split``
            ``None`` uses the base's ``'validation'`` if present, else carves one from training
            (``validation_fraction``, ``seed``; see the module docstring).
        validation_fraction: share of the training images carved out as validation.
        seed: seed of the carving permutation.
        canvas_size: side (or ``(height, width)``) of the train and validation images; default the
            test canvas.
        test_canvas_size: side of the test images; default ``canvas_size`` if given, else twice the
            largest side of any test image.
        background: ``'black'`` (zeros around the image) or ``'mirror'`` (mirror extension).
        size_factors: the size factors of the ``test_s*`` splits.
        max_examples: use only the first ``max_examples`` images of every split.
        test_only: build only ``test`` and ``test_s*`` (a base with a test split alone).
        rescaled_validation: also build ``validation_s*``, the validation images at every size
            factor on the test canvas (choosing settings without the test images).
    """

    base: str | None = None
    base_args: dict | None = None
    image_column: str | None = None
    label_column: str | None = None
    class_names: tuple[str, ...] | None = None
    train_split: str = 'train'
    validation_split: str | None = None
    test_split: str = 'test'
    validation_fraction: float = 0.1
    seed: int = 0
    canvas_size: int | tuple[int, int] | None = None
    test_canvas_size: int | tuple[int, int] | None = None
    background: str = 'black'
    size_factors: tuple[float, ...] = SIZE_FACTORS
    max_examples: int | None = None
    test_only: bool = False
    rescaled_validation: bool = False

    def __post_init__(self):
        super().__post_init__()
        self.validate()

    def validate(self) -> None:
        """Raises ValueError naming a bad option (the ones checkable without reading the base)."""
        if self.base is None and self.data_dir:
            self.base = str(self.data_dir)
        if self.base is not None and not isinstance(self.base, (str, os.PathLike)):
            raise ValueError(f'base must be a path or a dataset id (str), got {type(self.base).__name__}')
        if self.base is not None:
            self.base = os.fspath(self.base)
        if self.base_args is not None and not isinstance(self.base_args, dict):
            raise ValueError(f'base_args must be a dict of datasets.load_dataset arguments, got {self.base_args!r}')
        for option in ('image_column', 'label_column', 'validation_split'):
            value = getattr(self, option)
            if value is not None and (not isinstance(value, str) or not value):
                raise ValueError(f'{option} must be a non-empty string or None, got {value!r}')
        for option in ('train_split', 'test_split'):
            value = getattr(self, option)
            if not isinstance(value, str) or not value:
                raise ValueError(f'{option} must be a non-empty string, got {value!r}')
        if self.class_names is not None:
            names = tuple(self.class_names) if isinstance(self.class_names, (list, tuple)) else None
            if not names or not all(isinstance(n, str) and n for n in names) or len(set(names)) != len(names):
                raise ValueError(f'class_names must be a list of distinct non-empty strings, got {self.class_names!r}')
            self.class_names = names
        fraction = self.validation_fraction
        if isinstance(fraction, bool) or not isinstance(fraction, numbers.Real) or not 0 < fraction < 1:
            raise ValueError(f'validation_fraction must be a number strictly between 0 and 1, got {fraction!r}')
        if isinstance(self.seed, bool) or not isinstance(self.seed, numbers.Integral) or self.seed < 0:
            raise ValueError(f'seed must be a non-negative integer, got {self.seed!r}')
        for option in ('canvas_size', 'test_canvas_size'):
            value = getattr(self, option)
            if value is not None:
                try:
                    canvas = check_canvas(tuple(value) if isinstance(value, list) else value)
                except ValueError:
                    raise ValueError(
                        f'{option} must be a positive int or a pair (height, width), got {value!r}') from None
                setattr(self, option, canvas)
        check_background(self.background)
        factors = self.size_factors
        if isinstance(factors, (str, bytes)) or not isinstance(factors, (list, tuple)) or not factors:
            raise ValueError(f'size_factors must be a non-empty list of positive numbers, got {factors!r}')
        names = [size_factor_name(s) for s in factors]  # ValueError naming a bad factor
        if len(set(names)) != len(names):
            raise ValueError(f'size_factors must give distinct split names (3 decimals), got {list(factors)!r} '
                             f'-> {names}')
        self.size_factors = tuple(float(s) for s in factors)
        if self.max_examples is not None and (isinstance(self.max_examples, bool) or not isinstance(
                self.max_examples, int) or self.max_examples < 1):
            raise ValueError(f'max_examples must be a positive integer or None, got {self.max_examples!r}')
        if not isinstance(self.test_only, bool):
            raise ValueError(f'test_only must be True or False, got {self.test_only!r}')
        check_rescaled_validation(self.rescaled_validation, self.test_only)


def _one_of(features: datasets.Features, kind: type, option: str, hint: str) -> str:
    found = [name for name, feature in features.items() if isinstance(feature, kind)]
    if len(found) == 1:
        return found[0]
    if not found:
        raise ValueError(f'the base has no {kind.__name__} column (columns: {", ".join(features)}); {hint}')
    raise ValueError(f'the base has several {kind.__name__} columns ({", ".join(found)}): choose one with {option}=')


class RescaledImages(datasets.GeneratorBasedBuilder):
    """Builds the rescaled benchmark splits from any image-classification dataset (``base``)."""

    BUILDER_CONFIG_CLASS = RescaledImagesConfig
    BUILDER_CONFIGS = [RescaledImagesConfig(name='default', version=datasets.Version('1.0.0'))]
    DEFAULT_CONFIG_NAME = 'default'

    def __init__(self, *args, **kwargs):
        # Read the base before datasets looks for a cached build, and key the cache by its
        # fingerprint: the options alone name a path, not its content.
        kwargs = dict(inspect.signature(datasets.DatasetBuilder.__init__).bind_partial(None, *args, **kwargs).arguments)
        kwargs.pop('self')
        kwargs.update(kwargs.pop('config_kwargs', {}))
        base = kwargs.get('base') or kwargs.get('data_dir')
        if base is None:
            raise ValueError("rescaled_images needs base=: a folder of images in class subfolders, a parquet "
                             "folder or a Hub dataset id (anything datasets.load_dataset reads)")
        if isinstance(base, (str, os.PathLike)) and Path(base).expanduser().is_dir():
            check_image_folder(Path(base).expanduser())
        base_args = dict(kwargs.get('base_args') or {})
        base_args.setdefault('cache_dir', kwargs.get('cache_dir'))
        local = Path(os.fspath(base)).expanduser()
        loaded = datasets.load_dataset(str(local) if local.is_dir() else os.fspath(base), **base_args)
        if not isinstance(loaded, datasets.DatasetDict):
            raise ValueError(f'base {base!r} must load as a DatasetDict of splits, got {type(loaded).__name__}')
        self._base = loaded
        content = hashlib.sha256(repr(sorted((k, v._fingerprint) for k, v in loaded.items())).encode()).hexdigest()
        kwargs['hash'] = f'{kwargs["hash"]}-{content[:16]}' if kwargs.get('hash') else content[:16]
        super().__init__(**kwargs)  # calls _info, which resolves the columns against the base

    @property
    def BACKGROUND(self) -> str:  # noqa: N802  (the dedicated builders' class attribute, here an option)
        """The canvas background of this build (``background=``), as the dedicated builders name it."""
        return self.config.background

    # -- the base ---------------------------------------------------------------------------

    def _resolve(self) -> None:
        """Checks the splits and columns against the base; sets the columns and class names."""
        config, base = self.config, self._base
        available = ', '.join(base) or 'none'
        wanted = [config.test_split] + ([] if config.test_only else [config.train_split])
        if config.validation_split is not None and not config.test_only:
            wanted.append(config.validation_split)
        for split in wanted:
            if split not in base:
                raise ValueError(f'split {split!r} is not in base {config.base!r} (its splits: {available}); '
                                 'choose with train_split= / validation_split= / test_split= (an image folder '
                                 'gets its splits from train/ and test/ subfolders)')
        if not config.test_only and config.train_split == config.test_split:
            raise ValueError(f'train_split and test_split are both {config.test_split!r}: the test images must not '
                             'be trained on')
        self._validation = config.validation_split or ('validation' if 'validation' in base else None)
        if not config.test_only and self._validation in (config.train_split, config.test_split):
            raise ValueError(f'validation_split {self._validation!r} is also the train or test split; give a split '
                             'of its own, or none to carve one from training')
        features = base[config.test_split].features
        if config.image_column is None:
            self._image_column = _one_of(features, datasets.Image, 'image_column', 'name it with image_column=')
        else:
            self._image_column = self._column(features, config.image_column, 'image_column')
            if not isinstance(features[config.image_column], datasets.Image):
                raise ValueError(f'image_column {config.image_column!r} is not an Image column '
                                 f'but {features[config.image_column]!r}')
        hint = ('images outside class folders have no labels; name the label column with label_column= '
                '(and the classes with class_names=)')
        if config.label_column is None:
            self._label_column = _one_of(features, datasets.ClassLabel, 'label_column', hint)
        else:
            self._label_column = self._column(features, config.label_column, 'label_column')
        label = features[self._label_column]
        split_named = sorted(set(getattr(label, 'names', ())) & set(base))
        if split_named and Path(config.base).expanduser().is_dir():
            # imagefolder labels an image by its parent folder, so images lying directly in the
            # split folders get the split's name as their class.
            raise ValueError(f'class names {split_named} are split names of the image folder {config.base!r}: its '
                             'images lie directly in the split folders and have no class; put them in class subfolders '
                             '(split/class/image), or name the labels with label_column= and class_names=')
        if isinstance(label, datasets.ClassLabel):
            if config.class_names is not None and len(config.class_names) != label.num_classes:
                raise ValueError(f'class_names has {len(config.class_names)} names but label column '
                                 f'{self._label_column!r} has {label.num_classes} classes ({label.names})')
            self._class_names = list(config.class_names or label.names)
        elif isinstance(label, datasets.Value) and label.dtype.startswith(('int', 'uint')):
            if config.class_names is None:
                raise ValueError(f'label column {self._label_column!r} holds integers ({label.dtype}); give the '
                                 'class names in the order of the label ids with class_names=')
            self._class_names = list(config.class_names)
        else:
            raise ValueError(
                f'label column {self._label_column!r} must be a ClassLabel or integer column, got {label!r}')

    def _column(self, features: datasets.Features, name: str, option: str) -> str:
        if name not in features:
            raise ValueError(f'{option} {name!r} is not a column of split {self.config.test_split!r} '
                             f'(columns: {", ".join(features)})')
        return name

    def _originals(self) -> dict[str, datasets.Dataset]:
        """Returns the base's examples of every split to build (images left encoded), ``max_examples`` applied."""
        config, base = self.config, self._base
        splits = {'test': base[config.test_split]}
        if not config.test_only:
            train = base[config.train_split]
            if self._validation is not None:
                splits['train'], splits['validation'] = train, base[self._validation]
            else:
                n = len(train)
                cut = max(1, round(config.validation_fraction * n))
                if cut >= n:
                    raise ValueError(f'cannot carve a validation split of fraction {config.validation_fraction} '
                                     f'from {n} training images; give more images or validation_split=')
                order = np.random.default_rng(config.seed).permutation(n)
                splits['validation'] = train.select(np.sort(order[:cut]))
                splits['train'] = train.select(np.sort(order[cut:]))
        out = {}
        for name, ds in splits.items():
            for column in (self._image_column, self._label_column):
                if column not in ds.column_names:
                    raise ValueError(f'column {column!r} is missing from split {name!r} (columns: {ds.column_names})')
            ds = ds.select_columns([self._image_column, self._label_column])
            ds = ds.cast_column(self._image_column, datasets.Image(decode=False))
            if config.max_examples is not None:
                ds = ds.select(range(min(config.max_examples, len(ds))))
            if len(ds) == 0:
                raise ValueError(f'split {name!r} of base {config.base!r} has no images')
            out[name] = ds
        return out

    def _survey(self, originals: dict[str, datasets.Dataset]) -> tuple[int, int]:
        """Checks every image's header and label; returns the channels (1 or 3) and the largest test side."""
        num_classes = len(self._class_names)
        grey, largest_test = True, 0
        for split, ds in originals.items():
            # Batch by batch: a parquet base holds the encoded bytes, which need not fit in memory at once.
            rows = (row for batch in ds.iter(batch_size=_CHUNK)
                    for row in zip(batch[self._image_column], batch[self._label_column]))
            for index, (encoded, label) in enumerate(rows):
                where = f'{split!r} example {index}' + (f' ({encoded["path"]})' if encoded.get('path') else '')
                if label is None or not 0 <= int(label) < num_classes:
                    raise ValueError(f'{where} has label {label!r}; labels must be 0..{num_classes - 1} '
                                     f'({num_classes} classes)')
                with open_image(encoded) as image:
                    if image.mode in _NOT_8_BIT:
                        raise ValueError(f'{where} has PIL mode {image.mode!r}; only 8-bit images are rescaled '
                                         '(convert it to L or RGB)')
                    grey = grey and image_channels(image) == 1
                    if split == 'test':
                        largest_test = max(largest_test, *image.size)
        return (1 if grey else 3), largest_test

    # -- datasets' builder interface ---------------------------------------------------------

    def _info(self) -> datasets.DatasetInfo:
        if not hasattr(self, '_class_names'):
            self.config.validate()
            self._resolve()
        return datasets.DatasetInfo(
            description=(f'{self.config.base} rescaled by size factors '
                         f'{", ".join(f"{s:.3f}" for s in self.config.size_factors)} (bicubic, antialiased) and '
                         f'centred on a {self.config.background} canvas; training and validation at size factor 1'),
            features=datasets.Features({
                'image': datasets.Image(),
                'label': datasets.ClassLabel(names=self._class_names),
                'size_factor': datasets.Value('float32'),
            }),
            citation=_CITATION,
        )

    def _split_generators(self, dl_manager: datasets.DownloadManager) -> list[datasets.SplitGenerator]:
        originals = self._originals()
        channels, largest_test = self._survey(originals)
        config = self.config
        test_canvas = config.test_canvas_size or config.canvas_size or 2 * largest_test
        canvas = config.canvas_size or test_canvas
        common = dict(channels=channels)
        generators = [datasets.SplitGenerator(name=name, gen_kwargs=dict(
            examples=originals[name], size_factor=1.0, canvas=canvas, **common)) for name in ('train', 'validation')
            if name in originals]
        generators.append(datasets.SplitGenerator(name='test', gen_kwargs=dict(
            examples=originals['test'], size_factor=1.0, canvas=test_canvas, **common)))
        rescaled = ('test', 'validation') if config.rescaled_validation else ('test',)
        generators += [datasets.SplitGenerator(name=size_factor_name(s, split), gen_kwargs=dict(
            examples=originals[split], size_factor=s, canvas=test_canvas, **common))
            for split in rescaled for s in config.size_factors]
        return generators

    def _decoded(self, encoded: dict, channels: int) -> np.ndarray:
        image = to_model_channels(decode_image(encoded), channels)  # (C, H, W) uint8
        return image[0].numpy() if channels == 1 else image.permute(1, 2, 0).numpy()

    def _generate_examples(self, examples: datasets.Dataset, size_factor: float, canvas, channels: int):
        for start in range(0, len(examples), _CHUNK):
            part = examples[start:start + _CHUNK]
            images = [self._decoded(encoded, channels) for encoded in part[self._image_column]]
            rescaled: list[np.ndarray | None] = [None] * len(images)
            # One rescale call per image size: each image is rescaled from its own size.
            for shape in dict.fromkeys(image.shape for image in images):
                indices = [i for i, image in enumerate(images) if image.shape == shape]
                batch = rescale_batch(np.stack([images[i] for i in indices]), size_factor, canvas,
                                      self.config.background)
                for i, image in zip(indices, batch):
                    rescaled[i] = image
            for offset, (image, label) in enumerate(zip(rescaled, part[self._label_column])):
                yield start + offset, {'image': image, 'label': int(label), 'size_factor': size_factor}

