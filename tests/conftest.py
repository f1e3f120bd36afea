"""Shared test setup."""
import pytest


@pytest.fixture(autouse=True)
def _isolated_extraction_cache(tmp_path_factory, monkeypatch):
    # Archives the tests write are extracted under a temporary folder, never the user's cache.
    monkeypatch.setenv('GAUSSDER_HF_CACHE', str(tmp_path_factory.getbasetemp() / 'gaussder_hf_cache'))
