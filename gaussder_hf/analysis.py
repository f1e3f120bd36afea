"""Scale generalisation and scale selection: the analyses of the paper's Fig. 7-11 (§6, docs/design.md §6).

One implementation shared by the evaluation recipe, the visualisation recipe and the model
cards: which scale channel wins the scale pooling (:func:`scale_selection`), accuracy and
selection counts per size factor (:func:`evaluate`), and the two figures
(:func:`plot_scale_generalisation`, :func:`plot_scale_selection`).
"""
from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from .model import GaussDerResNet, pool_scales

__all__ = [
    'ScaleSelection', 'scale_selection', 'evaluate', 'selection_histogram',
    'plot_scale_generalisation', 'plot_scale_selection',
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
def evaluate(model: torch.nn.Module, batches: Iterable[tuple[torch.Tensor, torch.Tensor]]) -> dict:
    """Returns ``{'accuracy', 'count', 'winners'}`` of ``model`` over ``(images, labels)`` batches.

    ``winners`` counts how often each scale channel wins (a GaussDerResNet only; ``None`` for
    any other classifier, e.g. a timm baseline).
    """
    correct = total = 0
    winners = None
    for images, labels in batches:
        if isinstance(model, GaussDerResNet):
            selection = scale_selection(model, images)
            prediction = selection.prediction
            counts = torch.bincount(selection.winner, minlength=len(model.initial_scales))
            winners = counts if winners is None else winners + counts
        else:
            prediction = model(images).argmax(dim=-1)
        correct += int((prediction == labels).sum())
        total += len(labels)
    if total == 0:
        raise ValueError('evaluate got no examples')
    return dict(accuracy=correct / total, count=total, winners=None if winners is None else winners.tolist())


def selection_histogram(winners: Mapping[float, Sequence[int]]) -> tuple[list[float], np.ndarray]:
    """Returns the size factors (sorted) and the ``(S, F)`` share of wins of each scale channel per size factor."""
    factors = sorted(winners)
    counts = np.array([winners[s] for s in factors], dtype=float).T
    totals = counts.sum(axis=0, keepdims=True)
    return factors, counts / np.where(totals > 0, totals, 1)


def _pyplot():
    import matplotlib

    matplotlib.use('Agg')  # files only; never a window
    import matplotlib.pyplot as plt

    return plt


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
    plt = _pyplot()
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
    plt = _pyplot()
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

