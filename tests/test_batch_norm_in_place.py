"""Batch normalisation in evaluation applied in place on the GD layer's output, and where it must not be."""
import contextlib

import pytest
import timm
import torch

import gaussder_hf  # noqa: F401  (registers the presets with timm)
from gaussder_hf import model as model_module
from gaussder_hf.layers import GaussDerConv
from gaussder_hf.model import _normalized


@pytest.fixture(autouse=True)
def _every_map_in_place(monkeypatch):
    # The tests' maps are small; the size rule has a test of its own.
    monkeypatch.setattr(model_module, '_IN_PLACE_FROM_BYTES', 0)


def _with_statistics(norm: torch.nn.BatchNorm2d) -> torch.nn.BatchNorm2d:
    generator = torch.Generator().manual_seed(0)
    shape = norm.running_mean.shape
    norm.running_mean.copy_(torch.randn(shape, generator=generator, dtype=norm.running_mean.dtype))
    norm.running_var.copy_(torch.rand(shape, generator=generator, dtype=norm.running_var.dtype) * 3 + 0.1)
    if norm.affine:
        with torch.no_grad():
            norm.weight.copy_(torch.randn(shape, generator=generator) + 1)
            norm.bias.copy_(torch.randn(shape, generator=generator))
    return norm.eval()


def _written_out(norm: torch.nn.BatchNorm2d, y: torch.Tensor) -> torch.Tensor:
    """Batch norm in evaluation: (y - mean) / sqrt(var + eps) * weight + bias."""
    out = (y - norm.running_mean.view(-1, 1, 1)) / (norm.running_var.view(-1, 1, 1) + norm.eps).sqrt()
    return out * norm.weight.view(-1, 1, 1) + norm.bias.view(-1, 1, 1) if norm.affine else out


@pytest.mark.parametrize('affine', [True, False])
@pytest.mark.parametrize('memory_format', [torch.contiguous_format, torch.channels_last])
def test_evaluation_without_gradient_normalises_the_layer_output_in_place(affine, memory_format):
    producer = GaussDerConv(3, 5, bias=False).double()
    norm = _with_statistics(torch.nn.BatchNorm2d(5, affine=affine).double())
    y = torch.randn(2, 5, 9, 11, dtype=torch.float64).contiguous(memory_format=memory_format)
    expected = _written_out(norm, y)
    with torch.no_grad():
        out = _normalized(norm, y, producer)
    assert out.data_ptr() == y.data_ptr() and out.is_contiguous(memory_format=memory_format)
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-12)


def _hook(module):
    return module.register_forward_hook(lambda *args: None)


# Each case: what makes the module call necessary, as a context around the call (a hook's handle
# removes it on leaving).
_CALLED = {
    'training': lambda norm, producer: contextlib.nullcontext(norm.train()),
    'gradient': lambda norm, producer: torch.enable_grad(),
    'hook on the norm': lambda norm, producer: _hook(norm),
    'hook on the layer': lambda norm, producer: _hook(producer),
    'global hook': lambda norm, producer: torch.nn.modules.module.register_module_forward_hook(lambda *args: None),
    'autocast': lambda norm, producer: torch.autocast('cpu', dtype=torch.bfloat16),
}


@pytest.mark.parametrize('case', sorted(_CALLED))
def test_the_module_is_called_where_in_place_is_unsafe(case):
    producer = GaussDerConv(3, 5, bias=False)
    norm = _with_statistics(torch.nn.BatchNorm2d(5))
    y = torch.randn(2, 5, 9, 11)
    before = y.clone()
    with torch.no_grad(), _CALLED[case](norm, producer):
        out = _normalized(norm, y, producer)
    # the module's result: a new tensor, the layer output left as it was
    assert out.data_ptr() != y.data_ptr() and torch.equal(y, before)


def test_the_module_is_called_for_a_norm_without_statistics_or_of_another_dtype():
    producer = GaussDerConv(3, 5, bias=False)
    y = torch.randn(2, 5, 9, 11)
    low = y.to(torch.bfloat16)  # float32 statistics: the module returns bfloat16, the scale and shift are float32
    for norm, maps in ((torch.nn.BatchNorm2d(5, track_running_stats=False).eval(), y),
                       (_with_statistics(torch.nn.BatchNorm2d(5)), low)):
        before = maps.clone()
        with torch.no_grad():
            out = _normalized(norm, maps, producer)
            torch.testing.assert_close(out, norm(before), rtol=0, atol=0)
        assert out.data_ptr() != maps.data_ptr() and torch.equal(maps, before)


def _model(name: str, dtype=torch.float64) -> torch.nn.Module:
    torch.manual_seed(0)
    model = timm.create_model(name, initial_scales=[0.7, 1.4]).to(dtype)
    for norm in model.modules():
        if isinstance(norm, torch.nn.BatchNorm2d):
            _with_statistics(norm)
    return model.eval()


@pytest.mark.parametrize('name', ['gaussderresnet10_fashionmnist', 'dsgaussderresnet18_stl10'])
def test_a_network_in_evaluation_gives_what_its_batch_norm_modules_give(name):
    model = _model(name)
    x = torch.rand(2, model.stem_conv.in_channels, 20, 20, dtype=torch.float64)
    with torch.no_grad():
        in_place = model(x)
        # a global hook makes every batch norm a module call
        handle = torch.nn.modules.module.register_module_forward_hook(lambda *args: None)
        try:
            called = model(x)
        finally:
            handle.remove()
    # float64 rounding: y * scale + shift against (y - mean) / sqrt(var + eps) * weight + bias, 18 layers deep
    torch.testing.assert_close(in_place, called, rtol=1e-12, atol=1e-12)


def test_a_hook_keeping_a_layer_output_keeps_it_unnormalised():
    model = _model('gaussderresnet10_fashionmnist')
    block = model.blocks[0]
    kept, normalised = [], []
    block.conv1.register_forward_hook(lambda module, args, out: kept.append(out))
    # (its output is cloned: the ReLU after it works in place)
    block.bn1.register_forward_hook(lambda module, args, out: normalised.append((args[0].clone(), out.clone())))
    x = torch.rand(1, 1, 16, 16, dtype=torch.float64)
    with torch.no_grad():
        model(x)
    # the hook on the batch norm fired and saw its input, the layer output, which stays as it was
    assert len(kept) == len(normalised) == 2  # two scale channels
    for out, (norm_input, norm_output) in zip(kept, normalised):
        torch.testing.assert_close(out, norm_input, rtol=0, atol=0)
        torch.testing.assert_close(norm_output, _written_out(block.bn1, out), rtol=0, atol=1e-12)


def test_only_maps_from_the_size_rule_are_normalised_in_place(monkeypatch):
    monkeypatch.undo()  # the package's own rule
    producer = GaussDerConv(3, 8, bias=False)
    norm = _with_statistics(torch.nn.BatchNorm2d(8))
    side = 1 + int((model_module._IN_PLACE_FROM_BYTES / (8 * 4)) ** 0.5)  # 8 float32 channels
    for shape, in_place in (((1, 8, side, side), True), ((1, 8, side - 2, side - 2), False)):
        y = torch.randn(shape)
        with torch.no_grad():
            out = _normalized(norm, y, producer)
        assert (out.data_ptr() == y.data_ptr()) == in_place, shape
