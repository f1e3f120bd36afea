"""GaussDerResNet: structure (eq. 28-29), selection and pooling (eq. 38-39, 44-46), transfer, API."""
import math

import pytest
import torch

import gaussder_hf
from gaussder_hf import GaussDerResNet, geometric_scales, pool_scales, spatial_select, transfer_scales
from gaussder_hf.layers import DSGaussDerConv, GaussDerConv
from gaussder_hf.model import GaussDerBlock, ShortcutConv, scale_channel_keep_mask


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
    dense = geometric_scales(2 ** -1.5, 2 ** 0.25, 11) + (2 * math.sqrt(2),)  # App. A.5 with the boundary channel
    multi = transfer_scales(single, dense)
    assert single.initial_scales == (1.0,)
    assert multi.initial_scales == pytest.approx(dense)
    assert multi.initial_scales[-1] == 2 * math.sqrt(2) and multi.initial_scales[6] == pytest.approx(1.0)
    for (n, a), (_, b) in zip(single.state_dict().items(), multi.state_dict().items()):
        assert torch.equal(a, b), n
    x = torch.rand(2, 2, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(multi.forward_scale_channels(x)[:, 6], single.forward_scale_channels(x)[:, 0])
    # The copies are independent: training one does not change the other.
    with torch.no_grad():
        multi.head_conv.weight.add_(1.0)
    assert not torch.equal(multi.head_conv.weight, single.head_conv.weight)
    assert single.with_initial_scales((1.0, 2.0)).initial_scales == (1.0, 2.0)


def test_default_grid_is_the_papers_six_channels():
    # Six channels, ratio sqrt2, covering the size factors 1/2 ... 2 plus one boundary channel below 1/2.
    expected = (1 / (2 * math.sqrt(2)), 0.5, 1 / math.sqrt(2), 1.0, math.sqrt(2), 2.0)
    assert gaussder_hf.DEFAULT_INITIAL_SCALES == pytest.approx(expected, rel=1e-15)


def _scores(batch=64, channels=6, classes=5, seed=0):
    generator = torch.Generator().manual_seed(seed)
    # All negative: under max pooling a score set to 0 would beat every one of them.
    return -0.5 - torch.randn(batch, channels, classes, generator=generator).abs()


def test_masked_scale_pooling_equals_pooling_the_kept_channels_alone():
    scores = _scores()
    keep = scale_channel_keep_mask(scores.shape[0], scores.shape[1], 0.5, generator=torch.Generator().manual_seed(1))
    assert keep.any(dim=1).all() and not keep.all()
    for mode in ('max', 'logsumexp', 'avg'):
        pooled = pool_scales(scores, mode, keep)
        for b in range(scores.shape[0]):
            kept = scores[b, keep[b]]  # (S_kept, K): the kept channels as a network of their own
            expected = {'max': kept.max(0).values, 'avg': kept.mean(0),
                        'logsumexp': torch.log(torch.exp(kept.double()).mean(0)).float()}[mode]
            torch.testing.assert_close(pooled[b], expected, msg=f'{mode}, sample {b}')
    with pytest.raises(ValueError, match='at least one scale channel'):
        pool_scales(scores, 'max', torch.zeros(scores.shape[:2], dtype=torch.bool))
    with pytest.raises(ValueError, match='boolean mask of shape'):
        pool_scales(scores, 'max', torch.ones(scores.shape[:2]))


def test_keep_mask_drops_at_rate_p_and_always_keeps_a_channel():
    generator = torch.Generator().manual_seed(0)
    keep = scale_channel_keep_mask(20_000, 6, 0.3, generator=generator)
    assert keep.any(dim=1).all()
    # Binomial: the drop rate is 0.3 (less at most 0.3**6 for the rescued rows); 3 standard errors.
    assert abs((~keep).float().mean().item() - 0.3) < 3 * math.sqrt(0.3 * 0.7 / keep.numel()) + 0.3 ** 6
    everything = scale_channel_keep_mask(1_000, 3, 0.99, generator=generator)
    assert (everything.sum(dim=1) >= 1).all() and (everything.sum(dim=1) == 1).float().mean() > 0.9


@pytest.mark.parametrize('scale_pool', ['max', 'logsumexp', 'avg'])
def test_channel_dropout_pools_only_the_kept_channels_of_the_network(scale_pool, monkeypatch):
    model = tiny(initial_scales=(0.7, 1.0, 1.4, 2.0), scale_dropout=0.5, scale_dropout_mode='channel',
                 scale_pool=scale_pool).train()
    x = torch.rand(8, 2, 12, 12)
    drawn = []

    def recording(*args, **kwargs):
        drawn.append(scale_channel_keep_mask(*args, **kwargs))
        return drawn[-1]

    monkeypatch.setattr(gaussder_hf.model, 'scale_channel_keep_mask', recording)
    with torch.no_grad():
        torch.manual_seed(0)
        pooled = model(x)
        torch.manual_seed(0)
        per_channel = model.forward_scale_channels(x)  # the same BN batch statistics, no dropout inside
    (keep,) = drawn
    assert not keep.all()
    for b in range(x.shape[0]):
        kept = per_channel[b, keep[b]]
        alone = {'max': kept.max(0).values, 'avg': kept.mean(0),
                 'logsumexp': torch.logsumexp(kept, 0) - math.log(kept.shape[0])}[scale_pool]
        torch.testing.assert_close(pooled[b], alone)
    if scale_pool == 'max':  # a dropped channel never wins, even where every kept score is below it
        dropped_max = per_channel.masked_fill(keep[..., None], -math.inf).amax(1)
        assert (pooled < dropped_max).any()


def test_score_dropout_can_let_a_dropped_zero_win_the_max_but_channel_dropout_cannot():
    scores = _scores()
    torch.manual_seed(0)
    dropped = torch.nn.Dropout(0.5).train()(scores)
    assert (pool_scales(dropped, 'max') == 0).any()  # the reading channel dropout avoids
    keep = scale_channel_keep_mask(scores.shape[0], scores.shape[1], 0.5, generator=torch.Generator().manual_seed(0))
    assert (pool_scales(scores, 'max', keep) < 0).all()


@pytest.mark.parametrize('mode', ['score', 'channel'])
def test_scale_channel_dropout_changes_nothing_in_eval_mode(mode):
    x = torch.rand(4, 2, 12, 12)
    plain = tiny(scale_dropout=0.0).eval()
    dropped = tiny(scale_dropout=0.5, scale_dropout_mode=mode).eval()  # the same seed: the same weights
    with torch.no_grad():
        torch.testing.assert_close(dropped(x), plain(x), rtol=0, atol=0)


def test_channel_dropout_mode_goes_through_the_transformers_config_and_back():
    from gaussder_hf.hub import config_from_model

    model = tiny(scale_dropout=0.3, scale_dropout_mode='channel')
    config = config_from_model(model)
    assert config.scale_dropout_mode == 'channel' and config.model_args()['scale_dropout_mode'] == 'channel'
    assert config.to_dict()['model_args']['scale_dropout_mode'] == 'channel'
    assert GaussDerResNet(**config.model_args()).scale_dropout_mode == 'channel'
    with pytest.raises(ValueError, match="scale_dropout_mode must be one of .*'sample'"):
        gaussder_hf.GaussDerResNetConfig(scale_dropout_mode='sample')


def test_shortcut_projections_are_he_uniform():
    torch.manual_seed(0)
    model = tiny(channels=(64, 64, 256, 128))
    shortcuts = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert len(shortcuts) == 2 and all(isinstance(m, ShortcutConv) for m in shortcuts)
    for conv in shortcuts:
        fan_in = conv.in_channels  # 1x1 kernel
        bound = math.sqrt(6.0 / fan_in)  # He uniform: variance 2 / fan_in = bound**2 / 3
        weight = conv.weight.detach()
        assert weight.abs().max() <= bound
        # The draws fill the interval: PyTorch's default (bound 1/sqrt(fan_in)) would reach 41% of it.
        assert weight.abs().max() > 0.95 * bound
        assert weight.var().item() == pytest.approx(2.0 / fan_in, rel=0.1)
    # The earlier initialisation is one call away.
    torch.nn.Conv2d.reset_parameters(shortcuts[0])
    assert shortcuts[0].weight.abs().max() <= 1 / math.sqrt(shortcuts[0].in_channels)


def test_transformers_initialisation_keeps_he_uniform_shortcuts():
    config = gaussder_hf.GaussDerResNetConfig.from_preset(
        'gaussderresnet10_fashionmnist', channels=[64, 256], initial_scales=[1.0])
    torch.manual_seed(0)
    model = gaussder_hf.GaussDerResNetForImageClassification(config)
    conv = model.gaussderresnet.blocks[0].shortcut[0]
    assert conv.weight.abs().max() > 0.95 * math.sqrt(6.0 / 64)


@pytest.mark.parametrize('kwargs, pattern', [
    (dict(spatial_pool='mean'), "spatial_pool.*'mean'"),
    (dict(scale_pool='median'), "scale_pool.*'median'"),
    (dict(jet_order=4), 'jet_order.*4'),
    (dict(eps=0.0), 'eps.*0.0'),
    (dict(initial_scales=(1.0, -1.0)), 'initial scale.*-1.0'),
    (dict(initial_scales=()), 'initial_scales'),
    (dict(scale_ratio=0.0), 'scale_ratio.*0.0'),
    (dict(scale_dropout=1.0), 'scale_dropout.*1.0'),
    (dict(scale_dropout_mode='sample'), "scale_dropout_mode.*'sample'"),
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


@pytest.mark.parametrize('in_channels', [4, 3])  # identity skip, projection skip
@pytest.mark.parametrize('training', [True, False])
def test_block_with_in_place_relu_and_sum_equals_eq_32_written_out_with_gradients(in_channels, training):
    # relu(bn2(GD2(relu(bn1(GD1(x))))) + skip) out of place, through the block's own modules: the
    # in-place ReLUs and sum must leave the output and every gradient as they were.
    torch.manual_seed(0)
    block = GaussDerBlock(in_channels, 4, dtype=torch.float64).train(training)
    x = torch.randn(3, in_channels, 11, 10, dtype=torch.float64)
    probe = torch.randn(3, 4, 11, 10, dtype=torch.float64)

    def written_out(t):
        skip = t if block.shortcut is None else block.shortcut(t)
        h = torch.relu(block.bn1(block.conv1(t, 1.3)))
        return torch.relu(block.bn2(block.conv2(h, 1.3)) + skip)

    results = []
    for forward in (block, lambda t, s: written_out(t)):
        leaf = x.clone().requires_grad_()
        out = forward(leaf, 1.3)
        grads = torch.autograd.grad((out * probe).sum(), [leaf, *block.parameters()])
        results.append((out.detach(), *grads))
    for got, expected in zip(*results):
        torch.testing.assert_close(got, expected, rtol=0, atol=1e-12)
