"""Train a GaussDerResNet (or any timm model) on a rescaled dataset with accelerate.

    accelerate launch recipes/train.py --config recipes/configs/rescaled_fashion_mnist.yaml
    accelerate launch recipes/train.py --config recipes/configs/smoke.yaml max_steps=20 output_dir=runs/smoke
    accelerate launch recipes/train.py --config ... --resume          # continue from the newest checkpoint
    accelerate launch recipes/train.py --config ... dynamo_backend=inductor   # torch.compile the model
    accelerate launch recipes/train.py --config ... --overwrite       # start over in the folder of an earlier run

Settings come from a YAML file plus ``key=value`` overrides into a typed :class:`TrainConfig`
that rejects unknown keys and values that cannot be right; the resolved config is saved next to
the checkpoints. ``scale_augmentation=[low,high]`` trains on every original rescaled by a size factor
drawn log-uniformly from [low, high], by the rescaling the datasets' test splits are made with
(:class:`ScaleAugmentation`). One process, one GPU or many (DDP through ``accelerate launch``).

The run folder (``gaussder_hf.run_folder``) is locked while a run uses it, and a new run refuses a
folder that is not empty unless told ``--resume`` or ``--overwrite``; a run deletes only what it
wrote. Checkpoints (``accelerator.save_state``) are written under a temporary name with a manifest
of checksums and renamed when complete. ``--resume`` continues from the newest checkpoint whose
files all match their manifest, refuses a changed setting that defines the run (only the keys in
:data:`RESUMABLE_CHANGES` may change), drops the rolled-back steps from ``log.jsonl``, and
reproduces the uninterrupted run exactly (same seed, same data order). A non-finite loss, gradient
or weight stops the run before anything of it is saved. At the end the model is saved with
``gaussder_hf.save_for_hub`` (and pushed with ``push_to_hub=true``).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import re
import shutil
import time
import typing
from dataclasses import dataclass, field
from pathlib import Path

import torch
import yaml

from gaussder_hf import run_folder

# ----------------------------------------------------------------------------------------------
# config
# ----------------------------------------------------------------------------------------------

@dataclass
class TrainConfig:
    """Every setting of a training run (Table 2 / Table 5 of the paper for the presets)."""

    # model
    model: str = 'gaussderresnet18_fashionmnist'   # timm name (any registered model)
    model_args: dict = field(default_factory=dict)  # preset overrides, e.g. {initial_scales: [1.0]}
    init_from: str | None = None                    # checkpoint folder / 'local-dir:' / 'hf-hub:' to start from
    # data
    dataset: str = 'rescaled_fashion_mnist'
    data_dir: str | None = None
    dataset_args: dict = field(default_factory=dict)  # builder options: rescaled_images {base: DIR, canvas_size: 72}
    cache_dir: str | None = None
    max_examples: int | None = None                 # use only the first N originals of every split
    train_on_validation: bool = False               # final runs train on train + validation
    batch_size: int = 64
    num_workers: int = 0
    # augmentation (§5.2)
    hflip: bool = True
    color_jitter: bool = False                      # (0.2, 0.2, 0.2, 0.05) for RGB
    random_crop_padding: int = 0                    # 24 for STL-10
    crop_size: int | None = None                    # centre-crop train/validation images to this side
    scale_augmentation: list | None = None          # [low, high]: size factor drawn log-uniformly (ScaleAugmentation)
    # optimisation
    epochs: int = 32
    max_steps: int | None = None                    # stop after this many optimizer steps
    lr: float = 0.01
    weight_decay: float = 0.025
    warmup_epochs: float = 0.0                      # linear warm-up from 10% of lr
    label_smoothing: float = 0.1
    gradient_accumulation_steps: int = 1
    mixed_precision: str = 'no'                     # 'no' | 'fp16' | 'bf16'
    gradient_checkpointing: bool = False
    dynamo_backend: str = 'no'                      # torch.compile backend through accelerate, e.g. 'inductor'
    # run
    seed: int = 0
    output_dir: str = 'runs/default'
    save_every: int = 500                           # optimizer steps between checkpoints
    keep_checkpoints: int = 2
    resume: bool = False                            # continue the run in output_dir
    overwrite: bool = False                         # replace the run in output_dir with a new one
    log_with: str | None = None                     # an accelerate tracker, e.g. 'tensorboard'
    evaluate_every_epoch: bool = True
    evaluate_at_end: bool = True                    # accuracy per size factor on the test splits
    push_to_hub: bool = False
    hub_model_id: str | None = None

    def __post_init__(self):
        if self.output_dir is None or (isinstance(self.output_dir, str) and not self.output_dir.strip()):
            # Checked first: an empty value would otherwise read as "the current directory".
            raise ValueError(f"config key 'output_dir' must be the path of a folder, got {self.output_dir!r}")
        if self.scale_augmentation is not None:
            # A list of floats whatever was given (a tuple, ints): the form YAML, JSON and resume compare.
            self.scale_augmentation = check_scale_augmentation(self.scale_augmentation)
        hints = typing.get_type_hints(TrainConfig)
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if not _matches(value, hints[f.name]):
                raise ValueError(f'config key {f.name!r} must be {hints[f.name]}, got {value!r}')
        for name in ('batch_size', 'epochs', 'gradient_accumulation_steps', 'save_every', 'keep_checkpoints'):
            if getattr(self, name) < 1:
                raise ValueError(f'config key {name!r} must be >= 1, got {getattr(self, name)!r}')
        if self.crop_size is not None and self.crop_size < 1:
            raise ValueError(f'config key \'crop_size\' must be None or >= 1, got {self.crop_size!r}')
        if self.mixed_precision not in ('no', 'fp16', 'bf16'):
            raise ValueError(f"mixed_precision must be 'no', 'fp16' or 'bf16', got {self.mixed_precision!r}")
        backends = [backend.value.lower() for backend in _dynamo_backends()]
        if self.dynamo_backend.lower() not in backends:
            raise ValueError(f'dynamo_backend must be one of {backends}, got {self.dynamo_backend!r}')
        if self.push_to_hub and not self.hub_model_id:
            raise ValueError('push_to_hub needs hub_model_id')
        _require('lr', math.isfinite(self.lr) and self.lr > 0, 'a finite number > 0', self.lr)
        _require('weight_decay', math.isfinite(self.weight_decay) and self.weight_decay >= 0,
                 'a finite number >= 0', self.weight_decay)
        _require('label_smoothing', 0 <= self.label_smoothing < 1, 'in [0, 1)', self.label_smoothing)
        _require('warmup_epochs', math.isfinite(self.warmup_epochs) and self.warmup_epochs >= 0,
                 'a finite number >= 0', self.warmup_epochs)
        for name in ('max_steps', 'max_examples'):
            _require(name, getattr(self, name) is None or getattr(self, name) >= 1, 'None (unset) or >= 1',
                     getattr(self, name))
        for name in ('num_workers', 'random_crop_padding'):
            _require(name, getattr(self, name) >= 0, '>= 0', getattr(self, name))
        _require('output_dir', '\0' not in self.output_dir, 'the path of a folder', self.output_dir)
        if self.resume and self.overwrite:
            raise ValueError('resume and overwrite exclude each other: continue the run in output_dir (resume) '
                             'or replace it with a new one (overwrite)')


# Keys that may differ when a run is resumed: how long it runs, how often it saves, logs and
# evaluates, where its caches and folder are, what happens at the end. Every other key defines
# the model, the data, the optimisation or the randomness of the run, and a resume with another
# value would silently train something else: it is refused. A new value of ``epochs`` or
# ``max_steps`` stretches the cosine schedule from the resumed step on.
RESUMABLE_CHANGES = frozenset({
    'epochs', 'max_steps', 'save_every', 'keep_checkpoints', 'log_with', 'evaluate_every_epoch',
    'evaluate_at_end', 'push_to_hub', 'hub_model_id', 'num_workers', 'cache_dir', 'output_dir', 'resume',
    'overwrite'})


def check_scale_augmentation(value) -> list[float]:
    """Returns ``[low, high]`` as floats if ``value`` is a valid ``scale_augmentation``, else raises ValueError.

    Two finite numbers with ``0 < low <= high`` (``low == high`` rescales every image by that one factor).
    """
    allowed = 'None (off) or a pair [low, high] of finite numbers with 0 < low <= high'
    if not isinstance(value, (list, tuple)) or len(value) != 2 or not all(
            isinstance(v, (int, float)) and not isinstance(v, bool) for v in value):
        raise ValueError(f"config key 'scale_augmentation' must be {allowed}, got {value!r}")
    low, high = (float(v) for v in value)
    if not (math.isfinite(low) and math.isfinite(high) and 0 < low <= high):
        raise ValueError(f"config key 'scale_augmentation' must be {allowed}, got {value!r}")
    return [low, high]


def _require(name: str, ok: bool, allowed: str, value) -> None:
    if not ok:
        raise ValueError(f'config key {name!r} must be {allowed}, got {value!r}')


def _dynamo_backends():
    from accelerate.utils import DynamoBackend

    return list(DynamoBackend)


def _matches(value, hint) -> bool:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, getattr(__import__('types'), 'UnionType', None)):
        return any(_matches(value, a) for a in args)
    if hint is type(None):
        return value is None
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, origin or hint)


class _YamlLoader(yaml.SafeLoader):
    """YAML 1.1 with the floats of YAML 1.2: ``1e-3`` and ``5E4`` are numbers, not strings."""


_YamlLoader.add_implicit_resolver(
    'tag:yaml.org,2002:float',
    re.compile(r'^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9_]+)[eE][-+]?[0-9]+$'),
    list('-+0123456789.'))


def _parse_yaml(text: str):
    return yaml.load(text, Loader=_YamlLoader)


def load_config(path: str | None = None, overrides: list[str] | None = None, **kwargs) -> TrainConfig:
    """Returns the config from a YAML file, then ``key=value`` overrides, then keyword arguments."""
    values = {}
    if path:
        values = _parse_yaml(Path(path).read_text()) or {}
        if not isinstance(values, dict):
            raise ValueError(f'{path} must hold a mapping of config keys, got {type(values).__name__}')
    for item in overrides or []:
        key, sep, text = item.partition('=')
        if not sep:
            raise ValueError(f'overrides are key=value, got {item!r}')
        values[key.strip()] = _parse_yaml(text)
    values.update(kwargs)
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f'unknown config key(s) {unknown} (in {path or "overrides"}); known keys: {sorted(known)}')
    return TrainConfig(**values)


# ----------------------------------------------------------------------------------------------
# data
# ----------------------------------------------------------------------------------------------

def image_transform(cfg: TrainConfig, in_chans: int, mean, std, train: bool):
    """Returns the package's input pipeline with the crop and (train only) the augmentation before normalisation.

    Decoding, channels and scaling to [0, 1] are :class:`gaussder_hf.input_pipeline.InputPipeline`'s,
    the same steps evaluation and the image processor run; the training images are on their
    canvas already. With ``scale_augmentation`` :func:`make_dataset` wraps this pipeline in
    :class:`ScaleAugmentation`, which rescales each original before these steps.
    """
    from torchvision.transforms import v2

    from gaussder_hf.input_pipeline import InputPipeline

    steps = []
    if cfg.crop_size:
        # The networks are fully convolutional: at size factor 1 a Fashion-MNIST object (28 px)
        # fits in a 48 px crop of its 72 px canvas, and training on the crop costs 2.25x less.
        steps.append(v2.CenterCrop(cfg.crop_size))
    if train:
        if cfg.random_crop_padding:
            steps.append(_RandomCropSameSize(cfg.random_crop_padding))
        if cfg.hflip:
            steps.append(v2.RandomHorizontalFlip(0.5))
        if cfg.color_jitter and in_chans == 3:
            steps.append(v2.ColorJitter(0.2, 0.2, 0.2, 0.05))
    return InputPipeline(in_chans, mean, std, augment=v2.Compose(steps) if steps else None)


class _RandomCropSameSize(torch.nn.Module):
    """Random crop back to the input size after zero padding (the STL-10 augmentation)."""

    def __init__(self, padding: int):
        super().__init__()
        self.padding = padding

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        from torchvision.transforms import v2

        return v2.RandomCrop(tuple(image.shape[-2:]), padding=self.padding)(image)


class RescaledSplit(torch.utils.data.Dataset):
    """A ``datasets`` split as ``{'pixel_values', 'labels'}`` examples, with reproducible augmentation.

    The random augmentation of example ``i`` in epoch ``e`` is drawn from its own generator seeded
    by ``(seed, e, i)``, not from the global RNG: the result does not depend on how many processes
    share the data or on batches prefetched before a checkpoint, so a resumed run sees exactly the
    images of the uninterrupted one.
    """

    def __init__(self, split, transform, seed: int):
        self.split, self.transform, self.seed = split, transform, seed
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, index: int) -> dict:
        example = self.split[int(index)]
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(example_seed(self.seed, self.epoch, int(index)))
            pixels = self.transform(example['image'])
        return {'pixel_values': pixels, 'labels': example['label']}


def example_seed(seed: int, epoch: int, index: int) -> int:
    """Returns the seed of the augmentation of example ``index`` in ``epoch`` (Python's int-tuple hash, fixed)."""
    return hash((seed, epoch, index)) & 0x7FFF_FFFF_FFFF_FFFF


# Side of the original images of each dedicated builder's source, as its reader checks them: the
# size scale augmentation crops back out of a training canvas (ScaleAugmentation).
_ORIGINAL_SIDE = {'fashion_mnist': 28, 'cifar10': 32, 'stl10': 96}


class ScaleAugmentation:
    """Scale augmentation: each training original rescaled by a size factor ``s`` drawn log-uniformly from [low, high].

    ``s = exp(log low + u (log high - log low))`` with ``u = torch.rand(())`` from the global RNG,
    which :class:`RescaledSplit` seeds per (seed, epoch, example): the same seed, example and
    epoch give the same ``s`` (and a resumed run the same images), another epoch another ``s``.

    Getting back the original: a training image of a dedicated rescaled builder is its original
    (``n x n``, ``n`` = 28 / 32 / 96 for Fashion-MNIST / CIFAR-10 / STL-10) at size factor 1,
    centred on the ``TRAIN_CANVAS`` (72 / 64 / 96) by the rescaling module's rule: canvas sample
    ``i`` shows original sample ``i - offset``, ``offset = (canvas - n) // 2``, whatever the
    background. So the original is the ``n x n`` block at ``offset``, exactly, for the black and
    the mirror background alike. It is rescaled and placed on the training canvas by
    :func:`gaussder_hf.rescaling.rescale_batch` (bicubic with antialiasing, rounded to uint8,
    centred, the dataset's background), the function the builders make their ``test_s*`` splits
    with: for a dataset whose test canvas is its training canvas (Fashion-MNIST, CIFAR-10) the
    augmented image of an original is, pixel for pixel, its image in the ``test_s*`` split at the
    same ``s``. On STL-10 (96 training canvas, 192 test canvas) an image larger than the canvas
    (``s > 1``) is centre-cropped to 96 x 96. Rescaling the whole canvas about its centre instead
    would differ: the resampling grid follows ``round(canvas * s)``, not ``round(n * s)``, and a
    mirror background would be rescaled with the object.

    The rescaling works on the decoded uint8 image in the dataset's channels, before the model's
    channel conversion, the crop and the other augmentations: everything after it is the input
    pipeline of evaluation.
    """

    def __init__(self, pipeline, low: float, high: float, original_side: int, canvas: int, background: str):
        self.pipeline, self.low, self.high = pipeline, float(low), float(high)
        self.original_side, self.canvas, self.background = original_side, canvas, background

    def draw(self) -> float:
        """Returns a size factor drawn log-uniformly from [low, high] with the global torch RNG."""
        u = float(torch.rand((), dtype=torch.float64))
        return math.exp(math.log(self.low) + u * (math.log(self.high) - math.log(self.low)))

    def original(self, image) -> torch.Tensor:
        """Returns the original ``(C, n, n)`` uint8 image centred on a training canvas (see the class docstring)."""
        from gaussder_hf.input_pipeline import decode_image

        pixels = decode_image(image, self.pipeline.max_pixels)
        if pixels.dtype != torch.uint8 or tuple(pixels.shape[-2:]) != (self.canvas, self.canvas):
            raise ValueError(f'scale_augmentation expects uint8 training images of {self.canvas}x{self.canvas} '
                             f'(the original at size factor 1 on the training canvas), got {pixels.dtype} '
                             f'{pixels.shape[-1]}x{pixels.shape[-2]}')
        offset = (self.canvas - self.original_side) // 2
        return pixels[:, offset:offset + self.original_side, offset:offset + self.original_side]

    def rescale(self, image, s: float) -> torch.Tensor:
        """Returns the original of ``image`` rescaled by ``s`` on the training canvas, ``(C, canvas, canvas)`` uint8."""
        from gaussder_hf.rescaling import rescale_batch

        original = self.original(image).permute(1, 2, 0)[None]  # (1, n, n, C): rescale_batch's layout
        return torch.from_numpy(rescale_batch(original, s, self.canvas, self.background)[0]).permute(2, 0, 1)

    def pixels(self, image) -> torch.Tensor:
        """Returns the rescaled image in the model's channels in [0, 1], before the other augmentations."""
        return self.pipeline.pixels(self.rescale(image, self.draw()))

    def __call__(self, image) -> torch.Tensor:
        return self.pipeline(self.rescale(image, self.draw()))


def normalisation(model) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Returns the ``(mean, std)`` the model is trained with (the rule evaluation uses too)."""
    from gaussder_hf.input_pipeline import model_normalisation

    return model_normalisation(model)


def make_dataset(cfg: TrainConfig, split, model, train: bool) -> RescaledSplit:
    """Returns ``split`` with the model's normalisation (and the augmentation when training)."""
    mean, std = normalisation(model)
    if cfg.crop_size and len(split):
        from gaussder_hf.input_pipeline import open_image

        with open_image(split[0]['image']) as first:  # reads the header only
            width, height = first.size
        if cfg.crop_size > min(width, height):
            raise ValueError(f'crop_size {cfg.crop_size} is larger than the {width}x{height} images of {cfg.dataset}')
    transform = image_transform(cfg, model.in_chans, mean, std, train)
    if train and cfg.scale_augmentation:
        original_side, canvas, background = scale_augmentation_geometry(cfg.dataset)
        transform = ScaleAugmentation(transform, *cfg.scale_augmentation, original_side, canvas, background)
    return RescaledSplit(split, transform, cfg.seed)


def scale_augmentation_geometry(dataset: str) -> tuple[int, int, str]:
    """Returns ``(original side, training canvas, background)`` of a dedicated rescaled builder.

    Scale augmentation needs the size of the originals on the training canvas; datasets whose
    images may have any size (``rescaled_images``, exported folders) do not record it and are refused.
    """
    from gaussder_hf.data import BUILDERS

    builder = BUILDERS.get(dataset)
    side = _ORIGINAL_SIDE.get(getattr(builder, 'SOURCE', None))
    if side is None:
        known = sorted(name for name, b in BUILDERS.items() if getattr(b, 'SOURCE', None) in _ORIGINAL_SIDE)
        raise ValueError(f'scale_augmentation needs a dataset whose training images are originals of a known size '
                         f'centred on a fixed canvas, one of {known}; got dataset {dataset!r}')
    return side, builder.TRAIN_CANVAS, builder.BACKGROUND


def epoch_loader(cfg: TrainConfig, dataset: RescaledSplit, epoch: int, skip: int = 0):
    """Returns the training DataLoader of ``epoch``: a fixed shuffle per (seed, epoch), minus ``skip`` examples."""
    dataset.epoch = epoch
    order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(cfg.seed * 10_007 + epoch))
    # An explicit generator: a DataLoader without one draws its worker seed from the global RNG,
    # which would shift the dropout randomness of a resumed run.
    return torch.utils.data.DataLoader(dataset, batch_size=cfg.batch_size, sampler=order[skip:].tolist(),
                                       drop_last=True, num_workers=cfg.num_workers,
                                       generator=torch.Generator().manual_seed(cfg.seed + epoch))


