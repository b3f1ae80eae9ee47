"""Integration tests: every test in this folder is marked `integration` (run them alone with
`pytest -m integration`, skip them with `-m 'not integration'`)."""

import os

import pytest


def pytest_collection_modifyitems(items):
    for item in items:
        if "/tests/integration/" in str(item.fspath):
            item.add_marker(pytest.mark.integration)


@pytest.fixture(scope="module")
def mixture_uri(tmp_path_factory):
    """A small real mixture (curated text, digits, one video chunk; a 500-token tokenizer) for
    stage programs started under torchrun; its mixture.json path."""
    from curation.image_text import ImageCurationConfig, curate_image_text
    from curation.mixture import build_mixture
    from curation.text import TextCurationConfig, curate_text
    from curation.tokenizer import train_tokenizer
    from curation.video import VideoCurationConfig, curate_video

    out = tmp_path_factory.mktemp("mix")
    text = curate_text(str(out / "text"), TextCurationConfig(max_docs_per_source=20))
    images = curate_image_text(str(out / "img"), ImageCurationConfig(max_digits=40, include_skimage=False))
    video = curate_video(str(out / "vid"), VideoCurationConfig(max_chunks_per_video=1))
    tok = train_tokenizer(text.uri, str(out / "tok"), 500)
    build_mixture({"text": text, "image_text": images, "video": video}, tok, str(out / "mixture"))
    return str(out / "mixture" / "mixture.json")


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
