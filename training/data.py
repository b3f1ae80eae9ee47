"""Shared data pieces: the tokenizer's special ids (`Vocab`), the `Batch`
every loader yields, and the chat (SFT) loader. Pre-training batches stream from
`training/loader.py`.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path

import torch

from curation.tokenizer import chat_template, load_tokenizer


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
