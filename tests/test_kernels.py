"""Discrete scale-space primitives against independent references (scipy, closed-form Gaussians)."""
import math

import numpy as np
import pytest
import scipy.signal
import scipy.special
import torch

from gaussder_hf.kernels import (
    clear_caches,
    conv_nd,
    difference_basis,
    difference_stencil,
    discrete_gaussian_kernel,
    gaussian_jet,
    gaussian_smooth,
    jet_indices,
    operator_cache_info,
    reflect_index,
    separable_filters,
    smoothing_matrix,
    stencil_radius,
    truncation_radius,
)

SIGMAS = [0.3, 0.7, 1.0, 2.0, 5.5, 16.0]


@pytest.mark.parametrize('sigma', SIGMAS)
@pytest.mark.parametrize('eps', [0.01, 1e-4])
def test_kernel_matches_bessel_reference_and_truncation(sigma, eps):
    kernel = discrete_gaussian_kernel(sigma, eps, dtype=torch.float64).numpy()
    n = truncation_radius(sigma, eps)
    assert kernel.shape == (2 * n + 1,)
    reference = scipy.special.ive(np.arange(-n, n + 1), sigma ** 2)
    np.testing.assert_allclose(kernel, reference, rtol=1e-12, atol=0)
    # Tail mass within eps, and N is the smallest support that achieves it.
    assert 0.0 <= 1.0 - kernel.sum() <= eps
    shorter = scipy.special.ive(np.arange(-(n - 1), n), sigma ** 2).sum() if n > 0 else 0.0
    assert 1.0 - shorter > eps


@pytest.mark.parametrize('sigma', SIGMAS)
def test_kernel_variance_is_sigma_squared(sigma):
    kernel = discrete_gaussian_kernel(sigma, 1e-12, dtype=torch.float64).numpy()
    n = np.arange(len(kernel)) - len(kernel) // 2
    assert kernel.sum() == pytest.approx(1.0, abs=1e-11)
    assert (kernel * n).sum() == pytest.approx(0.0, abs=1e-12)
    assert (kernel * n ** 2).sum() == pytest.approx(sigma ** 2, rel=1e-9)