# ----------------------------------------------------------------------------------------------
# checkpoints
# ----------------------------------------------------------------------------------------------

def newest_checkpoint(output_dir: Path) -> Path | None:
    """Returns the newest checkpoint of the run in ``output_dir`` whose files all match its manifest, or None."""
    run = run_folder.read_run(Path(output_dir))
    found = run and run_folder.newest_valid_checkpoint(Path(output_dir), run['run_id'], say=lambda message: None)
    return found[0] if found else None


def save_checkpoint(accelerator, output_dir: Path, step: int, keep: int, run_id: str, config: dict) -> Path:
    """Saves the full training state; the folder appears under its final name only when complete.

    The manifest (the run's id, ``config`` and the checksum of every file) is written last, and
    only this run's checkpoints take part in the rotation to the newest ``keep``.
    """
    final = output_dir / run_folder.checkpoint_name(step)
    partial = output_dir / f'{run_folder.PARTIAL_PREFIX}{final.name}'
    if accelerator.is_main_process and partial.exists():
        shutil.rmtree(partial)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(partial))
    # Every rank writes its own RNG state into the folder: rename only after all of them finished.
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        (partial / 'trainer_state.json').write_text(json.dumps({'step': step}))
        run_folder.write_manifest(partial, run_id, step, config)
        if final.exists():
            # A checkpoint of this run from before a roll-back (resume refuses foreign ones up front).
            shutil.rmtree(final)
        os.replace(partial, final)  # atomic: a crash before this leaves only the .partial folder
        run_folder.rotate_checkpoints(output_dir, run_id, keep)
    accelerator.wait_for_everyone()
    return final


