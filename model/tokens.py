"""The K2.5 special tokens and the one way text becomes token ids (`Vocab`).

The tokenizer (curation/tokenizer.py) is trained with SPECIAL_TOKENS in this order, so their ids
are fixed: the 14 of the first version keep ids 0..13 and K2's tool-call tokens follow at 14..18.

Text from data is never turned into special ids: a document that quotes `<|media_pad|>` or
`<|im_end|>` is encoded as ordinary byte-level tokens (`Vocab.encode` splits every special
string so the tokenizer's added-token matcher cannot see it whole). Special ids are placed only
by code that means them (the chat renderer, the media splicer), by id.
"""

from __future__ import annotations

import re

PAD, BOS, EOS = "[PAD]", "[BOS]", "[EOS]"
IM_SYSTEM, IM_USER, IM_ASSISTANT, IM_MIDDLE, IM_END = (
    "<|im_system|>", "<|im_user|>", "<|im_assistant|>", "<|im_middle|>", "<|im_end|>")
MEDIA_BEGIN, MEDIA_CONTENT, MEDIA_PAD, MEDIA_END = (
    "<|media_begin|>", "<|media_content|>", "<|media_pad|>", "<|media_end|>")
THINK, END_THINK = "<think>", "</think>"
# K2's tool-call tokens; a call body is `functions.NAME:IDX<|tool_call_argument_begin|>{json}`
TOOL_CALLS_BEGIN, TOOL_CALL_BEGIN, TOOL_CALL_ARGUMENT_BEGIN, TOOL_CALL_END, TOOL_CALLS_END = (
    "<|tool_calls_section_begin|>", "<|tool_call_begin|>", "<|tool_call_argument_begin|>",
    "<|tool_call_end|>", "<|tool_calls_section_end|>")

SPECIAL_TOKENS = [
    PAD, BOS, EOS,
    IM_SYSTEM, IM_USER, IM_ASSISTANT, IM_MIDDLE, IM_END,
    MEDIA_BEGIN, MEDIA_CONTENT, MEDIA_PAD, MEDIA_END,
    THINK, END_THINK,
    TOOL_CALLS_BEGIN, TOOL_CALL_BEGIN, TOOL_CALL_ARGUMENT_BEGIN, TOOL_CALL_END, TOOL_CALLS_END,
]
# Roles and the special token that opens their turn. K2's template renders a tool result as a
# system-token turn named "tool" (our reading of the released template).
ROLE_TOKENS = {"system": IM_SYSTEM, "user": IM_USER, "assistant": IM_ASSISTANT, "tool": IM_SYSTEM}

_SPECIAL_RE = re.compile("|".join(re.escape(t) for t in sorted(SPECIAL_TOKENS, key=len, reverse=True)))


class Vocab:
    """A trained tokenizer plus the ids of every special token (attribute per token below)."""

    def __init__(self, tokenizer):
        self.tok = tokenizer
        ids = {t: tokenizer.token_to_id(t) for t in SPECIAL_TOKENS}
        missing = [t for t, i in ids.items() if i is None]
        if missing:
            raise ValueError(f"tokenizer lacks special tokens {missing}; it was trained before they were "
                             "added: re-materialize the tokenizer asset")
        self.ids = ids
        self.pad, self.bos, self.eos = ids[PAD], ids[BOS], ids[EOS]
        self.media_begin, self.media_content = ids[MEDIA_BEGIN], ids[MEDIA_CONTENT]
        self.media_pad, self.media_end = ids[MEDIA_PAD], ids[MEDIA_END]
        self.im_end, self.im_middle = ids[IM_END], ids[IM_MIDDLE]
        self.think, self.end_think = ids[THINK], ids[END_THINK]
        self.tool_calls_begin, self.tool_call_begin = ids[TOOL_CALLS_BEGIN], ids[TOOL_CALL_BEGIN]
        self.tool_call_argument_begin, self.tool_call_end = ids[TOOL_CALL_ARGUMENT_BEGIN], ids[TOOL_CALL_END]
        self.tool_calls_end = ids[TOOL_CALLS_END]
        self.special_ids = frozenset(ids.values())
        self.size = tokenizer.get_vocab_size()

    def encode(self, text: str) -> list[int]:
        """Ids of `text` as plain text: quoted special-token strings stay ordinary tokens."""
        out: list[int] = []
        start = 0
        for m in _SPECIAL_RE.finditer(text):
            out += self._plain(text[start:m.start()])
            # "<" and the rest separately: neither piece holds a whole special string
            out += self._plain(m.group()[:1]) + self._plain(m.group()[1:])
            start = m.end()
        return out + self._plain(text[start:])

    def _plain(self, text: str) -> list[int]:
        return self.tok.encode(text, add_special_tokens=False).ids if text else []

    def decode(self, ids: list[int]) -> str:
        return self.tok.decode(list(ids), skip_special_tokens=False)

    def role_header(self, role: str) -> list[int]:
        """`<|im_ROLE|>role<|im_middle|>`: the ids that open a turn."""
        if role not in ROLE_TOKENS:
            raise ValueError(f"unknown chat role {role!r}; expected one of {sorted(ROLE_TOKENS)}")
        return [self.ids[ROLE_TOKENS[role]]] + self.encode(role) + [self.im_middle]
