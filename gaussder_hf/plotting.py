"""The one matplotlib loader of the package's figures (:mod:`gaussder_hf.analysis`, :mod:`gaussder_hf.visualize`).

matplotlib is imported only when a figure is drawn, so that ``import gaussder_hf`` does not need it.
"""
from __future__ import annotations

__all__ = ['pyplot']


def pyplot():
    """Returns ``matplotlib.pyplot`` on the non-interactive Agg backend: figures go to files, never to a window."""
    import matplotlib

    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    return plt