# Keys added to TrainConfig after runs were recorded, with the value a run that does not record
# them had: a run from before scale augmentation existed trained without it.
_VALUE_BEFORE_THE_KEY = {'scale_augmentation': None}


def _changed_settings(recorded: dict, cfg: TrainConfig) -> dict:
    """Returns ``{key: (recorded, now)}`` for every setting that differs from the recorded run."""
    now = dataclasses.asdict(cfg)
    recorded = {**_VALUE_BEFORE_THE_KEY, **recorded}
    return {key: (recorded.get(key, '<unset>'), now[key]) for key in now
            if key not in ('resume', 'overwrite') and recorded.get(key, '<unset>') != now[key]}


def _roll_back_log(log_path: Path, step: int) -> int:
    """Keeps the records of ``log_path`` up to ``step``; returns how many later (or torn) lines it dropped."""
    if not log_path.exists():
        return 0
    kept, dropped = [], 0
    for line in log_path.read_text().splitlines():
        try:
            record = json.loads(line)
        except ValueError:  # the last line of a killed run may be half-written
            record = None
        if isinstance(record, dict) and isinstance(record.get('step'), int) and record['step'] <= step:
            kept.append(line + '\n')
        else:
            dropped += 1
    partial = log_path.with_name(f'{run_folder.PARTIAL_PREFIX}{log_path.name}')
    partial.write_text(''.join(kept))
    os.replace(partial, log_path)
    return dropped


