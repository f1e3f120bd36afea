"""save_for_hub's model card and metadata, and push_to_hub up to the upload (no network here)."""
import os
from pathlib import Path

import pytest
import timm
import torch
from huggingface_hub import ModelCard

from gaussder_hf import GaussDerResNetImageProcessor, push_to_hub, save_for_hub


@pytest.fixture(scope='module')
def model():
    return timm.create_model('dsgaussderresnet18_stl10', initial_scales=(1.0,))


def test_model_card_carries_the_evaluation_as_model_index(model, tmp_path):
    accuracy = {0.5: 0.61, 1.0: 0.812, 2.0: 0.7}
    folder = save_for_hub(model, tmp_path / 'ckpt', repo_id='someone/gdr-stl10',
                          evaluation={'dataset': 'rescaled_stl10', 'accuracy': accuracy}, summary='Trained briefly.')
    card = ModelCard.load(folder / 'README.md')
    results = card.data.eval_results
    assert {(r.dataset_split, r.metric_value) for r in results} == {
        ('test_s0p500', 0.61), ('test_s1p000', 0.812), ('test_s2p000', 0.7)}
    assert card.data.library_name == 'timm' and card.data.pipeline_tag == 'image-classification'
    text = (folder / 'README.md').read_text()
    assert '| 1.000 | 81.20% |' in text and 'Trained briefly.' in text
    assert "timm.create_model('hf-hub:someone/gdr-stl10', pretrained=True)" in text
    assert f'{sum(p.numel() for p in model.parameters()):,}' in text
    assert (folder / 'evaluation.json').is_file()


def test_save_for_hub_leaves_other_files_alone_and_validates(model, tmp_path):
    folder = tmp_path / 'ckpt'
    (folder / 'runs').mkdir(parents=True)
    (folder / 'notes.txt').write_text('mine')
    (folder / 'runs' / 'log.txt').write_text('also mine')
    (folder / 'evaluation.json').write_text('{"stale": true}')
    save_for_hub(model, folder)
    assert (folder / 'notes.txt').read_text() == 'mine'
    assert (folder / 'runs' / 'log.txt').read_text() == 'also mine'
    assert not (folder / 'evaluation.json').exists()  # written by an earlier save, not by this one
    assert [p.name for p in tmp_path.iterdir()] == ['ckpt']  # no temporary folder left beside it
    # Saved with the permissions the umask allows, though written through private temporaries.
    umask = os.umask(0)
    os.umask(umask)
    assert all((p.stat().st_mode & 0o777) == 0o666 & ~umask for p in folder.iterdir() if p.is_file())
    assert (folder.stat().st_mode & 0o777) == 0o777 & ~umask
    before = {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}
    with pytest.raises(ValueError, match='accuracy must be a fraction.*81.2'):
        save_for_hub(model, folder, evaluation={'dataset': 'rescaled_stl10', 'accuracy': {1.0: 81.2}})
    with pytest.raises(ValueError, match='3 class names'):
        save_for_hub(model, folder, class_names=['a', 'b', 'c'])
    with pytest.raises(ValueError, match='unknown preset'):
        save_for_hub(model, folder, preset='resnet18')
    with pytest.raises(ValueError, match='canvas_size'):
        save_for_hub(model, folder, canvas_size={'height': 0, 'width': 3})
    with pytest.raises(ValueError, match='GaussDerResNet'):
        save_for_hub(torch.nn.Linear(2, 2), folder)
    assert {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()} == before
    assert [p.name for p in tmp_path.iterdir()] == ['ckpt']



