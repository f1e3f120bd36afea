"""Channels-last maps: the matrix smoothing methods on them, and the networks run in either layout."""
import numpy as np
import pytest
import scipy.ndimage
import timm
import torch

import gaussder_hf  # noqa: F401  (registers the presets with timm)
from gaussder_hf import kernels, layers
from gaussder_hf.kernels import (
    discrete_gaussian_kernel,
    gaussian_smooth,
    is_channels_last,
    smoothing_method,
    to_maps_layout,
)
from gaussder_hf.model import GaussDerResNet


def _scipy_smooth(signal: np.ndarray, sigma: float, eps: float, spatial_dims: int) -> np.ndarray:
    """Separable smoothing by scipy: convolve1d with the discrete Gaussian, mode 'mirror' (d c b | a b c d)."""
    kernel = discrete_gaussian_kernel(sigma, eps, dtype=torch.float64).numpy()
    for axis in range(signal.ndim - spatial_dims, signal.ndim):
        signal = scipy.ndimage.convolve1d(signal, kernel, axis=axis, mode='mirror')
    return signal


def _channels_last(x: torch.Tensor) -> torch.Tensor:
    layout = torch.channels_last if x.ndim == 4 else torch.channels_last_3d
    return torch.empty_like(x, memory_format=layout).copy_(x)


def test_is_channels_last_reads_the_strides():
    x = torch.randn(2, 3, 5, 4)
    assert not is_channels_last(x)
    assert is_channels_last(x.contiguous(memory_format=torch.channels_last))
    assert is_channels_last(torch.randn(2, 3, 4, 5, 6).contiguous(memory_format=torch.channels_last_3d))
    one_channel = torch.randn(2, 1, 5, 4)  # fits both layouts: the channel stride decides
    assert one_channel.is_contiguous(memory_format=torch.channels_last) and not is_channels_last(one_channel)
    assert is_channels_last(_channels_last(one_channel))
    assert not is_channels_last(torch.randn(2, 3, 1, 1))  # one pixel: no layout to speak of
    assert not is_channels_last(torch.randn(2, 3, 5))  # 1-D maps have no channels-last layout
    assert not is_channels_last(x.transpose(2, 3))


@pytest.mark.parametrize('channels', [1, 3])
def test_to_maps_layout_converts_both_ways_and_keeps_the_values(channels):
    x = torch.randn(2, channels, 130, 129, dtype=torch.float64)  # above the blocked-transpose size too
    last = to_maps_layout(x, True)
    assert is_channels_last(last) and torch.equal(last, x)
    assert to_maps_layout(last, True) is last
    plain = to_maps_layout(last, False)
    assert not is_channels_last(plain) and plain.is_contiguous() and torch.equal(plain, x)
    assert to_maps_layout(x, False) is x


@pytest.mark.parametrize('method', ['dense', 'banded', 'auto'])
@pytest.mark.parametrize('shape', [(3, 1, 17, 20), (3, 4, 17, 20), (2, 3, 131, 129), (2, 3, 6, 9, 7)])
@pytest.mark.parametrize('images_per_group', [1, 2])
def test_matrix_methods_on_channels_last_maps_equal_scipy_with_gradients(method, shape, images_per_group,
                                                                        monkeypatch):
    # Groups of one or two images (a partial last group of one with three images): the smoothing
    # against scipy, the gradient against the conv method's on the plain layout (autograd through
    # a convolution, no groups); results in the channels-last layout.
    monkeypatch.setattr(kernels, '_CHUNK_BYTES', images_per_group * int(np.prod(shape[1:])) * 8)
    spatial_dims = len(shape) - 2
    sigma, eps = 1.5, 0.01
    rng = np.random.default_rng(0)
    signal = rng.standard_normal(shape)
    x = _channels_last(torch.tensor(signal)).requires_grad_()
    with smoothing_method(method):
        y = gaussian_smooth(x, sigma, eps, spatial_dims)
    assert is_channels_last(y)
    np.testing.assert_allclose(y.detach().numpy(), _scipy_smooth(signal, sigma, eps, spatial_dims), rtol=0, atol=1e-12)
    # a channels-last gradient of the output, as the mixing convolution's backward hands over
    probe = _channels_last(torch.randn(y.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(1)))
    (grad,) = torch.autograd.grad((y * probe).sum(), x)
    assert is_channels_last(grad)
    reference = torch.tensor(signal, requires_grad=True)
    with smoothing_method('conv'):
        (expected,) = torch.autograd.grad((gaussian_smooth(reference, sigma, eps, spatial_dims) * probe).sum(),
                                          reference)
    torch.testing.assert_close(grad, expected, rtol=0, atol=1e-12)


