"""The folder of a training run: what the run owns, who holds it, and which checkpoints can be trusted.

A run folder holds ``run.json`` (the run's identity), ``config.yaml``, ``log.jsonl``, checkpoints
``checkpoint-<8-digit step>/`` and, at the end, ``model/`` and ``evaluation/``. Every checkpoint
carries ``manifest.json``, written after its other files: the run's id, the step, the configuration
of the run and the size and SHA-256 of each file. A run only ever deletes or replaces what it can
prove it wrote: checkpoints whose manifest names its run id, its own temporary ``.partial-*``
folders, and the files of a previous run in the folder when asked to overwrite it. Anything else
in the folder (a user's ``checkpoint-best/``, ``notes.txt``) is left as it is.

A lock file ``.lock`` (pid, host, process start time) keeps two runs out of one folder. A lock
whose process is gone (killed, crashed, the machine rebooted) is taken over with a message.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import socket
import time
import uuid
from collections.abc import Callable
from pathlib import Path

RUN_FILE = 'run.json'
LOCK_FILE = '.lock'
MANIFEST_FILE = 'manifest.json'
CHECKPOINT_NAME = re.compile(r'checkpoint-(\d{8})')
PARTIAL_PREFIX = '.partial-'
# The temporary names a run uses (and may delete after a crash); any other '.partial-*' is not its own.
PARTIAL_NAME = re.compile(
    r'\.partial-(checkpoint-\d{8}|run\.json|log\.jsonl|model|old-model|(stale-)?lock-[0-9a-f]{32})')
# Names a run writes at the top of its folder besides its checkpoints.
RUN_OUTPUTS = (RUN_FILE, 'config.yaml', 'log.jsonl', 'model', 'evaluation')


class RunFolderError(RuntimeError):
    """The folder cannot be used as asked (in use, not empty, holds files the run did not write)."""


def checkpoint_name(step: int) -> str:
    return f'checkpoint-{step:08d}'


def checkpoint_folders(folder: Path) -> list[tuple[int, Path]]:
    """Returns ``(step, path)`` of every entry named exactly ``checkpoint-<8 digits>``, oldest first."""
    found = []
    for path in folder.iterdir() if folder.is_dir() else ():
        match = CHECKPOINT_NAME.fullmatch(path.name)
        if match:
            found.append((int(match.group(1)), path))
    return sorted(found)


def read_json(path: Path) -> dict | None:
    """Returns the JSON object in ``path``, or None when it is missing, unreadable or not an object."""
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def write_json_atomically(path: Path, value: dict) -> None:
    """Writes ``value`` under a temporary name and renames it: a reader never sees half a file."""
    partial = path.with_name(f'{PARTIAL_PREFIX}{path.name}')
    partial.write_text(json.dumps(value, indent=1, sort_keys=True))
    os.replace(partial, path)


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open('rb') as file:
        for block in iter(lambda: file.read(1 << 20), b''):
            digest.update(block)
    return digest.hexdigest()


# ----------------------------------------------------------------------------------------------
# checkpoints
# ----------------------------------------------------------------------------------------------

def write_manifest(checkpoint: Path, run_id: str, step: int, config: dict) -> dict:
    """Records every file of ``checkpoint`` with its size and checksum; call when all else is written."""
    files = {}
    for path in sorted(p for p in checkpoint.rglob('*') if p.is_file()):
        relative = path.relative_to(checkpoint).as_posix()
        if relative != MANIFEST_FILE:
            files[relative] = {'size': path.stat().st_size, 'sha256': sha256(path)}
    manifest = {'run_id': run_id, 'step': step, 'config': config, 'files': files}
    write_json_atomically(checkpoint / MANIFEST_FILE, manifest)
    return manifest


def checkpoint_owner(checkpoint: Path) -> str | None:
    """Returns the run id in the checkpoint's manifest, or None when there is no readable manifest."""
    manifest = read_json(checkpoint / MANIFEST_FILE) if checkpoint.is_dir() else None
    return manifest.get('run_id') if manifest else None


