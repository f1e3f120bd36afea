"""The recipes as modules for the tests: ``recipes/*.py`` are scripts, not a package."""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parents[1]


def load_recipe(name: str) -> ModuleType:
    """Returns ``recipes/<name>.py`` as the module ``<name>_recipe``, loaded once per test process."""
    module_name = f'{name}_recipe'
    if module_name not in sys.modules:
        spec = importlib.util.spec_from_file_location(module_name, ROOT / 'recipes' / f'{name}.py')
        module = importlib.util.module_from_spec(spec)
        sys.modules[module_name] = module  # dataclasses resolve the config's annotations through it
        spec.loader.exec_module(module)
    return sys.modules[module_name]
