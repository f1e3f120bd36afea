"""Train a GaussDerResNet (or any timm model) on a rescaled dataset with accelerate.

    accelerate launch recipes/train.py --config recipes/configs/rescaled_fashion_mnist.yaml
    accelerate launch recipes/train.py --config recipes/configs/smoke.yaml max_steps=20 output_dir=runs/smoke
    accelerate launch recipes/train.py --config ... --resume          # continue from the newest checkpoint
    accelerate launch recipes/train.py --config ... dynamo_backend=inductor   # torch.compile the model

Settings come from a YAML file plus ``key=value`` overrides into a typed :class:`TrainConfig`
that rejects unknown keys; the resolved config is saved next to the checkpoints. One process, one
GPU or many (DDP through ``accelerate launch``). Checkpoints (``accelerator.save_state``) are
written under a temporary name and renamed when complete, so ``--resume`` never picks up a
half-written one, and a resumed run reproduces the uninterrupted one (same seed, same data order).
At the end the model is saved with ``gaussder_hf.save_for_hub`` (and pushed with ``push_to_hub=true``).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import shutil
import sys
import time
import typing
from dataclasses import dataclass, field
from pathlib import Path

import torch
import yaml


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
    resume: bool = False
    log_with: str | None = None                     # an accelerate tracker, e.g. 'tensorboard'
    evaluate_every_epoch: bool = True
    evaluate_at_end: bool = True                    # accuracy per size factor on the test splits
    push_to_hub: bool = False
    hub_model_id: str | None = None

    def __post_init__(self):
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


def load_config(path: str | None = None, overrides: list[str] | None = None, **kwargs) -> TrainConfig:
    """Returns the config from a YAML file, then ``key=value`` overrides, then keyword arguments."""
    values = {}
    if path:
        values = yaml.safe_load(Path(path).read_text()) or {}
        if not isinstance(values, dict):
            raise ValueError(f'{path} must hold a mapping of config keys, got {type(values).__name__}')
    for item in overrides or []:
        key, sep, text = item.partition('=')
        if not sep:
            raise ValueError(f'overrides are key=value, got {item!r}')
        values[key.strip()] = yaml.safe_load(text)
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
    canvas already.
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
            torch.manual_seed(hash((self.seed, self.epoch, int(index))) & 0x7FFF_FFFF_FFFF_FFFF)
            pixels = self.transform(example['image'])
        return {'pixel_values': pixels, 'labels': example['label']}


def normalisation(model) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Returns the ``(mean, std)`` the model is trained with (the rule evaluation uses too)."""
    from gaussder_hf.input_pipeline import model_normalisation

    return model_normalisation(model)


def make_dataset(cfg: TrainConfig, split, model, train: bool) -> RescaledSplit:
    """Returns ``split`` with the model's normalisation (and the augmentation when training)."""
    mean, std = normalisation(model)
    if cfg.crop_size and len(split):
        width, height = split[0]['image'].size
        if cfg.crop_size > min(width, height):
            raise ValueError(f'crop_size {cfg.crop_size} is larger than the {width}x{height} images of {cfg.dataset}')
    transform = image_transform(cfg, model.in_chans, mean, std, train)
    return RescaledSplit(split, transform, cfg.seed)


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
    """Returns the newest complete checkpoint folder (``checkpoint-<step>``), or None."""
    done = sorted(output_dir.glob('checkpoint-*'), key=lambda p: int(p.name.split('-')[1]))
    return done[-1] if done else None


def save_checkpoint(accelerator, output_dir: Path, step: int, keep: int) -> Path:
    """Saves the full training state; the folder appears under its final name only when complete."""
    final = output_dir / f'checkpoint-{step:08d}'
    partial = output_dir / f'.partial-checkpoint-{step:08d}'
    if accelerator.is_main_process and partial.exists():
        shutil.rmtree(partial)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(partial))
    # Every rank writes its own RNG state into the folder: rename only after all of them finished.
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        (partial / 'trainer_state.json').write_text(json.dumps({'step': step}))
        os.replace(partial, final)  # atomic: a crash before this leaves only the .partial folder
        for old in sorted(output_dir.glob('checkpoint-*'))[:-keep]:
            shutil.rmtree(old)
    accelerator.wait_for_everyone()
    return final


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
    from gaussder_hf.input_pipeline import processor_settings

    if isinstance(model, gaussder_hf.GaussDerResNet):
        summary = (f'Trained with `recipes/train.py` on `{cfg.dataset}`: {cfg.epochs} epochs, batch {cfg.batch_size}, '
                   f'AdamW lr {cfg.lr}, weight decay {cfg.weight_decay}, label smoothing {cfg.label_smoothing}, '
                   f'max_examples {cfg.max_examples}, max_steps {cfg.max_steps}.')
        # The image processor places images where the training data has them (canvas, background).
        return gaussder_hf.save_for_hub(model, folder, evaluation=evaluation, summary=summary,
                                        **processor_settings(cfg.dataset))
    from timm.models import save_for_hf

    # The saved config must carry the normalisation the model was trained with: timm would
    # otherwise write its pretrained statistics adapted to in_chans (for a 1-channel resnet18 the
    # mean of ImageNet's, 0.449 / 0.226), and every later evaluation would see shifted inputs.
    mean, std = normalisation(model)
    save_for_hf(model, str(folder), safe_serialization=True,  # safetensors only, never a pickle
                data_config={'mean': mean, 'std': std})
    return folder


