"""Shared test setup."""
import pytest


@pytest.fixture(autouse=True)
def _isolated_extraction_cache(tmp_path_factory, monkeypatch):
    # Archives the tests write are extracted under a temporary folder, never the user's cache.
    monkeypatch.setenv('GAUSSDER_HF_CACHE', str(tmp_path_factory.getbasetemp() / 'gaussder_hf_cache'))


class RecordingApi:
    """Stands in for ``huggingface_hub.HfApi`` (no network here): records the calls an upload makes."""

    def __init__(self):
        self.calls = []

    def create_repo(self, repo_id, **kwargs):
        self.calls.append(('create_repo', repo_id, kwargs))

    def upload_folder(self, **kwargs):
        self.calls.append(('upload_folder', kwargs['repo_id'], kwargs))
        return 'commit-url'


@pytest.fixture
def recording_api():
    return RecordingApi()