def open_run_folder(cfg: TrainConfig, say=print) -> dict:
    """Makes ``cfg.output_dir`` ready for this run; call with the folder's lock held.

    Returns ``{'run_id', 'checkpoint', 'step'}``: a new run (an empty or missing folder, or any
    folder with ``overwrite``), or the run in the folder continued from its newest valid
    checkpoint (``resume``). Raises :class:`~gaussder_hf.run_folder.RunFolderError` for a folder
    that holds something else and ``ValueError`` for a resume that would change the run.
    """
    output_dir = Path(cfg.output_dir)
    run = run_folder.read_run(output_dir)
    entries = run_folder.user_entries(output_dir)
    if cfg.resume and run is None and entries:
        earlier = ('; a run of an earlier train.py, whose checkpoints carry no manifest to verify them, cannot be '
                   'resumed' if 'config.yaml' in entries else '')
        raise run_folder.RunFolderError(
            f'nothing to resume in {output_dir}: it holds no {run_folder.RUN_FILE} of a run of this recipe '
            f'({_listing(entries)}){earlier}')
    if cfg.resume and run is not None:
        return _resume(cfg, output_dir, run, say)
    if cfg.resume:
        say(f'no run to resume in {output_dir}: starting a new one')
    elif entries and not cfg.overwrite:
        raise run_folder.RunFolderError(
            f'{output_dir} is not empty ({_listing(entries)}): pass --resume to continue the run in it, '
            f'--overwrite to replace the run in it, or choose another output_dir')
    owned, foreign = run_folder.previous_run_files(output_dir, run and run['run_id'])
    if foreign:
        raise run_folder.RunFolderError(
            f'{output_dir} holds {_listing([p.name for p in foreign])}, which a new run would replace but no run '
            f'of this recipe in the folder wrote; move them away first')
    if owned:
        say(f'overwrite: removing the previous run from {output_dir} ({_listing([p.name for p in owned])}); '
            f'other files stay')
        run_folder.remove(owned)
    run_folder.remove_partials(output_dir)
    run_id = run_folder.new_run_id()
    run_folder.write_json_atomically(output_dir / run_folder.RUN_FILE, {
        'run_id': run_id, 'created': time.time(), 'config': dataclasses.asdict(cfg)})
    (output_dir / 'config.yaml').write_text(yaml.safe_dump(dataclasses.asdict(cfg), sort_keys=False))
    return {'run_id': run_id, 'checkpoint': None, 'step': 0}


