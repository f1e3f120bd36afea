"""Scale generalisation and scale selection: the analyses of the paper's Fig. 7-11 (§6, docs/design.md §6).

The one evaluation core of the package, shared by ``recipes/evaluate.py``, the end-of-training
evaluation of ``recipes/train.py`` and the model cards: which scale channel wins the scale
pooling (:func:`scale_selection`), accuracy, predictions and winner counts over batches
(:func:`evaluate`), the same on every rescaled test split (:func:`evaluate_size_factors`, whose
entry is the ``evaluation.json`` format), and the files and table of an evaluation
(:func:`write_evaluation`: ``evaluation.json``, :func:`plot_scale_generalisation`,
:func:`plot_scale_selection`).
"""
from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .input_pipeline import InputPipeline, model_normalisation
from .model import GaussDerResNet, pool_scales
from .plotting import pyplot
from .rescaling import SIZE_FACTORS, benchmark_size_factor, size_factor_name

__all__ = [
    'ScaleSelection', 'scale_selection', 'evaluate', 'rescaled_test_splits', 'evaluation_transform',
    'check_size_factors',
    'evaluate_size_factors',
    'selection_histogram', 'plot_scale_generalisation', 'plot_scale_selection', 'format_table', 'write_evaluation',
]


@dataclass
class ScaleSelection:
    """Per image: the predicted class, the scale channel that wins the pooling for it, and by how much."""

    prediction: torch.Tensor  # (B,) class index
    winner: torch.Tensor      # (B,) scale channel index with the largest score of the predicted class
    margin: torch.Tensor      # (B,) that score minus the second largest over scale channels (0 if S = 1)
    scores: torch.Tensor      # (B, S, K) per-scale-channel scores


@torch.no_grad()
def scale_selection(model: GaussDerResNet, x: torch.Tensor) -> ScaleSelection:
    """Returns which scale channel wins the scale pooling for the predicted class of each image.

    The model is evaluated as it is (call ``model.eval()`` first for inference behaviour).
    """
    scores = model.forward_scale_channels(x)
    prediction = pool_scales(scores, model.scale_pool).argmax(dim=-1)
    of_prediction = scores.gather(2, prediction.view(-1, 1, 1).expand(-1, scores.shape[1], 1)).squeeze(2)
    top = of_prediction.topk(min(2, scores.shape[1]), dim=1).values
    margin = top[:, 0] - top[:, 1] if top.shape[1] > 1 else torch.zeros_like(top[:, 0])
    return ScaleSelection(prediction, of_prediction.argmax(dim=1), margin, scores)


@torch.no_grad()
def evaluate(
        model: torch.nn.Module,
        batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
        accelerator=None,
        select_scales: bool = True,
        name: str = 'model',
        split: str | None = None,
) -> dict:
    """Returns ``{'accuracy', 'count', 'winners', 'predictions'}`` of ``model`` over ``(images, labels)`` batches.

    Args:
        model: the classifier, evaluated as it is (call ``model.eval()`` first for inference behaviour).
        batches: ``(images, labels)`` pairs.
        accelerator: an ``accelerate.Accelerator`` whose processes share the batches: the
            predictions of all of them are gathered (``gather_for_metrics`` drops the padding of
            the last batch), so every process returns the numbers of one process seeing all batches.
        select_scales: for a GaussDerResNet, count which scale channel wins the scale pooling
            (:func:`scale_selection`); ``False`` calls ``model(images)`` alone (e.g. a model
            wrapped for mixed precision, whose wrapper only ``forward`` passes through).
        name, split: what an error message calls the model and the batches.

    ``winners`` counts how often each scale channel wins (a GaussDerResNet with ``select_scales``
    only; ``None`` otherwise, e.g. for a timm baseline); ``predictions`` lists the predicted class
    of every example in batch order.

    Raises:
        ValueError: no examples, or non-finite scores: argmax would turn NaN into a class and an
            accuracy that means nothing. Under ``accelerator`` every process learns of a
            non-finite batch anywhere, so all of them stop together.
    """
    selecting = select_scales and isinstance(model, GaussDerResNet)
    predictions, targets, winning = [], [], []
    for index, (images, labels) in enumerate(batches):
        if selecting:
            selection = scale_selection(model, images)
            scores, prediction = selection.scores, selection.prediction
        else:
            scores = model(images)
            prediction = scores.argmax(dim=-1)
        _require_finite(scores, accelerator, name, index, split)
        gathered = (prediction, labels, selection.winner) if selecting else (prediction, labels)
        if accelerator is not None:
            gathered = accelerator.gather_for_metrics(gathered)
        predictions.append(gathered[0].cpu())
        targets.append(gathered[1].cpu())
        if selecting:
            winning.append(gathered[2].cpu())
    if not targets or sum(len(t) for t in targets) == 0:
        raise ValueError(f'evaluate got no examples{f" in split {split}" if split else ""}')
    prediction, target = torch.cat(predictions), torch.cat(targets)
    winners = torch.bincount(torch.cat(winning), minlength=len(model.initial_scales)).tolist() if selecting else None
    return dict(accuracy=int((prediction == target).sum()) / len(target), count=len(target), winners=winners,
                predictions=prediction.tolist())


