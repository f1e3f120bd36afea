"""The three smoothing methods (dense matrix product, banded block-Toeplitz GEMMs, depthwise convolution)
against numpy references,
against each other through the layers, under torch.compile, torch.export and autocast, and the
byte-bounded operator cache."""
import numpy as np
import pytest
import torch

from gaussder_hf import kernels
from gaussder_hf.kernels import (
    clear_caches,
    discrete_gaussian_kernel,
    gaussian_jet,
    gaussian_smooth,
    operator_cache_bytes,
    operator_cache_info,
    set_operator_cache_budget,
    smoothing_method,
    uses_conv_smoothing,
)
from gaussder_hf.layers import DSGaussDerConv, GaussDerConv, dense_reference

METHODS = ['dense', 'banded', 'conv']


def _numpy_smooth(signal: np.ndarray, sigma: float, eps: float, spatial_dims: int, pad: int) -> np.ndarray:
    """Separable smoothing by numpy alone: np.pad 'reflect' (repeated for wide pads), np.convolve 'valid'."""
    kernel = discrete_gaussian_kernel(sigma, eps, dtype=torch.float64).numpy()
    radius = len(kernel) // 2
    for axis in range(signal.ndim - spatial_dims, signal.ndim):
        widths = [(0, 0)] * signal.ndim
        widths[axis] = (radius + pad, radius + pad)
        if signal.shape[axis] == 1:
            extended = np.pad(signal, widths, mode='edge')  # a single sample mirrors onto itself
        else:
            extended = np.pad(signal, widths, mode='reflect')
        signal = np.apply_along_axis(lambda line: np.convolve(line, kernel, mode='valid'), axis, extended)
    return signal


@pytest.mark.parametrize('method', METHODS)
@pytest.mark.parametrize('shape, spatial_dims', [((2, 3, 23), 1), ((1, 2, 13, 9), 2), ((1, 2, 6, 5, 4), 3),
                                                 ((2, 1, 1), 2)])
@pytest.mark.parametrize('sigma', [0.4, 1.5, 4.0, 11.0])  # 11: wider than every image here
@pytest.mark.parametrize('pad', [0, 1, 2])
def test_every_method_equals_numpy_mirror_convolution(method, shape, spatial_dims, sigma, pad):
    rng = np.random.default_rng(0)
    signal = rng.standard_normal(shape)
    expected = _numpy_smooth(signal, sigma, 1e-4, spatial_dims, pad)
    with smoothing_method(method):
        got = gaussian_smooth(torch.tensor(signal), sigma, 1e-4, spatial_dims, pad=pad)
    np.testing.assert_allclose(got.numpy(), expected, rtol=0, atol=1e-12)


@pytest.mark.parametrize('sigma', [0.7, 6.0])  # tiles of 16 and 32 samples
def test_banded_method_over_many_tiles_equals_dense_with_gradients(sigma):
    # 70 x 53 (+ 2 pad) spans several tiles with a partial last one; a channels-last and a
    # transposed input check that any strides are read correctly.
    torch.manual_seed(0)
    x = torch.randn(2, 3, 70, 53, dtype=torch.float64)
    probe = torch.randn(2, 3, 72, 55, dtype=torch.float64)
    results = {}
    for method in ('dense', 'banded'):
        for name, source in (('plain', x), ('channels_last', x.contiguous(memory_format=torch.channels_last)),
                             ('transposed', x.transpose(-1, -2).contiguous().transpose(-1, -2))):
            leaf = source.detach().requires_grad_()
            with smoothing_method(method):
                y = gaussian_smooth(leaf, sigma, 0.01, 2, pad=1)
            (grad,) = torch.autograd.grad((y * probe).sum(), leaf)
            results[method, name] = (y, grad)
    for name in ('plain', 'channels_last', 'transposed'):
        for got, expected in zip(results['banded', name], results['dense', 'plain']):
            torch.testing.assert_close(got, expected, rtol=0, atol=1e-12)


def test_band_layouts_two_tiles_or_three_sixteen_sample_tiles_where_that_is_fewer_products():
    # K = m T multiply-adds per sample; the layout must cover the 2 radius + 1 taps: (m - 1) T >= 2 radius.
    for radius in range(0, 120):
        tile, span = kernels._band_layout(radius)
        assert (span - 1) * tile >= 2 * radius and tile % 8 == 0 and tile >= 16
    assert kernels._band_layout(kernels.truncation_radius(2.0)) == (16, 2)
    assert kernels._band_layout(kernels.truncation_radius(6.0)) == (16, 3)  # radius 16: 48 instead of 64
    assert kernels._band_layout(kernels.truncation_radius(4.0)) == (24, 2)  # radius 10: 48 either way
    assert kernels._band_layout(kernels.truncation_radius(16.0)) == (88, 2)


