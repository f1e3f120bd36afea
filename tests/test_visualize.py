"""Activation maps, receptive fields and scale-space views (paper §8, App. A.6)."""
import pytest
import torch
from PIL import Image
from recipe_modules import load_recipe

from gaussder_hf import GaussDerResNet
from gaussder_hf.visualize import (
    activation_maps,
    plot_activation_maps,
    plot_receptive_fields,
    plot_scale_space,
    receptive_fields,
)


@pytest.fixture(scope='module')
def model():
    torch.manual_seed(0)
    return GaussDerResNet(in_chans=1, num_classes=3, channels=(4, 4, 6), initial_scales=(0.8, 1.2, 1.8),
                          scale_ratio=1.2, spatial_pool='max').eval()


def test_activation_maps_shift_with_the_input(model):
    torch.manual_seed(1)
    patch = torch.rand(1, 12, 12)
    image = torch.zeros(1, 64, 64)
    image[:, 20:32, 18:30] = patch
    shifted = torch.zeros(1, 64, 64)
    shifted[:, 27:39, 23:35] = patch  # moved by (7, 5)
    shown, maps = activation_maps(model, image, class_index=2)
    _, moved = activation_maps(model, shifted, class_index=2)
    assert shown == 2 and sorted(maps) == [0, 1, 2]  # fine, medium, coarse
    for channel in maps:
        row, col = divmod(int(maps[channel].argmax()), 64)
        row2, col2 = divmod(int(moved[channel].argmax()), 64)
        assert (row2 - row, col2 - col) == (7, 5)
        torch.testing.assert_close(moved[channel][27:39, 23:35], maps[channel][20:32, 18:30], rtol=1e-3, atol=1e-4)


def test_receptive_field_is_the_impulse_response_of_that_layer(model):
    for layer in (1, 2, len(model.gd_layers())):
        sigma0 = 1.2
        kernels = receptive_fields(model, layer, sigma0)
        gd = model.gd_layers()[layer - 1]
        size = kernels.shape[-1] + 10
        impulse = torch.zeros(1, gd.in_channels, size, size)
        impulse[0, 0, size // 2, size // 2] = 1.0
        with torch.no_grad():
            response = gd(impulse, model.layer_scale(layer, sigma0))[0]
        r = kernels.shape[-1] // 2
        window = response[:, size // 2 - r:size // 2 + r + 1, size // 2 - r:size // 2 + r + 1]
        torch.testing.assert_close(window, kernels[:, 0].flip(-1, -2), rtol=1e-4, atol=1e-6)
    with pytest.raises(ValueError, match='layer must be in 1..6, got 7'):
        receptive_fields(model, 7)


def test_figures_have_their_panels(model, tmp_path):
    image = torch.rand(1, 24, 24)
    fig = plot_activation_maps(model, image, tmp_path / 'maps.png', channels=[0, 2], class_names=['a', 'b', 'c'])
    assert len(fig.axes) == 1 + 2 + 2  # input, two maps, their colour bars
    fig = plot_receptive_fields(model, 2, tmp_path / 'rf.png', max_outputs=3, max_inputs=2)
    assert len(fig.axes) == 3 * 2
    fig = plot_scale_space(model, image, tmp_path / 'jet.png', sigmas=(1, 2))
    assert len(fig.axes) == 2 * 5 and fig.axes[0].get_title() == 'L_x, sigma = 1'
    for name in ('maps.png', 'rf.png', 'jet.png'):
        assert Image.open(tmp_path / name).format == 'PNG' and (tmp_path / name).stat().st_size > 1000
    with pytest.raises(ValueError, match=r'0..2, got \[5\]'):
        activation_maps(model, image, channels=[5])
    with pytest.raises(ValueError, match='class_index'):
        activation_maps(model, image, class_index=3)


@pytest.mark.slow  # the three figures' functions are tested one by one above
def test_visualize_recipe_writes_the_three_figures(tmp_path, small_checkpoint):
    import subprocess
    import sys

    import numpy as np

    _, folder = small_checkpoint(tmp_path / 'ckpt', 'gaussderresnet18_fashionmnist', initial_scales=(1.0, 2.0))
    Image.fromarray((np.random.default_rng(0).random((28, 28)) * 255).astype(np.uint8)).save(tmp_path / 'x.png')
    root = __import__('pathlib').Path(__file__).resolve().parents[1]
    result = subprocess.run(
        [sys.executable, str(root / 'recipes' / 'visualize.py'), '--model', f'local-dir:{folder}',
         '--image', str(tmp_path / 'x.png'), '--output_dir', str(tmp_path / 'fig'), '--layer', '3'],
        capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    for name in ('activation_maps.png', 'receptive_fields.png', 'scale_space.png'):
        assert Image.open(tmp_path / 'fig' / name).format == 'PNG'


def test_visualize_recipe_refuses_a_layer_the_model_does_not_have(tmp_path, small_checkpoint):
    recipe = load_recipe('visualize')
    net, folder = small_checkpoint(tmp_path / 'ckpt')
    Image.new('L', (20, 20)).save(tmp_path / 'x.png')
    depth = len(net.gd_layers())
    for layer in (999, 0, -1):
        message = f"layer must be a GD layer of 'local-dir:.*ckpt', 1..{depth}, got {layer}"
        with pytest.raises(ValueError, match=message):
            recipe.visualize(f'local-dir:{folder}', str(tmp_path / 'x.png'), str(tmp_path / 'fig'), layer=layer)
    assert not (tmp_path / 'fig').exists()  # refused before drawing anything


def test_visualize_recipe_refuses_an_image_above_the_pixel_limit_before_decoding_it(tmp_path, monkeypatch,
                                                                                   small_checkpoint):
    from PIL import ImageFile

    recipe = load_recipe('visualize')
    _, folder = small_checkpoint(tmp_path / 'ckpt')
    Image.new('L', (40, 30)).save(tmp_path / 'big.png')
    # A small limit stands for PIL's default one; PIL itself would only warn and decode.
    monkeypatch.setattr(Image, 'MAX_IMAGE_PIXELS', 1000)
    monkeypatch.setattr(ImageFile.ImageFile, 'load', lambda self: pytest.fail('the pixels were decoded'))
    with pytest.raises(ValueError, match=r"image '.*big\.png' of 40x30 = 1,200 pixels exceeds the limit of 1,000"):
        recipe.visualize(f'local-dir:{folder}', str(tmp_path / 'big.png'), str(tmp_path / 'fig'), layer=3)
    assert not (tmp_path / 'fig').exists()


def test_visualize_recipe_still_takes_the_deprecated_out_spelling(tmp_path, small_checkpoint, capsys):
    recipe = load_recipe('visualize')
    _, folder = small_checkpoint(tmp_path / 'ckpt')
    Image.new('L', (20, 20)).save(tmp_path / 'x.png')
    with pytest.warns(FutureWarning, match='--output_dir'):
        recipe.main(['--model', f'local-dir:{folder}', '--image', str(tmp_path / 'x.png'), '--out',
                     str(tmp_path / 'old'), '--layer', '2'])
    assert sorted(p.name for p in (tmp_path / 'old').iterdir()) == [
        'activation_maps.png', 'receptive_fields.png', 'scale_space.png']
    with pytest.raises(SystemExit):
        recipe.main(['--model', f'local-dir:{folder}', '--image', str(tmp_path / 'x.png'), '--out', 'a',
                     '--output_dir', 'b'])
    assert 'name different folders' in capsys.readouterr().err
