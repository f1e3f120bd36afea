"""Publishing a built rescaled dataset: parquet shards and a dataset card.

The folder loads with plain ``load_dataset(folder)`` (no gaussder_hf needed): the card's YAML
``configs`` maps every split to its shards, and ``dataset_info`` carries the features and split
sizes. ``push_dataset_folder`` uploads it; ``DatasetDict.push_to_hub`` works as well.
"""
from __future__ import annotations

import math
import os
import re
import shutil
import uuid
from pathlib import Path

import datasets
from datasets.info import DatasetInfosDict
from huggingface_hub import DatasetCard, DatasetCardData, HfApi
from tqdm.auto import tqdm

__all__ = ['export_dataset', 'push_dataset_folder']

_CARD = """
# {pretty_name}

{description}

Built with [gaussder_hf](https://pypi.org/project/gaussder-hf/) for *Scale-invariant Gaussian derivative
residual networks* (Perzanowski & Lindeberg, [arXiv:2603.02843](https://arxiv.org/abs/2603.02843)).

## Splits

| split | size factor | examples |
|---|---:|---:|
{rows}

Training and validation images are at size factor 1; the test set is copied once per size
factor `s = 2**(k/4)`, `k = -4..4`. Size factors not seen in training test scale generalisation.

## How it was generated

Images were rescaled with bicubic interpolation and anti-aliasing (torchvision), rounded to
uint8 and centred on the canvas ({background}); the generation is deterministic. Generator:
`gaussder-hf datasets build {name}`{options}.

## Licence

Original data: {license}. See {homepage}.

## Citation

```bibtex
{citation}```
"""


_SHARD = re.compile(r'[\w.]+-\d{5}-of-\d{5}\.parquet')
_TAG = 'gaussder_hf'  # in the card's tags: marks a folder this module wrote


def _earlier_export(folder: Path) -> bool:
    """Returns whether ``folder`` holds an earlier export (False: absent or empty); ValueError for anything else."""
    if not folder.exists():
        return False
    if not folder.is_dir():
        raise ValueError(f'export folder {folder} exists and is not a folder')
    entries = sorted(p.name for p in folder.iterdir())
    if not entries:
        return False
    try:
        ours = _TAG in (DatasetCard.load(folder / 'README.md').data.tags or [])
    except Exception:  # noqa: BLE001 - no card, or not one that parses: not ours
        ours = False
    if not ours:
        raise ValueError(
            f'export folder {folder} is not empty ({", ".join(entries[:5])}{", ..." if len(entries) > 5 else ""}) '
            f'and holds no earlier export (a README.md dataset card tagged {_TAG}): refusing to write into it; '
            f'give a new or empty folder, or one a previous export wrote')
    data = folder / 'data'
    if data.exists():
        foreign = sorted(p.name for p in data.iterdir() if not (p.is_file() and _SHARD.fullmatch(p.name))) \
            if data.is_dir() else ['(data is not a folder)']
        if foreign:
            raise ValueError(f'{data} holds files an export does not write ({", ".join(foreign[:5])}): refusing to '
                             f'replace it; an export owns only data/<split>-NNNNN-of-NNNNN.parquet and README.md')
    return True


