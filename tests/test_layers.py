"""Gaussian derivative layers: the efficient form against the dense composed-kernel reference."""
import math

import pytest
import torch

from gaussder_hf.kernels import jet_indices
from gaussder_hf.layers import DSGaussDerConv, GaussDerConv, dense_reference

LAYERS = [GaussDerConv, DSGaussDerConv]


@pytest.mark.parametrize('layer_cls', LAYERS)
@pytest.mark.parametrize('jet_order', [1, 2, 3])
@pytest.mark.parametrize('zero_order', [False, True])
@pytest.mark.parametrize('sigma', [0.5, 1.3, 4.0, 9.0])
def test_efficient_layer_equals_dense_reference(layer_cls, jet_order, zero_order, sigma):
    torch.manual_seed(0)
    layer = layer_cls(3, 4, jet_order=jet_order, zero_order=zero_order, eps=1e-3).double()
    with torch.no_grad():
        if layer.bias is not None:
            layer.bias.uniform_(-1, 1)
    # 11x9: odd, non-square, and narrower than the kernels at sigma = 9 (repeated reflection).
    x = torch.randn(2, 3, 11, 9, dtype=torch.float64)
    torch.testing.assert_close(layer(x, sigma), dense_reference(layer, x, sigma), rtol=1e-10, atol=1e-11)


@pytest.mark.parametrize('spatial_dims, shape', [(1, (2, 3, 17)), (3, (1, 3, 7, 6, 5))])
def test_efficient_layer_equals_dense_reference_in_1d_and_3d(spatial_dims, shape):
    torch.manual_seed(1)
    layer = GaussDerConv(3, 2, jet_order=2, zero_order=True, spatial_dims=spatial_dims).double()
    x = torch.randn(*shape, dtype=torch.float64)
    torch.testing.assert_close(layer(x, 1.6), dense_reference(layer, x, 1.6), rtol=1e-10, atol=1e-11)


def test_layer_is_shared_across_scales_and_only_sigma_changes():
    torch.manual_seed(0)
    layer = GaussDerConv(2, 3)
    x = torch.randn(1, 2, 20, 20)
    a, b = layer(x, 1.0), layer(x, 2.0)
    assert a.shape == b.shape == (1, 3, 20, 20)
    assert not torch.allclose(a, b)
    assert [name for name, _ in layer.named_parameters()] == ['weight', 'bias']


def test_effective_receptive_field_is_the_impulse_response():
    torch.manual_seed(0)
    layer = GaussDerConv(2, 3, jet_order=2, zero_order=True, bias=False).double()
    sigma = 1.7
    kernel = layer.composed_kernel(sigma)
    radius = kernel.shape[-1] // 2
    size = 2 * radius + 9
    for i in range(2):
        impulse = torch.zeros(1, 2, size, size, dtype=torch.float64)
        impulse[0, i, size // 2, size // 2] = 1.0
        response = layer(impulse, sigma)[0]
        # A correlation filter's impulse response is the filter flipped about its centre.
        centre = response[:, size // 2 - radius:size // 2 + radius + 1, size // 2 - radius:size // 2 + radius + 1]
        torch.testing.assert_close(centre, kernel[:, i].flip(-1, -2), rtol=1e-9, atol=1e-12)


def test_first_order_layer_responds_like_scale_normalised_gradient():
    # With a single x-derivative weight, a linear ramp of slope a gives sigma * a everywhere
    # in the interior (central differences are exact on linear functions).
    layer = GaussDerConv(1, 1, jet_order=1, eps=1e-9, bias=False).double()
    with torch.no_grad():
        layer.weight.zero_()
        layer.weight[0, 0, jet_indices(1, 2).index((0, 1))] = 1.0
    ramp = 0.3 * torch.arange(60, dtype=torch.float64).expand(1, 1, 60, 60)
    out = layer(ramp.contiguous(), 2.0)[0, 0, 20:40, 20:40]
    torch.testing.assert_close(out, torch.full_like(out, 0.6))


def test_he_uniform_initialisation():
    torch.manual_seed(0)
    layer = GaussDerConv(64, 128, jet_order=2)
    bound = math.sqrt(6.0 / (64 * 5))
    assert layer.weight.abs().max() <= bound
    assert layer.weight.std().item() == pytest.approx(bound / math.sqrt(3), rel=0.02)
    ds = DSGaussDerConv(64, 128, jet_order=2)
    assert ds.depthwise_weight.std().item() == pytest.approx(math.sqrt(6.0 / 5) / math.sqrt(3), rel=0.05)
    assert ds.pointwise_weight.std().item() == pytest.approx(math.sqrt(6.0 / 64) / math.sqrt(3), rel=0.02)


def test_parameter_counts_of_the_two_forms():
    assert sum(p.numel() for p in GaussDerConv(8, 16, 2, bias=False).parameters()) == 8 * 16 * 5
    assert sum(p.numel() for p in GaussDerConv(8, 16, 2, zero_order=True).parameters()) == 8 * 16 * 6 + 16
    assert sum(p.numel() for p in DSGaussDerConv(8, 16, 3, bias=False).parameters()) == 8 * 9 + 8 * 16


@pytest.mark.parametrize('layer_cls', LAYERS)
def test_every_parameter_gets_a_gradient(layer_cls):
    layer = layer_cls(3, 4)
    x = torch.randn(2, 3, 10, 12, requires_grad=True)
    layer(x, 1.5).square().sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    for name, p in layer.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_bad_layer_arguments_raise_value_errors_naming_the_value():
    with pytest.raises(ValueError, match='jet_order.*4'):
        GaussDerConv(1, 1, jet_order=4)
    with pytest.raises(ValueError, match='jet_order.*0'):
        DSGaussDerConv(1, 1, jet_order=0)
    with pytest.raises(ValueError, match='eps.*1.5'):
        GaussDerConv(1, 1, eps=1.5)
    with pytest.raises(ValueError, match='in_channels.*0'):
        GaussDerConv(0, 1)
    layer = GaussDerConv(3, 2)
    with pytest.raises(ValueError, match='3 input channels, got 1'):
        layer(torch.rand(1, 1, 8, 8), 1.0)
    with pytest.raises(ValueError, match=r'4-D input.*\(3, 8, 8\)'):
        layer(torch.rand(3, 8, 8), 1.0)
    with pytest.raises(ValueError, match='sigma.*-2'):
        layer(torch.rand(1, 3, 8, 8), -2.0)
