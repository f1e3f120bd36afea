"""One checkpoint folder for timm and transformers, and pushing it to the Hugging Face Hub.

:func:`save_for_hub` writes ``model.safetensors`` (timm parameter names), a ``config.json`` that
both timm's ``hf-hub:``/``local-dir:`` loaders and transformers' ``from_pretrained`` read,
``preprocessor_config.json``, a ``README.md`` model card rendered from
``model_cards/gaussderresnet.md`` and the modules defining the model, named in ``auto_map``
(transformers' remote-code mechanism). Weights are never pickled.
"""
from __future__ import annotations

import copy
import json
import os
import shutil
import tempfile
from collections.abc import Mapping
from importlib import resources
from pathlib import Path
from string import Template

import torch
from huggingface_hub import EvalResult, HfApi, ModelCard, ModelCardData
from safetensors.torch import save_file
from transformers.dynamic_module_utils import custom_object_save, get_relative_import_files

from . import image_processing, modeling
from .architecture import WEIGHTS_NAME, architecture_of
from .configuration import GaussDerResNetConfig
from .data import dataset_background
from .image_processing import GaussDerResNetImageProcessor
from .model import GaussDerResNet
from .modeling import GaussDerResNetForImageClassification
from .presets import DATASET_INFO, HUB_NAMESPACE, PRESETS
from .rescaling import size_factor_name

__all__ = ['save_for_hub', 'push_to_hub', 'config_from_model', 'merged_card', 'render_model_card', 'write_model_code']

CARD_TEMPLATE = 'gaussderresnet.md'
# Every card save_for_hub writes carries this tag; a README.md without it is the user's.
CARD_TAG = 'gaussder_hf'


def _unwrap(model) -> GaussDerResNet:
    if isinstance(model, GaussDerResNet):
        return model
    inner = getattr(model, 'gaussderresnet', None)
    if isinstance(inner, GaussDerResNet):
        return inner
    raise ValueError(f'expected a GaussDerResNet or GaussDerResNetForImageClassification, got {type(model).__name__}')


def _preset_of(model: GaussDerResNet, preset: str | None) -> str | None:
    if preset is not None:
        if preset not in PRESETS:
            raise ValueError(f'unknown preset {preset!r}; known presets: {", ".join(sorted(PRESETS))}')
        return preset
    cfg = getattr(model, 'pretrained_cfg', None) or {}
    name = cfg.get('architecture')
    return name if name in PRESETS else None


def config_from_model(
        model,
        preset: str | None = None,
        class_names: list[str] | None = None,
) -> GaussDerResNetConfig:
    """Returns the :class:`GaussDerResNetConfig` describing ``model`` (a timm or transformers model)."""
    hf_config = getattr(model, 'config', None)
    if isinstance(hf_config, GaussDerResNetConfig) and class_names is None:
        return hf_config
    net = _unwrap(model)
    if net.num_classes < 1:
        raise ValueError('a model without classifier (num_classes=0) cannot be saved as a classifier checkpoint')
    preset = _preset_of(net, preset)
    info = DATASET_INFO[preset.rsplit('_', 1)[1]] if preset else None
    if class_names is None and info is not None and len(info['class_names']) == net.num_classes:
        class_names = list(info['class_names'])
    if class_names is None:
        class_names = [f'LABEL_{i}' for i in range(net.num_classes)]
    if len(class_names) != net.num_classes:
        raise ValueError(f'{len(class_names)} class names given for a model with {net.num_classes} classes')
    grey = [0.5] * net.in_chans
    return GaussDerResNetConfig.from_model_args(
        architecture_of(net), preset=preset,
        image_size=list(info['input_size'][1:]) if info else [72, 72],
        mean=list(info['mean']) if info and len(info['mean']) == net.in_chans else grey,
        std=list(info['std']) if info and len(info['std']) == net.in_chans else grey,
        id2label=dict(enumerate(class_names)), label2id={n: i for i, n in enumerate(class_names)})


def _card_template() -> str:
    try:  # installed wheel: the templates ship inside the package
        return resources.files('gaussder_hf.model_cards').joinpath(CARD_TEMPLATE).read_text()
    except ModuleNotFoundError:  # source checkout / editable install: they stay at the repo root
        return (Path(__file__).resolve().parent.parent / 'model_cards' / CARD_TEMPLATE).read_text()