@pytest.mark.parametrize('layout', [(16, 7), (24, 5), (40, 4), (88, 2)])
def test_banded_products_over_any_number_of_tiles_equal_dense(layout, monkeypatch):
    # sigma 16 has radius 41: every layout here covers its 83 taps with a different number of
    # tiles; forward, gradient and the gradient's gradient against the dense method, eager and traced.
    monkeypatch.setattr(kernels, '_band_layout', lambda radius: layout)
    torch.manual_seed(0)
    x = torch.randn(1, 2, 97, 60, dtype=torch.float64, requires_grad=True)
    probe, direction = torch.randn(1, 2, 99, 62, dtype=torch.float64), torch.randn_like(x)
    results = {}
    for method in ('dense', 'banded'):
        with smoothing_method(method):
            y = gaussian_smooth(x, 16.0, 0.01, 2, pad=1)
            (grad,) = torch.autograd.grad((probe * y.square()).sum(), x, create_graph=True)
            (hessian_direction,) = torch.autograd.grad((grad * direction).sum(), x)
        results[method] = (y, grad, hessian_direction)
    for got, expected in zip(results['banded'], results['dense']):
        torch.testing.assert_close(got, expected, rtol=0, atol=1e-11)
    torch._dynamo.reset()
    with smoothing_method('banded'):
        traced = torch.compile(lambda t: gaussian_smooth(t, 16.0, 0.01, 2, pad=1), fullgraph=True,
                               backend='aot_eager')(x.detach())
    torch._dynamo.reset()
    torch.testing.assert_close(traced, results['dense'][0].detach(), rtol=0, atol=1e-11)


@pytest.mark.parametrize('method', ['dense', 'banded'])
@pytest.mark.parametrize('chunk_signals', [1, 4])
@pytest.mark.parametrize('shape, spatial_dims', [((2, 5, 70), 1), ((2, 5, 41, 37), 2), ((2, 5, 9, 20, 18), 3)])
def test_matrix_methods_in_chunks_of_signals_equal_numpy_with_gradients(method, chunk_signals, shape, spatial_dims,
                                                                        monkeypatch):
    # Ten signals through chunks of one (ten chunks) or four (a partial last chunk of two): the
    # smoothing against numpy, the gradient against the 'conv' method's (autograd through a
    # convolution, no chunks); a chunk boundary that mixed up signals would show in both.
    sigma, pad = 1.5, 1
    spatial = shape[-spatial_dims:]
    if method == 'banded':
        band = kernels._band_matrix(sigma, 0.01, torch.device('cpu'), torch.float64)
        lengths = [kernels._band_geometry(n, band, pad)[1] for n in spatial]
    else:
        lengths = [n + 2 * pad for n in spatial]
    monkeypatch.setattr(kernels, '_CHUNK_BYTES', chunk_signals * int(np.prod(lengths)) * 8)
    monkeypatch.setattr(kernels, '_DENSE_CHUNKED_FROM_BYTES', 0)  # dense chunks only large calls
    assert kernels._signals_per_chunk(lengths, 8) == chunk_signals
    chunk_sizes = []  # what the method asked for: the chunked path must be the one taken
    per_chunk = kernels._signals_per_chunk
    monkeypatch.setattr(kernels, '_signals_per_chunk', lambda *a: chunk_sizes.append(per_chunk(*a)) or chunk_sizes[-1])
    rng = np.random.default_rng(1)
    signal = rng.standard_normal(shape)
    probe = torch.randn(*shape[:2], *(n + 2 * pad for n in spatial), dtype=torch.float64,
                        generator=torch.Generator().manual_seed(2))
    grads = {}
    for name in (method, 'conv'):
        x = torch.tensor(signal, requires_grad=True)
        with smoothing_method(name):
            y = gaussian_smooth(x, sigma, 0.01, spatial_dims, pad=pad)
        if name == method:
            np.testing.assert_allclose(y.detach().numpy(), _numpy_smooth(signal, sigma, 0.01, spatial_dims, pad),
                                       rtol=0, atol=1e-12)
        (grads[name],) = torch.autograd.grad((y * probe).sum(), x)
    # forward, then backward (dense's backward writes the shorter input shape: as many or more fit)
    assert len(chunk_sizes) == 2 and chunk_sizes[0] == chunk_signals and chunk_sizes[1] >= chunk_signals
    torch.testing.assert_close(grads[method], grads['conv'], rtol=0, atol=1e-12)