def _require_finite(scores: torch.Tensor, accelerator, name: str, index: int, split: str | None) -> None:
    bad = (~torch.isfinite(scores)).sum().reshape(1)
    if accelerator is not None:
        bad = accelerator.gather(bad)
    bad = int(bad.sum())
    if bad:
        raise ValueError(
            f'{name} gives non-finite logits ({bad} values) on batch {index}{f" of split {split}" if split else ""}: '
            'an accuracy from them would mean nothing; check the inputs (NaN/inf pixels) and the weights')


def rescaled_test_splits(dataset: Mapping, name: str, split: str = 'test') -> dict:
    """Returns ``{size factor: test split}`` of a rescaled ``datasets.DatasetDict``, images left undecoded.

    Raises ValueError naming the missing splits if ``dataset`` lacks one of ``test_s0p500`` ... ``test_s2p000``.
    ``split='validation'`` returns the rescaled validation splits ``validation_s0p500`` ... instead
    (built with the builders' ``rescaled_validation=True``).
    Undecoded: the input pipeline opens each image and refuses one above the pixel limit
    (``PIL.Image.MAX_IMAGE_PIXELS``) before decoding it, where datasets' decoding would only warn.
    """
    import datasets

    names = {s: size_factor_name(s, split) for s in SIZE_FACTORS}
    missing = [n for n in names.values() if n not in dataset]
    if missing:
        hint = ' (build it with rescaled_validation=True)' if split == 'validation' else ''
        raise ValueError(f'dataset {name!r} has no split(s) {missing}: not a rescaled dataset{hint} '
                         f'(splits: {list(dataset)})')
    return {s: dataset[name_s].cast_column('image', datasets.Image(decode=False)) for s, name_s in names.items()}


def evaluation_transform(pipeline: InputPipeline):
    """Returns the ``datasets`` batch transform of evaluation: ``{'image', 'label'}`` -> ``{'pixel_values', 'labels'}``.

    Every image goes through ``pipeline`` (the package's input pipeline: channels, [0, 1],
    normalisation; the test images are on their canvas already), labels become a long tensor.
    """

    def transform(batch: dict) -> dict:
        return {'pixel_values': [pipeline(image) for image in batch['image']],
                'labels': torch.as_tensor(batch['label'], dtype=torch.long)}

    return transform


def check_size_factors(size_factors: Sequence[float] | None) -> list[float]:
    """Returns the members of :data:`SIZE_FACTORS` that ``size_factors`` names, sorted (``None``: all nine).

    Raises ValueError for an empty sequence or a value that is none of them
    (:func:`~gaussder_hf.rescaling.benchmark_size_factor`).
    """
    if size_factors is None:
        return list(SIZE_FACTORS)
    if not size_factors:
        raise ValueError('size_factors is empty: give at least one size factor, or None for all nine')
    return sorted({benchmark_size_factor(s) for s in size_factors})


