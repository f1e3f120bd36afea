"""The timm model contract for every registered GaussDerResNet, in the spirit of timm's own tests."""
import pytest
import timm
import torch
from safetensors.torch import save_file

import gaussder_hf  # noqa: F401  (registers the models)
from gaussder_hf import kernels

MODELS = timm.list_models('*gaussder*')
SMALL = dict(initial_scales=(1.0, 1.5))  # two scale channels keep the per-model tests fast


def _input(model, size=16, batch=2):
    torch.manual_seed(0)
    return torch.rand(batch, model.in_chans, size, size)


def test_all_presets_are_registered():
    assert sorted(MODELS) == sorted(
        [f'{prefix}gaussderresnet18_{dataset}'
         for prefix in ('', 'ds') for dataset in ('fashionmnist', 'cifar10', 'stl10')]
        + ['gaussderresnet10_fashionmnist'])


@pytest.mark.parametrize('name', MODELS)
def test_forward(name):
    model = timm.create_model(name, **SMALL).eval()
    with torch.no_grad():
        out = model(_input(model))
    assert out.shape == (2, model.num_classes) and torch.isfinite(out).all()


@pytest.mark.parametrize('name', MODELS)
def test_backward_every_parameter_and_checkpointing(name):
    outputs, grads = [], []
    for checkpointing in (False, True):
        torch.manual_seed(0)
        model = timm.create_model(name, **SMALL)
        model.set_grad_checkpointing(checkpointing)
        out = model(_input(model, size=12))
        out.logsumexp(-1).sum().backward()
        missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
        assert not missing
        outputs.append(out.detach())
        grads.append([p.grad for p in model.parameters()])
    torch.testing.assert_close(outputs[0], outputs[1])
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize('name', MODELS)
def test_default_cfg_is_consistent(name):
    model = timm.create_model(name)
    cfg = model.pretrained_cfg
    state = model.state_dict()
    assert cfg['first_conv'] + '.weight' in state
    assert cfg['classifier'] + '.weight' in state
    assert state[cfg['classifier'] + '.weight'].shape[0] == cfg['num_classes'] == model.num_classes
    assert cfg['input_size'][0] == len(cfg['mean']) == len(cfg['std']) == model.in_chans
    assert cfg['paper_ids'] == 'arXiv:2603.02843'
    assert not cfg.get('hf_hub_id') and not cfg.get('url')  # only weights that ship with the package
    assert model.num_features == model.channels[-1]
    assert model.get_classifier() is model.head_conv


@pytest.mark.parametrize('name', MODELS)
def test_reset_classifier_and_features(name):
    model = timm.create_model(name, **SMALL).eval()
    x = _input(model)
    with torch.no_grad():
        features = model.forward_features(x)
        assert features.shape == (2, 2, model.num_features, 16, 16)
        torch.testing.assert_close(model.forward_head(features), model(x))
        assert model.forward_head(features, pre_logits=True).shape == (2, model.num_features)
        model.reset_classifier(5)
        assert model(x).shape == (2, 5) and model.head_norm.num_features == 5
        model.reset_classifier(0)
        assert model(x).shape == (2, model.num_features)
        assert isinstance(model.get_classifier(), torch.nn.Identity)


@pytest.mark.parametrize('name', MODELS)
def test_features_only_backbone(name):
    torch.manual_seed(0)
    model = timm.create_model(name, **SMALL).eval()
    backbone = timm.create_model(name, features_only=True, out_indices=(0, -1), **SMALL).eval()
    backbone.model.load_state_dict(model.state_dict(), strict=False)  # the classifier is pruned away
    assert backbone.feature_info.channels() == [model.channels[0], model.channels[-1]]
    assert backbone.feature_info.reduction() == [1, 1]
    x = _input(model)
    with torch.no_grad():
        first, last = backbone(x)
        assert first.shape == (2, model.channels[0], 16, 16)
        # scale_pool is 'max' in every preset: the last map is forward_features maxed over scale channels
        torch.testing.assert_close(last, model.forward_features(x).amax(dim=1))


def test_preset_fields_are_overridable_by_kwargs():
    model = timm.create_model('gaussderresnet18_stl10', initial_scales=[1.0, 2.0], scale_pool='avg', num_classes=4,
                              in_chans=1)
    assert model.initial_scales == (1.0, 2.0) and model.scale_pool == 'avg'
    assert model.num_classes == 4 and model.in_chans == 1
    with pytest.raises(TypeError):
        timm.create_model('gaussderresnet18_stl10', scale_pol='avg')


def test_torch_export_at_a_fixed_input_size():
    # Empty caches, so that the export itself builds the kernels.
    kernels.clear_caches()
    model = timm.create_model('gaussderresnet18_fashionmnist', initial_scales=(1.1, 1.7)).eval()
    torch.manual_seed(0)
    x = torch.rand(2, 1, 23, 19)
    exported = torch.export.export(model, (x,))
    with torch.no_grad():
        got = exported.module()(x)
        eager = model(x)
    # Tracing must not leave fake tensors in the kernel caches: eager gives real numbers after it.
    assert type(eager) is torch.Tensor and type(got) is torch.Tensor
    assert torch.isfinite(eager).all() and eager.abs().sum() > 0
    torch.testing.assert_close(got, eager)


def test_pretrained_file_overlay_and_fine_tuning_with_other_classes(tmp_path):
    torch.manual_seed(0)
    source = timm.create_model('gaussderresnet18_cifar10', **SMALL).eval()
    file = tmp_path / 'weights.safetensors'
    save_file({k: v.contiguous() for k, v in source.state_dict().items()}, str(file))
    loaded = timm.create_model('gaussderresnet18_cifar10', pretrained=True,
                               pretrained_cfg_overlay=dict(file=str(file)), **SMALL).eval()
    x = _input(source)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), source(x))
    tuned = timm.create_model('gaussderresnet18_cifar10', pretrained=True, num_classes=3,
                              pretrained_cfg_overlay=dict(file=str(file)), **SMALL)
    assert tuned.num_classes == 3 and tuned.head_conv.weight.shape[0] == 3
    source_state, tuned_state = source.state_dict(), tuned.state_dict()
    kept = [k for k in source_state if not k.startswith(('head_conv.', 'head_norm.'))]
    assert kept and all(torch.equal(source_state[k], tuned_state[k]) for k in kept)
    grey = timm.create_model('gaussderresnet18_cifar10', pretrained=True, in_chans=1,
                             pretrained_cfg_overlay=dict(file=str(file)), **SMALL)
    # Summing the RGB weights: a grey image gives the same response as that image in RGB.
    grey_x = x[:, :1]
    with torch.no_grad():
        torch.testing.assert_close(grey.eval()(grey_x), source(grey_x.expand(-1, 3, -1, -1)), rtol=1e-4, atol=1e-5)


def test_pickle_files_are_refused(tmp_path):
    file = tmp_path / 'pytorch_model.bin'
    torch.save({'x': torch.zeros(1)}, file)
    with pytest.raises(ValueError, match='safetensors only.*pytorch_model.bin'):
        timm.create_model('gaussderresnet18_cifar10', pretrained=True, pretrained_cfg_overlay=dict(file=str(file)))