@pytest.fixture
def memory_order_calls(monkeypatch) -> list[str]:
    """Records every call of the banded method in the images' own memory order: 'forward' or 'adjoint'."""
    taken = []
    for name, function in (('forward', kernels._banded_forward_pixel_major),
                           ('adjoint', kernels._banded_adjoint_pixel_major)):
        monkeypatch.setattr(kernels, f'_banded_{name}_pixel_major',
                            lambda *a, name=name, function=function: taken.append(name) or function(*a))
    return taken


def _conv_method_gradient(signal: np.ndarray, probe: torch.Tensor, sigma: float, pad: int = 0) -> torch.Tensor:
    """The gradient of ``(smoothed signal * probe).sum()`` by autograd through the conv method, plain layout."""
    reference = torch.tensor(signal, requires_grad=True)
    with smoothing_method('conv'):
        smoothed = gaussian_smooth(reference, sigma, 0.01, pad=pad)
    return torch.autograd.grad((smoothed * probe).sum(), reference)[0]


def _probe(shape) -> torch.Tensor:
    return _channels_last(torch.randn(shape, dtype=torch.float64, generator=torch.Generator().manual_seed(1)))


@pytest.mark.parametrize('sigma', [0.7, 2.0, 6.0])  # tiles of 16, 16 and three of 16
# 9 rows: fewer than the extension at sigma 6, so every block gathers rows reflected more than once
@pytest.mark.parametrize('shape', [(2, 3, 40, 33), (1, 4, 70, 29), (1, 2, 9, 40)])
@pytest.mark.parametrize('min_block_tiles', [1, 4])  # blocks of one tile of rows, of several and the whole image
def test_banded_forward_on_large_channels_last_images_in_their_own_order_equals_scipy(sigma, shape, min_block_tiles,
                                                                                      memory_order_calls, monkeypatch):
    # Images of more than a chunk go through blocks of rows in their memory order, forward and
    # adjoint; the result against scipy, with the pad against the plain layout, and the gradient
    # against autograd through the conv method on the plain layout.
    monkeypatch.setattr(kernels, '_CHUNK_BYTES', 3000)
    monkeypatch.setattr(kernels, '_MIN_BLOCK_TILES', min_block_tiles)
    rng = np.random.default_rng(0)
    signal = rng.standard_normal(shape)
    x = _channels_last(torch.tensor(signal)).requires_grad_()
    with smoothing_method('banded'):
        y = gaussian_smooth(x, sigma, 0.01)
        padded = gaussian_smooth(x, sigma, 0.01, pad=1)
        expected_padded = gaussian_smooth(torch.tensor(signal), sigma, 0.01, pad=1)
    assert memory_order_calls == ['forward'] * 2 and is_channels_last(y) and is_channels_last(padded)
    np.testing.assert_allclose(y.detach().numpy(), _scipy_smooth(signal, sigma, 0.01, 2), rtol=0, atol=1e-12)
    torch.testing.assert_close(padded, expected_padded, rtol=0, atol=1e-12)
    probe = _probe(padded.shape)
    (grad,) = torch.autograd.grad((padded * probe).sum(), x)
    assert memory_order_calls[2:] == ['adjoint'] and is_channels_last(grad)
    torch.testing.assert_close(grad, _conv_method_gradient(signal, probe, sigma, pad=1), rtol=0, atol=1e-12)


# (side, sigma, memory order): sigma 1 has K = 2 x 16 multiply-adds per sample, sigma 16 K = 2 x 88
@pytest.mark.parametrize('side, sigma, memory_order', [(96, 1.0, True), (64, 1.0, False), (150, 16.0, False)])
def test_channels_last_maps_go_through_the_memory_order_from_three_product_widths(
        side, sigma, memory_order, memory_order_calls):
    # Images well under a chunk, which the cost model smooths by the dense method: channels-last
    # from a side of 3 K on, the banded method in their memory order, forward and adjoint; in the
    # plain layout the dense method. Every result against scipy, the gradient against the conv method.
    signal = np.random.default_rng(0).standard_normal((2, 3, side, side))
    expected = _scipy_smooth(signal, sigma, 0.01, 2)
    assert kernels.chosen_smoothing_method(sigma, 0.01, (side, side), signals=6, dtype=torch.float64) == 'dense'
    x = _channels_last(torch.tensor(signal)).requires_grad_()
    y = gaussian_smooth(x, sigma, 0.01)
    probe = _probe(y.shape)
    (grad,) = torch.autograd.grad((y * probe).sum(), x)
    assert memory_order_calls == (['forward', 'adjoint'] if memory_order else [])
    assert is_channels_last(y) and is_channels_last(grad)
    np.testing.assert_allclose(y.detach().numpy(), expected, rtol=0, atol=1e-12)
    torch.testing.assert_close(grad, _conv_method_gradient(signal, probe, sigma), rtol=0, atol=1e-12)
    plain = gaussian_smooth(torch.tensor(signal), sigma, 0.01)
    assert len(memory_order_calls) == 2 * int(memory_order)
    np.testing.assert_allclose(plain.numpy(), expected, rtol=0, atol=1e-12)


