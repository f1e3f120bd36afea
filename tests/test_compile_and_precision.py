"""torch.compile traces the networks in one graph, and bfloat16 autocast stays close to float32.

The compile tests use the ``aot_eager`` backend: Dynamo's graph capture (where graph breaks
happen) and AOTAutograd's joint forward/backward trace are what is checked; no C++ compiler is
needed. Inductor's speed-up is measured in ``benchmarks/compile_speed.py``.
"""
from __future__ import annotations

import pytest
import timm
import torch

import gaussder_hf  # noqa: F401  (registers the models)
from gaussder_hf.layers import DSGaussDerConv, GaussDerConv


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def _small(name: str, **kwargs):
    torch.manual_seed(0)
    return timm.create_model(name, initial_scales=(1.0, 2.0), **kwargs)


# The small network, once with standard and once with depthwise-separable GD layers from block 2.
# The depthwise-separable variant takes the same path through the compiler (13 s): under `slow`.
@pytest.mark.parametrize('separable_from_block', [None, pytest.param(2, marks=pytest.mark.slow)])
def test_model_compiles_in_one_graph_and_matches_eager(separable_from_block):
    model = _small('gaussderresnet10_fashionmnist', separable_from_block=separable_from_block)
    # Traced code keeps the plain layout; eager code in the same layout rounds the same way (the
    # layouts against each other: test_maps_layout.py).
    model.set_maps_layout('contiguous')
    x = torch.randn(2, 1, 20, 20)
    # fullgraph=True raises on any graph break, in the forward or in the traced backward.
    compiled = torch.compile(model, fullgraph=True, backend='aot_eager')
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), model(x), rtol=1e-5, atol=1e-5)
    model.train()
    torch.manual_seed(1)
    compiled(x).logsumexp(1).sum().backward()
    compiled_grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    torch.manual_seed(1)
    model(x).logsumexp(1).sum().backward()
    for n, p in model.named_parameters():
        torch.testing.assert_close(compiled_grads[n], p.grad, rtol=1e-4, atol=1e-5, msg=n)


@pytest.mark.slow  # the model's one-graph compile is tested above in the default run
def test_gradient_checkpointing_compiles_in_one_graph():
    model = _small('gaussderresnet10_fashionmnist')
    model.set_grad_checkpointing(True)
    x = torch.randn(2, 1, 20, 20, requires_grad=True)
    compiled = torch.compile(model, fullgraph=True, backend='aot_eager')
    compiled(x).sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()


def _relative_error(y: torch.Tensor, reference: torch.Tensor) -> float:
    return ((y.float() - reference).norm() / reference.norm()).item()


@pytest.mark.parametrize('layer_class', [GaussDerConv, DSGaussDerConv])
@pytest.mark.parametrize('sigma', [1.0, 4.0, 16.0])
def test_bfloat16_autocast_layer_matches_float32(layer_class, sigma):
    torch.manual_seed(0)
    layer = layer_class(8, 8)
    # Positive maps with an offset, like post-ReLU activations: the smoothed values are large
    # compared with their differences, where rounding them to bfloat16 first would cancel out.
    x = torch.rand(2, 8, 48, 48) + 1.0
    with torch.no_grad():
        reference = layer(x, sigma)
        with torch.autocast('cpu', dtype=torch.bfloat16):
            y = layer(x, sigma)
    # bfloat16 has 8 mantissa bits (relative rounding 2**-9 = 0.2%) on the mix's inputs and weights.
    assert _relative_error(y, reference) < 0.01


def test_bfloat16_autocast_model_forward_and_backward():
    model = _small('gaussderresnet10_fashionmnist').eval()
    x = torch.rand(4, 1, 24, 24)
    with torch.no_grad():
        reference = model(x)
        with torch.autocast('cpu', dtype=torch.bfloat16):
            y = model(x)
    assert y.dtype == torch.bfloat16
    assert _relative_error(y, reference) < 0.02
    model.train()
    with torch.autocast('cpu', dtype=torch.bfloat16):
        loss = torch.nn.functional.cross_entropy(model(x), torch.tensor([0, 1, 2, 3]))
    loss.backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and g.dtype == torch.float32 and torch.isfinite(g).all() for g in grads)


@pytest.mark.parametrize('sigma, size, pad', [(0.7, 9, 0), (2.0, 16, 1), (6.0, 5, 2), (1.0, 1, 1)])
def test_operators_built_while_tracing_equal_the_cached_ones(sigma, size, pad):
    from gaussder_hf.kernels import smoothing_matrix
    eager = smoothing_matrix(sigma, 0.01, size, pad=pad, dtype=torch.float64)
    # Applied to the identity, the operator the traced graph builds comes out as it is.
    traced = torch.compile(lambda f: smoothing_matrix(sigma, 0.01, size, pad=pad, dtype=torch.float64) @ f,
                           fullgraph=True, backend='eager')(torch.eye(size, dtype=torch.float64))
    torch.testing.assert_close(traced, eager, rtol=0, atol=1e-12)