def evaluate_size_factors(
        model: torch.nn.Module,
        splits: Mapping[float, object],
        batch_size: int = 64,
        num_workers: int = 0,
        accelerator=None,
        label: str = 'model',
        progress: bool = True,
        size_factors: Sequence[float] | None = None,
) -> dict:
    """Evaluates ``model`` on the rescaled test splits; returns its ``evaluation.json`` entry (keys ``str(s)``).

    The entry: ``{'size_factors', 'num_examples', 'accuracy', 'winners', 'initial_scales',
    'predictions'}``, size factors as keys written with full precision (``str(2 ** -0.75)``);
    ``winners`` and ``initial_scales`` are ``None`` for a model that is not a GaussDerResNet.

    Args:
        model: the classifier (put in eval mode here).
        splits: ``{size factor: datasets split}`` (:func:`rescaled_test_splits`), each with
            ``image`` and ``label`` columns. The images are never resized: they are on their
            canvas already, so only the input pipeline's channels, [0, 1] and the model's
            normalisation (:func:`~gaussder_hf.input_pipeline.model_normalisation`, the rule
            training uses) apply.
        batch_size: images per batch and process.
        num_workers: DataLoader worker processes.
        accelerator: shards every split over its processes and gathers the predictions (the
            numbers are those of one process); ``None`` evaluates in this process alone.
        label: the model's name in the progress bar and in error messages.
        progress: show a progress bar (on the local main process).
        size_factors: the size factors to evaluate, each one of :data:`SIZE_FACTORS` (up to
            rounding, :func:`check_size_factors`); ``None``: all nine.
    """
    from tqdm.auto import tqdm

    factors = check_size_factors(size_factors)
    missing = [s for s in factors if s not in splits]
    if missing:
        raise ValueError(f'no test split for size factor(s) {missing} among {sorted(splits)}')

    in_chans = getattr(model, 'in_chans', None) or model.pretrained_cfg['input_size'][0]
    transform = evaluation_transform(InputPipeline(in_chans, *model_normalisation(model, in_chans)))
    is_gaussder = isinstance(model, GaussDerResNet)
    model = model.eval()
    prepared = net = model
    if accelerator is not None:
        prepared = accelerator.prepare(model)
        net = accelerator.unwrap_model(prepared)
    # Scale selection needs the scale channels of the unwrapped network (the same weights);
    # any other model runs as the accelerator prepared it (e.g. under its mixed-precision autocast).
    evaluated = net if is_gaussder else prepared
    show = progress and (accelerator is None or accelerator.is_local_main_process)
    entry = {'size_factors': factors, 'num_examples': {}, 'accuracy': {},
             'winners': {} if is_gaussder else None,
             'initial_scales': list(model.initial_scales) if is_gaussder else None, 'predictions': {}}
    for s in tqdm(factors, desc=label, unit='split', disable=not show):
        loader = torch.utils.data.DataLoader(splits[s].with_transform(transform), batch_size=batch_size,
                                             shuffle=False, num_workers=num_workers)
        if accelerator is not None:
            loader = accelerator.prepare(loader)
        with torch.inference_mode():
            result = evaluate(evaluated, ((b['pixel_values'], b['labels']) for b in loader), accelerator=accelerator,
                              name=f'model {label!r}', split=size_factor_name(s))
        key = str(s)
        entry['num_examples'][key] = result['count']
        entry['accuracy'][key] = result['accuracy']
        entry['predictions'][key] = result['predictions']
        if is_gaussder:
            entry['winners'][key] = result['winners']
    if accelerator is not None:
        accelerator.free_memory(prepared)  # drop the accelerator's references before the next model
    return entry


def selection_histogram(winners: Mapping[float, Sequence[int]]) -> tuple[list[float], np.ndarray]:
    """Returns the size factors (sorted) and the ``(S, F)`` share of wins of each scale channel per size factor."""
    factors = sorted(winners)
    counts = np.array([winners[s] for s in factors], dtype=float).T
    totals = counts.sum(axis=0, keepdims=True)
    return factors, counts / np.where(totals > 0, totals, 1)


