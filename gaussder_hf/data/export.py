"""Publishing a built rescaled dataset: parquet shards and a dataset card.

The folder loads with plain ``load_dataset(folder)`` (no gaussder_hf needed): the card's YAML
``configs`` maps every split to its shards, and ``dataset_info`` carries the features and split
sizes. ``push_dataset_folder`` uploads it; ``DatasetDict.push_to_hub`` works as well.
"""
from __future__ import annotations

import math
import os
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


def export_dataset(
        dataset: datasets.DatasetDict,
        folder: str | os.PathLike,
        builder=None,
        max_shard_size: int = 256 * 2 ** 20,
) -> Path:
    """Writes ``dataset`` as ``data/<split>-XXXXX-of-YYYYY.parquet`` plus a ``README.md`` card; returns the folder.

    ``builder`` (the builder that made it) supplies description, licence and generation options.
    """
    folder = Path(folder)
    (folder / 'data').mkdir(parents=True, exist_ok=True)
    configs, rows = [], []
    for split, ds in tqdm(dataset.items(), desc='export', unit='split'):
        shards = max(1, math.ceil(ds.data.nbytes / max_shard_size))
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
        tags=['scale-invariance', 'rescaled', 'gaussder_hf'])
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
    return folder


def push_dataset_folder(folder: str | os.PathLike, repo_id: str, *, token: str | None = None,
                        private: bool = False, api: HfApi | None = None):
    """Uploads a folder written by :func:`export_dataset` to the Hub dataset repo ``repo_id``."""
    folder = Path(folder)
    if not (folder / 'README.md').is_file() or not list((folder / 'data').glob('*.parquet')):
        raise ValueError(f'{folder} is not an exported dataset folder (README.md and data/*.parquet expected)')
    api = api or HfApi(token=token)
    api.create_repo(repo_id, repo_type='dataset', private=private, exist_ok=True)
    return api.upload_folder(repo_id=repo_id, folder_path=folder, repo_type='dataset',
                             allow_patterns=['README.md', 'data/*.parquet'])
