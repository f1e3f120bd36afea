"""Run folders of recipes/train.py: a run owns only what it writes, one run per folder, exact resume or none."""
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from fashion_mnist import needs_fashion
from recipe_modules import load_recipe

from gaussder_hf import run_folder

ROOT = Path(__file__).resolve().parents[1]
recipe = load_recipe('train')

SMOKE = str(ROOT / 'recipes' / 'configs' / 'smoke.yaml')
# 64 images, 16 per step: 4 steps per epoch; nothing evaluated, so a run takes a few seconds.
TINY = ['max_examples=64', 'batch_size=16', 'evaluate_at_end=false', 'evaluate_every_epoch=false']


def _config(tmp_path, folder, *overrides, **kwargs):
    return recipe.load_config(SMOKE, TINY + [f'cache_dir={tmp_path / "cache"}', f'output_dir={folder}']
                              + list(overrides), **kwargs)


def _records(folder: Path) -> list[dict]:
    return [json.loads(line) for line in (folder / 'log.jsonl').read_text().splitlines()]


def _losses(folder: Path) -> list[float]:
    return [r['loss'] for r in _records(folder) if 'loss' in r]


def _snapshot(folder: Path) -> dict:
    """Every file under ``folder`` with its bytes."""
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob('*')) if p.is_file()}


def _fake_checkpoint(folder: Path, run_id: str, step: int, config: dict) -> Path:
    """A checkpoint folder with a manifest as train.py writes it, without training."""
    checkpoint = folder / run_folder.checkpoint_name(step)
    checkpoint.mkdir()
    (checkpoint / 'model.safetensors').write_bytes(os.urandom(64))
    (checkpoint / 'random_states_0.pkl').write_bytes(os.urandom(32))
    run_folder.write_manifest(checkpoint, run_id, step, config)
    return checkpoint


# ----------------------------------------------------------------------------------------------
# a run owns only what it writes
# ----------------------------------------------------------------------------------------------

@needs_fashion
def test_rotation_and_resume_leave_a_users_checkpoint_like_entries_alone(tmp_path):
    run = tmp_path / 'run'
    recipe.train(_config(tmp_path, run, 'max_steps=4', 'save_every=2', 'keep_checkpoints=1'))
    # Entries that start like checkpoints but are the user's: a backup, a file, a hand-picked best.
    user = {'checkpoint-0-mybackup/weights.bin': b'backup', 'checkpoint-00000001.txt': b'note',
            'checkpoint-best/model.safetensors': b'best', 'checkpoint-00000002x/a': b'x'}
    for name, content in user.items():
        (run / name).parent.mkdir(parents=True, exist_ok=True)
        (run / name).write_bytes(content)
    result = recipe.train(_config(tmp_path, run, 'max_steps=8', 'save_every=2', 'keep_checkpoints=1', resume=True))
    assert result['step'] == 8
    assert all((run / name).read_bytes() == content for name, content in user.items())
    assert [p.name for _, p in run_folder.checkpoint_folders(run)] == ['checkpoint-00000008']
    assert sorted(p.name for p in run.iterdir()) == sorted(
        ['checkpoint-0-mybackup', 'checkpoint-00000001.txt', 'checkpoint-best', 'checkpoint-00000002x',
         'checkpoint-00000008', 'config.yaml', 'log.jsonl', 'model', 'run.json'])