def _resume(cfg: TrainConfig, output_dir: Path, run: dict, say) -> dict:
    run_id = run['run_id']
    run_folder.remove_partials(output_dir)  # the unfinished saves of the interrupted process
    found = run_folder.newest_valid_checkpoint(output_dir, run_id, say)
    checkpoint, manifest = found if found else (None, None)
    recorded = manifest['config'] if manifest else run.get('config', {})
    changed = _changed_settings(recorded, cfg)
    refused = {key: change for key, change in changed.items() if key not in RESUMABLE_CHANGES}
    if refused:
        diff = '; '.join(f'{key}: {old!r} -> {new!r}' for key, (old, new) in refused.items())
        raise ValueError(
            f'resume would change setting(s) that define the run in {output_dir}: {diff}. Only '
            f'{sorted(RESUMABLE_CHANGES)} may change on resume; to train with the new values start a new run '
            f'(another output_dir, or --overwrite to replace this one)')
    step = manifest['step'] if manifest else 0
    later = [(s, path) for s, path in run_folder.checkpoint_folders(output_dir) if s > step]
    foreign = [path.name for _, path in later if run_folder.checkpoint_owner(path) != run_id]
    if foreign:
        raise run_folder.RunFolderError(
            f'{output_dir} holds {_listing(foreign)}, which this run would write again after resuming at step '
            f'{step} but cannot tell as its own (no readable manifest of this run); move them away first')
    run_folder.remove([path for _, path in later])  # rolled back: they are written again
    dropped = _roll_back_log(output_dir / 'log.jsonl', step)
    with (output_dir / 'log.jsonl').open('a') as log:
        log.write(json.dumps({'step': step, 'event': 'resume', 'checkpoint': checkpoint and checkpoint.name,
                              'dropped_records': dropped, 'changed': changed, 'time': time.time()}) + '\n')
    (output_dir / 'config.yaml').write_text(yaml.safe_dump(dataclasses.asdict(cfg), sort_keys=False))
    if checkpoint is None:
        say(f'no complete checkpoint of the run in {output_dir}: starting it again from step 0')
    return {'run_id': run_id, 'checkpoint': checkpoint and str(checkpoint), 'step': step}


def _listing(names: list[str], limit: int = 6) -> str:
    shown = ', '.join(repr(n) for n in names[:limit])
    return shown + (f' and {len(names) - limit} more' if len(names) > limit else '')


def _require_finite_step(model, loss: torch.Tensor, step: int, check_gradients: bool) -> None:
    """Stops the run at a non-finite loss or gradient, before the optimizer applies it."""
    if not torch.isfinite(loss.detach()).all():
        raise FloatingPointError(f'non-finite loss {loss.item()} at step {step}; stopping before the update '
                                 f'(the last checkpoint holds the last finite state; try a smaller lr)')
    if check_gradients:
        grads = [p.grad for p in model.parameters() if p.grad is not None]
        norm = torch.nn.utils.get_total_norm(grads) if grads else torch.zeros(())
        if not torch.isfinite(norm):
            raise FloatingPointError(f'non-finite gradient norm {norm.item()} at step {step} (loss {loss.item()}); '
                                     f'stopping before the update (try a smaller lr)')


