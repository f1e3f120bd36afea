"""Saved folders load in transformers where gaussder_hf cannot be imported, through ``trust_remote_code``.

A child process blocks every import of ``gaussder_hf``; it then loads a ``save_for_hub`` folder
(by path and, running the model card's snippet as written, from the offline Hub cache) and a
``save_pretrained`` folder from the model code those folders carry, and compares the logits and
pipeline scores with the package's.
"""
import os
import subprocess
import sys
import textwrap

import numpy as np
import timm
import torch

from gaussder_hf import GaussDerResNetConfig, GaussDerResNetForImageClassification, save_for_hub

NAME = 'gaussderresnet10_fashionmnist'
REVISION = '0123456789abcdef0123456789abcdef01234567'


def _lay_out_hub_cache(cache, repo_id, folder):
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    snapshot = repo / 'snapshots' / REVISION
    snapshot.mkdir(parents=True)
    for file in folder.iterdir():
        (snapshot / file.name).write_bytes(file.read_bytes())
    (repo / 'refs').mkdir()
    (repo / 'refs' / 'main').write_text(REVISION)


def test_transformers_loads_saved_folders_without_gaussder_hf(tmp_path):
    torch.manual_seed(0)
    net = timm.create_model(NAME, num_classes=5, in_chans=3, initial_scales=(1.0, 2.0))
    with torch.no_grad():
        net.train()(torch.rand(4, 3, 16, 16) * 3)
    net.eval()
    labels = ['ant', 'bee', 'cat', 'dog', 'eel']
    repo_id = 'someone/gdr-tiny'
    folder = save_for_hub(net, tmp_path / 'hub_folder', class_names=labels, repo_id=repo_id)
    cache = tmp_path / 'hub'
    _lay_out_hub_cache(cache, repo_id, folder)

    config = GaussDerResNetConfig.from_preset(NAME, initial_scales=[1.0, 1.5])
    torch.manual_seed(1)
    hf = GaussDerResNetForImageClassification(config).eval()
    hf.save_pretrained(tmp_path / 'pretrained_folder')

    x3, x1 = torch.rand(2, 3, 16, 16), torch.rand(2, 1, 16, 16)
    rgb = (np.random.default_rng(0).random((16, 16, 3)) * 255).astype(np.uint8)
    pixels = (torch.from_numpy(rgb).permute(2, 0, 1)[None].float() / 255 - 0.5) / 0.5
    with torch.no_grad():
        torch.save(dict(x3=x3, x1=x1, rgb=torch.from_numpy(rgb), logits3=net(x3),
                        logits1=hf(pixel_values=x1).logits, probs=torch.softmax(net(pixels), -1)[0]),
                   tmp_path / 'io.pt')

    script = textwrap.dedent(f'''
        import re, sys
        class BlockGaussderHf:
            def find_spec(self, name, path=None, target=None):
                if name.split('.')[0] == 'gaussder_hf':
                    raise ImportError('gaussder_hf is not installed here')
        sys.meta_path.insert(0, BlockGaussderHf())
        try:
            import gaussder_hf
            raise AssertionError('gaussder_hf was importable')
        except ImportError:
            pass

        import torch
        torch.set_num_threads({torch.get_num_threads()})  # the same rules as where the logits were computed
        from PIL import Image
        from transformers import AutoModelForImageClassification, pipeline
        io = torch.load({str(tmp_path / 'io.pt')!r})

        try:  # without trust_remote_code: an error that says what to pass
            AutoModelForImageClassification.from_pretrained({str(folder)!r})
            raise AssertionError('loaded custom code without trust_remote_code')
        except ValueError as error:
            assert 'trust_remote_code=True' in str(error), error

        card = open({str(folder / 'README.md')!r}).read()
        remote = re.findall(r'```python\\n(.*?)```', card, re.S)[2]
        assert 'trust_remote_code=True' in remote and 'gaussder_hf' not in remote, remote
        names = {{}}
        exec(remote, names)  # the card's snippet, as written, from the offline Hub cache
        by_path = AutoModelForImageClassification.from_pretrained({str(folder)!r}, trust_remote_code=True)
        pretrained = AutoModelForImageClassification.from_pretrained(
            {str(tmp_path / 'pretrained_folder')!r}, trust_remote_code=True)
        assert type(by_path).__module__.startswith('transformers_modules.'), type(by_path).__module__
        with torch.no_grad():
            for model in (names['model'], by_path):
                torch.testing.assert_close(model.eval()(pixel_values=io['x3']).logits, io['logits3'], rtol=0, atol=0)
            torch.testing.assert_close(pretrained.eval()(pixel_values=io['x1']).logits, io['logits1'], rtol=0, atol=0)
        image = Image.fromarray(io['rgb'].numpy())
        for classifier in (names['classifier'],
                           pipeline('image-classification', model={str(folder)!r}, trust_remote_code=True)):
            scores = {{p['label']: p['score'] for p in classifier(image, top_k=5)}}
            expected = dict(zip({labels!r}, io['probs'].tolist()))
            assert scores.keys() == expected.keys(), scores
            assert all(abs(scores[k] - expected[k]) < 1e-6 for k in scores), (scores, expected)
        assert not any(m.split('.')[0] == 'gaussder_hf' for m in sys.modules)
        print('OK')
    ''')
    env = dict(os.environ, HF_HUB_OFFLINE='1', HF_HUB_CACHE=str(cache), HF_HOME=str(tmp_path / 'home'))
    result = subprocess.run([sys.executable, '-c', script], env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().endswith('OK')
