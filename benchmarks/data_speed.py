"""Does the training data pipeline keep up with training? Loader images/s vs training images/s.

The loader is the training recipe's own (``recipes/train.py``: the ``datasets`` split, PIL
decode, the torchvision v2 pipeline with augmentation and normalisation, ``DataLoader`` with
``num_workers`` from the config), iterated without a model. Training is the same recipe's
model and optimiser taking steps on batches drawn beforehand (so that it does not wait for the
loader). Both are measured in one run with the same config; the ratio loader / training says
how much headroom the loader has (> 1: training never waits for data).

Building the rescaled copies themselves is measured by ``benchmarks/rescale_speed.py``.

Run: ``python benchmarks/data_speed.py --config recipes/configs/rescaled_fashion_mnist_cpu.yaml``
"""
from __future__ import annotations

import argparse
import itertools
import sys
from pathlib import Path

import common
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / 'recipes'))
import train as recipe  # noqa: E402  (the training recipe's own data pipeline and model)


def _parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--config', default='recipes/configs/rescaled_fashion_mnist_cpu.yaml')
    parser.add_argument('--batches', type=int, default=20, help='loader batches to time')
    parser.add_argument('--steps', type=int, default=5, help='training steps to time (after one warm-up)')
    common.add_arguments(parser, device=None, repeats=None)  # the recipe's CPU loader and model
    parser.add_argument('overrides', nargs='*', help='config overrides, key=value')
    return parser.parse_args(argv)


def main(argv=None) -> None:
    from datasets import load_dataset

    import gaussder_hf  # noqa: F401  (registers the datasets and models)
    from gaussder_hf.input_pipeline import image_channels

    args = _parse_args(argv)
    common.setup(args)
    cfg = recipe.load_config(args.config, args.overrides)
    data = load_dataset(cfg.dataset, data_dir=cfg.data_dir, cache_dir=cfg.cache_dir)
    split = data['train']
    num_classes = split.features['label'].num_classes
    in_chans = image_channels(split[0]['image'])  # the input pipeline's grey-or-RGB rule
    model = recipe.build_model(cfg, num_classes, in_chans)
    dataset = recipe.make_dataset(cfg, split, model, train=True)

    loader = iter(recipe.epoch_loader(cfg, dataset, epoch=0))
    next(loader)  # worker start-up is not steady-state throughput
    batches = []
    seconds = common.time_call(lambda: batches.extend(itertools.islice(loader, args.batches)))
    loader_rate = len(batches) * cfg.batch_size / seconds

    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    model.train()

    def step(batch):
        optimizer.zero_grad(set_to_none=True)
        F.cross_entropy(model(batch['pixel_values']), batch['labels']).backward()
        optimizer.step()

    step(batches[0])  # warm-up
    timed = list(itertools.islice(itertools.cycle(batches), args.steps))
    seconds = common.time_call(lambda: [step(batch) for batch in timed])
    train_rate = args.steps * cfg.batch_size / seconds

    shape = tuple(batches[0]['pixel_values'].shape[1:])
    print(f'torch {torch.__version__}, {torch.get_num_threads()} threads; {args.config}: {cfg.model} '
          f'{cfg.model_args}, batch {cfg.batch_size}, input {shape}, num_workers {cfg.num_workers}')
    print(f'  loader   {loader_rate:9.1f} img/s  ({args.batches} batches)')
    print(f'  training {train_rate:9.1f} img/s  ({args.steps} steps)')
    print(f'  loader / training = {loader_rate / train_rate:.1f}x')


if __name__ == '__main__':
    main()
