"""Integration tests: every test in this folder is marked `integration` (run them alone with
`pytest -m integration`, skip them with `-m 'not integration'`)."""

import os

import pytest


def pytest_collection_modifyitems(items):
    for item in items:
        if "/tests/integration/" in str(item.fspath):
            item.add_marker(pytest.mark.integration)


@pytest.fixture(scope="module")
def kernel():
    """A sandboxed IPython kernel (agents/kernel.py); needs root: skipped elsewhere, a failure on CI."""
    from agents.kernel import Kernel
    from agents.sandbox import SandboxUnavailable

    try:
        k = Kernel(memory_mb=1536)
    except SandboxUnavailable as e:
        if os.environ.get("CI"):
            pytest.fail(f"the kernel must work on CI machines: {e}")
        pytest.skip(f"kernel unavailable here: {e}")
    yield k
    k.close()
