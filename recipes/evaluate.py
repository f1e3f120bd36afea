"""Scale generalisation of trained models on a rescaled test set: accuracy and scale selection per size factor.

    python recipes/evaluate.py --model checkpoints/gaussderresnet10_fashionmnist --max_examples 100
    accelerate launch recipes/evaluate.py --dataset rescaled_fashion_mnist \\
        --data_dir /usr/share/datasets/fashion-mnist --output_dir evaluation \\
        --model gaussderresnet=local-dir:checkpoints/gaussderresnet18_fashionmnist \\
        --model resnet18=local-dir:checkpoints/resnet18
    python recipes/evaluate.py --model checkpoints/my_model --model resnet18 \\
        --dataset rescaled_fashion_mnist --data_dir /usr/share/datasets/fashion-mnist --max_examples 100

Each ``--model`` is ``[LABEL=]SPEC``, SPEC being anything ``timm.create_model`` takes:
``local-dir:FOLDER`` or ``hf-hub:ORG/NAME`` (loaded with their weights), a folder written by
``gaussder_hf.save_for_hub`` (read as ``local-dir:``), or a registered timm name (random weights
unless ``--pretrained``; a name that is not a GaussDerResNet preset gets the dataset's number of
input channels and classes, so ``resnet18`` is a baseline on 1x72x72 Fashion-MNIST). LABEL names
the model in the table, the figures and the JSON (default: the folder or model name).

Data (rescaled Fashion-MNIST, the default ``--dataset``): ``--data_dir FOLDER`` with the four
official ``.gz`` files; without it, ``$GAUSSDER_HF_FASHION_MNIST_DIR`` or Debian's
``/usr/share/datasets/fashion-mnist`` if they hold them, else the 500 real test images that ship
with the package (test splits only; the run says which it used); ``--download`` fetches the
official files instead. Other datasets are downloaded unless ``--data_dir`` is given.

Every model is tested on the nine splits ``test_s0p500`` ... ``test_s2p000`` (size factors
``2**(k/4)``, k = -4..4). ``--split validation`` uses the validation images rescaled the same way
(``validation_s0p500`` ..., built with the builders' ``rescaled_validation=True``), so that settings
are chosen on scale generalisation without the test images; ``--size_factors 0.5 1`` evaluates
those splits only. Images are never resized: the
networks see the rescaled images as they are, scaled to [0, 1] and normalised with the model's
``pretrained_cfg`` mean and std.
Writes to ``--output_dir`` (main process only; ``--out_dir`` is its deprecated spelling):

- ``evaluation.json``: per model label, ``{'model', 'dataset', 'size_factors', 'num_examples',
  'accuracy', 'winners', 'initial_scales'}``; size factors are keys written with full precision
  (``str(2 ** -0.75) == '0.5946035575013605'``); ``winners`` (how often each scale channel wins
  the scale pooling of the predicted class) and ``initial_scales`` are ``null`` for models that
  are not GaussDerResNets; ``'split': 'validation'`` in entries of a ``--split validation`` run;
  with ``--save_predictions`` also ``predictions``, the predicted class of every image per size
  factor (in split order), so that a later run can be checked image by image;
- ``scale_generalisation.png``: accuracy vs size factor, all models (paper Fig. 7, 8, 10);
- ``scale_selection_<label>.png``: share of wins per scale channel and size factor, one per
  GaussDerResNet (paper Fig. 9, 11).

Under ``accelerate launch`` the test sets are sharded over the processes and the predictions
gathered (``gather_for_metrics`` drops the padding of the last batch), so the numbers are the
same as with one process. The evaluation itself is :mod:`gaussder_hf.analysis`'s
(:func:`~gaussder_hf.analysis.evaluate_size_factors`, :func:`~gaussder_hf.analysis.write_evaluation`),
the one ``recipes/train.py`` runs at the end of training.
"""
from __future__ import annotations

import argparse
import os
import warnings
from pathlib import Path

import datasets
import timm
import torch
import yaml
from accelerate import Accelerator, PartialState
from accelerate.utils import set_seed

import gaussder_hf  # registers the GaussDerResNets with timm and the rescaled datasets with load_dataset
from gaussder_hf.analysis import check_size_factors, evaluate_size_factors, rescaled_test_splits, write_evaluation
from gaussder_hf.data.sample import (
    DATA_DIR_ENV,
    FASHION_MNIST_SAMPLE_SIZE,
    FULL_DATA_HINT,
    DataSource,
    default_data_source,
)
from gaussder_hf.data.sources import FASHION_MNIST_DEBIAN_DIR
from gaussder_hf.input_pipeline import image_channels
from gaussder_hf.rescaling import RESCALED_SPLITS

