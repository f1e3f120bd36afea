"""Presets reproduce the parameter counts of the paper's Table 1 and Table 4."""
import pytest

import gaussder_hf

# Table 1 (GaussDerResNet) and Table 4 (DSGaussDerResNet) of arXiv:2603.02843.
PAPER_PARAMETERS = {
    'gaussderresnet18_fashionmnist': 295_000,
    'gaussderresnet18_cifar10': 1_780_000,
    'gaussderresnet18_stl10': 2_070_000,
    'dsgaussderresnet18_fashionmnist': 120_000,
    'dsgaussderresnet18_cifar10': 547_000,
    'dsgaussderresnet18_stl10': 669_000,
}


@pytest.mark.parametrize('name', sorted(PAPER_PARAMETERS))
def test_parameter_count_matches_paper_within_3_percent(name):
    model = gaussder_hf.create_gaussderresnet(name)
    count = sum(p.numel() for p in model.parameters())
    assert count == pytest.approx(PAPER_PARAMETERS[name], rel=0.03)


# Registered presets that are not in the paper (small variants for CPU work).
EXTRA_PRESETS = {'gaussderresnet10_fashionmnist'}


def test_every_registered_preset_is_covered_and_follows_table_1():
    assert set(gaussder_hf.PRESETS) == set(PAPER_PARAMETERS) | EXTRA_PRESETS
    table1 = {  # dataset: (scale ratio, eps, spatial selection, zero order, input channels)
        'fashionmnist': (1.13, 0.01, 'center', False, 1),
        'cifar10': (1.2, 0.005, 'center', False, 3),
        'stl10': (1.32, 0.005, 'max', True, 3),
    }
    for name, preset in gaussder_hf.PRESETS.items():
        ratio, eps, spatial, zero, chans = table1[name.rsplit('_', 1)[1]]
        assert (preset['scale_ratio'], preset['eps'], preset['spatial_pool'], preset['zero_order'],
                preset['in_chans']) == (ratio, eps, spatial, zero, chans)
        assert len(preset['initial_scales']) == 6
        assert len(preset['channels']) == (9 if name in PAPER_PARAMETERS else 5)  # 8 blocks (4 for -10)


def test_gaussderresnet10_counts_its_parameters_layer_by_layer():
    # First layer 1 -> 24, four blocks of two 24 -> 24 layers, last layer 24 -> 10; each GD layer
    # has C_out * C_in * J weights with J = 5 (orders 1 and 2 of a 2-D 2-jet) and a batch norm.
    jet = 5
    layers = [(1, 24)] + [(24, 24)] * 8 + [(24, 10)]
    expected = sum(c_out * c_in * jet + 2 * c_out for c_in, c_out in layers)
    model = gaussder_hf.create_gaussderresnet('gaussderresnet10_fashionmnist')
    assert sum(p.numel() for p in model.parameters()) == expected == 24_812
    assert model.num_layers == 10


def test_presets_cannot_be_mutated_through_get_preset():
    args = gaussder_hf.get_preset('gaussderresnet18_stl10')
    args['scale_pool'] = 'avg'
    assert gaussder_hf.PRESETS['gaussderresnet18_stl10']['scale_pool'] == 'max'
    with pytest.raises(TypeError):
        gaussder_hf.PRESETS['gaussderresnet18_stl10']['scale_pool'] = 'avg'
