"""Presets and recipe configs follow the paper: Table 1's fragments and counts, Table 4, the grids, Table 2."""
import itertools
import json
import math
from pathlib import Path

import pytest
import yaml
from recipe_modules import load_recipe

import gaussder_hf
from gaussder_hf import GaussDerResNet
from gaussder_hf.presets import (
    CHANNELS_V0,
    INITIAL_SCALES_V0,
    PAPER_EVALUATION_SCALES,
    PAPER_INITIAL_SCALES,
    count_parameters,
    evaluation_scales,
)

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / 'recipes' / 'configs'

# Table 1 (GaussDerResNet) and Table 4 (DSGaussDerResNet) of arXiv:2603.02843.
PAPER_PARAMETERS = {
    'gaussderresnet18_fashionmnist': 295_000,
    'gaussderresnet18_cifar10': 1_780_000,
    'gaussderresnet18_stl10': 2_070_000,
    'dsgaussderresnet18_fashionmnist': 120_000,
    'dsgaussderresnet18_cifar10': 547_000,
    'dsgaussderresnet18_stl10': 669_000,
}
# Table 1, row "Intermediate feature channels", as the extraction left it: the values typeset with
# one or two over-lines (a run of two or three blocks) are lost, their separators remain.
FRAGMENTS = {'fashionmnist': '1-48-24----128-10', 'cifar10': '3----256-10', 'stl10': '3-----256-10'}


def _count(model) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize('name', sorted(PAPER_PARAMETERS))
def test_parameter_count_matches_paper_within_2_percent(name):
    model = gaussder_hf.create_gaussderresnet(name)
    assert _count(model) == pytest.approx(PAPER_PARAMETERS[name], rel=0.02)


def _as_extracted(values: list[int]) -> str:
    """Writes a full channel list as Table 1 would, then drops what the extraction dropped."""
    fields = []
    for value, run in itertools.groupby(values):
        length = len(list(run))
        assert length <= 3, f'a run of {length} x {value} has no notation in Table 1'
        fields.append(str(value) if length == 1 else '')  # over-lined values are lost
    return '-'.join(fields)


@pytest.mark.parametrize('dataset', sorted(FRAGMENTS))
def test_channel_lists_reproduce_table_1s_surviving_fragments(dataset):
    for prefix in ('gaussderresnet18', 'dsgaussderresnet18'):
        preset = gaussder_hf.PRESETS[f'{prefix}_{dataset}']
        full = [preset['in_chans'], *preset['channels'], preset['num_classes']]
        assert len(full) == 11  # one value per effective layer (eq. 28) plus input and classes
        assert _as_extracted(full) == FRAGMENTS[dataset]
    # The lists of earlier versions do not: that is why they were replaced.
    v0 = [preset['in_chans'], *CHANNELS_V0[dataset], preset['num_classes']]
    assert _as_extracted(v0) != FRAGMENTS[dataset]


def test_the_fragment_check_can_tell_lists_apart():
    assert _as_extracted([1, 48, 24, 32, 32, 48, 48, 64, 64, 128, 10]) == '1-48-24----128-10'
    assert _as_extracted([1, 48, 24, 32, 32, 48, 48, 64, 128, 128, 10]) == '1-48-24---64--10'
    with pytest.raises(AssertionError, match='run of 4'):
        _as_extracted([3, 48, 48, 48, 48, 10])


@pytest.mark.parametrize('dataset', sorted(CHANNELS_V0))
def test_earlier_channel_lists_stay_buildable_with_their_counts(dataset):
    # The lists of earlier versions matched both counts to within 0.4%.
    for prefix in ('gaussderresnet18', 'dsgaussderresnet18'):
        name = f'{prefix}_{dataset}'
        model = gaussder_hf.create_gaussderresnet(name, channels=CHANNELS_V0[dataset], initial_scales=(1.0,))
        assert _count(model) == pytest.approx(PAPER_PARAMETERS[name], rel=0.004)


@pytest.mark.parametrize('args', [
    dict(in_chans=3, num_classes=7, channels=(8, 12, 12, 16, 16, 16, 20, 24, 24)),
    dict(in_chans=3, num_classes=7, channels=(8, 12, 12, 16, 16, 16, 20, 24, 24), zero_order=True,
         separable_from_block=5),
    dict(in_chans=1, num_classes=4, channels=(6, 6, 10, 8), jet_order=3, separable_from_block=2),
    dict(in_chans=2, num_classes=0, channels=(5, 9, 9), jet_order=1, zero_order=True),
])
def test_closed_form_parameter_count_equals_the_built_network(args):
    torch_count = _count(GaussDerResNet(**args, initial_scales=(1.0,)))
    assert count_parameters(**args) == torch_count
    if args['num_classes'] == 0 or args.get('separable_from_block'):
        return
    # bias=True adds one parameter per GD output channel: first layer, 2 per block, last layer.
    channels = args['channels']
    biases = channels[0] + 2 * sum(channels[1:]) + args['num_classes']
    assert count_parameters(**args, bias=True) == torch_count + biases


