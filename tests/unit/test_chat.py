"""The K2 chat format with tool calls: rendering by id, escaping quoted special tokens, and a
parser of model output that never raises."""

import json
import random

import pytest

from agents.chat import ParsedTurn, parse_assistant, render, render_turns, tool_call_ids
from model.tokens import MEDIA_PAD, SPECIAL_TOKENS, Vocab
from training.data import load_vocab


def test_special_ids_are_stable_and_tool_tokens_follow(vocab):
    assert [vocab.tok.token_to_id(t) for t in SPECIAL_TOKENS] == list(range(19))
    assert vocab.media_pad == 10 and vocab.im_end == 7 and vocab.tool_calls_begin == 14 and vocab.tool_calls_end == 18


def test_quoted_special_text_stays_text(vocab):
    doc = f"the string {MEDIA_PAD} and <|im_end|><|tool_call_begin|> are just text <think>"
    ids = vocab.encode(doc)
    assert not set(ids) & vocab.special_ids
    assert vocab.decode(ids) == doc
    # what the raw tokenizer would have done: the crash this prevents
    assert vocab.media_pad in vocab.tok.encode(doc).ids


def test_tokenizer_without_tool_tokens_is_refused_with_the_fix(vocab):
    class Old:
        def token_to_id(self, t):
            return None if "tool" in t else vocab.tok.token_to_id(t)

        def get_vocab_size(self):
            return vocab.size
    with pytest.raises(ValueError, match="re-materialize the tokenizer"):
        Vocab(Old())


ASSISTANT = {"role": "assistant", "content": "Counting the blobs.", "reasoning": "threshold, then label",
             "tool_calls": [{"name": "ipython", "arguments": {"code": "x = 1\nx + 1"}},
                            {"name": "search", "arguments": {"queries": ["capital of <|im_end|> Peru"]}}]}


def test_render_layout(vocab):
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}, ASSISTANT,
                {"role": "tool", "name": "ipython", "call_index": 0, "content": "Out[1]: 2"}]
    text = vocab.decode(render(messages, vocab, add_generation_prompt=True))
    assert text.startswith("<|im_system|>system<|im_middle|>Be brief.<|im_end|><|im_user|>user<|im_middle|>Hi<|im_end|>")
    assert ("<|im_assistant|>assistant<|im_middle|><think>threshold, then label</think>Counting the blobs."
            "<|tool_calls_section_begin|><|tool_call_begin|>functions.ipython:0<|tool_call_argument_begin|>") in text
    assert "functions.search:1<|tool_call_argument_begin|>" in text
    assert text.endswith("<|im_system|>tool<|im_middle|>## Return of functions.ipython:0\nOut[1]: 2<|im_end|>"
                         "<|im_assistant|>assistant<|im_middle|>")
    with pytest.raises(ValueError, match="message 0: unknown role"):
        render([{"role": "robot", "content": ""}], vocab)
    with pytest.raises(ValueError, match="call_index"):
        render([{"role": "tool", "content": "x"}], vocab)


def test_render_then_parse_round_trips(vocab):
    body = render_turns([ASSISTANT], vocab)[0].body
    parsed = parse_assistant(body, vocab)
    assert parsed.as_message() == ASSISTANT
    assert parsed.finished and not parsed.errors and all(c.ok for c in parsed.calls)
    assert [c.index for c in parsed.calls] == [0, 1]
    plain = {"role": "assistant", "content": "The answer is \\boxed{7}."}
    assert parse_assistant(render_turns([plain], vocab)[0].body, vocab).as_message() == plain


def _call_section(vocab, *calls):
    return [vocab.tool_calls_begin, *[t for c in calls for t in c], vocab.tool_calls_end, vocab.im_end]


@pytest.mark.parametrize("case", ["bad_json", "not_object", "bad_name", "no_arg_begin", "unclosed_call",
                                  "unclosed_section", "lead_text", "special_in_args"])
def test_malformed_calls_become_errors_not_exceptions(vocab, case):
    v = vocab
    good = tool_call_ids("ipython", 0, {"code": "1"}, v)
    head = [v.tool_call_begin] + v.encode("functions.ipython:0") + [v.tool_call_argument_begin]
    ids = {
        "bad_json": _call_section(v, head + v.encode('{"code": ') + [v.tool_call_end]),
        "not_object": _call_section(v, head + v.encode("[1, 2]") + [v.tool_call_end]),
        "bad_name": _call_section(v, [v.tool_call_begin] + v.encode("ipython") + [v.tool_call_argument_begin]
                                  + v.encode("{}") + [v.tool_call_end]),
        "no_arg_begin": _call_section(v, [v.tool_call_begin] + v.encode("functions.ipython:0 {}") + [v.tool_call_end]),
        "unclosed_call": _call_section(v, head + v.encode('{"code": "1"}')),
        "unclosed_section": [v.tool_calls_begin] + good,
        "lead_text": _call_section(v, v.encode("oops"), good),
        "special_in_args": _call_section(v, head + [v.media_pad] + [v.tool_call_end]),
    }[case]
    parsed = parse_assistant(ids, v)
    assert isinstance(parsed, ParsedTurn)
    bad = [c for c in parsed.calls if not c.ok] + ([1] if parsed.errors else [])
    assert bad, parsed
    assert all(c.error for c in parsed.calls if not c.ok)


def test_parser_never_raises_on_random_token_soup(vocab):
    rng = random.Random(0)
    specials = sorted(vocab.special_ids)
    for _ in range(3000):
        n = rng.randrange(0, 30)
        ids = [rng.choice(specials) if rng.random() < 0.4 else rng.randrange(vocab.size) for _ in range(n)]
        parsed = parse_assistant(ids, vocab)
        for call in parsed.calls:
            assert call.ok == (call.error is None)
            if call.ok:
                assert isinstance(call.arguments, dict)


def test_arguments_survive_json_special_characters(vocab):
    args = {"code": 'print("a\\tb")\n# <|im_end|> "quoted" ünï', "n": 3, "nested": {"x": [1, None, True]}}
    ids = _call_section(vocab, tool_call_ids("ipython", 4, args, vocab))
    (call,) = parse_assistant(ids, vocab).calls
    assert call.ok and call.arguments == args and call.index == 4
    assert json.loads(json.dumps(call.arguments)) == args


def test_load_vocab_reads_the_mixture_tokenizer(mixture):
    assert load_vocab(mixture).tool_calls_end == 18