__all__ = ['ModelSpec', 'parse_model_spec', 'evaluate_models', 'write_evaluation', 'main']

SPEC_HELP = ("[LABEL=]SPEC with SPEC a registered timm name, 'local-dir:FOLDER', 'hf-hub:ORG/NAME' or a folder "
             "written by gaussder_hf.save_for_hub")


# ---- model specs -------------------------------------------------------------------------------

class ModelSpec:
    """A parsed ``--model``: display ``label``, the ``spec`` as given and the ``name`` timm loads."""

    def __init__(self, label: str, spec: str, name: str, from_checkpoint: bool):
        self.label, self.spec, self.name, self.from_checkpoint = label, spec, name, from_checkpoint

    def __repr__(self) -> str:
        return f'ModelSpec(label={self.label!r}, name={self.name!r})'


def parse_model_spec(text: str) -> ModelSpec:
    """Parses ``[LABEL=]SPEC``; raises ValueError for a spec that names no folder and no timm model."""
    label, spec = None, text
    head, sep, tail = text.partition('=')
    if sep and not any(c in head for c in ':/\\'):  # 'label=spec'; a '=' inside a path is not a label
        if not head.strip():
            raise ValueError(f'empty label in model spec {text!r}; expected {SPEC_HELP}')
        label, spec = head.strip(), tail
    if not spec:
        raise ValueError(f'empty model spec {text!r}; expected {SPEC_HELP}')

    if spec.startswith('local-dir:'):
        folder = spec[len('local-dir:'):]
        if not os.path.isdir(folder):
            raise ValueError(f'model spec {text!r}: no such folder {folder!r}')
        name, from_checkpoint = spec, True
    elif spec.startswith('hf-hub:'):
        name, from_checkpoint = spec, True
    elif os.path.isdir(spec):
        folder = spec
        name, from_checkpoint = f'local-dir:{spec}', True
    elif timm.is_model(spec):
        name, from_checkpoint = spec, False
    else:
        looks_like_path = os.sep in spec or '/' in spec or spec.startswith('.')
        raise ValueError(
            f'model spec {text!r}: ' + (f'no such folder {spec!r}' if looks_like_path else
                                        f'unknown model {spec!r} (not a registered timm model)')
            + ("; a label cannot contain '=', ':' or a path separator" if sep else '') + f'; expected {SPEC_HELP}')

    if label is None:
        if spec.startswith('hf-hub:'):
            label = spec.rstrip('/').rsplit('/', 1)[-1].split('@')[0]
        elif from_checkpoint:
            label = Path(folder).resolve().name
        else:
            label = spec
    return ModelSpec(label, spec, name, from_checkpoint)


def _create_model(spec: ModelSpec, in_chans: int, num_classes: int, pretrained: bool) -> torch.nn.Module:
    kwargs = {}
    if not spec.from_checkpoint and spec.name.split('.')[0] not in gaussder_hf.PRESETS:
        kwargs = dict(in_chans=in_chans, num_classes=num_classes)  # e.g. a timm resnet18 baseline
    model = timm.create_model(spec.name, pretrained=pretrained or spec.from_checkpoint, **kwargs)
    model_classes = getattr(model, 'num_classes', num_classes)
    if model_classes != num_classes:
        raise ValueError(f'model {spec.spec!r} has {model_classes} classes but the dataset has {num_classes}')
    return model.eval()


# ---- data --------------------------------------------------------------------------------------

def _load_test_splits(dataset: str, data_dir, max_examples, cache_dir, test_only: bool = False,
                      dataset_args: dict | None = None, split: str = 'test') -> dict[float, datasets.Dataset]:
    if split not in RESCALED_SPLITS:
        raise ValueError(f'split must be one of {RESCALED_SPLITS}, got {split!r}')
    kwargs = dict(dataset_args or {}, cache_dir=cache_dir)
    if split == 'validation':
        if test_only:
            raise ValueError('the validation images are not available: the data holds the test images alone '
                             '(give --data_dir with the full dataset)')
        if not os.path.isdir(dataset):  # an exported folder has the splits it was built with
            kwargs['rescaled_validation'] = True
    if data_dir is not None:
        kwargs['data_dir'] = data_dir
    if max_examples is not None:
        kwargs['max_examples'] = max_examples  # an option of the rescaled builders
    if test_only:
        kwargs['test_only'] = True  # likewise: only the test splits, e.g. from the embedded sample
    try:
        ds = datasets.load_dataset(dataset, **kwargs)
    except (FileNotFoundError, ConnectionError, datasets.exceptions.DatasetNotFoundError) as error:
        raise ValueError(
            f'could not load dataset {dataset!r} ({error}); the rescaled datasets are '
            f'{", ".join(gaussder_hf.data.BUILDERS)}, or give a folder written by `gaussder-hf datasets export`'
        ) from error
    return rescaled_test_splits(ds, dataset, split)