@pytest.mark.parametrize('s1, s2', [(0.5, 0.5), (0.8, 1.7), (2.0, 3.0), (4.0, 0.3)])
def test_semigroup_property(s1, s2):
    k1 = discrete_gaussian_kernel(s1, 1e-13, dtype=torch.float64).numpy()
    k2 = discrete_gaussian_kernel(s2, 1e-13, dtype=torch.float64).numpy()
    combined = np.convolve(k1, k2)
    direct = scipy.special.ive(np.arange(len(combined)) - len(combined) // 2, s1 ** 2 + s2 ** 2)
    np.testing.assert_allclose(combined, direct, atol=1e-12)


def test_difference_stencils_differentiate_polynomials_exactly():
    x = np.arange(-10, 11, dtype=float)
    for order in range(5):
        stencil = difference_stencil(order).numpy()
        r = len(stencil) // 2
        # Central differences of order k are exact on polynomials of degree <= k + 1 at the
        # centre; x**k / k! must have k-th derivative 1 everywhere.
        poly = x ** order / math.factorial(order) + 3.0 * x ** (order - 1 if order else 0)
        valid = np.correlate(poly, stencil, mode='valid')
        expected = 1.0 + (3.0 if order == 0 else 0.0)
        np.testing.assert_allclose(valid, expected, atol=1e-9)
        assert len(valid) == len(x) - 2 * r


def test_jet_indices_follow_the_paper():
    assert jet_indices(2, 2) == ((0, 1), (1, 0), (0, 2), (1, 1), (2, 0))
    assert jet_indices(2, 2, zero_order=True)[0] == (0, 0)
    assert len(jet_indices(3, 2)) == 9  # eq. (7): x, y, xx, xy, yy, xxx, xxy, xyy, yyy
    assert len(jet_indices(3, 2, zero_order=True)) == 10
    assert jet_indices(1, 1) == ((1,),)
    assert len(jet_indices(2, 3)) == 9  # 3 first-order + 6 second-order


@pytest.mark.parametrize('size, pad', [(5, 2), (5, 4), (5, 11), (2, 7), (1, 3), (9, 40)])
def test_reflect_index_is_numpy_reflect_even_for_wide_pads(size, pad):
    signal = np.arange(size) * 10.0
    if size == 1:
        expected = np.full(size + 2 * pad, signal[0])
    else:
        expected = np.pad(signal, pad, mode='reflect')
    np.testing.assert_array_equal(signal[reflect_index(size, pad)], expected)


@pytest.mark.parametrize('sigma, size', [(1.0, 12), (3.0, 7), (10.0, 5), (2.0, 1)])
@pytest.mark.parametrize('pad', [0, 2, 15])
def test_smoothing_matrix_equals_scipy_convolution_of_mirrored_signal(sigma, size, pad):
    eps = 1e-6
    rng = np.random.default_rng(0)
    signal = rng.standard_normal(size)
    kernel = discrete_gaussian_kernel(sigma, eps, dtype=torch.float64).numpy()
    n = len(kernel) // 2
    extended = signal[reflect_index(size, n)]
    expected = scipy.signal.convolve(extended, kernel, mode='valid')[reflect_index(size, pad)]
    matrix = smoothing_matrix(sigma, eps, size, pad=pad, dtype=torch.float64).numpy()
    assert matrix.shape == (size + 2 * pad, size)
    np.testing.assert_allclose(matrix @ signal, expected, atol=1e-12)


@pytest.mark.parametrize('bad', [-1, 1.5, True, '2'])
def test_bad_pad_and_size_are_rejected_naming_the_value(bad):
    with pytest.raises(ValueError, match=f'pad.*{bad}'):
        smoothing_matrix(1.0, 0.01, 8, pad=bad)
    with pytest.raises(ValueError, match=f'pad.*{bad}'):
        gaussian_smooth(torch.rand(1, 1, 8, 8), 1.0, pad=bad)
    with pytest.raises(ValueError, match=f'size.*{bad}'):
        smoothing_matrix(1.0, 0.01, bad)


def test_operators_are_cached_and_rebuilt_identically_after_clearing():
    clear_caches()
    assert operator_cache_info()[:4] == (0, 0, 0, 0)
    torch.manual_seed(0)
    x = torch.randn(2, 3, 20, 20)
    a = smoothing_matrix(1.7, 0.01, 20)
    assert operator_cache_info()[:3] == (0, 1, 1)  # built once ...
    torch.testing.assert_close(smoothing_matrix(1.7, 0.01, 20), a, rtol=0, atol=0)
    assert operator_cache_info()[:3] == (1, 1, 1)  # ... and found the second time
    before = gaussian_jet(x, 1.7, 2)
    built = operator_cache_info()
    assert built.misses > 1 and built.nbytes > 0
    torch.testing.assert_close(gaussian_jet(x, 1.7, 2), before, rtol=0, atol=0)
    assert operator_cache_info().misses == built.misses  # the same call again builds nothing
    clear_caches()
    assert operator_cache_info()[:4] == (0, 0, 0, 0)
    torch.testing.assert_close(smoothing_matrix(1.7, 0.01, 20), a, rtol=0, atol=0)
    torch.testing.assert_close(gaussian_jet(x, 1.7, 2), before, rtol=0, atol=0)
    assert operator_cache_info()[1:] == built[1:]  # rebuilt: the same operators, the same bytes


@pytest.mark.parametrize('jet_order, radius', [(1, 1), (2, 1), (3, 2)])
def test_stencil_radius_is_the_reach_of_the_widest_difference(jet_order, radius):
    assert stencil_radius(jet_order) == radius
    assert max(len(difference_stencil(order)) // 2 for order in range(jet_order + 1)) == radius
    with pytest.raises(ValueError, match='jet_order.*4'):
        stencil_radius(4)


def _monomials(radius: int, dims: int, beta) -> np.ndarray:
    """``prod_d x_d**beta_d / beta_d!`` on the grid ``-radius..radius`` per axis."""
    axis = np.arange(-radius, radius + 1, dtype=float)
    grids = np.meshgrid(*([axis] * dims), indexing='ij')
    return np.prod([g ** b / math.factorial(b) for g, b in zip(grids, beta)], axis=0)


@pytest.mark.parametrize('dims', [1, 2, 3])
@pytest.mark.parametrize('jet_order', [1, 2, 3])
def test_difference_basis_differentiates_low_degree_polynomials_exactly(dims, jet_order):
    # delta^alpha at the centre of its support gives d^alpha p(0) for every polynomial p of degree
    # <= |alpha| + 1, and d^alpha of x**beta / beta! at 0 is 1 for beta == alpha, else 0.
    basis = difference_basis(jet_order, dims, zero_order=True).numpy()
    radius = stencil_radius(jet_order)
    alphas = jet_indices(jet_order, dims, zero_order=True)
    assert basis.shape == (len(alphas), *([2 * radius + 1] * dims))
    checked = 0
    for member, alpha in zip(basis, alphas):
        for beta in np.ndindex(*([jet_order + 2] * dims)):
            if sum(beta) <= sum(alpha) + 1:
                response = (member * _monomials(radius, dims, beta)).sum()
                assert response == pytest.approx(float(tuple(beta) == alpha), abs=1e-12), (alpha, beta)
                checked += 1
    assert checked > len(alphas)
    with pytest.raises(ValueError, match='spatial_dims.*4'):
        difference_basis(2, 4)


def test_separable_filters_are_outer_products():
    rng = np.random.default_rng(0)
    one_d = [torch.tensor(rng.standard_normal(5)) for _ in range(3)]
    a, b, c = (t.numpy() for t in one_d)
    two = separable_filters(one_d, [(0, 2), (2, 1)]).numpy()
    assert two.shape == (2, 5, 5)
    np.testing.assert_allclose(two[0], np.einsum('i,j->ij', a, c), rtol=1e-15)
    np.testing.assert_allclose(two[1], np.einsum('i,j->ij', c, b), rtol=1e-15)
    three = separable_filters(one_d, [(1, 1, 2), (0, 1, 2)]).numpy()
    np.testing.assert_allclose(three[0], np.einsum('i,j,k->ijk', b, b, c), rtol=1e-15)
    np.testing.assert_allclose(three[1], np.einsum('i,j,k->ijk', a, b, c), rtol=1e-15)


def test_conv_nd_names_torch_convolutions():
    assert conv_nd(1) is torch.nn.functional.conv1d and conv_nd(3) is torch.nn.functional.conv3d
    with pytest.raises(ValueError, match='spatial_dims.*0'):
        conv_nd(0)


def _gaussian_blob_derivatives(coords, variance, alpha):
    """Closed-form partial derivatives of a unit-height isotropic Gaussian of the given variance."""
    # d^k/dx^k exp(-x^2 / 2v) = (-1/sqrt(2v))^k H_k(x / sqrt(2v)) exp(-x^2 / 2v) (physicists' Hermite)
    value = 1.0
    for x, k in zip(coords, alpha):
        u = x / math.sqrt(2 * variance)
        hermite = scipy.special.eval_hermite(k, u)
        value = value * (-1.0 / math.sqrt(2 * variance)) ** k * hermite * np.exp(-u ** 2)
    return value


@pytest.mark.parametrize('dims', [1, 2, 3])
@pytest.mark.parametrize('sigma', [1.5, 3.0])
def test_jet_matches_analytic_derivatives_of_a_wide_gaussian_blob(dims, sigma):
    # A wide blob of variance v0 smoothed to scale sigma is (up to amplitude) a Gaussian of
    # variance v0 + sigma**2, whose derivatives are known in closed form. The discrete scale
    # space approximates that to O(1 / width**2).
    v0 = 9.0 ** 2
    size = 41 if dims == 3 else 81
    axis = np.arange(size) - size // 2
    grids = np.meshgrid(*([axis] * dims), indexing='ij')
    blob = _gaussian_blob_derivatives(grids, v0, (0,) * dims)
    x = torch.tensor(blob, dtype=torch.float64)[None, None]
    jet = gaussian_jet(x, sigma, 2, zero_order=True, eps=1e-10)[0, 0].numpy()
    variance = v0 + sigma ** 2
    amplitude = (v0 / variance) ** (dims / 2)  # the smoothed blob keeps its integral
    centre = tuple([slice(size // 2 - 6, size // 2 + 7)] * dims)
    for member, alpha in zip(jet, jet_indices(2, dims, zero_order=True)):
        expected = amplitude * sigma ** sum(alpha) * _gaussian_blob_derivatives(grids, variance, alpha)
        scale = np.abs(expected).max()
        assert scale > 0
        error = np.abs(member[centre] - expected[centre]).max() / scale
        assert error < 0.01, (alpha, error)


def test_jet_shape_and_scale_normalisation():
    torch.manual_seed(0)
    x = torch.randn(2, 3, 15, 13, dtype=torch.float64)
    raw = gaussian_jet(x, 2.5, 3, scale_normalised=False)
    normalised = gaussian_jet(x, 2.5, 3)
    assert raw.shape == (2, 3, 9, 15, 13)
    for j, alpha in enumerate(jet_indices(3, 2)):
        torch.testing.assert_close(normalised[:, :, j], raw[:, :, j] * 2.5 ** sum(alpha))


def test_smoothing_never_fails_on_tiny_images():
    x = torch.rand(1, 2, 3, 1)
    y = gaussian_smooth(x, 20.0)
    assert y.shape == x.shape and torch.isfinite(y).all()
    assert gaussian_jet(torch.rand(1, 1, 2, 2), 30.0, 3).shape == (1, 1, 9, 2, 2)


@pytest.mark.parametrize('bad', [0.0, -1.0, float('nan'), float('inf'), 'wide'])
def test_bad_sigma_is_rejected_naming_the_value(bad):
    with pytest.raises(ValueError, match=f'sigma.*{bad}'):
        discrete_gaussian_kernel(bad)
    with pytest.raises(ValueError, match='sigma'):
        gaussian_jet(torch.rand(1, 1, 5, 5), bad)


@pytest.mark.parametrize('bad', [0.0, 1.0, -0.1, 2.0])
def test_bad_eps_is_rejected_naming_the_value(bad):
    with pytest.raises(ValueError, match=f'eps.*{bad}'):
        discrete_gaussian_kernel(1.0, bad)


@pytest.mark.parametrize('bad', [0, 4, 2.0, True])
def test_bad_jet_order_is_rejected(bad):
    with pytest.raises(ValueError, match=f'jet_order.*{bad}'):
        gaussian_jet(torch.rand(1, 1, 5, 5), 1.0, bad)


def test_bad_signal_shape_is_rejected():
    with pytest.raises(ValueError, match=r'shape \(5,\)'):
        gaussian_jet(torch.rand(5), 1.0)
    with pytest.raises(ValueError, match='1-D, 2-D or 3-D'):
        gaussian_jet(torch.rand(1, 1, 2, 2, 2, 2), 1.0)


def test_kernels_first_built_in_inference_mode_still_train():
    from gaussder_hf.layers import GaussDerConv
    layer = GaussDerConv(2, 3)
    x = torch.rand(1, 2, 23, 17)
    clear_caches()  # the operators are first built under inference mode, whatever ran before
    with torch.inference_mode():
        layer(x, 1.37)
    assert operator_cache_info().misses > 0
    layer(x.requires_grad_(), 1.37).sum().backward()
    # Gradients that reach the input and the weights, finite and not all zero: a kernel cached as
    # an inference tensor would have cut the graph (or made backward refuse it).
    for grad in (x.grad, layer.weight.grad):
        assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0
