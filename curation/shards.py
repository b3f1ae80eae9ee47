"""Deterministic WebDataset shards, a Parquet manifest, and the `CuratedSet` record that names them.

Layout of one curated set at `out_uri` (a local folder or `s3://bucket/prefix`):

    <prefix>-000000.tar ...   WebDataset shards (tar, fixed mtime/user/group -> same bytes each run)
    manifest.parquet          one row per sample: key, source, modality, shard, size info, sha256
    curated.json              the CuratedSet: counts, rejections, stats, digest, shard list

The digest is sha256 over the sorted (shard name, shard sha256) pairs plus the manifest bytes, so
it changes exactly when the data changes. Readers take the shard list from curated.json, never
from listing the folder, so stale shards from an older run cannot leak in.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import tarfile
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import webdataset as wds
from PIL import Image

from infra import storage
from model.vision import vision_token_count

MODALITIES = ("text", "image_text", "video")
MANIFEST_NAME = "manifest.parquet"
CURATED_NAME = "curated.json"


# ----------------------------------------------------------------------------------------------
# Records

@dataclass
class Sample:
    """One WebDataset sample before writing: payload fields plus the manifest columns."""

    key: str
    source: str
    modality: str
    fields: dict[str, bytes]  # tar member extension -> bytes, e.g. {"txt": ..., "json": ...}
    n_chars: int | None = None
    caption: str | None = None
    shape: list[int] | None = None
    timestamp: str | None = None
    quality: dict | None = None  # per-document quality fields (text filters), stored in the manifest


@dataclass
class CuratedSet:
    modality: str
    uri: str  # the shard folder
    manifest_uri: str
    digest: str
    num_samples: int
    num_shards: int
    rejected: dict[str, int] = field(default_factory=dict)
    stats: dict = field(default_factory=dict)
    shards: list[str] = field(default_factory=list)  # shard file names, in read order
    quarantine_uri: str = ""  # quarantine.jsonl: one line per rejected sample (source, key, reason)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "CuratedSet":
        return cls(**json.loads(text))

    def save(self) -> None:
        storage.write_text(storage.join(self.uri, CURATED_NAME), self.to_json())

    @classmethod
    def load(cls, set_uri: str) -> "CuratedSet":
        return cls.from_json(storage.read_text(storage.join(set_uri, CURATED_NAME)))


# ----------------------------------------------------------------------------------------------
# Sample encoding (the one place that decides the on-disk format of each modality)

def _json_bytes(obj: dict) -> bytes:
    return json.dumps(obj, sort_keys=True, ensure_ascii=False).encode("utf-8")


def text_sample(key: str, source: str, text: str, doc_id: str, stats: dict | None = None) -> Sample:
    meta = {"source": source, "doc_id": doc_id, **({"stats": stats} if stats else {})}
    fields = {"txt": text.encode("utf-8"), "json": _json_bytes(meta)}
    return Sample(key, source, "text", fields, n_chars=len(text), quality=stats)


def image_sample(key: str, source: str, image: np.ndarray, caption: str, name: str, target=None) -> Sample:
    _check_uint8(image, ndim=3)
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")  # lossless, and PIL's PNG bytes are stable
    fields = {
        "png": buf.getvalue(),
        "txt": caption.encode("utf-8"),
        "json": _json_bytes({"source": source, "name": name}),
    }
    if target is not None:  # grounding boxes / OCR text, kept as the source gave them
        fields["target.json"] = _json_bytes({"target": target})
    return Sample(key, source, "image_text", fields, caption=caption, shape=list(image.shape))


def video_sample(key: str, source: str, frames: np.ndarray, caption: str, timestamp: str, name: str) -> Sample:
    _check_uint8(frames, ndim=4)
    buf = io.BytesIO()
    np.save(buf, frames, allow_pickle=False)
    fields = {
        "npy": buf.getvalue(),
        "txt": caption.encode("utf-8"),
        "json": _json_bytes({"source": source, "name": name, "timestamp": timestamp}),
    }
    return Sample(key, source, "video", fields, caption=caption, shape=list(frames.shape), timestamp=timestamp)


def _check_uint8(array: np.ndarray, ndim: int) -> None:
    if array.dtype != np.uint8 or array.ndim != ndim or array.shape[-1] != 3:
        raise ValueError(f"expected uint8 array with {ndim} dims ending in 3 channels, got {array.dtype} {array.shape}")


def payload_sha256(sample: Sample) -> str:
    h = hashlib.sha256()
    for ext in sorted(sample.fields):
        h.update(ext.encode() + b"\0" + len(sample.fields[ext]).to_bytes(8, "little") + sample.fields[ext])
    return h.hexdigest()


def check_key(key: str) -> None:
    """WebDataset splits member names at the FIRST dot, so 'a.v1' + 'txt' reads back as key 'a'."""
    if not key or "." in key or "/" in key or any(c.isspace() for c in key):
        raise ValueError(f"invalid sample key {key!r}: keys must be non-empty with no dots, slashes or spaces")


# ----------------------------------------------------------------------------------------------
# Writing

@dataclass
class ShardResult:
    uri: str
    manifest_uri: str
    digest: str
    num_samples: int
    num_shards: int
    shards: list[str]


def write_shards(samples: Iterable[Sample], out_uri: str, prefix: str, maxcount: int) -> ShardResult:
    """Write samples into `out_uri/<prefix>-%06d.tar` plus `out_uri/manifest.parquet`."""
    check_key(prefix)
    rows, seen = [], set()
    with tempfile.TemporaryDirectory(prefix="shards-") as tmp:
        pattern = str(Path(tmp) / f"{prefix}-%06d.tar")
        # mtime=0 and encoder=False (we pass bytes) make the tar bytes a pure function of the input.
        with wds.ShardWriter(pattern, maxcount=maxcount, verbose=0, mtime=0, encoder=False) as writer:
            for sample in samples:
                check_key(sample.key)
                if sample.key in seen:
                    raise ValueError(f"duplicate sample key {sample.key!r}")
                seen.add(sample.key)
                writer.write({"__key__": sample.key, **sample.fields})
                rows.append(_manifest_row(sample, shard=Path(writer.fname).name))
        shard_files = sorted(Path(tmp).glob(f"{prefix}-*.tar"))
        shard_hashes = []
        for path in shard_files:
            shard_hashes.append((path.name, storage.sha256_file(path)))
            storage.upload_file(path, storage.join(out_uri, path.name))
    manifest = _manifest_bytes(rows)
    manifest_uri = storage.join(out_uri, MANIFEST_NAME)
    storage.write_bytes(manifest_uri, manifest)
    return ShardResult(
        uri=out_uri,
        manifest_uri=manifest_uri,
        digest=set_digest(shard_hashes, manifest),
        num_samples=len(rows),
        num_shards=len(shard_files),
        shards=[name for name, _ in shard_hashes],
    )


def _manifest_row(sample: Sample, shard: str) -> dict:
    return {
        "key": sample.key,
        "source": sample.source,
        "modality": sample.modality,
        "shard": shard,
        "n_chars": sample.n_chars,
        "caption": sample.caption,
        "shape": sample.shape,
        "timestamp": sample.timestamp,
        # one token per 28x28 block of the (padded) image or of the chunk's pooled frames
        "vision_tokens": vision_token_count(sample.shape[-3], sample.shape[-2]) if sample.shape else 0,
        "quality": json.dumps(sample.quality, sort_keys=True) if sample.quality else None,
        "sha256": payload_sha256(sample),
    }


MANIFEST_SCHEMA = pa.schema([
    ("key", pa.string()),
    ("source", pa.string()),
    ("modality", pa.string()),
    ("shard", pa.string()),
    ("n_chars", pa.int64()),
    ("caption", pa.string()),
    ("shape", pa.list_(pa.int32())),
    ("timestamp", pa.string()),
    ("vision_tokens", pa.int64()),
    ("quality", pa.string()),
    ("sha256", pa.string()),
])


def _manifest_bytes(rows: list[dict]) -> bytes:
    table = pa.Table.from_pylist(rows, schema=MANIFEST_SCHEMA)
    buf = io.BytesIO()
    pq.write_table(table, buf)
    return buf.getvalue()


def set_digest(shard_hashes: list[tuple[str, str]], manifest: bytes) -> str:
    h = hashlib.sha256()
    for name, sha in sorted(shard_hashes):
        h.update(f"{name}\t{sha}\n".encode())
    h.update(manifest)
    return h.hexdigest()


def save_curated_set(result: ShardResult, modality: str, rejected: dict[str, int], stats: dict,
                     quarantine_uri: str = "") -> CuratedSet:
    """Build the CuratedSet from a shard write and store it as `curated.json` beside the shards."""
    if modality not in MODALITIES:
        raise ValueError(f"unknown modality {modality!r}; expected one of {MODALITIES}")
    curated = CuratedSet(
        modality=modality,
        uri=result.uri,
        manifest_uri=result.manifest_uri,
        digest=result.digest,
        num_samples=result.num_samples,
        num_shards=result.num_shards,
        rejected=dict(sorted(rejected.items())),
        stats=stats,
        shards=result.shards,
        quarantine_uri=quarantine_uri,
    )
    curated.save()
    return curated


def read_manifest(set_uri: str):
    """The manifest as a pyarrow Table."""
    return pq.read_table(io.BytesIO(storage.read_bytes(storage.join(set_uri, MANIFEST_NAME))))


# ----------------------------------------------------------------------------------------------
# Reading

def iter_samples(set_uri: str) -> Iterator[dict]:
    """Decoded samples of a curated set, in shard order, streamed (local folders and s3:// URIs)."""
    curated = CuratedSet.load(set_uri)
    for name in curated.shards:
        for key, fields in tar_groups(storage.join(set_uri, name)):
            yield decode_sample(curated.modality, key, fields)


# WebDataset's member rule: the key is the path up to the basename's first dot, the rest the field.
WDS_MEMBER = re.compile(r"^((?:.*/|)[^./]+)[.]([^/]*)$")


def open_stream(uri: str):
    """A sequential binary stream of the object: a local file, or an S3 GetObject body."""
    if storage.is_s3(uri):
        bucket, key = storage._split_s3(uri)
        return storage.s3_client().get_object(Bucket=bucket, Key=key)["Body"]
    return open(storage.local_path(uri), "rb")


def tar_groups(uri: str) -> Iterator[tuple[str, dict[str, bytes]]]:
    """(key, {field: bytes}) per sample of a WebDataset tar, streamed without seeks: the one shard
    reader of curation (our shards and users' WebDataset sources) and the training loader. Plain
    tarfile keeps it free of WebDataset's node/worker splitting rules; members that do not follow
    the naming rule (no field) are skipped. Tar errors propagate after the samples before them."""
    stream = open_stream(uri)
    try:
        key, fields = None, {}
        with tarfile.open(fileobj=stream, mode="r|") as tar:
            for member in tar:
                match = WDS_MEMBER.match(member.name) if member.isfile() else None
                if match is None:
                    continue
                member_key, ext = match.groups()
                if member_key != key and fields:
                    yield key, fields
                    fields = {}
                key = member_key
                fields[ext.lower()] = tar.extractfile(member).read()
        if fields:
            yield key, fields
    finally:
        stream.close()


def decode_sample(modality: str, key: str, fields: dict[str, bytes]) -> dict:
    """One sample of our shards as arrays: `pixels` is the image [H, W, 3] or the chunk [T, H, W, 3]."""
    meta = json.loads(fields["json"])
    if modality == "text":
        return {"key": key, "source": meta["source"], "text": fields["txt"].decode("utf-8")}
    caption = fields["txt"].decode("utf-8")
    if modality == "image_text":
        image = np.asarray(Image.open(io.BytesIO(fields["png"])).convert("RGB"), dtype=np.uint8)
        out = {"key": key, "source": meta["source"], "image": image, "pixels": image, "caption": caption,
               "timestamp": None}
        if "target.json" in fields:
            out["target"] = json.loads(fields["target.json"])["target"]
        return out
    if modality == "video":
        frames = np.load(io.BytesIO(fields["npy"]), allow_pickle=False)
        return {"key": key, "source": meta["source"], "frames": frames, "pixels": frames, "caption": caption,
                "timestamp": meta["timestamp"]}
    raise ValueError(f"unknown modality {modality!r}")