def _dataset_arg(text: str) -> tuple[str, object]:
    """Returns ``(key, value)`` of a ``KEY=VALUE`` builder option, the value read as YAML."""
    key, sep, value = text.partition('=')
    if not sep or not key.isidentifier():
        raise argparse.ArgumentTypeError(f'expected KEY=VALUE, got {text!r}')
    return key, yaml.safe_load(value)


def _dataset_shape(split: datasets.Dataset) -> tuple[int, int]:
    """Returns (input channels, classes) of a split, by the input pipeline's grey-or-RGB rule."""
    in_chans = image_channels(split[0]['image'])
    label = split.features['label']
    num_classes = label.num_classes if hasattr(label, 'num_classes') else int(max(split['label'])) + 1
    return in_chans, num_classes


# ---- evaluation --------------------------------------------------------------------------------

def evaluate_models(
        models: list[str],
        dataset: str,
        data_dir: str | None = None,
        max_examples: int | None = None,
        batch_size: int = 64,
        output_dir: str = 'evaluation',
        cache_dir: str | None = None,
        pretrained: bool = False,
        num_workers: int = 0,
        seed: int = 0,
        save_predictions: bool = False,
        test_only: bool = False,
        dataset_args: dict | None = None,
        out_dir: str | None = None,
        split: str = 'test',
        size_factors: list[float] | None = None,
) -> dict:
    """Evaluates every model on the rescaled test splits of ``dataset``; returns the evaluation.json dict.

    Args:
        models: model specs ``[LABEL=]SPEC`` (see the module docstring).
        dataset: a ``datasets.load_dataset`` name or folder with splits ``test_s0p500`` ... ``test_s2p000``.
        data_dir: folder of the original files (rescaled builders); ``None`` downloads them.
        max_examples: originals per split (quick runs); ``None`` uses all.
        batch_size: images per batch and process.
        output_dir: folder for evaluation.json and the PNGs (written by the main process).
        cache_dir: ``datasets`` cache folder (default: datasets' own).
        pretrained: load the weights of registered timm names (checkpoint folders and ``hf-hub:`` always are).
        num_workers: DataLoader worker processes.
        seed: random seed set before creating each model, so a randomly initialised baseline is
            reproducible (and the same in every process).
        save_predictions: also store every predicted class (``'predictions'``) in the JSON.
        test_only: build only the test splits of a rescaled dataset (all a folder with only the
            official test files, such as :data:`gaussder_hf.data.sample.FASHION_MNIST_SAMPLE_DIR`, holds).
        dataset_args: further options of the dataset's builder, e.g. ``rescaled_images``'s
            ``{'base': folder, 'canvas_size': 72}``.
        out_dir: deprecated spelling of ``output_dir``.
        split: ``'test'``, or ``'validation'`` for the rescaled validation images (choosing settings).
        size_factors: evaluate at these size factors only (each one of the nine); ``None``: all.
    """
    output_dir = _deprecated_out_dir(out_dir, output_dir, default='evaluation')
    if not models:
        raise ValueError('no model given')
    if size_factors is not None:  # fail on a bad size factor before building any data
        size_factors = check_size_factors(size_factors)
    specs = [parse_model_spec(m) for m in models]  # fail on a bad spec before building any data
    labels = [spec.label for spec in specs]
    duplicates = sorted({label for label in labels if labels.count(label) > 1})
    if duplicates:
        raise ValueError(f'duplicate model label(s) {duplicates}: name them with LABEL=SPEC')

    accelerator = Accelerator()
    with accelerator.main_process_first():  # one process builds the dataset cache, the others read it
        splits = _load_test_splits(dataset, data_dir, max_examples, cache_dir, test_only, dataset_args, split)
    in_chans, num_classes = _dataset_shape(splits[1.0])

    results = {}
    for spec in specs:
        set_seed(seed)
        model = _create_model(spec, in_chans, num_classes, pretrained)
        entry = evaluate_size_factors(model, splits, batch_size, num_workers, accelerator, label=spec.label,
                                      size_factors=size_factors)
        predictions = entry.pop('predictions')
        results[spec.label] = {'model': spec.spec, 'dataset': dataset, **entry}
        if split != 'test':
            results[spec.label]['split'] = split  # an entry without 'split' is on the test images
        if save_predictions:
            results[spec.label]['predictions'] = predictions
        del model

    if accelerator.is_main_process:
        write_evaluation(results, output_dir, dataset if split == 'test' else f'{dataset}, {split} images')
    accelerator.wait_for_everyone()
    return results