def test_channels_last_images_under_a_chunk_from_three_product_widths_take_the_memory_order(
        memory_order_calls, monkeypatch):
    # 192 px: the cost model takes banded for a call of more than a chunk; each image is under one,
    # and goes through the memory order, forward and adjoint.
    signal = np.random.default_rng(1).standard_normal((3, 4, 192, 192))  # 1.2 MB an image, 3.5 MB in all
    monkeypatch.setattr(kernels, '_CHUNK_BYTES', 2 * 2 ** 20)
    assert kernels.chosen_smoothing_method(2.0, 0.01, (192, 192), signals=12, dtype=torch.float64) == 'banded'
    x = _channels_last(torch.tensor(signal)).requires_grad_()
    y = gaussian_smooth(x, 2.0, 0.01)
    probe = _probe(y.shape)
    (grad,) = torch.autograd.grad((y * probe).sum(), x)
    assert memory_order_calls == ['forward', 'adjoint'] and is_channels_last(y)
    np.testing.assert_allclose(y.detach().numpy(), _scipy_smooth(signal, 2.0, 0.01, 2), rtol=0, atol=1e-12)
    torch.testing.assert_close(grad, _conv_method_gradient(signal, probe, 2.0), rtol=0, atol=1e-12)


@pytest.mark.parametrize('method', ['dense', 'banded'])
def test_matrix_methods_with_pad_on_channels_last_maps_equal_the_plain_layout(method):
    torch.manual_seed(0)
    x = torch.randn(3, 5, 40, 33, dtype=torch.float64)
    with smoothing_method(method):
        expected = gaussian_smooth(x, 2.0, pad=1)
        got = gaussian_smooth(_channels_last(x), 2.0, pad=1)
    assert is_channels_last(got) and not is_channels_last(expected)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-12)


def _small(**kwargs) -> GaussDerResNet:
    torch.manual_seed(0)
    return GaussDerResNet(**{'channels': (6, 6, 6), 'initial_scales': (1.0, 2.0), **kwargs})


def test_set_maps_layout_refuses_an_unknown_layout():
    with pytest.raises(ValueError, match="got 'nhwc'"):
        _small().set_maps_layout('nhwc')


def _runs_channels_last(model, x):
    _, (maps,) = model._stages(x, 1.0, take=(1,), last=1)
    return is_channels_last(maps)


def test_auto_runs_channels_last_with_one_thread_where_most_channel_counts_are_off_multiples_of_32(one_thread):
    runs_channels_last = _runs_channels_last
    x = torch.randn(2, 1, 12, 12)
    assert runs_channels_last(timm.create_model('gaussderresnet10_fashionmnist'), x)  # 24 channels throughout
    # the presets: 48-256 channels, multiples of 16 for most of their multiply-adds
    stl10 = timm.create_model('gaussderresnet18_stl10', initial_scales=(1.0,))
    assert not runs_channels_last(stl10, torch.randn(1, 3, 12, 12))
    assert not runs_channels_last(timm.create_model('gaussderresnet18_fashionmnist'), x)
    assert runs_channels_last(_small(), x)  # 6 channels
    assert not runs_channels_last(_small(separable_from_block=2), x)  # the separable mix wants the plain layout
    assert not runs_channels_last(_small().double(), x.double())  # no oneDNN kernels in float64
    forced = _small().double()
    forced.set_maps_layout('channels_last')
    assert runs_channels_last(forced, x.double())
    stl10.set_maps_layout('channels_last')
    assert runs_channels_last(stl10, torch.randn(1, 3, 12, 12))
    plain = timm.create_model('gaussderresnet10_fashionmnist')
    plain.set_maps_layout('contiguous')
    assert not runs_channels_last(plain, _channels_last(x))  # a channels-last input is laid out plainly
    assert runs_channels_last(_small(channels=(48, 48, 48)), x)  # 48: a multiple of 16, not of 32
    assert not runs_channels_last(_small(channels=(32, 64, 64)), x)


