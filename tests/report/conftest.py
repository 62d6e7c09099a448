"""Fixtures of the report tests."""

import pytest


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    """tmp_path as the working directory: cmim.paths (results/...) are relative to the workflow directory."""
    monkeypatch.chdir(tmp_path)
    return tmp_path
