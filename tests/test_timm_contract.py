"""The keywords timm's scripts pass to ``create_model``, and the ``features_only`` backbone interface.

Each expectation is computed here from the definitions (timm's stochastic-depth rule, torch
reductions over the class maps, the layer scales of eq. 28-29), not read back from the model.
"""
import math
import os
import sys
from pathlib import Path

import pytest
import timm
import torch
from safetensors.torch import save_file
from timm.data import resolve_data_config, resolve_model_data_config

import gaussder_hf  # noqa: F401  (registers the models)
from gaussder_hf.model import GaussDerBlock

sys.path.insert(0, os.path.dirname(__file__))
from fashion_mnist import fashion_mnist_available, load_fashion_mnist  # noqa: E402

CHECKPOINT = Path(__file__).resolve().parents[1] / 'checkpoints' / 'gaussderresnet10_fashionmnist'

NAME = 'gaussderresnet10_fashionmnist'
SMALL = dict(initial_scales=(1.0, 1.5), scale_dropout=0.0)  # two scale channels, no random scale dropout
SIZE = 16


def _input(channels=1, batch=2, seed=0):
    torch.manual_seed(seed)
    return torch.rand(batch, channels, SIZE, SIZE)


@pytest.fixture(scope='module')
def checkpoint_file(tmp_path_factory):
    """A safetensors checkpoint of the preset architecture, for the scripts' ``checkpoint_path``."""
    torch.manual_seed(1)
    model = timm.create_model(NAME)
    file = tmp_path_factory.mktemp('ckpt') / 'initial.safetensors'
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(file))
    return file, model.state_dict()


# The keyword sets of timm's scripts, with their command-line defaults and with values set.
def _script_kwargs(script, file, set_values):
    if script == 'train':
        return dict(pretrained=False, in_chans=1 if set_values else None, num_classes=10 if set_values else None,
                    drop_rate=0.1 if set_values else 0.0, drop_path_rate=0.1 if set_values else None,
                    drop_block_rate=0.0 if set_values else None, global_pool='avg' if set_values else None,
                    bn_momentum=0.05 if set_values else None, bn_eps=1e-4 if set_values else None,
                    scriptable=set_values, checkpoint_path=str(file) if set_values else '')
    if script == 'validate':
        return dict(pretrained=False, num_classes=10 if set_values else None, in_chans=1 if set_values else None,
                    global_pool='max' if set_values else None, scriptable=set_values)
    if script == 'benchmark':  # it hard-codes in_chans=3 and reads the input size from the data config
        return dict(num_classes=10 if set_values else None, in_chans=3, global_pool='fast',
                    scriptable=set_values, drop_rate=0.1 if set_values else 0.0,
                    drop_path_rate=0.1 if set_values else None, drop_block_rate=0.0 if set_values else None)
    assert script == 'inference'
    return dict(num_classes=10 if set_values else None, in_chans=1 if set_values else None, pretrained=False,
                checkpoint_path=str(file) if set_values else None)


@pytest.mark.parametrize('set_values', [False, True], ids=['defaults', 'set'])
@pytest.mark.parametrize('script', ['train', 'validate', 'benchmark', 'inference'])
def test_every_script_keyword_set_builds_a_trainable_model(script, set_values, checkpoint_file):
    file, state = checkpoint_file
    kwargs = _script_kwargs(script, file, set_values)
    model = timm.create_model(NAME, **kwargs)
    if kwargs.get('checkpoint_path'):
        loaded = model.state_dict()
        assert all(torch.equal(loaded[k], v) for k, v in state.items())
    # the scripts size their inputs (and pick 'L' or 'RGB' images) from the data config
    channels = resolve_data_config({}, model=model)['input_size'][0]
    assert channels == (kwargs['in_chans'] or 1)
    out = model.train()(_input(channels))
    assert out.shape == (2, 10) and torch.isfinite(out).all()
    out.logsumexp(-1).sum().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
    with torch.no_grad():
        assert model.eval()(_input(channels)).shape == (2, 10)


def test_layer_config_keywords_are_accepted_by_the_entrypoint():
    model = gaussder_hf.timm_models.gaussderresnet10_fashionmnist(scriptable=True, exportable=False, no_jit=True)
    assert model.num_classes == 10