def test_auto_with_more_threads_mixes_channels_last_for_training_on_small_images():
    torch.set_num_threads(2)  # the count of before comes back after the test (conftest.py)
    model = timm.create_model('gaussderresnet10_fashionmnist')
    small, large = torch.randn(2, 1, 12, 12), torch.randn(1, 1, 128, 200)
    # training on images under 128 px: plain maps, channels-last mixing (the channels-last batch norm
    # backward is slow with several threads); from 128 px channels-last
    assert model._layout_for(small) == 'channels_last_mix' and not _runs_channels_last(model, small)
    assert model._layout_for(large) == 'channels_last'
    with torch.no_grad():
        assert model._layout_for(small) == 'channels_last' and _runs_channels_last(model, small)
    with torch.inference_mode():
        assert _runs_channels_last(model, small)
        stl10 = timm.create_model('gaussderresnet18_stl10', initial_scales=(1.0,))
        assert stl10._layout_for(torch.randn(1, 3, 12, 12)) == 'contiguous'  # channel counts rule as with one thread
    assert stl10._layout_for(torch.randn(1, 3, 12, 12)) == 'contiguous'
    model.set_maps_layout('channels_last')
    assert _runs_channels_last(model, small)
    model.set_maps_layout('contiguous')
    with torch.no_grad():
        assert model._layout_for(small) == 'contiguous'


def test_channels_last_mix_runs_the_mixing_convolutions_on_channels_last_maps(monkeypatch):
    # Every GD layer's convolution gets channels-last maps; what the layers hand on stays plain.
    seen = []
    conv_nd = layers.conv_nd

    def recording(spatial_dims):
        conv = conv_nd(spatial_dims)
        return lambda x, *a, **k: seen.append(is_channels_last(x)) or conv(x, *a, **k)

    monkeypatch.setattr(layers, 'conv_nd', recording)
    model = _small(in_chans=3)  # (one input channel fits both layouts: the first convolution would read plain)
    model.set_maps_layout('channels_last_mix')
    _, stages = model._stages(torch.randn(2, 3, 15, 14), 1.0, take=(0, 1, 2))
    assert len(seen) == 5 and all(seen)  # the first layer and two blocks of two
    assert not any(is_channels_last(maps) for maps in stages)
    seen.clear()
    model.set_maps_layout('contiguous')
    model._stages(torch.randn(2, 3, 15, 14), 1.0)
    assert len(seen) == 5 and not any(seen)


@pytest.mark.parametrize('layout, checkpointing', [('channels_last', False), ('channels_last_mix', False),
                                                   ('channels_last_mix', True)])
@pytest.mark.parametrize('separable_from_block', [None, 2])
def test_network_gives_the_same_logits_maps_and_gradients_in_every_layout(layout, checkpointing,
                                                                          separable_from_block):
    x = torch.randn(3, 1, 15, 14, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    results = {}
    for case in ('contiguous', layout):
        # the same weights and running statistics for both; the same draws of scale-channel dropout
        model = _small(separable_from_block=separable_from_block, drop_path_rate=0.1).double()
        model.set_maps_layout(case)
        model.set_grad_checkpointing(checkpointing)  # (a recomputed block updates its running statistics again)
        torch.manual_seed(3)
        loss = model(x).logsumexp(1).sum()
        loss.backward()
        model.eval()
        with torch.no_grad():
            final, intermediates = model.forward_intermediates(x)
            _, stages = model._stages(x, 1.0, take=(0, 1, 2))
        # the separable block 2 hands back the plain layout (its mix is a batched GEMM)
        kept = stages[:2] if separable_from_block else stages
        assert all(is_channels_last(maps) == (case == 'channels_last') for maps in kept)
        grads = {n: p.grad.clone() for n, p in model.named_parameters()}
        results[case] = (loss.detach(), final, intermediates, grads)
    plain, last = results['contiguous'], results[layout]
    torch.testing.assert_close(last[0], plain[0], rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(last[1], plain[1], rtol=1e-12, atol=1e-12)
    for a, b in zip(last[2], plain[2]):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    for name, grad in plain[3].items():
        torch.testing.assert_close(last[3][name], grad, rtol=1e-10, atol=1e-12, msg=name)


def test_float32_layouts_agree_to_rounding_and_auto_leaves_the_input_alone(one_thread):
    model = timm.create_model('gaussderresnet10_fashionmnist', initial_scales=(1.0,)).eval()
    x = torch.randn(4, 1, 30, 30, generator=torch.Generator().manual_seed(2))
    before = x.clone()
    with torch.no_grad():
        auto = model(x)
        model.set_maps_layout('contiguous')
        plain = model(x)
    torch.testing.assert_close(auto, plain, rtol=1e-4, atol=1e-5)
    assert torch.equal(x, before) and not is_channels_last(x)