def test_banded_chunks_hold_as_many_signals_as_fit_in_the_byte_budget(monkeypatch):
    monkeypatch.setattr(kernels, '_CHUNK_BYTES', 4 * 2 ** 20)
    assert kernels._signals_per_chunk([1040, 1040], 4) == 1  # 4.3 MB: one signal, never none
    assert kernels._signals_per_chunk([112, 112], 4) == 83  # 4 MiB / 50,176 bytes
    assert kernels._signals_per_chunk([112, 112], 8) == 41


def test_banded_backward_is_differentiable_again():
    # The second derivative of sum(probe * S(x)^2) is 2 S^T diag(probe) S: compared with dense's.
    torch.manual_seed(0)
    x = torch.randn(1, 2, 37, 21, dtype=torch.float64, requires_grad=True)
    probe, direction = torch.randn(1, 2, 39, 23, dtype=torch.float64), torch.randn_like(x)
    results = []
    for method in ('dense', 'banded'):
        with smoothing_method(method):
            (grad,) = torch.autograd.grad((probe * gaussian_smooth(x, 1.5, 0.01, 2, pad=1).square()).sum(), x,
                                          create_graph=True)
            results.append(torch.autograd.grad((grad * direction).sum(), x))
    torch.testing.assert_close(results[1], results[0], rtol=0, atol=1e-12)


def test_float32_conv_path_on_channels_last_maps_matches_float64():
    torch.manual_seed(0)
    x = torch.randn(2, 5, 70, 66, dtype=torch.float64)
    expected = gaussian_smooth(x, 2.5)
    for source in (x.float(), x.float().contiguous(memory_format=torch.channels_last)):
        with smoothing_method('conv'):
            got = gaussian_smooth(source, 2.5)
        torch.testing.assert_close(got.double(), expected, rtol=0, atol=2e-6)


def test_the_cost_model_takes_dense_on_small_images_and_banded_on_large_ones():
    assert kernels.chosen_smoothing_method(1.0, 0.01, (16, 16)) == 'dense'
    # 83 taps on 256 samples: one GEMM is cheaper
    assert kernels.chosen_smoothing_method(16.0, 0.01, (256, 256)) == 'dense'
    assert kernels.chosen_smoothing_method(1.0, 0.01, (1024, 8)) == 'dense'  # the shortest side decides
    for sigma, side in ((1.0, 1024), (16.0, 2048), (2.0, 512)):
        assert kernels.chosen_smoothing_method(sigma, 0.01, (side, side)) == 'banded'
        assert not uses_conv_smoothing(sigma, 0.01, (side, side))
    with smoothing_method('conv'):
        assert uses_conv_smoothing(16.0, 0.01, (8, 8))
    with smoothing_method('dense'):
        assert not uses_conv_smoothing(1.0, 0.01, (512, 512))
    with pytest.raises(ValueError, match='sigma.*-1'):
        uses_conv_smoothing(-1.0, 0.01, (64, 64))
    with pytest.raises(ValueError, match="smoothing method.*'fft'"), smoothing_method('fft'):
        pass


def test_the_cost_model_waits_for_larger_images_with_more_threads():
    # Measured in the layer (benchmarks/README.md, "The rule re-fitted"): the crossover lies at
    # larger images with two threads than with one.
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        assert kernels.chosen_smoothing_method(0.7, 0.01, (384, 384)) == 'banded'
        # one thread, measured in the layer: banded won from 192 px for sigma <= 2 (16-sample tiles),
        # for sigma 6 (three 16-sample tiles) tied at 192 and won from 224, and lost at 512 for
        # sigma 16 (two 88-sample tiles); dense won at 128 px
        assert kernels.chosen_smoothing_method(2.0, 0.01, (128, 128)) == 'dense'
        assert kernels.chosen_smoothing_method(2.0, 0.01, (192, 192)) == 'banded'
        assert kernels.chosen_smoothing_method(6.0, 0.01, (160, 160)) == 'dense'
        assert kernels.chosen_smoothing_method(6.0, 0.01, (192, 192)) == 'dense'
        assert kernels.chosen_smoothing_method(6.0, 0.01, (224, 224)) == 'banded'
        assert kernels.chosen_smoothing_method(16.0, 0.01, (512, 512)) == 'dense'
        torch.set_num_threads(2)
        # two threads: banded won from 384 px for sigma <= 2, at 448-512 for sigma 6 and at 768
        # for sigma 16, where dense still won at 448-512; the runs were mixed at 256-320 px
        assert kernels.chosen_smoothing_method(0.7, 0.01, (320, 320)) == 'dense'
        assert kernels.chosen_smoothing_method(0.7, 0.01, (384, 384)) == 'banded'
        assert kernels.chosen_smoothing_method(6.0, 0.01, (384, 384)) == 'dense'
        assert kernels.chosen_smoothing_method(6.0, 0.01, (448, 448)) == 'banded'
        assert kernels.chosen_smoothing_method(16.0, 0.01, (512, 512)) == 'dense'
        assert kernels.chosen_smoothing_method(16.0, 0.01, (768, 768)) == 'banded'
    finally:
        torch.set_num_threads(threads)


