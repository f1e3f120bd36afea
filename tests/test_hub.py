"""save_for_hub's model card and metadata, and push_to_hub up to the upload (no network here)."""
import os

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