def merged_card(template: str, generated: ModelCardData) -> ModelCard:
    """Returns the card ``template`` with its front matter merged with the ``generated`` metadata.

    The template's metadata (license, library, tags, ...) stays; generated fields are added,
    replacing the template's where both give one, and generated tags are appended to the
    template's.
    """
    card = ModelCard(template, ignore_metadata_errors=False)
    metadata = card.data.to_dict()
    new = generated.to_dict()
    tags = list(metadata.get('tags') or [])
    tags += [t for t in new.pop('tags', None) or [] if t not in tags]
    metadata.update({k: v for k, v in new.items() if v is not None})
    if tags:
        metadata['tags'] = tags
    card.data = ModelCardData(**metadata)
    return card


def render_model_card(
        config: GaussDerResNetConfig,
        num_parameters: int,
        repo_id: str,
        evaluation: Mapping | None = None,
        summary: str = '',
) -> str:
    """Returns the model card (README.md) text for a checkpoint.

    ``evaluation`` is ``{'dataset': name, 'accuracy': {size_factor: accuracy in [0, 1]}}``; it
    fills the card's table and the Hub's ``model-index`` metadata.
    """
    dataset = config.preset and DATASET_INFO[config.preset.rsplit('_', 1)[1]]['dataset']
    eval_results, table = None, 'Not evaluated yet.'
    if evaluation:
        dataset = evaluation.get('dataset', dataset)
        accuracy = {float(s): float(a) for s, a in evaluation['accuracy'].items()}
        for s, a in accuracy.items():
            if not 0.0 <= a <= 1.0:
                raise ValueError(f'accuracy must be a fraction in [0, 1], got {a!r} at size factor {s}')
        eval_results = [
            EvalResult(task_type='image-classification', dataset_type=dataset, dataset_name=dataset,
                       dataset_split=size_factor_name(s), metric_type='accuracy', metric_value=a,
                       metric_name=f'accuracy at size factor {s:.3f}')
            for s, a in sorted(accuracy.items())]
        rows = '\n'.join(f'| {s:.3f} | {100 * a:.2f}% |' for s, a in sorted(accuracy.items()))
        table = f'Test accuracy on `{dataset}` per size factor:\n\n| size factor | accuracy |\n|---:|---:|\n{rows}'
        if evaluation.get('notes'):
            table += f'\n\n{evaluation["notes"]}'
    card = merged_card(_card_template(), ModelCardData(
        model_name=repo_id.split('/')[-1], datasets=[dataset] if dataset else None, eval_results=eval_results,
        tags=[CARD_TAG]))
    fields = dict(
        model_name=repo_id.split('/')[-1], repo_id=repo_id, summary=summary, preset=config.preset or 'custom',
        num_parameters=f'{num_parameters:,}', num_channels=config.num_channels,
        num_blocks=len(config.channels) - 1, channels='-'.join(map(str, config.channels)),
        jet_order=config.jet_order, zero_order='yes' if config.zero_order else 'no',
        initial_scales=', '.join(f'{s:.4g}' for s in config.initial_scales), num_scales=len(config.initial_scales),
        scale_ratio=config.scale_ratio, eps=config.eps, spatial_pool=config.spatial_pool,
        scale_pool=config.scale_pool, class_names=', '.join(config.id2label[i] for i in range(config.num_labels)),
        mean=tuple(config.mean), std=tuple(config.std), evaluation=table)
    card.text = Template(card.text).substitute(fields)
    return str(card)


# Files save_for_hub writes besides the copied model code; anything else in a folder is the user's.
OWNED_FILES = (WEIGHTS_NAME, 'config.json', 'preprocessor_config.json', 'README.md', 'evaluation.json')
_TEMP_MARK = '.save_for_hub-'


def _code_files() -> tuple[str, ...]:
    """Returns the names of the package modules a saved folder carries for ``trust_remote_code``."""
    files = {Path(m.__file__).name for m in (modeling, image_processing)}
    for module in (modeling, image_processing):
        files |= {Path(f).name for f in get_relative_import_files(module.__file__)}
    return tuple(sorted(files))


