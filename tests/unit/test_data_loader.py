"""The training loaders on a tiny real mixture (built once per session with the curation library):
exact resume, rank sharding, placeholder accounting, targets, document masks, the vision share."""

import pytest
import torch

from curation.image_text import ImageCurationConfig, curate_image_text
from curation.mixture import build_mixture
from curation.text import TextCurationConfig, curate_text
from curation.tokenizer import train_tokenizer
from curation.video import VideoCurationConfig, curate_video
from model.config import model_preset
from model.multimodal import K25Model
from model.vision import vision_token_count
from training.data import ChatLoader, MixtureLoader, load_mixture, load_vocab

ALL = ("text", "image_text", "video")
SEQ_LEN, BATCH = 128, 4


@pytest.fixture(scope="session")
def mixture(tmp_path_factory):
    root = tmp_path_factory.mktemp("loader-data")
    text = curate_text(str(root / "text"), TextCurationConfig(max_docs_per_source=20, max_chars=2000))
    image = curate_image_text(str(root / "image"), ImageCurationConfig(max_digits=30, include_skimage=False))
    video = curate_video(str(root / "video"), VideoCurationConfig(max_chunks_per_video=1))
    tok = train_tokenizer(text.uri, str(root / "tokenizer"), vocab_size=512)
    build_mixture({"text": text, "image": image, "video": video}, tok, str(root / "mixture"), vision_ratio=0.1)
    return load_mixture(str(root / "mixture"))  # as the stage programs read it


@pytest.fixture(scope="session")
def vocab(mixture):
    return load_vocab(mixture)


def make_loader(mixture, vocab, sources=ALL, ratio=0.1, rank=0, size=2, seq_len=SEQ_LEN, batch=BATCH, seed=1234):
    return MixtureLoader(mixture, vocab, sources, ratio, seq_len, batch, seed, rank, size)


@pytest.fixture(scope="session")
def loader(mixture, vocab):
    return make_loader(mixture, vocab)


def assert_batches_equal(a, b):
    assert torch.equal(a.tokens, b.tokens)
    assert torch.equal(a.targets, b.targets)
    assert torch.equal(a.attn_mask, b.attn_mask)
    assert len(a.vision_items) == len(b.vision_items)
    assert all(torch.equal(x, y) for x, y in zip(a.vision_items, b.vision_items))
    assert (a.text_tokens, a.vision_tokens) == (b.text_tokens, b.vision_tokens)


def segments(batch, row):
    """Document ids of a row, read back from the attention mask (a new document starts where a
    token may not attend to its predecessor)."""
    m = batch.attn_mask[row, 0]
    starts = torch.cat([torch.tensor([True]), ~m.diagonal(-1)])
    return torch.cumsum(starts.long(), 0) - 1


# ----------------------------------------------------------------------------------------------
# Determinism and sharding


def test_batch_is_a_pure_function_of_the_step(mixture, vocab, loader):
    b7 = loader.batch(7)
    assert_batches_equal(b7, loader.batch(7))
    # A fresh loader (a resumed run) reproduces it exactly, whatever it served before.
    fresh = make_loader(mixture, vocab)
    for step in range(3):
        fresh.batch(step)
    assert_batches_equal(b7, fresh.batch(7))
    assert not torch.equal(loader.batch(8).tokens, b7.tokens)
    assert loader.state_dict() == {"seed": 1234, "dp_rank": 0}


def test_ranks_and_seeds_see_different_data(mixture, vocab, loader):
    other = make_loader(mixture, vocab, rank=1)
    for step in range(3):
        assert not torch.equal(loader.batch(step).tokens, other.batch(step).tokens)
    # Ranks hold disjoint shards of the samples.
    assert not {tuple(d) for d in loader.text_docs} & {tuple(d) for d in other.text_docs}
    assert len(loader.vision) + len(other.vision) == make_loader(mixture, vocab, size=1).vision.__len__()
    reseeded = make_loader(mixture, vocab, seed=99)
    assert not torch.equal(loader.batch(0).tokens, reseeded.batch(0).tokens)


# ----------------------------------------------------------------------------------------------
# Contents of a batch


def test_batch_shapes(loader, vocab):
    b = loader.batch(0)
    assert b.tokens.shape == b.targets.shape == (BATCH, SEQ_LEN)
    assert b.attn_mask.shape == (BATCH, 1, SEQ_LEN, SEQ_LEN) and b.attn_mask.dtype == torch.bool
    assert b.tokens.dtype == torch.long and b.targets.dtype == torch.long
    assert int(b.tokens.max()) < vocab.size