def export_dataset(
        dataset: datasets.DatasetDict,
        folder: str | os.PathLike,
        builder=None,
        max_shard_size: int = 256 * 2 ** 20,
) -> Path:
    """Writes ``dataset`` as ``data/<split>-XXXXX-of-YYYYY.parquet`` plus a ``README.md`` card; returns the folder.

    ``builder`` (the builder that made it) supplies description, licence and generation options.
    ``folder`` may be new, empty, or hold an earlier export: that export (its ``README.md`` and
    ``data/`` shards) is replaced completely, so no stale shard survives, while other files
    (e.g. ``.git``, ``.gitattributes``) are kept. Any other non-empty folder is refused with a
    ``ValueError``. The export is written into a sibling temporary folder first and swapped in
    only once complete: a failed export leaves the folder as it was.
    """
    folder = Path(folder)
    earlier = _earlier_export(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = folder.parent / f'.{folder.name}.export-{os.getpid()}-{uuid.uuid4().hex[:8]}'
    tmp.mkdir()
    try:
        _write_export(dataset, tmp, builder, max_shard_size)
        if not earlier:
            if folder.exists():
                folder.rmdir()  # empty
            os.rename(tmp, folder)
        else:
            _swap_in(tmp, folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return folder


def _swap_in(new: Path, folder: Path) -> None:
    """Moves the export's entries from ``new`` into ``folder``, the earlier ones aside into ``new``; all or nothing."""
    previous = new / '.previous'
    previous.mkdir()
    moved, placed = [], []
    try:
        for name in ('data', 'README.md'):
            if (folder / name).exists():
                os.rename(folder / name, previous / name)
                moved.append(name)
        for name in ('data', 'README.md'):
            os.rename(new / name, folder / name)
            placed.append(name)
    except BaseException:  # put the earlier export back as it was
        for name in placed:
            os.rename(folder / name, new / name)
        for name in moved:
            os.rename(previous / name, folder / name)
        raise


def _write_export(dataset: datasets.DatasetDict, folder: Path, builder, max_shard_size: int) -> None:
    (folder / 'data').mkdir(parents=True, exist_ok=True)
    configs, rows = [], []
    for split, ds in tqdm(dataset.items(), desc='export', unit='split'):
        shards = max(1, min(len(ds), math.ceil(ds.data.nbytes / max_shard_size)))  # no shard without a row
        for index in range(shards):
            path = folder / 'data' / f'{split}-{index:05d}-of-{shards:05d}.parquet'
            ds.shard(shards, index, contiguous=True).to_parquet(str(path))
        configs.append({'split': split, 'path': f'data/{split}-*'})
        factors = sorted(set(ds.unique('size_factor'))) if 'size_factor' in ds.column_names and len(ds) else []
        rows.append(f'| `{split}` | {", ".join(f"{s:.3f}" for s in factors)} | {len(ds):,} |')

    info = next(iter(dataset.values())).info
    info.splits = datasets.SplitDict({
        split: datasets.SplitInfo(name=split, num_examples=len(ds), num_bytes=ds.data.nbytes)
        for split, ds in dataset.items()})
    card_data = DatasetCardData(
        configs=[{'config_name': 'default', 'data_files': configs}],
        license='other', task_categories=['image-classification'], pretty_name=getattr(builder, 'dataset_name', None),
        tags=['scale-invariance', 'rescaled', _TAG])
    DatasetInfosDict({'default': info}).to_dataset_card_data(card_data)
    name = getattr(builder, 'dataset_name', None) or 'rescaled dataset'
    options = ''
    if builder is not None and builder.config.max_examples:
        options = f' --max-examples {builder.config.max_examples}'
    body = _CARD.format(
        pretty_name=name, name=name, description=info.description or '', rows='\n'.join(rows),
        background=getattr(builder, 'BACKGROUND', 'see the builder'), options=options,
        license=info.license or 'see the original dataset', homepage=info.homepage or 'the original dataset',
        citation=info.citation or '')
    DatasetCard(f'---\n{card_data.to_yaml()}\n---\n{body}').save(folder / 'README.md')


def push_dataset_folder(folder: str | os.PathLike, repo_id: str, *, token: str | None = None,
                        private: bool = False, api: HfApi | None = None):
    """Uploads a folder written by :func:`export_dataset` to the Hub dataset repo ``repo_id``."""
    folder = Path(folder)
    if not (folder / 'README.md').is_file() or not list((folder / 'data').glob('*.parquet')):
        raise ValueError(f'{folder} is not an exported dataset folder (README.md and data/*.parquet expected)')
    api = api or HfApi(token=token)
    api.create_repo(repo_id, repo_type='dataset', private=private, exist_ok=True)
    # delete_patterns: shards of an earlier upload that this export no longer has are removed,
    # else the repo would mix both and fail datasets' split-size check.
    return api.upload_folder(repo_id=repo_id, folder_path=folder, repo_type='dataset',
                             allow_patterns=['README.md', 'data/*.parquet'], delete_patterns=['data/*.parquet'])