def checkpoint_problem(checkpoint: Path, run_id: str) -> str | None:
    """Returns why ``checkpoint`` cannot be resumed from (missing, truncated or altered file...), or None."""
    if not checkpoint.is_dir():
        return 'not a folder'
    manifest = read_json(checkpoint / MANIFEST_FILE)
    if manifest is None:
        return f'no readable {MANIFEST_FILE} (the save did not finish, or the file was changed)'
    if manifest.get('run_id') != run_id:
        return f'written by another run ({manifest.get("run_id")!r}, this run is {run_id!r})'
    step = int(CHECKPOINT_NAME.fullmatch(checkpoint.name).group(1))
    if manifest.get('step') != step:
        return f'its manifest is for step {manifest.get("step")!r}, its name for step {step}'
    files = manifest.get('files')
    if not isinstance(files, dict) or not files:
        return 'its manifest lists no files'
    for relative, expected in files.items():
        path = checkpoint / relative
        if not path.is_file():
            return f'{relative} is missing'
        size = path.stat().st_size
        if size != expected.get('size'):
            return f'{relative} has {size} bytes, the manifest says {expected.get("size")}'
        if sha256(path) != expected.get('sha256'):
            return f'{relative} does not match its checksum'
    return None


def newest_valid_checkpoint(folder: Path, run_id: str, say: Callable[[str], None] = print) -> tuple[Path, dict] | None:
    """Returns the newest checkpoint of run ``run_id`` whose files all match its manifest, and that manifest.

    Every newer checkpoint that does not qualify is named, with the reason, through ``say``.
    """
    for _, path in reversed(checkpoint_folders(folder)):
        problem = checkpoint_problem(path, run_id)
        if problem is None:
            return path, read_json(path / MANIFEST_FILE)
        say(f'skipping {path}: {problem}')
    return None


def rotate_checkpoints(folder: Path, run_id: str, keep: int) -> list[Path]:
    """Deletes this run's checkpoints but the newest ``keep``; returns what it deleted. Others are untouched."""
    own = [path for _, path in checkpoint_folders(folder) if checkpoint_owner(path) == run_id]
    for path in own[:-keep]:
        shutil.rmtree(path)
    return own[:-keep]


def remove_partials(folder: Path) -> None:
    """Deletes the temporary ``.partial-*`` entries a killed run of this folder left behind."""
    for path in folder.glob(f'{PARTIAL_PREFIX}*'):
        if not PARTIAL_NAME.fullmatch(path.name):
            continue
        if path.name.startswith((f'{PARTIAL_PREFIX}lock-', f'{PARTIAL_PREFIX}stale-lock-')):
            # Lock files on their way in or out: another process may be taking the lock right now.
            holder = read_json(path)
            if holder is not None and (holder.get('host') != socket.gethostname() or _alive(holder)):
                continue
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()


def replace_folder(source: Path, destination: Path) -> None:
    """Moves the complete folder ``source`` to ``destination``, replacing an older one of the run."""
    if destination.exists():
        old = destination.with_name(f'{PARTIAL_PREFIX}old-{destination.name}')
        if old.exists():
            shutil.rmtree(old)
        os.replace(destination, old)
        os.replace(source, destination)
        shutil.rmtree(old)
    else:
        os.replace(source, destination)


# ----------------------------------------------------------------------------------------------
# lock
# ----------------------------------------------------------------------------------------------

def _process_start(pid: int) -> str | None:
    """The start time of process ``pid`` in clock ticks since boot (Linux), to tell a reused pid apart."""
    try:
        stat = Path(f'/proc/{pid}/stat').read_text()
    except OSError:
        return None
    fields = stat.rsplit(')', 1)[1].split()
    return None if fields[0] == 'Z' else fields[19]  # a zombie has ended already


def _alive(holder: dict) -> bool:
    pid = holder.get('pid')
    if not isinstance(pid, int):
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # someone else's process: it exists
    if Path('/proc').is_dir():
        start = _process_start(pid)
        return start is not None and (holder.get('start') is None or start == holder.get('start'))
    return True