@pytest.mark.parametrize("step", range(5))
def test_placeholders_match_vision_items(loader, vocab, step):
    b = loader.batch(step)
    n_pads = int((b.tokens == vocab.media_pad).sum())
    assert n_pads == b.vision_tokens == sum(vision_token_count(x.shape[-3], x.shape[-2]) for x in b.vision_items)
    assert len(b.vision_items) == int((b.tokens == vocab.media_begin).sum()) == int((b.tokens == vocab.media_end).sum())
    for x in b.vision_items:
        assert x.dtype == torch.uint8 and x.shape[-1] == 3 and x.dim() in (3, 4)
    assert b.text_tokens == int((b.tokens != vocab.pad).sum()) - n_pads


@pytest.mark.parametrize("step", range(5))
def test_targets_are_next_tokens_within_a_document(loader, vocab, step):
    b = loader.batch(step)
    assert not (b.targets == vocab.media_pad).any()  # vision placeholders are never predicted
    for r in range(BATCH):
        doc = segments(b, r)
        tok, tgt = b.tokens[r], b.targets[r]
        for i in range(SEQ_LEN - 1):
            nxt = int(tok[i + 1])
            predict = nxt not in (vocab.media_pad, vocab.pad) and doc[i] == doc[i + 1]
            assert int(tgt[i]) == (nxt if predict else -100), (r, i)
        # Where the next input is a placeholder, there is no loss.
        assert (tgt[:-1][tok[1:] == vocab.media_pad] == -100).all()


@pytest.mark.parametrize("step", range(5))
def test_attention_mask_is_block_causal_per_document(loader, vocab, step):
    b = loader.batch(step)
    causal = torch.ones(SEQ_LEN, SEQ_LEN, dtype=torch.bool).tril()
    for r in range(BATCH):
        doc = segments(b, r)
        assert torch.equal(b.attn_mask[r, 0], causal & (doc[:, None] == doc[None, :]))
        tok = b.tokens[r]
        # Every document ends at [EOS] (or at the row end), so [EOS] is always followed by a new one.
        for i in torch.nonzero(tok[:-1] == vocab.eos).flatten().tolist():
            assert doc[i + 1] == doc[i] + 1
        # A vision item is one document: media_begin ... pads ... media_end in the same segment.
        begins = torch.nonzero(tok == vocab.media_begin).flatten().tolist()
        ends = torch.nonzero(tok == vocab.media_end).flatten().tolist()
        for s, e in zip(begins, ends):
            assert s < e and doc[s] == doc[e]
            pads = tok[s:e] == vocab.media_pad
            assert int(pads.sum()) > 0 and pads[-int(pads.sum()):].all()  # contiguous, right before end
    assert b.attn_mask.any(-1).all()  # every query attends to something (no NaN rows)


def test_realised_vision_ratio_is_near_the_target(mixture, vocab, loader):
    batches = [loader.batch(s) for s in range(100)]
    vision = sum(b.vision_tokens for b in batches)
    total = sum(b.vision_tokens + b.text_tokens for b in batches)
    ratio = vision / total
    print(f"realised vision token ratio over 100 batches: {ratio:.4f} (target 0.1)")
    assert abs(ratio - 0.1) <= 0.02, f"realised vision ratio {ratio:.4f}, target 0.1"


def test_text_only_and_zero_ratio_have_no_vision(mixture, vocab):
    for loader in (make_loader(mixture, vocab, sources=("text",), ratio=0.0),
                   make_loader(mixture, vocab, sources=("text",), ratio=0.1)):
        b = loader.batch(0)
        assert b.vision_items == [] and b.vision_tokens == 0
        assert not (b.tokens == vocab.media_pad).any()
        assert (b.tokens != vocab.pad).all()  # text rows are full


def test_vision_only_mode_has_no_text_documents(mixture, vocab):
    loader = make_loader(mixture, vocab, sources=("image_text", "video"), ratio=0.0)
    assert loader.vision_only and loader.text_docs == []
    text_ids = {tuple(d) for d in make_loader(mixture, vocab, sources=("text",)).text_docs}
    for step in range(5):
        b = loader.batch(step)
        assert b.vision_tokens > 0 and b.vision_items
        for r in range(BATCH):
            tok, doc = b.tokens[r], segments(b, r)
            real = tok != vocab.pad
            # Each document is exactly one whole vision item ending with [EOS]; the row tail is padding.
            n_docs = int(doc[real].max()) + 1 if real.any() else 0
            assert int((tok == vocab.media_begin).sum()) == int((tok == vocab.eos).sum()) == n_docs
            assert real[: int(real.sum())].all()  # padding only at the end
            assert (b.targets[r][~real] == -100).all()
            for d in range(n_docs):
                ids = tuple(tok[doc == d].tolist())
                assert vocab.media_begin in ids and ids[-1] == vocab.eos and ids not in text_ids


