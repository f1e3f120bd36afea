"""TF32 on NVIDIA GPUs is the low-precision hazard autocast is guarded against: the layers say so once."""
import warnings

import pytest
import torch

from gaussder_hf import GaussDerConv, layers
from gaussder_hf.layers import tf32_hazard


@pytest.fixture
def tf32_flags():
    """Restores PyTorch's global TF32 flags after the test."""
    cudnn, precision = torch.backends.cudnn.allow_tf32, torch.get_float32_matmul_precision()
    yield
    torch.backends.cudnn.allow_tf32 = cudnn
    torch.set_float32_matmul_precision(precision)


@pytest.mark.skipif(torch.cuda.is_available(), reason='reads the flags as on an Ampere GPU; this machine has its own')
def test_the_hazard_names_exactly_the_flags_that_are_on(tf32_flags):
    torch.backends.cudnn.allow_tf32 = True  # PyTorch's default
    torch.set_float32_matmul_precision('highest')
    message = tf32_hazard('cuda', torch.float32)
    assert 'torch.backends.cudnn.allow_tf32 = True' in message and 'matmul' not in message.split(':')[0]
    torch.set_float32_matmul_precision('high')  # TF32 matrix products
    torch.backends.cudnn.allow_tf32 = False
    message = tf32_hazard('cuda:0', torch.float32)
    assert 'torch.backends.cuda.matmul.allow_tf32 = True' in message and 'cudnn' not in message.split(':')[0]
    torch.set_float32_matmul_precision('highest')
    assert tf32_hazard('cuda', torch.float32) is None  # both off: float32 is float32
    torch.backends.cudnn.allow_tf32 = True
    # TF32 rounds float32 only, and only on CUDA devices
    assert tf32_hazard('cuda', torch.float64) is None
    assert tf32_hazard('cuda', torch.bfloat16) is None
    assert tf32_hazard('cpu', torch.float32) is None


def test_no_warning_on_a_cpu(tf32_flags, monkeypatch):
    torch.backends.cudnn.allow_tf32 = True
    torch.set_float32_matmul_precision('high')
    monkeypatch.setattr(layers, '_tf32_warned', False)
    with warnings.catch_warnings():
        warnings.simplefilter('error')
        GaussDerConv(2, 3)(torch.rand(1, 2, 8, 8), 1.0)
    assert layers._tf32_warned is False


@pytest.mark.skipif(not torch.cuda.is_available() or torch.cuda.get_device_capability() < (8, 0),
                    reason='needs an Ampere or later NVIDIA GPU')
def test_a_gpu_layer_warns_once_under_tf32(tf32_flags, monkeypatch):
    torch.backends.cudnn.allow_tf32 = True
    monkeypatch.setattr(layers, '_tf32_warned', False)
    layer, x = GaussDerConv(2, 3).cuda(), torch.rand(1, 2, 8, 8, device='cuda')
    with pytest.warns(UserWarning, match='TF32'):
        layer(x, 1.0)
    with warnings.catch_warnings():
        warnings.simplefilter('error')
        layer(x, 2.0)  # once per process
