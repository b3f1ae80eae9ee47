"""Text curation: normalise, clean, filter, split long documents, exact-dedup, write shards."""

from __future__ import annotations

import hashlib
import re
import unicodedata
from collections import Counter
from dataclasses import dataclass, field
from typing import Iterable, Iterator

from curation import sources
from curation.shards import CuratedSet, save_curated_set, text_sample, write_shards


@dataclass
class TextCurationConfig:
    sources: list[str] = field(default_factory=lambda: ["pydoc_topics", "kjv"])
    max_docs_per_source: int | None = None  # None: every document; small values for tests
    min_chars: int = 200  # shorter pieces carry too little context to be worth a sequence
    max_chars: int = 8000  # longer documents are split (or truncated) to this many characters
    long_doc_policy: str = "split"  # "split" keeps all text; "truncate" keeps the head only
    max_nonletter_frac: float = 0.6  # pydoc prose has code snippets; tables of symbols do not pass
    shard_maxcount: int = 1000

    def validate(self) -> None:
        if self.long_doc_policy not in ("split", "truncate"):
            raise ValueError(f"long_doc_policy must be 'split' or 'truncate', got {self.long_doc_policy!r}")
        if not 0 < self.min_chars <= self.max_chars:
            raise ValueError(f"need 0 < min_chars <= max_chars, got {self.min_chars}, {self.max_chars}")
        if not 0.0 <= self.max_nonletter_frac <= 1.0:
            raise ValueError(f"max_nonletter_frac must be in [0, 1], got {self.max_nonletter_frac}")
        unknown = set(self.sources) - set(sources.TEXT_SOURCES)
        if unknown:
            raise ValueError(f"unknown text sources {sorted(unknown)}; known: {sorted(sources.TEXT_SOURCES)}")


def normalize(text: str) -> str:
    """NFC, unix newlines, no control characters, no trailing spaces, at most one blank line."""
    text = unicodedata.normalize("NFC", text)
    text = text.replace("\r\n", "\n").replace("\r", "\n").replace("\t", "    ")
    # Drop control/format characters (Unicode category C*) except the newline.
    text = "".join(c for c in text if c == "\n" or not unicodedata.category(c).startswith("C"))
    text = "\n".join(line.rstrip() for line in text.split("\n"))
    text = re.sub(r"\n{3,}", "\n\n", text)
    return text.strip()


def nonletter_fraction(text: str) -> float:
    """Share of non-space characters that are not letters (code, numbers, symbol tables)."""
    chars = [c for c in text if not c.isspace()]
    if not chars:
        return 1.0
    return sum(not c.isalpha() for c in chars) / len(chars)


def split_long(text: str, max_chars: int) -> list[str]:
    """Pack paragraphs greedily into pieces of at most max_chars; cut oversized paragraphs."""
    pieces, current = [], ""
    for para in text.split("\n\n"):
        while len(para) > max_chars:  # a single paragraph longer than the limit: hard cut
            if current:
                pieces.append(current)
                current = ""
            pieces.append(para[:max_chars])
            para = para[max_chars:]
        candidate = f"{current}\n\n{para}" if current else para
        if len(candidate) <= max_chars:
            current = candidate
        else:
            pieces.append(current)
            current = para
    if current:
        pieces.append(current)
    return [p.strip() for p in pieces if p.strip()]


def source_docs(cfg: TextCurationConfig) -> Iterator[sources.TextDoc]:
    for name in cfg.sources:
        for i, doc in enumerate(sources.TEXT_SOURCES[name]()):
            if cfg.max_docs_per_source is not None and i >= cfg.max_docs_per_source:
                break
            yield doc


def curate_docs(docs: Iterable[sources.TextDoc], cfg: TextCurationConfig, rejected: Counter, stats: Counter):
    """Yield (source, doc_id, text) for each kept piece; count rejections by reason."""
    seen: set[str] = set()
    for doc in docs:
        stats["input_docs"] += 1
        text = normalize(doc.text)
        if len(text) > cfg.max_chars:
            stats["long_docs"] += 1
            pieces = split_long(text, cfg.max_chars) if cfg.long_doc_policy == "split" else [text[: cfg.max_chars]]
        else:
            pieces = [text]
        for part, piece in enumerate(pieces):
            doc_id = doc.doc_id if len(pieces) == 1 else f"{doc.doc_id} part {part}"
            if len(piece) < cfg.min_chars:
                rejected["too_short"] += 1
                continue
            if nonletter_fraction(piece) > cfg.max_nonletter_frac:
                rejected["too_many_nonletters"] += 1
                continue
            digest = hashlib.sha256(piece.encode("utf-8")).hexdigest()
            if digest in seen:
                rejected["duplicate"] += 1
                continue
            seen.add(digest)
            yield doc.source, doc_id, piece


def curate_text(out_uri: str, cfg: TextCurationConfig, docs: Iterable[sources.TextDoc] | None = None) -> CuratedSet:
    """Curate text into WebDataset shards at out_uri. `docs` overrides the configured sources."""
    cfg.validate()
    rejected, stats = Counter(), Counter()
    docs = source_docs(cfg) if docs is None else docs
    counters: Counter = Counter()

    def samples():
        for source, doc_id, text in curate_docs(docs, cfg, rejected, stats):
            key = f"{source}-{counters[source]:07d}"
            counters[source] += 1
            stats["chars"] += len(text)
            yield text_sample(key, source, text, doc_id)

    result = write_shards(samples(), out_uri, prefix="text", maxcount=cfg.shard_maxcount)
    if result.num_samples == 0:
        raise ValueError(f"text curation kept no documents (rejected: {dict(rejected)})")
    stats["docs_per_source"] = dict(sorted(counters.items()))
    return save_curated_set(result, "text", dict(rejected), dict(sorted(stats.items())))
