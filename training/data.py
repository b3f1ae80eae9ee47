"""Shared data pieces: the `Batch` every loader yields and the multi-turn chat (SFT) loader. Pre-training batches stream from
`training/loader.py`.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path

import torch

from agents.chat import render_turns
from curation.tokenizer import load_tokenizer
from model.tokens import Vocab

# What each input position of a packed row belongs to (`Batch.modality`). A position's target is
# the next token of the same document, so it belongs to the same sample.
MODALITY_PAD = 0  # padding (no document)
MODALITY_TEXT = 1  # a text document
MODALITY_VISION = 2  # an image-text or video sample: media tokens, timestamp and caption
MODALITY_NAMES = {MODALITY_TEXT: "text", MODALITY_VISION: "vision"}


@dataclass
class Batch:
    tokens: torch.Tensor  # [B, T]
    targets: torch.Tensor  # [B, T], -100 = no loss
    attn_mask: torch.Tensor  # [B, 1, T, T] bool, causal within each packed document
    vision_items: list[torch.Tensor]  # in placeholder order (row-major)
    text_tokens: int
    vision_tokens: int
    modality: torch.Tensor | None = None  # [B, T] int8 MODALITY_* per position; None = not tracked


# ---- chat data for SFT and RL (zero-vision: text only)

def read_jsonl(path: str | Path) -> list[dict]:
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def gsm8k_path(data_root: str, split: str) -> Path:
    path = Path(data_root) / "benchmarks" / "gsm8k" / f"{split}.jsonl"
    if not path.exists():
        raise FileNotFoundError(f"GSM8K {split} split not found at {path} (set --data-root to the shared data folder)")
    return path


def gsm8k_conversation(example: dict, answer_style: str = "solution") -> list[dict]:
    """One GSM8K problem as a user -> assistant conversation (the worked solution, or only its
    `#### N` line)."""
    answer = example["answer"]
    if answer_style != "solution":
        answer = "#### " + answer.rsplit("####", 1)[-1].strip()
    return [{"role": "user", "content": example["question"]}, {"role": "assistant", "content": answer}]


def encode_conversation(messages: list[dict], vocab: Vocab) -> tuple[list[int], list[int]]:
    """(ids, labels): labels equal the ids on assistant turn bodies (content, tool calls and
    <|im_end|>) and are -100 on every header and on system, user and tool turns."""
    ids: list[int] = []
    labels: list[int] = []
    for turn in render_turns(messages, vocab):
        ids += turn.header + turn.body
        labels += [-100] * len(turn.header) + (turn.body if turn.role == "assistant" else [-100] * len(turn.body))
    return ids, labels


class ChatLoader:
    """Multi-turn SFT batches: whole conversations packed into rows, never split.

    A conversation of n ids contributes n - 1 (input, target) positions; a row takes
    conversations while they fit (attention stays inside each one, like packed pre-training
    documents) and targets never cross from one conversation into the next. A conversation
    longer than a row cannot be packed without splitting it: it is set aside (`too_long`, counted
    and reported at start-up), never cut. Batches are a pure function of (seed, rank, step)."""

    def __init__(self, conversations: list[list[dict]] | dict[str, list[list[dict]]], vocab: Vocab, seq_len: int,
                 batch_size: int, seed: int, dp_rank: int, dp_size: int, shares: dict[str, float] | None = None):
        """`conversations`: one list, or named sources drawn from in proportion to `shares`
        (a source with share 0 or no conversation on this rank is left out)."""
        self.vocab, self.seq_len, self.batch_size, self.seed, self.dp_rank = vocab, seq_len, batch_size, seed, dp_rank
        sources = conversations if isinstance(conversations, dict) else {"chat": conversations}
        shares = shares or {name: 1.0 for name in sources}
        self.sources: dict[str, list[tuple[list[int], list[int]]]] = {}
        self.too_long: dict[str, list[int]] = {}  # per source, indices that exceed a row
        for name, convs in sources.items():
            rows, long = [], []
            for i, conv in enumerate(convs):
                if i % dp_size != dp_rank:
                    continue
                ids, labels = encode_conversation(conv, vocab)
                if len(ids) - 1 > seq_len:
                    long.append(i)
                elif any(t != -100 for t in labels):
                    rows.append((ids, labels))
            self.too_long[name] = long
            if rows and shares.get(name, 0) > 0:
                self.sources[name] = rows
        if not self.sources:
            n_long = sum(map(len, self.too_long.values()))
            raise ValueError(f"no SFT conversation fits a {seq_len}-token row on rank {dp_rank} ({n_long} too long)")
        total = sum(shares[n] for n in self.sources)
        self.shares = {n: shares[n] / total for n in self.sources}
        self.rows = [r for rows in self.sources.values() for r in rows]

    def _pick(self, rng: random.Random) -> tuple[list[int], list[int]]:
        names = list(self.sources)
        name = rng.choices(names, weights=[self.shares[n] for n in names])[0] if len(names) > 1 else names[0]
        rows = self.sources[name]
        return rows[rng.randrange(len(rows))]

    def state_dict(self) -> dict:
        return {"seed": self.seed, "dp_rank": self.dp_rank}

    def batch(self, step: int) -> Batch:
        rng = random.Random(f"{self.seed}:{self.dp_rank}:{step}")
        T, pad = self.seq_len, self.vocab.pad
        tokens, targets, docs = [], [], []
        carry = None
        for _ in range(self.batch_size):
            row_t, row_y, row_d = [], [], []
            n_doc = 0
            while True:
                ids, labels = carry if carry is not None else self._pick(rng)
                carry = None
                if row_t and len(row_t) + len(ids) - 1 > T:
                    carry = (ids, labels)  # starts the next row
                    break
                n_doc += 1
                row_t += ids[:-1]
                row_y += labels[1:]
                row_d += [n_doc] * (len(ids) - 1)
                if len(row_t) >= T:
                    break
            fill = T - len(row_t)
            tokens.append(row_t + [pad] * fill)
            targets.append(row_y + [-100] * fill)
            docs.append(row_d + [0] * fill)
        tokens_t, doc = torch.tensor(tokens), torch.tensor(docs)
        causal = torch.ones(T, T, dtype=torch.bool).tril()
        # inside one conversation; a padding position sees itself only (no all-masked row)
        mask = ((causal[None] & (doc[:, :, None] == doc[:, None, :]) & (doc[:, None, :] > 0))
                | torch.eye(T, dtype=torch.bool)[None])[:, None]
        n_text = int((doc > 0).sum())
        return Batch(tokens_t, torch.tensor(targets), mask, [], n_text, 0)


def load_vocab(mixture: dict) -> Vocab:
    return Vocab(load_tokenizer(mixture["tokenizer"]["uri"]))