@needs_fashion
def test_a_new_run_refuses_a_non_empty_folder_and_overwrite_removes_only_the_old_runs_files(tmp_path):
    old = tmp_path / 'old'
    recipe.train(_config(tmp_path, old, 'max_steps=2', 'save_every=2'))
    (old / 'notes.txt').write_text('mine')
    (old / '.partial-draft').write_text('mine too')  # looks like a temporary name, but not one a run uses
    before = _snapshot(old)
    with pytest.raises(run_folder.RunFolderError, match=r"old is not empty \(.*'config.yaml'.*--resume.*--overwrite"):
        recipe.train(_config(tmp_path, old, 'max_steps=2', 'seed=5'))
    assert _snapshot(old) == before  # config.yaml, log.jsonl, checkpoints: untouched
    # A folder of the user's only (no run.json) is refused too, --resume included.
    mine = tmp_path / 'mine'
    mine.mkdir()
    (mine / 'photo.png').write_bytes(b'png')
    with pytest.raises(run_folder.RunFolderError, match="mine is not empty.*'photo.png'"):
        recipe.train(_config(tmp_path, mine))
    with pytest.raises(run_folder.RunFolderError, match="nothing to resume in .*mine.*'photo.png'"):
        recipe.train(_config(tmp_path, mine, resume=True))
    assert _snapshot(mine) == {'photo.png': b'png'}

    # --overwrite replaces the old run's files, keeps the user's, and refuses names it cannot own.
    old_id = run_folder.read_run(old)['run_id']
    (old / 'checkpoint-00000004').mkdir()  # no manifest: nobody can tell who wrote it
    with pytest.raises(run_folder.RunFolderError, match="holds 'checkpoint-00000004', which a new run would replace"):
        recipe.train(_config(tmp_path, old, 'max_steps=2', 'seed=5', overwrite=True))
    assert {k: v for k, v in _snapshot(old).items()} == before
    (old / 'checkpoint-00000004').rmdir()
    recipe.train(_config(tmp_path, old, 'max_steps=1', 'save_every=100', 'seed=5', overwrite=True))
    assert (old / 'notes.txt').read_text() == 'mine' and (old / '.partial-draft').read_text() == 'mine too'
    assert run_folder.read_run(old)['run_id'] != old_id and run_folder.read_run(old)['config']['seed'] == 5
    assert [r['step'] for r in _records(old)] == [1] and not run_folder.checkpoint_folders(old)


def test_output_dir_must_be_a_folder_path(tmp_path):
    for empty in ('output_dir=', "output_dir=''"):
        with pytest.raises(ValueError, match="'output_dir' must be the path of a folder, got"):
            recipe.load_config(SMOKE, [empty])
    (tmp_path / 'file').write_text('x')
    with pytest.raises(ValueError, match="output_dir .*file' is a file, not a folder"):
        recipe.train(recipe.load_config(SMOKE, [f'output_dir={tmp_path / "file"}']))


# ----------------------------------------------------------------------------------------------
# one run per folder
# ----------------------------------------------------------------------------------------------

def test_a_second_run_fails_at_once_naming_the_holder(tmp_path):
    folder = tmp_path / 'run'
    folder.mkdir()
    holder = run_folder.RunLock(folder)
    holder.acquire()  # this (live) process holds the folder
    try:
        with pytest.raises(run_folder.RunFolderError,
                           match=f'in use by process {os.getpid()} on host {socket.gethostname()!r}'):
            recipe.train(recipe.load_config(SMOKE, [f'output_dir={folder}']))
        assert os.listdir(folder) == ['.lock']  # nothing written
    finally:
        holder.release()
    assert not (folder / '.lock').exists()


def test_a_stale_lock_of_a_dead_process_is_taken_over_with_a_message(tmp_path):
    dead = subprocess.Popen([sys.executable, '-c', 'pass'])
    dead.wait()
    (tmp_path / '.lock').write_text(json.dumps({'pid': dead.pid, 'host': socket.gethostname(), 'time': 0}))
    said = []
    lock = run_folder.RunLock(tmp_path)
    lock.acquire(say=said.append)
    assert len(said) == 1 and said[0].startswith(f'taking over the lock of process {dead.pid} on host')
    assert said[0].endswith('which no longer runs')
    assert json.loads((tmp_path / '.lock').read_text())['pid'] == os.getpid()
    lock.release()
    # A lock of another machine cannot be checked from here: refused, saying how to clear it.
    (tmp_path / '.lock').write_text(json.dumps({'pid': 1, 'host': 'elsewhere', 'time': 0}))
    with pytest.raises(run_folder.RunFolderError, match=r"host 'elsewhere'.*delete .*\.lock only if it does not"):
        run_folder.RunLock(tmp_path).acquire()
    # A pid that now belongs to another process (its start time differs) is stale too.
    (tmp_path / '.lock').write_text(json.dumps({'pid': os.getpid(), 'host': socket.gethostname(), 'time': 0,
                                                'start': '1'}))
    said.clear()
    run_folder.RunLock(tmp_path).acquire(say=said.append)
    assert said and 'no longer runs' in said[0]


# ----------------------------------------------------------------------------------------------
# resume: exact or refused
# ----------------------------------------------------------------------------------------------

