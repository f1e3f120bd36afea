"""Scale selection, per-size-factor evaluation and the two figures of the paper's §6."""
import math

import numpy as np
import pytest
import torch
from PIL import Image

from gaussder_hf import GaussDerResNet, geometric_scales
from gaussder_hf.analysis import (
    evaluate,
    plot_scale_generalisation,
    plot_scale_selection,
    scale_selection,
    selection_histogram,
)
from gaussder_hf.kernels import jet_indices

RATIO = 2 ** 0.5


def laplacian_blob_detector(scales) -> GaussDerResNet:
    """A GaussDerResNet that is the classical blob detector: -sigma^2 (L_xx + L_yy), then smoothing.

    The scale-normalised Laplacian of a Gaussian blob of standard deviation s0 is largest at
    sigma = s0 (Lindeberg 1998), so the winning scale channel tracks the blob size.
    """
    model = GaussDerResNet(in_chans=1, num_classes=1, channels=(1,), jet_order=2, zero_order=True,
                           initial_scales=scales, scale_ratio=1.0, eps=1e-4, spatial_pool='max').eval()
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
        stem_alphas = jet_indices(2, 2)
        for alpha in ((2, 0), (0, 2)):
            model.stem_conv.weight[0, 0, stem_alphas.index(alpha)] = -2.0  # c_alpha = 1/2
        model.head_conv.weight[0, 0, jet_indices(2, 2, zero_order=True).index((0, 0))] = 1.0
        for norm in (model.stem_norm, model.head_norm):
            norm.weight.fill_(1.0)
    return model


def blob(sigma, size=129):
    r = torch.arange(size, dtype=torch.float32) - size // 2
    return torch.exp(-(r[:, None] ** 2 + r[None, :] ** 2) / (2 * sigma ** 2))[None, None]


def test_winning_scale_channel_moves_by_one_when_the_blob_is_rescaled_by_the_channel_ratio():
    scales = geometric_scales(1.0, RATIO, 7)  # 1 .. 8
    model = laplacian_blob_detector(scales)
    winners = []
    for k in range(1, 5):  # blobs of sigma sqrt2 .. 4, each the previous one rescaled by the ratio
        selection = scale_selection(model, blob(scales[k]))
        winners.append(int(selection.winner))
        assert selection.margin.item() > 0
    # Each rescaling by the channel ratio moves the winner up by exactly one channel. (The
    # smoothing of the head layer pulls the peak just below sigma = blob size: winner k - 1.)
    assert np.diff(winners).tolist() == [1, 1, 1]
    assert winners[-1] < len(scales) - 1


def test_scale_selection_of_a_random_network_and_evaluate():
    torch.manual_seed(0)
    model = GaussDerResNet(in_chans=1, num_classes=4, channels=(4, 4), initial_scales=(1.0, 1.5, 2.0)).eval()
    x, y = torch.rand(6, 1, 16, 16), torch.tensor([0, 1, 2, 3, 0, 1])
    selection = scale_selection(model, x)
    with torch.no_grad():
        scores = model.forward_scale_channels(x)
    assert torch.equal(selection.prediction, model(x).argmax(-1))
    for b in range(6):
        column = scores[b, :, selection.prediction[b]]
        assert selection.winner[b] == column.argmax()
        assert float(selection.margin[b]) == pytest.approx(float(column.max() - column.sort().values[-2]))
    result = evaluate(model, [(x[:4], y[:4]), (x[4:], y[4:])])
    assert result['count'] == 6 and sum(result['winners']) == 6
    assert result['accuracy'] == pytest.approx(float((selection.prediction == y).float().mean()))
    baseline = evaluate(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(256, 4)), [(x, y)])
    assert baseline['winners'] is None and baseline['count'] == 6
    with pytest.raises(ValueError, match='no examples'):
        evaluate(model, [])
    # The predictions behind the accuracy, in batch order; without scale selection no winners.
    assert result['predictions'] == selection.prediction.tolist()
    plain = evaluate(model, [(x, y)], select_scales=False)
    assert plain['winners'] is None and plain['predictions'] == result['predictions']
    broken = x.clone()
    broken[5, 0, 3, 3] = float('nan')
    with pytest.raises(ValueError, match=r"model 'm' gives non-finite logits \(\d+ values\) on batch 1 of split s1"):
        evaluate(model, [(x[:4], y[:4]), (broken[4:], y[4:])], name="model 'm'", split='s1')


def test_selection_histogram_normalises_per_size_factor():
    factors, shares = selection_histogram({2.0: [0, 1, 3], 0.5: [4, 0, 0]})
    assert factors == [0.5, 2.0]
    np.testing.assert_allclose(shares, [[1.0, 0.0], [0.0, 0.25], [0.0, 0.75]])


def test_figures_are_written(tmp_path):
    curves = {'multi-scale': {2 ** (k / 4): 0.9 - 0.01 * abs(k) for k in range(-4, 5)},
              'single-scale': {2 ** (k / 4): 0.9 - 0.08 * abs(k) for k in range(-4, 5)}}
    plot_scale_generalisation(curves, tmp_path / 'curve.png')
    winners = {2 ** (k / 4): [max(0, 4 - abs(k - j)) for j in range(6)] for k in range(-4, 5)}
    plot_scale_selection(winners, geometric_scales(0.5, math.sqrt(2), 6), tmp_path / 'selection.png')
    for name in ('curve.png', 'selection.png'):
        image = Image.open(tmp_path / name)
        assert image.format == 'PNG' and image.size == (768, 504)
    with pytest.raises(ValueError, match='5 initial scales'):
        plot_scale_selection(winners, (1, 2, 3, 4, 5), tmp_path / 'bad.png')
    with pytest.raises(ValueError, match='at least one curve'):
        plot_scale_generalisation({}, tmp_path / 'none.png')
