"""Unit tests start no server and no subprocess: this folder enforces it (integration tests,
marked `integration`, live in tests/integration)."""

import subprocess

import pytest

from curation.image_text import ImageCurationConfig, curate_image_text
from curation.mixture import build_mixture, read_mixture
from curation.text import TextCurationConfig, curate_text
from curation.tokenizer import train_tokenizer
from curation.video import VideoCurationConfig, curate_video
from training.data import load_vocab


@pytest.fixture(autouse=True)
def _no_subprocess(monkeypatch):  # applies to tests in this folder only (a conftest fixture)
    def refuse(*args, **kwargs):
        raise AssertionError("a unit test started a subprocess; move it to tests/integration and mark it integration")

    monkeypatch.setattr(subprocess.Popen, "__init__", refuse)


def pytest_collection_modifyitems(items):
    for item in items:
        if "/tests/unit/" in str(item.fspath) and item.get_closest_marker("integration") is not None:
            raise pytest.UsageError(f"{item.nodeid} is marked integration but lives in tests/unit")


# A tiny real mixture and its trained tokenizer, shared by the loader and chat tests.
@pytest.fixture(scope="session")
def mixture(tmp_path_factory):
    root = tmp_path_factory.mktemp("loader-data")
    text = curate_text(str(root / "text"), TextCurationConfig(max_docs_per_source=20, max_chars=2000))
    image = curate_image_text(str(root / "image"), ImageCurationConfig(max_digits=30, include_skimage=False))
    video = curate_video(str(root / "video"), VideoCurationConfig(max_chunks_per_video=1))
    tok = train_tokenizer(text.uri, str(root / "tokenizer"), vocab_size=512)
    build_mixture({"text": text, "image": image, "video": video}, tok, str(root / "mixture"))
    return read_mixture(str(root / "mixture"))  # as the stage programs read it


@pytest.fixture(scope="session")
def vocab(mixture):
    return load_vocab(mixture)
