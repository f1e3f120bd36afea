"""Lindeberg's own scale-space toolbox, ``pyscsp``, as an independent oracle for the numerical core.

``pyscsp`` computes the discrete analogue of the Gaussian from the modified Bessel functions and
applies central-difference masks with ``scipy.ndimage.correlate``; nothing of it is shared with
:mod:`gaussder_hf.kernels`. The comparisons run on real Fashion-MNIST images.
"""
import numpy as np
import pytest
import torch

from gaussder_hf.kernels import discrete_gaussian_kernel, gaussian_jet, jet_indices, truncation_radius

pyscsp = pytest.importorskip('pyscsp.discscsp')

from fashion_mnist import fashion_mnist_available, load_fashion_mnist  # noqa: E402

SIGMAS = np.concatenate([np.linspace(0.3, 3.0, 28), np.geomspace(3.0, 40.0, 12)[1:]])


@pytest.mark.parametrize('eps', [0.01, 0.005, 1e-4])
def test_kernels_equal_pyscsp(eps):
    worst = 0.0
    for sigma in SIGMAS:
        ours = discrete_gaussian_kernel(float(sigma), eps, dtype=torch.float64).numpy()
        theirs = pyscsp.make1Ddiscgaussfilter(float(sigma), eps, D=1)
        # Same truncation rule: the smallest support whose two-sided tail mass is <= eps.
        assert len(ours) == len(theirs) == 2 * truncation_radius(float(sigma), eps) + 1, sigma
        worst = max(worst, float(np.abs(ours - theirs).max()))
    assert worst <= 1e-15


def _real_images(count: int) -> np.ndarray:
    if fashion_mnist_available():
        images, _ = load_fashion_mnist('test', limit=count)
        return images.astype(np.float64) / 255.0
    pytest.skip('Fashion-MNIST (Debian package dataset-fashion-mnist) is not installed')


# pyscsp's masks act with y pointing up the rows, so its L_y and L_xy are minus the derivative
# along the row index that gaussder_hf's jet takes; L_x, L_xx and L_yy agree in sign.
_PYSCSP_NAME = {(0, 1): ('Lx', 1), (1, 0): ('Ly', -1), (0, 2): ('Lxx', 1), (1, 1): ('Lxy', -1), (2, 0): ('Lyy', 1)}


@pytest.mark.parametrize('sigma', [0.5, 1.0, 2.0, 6.0, 20.0])
def test_scale_normalised_jet_equals_pyscsp_on_real_images(sigma):
    eps = 0.01
    images = _real_images(3)
    ours = gaussian_jet(torch.from_numpy(images).unsqueeze(1), sigma, 2, eps=eps).squeeze(1).numpy()
    # Mirror extension without repeating the edge sample (numpy's 'reflect'), wide enough that
    # pyscsp's own boundary rule never reaches the cropped centre; at sigma 20 the kernel is
    # wider than the 28-pixel image, so the reflection repeats.
    pad = truncation_radius(sigma, eps) + 2
    # pyscsp smooths a 2-D image with per-axis error 1 - (1 - eps)**(1/2); this gives eps per axis.
    eps_2d = 1 - (1 - eps) ** 2
    for image, jet in zip(images, ours):
        padded = np.pad(image, pad, mode='reflect')
        smooth = pyscsp.discgaussconv(padded, sigma, eps_2d)
        for member, alpha in zip(jet, jet_indices(2, 2)):
            name, sign = _PYSCSP_NAME[alpha]
            reference = sign * pyscsp.applyNjetfcn(smooth, name, sigma, 'discgaussvar')[pad:-pad, pad:-pad]
            np.testing.assert_allclose(member, reference, rtol=0, atol=1e-12, err_msg=f'{name} at sigma {sigma}')
