"""The chat (SFT) loader on a tokenizer trained from a tiny real mixture. The pre-training
loader has its own tests: tests/unit/test_loader.py and tests/integration/test_loader_resume.py."""

import pytest
import torch

from agents.chat import render_turns
from training.data import ChatLoader, encode_conversation, gsm8k_conversation

ALL = ("text", "image_text", "video")
SEQ_LEN, BATCH = 128, 4


# ----------------------------------------------------------------------------------------------
# Chat (SFT) rows: multi-turn, packed, loss on assistant turns only

EXAMPLES = [
    {"question": "Tom has 3 apples and buys 4 more. How many apples?", "answer": "3 + 4 = 7\n#### 7"},
    {"question": "What is 12 times 10?", "answer": "12 * 10 = 120\n#### 120"},
    {"question": "Half of 1,000?", "answer": "1000 / 2 = 500\n#### 500"},
]
TOOL_CONVERSATION = [
    {"role": "system", "content": "You can run Python."},
    {"role": "user", "content": "How many dark blobs are in img?"},
    {"role": "assistant", "content": "Let me count.", "tool_calls": [
        {"name": "ipython", "arguments": {"code": "from scipy import ndimage\nndimage.label(img < 80)[1]"}}]},
    {"role": "tool", "name": "ipython", "call_index": 0, "content": "Out[1]: 4"},
    {"role": "assistant", "content": "There are \\boxed{4} blobs."},
]


def _conversations(style="solution"):
    return [gsm8k_conversation(ex, style) for ex in EXAMPLES]


def test_loss_is_on_assistant_turns_and_tool_calls_only(vocab):
    ids, labels = encode_conversation(TOOL_CONVERSATION, vocab)
    turns = render_turns(TOOL_CONVERSATION, vocab)
    pos = 0
    for turn in turns:
        n_head, n_body = len(turn.header), len(turn.body)
        assert labels[pos: pos + n_head] == [-100] * n_head  # role headers never carry loss
        body = labels[pos + n_head: pos + n_head + n_body]
        if turn.role == "assistant":
            assert body == turn.body  # content, tool calls and <|im_end|>
        else:
            assert body == [-100] * n_body  # system, user and tool turns carry none
        pos += n_head + n_body
    assert pos == len(ids)
    trained = [t for t in labels if t != -100]
    assert vocab.tool_call_begin in trained and vocab.tool_calls_end in trained


def _pieces(batch, r):
    """The packed pieces of row r, read back from the attention mask: each position attends to
    its own conversation from that conversation's first position on."""
    mask = batch.attn_mask[r, 0]
    starts = [int(mask[t].nonzero().min()) for t in range(mask.shape[0])]
    pieces: dict[int, list[int]] = {}
    for t, s in enumerate(starts):
        pieces.setdefault(s, []).append(t)
    return list(pieces.values())


@pytest.mark.parametrize("style", ["solution", "final"])
def test_packed_rows_keep_conversations_whole_and_count_every_token(vocab, style):
    convs = _conversations(style) + [TOOL_CONVERSATION]
    encoded = [encode_conversation(c, vocab) for c in convs]
    loader = ChatLoader(convs, vocab, seq_len=256, batch_size=4, seed=3, dp_rank=0, dp_size=1)
    b = loader.batch(0)
    assert b.tokens.shape == b.targets.shape == (4, 256) and b.vision_items == []
    whole, real = 0, 0
    for r in range(4):
        for positions in _pieces(b, r):
            toks, tgts = b.tokens[r, positions].tolist(), b.targets[r, positions].tolist()
            if len(positions) == 1 and toks == [vocab.pad] and tgts == [-100]:
                continue  # padding: sees itself only
            (ids, labels), = [e for e in encoded if e[0][:-1] == toks]  # a whole conversation
            assert tgts == labels[1:]  # targets shift inside it only
            whole += 1
            real += len(positions)
    assert whole >= 4
    assert b.text_tokens == real
    assert int((b.targets != -100).sum()) > 0


def test_chat_loader_is_deterministic_and_sharded(vocab):
    kw = dict(seq_len=64, batch_size=4, seed=5, dp_size=2)
    convs = _conversations()
    a = ChatLoader(convs, vocab, dp_rank=0, **kw)
    b = ChatLoader(convs, vocab, dp_rank=1, **kw)
    assert len(a.rows) == 2 and len(b.rows) == 1
    assert torch.equal(a.batch(3).tokens, ChatLoader(convs, vocab, dp_rank=0, **kw).batch(3).tokens)
    assert not torch.equal(a.batch(0).tokens, b.batch(0).tokens)
    with pytest.raises(ValueError, match="no SFT conversation fits"):
        ChatLoader(convs[:1], vocab, dp_rank=1, **kw)


def test_a_conversation_longer_than_a_row_is_set_aside_not_cut(vocab):
    long = gsm8k_conversation({"question": "word " * 200, "answer": "x\n#### 1"})
    loader = ChatLoader([long] + _conversations(), vocab, seq_len=64, batch_size=2, seed=0, dp_rank=0, dp_size=1)
    assert loader.too_long == {"chat": [0]} and len(loader.rows) == 3
    with pytest.raises(ValueError, match="1 too long"):
        ChatLoader([long], vocab, seq_len=64, batch_size=1, seed=0, dp_rank=0, dp_size=1)


def test_named_sources_are_drawn_in_proportion_to_their_shares(vocab):
    sources = {"tool": [TOOL_CONVERSATION], "chat": _conversations()}
    loader = ChatLoader(sources, vocab, seq_len=256, batch_size=1, seed=0, dp_rank=0, dp_size=1,
                        shares={"tool": 0.8, "chat": 0.2})
    tool_ids = encode_conversation(TOOL_CONVERSATION, vocab)[0][:-1]
    assert list(loader.sources) == ["tool", "chat"]
    firsts = [loader.batch(s).tokens[0, : len(tool_ids)].tolist() == tool_ids for s in range(300)]
    assert 0.7 < sum(firsts) / 300 < 0.9
    only_chat = ChatLoader(sources, vocab, seq_len=256, batch_size=1, seed=0, dp_rank=0, dp_size=1,
                           shares={"tool": 0.0, "chat": 1.0})
    assert list(only_chat.sources) == ["chat"]
