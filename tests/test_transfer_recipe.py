"""recipes/transfer.py: the same weights on another grid of scale channels (App. A.4, A.5)."""
import math
from pathlib import Path

import pytest
import timm
import torch
import transformers
from PIL import Image
from recipe_modules import load_recipe
from safetensors.torch import load_file

import gaussder_hf

ROOT = Path(__file__).resolve().parents[1]
recipe = load_recipe('transfer')


@pytest.fixture()
def single(tmp_path, small_checkpoint):
    return small_checkpoint(tmp_path / 'single', canvas_size={'height': 72, 'width': 72})


def test_transfer_to_the_default_grid_keeps_every_weight_and_the_matching_channel(single, tmp_path):
    model, folder = single
    before = (folder / 'model.safetensors').read_bytes()
    recipe.main([str(folder), str(tmp_path / 'multi')])
    multi = timm.create_model(f'local-dir:{tmp_path / "multi"}', pretrained=True).eval()
    # Without --initial_scales: the grid of the source's preset (the paper's 2**-1.5 ... 2).
    preset_grid = gaussder_hf.PRESETS['gaussderresnet10_fashionmnist']['initial_scales']
    assert multi.initial_scales == pytest.approx([2 ** (k / 2) for k in range(-3, 3)], rel=1e-15)
    assert multi.initial_scales == pytest.approx(preset_grid)
    assert (folder / 'model.safetensors').read_bytes() == before  # the source is untouched
    source, target = load_file(folder / 'model.safetensors'), load_file(tmp_path / 'multi' / 'model.safetensors')
    assert source.keys() == target.keys() and all(torch.equal(source[k], target[k]) for k in source)
    x = torch.rand(2, 1, 20, 20)
    with torch.no_grad():
        channels = multi.forward_scale_channels(x)
        assert channels.shape == (2, 6, 10)
        torch.testing.assert_close(channels[:, 3], model.forward_scale_channels(x)[:, 0])  # sigma0 = 1
    assert 'transferred without retraining' in (tmp_path / 'multi' / 'README.md').read_text()
    # the image processor keeps the source's 72x72 canvas: a raw 28x28 image is padded as before
    processor = transformers.AutoImageProcessor.from_pretrained(tmp_path / 'multi')
    assert processor.canvas_size == {'height': 72, 'width': 72}
    assert processor(Image.new('L', (28, 28)), return_tensors='pt')['pixel_values'].shape == (1, 1, 72, 72)


def test_denser_grid_with_a_boundary_channel_and_bad_arguments(single, tmp_path, capsys):
    _, folder = single
    recipe.main([str(folder), str(tmp_path / 'dense'), '--grid', '0.5', str(2 ** 0.25), '11', '--boundary', '4'])
    dense = timm.create_model(f'local-dir:{tmp_path / "dense"}', pretrained=True)
    expected = [0.5 * 2 ** (i / 4) for i in range(11)] + [4.0]
    assert dense.initial_scales == pytest.approx(expected)
    assert math.isclose(dense.initial_scales[10], 2 * math.sqrt(2))
    assert 'initial scales 0.5, 0.5946' in capsys.readouterr().out
    with pytest.raises(FileExistsError, match='dense.*model.safetensors exists'):
        recipe.main([str(folder), str(tmp_path / 'dense')])
    recipe.main([str(folder), str(tmp_path / 'dense'), '--overwrite', '--initial_scales', '1,2'])
    assert timm.create_model(f'local-dir:{tmp_path / "dense"}').initial_scales == (1.0, 2.0)
    with pytest.raises(ValueError, match="no such checkpoint folder '.*nowhere'"):
        recipe.transfer(str(tmp_path / 'nowhere'), str(tmp_path / 'x'))
    with pytest.raises(SystemExit):
        recipe.main([str(folder), str(tmp_path / 'x'), '--initial_scales', '1,two'])
    assert "comma-separated numbers, got '1,two'" in capsys.readouterr().err
    with pytest.raises(ValueError, match=r"initial scale must be a finite number > 0, got -1.0"):
        recipe.main([str(folder), str(tmp_path / 'y'), '--initial_scales', '1,-1'])
    assert not (tmp_path / 'y' / 'model.safetensors').exists()


def test_grids_with_scales_no_image_can_use_are_refused_naming_the_scale(single, tmp_path, capsys):
    _, folder = single
    with pytest.raises(SystemExit):
        recipe.main([str(folder), str(tmp_path / 'huge'), '--grid', '0.5', '2', '40'])
    # 0.5 * 2**39 = 2.7e11 pixels
    assert f'reaches sigma0 = {0.5 * 2 ** 39:.4g}, beyond 1024 pixels' in capsys.readouterr().err
    with pytest.raises(SystemExit):  # too large to be a float at all
        recipe.main([str(folder), str(tmp_path / 'huge'), '--grid', '1', '10', '400'])
    assert 'reaches sigma0 = 10^399' in capsys.readouterr().err
    for grid, message in [(['1', '0', '3'], 'RATIO must be a finite number > 0, got 0.0'),
                          (['1', '2', '0'], 'COUNT must be a whole number >= 1, got 0.0')]:
        with pytest.raises(SystemExit):
            recipe.main([str(folder), str(tmp_path / 'huge'), '--grid', *grid])
        assert message in capsys.readouterr().err
    with pytest.raises(ValueError, match='sigma0 = 2000 is beyond 1024 pixels'):
        recipe.transfer(str(folder), str(tmp_path / 'huge'), initial_scales=(1.0, 2000.0))
    assert not (tmp_path / 'huge').exists()
    # The largest usable grid still transfers: 0.5 * 2**11 = 1024.
    recipe.main([str(folder), str(tmp_path / 'edge'), '--grid', '0.5', '2', '12'])
    assert max(timm.create_model(f'local-dir:{tmp_path / "edge"}').initial_scales) == 1024.0
