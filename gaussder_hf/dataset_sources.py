"""Deprecated: the readers of the original benchmark files moved to :mod:`gaussder_hf.data.sources`.

``import gaussder_hf.dataset_sources`` (and ``from gaussder_hf.dataset_sources import ...``)
still works and gives that very module, so that monkeypatching or reading any of its names
through the old spelling reaches the same objects.
"""
import sys
import warnings

from .data import sources

warnings.warn('gaussder_hf.dataset_sources moved to gaussder_hf.data.sources; import it from there',
              DeprecationWarning, stacklevel=2)
sys.modules[__name__] = sources