def _require_finite_weights(model, step: int) -> None:
    """Refuses to save a model with a non-finite parameter or buffer (BN statistics included)."""
    for name, tensor in list(model.named_parameters()) + list(model.named_buffers()):
        if tensor.is_floating_point() and not torch.isfinite(tensor).all():
            raise FloatingPointError(f'non-finite values in {name} at step {step}; nothing is saved')


# ----------------------------------------------------------------------------------------------
# model
# ----------------------------------------------------------------------------------------------

def build_model(cfg: TrainConfig, num_classes: int, in_chans: int):
    import timm

    import gaussder_hf  # noqa: F401  (registers the models)

    args = dict(cfg.model_args)
    if cfg.init_from:
        source = cfg.init_from
        if not source.startswith(('local-dir:', 'hf-hub:')):
            source = f'local-dir:{source}'
        return timm.create_model(source, pretrained=True, num_classes=num_classes, **args)
    if cfg.model not in gaussder_hf.PRESETS:
        args.setdefault('in_chans', in_chans)
    return timm.create_model(cfg.model, num_classes=num_classes, **args)


def save_model(model, folder: Path, cfg: TrainConfig, evaluation: dict | None = None) -> Path:
    """Saves the trained model as a Hub folder (GaussDerResNets: gaussder_hf.save_for_hub)."""
    import gaussder_hf
    from gaussder_hf.data import processor_settings

    if isinstance(model, gaussder_hf.GaussDerResNet):
        summary = (f'Trained with `recipes/train.py` on `{cfg.dataset}`: {cfg.epochs} epochs, batch {cfg.batch_size}, '
                   f'AdamW lr {cfg.lr}, weight decay {cfg.weight_decay}, label smoothing {cfg.label_smoothing}, '
                   f'max_examples {cfg.max_examples}, max_steps {cfg.max_steps}'
                   + (f', scale augmentation {cfg.scale_augmentation}.' if cfg.scale_augmentation else '.'))
        # The image processor places images where the training data has them (canvas, background).
        return gaussder_hf.save_for_hub(model, folder, evaluation=evaluation, summary=summary,
                                        **processor_settings(cfg.dataset, cfg.dataset_args))
    from timm.models import save_for_hf

    # The saved config must carry the normalisation the model was trained with: timm would
    # otherwise write its pretrained statistics adapted to in_chans (for a 1-channel resnet18 the
    # mean of ImageNet's, 0.449 / 0.226), and every later evaluation would see shifted inputs.
    mean, std = normalisation(model)
    save_for_hf(model, str(folder), safe_serialization=True,  # safetensors only, never a pickle
                data_config={'mean': mean, 'std': std})
    return folder


def _save_model_in_place(model, model_dir: Path, cfg: TrainConfig, evaluation: dict | None = None) -> None:
    """Writes the model folder next to ``model_dir`` and swaps it in: a killed save leaves the old one whole."""
    staging = model_dir.with_name(f'{run_folder.PARTIAL_PREFIX}{model_dir.name}')
    if staging.exists():
        shutil.rmtree(staging)
    # The folder keeps its final name inside the staging folder: save_for_hub names the Hub repo after it.
    save_model(model, staging / model_dir.name, cfg, evaluation)
    run_folder.replace_folder(staging / model_dir.name, model_dir)
    staging.rmdir()


def _evaluation_notes(cfg: TrainConfig) -> str:
    subset = f'the first {cfg.max_examples} test images' if cfg.max_examples else 'the full test set'
    trained = ('with scale augmentation (size factors drawn log-uniformly from '
               f'[{cfg.scale_augmentation[0]:g}, {cfg.scale_augmentation[1]:g}])' if cfg.scale_augmentation
               else 'at size factor 1 only')
    return (f'Measured by `recipes/evaluate.py` on {subset} of `{cfg.dataset}` at each size factor, '
            f'after training {trained}.')


# ----------------------------------------------------------------------------------------------
# train
# ----------------------------------------------------------------------------------------------

def lr_lambda(cfg: TrainConfig, total_steps: int, steps_per_epoch: int):
    """Linear warm-up from 10% of the lr over ``warmup_epochs``, then cosine decay to 0 (§5.2)."""
    warmup = int(cfg.warmup_epochs * steps_per_epoch)

    def factor(step: int) -> float:
        if step < warmup:
            return 0.1 + 0.9 * step / warmup
        progress = (step - warmup) / max(1, total_steps - warmup)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return factor


@torch.no_grad()
def evaluate_loader(accelerator, model, loader) -> float:
    """Returns the accuracy over a (prepared) loader, gathered over all processes (by :mod:`gaussder_hf.analysis`)."""
    from gaussder_hf.analysis import evaluate

    if len(loader) == 0:
        return 0.0
    model.eval()
    try:
        # The prepared model as it is (its mixed-precision autocast included): accuracy only.
        return evaluate(model, ((batch['pixel_values'], batch['labels']) for batch in loader), accelerator,
                        select_scales=False, name='the model', split='validation')['accuracy']
    finally:
        model.train()


def evaluate_at_end(accelerator, cfg: TrainConfig, model_dir: Path, test_splits: dict, output_dir: Path) -> dict:
    """Evaluates the saved model on every rescaled test split as ``recipes/evaluate.py`` does; returns its entry.

    The same core (:func:`gaussder_hf.analysis.evaluate_size_factors`) on the folder just written,
    loaded back as any later evaluation loads it; ``evaluation.json`` and the figures go to
    ``output_dir/evaluation`` (:func:`gaussder_hf.analysis.write_evaluation`).
    """
    import timm

    from gaussder_hf.analysis import evaluate_size_factors, write_evaluation

    model = timm.create_model(f'local-dir:{model_dir}', pretrained=True)
    entry = evaluate_size_factors(model, test_splits, cfg.batch_size, accelerator=accelerator, label='model')
    entry.pop('predictions')
    results = {'model': {'model': str(model_dir), 'dataset': cfg.dataset, **entry}}
    if accelerator.is_main_process:
        write_evaluation(results, output_dir / 'evaluation', cfg.dataset)
    accelerator.wait_for_everyone()
    return results['model']


