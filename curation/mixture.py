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

from curation.image_text import VISION_TOKEN_PIXELS
from curation.shards import CuratedSet, iter_samples, read_manifest
from curation.tokenizer import TokenizerArtifact, load_tokenizer
from infra import storage

VISION_MODALITIES = ("image_text", "video")
MIXTURE_FILE = "mixture.json"
TOKEN_COUNTS_FILE = "token_counts.parquet"  # per sample: text and vision tokens under the mixture's tokenizer


def vision_tokens(shape: list[int]) -> int:
    """Tokens for one image [H, W, 3] or one 4-frame chunk [4, H, W, 3]: one per 28x28 block
    (14x14 patches merged 2x2; the 4 frames of a chunk are pooled over time into one map)."""
    h, w = shape[-3], shape[-2]
    return (h // VISION_TOKEN_PIXELS) * (w // VISION_TOKEN_PIXELS)


def token_counts(curated: CuratedSet, tokenizer) -> list[dict]:
    """Per sample: text tokens (document or caption) and vision tokens (from the manifest shape)."""
    manifest = read_manifest(curated.uri).to_pylist()
    vision = {row["key"]: vision_tokens(row["shape"]) if row["shape"] else 0 for row in manifest}
    rows = []
    for sample in iter_samples(curated.uri):
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


def build_mixture(sets: dict[str, CuratedSet], tokenizer: TokenizerArtifact, out_uri: str,
                  vision_ratio: float = 0.1) -> dict:
    """Write `out_uri/mixture.json` and return it. `vision_ratio` is the target share of vision
    tokens among all tokens; each source's `token_share` is its part of that target."""
    if not 0.0 <= vision_ratio < 1.0:
        raise ValueError(f"vision_ratio must be in [0, 1), got {vision_ratio}")
    text_sets = {n: s for n, s in sets.items() if s.modality == "text"}
    vision_sets = {n: s for n, s in sets.items() if s.modality in VISION_MODALITIES}
    if not text_sets or all(s.num_samples == 0 for s in text_sets.values()):
        raise ValueError("the mixture needs at least one non-empty text source")
    if vision_ratio > 0 and sum(s.num_samples for s in vision_sets.values()) == 0:
        raise ValueError(f"vision_ratio={vision_ratio} but no non-empty image_text or video source was given")

    tok = load_tokenizer(tokenizer.uri)
    per_sample = {name: token_counts(s, tok) for name, s in sorted(sets.items())}
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
        is_vision = name in vision_sets
        group_share, group_total = (vision_ratio, vision_total) if is_vision else (1 - vision_ratio, text_total)
        sources[name] = {
            "modality": s.modality,
            "uri": s.uri,
            "manifest_uri": s.manifest_uri,
            "digest": s.digest,
            "num_samples": s.num_samples,
            "tokens": tokens[name],
            # Within a group, sources are weighted by their size in tokens.
            "token_share": group_share * tokens[name] / group_total if group_total else 0.0,
        }
    mixture = {
        "sources": sources,
        "tokenizer": {"uri": tokenizer.uri, "digest": tokenizer.digest, "vocab_size": tokenizer.vocab_size},
        "vision_ratio": vision_ratio,
        "tokens": {"text": text_total, "vision": vision_total},
        "token_counts_digest": storage.sha256_bytes(buf.getvalue()),
    }
    mixture["digest"] = canonical_digest(mixture)  # content only: where the table lies is not part of it
    mixture["token_counts_uri"] = counts_uri
    storage.write_text(storage.join(out_uri, MIXTURE_FILE), json.dumps(mixture, indent=2, sort_keys=True))
    return mixture