def test_training_grid_has_six_channels_and_the_fine_boundary_channel():
    scales = PAPER_INITIAL_SCALES
    assert len(scales) == 6  # Table 1
    ratios = [b / a for a, b in zip(scales, scales[1:])]
    assert ratios == pytest.approx([math.sqrt(2)] * 5, rel=1e-12)
    # The test size factors 1/2 ... 2 are matched by the channels 1/2 ... 2 (eq. 13: sigma' = S sigma);
    # the one extra channel lies below 1/2 (§5.1), none above 2.
    assert scales[1:] == pytest.approx((0.5, 1 / math.sqrt(2), 1.0, math.sqrt(2), 2.0), rel=1e-15)
    assert scales[0] < 0.5 and max(scales) == 2.0
    # At evaluation the large boundary channel 2 sqrt2 is added (App. A.4, A.5).
    assert PAPER_EVALUATION_SCALES == scales + (pytest.approx(2 * math.sqrt(2), rel=1e-15),)


def test_every_paper_preset_trains_on_the_paper_grid_and_is_evaluated_with_the_boundary_channel():
    for name in PAPER_PARAMETERS:
        assert gaussder_hf.PRESETS[name]['initial_scales'] == PAPER_INITIAL_SCALES
        assert evaluation_scales(name) == PAPER_EVALUATION_SCALES
    with pytest.raises(ValueError, match="unknown preset 'resnet18'"):
        evaluation_scales('resnet18')


def test_the_10_layer_preset_has_the_grid_of_its_committed_weights_and_the_paper_s():
    name = 'gaussderresnet10_fashionmnist'
    committed = json.loads((ROOT / 'checkpoints' / name / 'config.json').read_text())['initial_scales']
    # pretrained=True builds the preset: it must be the network the committed weights were trained as
    assert gaussder_hf.PRESETS[name]['initial_scales'] == pytest.approx(committed, rel=1e-15)
    assert committed == pytest.approx([2 ** -1.5, 0.5, 2 ** -0.5, 1.0, 2 ** 0.5, 2.0], rel=1e-15)
    assert evaluation_scales(name) == PAPER_EVALUATION_SCALES
    # the grid of earlier versions stays reachable for the runs trained on it
    assert INITIAL_SCALES_V0 == pytest.approx((0.5, 1 / math.sqrt(2), 1.0, math.sqrt(2), 2.0, 2 * math.sqrt(2)))
    earlier = json.loads((ROOT / 'results' / 'rescaled_fashion_mnist_cpu' / 'two_stage_model' / 'config.json')
                         .read_text())['initial_scales']
    assert earlier == pytest.approx(INITIAL_SCALES_V0, rel=1e-15)


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


# ---- recipe configs (Table 2, Table 5, App. A.2) -------------------------------------------------

# Split sizes of the rescaled datasets as the paper states them (§4.1.1-4.1.3): train, validation.
SPLITS = {'rescaled_fashion_mnist': (50_000, 10_000), 'rescaled_cifar10': (40_000, 10_000),
          'rescaled_stl10': (7_000, 1_000)}
# Table 2: iterations of the single-stage runs.
TABLE_2_ITERATIONS = {'rescaled_fashion_mnist': 30_000, 'rescaled_cifar10': 100_000, 'rescaled_stl10': 56_000}


def _config(name: str) -> dict:
    return yaml.safe_load((CONFIGS / f'{name}.yaml').read_text())


def test_the_builders_make_the_split_sizes_the_paper_states():
    from gaussder_hf.data.rescaled_cifar10 import RescaledCIFAR10
    from gaussder_hf.data.rescaled_fashion_mnist import RescaledFashionMNIST
    from gaussder_hf.data.rescaled_stl10 import SPLIT_SIZES

    # Official training sets: 60,000 Fashion-MNIST images, 50,000 CIFAR-10 images (5 batches).
    for builder, official, dataset in ((RescaledFashionMNIST, 60_000, 'rescaled_fashion_mnist'),
                                       (RescaledCIFAR10, 50_000, 'rescaled_cifar10')):
        numerator, denominator = builder.TRAIN_SHARE
        train = official * numerator // denominator
        assert (train, official - train) == SPLITS[dataset]
    assert (SPLIT_SIZES['train'], SPLIT_SIZES['validation']) == SPLITS['rescaled_stl10']