def train(cfg: TrainConfig) -> dict:
    """Trains as configured; returns ``{'step', 'val_accuracy', 'model_dir', 'log'}``.

    Raises :class:`~gaussder_hf.run_folder.RunFolderError` when ``output_dir`` is in use by another
    run or holds files this run may not replace, and ``FloatingPointError`` when the loss, a
    gradient or a weight becomes non-finite (before anything of that state is saved).
    """
    from accelerate import Accelerator
    from accelerate.utils import ProjectConfiguration

    output_dir = Path(cfg.output_dir)
    if output_dir.exists() and not output_dir.is_dir():
        raise ValueError(f'output_dir {cfg.output_dir!r} is a file, not a folder')
    accelerator = Accelerator(
        gradient_accumulation_steps=cfg.gradient_accumulation_steps, mixed_precision=cfg.mixed_precision,
        # 'no' leaves the choice to `accelerate launch --dynamo_backend` / `accelerate config`.
        dynamo_backend=None if cfg.dynamo_backend.lower() == 'no' else cfg.dynamo_backend.upper(),
        log_with=cfg.log_with, project_config=ProjectConfiguration(project_dir=str(output_dir)),
        # The schedule counts optimizer steps of all processes together (lr_lambda's total_steps):
        # accelerate's default would advance it once per process at every step.
        step_scheduler_with_optimizer=False)
    backend = accelerator.state.dynamo_plugin.backend.value.lower()
    if cfg.dynamo_backend.lower() != 'no' and backend != cfg.dynamo_backend.lower():
        # accelerate keeps one state per process and silently ignores a new backend once it exists.
        raise ValueError(f'dynamo_backend={cfg.dynamo_backend!r} cannot take effect: this process already runs '
                         f'accelerate with dynamo backend {backend!r}; train in a fresh process')
    lock = None
    if accelerator.is_main_process:  # it alone writes the folder's files
        output_dir.mkdir(parents=True, exist_ok=True)
        lock = run_folder.RunLock(output_dir)
        lock.acquire(say=accelerator.print)
    try:
        return _train(cfg, output_dir, accelerator)
    finally:
        if lock is not None:
            lock.release()


