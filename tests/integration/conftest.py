"""Integration tests: every test in this folder is marked `integration` (run them alone with
`pytest -m integration`, skip them with `-m 'not integration'`)."""

import pytest


def pytest_collection_modifyitems(items):
    for item in items:
        if "/tests/integration/" in str(item.fspath):
            item.add_marker(pytest.mark.integration)