class RunLock:
    """An exclusive claim on a run folder by one process, visible to every other process as ``.lock``."""

    def __init__(self, folder: Path):
        self.path = Path(folder) / LOCK_FILE
        self.token = uuid.uuid4().hex
        self.held = False

    def describe(self, holder: dict) -> str:
        started = time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(holder.get('time', 0)))
        return f'process {holder.get("pid")} on host {holder.get("host")!r} (since {started})'

    def acquire(self, say: Callable[[str], None] = print) -> None:
        """Takes the lock; raises :class:`RunFolderError` naming the holder when a live process has it."""
        host = socket.gethostname()
        me = {'pid': os.getpid(), 'host': host, 'start': _process_start(os.getpid()), 'time': time.time(),
              'token': self.token}
        # The content is written first and linked into place: the lock never exists half-written.
        staged = self.path.with_name(f'{PARTIAL_PREFIX}lock-{self.token}')
        staged.write_text(json.dumps(me))
        try:
            for _ in range(3):
                try:
                    os.link(staged, self.path)
                    self.held = True
                    return
                except FileExistsError:
                    pass
                except FileNotFoundError:  # the holder cleared this process's half-written claim
                    raise RunFolderError(f'{self.path.parent} is being claimed by another run') from None
                holder = read_json(self.path)
                if holder is None:
                    raise RunFolderError(f'{self.path} exists but is unreadable: another run may be starting in '
                                         f'{self.path.parent}; delete the file only if no run uses the folder')
                if holder.get('host') != host:
                    raise RunFolderError(
                        f'{self.path.parent} is in use by {self.describe(holder)}; this host cannot tell whether '
                        f'that process still runs: delete {self.path} only if it does not')
                if _alive(holder):
                    raise RunFolderError(f'{self.path.parent} is in use by {self.describe(holder)}; wait for that '
                                         f'run to end or train into another output_dir')
                # The holder is gone: move its lock aside (one of several racing processes wins).
                stale = self.path.with_name(f'{PARTIAL_PREFIX}stale-lock-{self.token}')
                try:
                    os.rename(self.path, stale)
                except FileNotFoundError:
                    continue
                stale.unlink()
                say(f'taking over the lock of {self.describe(holder)}, which no longer runs')
            raise RunFolderError(f'could not take {self.path}: other processes keep claiming it')
        finally:
            staged.unlink(missing_ok=True)

    def release(self) -> None:
        """Removes the lock if this object still holds it."""
        if self.held and (read_json(self.path) or {}).get('token') == self.token:
            self.path.unlink()
        self.held = False


# ----------------------------------------------------------------------------------------------
# the folder as a whole
# ----------------------------------------------------------------------------------------------

def new_run_id() -> str:
    return uuid.uuid4().hex


def read_run(folder: Path) -> dict | None:
    """Returns ``run.json`` of the run in ``folder`` (``run_id``, ``config``, ``created``), or None."""
    run = read_json(folder / RUN_FILE)
    return run if run and isinstance(run.get('run_id'), str) else None


def user_entries(folder: Path) -> list[str]:
    """Names in ``folder`` other than the lock and the temporary entries of a run."""
    if not folder.is_dir():
        return []
    return sorted(p.name for p in folder.iterdir() if p.name != LOCK_FILE and not PARTIAL_NAME.fullmatch(p.name))


def previous_run_files(folder: Path, run_id: str | None) -> tuple[list[Path], list[Path]]:
    """Splits the names a new run would write into those of the previous run ``run_id`` and foreign ones.

    Returns ``(owned, foreign)``: ``owned`` may be removed to start over; ``foreign`` (a ``config.yaml``
    of no run, a ``checkpoint-00000004`` of another run or none) must not be touched.
    """
    owned, foreign = [], []
    for name in RUN_OUTPUTS[1:] + RUN_OUTPUTS[:1]:  # run.json last: an interrupted removal can be redone
        path = folder / name
        if path.exists() or path.is_symlink():
            (owned if run_id else foreign).append(path)
    for _, path in checkpoint_folders(folder):
        (owned if run_id and checkpoint_owner(path) == run_id else foreign).append(path)
    return owned, foreign


def remove(paths: list[Path]) -> None:
    for path in paths:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()
