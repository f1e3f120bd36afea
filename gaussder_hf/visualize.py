"""Seeing inside a GaussDerResNet (paper §8, App. A.6; Fig. 13 and 23): one call per figure.

* :func:`activation_maps` / :func:`plot_activation_maps`: the final-layer map of a class in
  chosen scale channels, beside the input, with the spatial maximum marked (Fig. 13).
* :func:`receptive_fields` / :func:`plot_receptive_fields`: the composed spatial filter of a GD
  layer in a scale channel, per output and input channel (Fig. 23).
* :func:`plot_scale_space`: the first layer's scale-normalised jet of an input at several sigma.

Scale selection per image and per size factor lives in :mod:`gaussder_hf.analysis`.
"""
from __future__ import annotations

import os
from collections.abc import Sequence

import torch

from .model import GaussDerResNet
from .plotting import pyplot

__all__ = ['activation_maps', 'plot_activation_maps', 'receptive_fields', 'plot_receptive_fields',
           'plot_scale_space']


def _pick_channels(model: GaussDerResNet, channels) -> list[int]:
    count = len(model.initial_scales)
    if channels is None:  # fine, medium, coarse
        return sorted({0, count // 2, count - 1})
    picked = list(channels)
    bad = [c for c in picked if not 0 <= c < count]
    if bad:
        raise ValueError(f'scale channel indices must be in 0..{count - 1}, got {bad}')
    return picked


@torch.no_grad()
def activation_maps(
        model: GaussDerResNet,
        image: torch.Tensor,
        class_index: int | None = None,
        channels: Sequence[int] | None = None,
) -> tuple[int, dict[int, torch.Tensor]]:
    """Returns the class shown and ``{scale channel index: (H, W) final-layer map of that class}``.

    ``image`` is one ``(C, H, W)`` image; ``class_index`` defaults to the predicted class.
    """
    if image.ndim != 3:
        raise ValueError(f'expected one (C, H, W) image, got shape {tuple(image.shape)}')
    x = image.unsqueeze(0)
    if class_index is None:
        class_index = int(model(x).argmax(-1))
    if not 0 <= class_index < model.num_classes:
        raise ValueError(f'class_index must be in 0..{model.num_classes - 1}, got {class_index}')
    maps = {c: model.forward_channel(x, model.initial_scales[c])[0, class_index]
            for c in _pick_channels(model, channels)}
    return class_index, maps


def plot_activation_maps(
        model: GaussDerResNet,
        image: torch.Tensor,
        path: str | os.PathLike,
        class_index: int | None = None,
        channels: Sequence[int] | None = None,
        class_names: Sequence[str] | None = None,
):
    """Writes the input and the class map of each chosen scale channel, maxima marked; returns the figure."""
    class_index, maps = activation_maps(model, image, class_index, channels)
    plt = pyplot()
    fig, axes = plt.subplots(1, len(maps) + 1, figsize=(3.2 * (len(maps) + 1), 3.2), dpi=100, squeeze=False)
    axes = axes[0]
    shown = image.permute(1, 2, 0).squeeze(-1).float()
    axes[0].imshow(shown.numpy(), cmap='gray' if shown.ndim == 2 else None)
    axes[0].set_title('input')
    name = class_names[class_index] if class_names else f'class {class_index}'
    for ax, (channel, activation) in zip(axes[1:], maps.items()):
        picture = ax.imshow(activation.numpy(), cmap='magma')
        row, col = divmod(int(activation.argmax()), activation.shape[-1])
        ax.plot(col, row, marker='+', color='cyan', markersize=12, mew=2)
        ax.set_title(f'{name}, sigma0 = {model.initial_scales[channel]:.3g}')
        fig.colorbar(picture, ax=ax, fraction=0.046)
    for ax in axes:
        ax.set_xticks([]), ax.set_yticks([])
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return fig


@torch.no_grad()
def receptive_fields(model: GaussDerResNet, layer: int, sigma0: float | None = None) -> torch.Tensor:
    """Returns the composed filters of GD layer ``layer`` (1-based) in channel ``sigma0``, ``(C_out, C_in, K, K)``.

    Computed from the learned jet weights and the discrete kernels; it is the layer's impulse
    response. ``sigma0`` defaults to the middle scale channel.
    """
    layers = model.gd_layers()
    if not 1 <= layer <= len(layers):
        raise ValueError(f'layer must be in 1..{len(layers)}, got {layer!r}')
    if sigma0 is None:
        sigma0 = model.initial_scales[len(model.initial_scales) // 2]
    return layers[layer - 1].composed_kernel(model.layer_scale(layer, sigma0))


def plot_receptive_fields(
        model: GaussDerResNet,
        layer: int,
        path: str | os.PathLike,
        sigma0: float | None = None,
        max_outputs: int = 8,
        max_inputs: int = 8,
):
    """Writes a grid of the composed filters (rows: output channels, columns: input channels); returns the figure."""
    if sigma0 is None:
        sigma0 = model.initial_scales[len(model.initial_scales) // 2]
    kernels = receptive_fields(model, layer, sigma0)[:max_outputs, :max_inputs].float()
    rows, cols = kernels.shape[:2]
    plt = pyplot()
    fig, axes = plt.subplots(rows, cols, figsize=(1.2 * cols + 0.6, 1.2 * rows + 0.6), dpi=100, squeeze=False)
    for i in range(rows):
        for j in range(cols):
            kernel = kernels[i, j]
            limit = float(kernel.abs().max()) or 1.0
            axes[i, j].imshow(kernel.numpy(), cmap='RdBu_r', vmin=-limit, vmax=limit)
            axes[i, j].set_xticks([]), axes[i, j].set_yticks([])
    fig.suptitle(f'layer {layer} receptive fields (out x in), scale channel sigma0 = {sigma0:.3g}, '
                 f'sigma = {model.layer_scale(layer, sigma0):.3g}')
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return fig


@torch.no_grad()
def plot_scale_space(
        model: GaussDerResNet,
        image: torch.Tensor,
        path: str | os.PathLike,
        sigmas: Sequence[float] = (1.0, 2.0, 4.0),
        channel: int = 0,
):
    """Writes the first layer's scale-normalised jet at each sigma (rows) per member (columns); returns the figure."""
    if image.ndim != 3 or not 0 <= channel < image.shape[0]:
        raise ValueError(f'expected one (C, H, W) image and a channel in range, got {tuple(image.shape)}, {channel}')
    stem = model.stem_conv
    names = ['L_' + 'x' * alpha[1] + 'y' * alpha[0] for alpha in stem.alphas]  # alpha = (order in y, in x)
    plt = pyplot()
    fig, axes = plt.subplots(len(sigmas), len(names), figsize=(2.2 * len(names), 2.2 * len(sigmas)), dpi=100,
                             squeeze=False)
    for r, sigma in enumerate(sigmas):
        jet = stem.jet(image[channel:channel + 1].unsqueeze(0).float(), sigma)[0, 0]
        for c, (member, alpha) in enumerate(zip(jet, stem.alphas)):
            normalised = member * sigma ** sum(alpha)
            limit = float(normalised.abs().max()) or 1.0  # symmetric: white is zero
            axes[r, c].imshow(normalised.numpy(), cmap='RdBu_r', vmin=-limit, vmax=limit)
            axes[r, c].set_xticks([]), axes[r, c].set_yticks([])
            axes[r, c].set_title(f'{names[c]}, sigma = {sigma:g}', fontsize='small')
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return fig
