"""A small byte-level BPE tokenizer trained on curated text, with the K2.5 special tokens.

K2.5 ships a tiktoken BPE of 163,840 entries with a Han-aware split regex (RECIPE.md 1.4). Our
corpus is English, so the GPT-2 byte-level split is enough; what must match K2.5 is the set of
special tokens and the chat format, because the data and model code depend on them.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from curation.shards import CuratedSet, iter_samples
from infra import storage
from infra.progress import Log, track
from infra.refs import TokenizerRef
from model.tokens import SPECIAL_TOKENS

TOKENIZER_FILE = "tokenizer.json"


def tokenizer_digest(uri: str) -> str:
    """sha256 of the tokenizer.json at `uri` (the file or its folder)."""
    if not uri.endswith(".json"):
        uri = storage.join(uri, TOKENIZER_FILE)
    return storage.sha256_bytes(storage.read_bytes(uri))


def train_tokenizer(text_set_uri: str, out_uri: str, vocab_size: int = 4096, log: Log | None = None) -> TokenizerRef:
    """Train on every text sample of a curated text set, in shard order (deterministic)."""
    curated = CuratedSet.load(text_set_uri)
    if curated.modality != "text":
        raise ValueError(f"{text_set_uri} holds {curated.modality} samples, not text")
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    if vocab_size < len(alphabet) + len(SPECIAL_TOKENS):
        raise ValueError(f"vocab_size must be at least {len(alphabet) + len(SPECIAL_TOKENS)}, got {vocab_size}")

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,  # ids 0..18 in list order, [PAD] = 0
        initial_alphabet=alphabet,  # all 256 bytes, so any input encodes without an unknown token
        min_frequency=2,
        show_progress=False,
    )
    texts = (sample["text"] for sample in track(iter_samples(text_set_uri), "tokenizer training: reading text",
                                                  curated.num_samples, log, unit="doc"))
    tokenizer.train_from_iterator(texts, trainer=trainer, length=curated.num_samples)

    with tempfile.TemporaryDirectory(prefix="tokenizer-") as tmp:
        path = Path(tmp) / TOKENIZER_FILE
        tokenizer.save(str(path))
        digest = storage.sha256_file(path)
        uri = storage.join(out_uri, TOKENIZER_FILE)
        storage.upload_file(path, uri)
    return TokenizerRef(uri=uri, digest=digest, vocab_size=tokenizer.get_vocab_size())


def load_tokenizer(uri: str, cache_dir: str | Path | None = None) -> Tokenizer:
    """Load from a tokenizer.json URI or the folder holding it (local or s3://). With cache_dir,
    an S3 file is also kept there as a local copy; without it, it is read straight into memory."""
    if not uri.endswith(".json"):
        uri = storage.join(uri, TOKENIZER_FILE)
    if cache_dir is None:
        return Tokenizer.from_str(storage.read_text(uri))
    return Tokenizer.from_file(str(storage.local_copy(uri, cache_dir)))