def _sibling(name: str):
    """Imports another recipe of this folder by path (the name 'evaluate' is taken by a PyPI package)."""
    import importlib.util

    module_name = f'gaussder_hf_recipe_{name}'
    if module_name not in sys.modules:
        spec = importlib.util.spec_from_file_location(module_name, Path(__file__).resolve().parent / f'{name}.py')
        module = importlib.util.module_from_spec(spec)
        sys.modules[module_name] = module
        spec.loader.exec_module(module)
    return sys.modules[module_name]


def _evaluation_notes(cfg: TrainConfig) -> str:
    subset = f'the first {cfg.max_examples} test images' if cfg.max_examples else 'the full test set'
    return (f'Measured by `recipes/evaluate.py` on {subset} of `{cfg.dataset}` at each size factor, '
            f'after training at size factor 1 only.')


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
    """Returns the accuracy over a (prepared) loader, gathered over all processes."""
    model.eval()
    correct = total = 0
    for batch in loader:
        prediction = model(batch['pixel_values']).argmax(-1)
        prediction, labels = accelerator.gather_for_metrics((prediction, batch['labels']))
        correct += int((prediction == labels).sum())
        total += len(labels)
    model.train()
    return correct / max(1, total)


def train(cfg: TrainConfig) -> dict:
    """Trains as configured; returns ``{'step', 'val_accuracy', 'model_dir', 'log'}``."""
    from accelerate import Accelerator
    from accelerate.utils import ProjectConfiguration, set_seed
    from datasets import load_dataset
    from tqdm.auto import tqdm

    import gaussder_hf  # noqa: F401  (registers the datasets and models)
    from gaussder_hf.input_pipeline import image_channels

    output_dir = Path(cfg.output_dir)
    accelerator = Accelerator(
        gradient_accumulation_steps=cfg.gradient_accumulation_steps, mixed_precision=cfg.mixed_precision,
        # 'no' leaves the choice to `accelerate launch --dynamo_backend` / `accelerate config`.
        dynamo_backend=None if cfg.dynamo_backend.lower() == 'no' else cfg.dynamo_backend.upper(),
        log_with=cfg.log_with, project_config=ProjectConfiguration(project_dir=str(output_dir)))
    backend = accelerator.state.dynamo_plugin.backend.value.lower()
    if cfg.dynamo_backend.lower() != 'no' and backend != cfg.dynamo_backend.lower():
        # accelerate keeps one state per process and silently ignores a new backend once it exists.
        raise ValueError(f'dynamo_backend={cfg.dynamo_backend!r} cannot take effect: this process already runs '
                         f'accelerate with dynamo backend {backend!r}; train in a fresh process')
    set_seed(cfg.seed)
    if accelerator.is_main_process:
        output_dir.mkdir(parents=True, exist_ok=True)
        (output_dir / 'config.yaml').write_text(yaml.safe_dump(dataclasses.asdict(cfg), sort_keys=False))

    # ---- data
    data = load_dataset(cfg.dataset, data_dir=cfg.data_dir, max_examples=cfg.max_examples, cache_dir=cfg.cache_dir)
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
    step = 0
    checkpoint = newest_checkpoint(output_dir) if cfg.resume else None
    if checkpoint is not None:
        accelerator.load_state(str(checkpoint))
        step = json.loads((checkpoint / 'trainer_state.json').read_text())['step']
        accelerator.print(f'resumed from {checkpoint} at step {step}')
    start_epoch = step // steps_per_epoch

    # ---- loop
    log_path = output_dir / 'log.jsonl'
    progress = tqdm(total=total_steps, initial=step, disable=not accelerator.is_local_main_process, desc='train')
    val_accuracy = None
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
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad()
            if not accelerator.sync_gradients:
                continue
            step += 1
            progress.update(1)
            record = {'step': step, 'epoch': epoch, 'loss': accelerator.gather(loss.detach()).mean().item(),
                      'lr': scheduler.get_last_lr()[0], 'time': time.time()}
            if accelerator.is_main_process:
                with log_path.open('a') as log:
                    log.write(json.dumps(record) + '\n')
            if cfg.log_with:
                accelerator.log({'loss': record['loss'], 'lr': record['lr']}, step=step)
            progress.set_postfix(loss=f'{record["loss"]:.3f}')
            if step % cfg.save_every == 0:
                save_checkpoint(accelerator, output_dir, step, cfg.keep_checkpoints)
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
    if accelerator.is_main_process:
        save_model(unwrapped, model_dir, cfg)
    accelerator.wait_for_everyone()
    evaluation = None
    if cfg.evaluate_at_end:
        evaluate_recipe = _sibling('evaluate')
        results = evaluate_recipe.evaluate_models(
            [f'model={model_dir}'], cfg.dataset, data_dir=cfg.data_dir, max_examples=cfg.max_examples,
            batch_size=cfg.batch_size, out_dir=str(output_dir / 'evaluation'), cache_dir=cfg.cache_dir)
        evaluation = {'dataset': cfg.dataset, 'accuracy': results['model']['accuracy'],
                      'notes': _evaluation_notes(cfg)}
        if accelerator.is_main_process:
            save_model(unwrapped, model_dir, cfg, evaluation)
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
    parser.add_argument('--resume', action='store_true', help='continue from the newest complete checkpoint')
    args, extra = parser.parse_known_args(argv)
    extra_kwargs = {'resume': True} if args.resume else {}
    cfg = load_config(args.config, _flags_to_overrides(extra), **extra_kwargs)
    result = train(cfg)
    print(json.dumps({k: str(v) for k, v in result.items() if k != 'model'}))


if __name__ == '__main__':
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    main()