def test_the_cost_model_takes_banded_earlier_for_calls_beyond_one_chunk_with_any_threads():
    # Measured with about a million pixels per call (benchmarks/README.md, "Smoothing in cache-sized
    # chunks"), one thread and two alike: banded tied dense at 96 px and won from 128 for sigma <= 2,
    # tied at 128 and won from 160 for sigma 6, and lost up to 320 px for sigma 16; where they tie,
    # dense (training steps were faster with it). The same sides as single small maps (one chunk)
    # keep the rule measured at batch 1.
    threads = torch.get_num_threads()
    try:
        for n in (1, 2):
            torch.set_num_threads(n)
            assert kernels.chosen_smoothing_method(2.0, 0.01, (64, 64), signals=256 * 24) == 'dense'
            assert kernels.chosen_smoothing_method(2.0, 0.01, (96, 96), signals=114 * 24) == 'dense'
            assert kernels.chosen_smoothing_method(2.0, 0.01, (128, 128), signals=64 * 24) == 'banded'
            assert kernels.chosen_smoothing_method(6.0, 0.01, (128, 128), signals=64 * 24) == 'dense'
            assert kernels.chosen_smoothing_method(6.0, 0.01, (160, 160), signals=41 * 24) == 'banded'
            assert kernels.chosen_smoothing_method(16.0, 0.01, (320, 320), signals=10 * 24) == 'dense'
            assert kernels.chosen_smoothing_method(2.0, 0.01, (128, 128), signals=24) == 'dense'  # one chunk
        # float64 maps fill a chunk with half as many signals; other devices never chunk
        assert kernels.chosen_smoothing_method(2.0, 0.01, (128, 128), signals=40) == 'dense'
        assert kernels.chosen_smoothing_method(2.0, 0.01, (128, 128), signals=40, dtype=torch.float64) == 'banded'
        assert kernels.chosen_smoothing_method(2.0, 0.01, (128, 128), signals=64 * 24, device='meta') == 'dense'
    finally:
        torch.set_num_threads(threads)
    for bad in (0, -3, 2.5, True):
        with pytest.raises(ValueError, match=f'signals.*{bad!r}'):
            kernels.chosen_smoothing_method(2.0, 0.01, (128, 128), signals=bad)


def test_traced_code_keeps_the_rule_of_one_chunk(monkeypatch):
    # torch.compile and torch.export trace the unchunked forms, which the chunked rule was not measured on.
    assert kernels._streams(64 * 24 * 128 * 128 * 4, torch.device('cpu'))
    monkeypatch.setattr(torch.compiler, 'is_compiling', lambda: True)
    assert not kernels._streams(64 * 24 * 128 * 128 * 4, torch.device('cpu'))


@pytest.mark.parametrize('layer_cls', [GaussDerConv, DSGaussDerConv])
@pytest.mark.parametrize('spatial_dims, shape', [(1, (2, 3, 19)), (2, (2, 3, 11, 9)), (3, (1, 3, 7, 6, 5))])
@pytest.mark.parametrize('sigma', [0.6, 2.0, 9.0])
@pytest.mark.parametrize('method', ['banded', 'conv'])
def test_conv_and_banded_layers_equal_dense_reference_with_gradients(layer_cls, spatial_dims, shape, sigma, method):
    if method == 'banded' and spatial_dims == 3 and sigma > 5:
        pytest.skip('a kernel wider than a 3-D image: covered for banded by the numpy comparison, ~3 s here')
    torch.manual_seed(0)
    layer = layer_cls(3, 4, jet_order=3 if spatial_dims == 2 else 2, zero_order=True, eps=1e-3,
                      spatial_dims=spatial_dims).double()
    x = torch.randn(*shape, dtype=torch.float64, requires_grad=True)
    expected = dense_reference(layer, x, sigma)
    with smoothing_method(method):
        got = layer(x, sigma)
    torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-11)
    # Gradients against those of the dense path (the reference's are exact too).
    probe = torch.randn_like(got)
    grads = {}
    for each in ('dense', method):
        with smoothing_method(each):
            grads[each] = torch.autograd.grad((layer(x, sigma) * probe).sum(), [x, *layer.parameters()])
    for a, b in zip(grads[method], grads['dense']):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-11)