def _fake_run(tmp_path, *overrides, steps=(2,)) -> tuple[Path, object]:
    """A run folder as train.py leaves it, with (fake) checkpoints and a log, made without training."""
    cfg = _config(tmp_path, tmp_path / 'run', *overrides)
    Path(cfg.output_dir).mkdir()
    opened = recipe.open_run_folder(cfg, say=lambda message: None)
    config = __import__('dataclasses').asdict(cfg)
    for step in steps:
        _fake_checkpoint(Path(cfg.output_dir), opened['run_id'], step, config)
    log = ''.join(json.dumps({'step': s, 'loss': 1.0 / s}) + '\n' for s in range(1, 6)) + '{"step": 6, "lo'
    (Path(cfg.output_dir) / 'log.jsonl').write_text(log)
    return Path(cfg.output_dir), cfg


def test_resume_refuses_a_changed_optimiser_model_or_seed_with_a_diff(tmp_path):
    folder, _ = _fake_run(tmp_path)
    before = _snapshot(folder)
    refusals = [(['lr=0.5', 'weight_decay=0.5'], r"lr: 0.01 -> 0.5; weight_decay: 0.025 -> 0.5"),
                (['model_args={channels: [8, 8, 8], initial_scales: [1.0, 1.414], scale_pool: avg}'],
                 r"model_args: \{'channels'.*\} -> \{.*'scale_pool': 'avg'\}"),
                (['seed=1'], 'seed: 0 -> 1'), (['max_examples=32'], 'max_examples: 64 -> 32')]
    for overrides, diff in refusals:
        with pytest.raises(ValueError, match=f'resume would change setting.*{diff}.*may change on resume'):
            recipe.open_run_folder(_config(tmp_path, folder, *overrides, resume=True))
        assert _snapshot(folder) == before  # config.yaml still records the run as it is
    # Running longer, saving more often: allowed, and recorded where the run resumed.
    opened = recipe.open_run_folder(_config(tmp_path, folder, 'epochs=5', 'save_every=1', resume=True))
    assert opened['step'] == 2 and opened['checkpoint'].endswith('checkpoint-00000002')
    resume = _records(folder)[-1]
    assert resume['event'] == 'resume' and resume['checkpoint'] == 'checkpoint-00000002'
    assert resume['changed']['epochs'] == [2, 5] and resume['changed']['save_every'] == [4, 1]
    assert 'epochs: 5' in (folder / 'config.yaml').read_text()


@pytest.mark.parametrize('damage', ['truncate', 'delete', 'flip', 'manifest'])
def test_an_incomplete_or_corrupt_newest_checkpoint_is_skipped_for_the_older_one(tmp_path, damage):
    folder, cfg = _fake_run(tmp_path, steps=(2, 4))
    newest = folder / 'checkpoint-00000004'
    states = newest / 'random_states_0.pkl'
    if damage == 'truncate':
        states.write_bytes(states.read_bytes()[:10])
    elif damage == 'delete':
        states.unlink()
    elif damage == 'flip':
        data = bytearray((newest / 'model.safetensors').read_bytes())
        data[7] ^= 1
        (newest / 'model.safetensors').write_bytes(bytes(data))
    else:
        (newest / 'manifest.json').write_text('{"run_id": ')
    said = []
    reason = {'truncate': 'random_states_0.pkl has 10 bytes, the manifest says 32',
              'delete': 'random_states_0.pkl is missing', 'flip': 'model.safetensors does not match its checksum',
              'manifest': 'no readable manifest.json'}[damage]
    if damage == 'manifest':  # not provably this run's: the resume refuses to write over it, naming it
        with pytest.raises(run_folder.RunFolderError, match="'checkpoint-00000004', which this run would write"):
            recipe.open_run_folder(_config(tmp_path, folder, resume=True), say=said.append)
        assert said == [f'skipping {newest}: {reason} (the save did not finish, or the file was changed)']
        return
    opened = recipe.open_run_folder(_config(tmp_path, folder, resume=True), say=said.append)
    assert said == [f'skipping {newest}: {reason}']
    assert opened['step'] == 2 and opened['checkpoint'] == str(folder / 'checkpoint-00000002')
    assert not newest.exists()  # rolled back: this run writes step 4 again