def _train(cfg: TrainConfig, output_dir: Path, accelerator) -> dict:
    from accelerate.utils import broadcast_object_list, set_seed
    from datasets import Image as DatasetImage
    from datasets import load_dataset
    from tqdm.auto import tqdm

    import gaussder_hf  # noqa: F401  (registers the datasets and models)
    from gaussder_hf.analysis import rescaled_test_splits
    from gaussder_hf.input_pipeline import image_channels

    # The main process (holding the lock) decides what the folder becomes; the others follow.
    opened = [open_run_folder(cfg, say=accelerator.print) if accelerator.is_main_process else None]
    opened = broadcast_object_list(opened)[0]
    run_id = opened['run_id']
    set_seed(cfg.seed)

    # ---- data
    loaded = load_dataset(cfg.dataset, data_dir=cfg.data_dir, max_examples=cfg.max_examples, cache_dir=cfg.cache_dir,
                          **cfg.dataset_args)
    # Undecoded: the input pipeline opens each image and refuses one above the pixel limit
    # (PIL.Image.MAX_IMAGE_PIXELS) before decoding it, where datasets' decoding would only warn.
    data = {name: loaded[name].cast_column('image', DatasetImage(decode=False)) for name in ('train', 'validation')}
    train_split = data['train']
    if cfg.train_on_validation:
        from datasets import concatenate_datasets

        train_split = concatenate_datasets([data['train'], data['validation']])
    num_classes = train_split.features['label'].num_classes
    in_chans = image_channels(train_split[0]['image'])

    # ---- model and optimiser
    model = build_model(cfg, num_classes, in_chans)
    if cfg.gradient_checkpointing:
        model.set_grad_checkpointing(True)
    train_data = make_dataset(cfg, train_split, model, train=True)
    val_loader = torch.utils.data.DataLoader(make_dataset(cfg, data['validation'], model, train=False),
                                             batch_size=cfg.batch_size, num_workers=cfg.num_workers,
                                             generator=torch.Generator().manual_seed(cfg.seed))
    # Optimizer steps per epoch: every process takes batch_size examples per forward pass.
    per_step = cfg.batch_size * accelerator.num_processes * cfg.gradient_accumulation_steps
    steps_per_epoch = len(train_data) // per_step
    if steps_per_epoch < 1:
        raise ValueError(f'{len(train_data)} training examples are fewer than one step of {per_step}')
    total_steps = cfg.epochs * steps_per_epoch
    if cfg.max_steps is not None:
        total_steps = min(total_steps, cfg.max_steps)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(cfg, total_steps, steps_per_epoch))
    model, optimizer, val_loader, scheduler = accelerator.prepare(model, optimizer, val_loader, scheduler)
    loss_fn = torch.nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)
    if cfg.log_with:
        accelerator.init_trackers('gaussder_hf', config=dataclasses.asdict(cfg))

    # ---- resume
    step = opened['step']
    if opened['checkpoint'] is not None:
        accelerator.load_state(opened['checkpoint'])
        accelerator.print(f'resumed from {opened["checkpoint"]} at step {step}')
    start_epoch = step // steps_per_epoch

    # ---- loop
    log_path = output_dir / 'log.jsonl'
    progress = tqdm(total=total_steps, initial=step, disable=not accelerator.is_local_main_process, desc='train')
    val_accuracy = None
    # With fp16 the gradient scaler meets inf gradients by design and skips those steps itself.
    check_gradients = cfg.mixed_precision != 'fp16'
    model.train()
    for epoch in range(start_epoch, cfg.epochs):
        if step >= total_steps:
            break
        # The same order for this epoch whether resumed or not; a resumed epoch skips what was done.
        done_in_epoch = step - epoch * steps_per_epoch
        loader = accelerator.prepare(epoch_loader(cfg, train_data, epoch, skip=done_in_epoch * per_step))
        for batch in loader:
            with accelerator.accumulate(model):
                loss = loss_fn(model(batch['pixel_values']), batch['labels'])
                accelerator.backward(loss)
                if accelerator.sync_gradients:
                    _require_finite_step(model, loss, step + 1, check_gradients)
                optimizer.step()
                if accelerator.sync_gradients and not optimizer.step_was_skipped:  # fp16 skips inf steps
                    scheduler.step()
                optimizer.zero_grad()
            if not accelerator.sync_gradients:
                continue
            step += 1
            progress.update(1)
            record = {'step': step, 'epoch': epoch, 'loss': accelerator.gather(loss.detach()).mean().item(),
                      'lr': scheduler.get_last_lr()[0], 'time': time.time()}
            if not math.isfinite(record['loss']):
                raise FloatingPointError(f'non-finite loss {record["loss"]} at step {step}')
            if accelerator.is_main_process:
                with log_path.open('a') as log:
                    log.write(json.dumps(record) + '\n')
            if cfg.log_with:
                accelerator.log({'loss': record['loss'], 'lr': record['lr']}, step=step)
            progress.set_postfix(loss=f'{record["loss"]:.3f}')
            if step % cfg.save_every == 0:
                _require_finite_weights(model, step)
                save_checkpoint(accelerator, output_dir, step, cfg.keep_checkpoints, run_id,
                                dataclasses.asdict(cfg))
            if step >= total_steps or step == (epoch + 1) * steps_per_epoch:
                break
        if cfg.evaluate_every_epoch and (step % steps_per_epoch == 0 or step >= total_steps):
            val_accuracy = evaluate_loader(accelerator, model, val_loader)
            accelerator.print(f'epoch {epoch}: validation accuracy (s = 1) {100 * val_accuracy:.2f}%')
            if accelerator.is_main_process:
                with log_path.open('a') as log:
                    log.write(json.dumps({'step': step, 'epoch': epoch, 'val_accuracy': val_accuracy}) + '\n')
            if cfg.log_with:
                accelerator.log({'val_accuracy': val_accuracy}, step=step)
    progress.close()

    # ---- save, evaluate on every test split, save again with the evaluation in the card, push
    model_dir = output_dir / 'model'
    accelerator.wait_for_everyone()
    # Without the compile wrapper: its state-dict keys carry an '_orig_mod.' prefix.
    unwrapped = accelerator.unwrap_model(model, keep_torch_compile=False)
    _require_finite_weights(unwrapped, step)
    if accelerator.is_main_process:
        _save_model_in_place(unwrapped, model_dir, cfg)
    accelerator.wait_for_everyone()
    evaluation = None
    if cfg.evaluate_at_end:
        tested = evaluate_at_end(accelerator, cfg, model_dir, rescaled_test_splits(loaded, cfg.dataset), output_dir)
        evaluation = {'dataset': cfg.dataset, 'accuracy': tested['accuracy'], 'notes': _evaluation_notes(cfg)}
        if accelerator.is_main_process:
            _save_model_in_place(unwrapped, model_dir, cfg, evaluation)
    if accelerator.is_main_process and cfg.push_to_hub:
        import gaussder_hf

        gaussder_hf.push_to_hub(model_dir, cfg.hub_model_id)
    accelerator.wait_for_everyone()
    if cfg.log_with:
        accelerator.end_training()
    return {'step': step, 'val_accuracy': val_accuracy, 'model_dir': model_dir, 'log': log_path,
            'evaluation': evaluation, 'model': unwrapped}


def _flags_to_overrides(extra: list[str]) -> list[str]:
    """Turns ``--key value``, ``--key=value`` and bare ``--flag`` (true) into ``key=value`` overrides."""
    overrides, i = [], 0
    while i < len(extra):
        item = extra[i]
        if not item.startswith('--'):
            overrides.append(item)
        elif '=' in item:
            overrides.append(item[2:])
        elif i + 1 < len(extra) and not extra[i + 1].startswith('--') and '=' not in extra[i + 1]:
            overrides.append(f'{item[2:]}={extra[i + 1]}')
            i += 1
        else:
            overrides.append(f'{item[2:]}=true')
        i += 1
    return overrides


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.split('\n')[0],
        epilog='Any config key can follow as key=value or --key value, e.g. --push_to_hub --hub_model_id me/model')
    parser.add_argument('--config', help='YAML file of TrainConfig keys')
    parser.add_argument('--resume', action='store_true',
                        help='continue the run in output_dir from its newest complete checkpoint')
    parser.add_argument('--overwrite', action='store_true',
                        help='start a new run in output_dir, removing the files of the run in it (no others)')
    args, extra = parser.parse_known_args(argv)
    extra_kwargs = {'resume': True} if args.resume else {}
    if args.overwrite:
        extra_kwargs['overwrite'] = True
    cfg = load_config(args.config, _flags_to_overrides(extra), **extra_kwargs)
    try:
        result = train(cfg)
    except run_folder.RunFolderError as error:  # an expected refusal, not a crash: no traceback
        parser.exit(1, f'{parser.prog}: {error}\n')
    print(json.dumps({k: str(v) for k, v in result.items() if k != 'model'}))


if __name__ == '__main__':
    main()