@pytest.mark.parametrize('method', ['auto', 'conv'])
def test_layer_on_a_large_image_keeps_the_input_layout(method, one_thread):
    torch.manual_seed(0)
    layer = GaussDerConv(2, 3, bias=False)
    x = torch.randn(1, 2, 214, 210)
    assert kernels.chosen_smoothing_method(0.5, layer.eps, x.shape[2:]) == 'banded'
    with smoothing_method(method):
        y = layer(x, 0.5)
        assert y.is_contiguous()
        channels_last = layer(x.contiguous(memory_format=torch.channels_last), 0.5)
        assert channels_last.is_contiguous(memory_format=torch.channels_last)
    with smoothing_method('dense'):
        torch.testing.assert_close(y, layer(x, 0.5), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize('layer_cls', [GaussDerConv, DSGaussDerConv])
@pytest.mark.parametrize('method', ['banded', 'conv'])
def test_conv_and_banded_paths_under_bfloat16_autocast_match_float32(layer_cls, method):
    torch.manual_seed(0)
    layer = layer_cls(4, 4)
    x = torch.rand(1, 4, 40, 40) + 1.0
    with torch.no_grad(), smoothing_method(method):
        reference = layer(x, 4.0)
        with torch.autocast('cpu', dtype=torch.bfloat16):
            y = layer(x, 4.0)
    assert ((y.float() - reference).norm() / reference.norm()).item() < 0.01


@pytest.mark.parametrize('method', METHODS)
def test_every_path_compiles_in_one_graph_and_exports(method):
    torch._dynamo.reset()
    torch.manual_seed(0)
    layer = GaussDerConv(2, 3, jet_order=2)
    x = torch.randn(1, 2, 21, 17, requires_grad=True)
    with smoothing_method(method):
        eager = layer(x, 6.0)  # 33 taps on 17 samples: the conv path reflects more than once
        compiled = torch.compile(lambda t: layer(t, 6.0), fullgraph=True, backend='aot_eager')
        got = compiled(x)
        torch.testing.assert_close(got, eager, rtol=1e-5, atol=1e-6)
        (grad_compiled,) = torch.autograd.grad(got.square().sum(), x)
        (grad_eager,) = torch.autograd.grad(eager.square().sum(), x)
        torch.testing.assert_close(grad_compiled, grad_eager, rtol=1e-4, atol=1e-5)

        class AtSigma(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.layer = layer

            def forward(self, t):
                return self.layer(t, 6.0)

        exported = torch.export.export(AtSigma(), (x.detach(),))
        torch.testing.assert_close(exported.module()(x.detach()), eager.detach(), rtol=1e-5, atol=1e-6)
    torch._dynamo.reset()


def test_operator_cache_is_bounded_by_its_byte_budget():
    torch.manual_seed(0)
    clear_caches()
    old = set_operator_cache_budget(2 ** 20)
    try:
        with smoothing_method('dense'):
            for size in range(40, 240, 10):  # 20 sizes; the largest padded matrices are ~0.2 MB each
                gaussian_jet(torch.randn(1, 1, size, size), 2.0)
                assert operator_cache_bytes() <= 2 ** 20
        info = operator_cache_info()
        assert 0 < info.nbytes == operator_cache_bytes() <= info.budget_bytes == 2 ** 20
        assert info.misses > info.entries  # the first sizes were dropped to make room
        x = torch.randn(1, 2, 50, 50)
        with smoothing_method('dense'):
            kept = gaussian_jet(x, 3.0)
        clear_caches()
        assert operator_cache_bytes() == 0
        set_operator_cache_budget(0)  # nothing is kept, results are the same
        with smoothing_method('dense'):
            torch.testing.assert_close(gaussian_jet(x, 3.0), kept, rtol=0, atol=0)
        assert operator_cache_bytes() == 0
    finally:
        set_operator_cache_budget(old)
    for bad in (-1, 1.5, '1GB', True):
        with pytest.raises(ValueError, match='budget_bytes'):
            set_operator_cache_budget(bad)
