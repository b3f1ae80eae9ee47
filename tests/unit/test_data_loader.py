"""The chat (SFT) loader on a tokenizer trained from a tiny real mixture. The pre-training
loader has its own tests: tests/unit/test_loader.py and tests/integration/test_loader_resume.py."""

import pytest
import torch

from curation.image_text import ImageCurationConfig, curate_image_text
from curation.mixture import build_mixture, read_mixture
from curation.text import TextCurationConfig, curate_text
from curation.tokenizer import train_tokenizer
from curation.video import VideoCurationConfig, curate_video
from training.data import ChatLoader, load_vocab

ALL = ("text", "image_text", "video")
SEQ_LEN, BATCH = 128, 4


@pytest.fixture(scope="session")
def mixture(tmp_path_factory):
    root = tmp_path_factory.mktemp("loader-data")
    text = curate_text(str(root / "text"), TextCurationConfig(max_docs_per_source=20, max_chars=2000))
    image = curate_image_text(str(root / "image"), ImageCurationConfig(max_digits=30, include_skimage=False))
    video = curate_video(str(root / "video"), VideoCurationConfig(max_chunks_per_video=1))
    tok = train_tokenizer(text.uri, str(root / "tokenizer"), vocab_size=512)
    build_mixture({"text": text, "image": image, "video": video}, tok, str(root / "mixture"))
    return read_mixture(str(root / "mixture"))  # as the stage programs read it


@pytest.fixture(scope="session")
def vocab(mixture):
    return load_vocab(mixture)



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
