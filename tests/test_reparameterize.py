"""Batch normalisation folded into the layers before it: timm's reparameterize_model, the model's own."""
import pytest
import timm
import torch
import torch.nn.functional as F
from timm.utils.model import reparameterize_model

import gaussder_hf  # noqa: F401  (registers the presets with timm)
from gaussder_hf import GaussDerResNetConfig, GaussDerResNetForImageClassification
from gaussder_hf.layers import DSGaussDerConv, GaussDerConv
from gaussder_hf.model import GaussDerResNet


def _trained_statistics(model: torch.nn.Module) -> torch.nn.Module:
    """Gives every batch normalisation running statistics and affine parameters far from their defaults."""
    generator = torch.Generator().manual_seed(0)
    for norm in model.modules():
        if isinstance(norm, torch.nn.BatchNorm2d):
            shape = norm.running_mean.shape
            norm.running_mean.copy_(torch.randn(shape, generator=generator, dtype=norm.running_mean.dtype))
            norm.running_var.copy_(torch.rand(shape, generator=generator, dtype=norm.running_var.dtype) * 3 + 0.1)
            with torch.no_grad():
                norm.weight.copy_(torch.randn(shape, generator=generator) + 1)
                norm.bias.copy_(torch.randn(shape, generator=generator))
    return model.eval()


def _batch_norms(model: torch.nn.Module) -> int:
    return sum(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())


@pytest.mark.parametrize('layer_cls', [GaussDerConv, DSGaussDerConv])
@pytest.mark.parametrize('bias', [False, True])
def test_a_folded_layer_equals_layer_then_batch_norm_in_evaluation(layer_cls, bias):
    torch.manual_seed(0)
    layer = layer_cls(3, 5, bias=bias).double()
    norm = _trained_statistics(torch.nn.BatchNorm2d(5).double())
    x = torch.randn(2, 3, 11, 13, dtype=torch.float64)
    with torch.no_grad():
        # batch norm in evaluation written out: (y - mean) / sqrt(var + eps) * weight + bias
        y = layer(x, 1.5)
        expected = ((y - norm.running_mean.view(-1, 1, 1)) / (norm.running_var.view(-1, 1, 1) + norm.eps).sqrt()
                    * norm.weight.view(-1, 1, 1) + norm.bias.view(-1, 1, 1))
        layer.fold_batch_norm(norm)
        torch.testing.assert_close(layer(x, 1.5), expected, rtol=0, atol=1e-12)
    assert isinstance(layer.bias, torch.nn.Parameter) and 'bias' in dict(layer.named_parameters())


def test_folding_refuses_a_norm_without_statistics_or_of_another_width():
    layer = GaussDerConv(3, 5, bias=False)
    with pytest.raises(ValueError, match='running statistics'):
        layer.fold_batch_norm(torch.nn.BatchNorm2d(5, track_running_stats=False))
    with pytest.raises(ValueError, match='4 features, the layer 5 output channels'):
        layer.fold_batch_norm(torch.nn.BatchNorm2d(4))


@pytest.mark.parametrize('separable_from_block', [None, 2])
def test_timm_reparameterize_model_folds_the_blocks_and_the_model_folds_everything(separable_from_block):
    torch.manual_seed(0)
    # channel changes: projection shortcuts (1x1 convolution + batch norm) are folded too
    model = _trained_statistics(GaussDerResNet(channels=(4, 6, 6, 8), initial_scales=(1.0, 2.0),
                                               separable_from_block=separable_from_block).double())
    x = torch.randn(2, 1, 17, 15, dtype=torch.float64)
    with torch.no_grad():
        expected = model(x)
        expected_maps = model.forward_intermediates(x, intermediates_only=True)
        by_timm = reparameterize_model(model)  # a folded copy; the model itself is left alone
        assert _batch_norms(model) == 2 + 2 * 3 + 2 and _batch_norms(by_timm) == 2  # first and last layer's
        torch.testing.assert_close(by_timm(x), expected, rtol=0, atol=1e-12)
        model.reparameterize()
        assert _batch_norms(model) == 0
        torch.testing.assert_close(model(x), expected, rtol=0, atol=1e-12)
        for got, want in zip(model.forward_intermediates(x, intermediates_only=True), expected_maps):
            torch.testing.assert_close(got, want, rtol=0, atol=1e-12)
        model.reparameterize()  # again: nothing left to fold, nothing changes
        torch.testing.assert_close(model(x), expected, rtol=0, atol=1e-12)


def test_reparameterize_model_folds_everything_in_the_transformers_model():
    config = GaussDerResNetConfig.from_preset('gaussderresnet10_fashionmnist', initial_scales=[1.0])
    torch.manual_seed(0)
    model = _trained_statistics(GaussDerResNetForImageClassification(config))
    x = torch.randn(2, 1, 20, 20)
    with torch.no_grad():
        expected = model(pixel_values=x).logits
        folded = reparameterize_model(model)
        assert _batch_norms(folded) == 0
        torch.testing.assert_close(folded(pixel_values=x).logits, expected, rtol=1e-5, atol=1e-5)


def test_a_folded_preset_keeps_its_predictions_in_float32():
    model = _trained_statistics(timm.create_model('gaussderresnet10_fashionmnist', initial_scales=(1.0, 2.0)))
    x = torch.randn(4, 1, 28, 28, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = F.softmax(model(x), -1)
        model.reparameterize()
        torch.testing.assert_close(F.softmax(model(x), -1), expected, rtol=1e-4, atol=1e-5)