def plot_scale_generalisation(
        curves: Mapping[str, Mapping[float, float]],
        path: str | os.PathLike,
        title: str = 'Scale generalisation',
) -> None:
    """Writes a PNG of accuracy vs size factor (log2 axis), one line per model (Fig. 7, 8, 10).

    ``curves`` maps a model name to ``{size_factor: accuracy in [0, 1]}``.
    """
    if not curves:
        raise ValueError('plot_scale_generalisation needs at least one curve')
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=120)
    factors = sorted({s for curve in curves.values() for s in curve})
    for name, curve in curves.items():
        xs = sorted(curve)
        ax.plot(xs, [100 * curve[s] for s in xs], marker='o', label=name)
    ax.set_xscale('log', base=2)
    ax.set_xticks(factors)
    ax.set_xticklabels([f'{s:.3g}' for s in factors])
    ax.minorticks_off()
    ax.set_xlabel('size factor s (training at s = 1)')
    ax.set_ylabel('test accuracy (%)')
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend(loc='lower center', fontsize='small')
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def plot_scale_selection(
        winners: Mapping[float, Sequence[int]],
        initial_scales: Sequence[float],
        path: str | os.PathLike,
        title: str = 'Scale selection',
) -> None:
    """Writes a PNG heat map: share of images per size factor whose prediction each scale channel wins (Fig. 9, 11)."""
    factors, shares = selection_histogram(winners)
    if shares.shape[0] != len(initial_scales):
        raise ValueError(f'{shares.shape[0]} scale channels counted but {len(initial_scales)} initial scales given')
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=120)
    image = ax.imshow(shares, origin='lower', aspect='auto', cmap='viridis', vmin=0, vmax=1)
    ax.set_xticks(range(len(factors)))
    ax.set_xticklabels([f'{s:.3g}' for s in factors])
    ax.set_yticks(range(len(initial_scales)))
    ax.set_yticklabels([f'{s:.3g}' for s in initial_scales])
    ax.set_xlabel('size factor s')
    ax.set_ylabel('scale channel (initial scale sigma0)')
    ax.set_title(title)
    fig.colorbar(image, ax=ax, label='share of images')
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)



def _file_label(label: str) -> str:
    return re.sub(r'[^A-Za-z0-9._-]+', '_', label).strip('_') or 'model'


def format_table(results: Mapping[str, Mapping]) -> str:
    """Returns the accuracy table of an evaluation: one row per size factor, one column per model label."""
    labels = list(results)
    widths = [max(len(label), 7) for label in labels]
    lines = ['size factor | ' + ' | '.join(label.rjust(w) for label, w in zip(labels, widths)),
             '-' * 11 + '-+-' + '-+-'.join('-' * w for w in widths)]
    factors = sorted({float(s) for r in results.values() for s in r['accuracy']})
    for s in factors:
        cells = [(f'{100 * results[label]["accuracy"][str(s)]:6.2f}%' if str(s) in results[label]['accuracy']
                  else '-').rjust(w) for label, w in zip(labels, widths)]
        lines.append(f'{s:11.3f} | ' + ' | '.join(cells))
    return '\n'.join(lines)


def write_evaluation(results: Mapping[str, Mapping], output_dir: str | os.PathLike, dataset: str) -> Path:
    """Writes ``evaluation.json``, the figures and prints the table; returns the folder.

    ``results`` maps a model label to its entry (:func:`evaluate_size_factors` plus ``'model'``
    and ``'dataset'``). Figures: ``scale_generalisation.png`` (all models, Fig. 7, 8, 10) and
    ``scale_selection_<label>.png`` per GaussDerResNet (Fig. 9, 11).
    """
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / 'evaluation.json').write_text(json.dumps(results, indent=2))
    curves = {label: {float(s): a for s, a in r['accuracy'].items()} for label, r in results.items()}
    plot_scale_generalisation(curves, out / 'scale_generalisation.png', title=f'Scale generalisation: {dataset}')
    for label, r in results.items():
        if r['winners'] is not None:
            plot_scale_selection({float(s): w for s, w in r['winners'].items()}, r['initial_scales'],
                                 out / f'scale_selection_{_file_label(label)}.png',
                                 title=f'Scale selection: {label}')
    print(format_table(results))
    print(f'wrote {out / "evaluation.json"} and the figures to {out}/')
    return out