@pytest.mark.parametrize('name', ['rescaled_fashion_mnist', 'rescaled_cifar10', 'rescaled_stl10'])
def test_paper_configs_train_on_train_and_validation_giving_table_2s_iterations(name):
    cfg = _config(name)
    assert cfg['train_on_validation'] is True
    train, validation = SPLITS[cfg['dataset']]
    images = train + validation
    assert cfg['epochs'] * images / cfg['batch_size'] == TABLE_2_ITERATIONS[cfg['dataset']]
    # The training split alone would give 25,000 / 80,000 / 49,000.
    assert cfg['epochs'] * train / cfg['batch_size'] < 0.9 * TABLE_2_ITERATIONS[cfg['dataset']]
    # recipes/train.py takes whole batches: at most one step per epoch fewer.
    steps = cfg['epochs'] * (images // cfg['batch_size'])
    assert TABLE_2_ITERATIONS[cfg['dataset']] - cfg['epochs'] <= steps <= TABLE_2_ITERATIONS[cfg['dataset']]


# (config, model, batch size, epochs, lr, warm-up epochs); Table 5 for the stages, App. A.2 for DS.
PAPER_SCHEDULES = [
    ('rescaled_fashion_mnist_stage1', 'gaussderresnet18_fashionmnist', 128, 16, 0.01, 0.0),
    ('rescaled_fashion_mnist_stage2', 'gaussderresnet18_fashionmnist', 64, 16, 0.005, 0.0),
    ('rescaled_cifar10_stage1', 'gaussderresnet18_cifar10', 128, 40, 0.01, 8.0),
    ('rescaled_cifar10_stage2', 'gaussderresnet18_cifar10', 45, 50, 0.005, 8.0),
    ('rescaled_stl10_stage1', 'gaussderresnet18_stl10', 64, 50, 0.01, 8.0),
    ('rescaled_stl10_stage2', 'gaussderresnet18_stl10', 17, 70, 0.005, 8.0),
    ('rescaled_fashion_mnist_ds', 'dsgaussderresnet18_fashionmnist', 64, 32, 0.01, 0.0),
    ('rescaled_cifar10_ds', 'dsgaussderresnet18_cifar10', 45, 90, 0.01, 8.0),
    ('rescaled_stl10_ds', 'dsgaussderresnet18_stl10', 17, 170, 0.005, 8.0),
    ('rescaled_fashion_mnist_no_label_smoothing', 'gaussderresnet18_fashionmnist', 64, 32, 0.01, 0.0),
]


@pytest.mark.parametrize('name, model, batch, epochs, lr, warmup', PAPER_SCHEDULES)
def test_schedule_configs_follow_the_text(name, model, batch, epochs, lr, warmup):
    cfg = _config(name)
    assert (cfg['model'], cfg['batch_size'], cfg['epochs'], cfg['lr'], cfg['warmup_epochs']) == (
        model, batch, epochs, lr, warmup)
    assert cfg['train_on_validation'] is True
    if name.endswith('_stage1'):  # a single scale channel (its scale is lost: sigma0 = 1)
        assert cfg['model_args']['initial_scales'] == [1.0]
    if name.endswith('_stage2'):  # init_from keeps the source's grid unless the config states one
        assert 'init_from' in cfg
        assert tuple(cfg['model_args']['initial_scales']) == pytest.approx(PAPER_INITIAL_SCALES, rel=1e-15)
    if name.endswith('no_label_smoothing'):  # App. A.3
        assert (cfg['label_smoothing'], cfg['weight_decay']) == (0.0, 0.05)
    else:
        assert (cfg['label_smoothing'], cfg['weight_decay']) == (0.1, 0.025)


def test_every_config_loads_in_the_training_recipe_and_cpu_configs_keep_validation_held_out():

    recipe = load_recipe('train')
    for path in sorted(CONFIGS.glob('*.yaml')):
        cfg = recipe.load_config(str(path))
        if cfg.model in gaussder_hf.PRESETS:
            gaussder_hf.get_preset(cfg.model)  # a registered preset
            unknown = set(cfg.model_args) - set(gaussder_hf.get_preset(cfg.model)) - {'num_classes'}
            assert not unknown, (path.name, unknown)
        if path.name.endswith(('_cpu.yaml', '_cpu_stage2.yaml')) or '_cpu_stage2_dropout_' in path.name \
                or path.name == 'smoke.yaml':
            assert cfg.train_on_validation is False, path.name  # validation selects, as in the CPU experiment


def test_the_dropout_comparison_configs_differ_in_the_mode_alone():
    # The two runs that choose the default scale-channel dropout (design.md §3.10): same start,
    # grid and schedule, each its own run folder, only scale_dropout_mode differs.
    score, channel = (_config(f'rescaled_fashion_mnist_cpu_stage2_dropout_{m}') for m in ('score', 'channel'))
    assert (score['model_args'].pop('scale_dropout_mode'), channel['model_args'].pop('scale_dropout_mode')) == (
        'score', 'channel')
    assert score.pop('output_dir') != channel.pop('output_dir')
    assert score == channel
    assert tuple(score['model_args']['initial_scales']) == pytest.approx(PAPER_INITIAL_SCALES, rel=1e-15)
    assert score['init_from'] == _config('rescaled_fashion_mnist_cpu')['output_dir'] + '/model'


def test_the_final_cpu_run_is_the_selected_one_on_train_plus_validation():
    # The final run changes the data alone (paper §5.2): what was chosen on held-out validation
    # data is retrained on train + validation, which it can no longer be evaluated on.
    selected, final = _config('rescaled_fashion_mnist_cpu'), _config('rescaled_fashion_mnist_cpu_final_stage1')
    assert final.pop('train_on_validation') is True and 'train_on_validation' not in selected
    assert final.pop('evaluate_every_epoch') is False and 'evaluate_every_epoch' not in selected
    assert final.pop('output_dir') != selected.pop('output_dir')
    assert final == selected


def test_the_final_cpu_stage2_is_the_compared_one_on_train_plus_validation():
    # Stage 2 of the final run is the dropout comparison's winning arm (results/dropout_mode_cpu/),
    # run for a whole epoch from the final stage 1 on train + validation.
    winner, final = _config('rescaled_fashion_mnist_cpu_stage2_dropout_score'), _config(
        'rescaled_fashion_mnist_cpu_final_stage2')
    assert final.pop('init_from') == _config('rescaled_fashion_mnist_cpu_final_stage1')['output_dir'] + '/model'
    assert winner.pop('init_from') == _config('rescaled_fashion_mnist_cpu')['output_dir'] + '/model'
    assert final.pop('train_on_validation') is True and final.pop('evaluate_every_epoch') is False
    assert winner.pop('max_steps') == 390 and 'max_steps' not in final  # the comparison ran half an epoch
    assert final.pop('output_dir') != winner.pop('output_dir')
    assert final == winner


def test_the_two_epoch_cpu_stage2_differs_from_the_final_one_in_length_alone():
    # A step towards Table 5's 16-epoch stage 2: the same start, data, grid and settings, twice the steps.
    final, longer = (_config(name) for name in ('rescaled_fashion_mnist_cpu_final_stage2',
                                                'rescaled_fashion_mnist_cpu_final_stage2_2epochs'))
    assert (final.pop('epochs'), longer.pop('epochs')) == (1, 2)
    assert final.pop('output_dir') != longer.pop('output_dir')
    assert final == longer


def test_the_continued_cpu_stage2_starts_from_the_committed_network_and_differs_in_length_and_seed():
    # Three more epochs of the same stage 2 from the committed one-epoch network (a warm restart),
    # another seed so they draw another order; data, grid and every other setting unchanged.
    final, continued = (_config(name) for name in ('rescaled_fashion_mnist_cpu_final_stage2',
                                                   'rescaled_fashion_mnist_cpu_final_stage2_continued'))
    assert final.pop('init_from') == _config('rescaled_fashion_mnist_cpu_final_stage1')['output_dir'] + '/model'
    assert continued.pop('init_from') == 'checkpoints/gaussderresnet10_fashionmnist'
    assert (final.pop('epochs'), continued.pop('epochs')) == (1, 3)
    assert final.pop('seed', 0) == 0 and continued.pop('seed') == 1
    assert final.pop('output_dir') != continued.pop('output_dir')
    assert final == continued
    # the checkpoint it starts from is the network of that stage 2: its grid and dropout mode
    checkpoint = json.loads((ROOT / 'checkpoints' / 'gaussderresnet10_fashionmnist' / 'config.json').read_text())
    assert checkpoint['initial_scales'] == continued['model_args']['initial_scales']
    assert checkpoint['scale_dropout_mode'] == continued['model_args']['scale_dropout_mode']


def test_every_preset_states_a_valid_architecture_in_canonical_form():
    # The presets and the table of hyperparameters name the same arguments; each preset passes
    # the one validation unchanged (tuples, floats), and states every hyperparameter of the table.
    from gaussder_hf.architecture import ARCHITECTURE, check_architecture

    for name, preset in gaussder_hf.PRESETS.items():
        args = {k: v for k, v in preset.items() if k != 'num_classes'}
        assert set(args) == {p.name for p in ARCHITECTURE}, name
        assert check_architecture(args) == args, name