def _write_folder(folder: Path, write) -> None:
    """Writes ``folder`` as a whole: ``write(tmp)`` fills a sibling temporary folder, which then replaces it.

    Files in an existing ``folder`` that the library does not own are carried over (as hard
    links where possible); owned ones not written again (a stale evaluation.json) are dropped.
    On any error nothing but the temporary folder is touched, and it is removed.
    """
    parent = folder.parent
    parent.mkdir(parents=True, exist_ok=True)
    _recover_interrupted(folder)
    tmp = Path(tempfile.mkdtemp(dir=parent, prefix=f'.{folder.name}{_TEMP_MARK}'))
    old = None
    try:
        write(tmp)
        # mkdtemp makes the folder private (0700), safetensors its file (0600): a saved
        # checkpoint gets the usual permissions.
        umask = os.umask(0)
        os.umask(umask)
        for path in (tmp, *tmp.iterdir()):
            os.chmod(path, (0o777 if path.is_dir() else 0o666) & ~umask)
        owned = set(OWNED_FILES) | set(_code_files())
        if folder.exists():
            for entry in folder.iterdir():
                if entry.name in owned or (tmp / entry.name).exists():
                    continue
                if entry.is_dir() and not entry.is_symlink():
                    shutil.copytree(entry, tmp / entry.name, symlinks=True, copy_function=_link_or_copy)
                else:
                    _link_or_copy(entry, tmp / entry.name, follow_symlinks=False)
        if folder.exists():
            old = Path(tempfile.mkdtemp(dir=parent, prefix=f'.{folder.name}{_TEMP_MARK}old-'))
            os.replace(folder, old / folder.name)
        os.replace(tmp, folder)
    except BaseException:
        if old is not None and not folder.exists():  # put the user's folder back
            os.replace(old / folder.name, folder)
        raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)


def _recover_interrupted(folder: Path) -> None:
    """Undoes what a killed :func:`_write_folder` left next to ``folder``.

    A save killed between moving the old folder aside and moving the new one in leaves no
    ``folder``, and its old content (the user's files included) in an ``old-`` temporary: that
    content is put back, as if the save had never started. Every other temporary is removed.
    """
    prefix = f'.{folder.name}{_TEMP_MARK}'
    if not folder.parent.is_dir():
        return
    leftovers = sorted(p for p in folder.parent.iterdir() if p.name.startswith(prefix))
    if not folder.exists():
        for old in leftovers:
            if old.name.startswith(prefix + 'old-') and (old / folder.name).is_dir():
                os.replace(old / folder.name, folder)
                break
    for stale in leftovers:
        shutil.rmtree(stale, ignore_errors=True)


def _is_our_card(readme: Path) -> bool:
    """Tells whether ``readme`` is a card :func:`render_model_card` wrote: its front matter carries our tag."""
    text = readme.read_text(errors='replace')
    if not text.startswith('---\n'):
        return False
    front = text[4:].split('\n---', 1)[0]
    return any(line.strip() == f'- {CARD_TAG}' for line in front.splitlines())


def _link_or_copy(source, target, *, follow_symlinks: bool = True):
    try:
        os.link(source, target, follow_symlinks=follow_symlinks)
    except OSError:
        shutil.copy2(source, target, follow_symlinks=follow_symlinks)
    return target


def _dataset_background(config) -> str:
    # The canvas the network was trained on: its preset dataset's; a model without preset: black.
    preset = getattr(config, 'preset', None)
    return dataset_background(preset.rsplit('_', 1)[1]) if preset else 'black'