def _pair(**kwargs):
    """Two models with the same weights: one with ``kwargs``, one without."""
    torch.manual_seed(0)
    plain = timm.create_model(NAME, **SMALL)
    other = timm.create_model(NAME, **SMALL, **kwargs)
    other.load_state_dict(plain.state_dict())
    return plain, other


@pytest.mark.parametrize('kwargs', [dict(drop_path_rate=0.5), dict(drop_rate=0.5)], ids=['drop_path', 'drop'])
def test_drop_rates_change_training_outputs_only(kwargs):
    plain, dropped = _pair(**kwargs)
    x = _input()
    with torch.no_grad():
        torch.testing.assert_close(dropped.eval()(x), plain.eval()(x))
        reference = plain.train()(x)
        torch.testing.assert_close(plain(x), reference)  # without the rates, training is deterministic
        torch.manual_seed(3)
        assert not torch.allclose(dropped.train()(x), reference)


def test_drop_path_rates_increase_linearly_over_the_blocks():
    model = timm.create_model(NAME, drop_path_rate=0.3)
    rates = [getattr(block.drop_path, 'drop_prob', 0.0) for block in model.blocks]
    torch.testing.assert_close(torch.tensor(rates, dtype=torch.float64),
                               torch.linspace(0.0, 0.3, len(model.blocks), dtype=torch.float64), rtol=0, atol=1e-12)


def test_drop_path_drops_the_residual_branch_and_keeps_the_shortcut():
    torch.manual_seed(0)
    block = GaussDerBlock(3, 5, drop_path=0.5).train()
    x = torch.rand(64, 3, 8, 8)
    with torch.no_grad():
        branch = block.bn2(block.conv2((block.bn1(block.conv1(x, 1.2))).relu(), 1.2))
        shortcut = block.shortcut(x)
        torch.manual_seed(5)
        out = block(x, 1.2)
    kept = (branch / 0.5 + shortcut).relu()
    dropped = shortcut.relu()
    is_kept = [torch.allclose(out[i], kept[i], atol=1e-5) for i in range(len(x))]
    is_dropped = [torch.allclose(out[i], dropped[i], atol=1e-5) for i in range(len(x))]
    assert all(k != d for k, d in zip(is_kept, is_dropped))  # each sample is one or the other
    assert 16 < sum(is_dropped) < 48  # about half of the 64 samples


def test_drop_rate_drops_whole_maps_entering_the_classifier():
    torch.manual_seed(0)
    model = timm.create_model(NAME, drop_rate=0.5, initial_scales=(1.0,), scale_dropout=0.0).train()
    x = _input(batch=8)
    seen = []
    model.head_conv.register_forward_pre_hook(lambda module, args: seen.append(args[0].detach()))
    with torch.no_grad():
        features = model._features(x, 1.0)
        model(x)
    entering = seen[0]
    scaled = features / 0.5
    zero = entering.abs().amax(dim=(-2, -1)) == 0
    same = (entering - scaled).abs().amax(dim=(-2, -1)) <= 1e-5 * scaled.abs().amax()
    assert (zero ^ same).all()  # every map is dropped whole or kept whole (and rescaled)
    assert 0.3 < zero.float().mean() < 0.7


def _class_maps(model, x):
    """The final-layer maps of every scale channel, ``(B, S, K, H, W)``."""
    return torch.stack([model.forward_channel(x, s) for s in model.initial_scales], dim=1)


