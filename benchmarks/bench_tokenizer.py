"""Tokenizer throughput: our byte-level BPE (HF `tokenizers`) vs tiktoken built from the same ranks.

Our tokenizer is trained by `curation.tokenizer.train_tokenizer` on the curated text set (pydoc
topics + KJV chapters). Its vocabulary is turned into tiktoken `mergeable_ranks` (token bytes ->
id: ids of a trained BPE follow merge order, so the id is a valid merge rank) with the GPT-2
split regex that `pre_tokenizers.ByteLevel` uses, and the K2.5 special tokens. Before timing, the
token ids of both are compared on every document; the match rate is printed.

MB/s is UTF-8 megabytes of input encoded per second, median over rounds, sides alternating:
  - loop:  one `encode` call per document, one thread on both sides
  - batch: one `encode_batch` call over all documents (both libraries use their thread pools)

    python -m benchmarks.bench_tokenizer [--vocab-size 4096] [--rounds 5]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import tiktoken
from tokenizers import pre_tokenizers

from curation.shards import iter_samples
from curation.text import TextCurationConfig, curate_text
from curation.tokenizer import SPECIAL_TOKENS, load_tokenizer, train_tokenizer

GPT2_SPLIT = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""


def tiktoken_from(tok) -> tiktoken.Encoding:
    byte_of = {ch: b for b, ch in _bytes_to_unicode().items()}
    vocab = tok.get_vocab()
    ranks = {bytes(byte_of[c] for c in token): i for token, i in vocab.items() if token not in SPECIAL_TOKENS}
    specials = {t: vocab[t] for t in SPECIAL_TOKENS}
    return tiktoken.Encoding(name="ours", pat_str=GPT2_SPLIT, mergeable_ranks=ranks, special_tokens=specials)


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte -> printable character table (what ByteLevel's alphabet is made of)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs, n = bs[:], 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    table = dict(zip(bs, map(chr, cs)))
    assert set(table.values()) == set(pre_tokenizers.ByteLevel.alphabet())
    return table


def median_seconds(fn, rounds: int) -> float:
    out = []
    for _ in range(rounds):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return statistics.median(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--vocab-size", type=int, default=4096)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="2 rounds")
    args = parser.parse_args()
    if args.quick:
        args.rounds = min(args.rounds, 2)
    with tempfile.TemporaryDirectory() as tmp:
        text_set = curate_text(f"{tmp}/text", TextCurationConfig())
        art = train_tokenizer(text_set.uri, f"{tmp}/tok", vocab_size=args.vocab_size)
        docs = [s["text"] for s in iter_samples(text_set.uri)]
        ours = load_tokenizer(art.uri)
    ref = tiktoken_from(ours)
    mb = sum(len(d.encode("utf-8")) for d in docs) / 1e6

    same = sum(ours.encode(d, add_special_tokens=False).ids == ref.encode_ordinary(d) for d in docs)
    print(f"corpus: {len(docs)} documents, {mb:.2f} MB; vocab {ours.get_vocab_size()}; "
          f"identical token ids on {same}/{len(docs)} documents")

    def ours_loop():
        for d in docs:
            ours.encode(d, add_special_tokens=False)

    def ref_loop():
        for d in docs:
            ref.encode_ordinary(d)

    def ours_batch():
        ours.encode_batch(docs, add_special_tokens=False)

    def ref_batch():
        ref.encode_ordinary_batch(docs)

    ratios = {}
    for name, a, b in (("loop ", ours_loop, ref_loop), ("batch", ours_batch, ref_batch)):
        ta, tb = [], []
        for _ in range(args.rounds):  # alternate sides
            ta.append(median_seconds(a, 1))
            tb.append(median_seconds(b, 1))
        sa, sb = statistics.median(ta), statistics.median(tb)
        print(f"{name} MB/s ours={mb / sa:7.2f} tiktoken={mb / sb:7.2f} ratio ours/tiktoken={sb / sa:5.2f}x")
        ratios[name.strip()] = sb / sa
    print(f"RESULT loop_ratio={ratios['loop']:.2f} batch_ratio={ratios['batch']:.2f} identical_docs={same}/{len(docs)}")


if __name__ == "__main__":
    main()
