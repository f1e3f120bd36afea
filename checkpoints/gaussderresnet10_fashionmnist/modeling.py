"""GaussDerResNets as transformers models: ``GaussDerResNetForImageClassification``.

The transformers model wraps the same :class:`~gaussder_hf.GaussDerResNet` that timm builds, under
``base_model_prefix``. :func:`~gaussder_hf.save_for_hub` stores the bare timm names, to which
transformers adds the prefix on loading; ``save_pretrained`` and ``Trainer`` store the prefixed
names, which timm's loader strips. Either ``model.safetensors`` serves both libraries.
"""
from __future__ import annotations

import torch
import torch.nn as nn
from transformers import PreTrainedModel
from transformers.modeling_outputs import ImageClassifierOutputWithNoAttention

from .configuration import GaussDerResNetConfig
from .layers import DSGaussDerConv, GaussDerConv
from .model import LEGACY_KEY_RENAMES, GaussDerResNet

__all__ = ['GaussDerResNetPreTrainedModel', 'GaussDerResNetForImageClassification']


class GaussDerResNetPreTrainedModel(PreTrainedModel):
    config_class = GaussDerResNetConfig
    base_model_prefix = 'gaussderresnet'
    main_input_name = 'pixel_values'
    input_modalities = ('image',)
    supports_gradient_checkpointing = True
    _no_split_modules = ['GaussDerBlock']

    @classmethod
    def from_pretrained(cls, *args, **kwargs):
        """Loads like any transformers model, but strictly and from ``model.safetensors`` only.

        A checkpoint that leaves a tensor of the model unfilled, holds a tensor the model lacks
        or one of another shape is an error naming it, as in timm; with
        ``ignore_mismatched_sizes=True`` the mis-shaped tensors (e.g. the head, for other labels)
        are freshly initialised instead. Never unpickles a ``pytorch_model.bin``.
        """
        if kwargs.get('use_safetensors') is False:
            raise ValueError('gaussder_hf loads weights from safetensors only, got use_safetensors=False')
        kwargs['use_safetensors'] = True
        # Checkpoints of earlier versions name some tensors differently (model.LEGACY_KEY_RENAMES).
        key_mapping = dict(LEGACY_KEY_RENAMES)
        key_mapping.update(kwargs.pop('key_mapping', None) or {})
        wants_info = kwargs.pop('output_loading_info', False)
        # Load with re-initialisation allowed so that the loading info names every mis-shaped
        # tensor; refuse afterwards unless the user asked for it.
        ignore_mismatched = kwargs.pop('ignore_mismatched_sizes', False)
        try:
            model, info = super().from_pretrained(
                *args, output_loading_info=True, ignore_mismatched_sizes=True, key_mapping=key_mapping, **kwargs)
        except OSError as error:
            if 'safetensors' not in str(error):
                raise
            raise OSError(f'{error} (gaussder_hf loads weights from safetensors only and never unpickles '
                          'a pytorch_model.bin; convert a trusted one with safetensors.torch.save_file)') from error
        # transformers undoes the renamings of loading when saving: the legacy names must not come back.
        conversions = getattr(model, '_weight_conversions', None)
        if conversions:
            legacy = {pattern for pattern, _ in LEGACY_KEY_RENAMES}
            model._weight_conversions = [
                c for c in conversions if not set(getattr(c, '_original_source_patterns', ())) & legacy]
        problems = []
        if info.get('missing_keys'):
            problems.append(f'missing tensor(s) {sorted(info["missing_keys"])}')
        if info.get('unexpected_keys'):
            problems.append(f'unexpected tensor(s) {sorted(info["unexpected_keys"])}')
        if info.get('mismatched_keys') and not ignore_mismatched:
            problems.append(f'shape mismatch {sorted(map(str, info["mismatched_keys"]))}')
        if problems:
            source = args[0] if args else kwargs.get('pretrained_model_name_or_path')
            raise ValueError(
                f'the checkpoint {str(source)!r} does not fit the GaussDerResNet its config describes: '
                + '; '.join(problems) + ' (pass ignore_mismatched_sizes=True to re-initialise mis-shaped tensors, '
                'e.g. a head for another number of labels)')
        return (model, info) if wants_info else model

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        # As in the plain nn.Module: He-uniform GD layers and 1x1 shortcuts (§5.2), default BN init.
        if isinstance(module, (GaussDerConv, DSGaussDerConv, nn.Conv2d, nn.BatchNorm2d)):
            module.reset_parameters()


class GaussDerResNetForImageClassification(GaussDerResNetPreTrainedModel):
    """A multi-scale-channel GaussDerResNet classifier (arXiv:2603.02843) for transformers.

    ``logits`` are the scale-pooled class scores; the loss is cross-entropy against ``labels``.
    """

    def __init__(self, config: GaussDerResNetConfig):
        super().__init__(config)
        self.gaussderresnet = GaussDerResNet(**config.model_args())
        self.post_init()

    def _set_gradient_checkpointing(self, enable: bool = True, gradient_checkpointing_func=None) -> None:
        self.gaussderresnet.set_grad_checkpointing(enable)

    def gradient_checkpointing_enable(self, gradient_checkpointing_kwargs=None) -> None:
        self.gaussderresnet.set_grad_checkpointing(True)

    def gradient_checkpointing_disable(self) -> None:
        self.gaussderresnet.set_grad_checkpointing(False)

    @property
    def is_gradient_checkpointing(self) -> bool:
        return self.gaussderresnet.grad_checkpointing

    def forward(
            self,
            pixel_values: torch.Tensor | None = None,
            labels: torch.Tensor | None = None,
            output_hidden_states: bool | None = None,
            return_dict: bool | None = None,
            **kwargs,
    ) -> ImageClassifierOutputWithNoAttention | tuple:
        if pixel_values is None:
            raise ValueError('pixel_values is required')
        per_scale = self.gaussderresnet.forward_scale_channels(pixel_values)
        logits = self.gaussderresnet._pool(per_scale)
        loss = None
        if labels is not None:
            loss = self.loss_function(labels, logits, self.config)
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        hidden_states = (per_scale,) if output_hidden_states else None
        if not return_dict:
            output = (logits,) + ((hidden_states,) if hidden_states is not None else ())
            return ((loss,) + output) if loss is not None else output
        return ImageClassifierOutputWithNoAttention(loss=loss, logits=logits, hidden_states=hidden_states)