def test_resume_drops_rolled_back_and_torn_log_records(tmp_path):
    folder, _ = _fake_run(tmp_path, steps=(2,))
    recipe.open_run_folder(_config(tmp_path, folder, resume=True))
    records = _records(folder)
    assert [r['step'] for r in records] == [1, 2, 2]
    assert records[-1]['event'] == 'resume' and records[-1]['dropped_records'] == 4  # steps 3, 4, 5, torn 6


def test_resume_refuses_to_write_over_a_checkpoint_name_it_cannot_own(tmp_path):
    folder, _ = _fake_run(tmp_path, steps=(2,))
    (folder / 'checkpoint-00000006').mkdir()
    (folder / 'checkpoint-00000006' / 'mine.bin').write_bytes(b'1')
    with pytest.raises(run_folder.RunFolderError, match="'checkpoint-00000006', which this run would write again"):
        recipe.open_run_folder(_config(tmp_path, folder, resume=True))
    assert (folder / 'checkpoint-00000006' / 'mine.bin').read_bytes() == b'1'


@needs_fashion
def test_resume_past_a_truncated_and_a_corrupt_checkpoint_matches_the_uninterrupted_run(tmp_path, crashed_copy):
    full = recipe.train(_config(tmp_path, tmp_path / 'full', 'max_steps=6', 'save_every=2', 'keep_checkpoints=10'))
    crashed = crashed_copy(tmp_path / 'full', tmp_path / 'crashed', 2, 4, 6)
    states = crashed / 'checkpoint-00000006' / 'random_states_0.pkl'
    states.write_bytes(states.read_bytes()[:-7])
    weights = crashed / 'checkpoint-00000004' / 'model.safetensors'
    data = bytearray(weights.read_bytes())
    data[-3] ^= 0x10
    weights.write_bytes(bytes(data))
    resumed = recipe.train(_config(tmp_path, crashed, 'max_steps=6', 'save_every=2', 'keep_checkpoints=10',
                                   resume=True))
    a, b = full['model'].state_dict(), resumed['model'].state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert _losses(crashed) == _losses(tmp_path / 'full')  # steps 3..6 logged once, after the resume record
    assert [r.get('checkpoint') for r in _records(crashed) if r.get('event')] == ['checkpoint-00000002']


# ----------------------------------------------------------------------------------------------
# non-finite values
# ----------------------------------------------------------------------------------------------

@needs_fashion
def test_a_diverging_run_stops_before_saving_anything(tmp_path):
    folder = tmp_path / 'run'
    with pytest.raises(FloatingPointError, match=r'non-finite (loss|gradient norm) (nan|inf|-inf).* at step [2-4]'):
        recipe.train(_config(tmp_path, folder, 'lr=1e30', 'max_steps=4', 'save_every=100'))
    assert not run_folder.checkpoint_folders(folder) and not (folder / 'model').exists()
    assert not (folder / '.lock').exists()
    assert all(map(__import__('math').isfinite, _losses(folder)))  # nothing non-finite was logged


def test_evaluation_refuses_non_finite_logits():
    import timm
    from accelerate import Accelerator

    model = timm.create_model('gaussderresnet10_fashionmnist', channels=(4, 4, 4), initial_scales=(1.0,)).eval()
    pixels = torch.rand(4, 1, 24, 24)
    labels = torch.tensor([0, 1, 2, 3])
    accelerator = Accelerator()
    clean = recipe.evaluate_loader(accelerator, model, [{'pixel_values': pixels, 'labels': labels}])
    assert 0 <= clean <= 1
    pixels[2, 0, 5, 5] = float('nan')  # one NaN pixel
    with pytest.raises(ValueError, match=r'non-finite logits \(\d+ values\) on batch 1 of split validation'):
        recipe.evaluate_loader(accelerator, model, [{'pixel_values': pixels[:2], 'labels': labels[:2]},
                                                    {'pixel_values': pixels, 'labels': labels}])


# ----------------------------------------------------------------------------------------------
# kill -9 at random moments, resume, repeat
# ----------------------------------------------------------------------------------------------

def _train_in_child(overrides: list[str]) -> None:
    # A forked child must not enter an OpenMP pool started before the fork: its worker threads do
    # not survive fork, and the first parallel region would wait for them forever.
    torch.set_num_threads(1)
    recipe.train(recipe.load_config(SMOKE, overrides, resume=True))