# timm's name -> the reduction of a class map it must give, written with plain torch.
SPATIAL = {
    'avg': lambda m: m.mean(dim=(-2, -1)),
    'fast': lambda m: m.mean(dim=(-2, -1)),
    'max': lambda m: m.amax(dim=(-2, -1)),
    'avgmax': lambda m: (m.mean(dim=(-2, -1)) + m.amax(dim=(-2, -1))) / 2,
    'center': lambda m: m[..., SIZE // 2 - 1:SIZE // 2 + 1, SIZE // 2 - 1:SIZE // 2 + 1].mean(dim=(-2, -1)),
    '': lambda m: m,
}


@pytest.mark.parametrize('global_pool', list(SPATIAL))
def test_global_pool_names_reduce_the_class_maps_as_documented(global_pool):
    torch.manual_seed(0)
    model = timm.create_model(NAME, global_pool=global_pool, **SMALL).eval()
    x = _input()
    with torch.no_grad():
        expected = SPATIAL[global_pool](_class_maps(model, x)).amax(dim=1)  # then max over scale channels
        got = model(x)
    assert model.global_pool == ('avg' if global_pool == 'fast' else global_pool)
    assert got.shape == ((2, 10, SIZE, SIZE) if global_pool == '' else (2, 10))
    torch.testing.assert_close(got, expected)


def test_catavgmax_concatenates_mean_and_max_of_the_features_without_classifier():
    torch.manual_seed(0)
    model = timm.create_model(NAME, num_classes=0, global_pool='catavgmax', **SMALL).eval()
    x = _input()
    with torch.no_grad():
        maps = _class_maps(model, x)  # without classifier: the features
        expected = torch.cat([maps.mean(dim=(-2, -1)), maps.amax(dim=(-2, -1))], dim=-1).amax(dim=1)
        torch.testing.assert_close(model(x), expected)
    assert expected.shape == (2, 2 * model.num_features)
    with pytest.raises(ValueError, match="catavgmax.*num_classes=3"):
        model.reset_classifier(3)


def test_reset_classifier_takes_timm_pool_names():
    model = timm.create_model(NAME, **SMALL)
    model.reset_classifier(4, 'fast')
    assert model.spatial_pool == 'avg' and model(_input()).shape == (2, 4)


def test_bn_momentum_and_eps_reach_every_batch_norm():
    model = timm.create_model(NAME, bn_momentum=0.25, bn_eps=1e-3, **SMALL)
    model.reset_classifier(3)  # a new classifier BN gets them too
    norms = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    # first layer, two per block, the skip of none (24 channels throughout), the classifier
    assert len(norms) == 1 + 2 * len(model.blocks) + 1
    assert all(n.momentum == 0.25 and n.eps == 1e-3 for n in norms)
    seen = []
    model.stem_norm.register_forward_pre_hook(lambda module, args: seen.append(args[0].detach()))
    model.set_grad_checkpointing(False)
    model.initial_scales = (1.0,)
    model.train()(_input())
    # running mean after one batch: (1 - momentum) * 0 + momentum * batch mean
    torch.testing.assert_close(model.stem_norm.running_mean, 0.25 * seen[0].mean(dim=(0, 2, 3)))


@pytest.mark.parametrize('name, in_chans', [
    (NAME, 3), ('gaussderresnet18_cifar10', 1), ('gaussderresnet18_cifar10', 2)])
def test_data_config_follows_in_chans(name, in_chans):
    model = timm.create_model(name, in_chans=in_chans, initial_scales=(1.0,))
    for config in (resolve_data_config({}, model=model), resolve_model_data_config(model)):
        assert config['input_size'][0] == in_chans
        assert len(config['mean']) == len(config['std']) == in_chans
        assert config['mean'] == (0.5,) * in_chans and config['std'] == (0.5,) * in_chans
    with torch.no_grad():
        out = model.eval()(torch.rand(1, config['input_size'][0], SIZE, SIZE))
    assert out.shape == (1, 10)
    # the source preset's channel count is what the registered cfg still says
    assert timm.create_model(name, initial_scales=(1.0,)).pretrained_cfg['input_size'][0] == (1 if name == NAME else 3)


def test_data_config_averages_unequal_channel_statistics():
    cfg = gaussder_hf.timm_models._data_config_for_channels(dict(mean=(0.2, 0.4, 0.9), std=(0.5, 0.5, 0.5)), 1)
    assert cfg['mean'] == pytest.approx((0.5,)) and cfg['std'] == (0.5,)


# features_only and forward_intermediates


def test_features_only_gives_one_map_per_stage_at_full_resolution():
    model = timm.create_model(NAME, features_only=True, **SMALL)
    preset = gaussder_hf.get_preset(NAME)['channels']
    assert model.feature_info.channels() == list(preset)  # every stage by default
    assert model.feature_info.reduction() == [1] * len(preset)
    features = model(_input(batch=3))
    assert [tuple(f.shape) for f in features] == [(3, c, SIZE, SIZE) for c in preset]
    picked = timm.create_model(NAME, features_only=True, out_indices=(1, -1), **SMALL)
    assert picked.feature_info.out_indices == (1, len(preset) - 1)
    assert len(picked(_input())) == 2
    assert not any(k.startswith('model.head_') for k in picked.state_dict())  # the classifier is pruned


def test_features_only_on_an_18_layer_preset_and_backward():
    model = timm.create_model('gaussderresnet18_cifar10', features_only=True, out_indices=(0, 4), **SMALL)
    assert model.feature_info.channels() == [48, 64]
    assert len(model.model.blocks) == 4  # the blocks after stage 4 are pruned
    features = model(_input(channels=3))
    sum(f.sum() for f in features).backward()
    assert all(p.grad is not None for p in model.parameters())


def test_a_pretrained_backbone_gives_the_trained_networks_features():
    # Weights load before timm wraps and prunes the network: the backbone keeps the trained stages.
    full = timm.create_model(f'local-dir:{CHECKPOINT}', pretrained=True).eval()
    backbone = timm.create_model(f'local-dir:{CHECKPOINT}', pretrained=True, features_only=True,
                                 out_indices=(1, 3)).eval()
    x = _input()
    with torch.no_grad():
        features = backbone(x)
        expected = full.forward_intermediates(x, indices=[1, 3], intermediates_only=True)
    assert len(features) == 2
    for got, want in zip(features, expected):
        torch.testing.assert_close(got, want)
    assert not torch.allclose(features[1], timm.create_model(NAME, features_only=True, out_indices=(1, 3))(x)[1])


def test_last_feature_is_forward_features_pooled_over_scale_channels():
    torch.manual_seed(0)
    model = timm.create_model(NAME, **SMALL).eval()
    x = _input()
    with torch.no_grad():
        last = model.forward_intermediates(x, indices=1, intermediates_only=True)
        final, maps = model.forward_intermediates(x)
        torch.testing.assert_close(last[0], model.forward_features(x).amax(dim=1))  # scale_pool 'max'
        torch.testing.assert_close(maps[-1], last[0])
        torch.testing.assert_close(final, model.forward_features(x))
        torch.testing.assert_close(model.forward_head(final), model(x))
        early = model.forward_intermediates(x, indices=[0, 2], stop_early=True)[1]
        torch.testing.assert_close(early, [maps[0], maps[2]])


def test_single_scale_channel_features_are_the_block_outputs():
    torch.manual_seed(0)
    sigma0, ratio = 1.3, 1.13
    model = timm.create_model(NAME, initial_scales=(sigma0,), scale_ratio=ratio).eval()
    x = _input()
    with torch.no_grad():
        features = model.forward_intermediates(x, intermediates_only=True)
        # eq. 28-29: layer k works at sigma0 * ratio**floor(k / 2); block b holds layers 2b and 2b + 1
        y = model.stem_norm(model.stem_conv(x, sigma0)).relu()
        expected = [y]
        for b, block in enumerate(model.blocks, start=1):
            sigma = sigma0 * ratio ** b
            h = block.bn1(block.conv1(y, sigma)).relu()
            y = (block.bn2(block.conv2(h, sigma)) + y).relu()  # 24 channels throughout: identity skip
            expected.append(y)
    assert len(features) == len(expected)
    for got, want in zip(features, expected):
        torch.testing.assert_close(got, want)


@pytest.mark.parametrize('scale_pool', ['max', 'avg'])
def test_multi_scale_features_pool_the_single_scale_features(scale_pool):
    torch.manual_seed(0)
    model = timm.create_model(NAME, scale_pool=scale_pool, **SMALL).eval()
    x = _input()
    with torch.no_grad():
        features = model.forward_intermediates(x, indices=[1, 3], intermediates_only=True)
        single = [model.with_initial_scales(s).forward_intermediates(x, indices=[1, 3], intermediates_only=True)
                  for s in SMALL['initial_scales']]
    for i, got in enumerate(features):
        stacked = torch.stack([channel[i] for channel in single])
        torch.testing.assert_close(got, stacked.amax(dim=0) if scale_pool == 'max' else stacked.mean(dim=0))


@pytest.mark.parametrize('call, match', [
    (lambda m: m.forward_intermediates(_input(), indices=0), 'indices.*got 0'),
    (lambda m: m.forward_intermediates(_input(), indices=[5]), r'indices.*got \[5\]'),
    (lambda m: m.forward_intermediates(_input(), indices='last'), "indices.*got 'last'"),
    (lambda m: m.forward_intermediates(_input(), output_fmt='NHWC'), "output_fmt.*'NHWC'"),
])
def test_bad_intermediate_requests_are_refused(call, match):
    with pytest.raises(ValueError, match=match):
        call(timm.create_model(NAME, **SMALL))


@pytest.mark.parametrize('kwargs, match', [
    (dict(global_pool='mean'), r"global_pool must be one of .*'catavgmax'.*got 'mean'"),
    (dict(global_pool='catavgmax'), 'catavgmax.*num_classes=10'),
    (dict(drop_block_rate=0.1), 'drop_block_rate must be None or 0, got 0.1'),
    (dict(drop_rate=1.5), r'drop_rate must be a number in \[0, 1\), got 1.5'),
    (dict(drop_path_rate=-0.1), r'drop_path_rate .*got -0.1'),
    (dict(bn_eps=0.0), r'bn_eps must be None or a finite number > 0.*got 0.0'),
    (dict(bn_momentum=2.0), r'bn_momentum must be a number in \[0, 1\], got 2.0'),
    (dict(features_only=True, out_indices=(9,)), r'indices.*got \(9,\)'),
    (dict(features_only=True, feature_cls='hook'), "feature_cls must be 'getter'.*'hook'"),
])
def test_bad_values_are_refused_naming_the_value(kwargs, match):
    with pytest.raises(ValueError, match=match):
        timm.create_model(NAME, **SMALL, **kwargs)


def test_drop_rates_keep_the_state_dict_keys():
    # Dropout and stochastic depth hold no parameters: checkpoints load across the settings.
    plain = timm.create_model(NAME, **SMALL)
    regularised = timm.create_model(NAME, drop_rate=0.2, drop_path_rate=0.2, **SMALL)
    assert plain.state_dict().keys() == regularised.state_dict().keys()
    assert math.isclose(regularised.blocks[-1].drop_path.drop_prob, 0.2)


@pytest.mark.slow
@pytest.mark.skipif(not fashion_mnist_available(), reason='Fashion-MNIST IDX files are not installed')
def test_pooled_features_of_the_trained_network_follow_a_rescaling_better_than_one_scale_channel():
    # 8 test images pasted on a 48x48 canvas, and the same canvas enlarged by s = 2. Pooled over a
    # grid of scale channels, the last stage's features of the enlarged image, averaged over 2x2
    # blocks, should be closer to those of the original than one fixed scale channel manages; the
    # single channel matched to the size (sigma0 = 1 vs 2) is the bound the finite grid cannot reach.
    images, _ = load_fashion_mnist('test', limit=8)
    small = torch.nn.functional.pad(torch.tensor(images).float()[:, None] / 255, (10, 10, 10, 10))
    big = torch.nn.functional.interpolate(small, scale_factor=2, mode='bicubic', antialias=True)
    model = timm.create_model(f'local-dir:{CHECKPOINT}', pretrained=True).eval()

    def error(small_model, big_model):
        with torch.no_grad():
            a = small_model.forward_intermediates(small, indices=1, intermediates_only=True)[0]
            b = big_model.forward_intermediates(big, indices=1, intermediates_only=True)[0]
        b = torch.nn.functional.avg_pool2d(b, 2)
        return ((a - b).norm() / a.norm()).item()

    grid = model.with_initial_scales(gaussder_hf.geometric_scales(0.5, math.sqrt(2), 8))
    pooled = error(grid, grid)
    unmatched = error(model.with_initial_scales(1.0), model.with_initial_scales(1.0))
    matched = error(model.with_initial_scales(1.0), model.with_initial_scales(2.0))
    print(f'relative error: matched {matched:.3f}, pooled {pooled:.3f}, unmatched {unmatched:.3f}')
    assert matched < pooled < 0.6 * unmatched, (matched, pooled, unmatched)