def save_for_hub(
        model,
        folder: str | os.PathLike,
        *,
        preset: str | None = None,
        class_names: list[str] | None = None,
        repo_id: str | None = None,
        evaluation: Mapping | None = None,
        summary: str = '',
        canvas_size: dict | None = None,
        background: str | None = None,
) -> Path:
    """Writes a checkpoint folder that timm and transformers both load; returns its path.

    The folder holds ``model.safetensors`` (timm's parameter names), ``config.json`` (with an
    ``auto_map``), ``preprocessor_config.json``, the ``README.md`` model card, the modules
    defining the model (so that transformers loads it with ``trust_remote_code=True`` where
    gaussder_hf is not installed) and, given an evaluation, ``evaluation.json``. It is written
    as a whole into a temporary sibling folder that then replaces ``folder``, after every
    argument has been checked: an interrupted save leaves the old folder as it was (a killed
    one may leave it moved aside for an instant; the next save puts it back first).

    Args:
        model: a :class:`GaussDerResNet` (e.g. from ``timm.create_model``) or a
            ``GaussDerResNetForImageClassification``.
        folder: target folder; created if missing. Files in it that save_for_hub does not
            write are kept.
        preset: preset the model derives from (default: read from ``model.pretrained_cfg``).
        class_names: one name per class (default: the preset dataset's names).
        repo_id: Hub id the card refers to (default ``<HUB_NAMESPACE>/<folder name>``).
        evaluation: ``{'dataset': ..., 'accuracy': {size_factor: accuracy}}`` for the card.
        summary: free text for the card, e.g. how the model was trained.
        canvas_size: canvas the image processor centres images on (default: none).
        background: the canvas background, ``'black'`` or ``'mirror'`` (default: the preset
            dataset's, as its rescaled builder draws it).
    """
    net = _unwrap(model)
    config = copy.deepcopy(config_from_model(model, preset, class_names))
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise ValueError(f'folder must be a directory, got the file {str(folder)!r}')
    readme = folder / 'README.md'
    if readme.is_file() and not _is_our_card(readme):
        # The card is the folder's README.md (the Hub's convention); a user's own is never replaced.
        raise ValueError(
            f'{str(readme)!r} is not a model card written by save_for_hub (its front matter has no '
            f"'{CARD_TAG}' tag); move it elsewhere or save into another folder")
    repo_id = repo_id or f'{HUB_NAMESPACE}/{folder.resolve().name}'
    processor = GaussDerResNetImageProcessor(
        num_channels=config.num_channels, image_mean=list(config.mean), image_std=list(config.std),
        canvas_size=canvas_size, background=background or _dataset_background(config))
    num_parameters = sum(p.numel() for p in net.parameters())
    card = render_model_card(config, num_parameters, repo_id, evaluation, summary)
    state = {name: tensor.detach().cpu().contiguous() for name, tensor in net.state_dict().items()}
    # transformers' own mechanism records the auto_map and copies the defining modules; it needs
    # an instance only for its class, so a parameterless one on the meta device serves.
    with torch.device('meta'):
        code_owner = GaussDerResNetForImageClassification(config)
    config.architectures = [type(code_owner).__name__]

    def write(tmp: Path) -> None:
        save_file(state, tmp / WEIGHTS_NAME, metadata={'format': 'pt'})
        custom_object_save(code_owner, tmp, config=config)
        # transformers reads the image processor of a local folder whose config.json has a timm
        # pretrained_cfg from config.json, not preprocessor_config.json: both name it.
        custom_object_save(processor, tmp, config=config)
        config.save_pretrained(tmp)
        processor.save_pretrained(tmp)  # preprocessor_config.json, with its own auto_map
        (tmp / 'README.md').write_text(card)
        if evaluation:
            (tmp / 'evaluation.json').write_text(json.dumps(evaluation, indent=2))

    _write_folder(folder, write)
    return folder


def write_model_code(folder: str | os.PathLike) -> Path:
    """Writes this package's model code and the ``auto_map`` naming it into the checkpoint ``folder``.

    For a folder written before the code travelled with it: afterwards transformers loads it
    with ``trust_remote_code=True`` where gaussder_hf is not installed. Rewrites ``config.json``
    (through :class:`GaussDerResNetConfig`, which checks it first) and the module files only.
    """
    folder = Path(folder)
    config = GaussDerResNetConfig.from_pretrained(folder)
    with torch.device('meta'):
        code_owner = GaussDerResNetForImageClassification(config)
    custom_object_save(code_owner, folder, config=config)
    custom_object_save(GaussDerResNetImageProcessor(num_channels=config.num_channels), folder, config=config)
    config.architectures = [type(code_owner).__name__]
    config.save_pretrained(folder)
    return folder


def push_to_hub(
        folder: str | os.PathLike,
        repo_id: str,
        *,
        token: str | None = None,
        private: bool = False,
        commit_message: str = 'Upload GaussDerResNet checkpoint',
        api: HfApi | None = None,
):
    """Uploads a folder written by :func:`save_for_hub` to the Hub model repo ``repo_id``: its files only."""
    folder = Path(folder)
    missing = [n for n in (WEIGHTS_NAME, 'config.json', 'README.md') if not (folder / n).is_file()]
    if missing:
        raise ValueError(f'{folder} is not a save_for_hub folder: missing {missing}')
    api = api or HfApi(token=token)
    api.create_repo(repo_id, repo_type='model', private=private, exist_ok=True)
    return api.upload_folder(
        repo_id=repo_id, folder_path=folder, repo_type='model', commit_message=commit_message,
        allow_patterns=[*OWNED_FILES, *_code_files()])