def test_save_for_hub_never_replaces_a_users_own_readme(model, tmp_path):
    folder = tmp_path / 'ckpt'
    folder.mkdir()
    (folder / 'README.md').write_text('# My experiment\n\nNotes I keep.\n')
    with pytest.raises(ValueError, match="README.md' is not a model card written by save_for_hub"):
        save_for_hub(model, folder)
    assert (folder / 'README.md').read_text() == '# My experiment\n\nNotes I keep.\n'
    assert sorted(p.name for p in folder.iterdir()) == ['README.md']
    # A card of an earlier save is ours to replace.
    (folder / 'README.md').unlink()
    save_for_hub(model, folder)
    save_for_hub(model, folder, summary='second save')
    assert 'second save' in (folder / 'README.md').read_text()

def test_an_interrupted_save_for_hub_leaves_the_old_folder(model, tmp_path, monkeypatch):
    folder = save_for_hub(model, tmp_path / 'ckpt', summary='first')
    before = {p.name: p.read_bytes() for p in folder.iterdir()}

    def interrupted(self, *args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(GaussDerResNetImageProcessor, 'save_pretrained', interrupted)
    with pytest.raises(KeyboardInterrupt):
        save_for_hub(model, folder, summary='second')
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before
    assert [p.name for p in tmp_path.iterdir()] == ['ckpt']


def test_push_to_hub_uploads_only_the_checkpoint_files(model, tmp_path, recording_api):
    folder = save_for_hub(model, tmp_path / 'ckpt')
    (folder / 'scratch.bin').write_bytes(b'x')
    api = recording_api
    assert push_to_hub(folder, 'someone/gdr', private=True, api=api) == 'commit-url'
    (create, repo, create_kwargs), (upload, repo2, upload_kwargs) = api.calls
    assert (create, repo, create_kwargs['private'], create_kwargs['exist_ok']) == (
        'create_repo', 'someone/gdr', True, True)
    assert (upload, repo2) == ('upload_folder', 'someone/gdr')
    assert 'model.safetensors' in upload_kwargs['allow_patterns']
    assert not any(p.endswith('.bin') for p in upload_kwargs['allow_patterns'])
    assert {'modeling.py', 'configuration.py', 'image_processing.py'} <= set(upload_kwargs['allow_patterns'])
    with pytest.raises(ValueError, match='missing'):
        push_to_hub(tmp_path, 'someone/gdr', api=api)


def _save_forever(models, folder):
    """Saves the models into ``folder`` in turn until killed (runs in a forked child)."""
    torch.set_num_threads(1)  # the parent's OpenMP pool does not survive fork
    try:
        while True:
            for net in models:
                save_for_hub(net, folder)
    finally:
        os._exit(1)  # never run the parent's pytest machinery in the child


def test_save_for_hub_killed_at_random_moments_never_loses_the_checkpoint_or_the_users_files(tmp_path):
    """SIGKILL a process that keeps saving two different models into one folder, ten times.

    After each kill the folder is absent (killed between moving the old folder aside and the new
    one in) or a complete checkpoint of one of the two models, weights and config together; the
    next save puts an absent folder back and removes every temporary, and the user's file survives.
    """
    import multiprocessing
    import random

    torch.manual_seed(0)
    models = [timm.create_model('gaussderresnet10_fashionmnist', channels=(4, 4), initial_scales=(1.0,)).eval(),
              timm.create_model('gaussderresnet10_fashionmnist', channels=(4, 6), initial_scales=(1.0, 2.0)).eval()]
    x = torch.rand(2, 1, 12, 12)
    with torch.no_grad():
        expected = [net(x) for net in models]
    parent = tmp_path / 'hub'
    folder = parent / 'ckpt'
    save_for_hub(models[0], folder)
    (folder / 'notes.txt').write_text('my notes')

    def check_checkpoint(of=(0, 1)):
        loaded = timm.create_model(f'local-dir:{folder}', pretrained=True).eval()
        with torch.no_grad():
            logits = loaded(x)
        assert any(logits.shape == expected[i].shape and torch.allclose(logits, expected[i], atol=1e-6) for i in of)
        assert (folder / 'notes.txt').read_text() == 'my notes'

    rng = random.Random(0)
    context = multiprocessing.get_context('fork')  # the child needs no second ~10 s import
    for kill in range(10):
        child = context.Process(target=_save_forever, args=(models, folder), daemon=True)
        child.start()
        child.join(timeout=rng.uniform(0.05, 0.5))  # a save takes ~20 ms: kills land in every phase
        assert child.is_alive(), f'the saving process ended by itself (exit code {child.exitcode})'
        child.kill()
        child.join()
        if folder.exists():
            check_checkpoint()
        else:  # the old content waits in the save's temporary, the user's file with it
            assert any((old / 'ckpt' / 'notes.txt').is_file() for old in parent.glob('.ckpt.save_for_hub-old-*'))
        save_for_hub(models[kill % 2], folder)  # the next save cleans up after the killed one
        assert [p.name for p in parent.iterdir()] == ['ckpt']
        check_checkpoint(of=(kill % 2,))


def _save_killed_between_the_renames(net, folder):
    """Saves ``net`` into ``folder`` and SIGKILLs itself right after the old folder was moved aside."""
    import signal

    from gaussder_hf import hub

    real_replace = os.replace

    def replace(source, target):
        real_replace(source, target)
        if os.fspath(source) == os.fspath(folder):
            os.kill(os.getpid(), signal.SIGKILL)

    hub.os.replace = replace  # patched in this forked child only
    torch.set_num_threads(1)  # the parent's OpenMP pool does not survive fork
    try:
        save_for_hub(net, folder)
    finally:
        os._exit(1)


def test_a_save_killed_between_moving_the_old_folder_aside_and_the_new_in_is_undone(tmp_path):
    """The one moment the folder is absent: the next save puts the old folder, the user's files included, back."""
    import multiprocessing

    torch.manual_seed(0)
    old_net = timm.create_model('gaussderresnet10_fashionmnist', channels=(4, 4), initial_scales=(1.0,)).eval()
    new_net = timm.create_model('gaussderresnet10_fashionmnist', channels=(4, 6), initial_scales=(1.0,)).eval()
    folder = save_for_hub(old_net, tmp_path / 'ckpt')
    (folder / 'notes.txt').write_text('my notes')
    child = multiprocessing.get_context('fork').Process(target=_save_killed_between_the_renames,
                                                        args=(new_net, folder))
    child.start()
    child.join()
    assert child.exitcode == -9 and not folder.exists()
    save_for_hub(new_net, folder)
    assert (folder / 'notes.txt').read_text() == 'my notes'
    assert sorted(p.name for p in tmp_path.iterdir()) == ['ckpt']
    x = torch.rand(1, 1, 10, 10)
    loaded = timm.create_model(f'local-dir:{folder}', pretrained=True).eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), new_net(x))


ROOT = Path(__file__).resolve().parents[1]


def _template_metadata():
    return ModelCard((ROOT / 'model_cards' / 'gaussderresnet.md').read_text()).data


def test_the_card_keeps_the_template_front_matter_beside_the_generated_one(model, tmp_path):
    template = _template_metadata()
    assert template.tags and 'gaussian-derivatives' in template.tags
    folder = save_for_hub(model, tmp_path / 'ckpt', evaluation={'dataset': 'rescaled_stl10', 'accuracy': {1.0: 0.5}})
    card = ModelCard.load(folder / 'README.md').data
    assert card.tags[:len(template.tags)] == template.tags  # every template tag, in its order
    assert (card.license, card.library_name, card.pipeline_tag) == (
        template.license, template.library_name, template.pipeline_tag)
    # ... and what save_for_hub generates: the dataset and the model-index.
    assert card.datasets == ['rescaled_stl10'] and card.eval_results[0].dataset_split == 'test_s1p000'


def test_the_committed_card_carries_the_template_tags():
    committed = ROOT / 'checkpoints' / 'gaussderresnet10_fashionmnist' / 'README.md'
    assert set(_template_metadata().tags) <= set(ModelCard.load(committed).data.tags)