def _kill_and_resume(tmp_path, kills: int, seed: int) -> int:
    """Kills a short run ``kills`` times at random moments, resuming it each time, and compares with an unkilled one.

    The runs are forked from a fork server (past its imports after the first run), so each starts in
    about a second. Not from this process: once an earlier test has run a backward pass here, autograd
    refuses to run in a forked child ("Unable to handle autograd's threading in combination with
    fork-based multiprocessing").
    """
    import multiprocessing
    import random
    import signal
    import time

    fork = multiprocessing.get_context('forkserver')
    fork.set_forkserver_preload(['torch', 'gaussder_hf', __name__])
    # 32 images of 48x48, 8 per step: 4 steps per epoch, 8 in all, a checkpoint every 2.
    common = ['max_examples=32', 'batch_size=8', 'crop_size=48', 'epochs=2', 'save_every=2', 'keep_checkpoints=2',
              'evaluate_at_end=false', 'evaluate_every_epoch=false', f'cache_dir={tmp_path / "cache"}']

    def run(folder: Path):
        child = fork.Process(target=_train_in_child, args=(common + [f'output_dir={folder}'],))
        child.start()
        return child

    started = time.monotonic()
    reference = run(tmp_path / 'reference')
    # While it runs, a second run into the same folder is refused at once, naming it.
    while (run_folder.read_json(tmp_path / 'reference' / '.lock') or {}).get('pid') != reference.pid:
        assert time.monotonic() < started + 60 and reference.is_alive()
        time.sleep(0.01)
    startup = time.monotonic() - started
    with pytest.raises(run_folder.RunFolderError, match=f'in use by process {reference.pid} '):
        recipe.train(recipe.load_config(SMOKE, common + [f'output_dir={tmp_path / "reference"}', 'seed=5']))
    reference.join(300)
    assert reference.exitcode == 0
    stamps = [r['time'] for r in _records(tmp_path / 'reference') if 'loss' in r]
    duration = startup + (stamps[-1] - stamps[0]) * len(stamps) / (len(stamps) - 1)

    folder, rng, killed = tmp_path / 'killed', random.Random(seed), 0
    while True:
        newest = recipe.newest_checkpoint(folder) if folder.exists() else None
        done = int(newest.name.split('-')[1]) if newest else 0
        child = run(folder)
        if killed == kills:
            child.join(300)
            assert child.exitcode == 0
            break
        # A moment within what is left of the run (it starts over from its newest checkpoint); the
        # first within the first half of the unkilled run's time, so that at least one kill lands.
        left = startup + (duration - startup) * (8 - done) / 8
        child.join(rng.uniform(0.0, left if killed else duration / 2))
        if child.exitcode is not None:  # finished before the kill: the run is complete
            assert child.exitcode == 0
            break
        os.kill(child.pid, signal.SIGKILL)
        child.join()
        killed += 1
        # Whatever the moment, every checkpoint under its final name is complete.
        run_id = (run_folder.read_run(folder) or {}).get('run_id')
        for _, checkpoint in run_folder.checkpoint_folders(folder):
            assert run_folder.checkpoint_problem(checkpoint, run_id) is None, checkpoint

    assert killed >= 1
    names = sorted(p.name for p in folder.iterdir())
    assert names == ['checkpoint-00000006', 'checkpoint-00000008', 'config.yaml', 'log.jsonl', 'model', 'run.json']
    assert _losses(folder) == _losses(tmp_path / 'reference')  # each step logged once, in order, after the resumes
    from safetensors.torch import load_file

    a = load_file(tmp_path / 'reference' / 'model' / 'model.safetensors')
    b = load_file(folder / 'model' / 'model.safetensors')
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    return killed


@pytest.mark.slow  # the truncated-and-corrupt resume test covers the same path in the default run
@needs_fashion
def test_ten_kills_at_random_moments_resume_to_the_same_weights(tmp_path):
    _kill_and_resume(tmp_path, kills=10, seed=0)


@pytest.mark.slow
@needs_fashion
@pytest.mark.parametrize('seed', range(1, 6))
def test_kill_loops_of_other_seeds(tmp_path, seed):
    _kill_and_resume(tmp_path, kills=10, seed=seed)
