"""GaussDerResNet: structure (eq. 28-29), selection and pooling (eq. 38-39, 44-46), transfer, API."""
import math

import pytest
import torch

import gaussder_hf
from gaussder_hf import GaussDerResNet, geometric_scales, pool_scales, spatial_select, transfer_scales
from gaussder_hf.layers import DSGaussDerConv, GaussDerConv


def tiny(**kwargs):
    torch.manual_seed(0)
    args = dict(in_chans=2, num_classes=5, channels=(4, 4, 6), initial_scales=(0.8, 1.6), scale_ratio=1.2)
    args.update(kwargs)
    return GaussDerResNet(**args)


def test_paper_network_has_18_layers_8_blocks_and_scales_of_eq_29():
    model = gaussder_hf.create_gaussderresnet('gaussderresnet18_fashionmnist')
    assert model.num_layers == 18 and len(model.blocks) == 8
    r = model.scale_ratio
    # k_eff = floor(k / 2) + 1 gives 1, 2, 2, 3, 3, ..., 9, 9, 10 for k = 1..18 (eq. 28).
    k_eff = [1] + [b + 1 for b in range(1, 9) for _ in range(2)] + [10]
    for k in range(1, 19):
        assert model.layer_scale(k, 1.5) == pytest.approx(1.5 * r ** (k_eff[k - 1] - 1))
    gd_layers = [m for m in model.modules() if isinstance(m, (GaussDerConv, DSGaussDerConv))]
    assert len(gd_layers) == 18
    assert not model.stem_conv.zero_order  # the first layer never has the zero-order term


def test_ds_preset_uses_separable_layers_in_blocks_5_to_8_only():
    model = gaussder_hf.create_gaussderresnet('dsgaussderresnet18_stl10')
    kinds = [type(b.conv1) for b in model.blocks]
    assert kinds == [GaussDerConv] * 4 + [DSGaussDerConv] * 4
    assert isinstance(model.stem_conv, GaussDerConv) and isinstance(model.head_conv, GaussDerConv)
    assert model.head_conv.zero_order and model.blocks[0].conv1.zero_order


@pytest.mark.parametrize('size', [(72, 72), (19, 30), (8, 8), (1, 5)])
def test_any_input_size_works(size):
    model = tiny(initial_scales=(1.0, 4.0), scale_ratio=2.0).eval()
    with torch.no_grad():
        out = model(torch.rand(2, 2, *size))
    assert out.shape == (2, 5) and torch.isfinite(out).all()


def test_forward_scale_channels_and_pooling():
    model = tiny(initial_scales=(0.7, 1.0, 1.4)).eval()
    x = torch.rand(3, 2, 17, 16)
    with torch.no_grad():
        per_channel = model.forward_scale_channels(x)
        assert per_channel.shape == (3, 3, 5)
        for s, sigma0 in enumerate(model.initial_scales):
            maps = model.forward_channel(x, sigma0)
            assert maps.shape == (3, 5, 17, 16)
            # central 2x2 along the even axis (16) and the central row along the odd one (17)
            torch.testing.assert_close(per_channel[:, s], maps[:, :, 8, 7:9].mean(-1))
        torch.testing.assert_close(model(x), per_channel.amax(1))


def test_spatial_selection():
    maps = torch.arange(2 * 3 * 4 * 5, dtype=torch.float32).view(2, 3, 4, 5)
    torch.testing.assert_close(spatial_select(maps, 'max'), maps[:, :, -1, -1])
    torch.testing.assert_close(spatial_select(maps, 'center'), maps[:, :, 1:3, 2].mean(-1))
    odd = torch.rand(1, 2, 5, 7)
    torch.testing.assert_close(spatial_select(odd, 'center'), odd[:, :, 2, 3])
    with pytest.raises(ValueError, match="'mean'"):
        spatial_select(maps, 'mean')


def test_scale_pooling_modes():
    scores = torch.tensor([[[1.0, -2.0], [3.0, 0.0], [2.0, 4.0]]])
    torch.testing.assert_close(pool_scales(scores, 'max'), torch.tensor([[3.0, 4.0]]))
    torch.testing.assert_close(pool_scales(scores, 'avg'), torch.tensor([[2.0, 2.0 / 3]]))
    expected = torch.log(torch.exp(scores).mean(1))
    torch.testing.assert_close(pool_scales(scores, 'logsumexp'), expected)
    agree = torch.full((2, 4, 3), 1.5)
    torch.testing.assert_close(pool_scales(agree, 'logsumexp'), torch.full((2, 3), 1.5))
    with pytest.raises(ValueError, match="'median'"):
        pool_scales(scores, 'median')


