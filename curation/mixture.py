"""The data mixture: which curated sets, which tokenizer, and what share of tokens each gets.

Weights are in tokens, not samples: one 56x56 image is 4 vision tokens while one text chapter is
~1,000 text tokens, so sample-weighted mixing would badly skew the vision:text ratio
(ECOSYSTEM.md 5.4). `mixture.json` pins every input by digest and has its own digest, so a
training run can name exactly the data it saw.
"""

from __future__ import annotations

import hashlib
import io
import json

import pyarrow as pa
import pyarrow.parquet as pq

from curation.shards import CuratedSet, iter_samples, read_manifest
from curation.tokenizer import load_tokenizer
from infra import storage
from infra.progress import Log, track
from infra.refs import TokenizerRef

VISION_MODALITIES = ("image_text", "video")
MIXTURE_FILE = "mixture.json"
TOKEN_COUNTS_FILE = "token_counts.parquet"  # per sample: text and vision tokens under the mixture's tokenizer


def token_counts(curated: CuratedSet, tokenizer, log: Log | None = None) -> list[dict]:
    """Per sample: text tokens (document or caption) and vision tokens (the manifest's count, from
    model.vision.vision_token_count when the shard was written)."""
    manifest = read_manifest(curated.uri).to_pylist()
    vision = {row["key"]: int(row["vision_tokens"]) for row in manifest}
    rows = []
    for sample in track(iter_samples(curated.uri), f"counting tokens of {curated.modality}", curated.num_samples, log,
                        unit="sample"):
        text = sample["text"] if curated.modality == "text" else sample["caption"]
        rows.append({"key": sample["key"], "source": sample["source"], "modality": curated.modality,
                     "text_tokens": len(tokenizer.encode(text, add_special_tokens=False).ids),
                     "vision_tokens": vision[sample["key"]]})
    return rows


def count_tokens(curated: CuratedSet, tokenizer, rows: list[dict] | None = None) -> int:
    """The tokens a source contributes to its group: text tokens for text, vision tokens for vision."""
    rows = token_counts(curated, tokenizer) if rows is None else rows
    field = "text_tokens" if curated.modality == "text" else "vision_tokens"
    return sum(r[field] for r in rows)


def canonical_digest(obj: dict) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


LOCATION_KEYS = ("uri", "manifest_uri", "token_counts_uri")


def content_digest(mixture: dict) -> str:
    """The digest of what a mixture holds, never of where it lies: every URI is left out (each
    curation run writes a fresh folder), so re-curating unchanged data, or the same data in
    another deployment, gives the same digest and downstream stages stay fresh."""
    def strip(value):
        if isinstance(value, dict):
            return {k: strip(v) for k, v in value.items() if k not in LOCATION_KEYS}
        return value

    return canonical_digest(strip({k: v for k, v in mixture.items() if k != "digest"}))


def build_mixture(sets: dict[str, CuratedSet], tokenizer: TokenizerRef, out_uri: str, log: Log | None = None) -> dict:
    """Write `out_uri/mixture.json` and return it. Each source's `token_share` is its share of
    its modality group's tokens (text, or vision); the vision:text ratio itself belongs to each
    training stage (`data.vision_ratio` of its spec), so one mixture serves every stage."""
    text_sets = {n: s for n, s in sets.items() if s.modality == "text"}
    vision_sets = {n: s for n, s in sets.items() if s.modality in VISION_MODALITIES}
    if not text_sets or all(s.num_samples == 0 for s in text_sets.values()):
        raise ValueError("the mixture needs at least one non-empty text source")

    tok = load_tokenizer(tokenizer.uri)
    per_sample = {name: token_counts(s, tok, log) for name, s in sorted(sets.items())}
    tokens = {name: count_tokens(s, tok, per_sample[name]) for name, s in sorted(sets.items())}
    counts_uri = storage.join(out_uri, TOKEN_COUNTS_FILE)
    table = pa.Table.from_pylist([{"set": n, **r} for n, rows in per_sample.items() for r in rows])
    buf = io.BytesIO()
    pq.write_table(table, buf)
    storage.write_bytes(counts_uri, buf.getvalue())
    text_total = sum(tokens[n] for n in text_sets)
    vision_total = sum(tokens[n] for n in vision_sets)

    sources = {}
    for name, s in sorted(sets.items()):
        group_total = vision_total if name in vision_sets else text_total
        sources[name] = {
            "modality": s.modality,
            "uri": s.uri,
            "manifest_uri": s.manifest_uri,
            "digest": s.digest,
            "num_samples": s.num_samples,
            "tokens": tokens[name],
            # Within a group, sources are weighted by their size in tokens.
            "token_share": tokens[name] / group_total if group_total else 0.0,
        }
    mixture = {
        "sources": sources,
        "tokenizer": {"uri": tokenizer.uri, "digest": tokenizer.digest, "vocab_size": tokenizer.vocab_size},
        "tokens": {"text": text_total, "vision": vision_total},
        "token_counts_digest": storage.sha256_bytes(buf.getvalue()),
    }
    mixture["digest"] = content_digest(mixture)
    mixture["token_counts_uri"] = counts_uri
    storage.write_text(storage.join(out_uri, MIXTURE_FILE), json.dumps(mixture, indent=2, sort_keys=True))
    return mixture


def mixture_file(uri: str) -> str:
    """The mixture.json URI of a mixture folder or file."""
    return uri if uri.endswith(".json") else storage.join(uri, MIXTURE_FILE)


def read_mixture(uri: str) -> dict:
    """The mixture manifest at `uri` (a folder or mixture.json); the one reader of the file."""
    path = mixture_file(uri)
    if not storage.exists(path):
        raise FileNotFoundError(f"mixture manifest not found at {path}")
    return json.loads(storage.read_text(path))