def _deprecated_out_dir(out_dir: str | None, output_dir: str | None, default: str | None = None) -> str | None:
    """Returns the output folder given as ``output_dir`` or by its deprecated spelling ``out_dir`` (with a warning)."""
    if out_dir is None:
        return output_dir
    if output_dir not in (None, default, out_dir):
        raise ValueError(f'give the output folder once: output_dir={output_dir!r} and its deprecated spelling '
                         f'out_dir={out_dir!r} differ')
    warnings.warn('out_dir (--out_dir) is deprecated; use output_dir (--output_dir), the name every recipe uses',
                  FutureWarning, stacklevel=3)
    return out_dir


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog='\n'.join(__doc__.split('\n')[1:]))
    parser.add_argument('--model', action='append', required=True, help=SPEC_HELP + ' (repeat for several)')
    parser.add_argument('--dataset', default='rescaled_fashion_mnist', help='rescaled dataset name or folder')
    parser.add_argument('--data_dir', '--data-dir',
                        help=f'folder of the original dataset files (default for rescaled_fashion_mnist: '
                             f'${DATA_DIR_ENV} or {FASHION_MNIST_DEBIAN_DIR} if they hold them, else the embedded '
                             f'sample of real test images)')
    parser.add_argument('--download', action='store_true', help='download the official files (needs network)')
    parser.add_argument('--dataset_arg', '--dataset-arg', action='append', default=[], type=_dataset_arg,
                        metavar='KEY=VALUE', help="a builder option (YAML value), e.g. base=my_images/ for "
                        "rescaled_images; repeat for several")
    parser.add_argument('--max_examples', '--max-examples', type=int, help='originals per split (quick runs)')
    parser.add_argument('--batch_size', '--batch-size', type=int, default=64, help='images per batch and process')
    parser.add_argument('--output_dir', '--output-dir', help='folder for evaluation.json and the PNGs '
                        '(default: evaluation)')
    parser.add_argument('--out_dir', '--out-dir', help='deprecated spelling of --output_dir')
    parser.add_argument('--cache_dir', '--cache-dir', help='datasets cache folder')
    parser.add_argument('--pretrained', action='store_true', help='load the weights of registered timm names')
    parser.add_argument('--num_workers', '--num-workers', type=int, default=0, help='DataLoader workers')
    parser.add_argument('--seed', type=int, default=0, help='seed of randomly initialised models')
    parser.add_argument('--split', choices=RESCALED_SPLITS, default='test',
                        help='rescaled images to evaluate on: test (default) or validation (for choosing settings)')
    parser.add_argument('--save_predictions', '--save-predictions', action='store_true',
                        help='store the predicted class of every test image in evaluation.json')
    parser.add_argument('--size_factors', '--size-factors', nargs='+', type=float, metavar='S',
                        help='evaluate at these size factors only, e.g. 0.5 1 (default: all nine)')
    args = parser.parse_args(argv)
    if args.out_dir is not None and args.output_dir not in (None, args.out_dir):
        parser.error(f'--output_dir {args.output_dir!r} and its deprecated spelling --out_dir {args.out_dir!r} '
                     'name different folders: give --output_dir only')
    output_dir = _deprecated_out_dir(args.out_dir, args.output_dir) or 'evaluation'
    if args.download and args.data_dir:
        parser.error('give --data_dir or --download, not both')
    if args.download or args.data_dir:
        source = DataSource(args.data_dir, False, f'data: {args.data_dir or "downloading the official files"}')
    else:
        source = default_data_source(args.dataset)
    if PartialState().is_main_process:
        print(source.description, flush=True)
    evaluate_models(args.model, args.dataset, data_dir=source.data_dir, max_examples=args.max_examples,
                    batch_size=args.batch_size, output_dir=output_dir, cache_dir=args.cache_dir,
                    pretrained=args.pretrained, num_workers=args.num_workers, seed=args.seed,
                    save_predictions=args.save_predictions, test_only=source.test_only,
                    dataset_args=dict(args.dataset_arg), split=args.split, size_factors=args.size_factors)
    if source.is_sample and PartialState().is_main_process:
        print(f'These are the first {args.max_examples or FASHION_MNIST_SAMPLE_SIZE} of the '
              f'{FASHION_MNIST_SAMPLE_SIZE} embedded test images. {FULL_DATA_HINT}')


if __name__ == '__main__':
    main()
