"""Text curation: normalise, clean, filter, split long documents, dedup (exact + MinHash), write shards.

Filters, each with its threshold in `TextCurationConfig` (no network, no downloaded model):
- length (min_chars / max_chars, long documents split or truncated),
- non-letter share (code dumps, symbol tables),
- English stop-word share (a cheap language/quality signal: real English prose is ~30-50 % stop
  words; word lists, boilerplate and other languages score far lower),
- mean word length (gibberish, base64 and URL lists sit outside [min, max]),
- repeated-line share (navigation menus, templated spam).
Near-duplicates are removed with MinHash LSH (`datasketch`) over word n-gram shingles: a piece
whose estimated Jaccard similarity to an already kept piece reaches `near_dup_threshold` goes.
Each kept document carries its stats (words, stop-word share, ...) in its `.json` member.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from collections import Counter
from dataclasses import dataclass, field
from typing import Iterable, Iterator

from curation import sources
from curation.quarantine import Quarantine, Reject
from curation.shards import CuratedSet, save_curated_set, text_sample, write_shards
from infra.progress import Log, track

# A compact English stop-word list (function words), enough for a ratio signal.
STOP_WORDS = frozenset("""
a about above after again against all am an and any are as at be because been before being below
between both but by can could did do does doing down during each few for from further had has have
having he her here hers herself him himself his how i if in into is it its itself just me more most
my myself no nor not now of off on once only or other our ours ourselves out over own same she
should so some such than that the their theirs them themselves then there these they this those
through to too under until up upon very was we were what when where which while who whom why will
with would you your yours yourself yourselves thou thee thy thine ye unto shall hath
""".split())
WORD = re.compile(r"[^\W\d_]+(?:'[^\W\d_]+)?")


@dataclass
class TextCurationConfig:
    sources: list[sources.SourceSpec | str] = field(default_factory=lambda: ["pydoc_topics", "kjv"])
    max_docs_per_source: int | None = None  # None: every document; small values for tests
    min_chars: int = 200  # shorter pieces carry too little context to be worth a sequence
    max_chars: int = 8000  # longer documents are split (or truncated) to this many characters
    long_doc_policy: str = "split"  # "split" keeps all text; "truncate" keeps the head only
    max_nonletter_frac: float = 0.6  # pydoc prose has code snippets; tables of symbols do not pass
    min_stopword_frac: float = 0.08  # English prose is ~0.3-0.5; 0 turns the filter off
    min_mean_word_len: float = 2.5  # mean letters per word, lower bound
    max_mean_word_len: float = 12.0  # upper bound (base64, hashes, glued URLs)
    max_repeated_line_frac: float = 0.5  # share of non-empty lines that repeat an earlier line
    near_dup: bool = True  # MinHash LSH near-duplicate removal
    near_dup_threshold: float = 0.8  # estimated Jaccard similarity at which a piece is a near-duplicate
    num_perm: int = 128  # MinHash permutations (more: better estimate, slower)
    shingle_words: int = 5  # word n-gram size of the shingles
    shard_maxcount: int = 1000

    def validate(self) -> None:
        if self.long_doc_policy not in ("split", "truncate"):
            raise ValueError(f"long_doc_policy must be 'split' or 'truncate', got {self.long_doc_policy!r}")
        if not 0 < self.min_chars <= self.max_chars:
            raise ValueError(f"need 0 < min_chars <= max_chars, got {self.min_chars}, {self.max_chars}")
        for name in ("max_nonletter_frac", "min_stopword_frac", "max_repeated_line_frac"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)}")
        if not 0.0 <= self.min_mean_word_len <= self.max_mean_word_len:
            raise ValueError("need 0 <= min_mean_word_len <= max_mean_word_len")
        if not 0.0 < self.near_dup_threshold <= 1.0:
            raise ValueError(f"near_dup_threshold must be in (0, 1], got {self.near_dup_threshold}")
        if self.num_perm < 16 or self.shingle_words < 1:
            raise ValueError(f"need num_perm >= 16 and shingle_words >= 1, got {self.num_perm}, {self.shingle_words}")
        sources.parse_sources(self.sources, "text")


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


def doc_stats(text: str) -> dict:
    """Per-document quality stats (stored with each kept document)."""
    words = [w.lower() for w in WORD.findall(text)]
    lines = [line.strip() for line in text.split("\n") if line.strip()]
    repeated = len(lines) - len(set(lines))
    return {
        "n_chars": len(text),
        "n_words": len(words),
        "stopword_frac": round(sum(w in STOP_WORDS for w in words) / len(words), 4) if words else 0.0,
        "mean_word_len": round(sum(map(len, words)) / len(words), 3) if words else 0.0,
        "repeated_line_frac": round(repeated / len(lines), 4) if lines else 0.0,
        "nonletter_frac": round(nonletter_fraction(text), 4),
    }


def quality_reason(stats: dict, cfg: TextCurationConfig) -> str | None:
    """The first quality filter a piece fails, or None."""
    if stats["nonletter_frac"] > cfg.max_nonletter_frac:
        return "too_many_nonletters"
    if stats["stopword_frac"] < cfg.min_stopword_frac:
        return "few_stopwords"
    if not cfg.min_mean_word_len <= stats["mean_word_len"] <= cfg.max_mean_word_len:
        return "bad_word_length"
    if stats["repeated_line_frac"] > cfg.max_repeated_line_frac:
        return "repeated_lines"
    return None


class NearDupIndex:
    """MinHash LSH over word n-gram shingles (datasketch). `seen(text)` is True when the text is a
    near-duplicate of one added before; otherwise the text is added and False returned."""

    def __init__(self, threshold: float, num_perm: int, shingle_words: int):
        from datasketch import MinHash, MinHashLSH

        self._minhash, self.num_perm, self.n = MinHash, num_perm, shingle_words
        self.lsh = MinHashLSH(threshold=threshold, num_perm=num_perm)
        self._count = 0

    def signature(self, text: str):
        words = [w.lower() for w in WORD.findall(text)]
        n = min(self.n, max(1, len(words)))
        shingles = {" ".join(words[i : i + n]).encode("utf-8") for i in range(max(1, len(words) - n + 1))}
        m = self._minhash(num_perm=self.num_perm, seed=1)
        m.update_batch(sorted(shingles))
        return m

    def seen(self, text: str) -> str | None:
        """The key of a near-duplicate already in the index, or None (then this text is added)."""
        m = self.signature(text)
        hits = self.lsh.query(m)
        if hits:
            return sorted(hits)[0]
        self.lsh.insert(f"d{self._count}", m)
        self._count += 1
        return None


def source_docs(cfg: TextCurationConfig) -> Iterator[sources.TextDoc | Reject]:
    for spec in sources.parse_sources(cfg.sources, "text"):
        n = 0
        for doc in sources.limited(spec, sources.read_text_source(spec)):
            if not isinstance(doc, Reject):
                if cfg.max_docs_per_source is not None and n >= cfg.max_docs_per_source:
                    break
                n += 1
            yield doc


def curate_docs(docs: Iterable[sources.TextDoc | Reject], cfg: TextCurationConfig, quarantine: Quarantine,
                stats: Counter) -> Iterator[tuple[str, str, str, dict]]:
    """Yield (source, doc_id, text, doc stats) for each kept piece; quarantine the rest by reason."""
    seen: dict[str, str] = {}
    near_ids: dict[str, str] = {}
    near = NearDupIndex(cfg.near_dup_threshold, cfg.num_perm, cfg.shingle_words) if cfg.near_dup else None
    for doc in docs:
        stats["input_docs"] += 1
        if isinstance(doc, Reject):
            quarantine.add_reject(doc)
            continue
        text = normalize(doc.text)
        if not text:
            quarantine.add(doc.source, doc.doc_id, "empty_text")
            continue
        if len(text) > cfg.max_chars:
            stats["long_docs"] += 1
            pieces = split_long(text, cfg.max_chars) if cfg.long_doc_policy == "split" else [text[: cfg.max_chars]]
        else:
            pieces = [text]
        for part, piece in enumerate(pieces):
            doc_id = doc.doc_id if len(pieces) == 1 else f"{doc.doc_id} part {part}"
            if len(piece) < cfg.min_chars:
                quarantine.add(doc.source, doc_id, "too_short", f"{len(piece)} chars")
                continue
            piece_stats = doc_stats(piece)
            reason = quality_reason(piece_stats, cfg)
            if reason:
                quarantine.add(doc.source, doc_id, reason, str(piece_stats))
                continue
            digest = hashlib.sha256(piece.encode("utf-8")).hexdigest()
            if digest in seen:
                quarantine.add(doc.source, doc_id, "duplicate", f"same as {seen[digest]}")
                continue
            seen[digest] = f"{doc.source}/{doc_id}"
            if near is not None:
                hit = near.seen(piece)
                if hit is not None:
                    quarantine.add(doc.source, doc_id, "near_duplicate", f"similar to {near_ids[hit]}")
                    continue
                near_ids[f"d{len(near_ids)}"] = f"{doc.source}/{doc_id}"
            yield doc.source, doc_id, piece, piece_stats


def curate_text(out_uri: str, cfg: TextCurationConfig, docs: Iterable[sources.TextDoc | Reject] | None = None, log: Log | None = None) -> CuratedSet:
    """Curate text into WebDataset shards at out_uri. `docs` overrides the configured sources.
    Every rejected document or piece is counted by reason and listed in `out_uri/quarantine.jsonl`."""
    cfg.validate()
    quarantine, stats = Quarantine(), Counter()
    docs = source_docs(cfg) if docs is None else docs
    docs = track(docs, "text curation", log=log, unit="doc")  # the sources stream: a count and rate, no total
    counters: Counter = Counter()
    sums: Counter = Counter()

    def samples():
        for source, doc_id, text, piece_stats in curate_docs(docs, cfg, quarantine, stats):
            key = f"{source}-{counters[source]:07d}"
            counters[source] += 1
            stats["chars"] += len(text)
            for name in ("n_words", "stopword_frac", "mean_word_len", "repeated_line_frac"):
                sums[name] += piece_stats[name]
            yield text_sample(key, source, text, doc_id, stats=piece_stats)

    try:
        result = write_shards(samples(), out_uri, prefix="text", maxcount=cfg.shard_maxcount)
    except BaseException:
        quarantine.discard()
        raise
    quarantine_uri = quarantine.save(out_uri)
    if result.num_samples == 0:
        raise ValueError(f"text curation kept no documents (rejected: {dict(quarantine.counts)}; see {quarantine_uri})")
    stats["docs_per_source"] = dict(sorted(counters.items()))
    stats["words"] = int(sums["n_words"])
    for name in ("stopword_frac", "mean_word_len", "repeated_line_frac"):
        stats[f"mean_{name}"] = round(sums[name] / result.num_samples, 4)
    return save_curated_set(result, "text", dict(quarantine.counts), dict(sorted(stats.items())),
                            quarantine_uri=quarantine_uri)
