"""Unit tests start no server and no subprocess: this folder enforces it (integration tests,
marked `integration`, live in tests/integration)."""

import subprocess

import pytest


@pytest.fixture(autouse=True)
def _no_subprocess(monkeypatch):  # applies to tests in this folder only (a conftest fixture)
    def refuse(*args, **kwargs):
        raise AssertionError("a unit test started a subprocess; move it to tests/integration and mark it integration")

    monkeypatch.setattr(subprocess.Popen, "__init__", refuse)


def pytest_collection_modifyitems(items):
    for item in items:
        if "/tests/unit/" in str(item.fspath) and item.get_closest_marker("integration") is not None:
            raise pytest.UsageError(f"{item.nodeid} is marked integration but lives in tests/unit")