def test_scale_channel_dropout_only_in_training():
    model = tiny(scale_dropout=0.5)
    x = torch.rand(4, 2, 12, 12)
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(x), model(x))
    model.train()
    torch.manual_seed(0)
    with torch.no_grad():
        a = model(x)
        torch.manual_seed(1)
        b = model(x)
    assert not torch.allclose(a, b)


def test_single_scale_channel_network():
    model = tiny(initial_scales=1.0).eval()
    assert model.initial_scales == (1.0,)
    x = torch.rand(2, 2, 15, 15)
    with torch.no_grad():
        torch.testing.assert_close(model(x), spatial_select(model.forward_channel(x, 1.0), 'center'))


def test_every_parameter_gets_a_gradient_for_every_preset_family():
    for name in ['gaussderresnet18_fashionmnist', 'dsgaussderresnet18_stl10']:
        torch.manual_seed(0)
        model = gaussder_hf.create_gaussderresnet(name, initial_scales=(1.0, 1.41))
        x = torch.rand(2, model.in_chans, 12, 12)
        model(x).logsumexp(-1).sum().backward()
        missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
        assert not missing, (name, missing)


def test_gradient_checkpointing_gives_the_same_output_and_gradients():
    x = torch.rand(2, 2, 14, 14)
    grads = []
    for enable in (False, True):
        model = tiny()
        model.set_grad_checkpointing(enable)
        out = model(x)
        out.square().sum().backward()
        grads.append((out.detach(), [p.grad.clone() for p in model.parameters()]))
    torch.testing.assert_close(grads[0][0], grads[1][0])
    for a, b in zip(grads[0][1], grads[1][1]):
        torch.testing.assert_close(a, b)


def test_transfer_to_another_scale_grid_keeps_weights_and_leaves_the_original():
    single = tiny(initial_scales=1.0).eval()
    dense = geometric_scales(0.5, 2 ** 0.25, 11) + (4.0,)
    multi = transfer_scales(single, dense)
    assert single.initial_scales == (1.0,)
    assert multi.initial_scales == pytest.approx(dense)
    assert multi.initial_scales[-1] == 4.0 and multi.initial_scales[4] == pytest.approx(1.0)
    for (n, a), (_, b) in zip(single.state_dict().items(), multi.state_dict().items()):
        assert torch.equal(a, b), n
    x = torch.rand(2, 2, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(multi.forward_scale_channels(x)[:, 4], single.forward_scale_channels(x)[:, 0])
    # The copies are independent: training one does not change the other.
    with torch.no_grad():
        multi.head_conv.weight.add_(1.0)
    assert not torch.equal(multi.head_conv.weight, single.head_conv.weight)
    assert single.with_initial_scales((1.0, 2.0)).initial_scales == (1.0, 2.0)


def test_default_grid_is_the_papers_six_channels():
    expected = (0.5, 1 / math.sqrt(2), 1.0, math.sqrt(2), 2.0, 2 * math.sqrt(2))
    assert gaussder_hf.DEFAULT_INITIAL_SCALES == pytest.approx(expected)


@pytest.mark.parametrize('kwargs, pattern', [
    (dict(spatial_pool='mean'), "spatial_pool.*'mean'"),
    (dict(scale_pool='median'), "scale_pool.*'median'"),
    (dict(jet_order=4), 'jet_order.*4'),
    (dict(eps=0.0), 'eps.*0.0'),
    (dict(initial_scales=(1.0, -1.0)), 'initial scale.*-1.0'),
    (dict(initial_scales=()), 'initial_scales'),
    (dict(scale_ratio=0.0), 'sigma.*0.0'),
    (dict(scale_dropout=1.0), 'scale_dropout.*1.0'),
    (dict(channels=(4, 0)), r'channels.*\(4, 0\)'),
    (dict(separable_from_block=7), 'separable_from_block.*7'),
])
def test_bad_model_arguments_raise_value_errors(kwargs, pattern):
    with pytest.raises(ValueError, match=pattern):
        tiny(**kwargs)


def test_bad_inputs_raise_value_errors():
    model = tiny()
    with pytest.raises(ValueError, match='2 input channels, got 3'):
        model(torch.rand(1, 3, 8, 8))
    with pytest.raises(ValueError, match=r'4-D input.*\(2, 8, 8\)'):
        model(torch.rand(2, 8, 8))
    with pytest.raises(ValueError, match="unknown GaussDerResNet argument.*'scale_pol'"):
        gaussder_hf.create_gaussderresnet('gaussderresnet18_cifar10', scale_pol='max')
    with pytest.raises(ValueError, match="unknown preset 'resnet18'"):
        gaussder_hf.create_gaussderresnet('resnet18')