def test_missing_sources_are_rejected(mixture, vocab):
    empty = {**mixture, "sources": {k: v for k, v in mixture["sources"].items() if v["modality"] == "text"}}
    with pytest.raises(ValueError, match="no vision samples"):
        MixtureLoader(empty, vocab, ALL, 0.1, SEQ_LEN, BATCH, 0, 0, 1)
    with pytest.raises(FileNotFoundError):
        load_mixture("/nonexistent/mixture")


def test_model_consumes_a_mixed_batch(mixture, vocab, loader):
    torch.manual_seed(0)
    model = K25Model(model_preset("tiny", vocab_size=vocab.size), media_pad_id=vocab.media_pad)
    b = loader.batch(0)
    assert b.vision_items
    loss = model.loss(b.tokens, b.targets, b.vision_items, b.attn_mask)
    assert torch.isfinite(loss) and 4.0 < float(loss.detach()) < 9.0  # ~log(512) at initialisation
    loss.backward()
    assert model.vision.patch_embed.weight.grad is not None
    assert float(model.vision.patch_embed.weight.grad.abs().sum()) > 0  # gradient reaches the encoder


# ----------------------------------------------------------------------------------------------
# Chat (SFT) rows

EXAMPLES = [
    {"question": "Tom has 3 apples and buys 4 more. How many apples?", "answer": "3 + 4 = 7\n#### 7"},
    {"question": "What is 12 times 10?", "answer": "12 * 10 = 120\n#### 120"},
    {"question": "Half of 1,000?", "answer": "1000 / 2 = 500\n#### 500"},
]


@pytest.mark.parametrize("style", ["solution", "final"])
def test_chat_loss_only_on_the_assistant_turn(vocab, style):
    from training.policy import prompt_ids

    loader = ChatLoader(EXAMPLES, vocab, seq_len=96, batch_size=6, seed=3, dp_rank=0, dp_size=1, answer_style=style)
    b = loader.batch(0)
    assert b.tokens.shape == b.targets.shape == (6, 96) and b.vision_items == []
    by_prompt = {tuple(prompt_ids(vocab, ex["question"])): ex for ex in EXAMPLES}
    for r in range(6):
        tok, tgt = b.tokens[r].tolist(), b.targets[r].tolist()
        (prompt, ex), = [(p, ex) for p, ex in by_prompt.items() if tuple(tok[: len(p)]) == p]
        text = ex["answer"] if style == "solution" else "#### " + ex["answer"].rsplit("####", 1)[-1].strip()
        answer = vocab.encode(text) + [vocab.im_end]
        n = len(prompt)
        assert tgt[: n - 1] == [-100] * (n - 1)  # no loss on the prompt
        assert tgt[n - 1: n - 1 + len(answer)] == answer  # the assistant turn, first token included
        assert all(t == -100 for t in tgt[n - 1 + len(answer):])  # no loss on padding
        assert tok[n: n + len(answer)] == answer  # teacher forcing
        assert all(t == vocab.pad for t in tok[n + len(answer):])
    assert b.text_tokens == int((b.tokens != vocab.pad).sum())
    assert torch.equal(b.attn_mask[0, 0], torch.ones(96, 96, dtype=torch.bool).tril())


def test_chat_loader_is_deterministic_and_sharded(vocab):
    kw = dict(seq_len=64, batch_size=4, seed=5, dp_size=2)
    a = ChatLoader(EXAMPLES, vocab, dp_rank=0, **kw)
    b = ChatLoader(EXAMPLES, vocab, dp_rank=1, **kw)
    assert len(a.rows) == 2 and len(b.rows) == 1
    assert torch.equal(a.batch(3).tokens, ChatLoader(EXAMPLES, vocab, dp_rank=0, **kw).batch(3).tokens)
    assert not torch.equal(a.batch(0).tokens, b.batch(0).tokens)
    with pytest.raises(ValueError, match="no SFT examples"):
        ChatLoader(EXAMPLES[:1], vocab, dp_rank=1, **kw)


def test_chat_rows_are_truncated_to_seq_len(vocab):
    long = [{"question": "word " * 200, "answer": "x\n#### 1"}]
    b = ChatLoader(long, vocab, seq_len=32, batch_size=1, seed=0, dp_rank=0, dp_size=1).batch(0)
    assert b.tokens.shape == (1, 32) and (b.targets == -100).all()  # the answer was cut off
