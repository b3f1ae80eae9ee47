"""Training batches from the curated mixture (first version of the loader).

The batch of step `s` on data-parallel rank `r` is a pure function of (seed, r, s): each row is
packed from items drawn with `random.Random(f"{seed}:{r}:{s}:{row}")`. Resume is therefore exact
with a loader state of just the step, and no rank ever waits on another rank's data. Rows mix
sources by tokens: before each item, a vision item is chosen while the row's vision share is
below the target ratio, so every batch holds the target ratio up to one item's granularity.
The data issue replaces this with streaming WebDataset shards and worker processes.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from curation.shards import iter_samples
from curation.tokenizer import chat_template, load_tokenizer
from infra import storage
from model.vision import vision_token_count

VISION_MODALITIES = ("image_text", "video")
MIN_TEXT_PIECE = 8


class Vocab:
    """Special-token ids of a trained tokenizer."""

    def __init__(self, tokenizer):
        self.tok = tokenizer
        ids = {t: tokenizer.token_to_id(t) for t in ("[PAD]", "[BOS]", "[EOS]", "<|media_begin|>", "<|media_content|>",
                                                      "<|media_pad|>", "<|media_end|>", "<|im_end|>", "<|im_assistant|>")}
        missing = [t for t, i in ids.items() if i is None]
        if missing:
            raise ValueError(f"tokenizer lacks special tokens {missing}")
        self.pad, self.bos, self.eos = ids["[PAD]"], ids["[BOS]"], ids["[EOS]"]
        self.media_begin, self.media_content = ids["<|media_begin|>"], ids["<|media_content|>"]
        self.media_pad, self.media_end, self.im_end = ids["<|media_pad|>"], ids["<|media_end|>"], ids["<|im_end|>"]
        self.size = tokenizer.get_vocab_size()

    def encode(self, text: str) -> list[int]:
        return self.tok.encode(text).ids

    def decode(self, ids: list[int]) -> str:
        return self.tok.decode(ids, skip_special_tokens=False)


def load_mixture(mixture_uri: str) -> dict:
    uri = mixture_uri if mixture_uri.endswith(".json") else storage.join(mixture_uri, "mixture.json")
    if not storage.exists(uri):
        raise FileNotFoundError(f"mixture manifest not found at {uri}")
    return json.loads(storage.read_text(uri))


@dataclass
class Batch:
    tokens: torch.Tensor  # [B, T]
    targets: torch.Tensor  # [B, T], -100 = no loss
    attn_mask: torch.Tensor  # [B, 1, T, T] bool, causal within each packed document
    vision_items: list[torch.Tensor]  # in placeholder order (row-major)
    text_tokens: int
    vision_tokens: int


class MixtureLoader:
    def __init__(self, mixture: dict, vocab: Vocab, sources: tuple[str, ...], vision_ratio: float,
                 seq_len: int, batch_size: int, seed: int, dp_rank: int, dp_size: int):
        self.vocab, self.seq_len, self.batch_size = vocab, seq_len, batch_size
        self.seed, self.dp_rank, self.vision_ratio = seed, dp_rank, vision_ratio
        self.text_docs: list[list[int]] = []
        self.vision: list[tuple[np.ndarray, list[int]]] = []  # (pixels, token sequence with pads)
        for name, src in sorted(mixture["sources"].items()):
            if src["modality"] not in sources:
                continue
            for i, sample in enumerate(iter_samples(src["uri"])):
                if i % dp_size != dp_rank:  # shard by data-parallel rank
                    continue
                self._add(src["modality"], sample)
        if "text" in sources and not self.text_docs:
            raise ValueError("the mixture has no text samples for this rank")
        if any(s in sources for s in VISION_MODALITIES) and not self.vision:
            raise ValueError("the mixture has no vision samples for this rank")
        self.text_only = not self.vision
        self.vision_only = not self.text_docs

    def _add(self, modality: str, sample: dict) -> None:
        v = self.vocab
        if modality == "text":
            self.text_docs.append(v.encode(sample["text"]) + [v.eos])
            return
        pixels = sample["image"] if modality == "image_text" else sample["frames"]
        h, w = pixels.shape[-3], pixels.shape[-2]
        n = vision_token_count(h, w)
        prefix = v.encode(sample["timestamp"]) if modality == "video" else []
        kind = v.encode("video" if modality == "video" else "image")
        seq = prefix + [v.media_begin] + kind + [v.media_content] + [v.media_pad] * n + [v.media_end]
        self.vision.append((pixels, seq + v.encode(sample["caption"]) + [v.eos]))

    def state_dict(self) -> dict:
        return {"seed": self.seed, "dp_rank": self.dp_rank}

    def batch(self, step: int) -> Batch:
        rows = [self._row(random.Random(f"{self.seed}:{self.dp_rank}:{step}:{r}")) for r in range(self.batch_size)]
        tokens = torch.tensor([r[0] for r in rows])
        targets = torch.tensor([r[1] for r in rows])
        doc = torch.tensor([r[2] for r in rows])
        T = self.seq_len
        causal = torch.ones(T, T, dtype=torch.bool).tril()
        mask = (causal[None] & (doc[:, :, None] == doc[:, None, :]))[:, None]
        items = [torch.from_numpy(np.array(px)) for r in rows for px in r[3]]
        n_vision = int((tokens == self.vocab.media_pad).sum())
        n_text = int((tokens != self.vocab.pad).sum()) - n_vision
        return Batch(tokens, targets, mask, items, n_text, n_vision)

    def _row(self, rng: random.Random):
        v, T = self.vocab, self.seq_len
        toks: list[int] = []
        doc: list[int] = []
        pixels: list[np.ndarray] = []
        n_vision = n_docs = 0
        while len(toks) < T + 1:
            room = T + 1 - len(toks)
            want_vision = self.vision_only or (not self.text_only and n_vision < self.vision_ratio * (len(toks) + 1))
            if want_vision:
                px, seq = self.vision[rng.randrange(len(self.vision))]
                if len(seq) > room:  # never cut an item's placeholders: fill the rest instead
                    if self.vision_only:
                        toks += [v.pad] * room
                        doc += [-1] * room
                        break
                    want_vision = False
                else:
                    doc += [n_docs] * len(seq)
                    n_docs += 1
                    toks += seq
                    pixels.append(px)
                    n_vision += seq.count(v.media_pad)
                    continue
            # Text fills only up to the point where the row is back at the target ratio, so
            # vision items keep coming; at least MIN_TEXT_PIECE tokens to keep some context.
            take = room
            if not self.text_only and self.vision_ratio > 0:
                take = min(room, max(MIN_TEXT_PIECE, int(n_vision / self.vision_ratio) - len(toks)))
            d = self.text_docs[rng.randrange(len(self.text_docs))]
            start = rng.randrange(max(1, len(d) - take + 1))
            piece = d[start:start + take]
            doc += [n_docs] * len(piece)
            n_docs += 1
            toks += piece
        toks, doc = toks[:T + 1], doc[:T + 1]
        inputs, nxt = toks[:-1], toks[1:]
        targets = [t if (t != v.media_pad and t != v.pad and doc[i] == doc[i + 1]) else -100
                   for i, t in enumerate(nxt)]
        return inputs, targets, doc[:-1], pixels


# ---- chat data for SFT and RL (zero-vision: text only)

def read_jsonl(path: str | Path) -> list[dict]:
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def gsm8k_path(data_root: str, split: str) -> Path:
    path = Path(data_root) / "benchmarks" / "gsm8k" / f"{split}.jsonl"
    if not path.exists():
        raise FileNotFoundError(f"GSM8K {split} split not found at {path} (set --data-root to the shared data folder)")
    return path


class ChatLoader:
    """SFT rows: one conversation per row, loss on the assistant turn only."""

    def __init__(self, examples: list[dict], vocab: Vocab, seq_len: int, batch_size: int, seed: int,
                 dp_rank: int, dp_size: int, answer_style: str = "solution"):
        self.vocab, self.seq_len, self.batch_size, self.seed, self.dp_rank = vocab, seq_len, batch_size, seed, dp_rank
        self.answer_style = answer_style
        self.rows = [self._encode(ex) for i, ex in enumerate(examples) if i % dp_size == dp_rank]
        if not self.rows:
            raise ValueError("no SFT examples for this rank")

    def _encode(self, ex: dict) -> tuple[list[int], list[int]]:
        prompt = self.vocab.encode(chat_template([{"role": "user", "content": ex["question"]}], add_generation_prompt=True))
        text = ex["answer"] if self.answer_style == "solution" else "#### " + ex["answer"].rsplit("####", 1)[-1].strip()
        answer = self.vocab.encode(text) + [self.vocab.im_end]
        toks = (prompt + answer)[: self.seq_len + 1]
        labels = ([-100] * len(prompt) + answer)[: self.seq_len + 1]
        return toks, labels

    def state_dict(self) -> dict:
        return {"seed": self.seed, "dp_rank": self.dp_rank}

    def batch(self, step: int) -> Batch:
        rng = random.Random(f"{self.seed}:{self.dp_rank}:{step}")
        picks = [self.rows[rng.randrange(len(self.rows))] for _ in range(self.batch_size)]
        T, pad = self.seq_len, self.vocab.pad
        tokens, targets = [], []
        for toks, labels in picks:
            fill = T + 1 - len(toks)
            toks, labels = toks + [pad] * fill, labels + [-100] * fill
            tokens.append(toks[:-1])
            targets.append(labels[1:])
        tokens_t = torch.tensor(tokens)
        mask = torch.ones(T, T, dtype=torch.bool).tril()[None, None].expand(len(picks), 1, T, T)
        n_text = int((tokens_t != pad).sum())
        return Batch(tokens_t, torch.tensor(targets), mask, [], n_text, 0)


def load_vocab(mixture: dict) -> Vocab:
    return Vocab(load_tokenizer(mixture["tokenizer"]["uri"]))
