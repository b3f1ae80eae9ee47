"""The K2 chat format with tool calls, rendered straight to token ids, and a parser of model
output that never raises.

A conversation is a list of messages (plain dicts, as the data files hold them):

    {"role": "system" | "user", "content": str, "media": [pixels, ...] (optional)}
    {"role": "assistant", "content": str, "reasoning": str (optional),
     "tool_calls": [{"name": str, "arguments": dict}, ...] (optional)}
    {"role": "tool", "name": str, "call_index": int, "content": str, "media": [...] (optional)}

Media items (HxWx3 uint8 images or TxHxWx3 video chunks, as arrays or tensors) render before
the text as `<|media_begin|>image<|media_content|>` + one `<|media_pad|>` per vision token +
`<|media_end|>`, exactly as the pre-training loader lays them out; `media_of(messages)` lists
them in placeholder order for the model's `vision_items`.

An assistant turn renders as

    <|im_assistant|>assistant<|im_middle|>[<think>REASONING</think>]CONTENT
    [<|tool_calls_section_begin|>
       <|tool_call_begin|>functions.NAME:IDX<|tool_call_argument_begin|>{json}<|tool_call_end|> ...
     <|tool_calls_section_end|>]<|im_end|>

(the call body is the form vLLM's kimi_k2 tool parser reads; IDX counts calls across the whole
conversation, as K2 does) and a tool result as `<|im_system|>tool<|im_middle|>## Return of
functions.NAME:IDX\\nCONTENT<|im_end|>`, our reading of K2's released template.

Rendering is by id: special tokens are placed by id and every piece of text goes through
`Vocab.encode`, which keeps quoted special-token strings ordinary text. So no text a user, a
document or a tool prints can open a turn or fake a tool call.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field

from model.tokens import Vocab

ROLES = ("system", "user", "assistant", "tool")
_CALL_NAME = re.compile(r"^functions\.([A-Za-z_][A-Za-z0-9_\-]*):(\d+)$")


@dataclass(frozen=True)
class RenderedTurn:
    """One message's ids: `header` (the role opener, never trained on) then `body` (content,
    calls and the closing <|im_end|>; trained on for assistant turns)."""
    role: str
    header: list[int]
    body: list[int]


# The same format as a Jinja chat template (text messages in the shape above), for exported
# transformers folders (model/transformers_io.py) and servers that render prompts themselves;
# tests/integration/test_transformers_io.py checks that it tokenizes exactly as `render` does.
CHAT_TEMPLATE_JINJA = (
    "{%- set ns = namespace(calls=0) -%}"
    "{%- for m in messages -%}"
    "{%- if m.role == 'system' -%}<|im_system|>system<|im_middle|>{{ m.content or '' }}<|im_end|>"
    "{%- elif m.role == 'user' -%}<|im_user|>user<|im_middle|>{{ m.content or '' }}<|im_end|>"
    "{%- elif m.role == 'assistant' -%}<|im_assistant|>assistant<|im_middle|>"
    "{%- if m.reasoning is defined and m.reasoning is not none -%}<think>{{ m.reasoning }}</think>{%- endif -%}"
    "{{ m.content or '' }}"
    "{%- if m.tool_calls -%}<|tool_calls_section_begin|>"
    "{%- for c in m.tool_calls -%}<|tool_call_begin|>functions.{{ c.name }}:{{ ns.calls }}<|tool_call_argument_begin|>"
    "{{ (c.arguments or {}) | tojson(ensure_ascii=False) }}<|tool_call_end|>{%- set ns.calls = ns.calls + 1 -%}"
    "{%- endfor -%}<|tool_calls_section_end|>{%- endif -%}<|im_end|>"
    "{%- elif m.role == 'tool' -%}<|im_system|>tool<|im_middle|>## Return of functions.{{ m.name }}:{{ m.call_index }}\n"
    "{{ m.content or '' }}<|im_end|>"
    "{%- endif -%}{%- endfor -%}"
    "{%- if add_generation_prompt -%}<|im_assistant|>assistant<|im_middle|>{%- endif -%}"
)


def media_ids(item, vocab: Vocab) -> list[int]:
    """The placeholder run of one image ([H, W, 3]) or video chunk ([T, H, W, 3])."""
    from model.vision import vision_token_count

    shape = tuple(item.shape)
    kind = "video" if len(shape) == 4 else "image"
    return ([vocab.media_begin] + vocab.encode(kind) + [vocab.media_content]
            + [vocab.media_pad] * vision_token_count(shape[-3], shape[-2]) + [vocab.media_end])


def media_of(messages: list[dict]) -> list:
    return [item for m in messages for item in (m.get("media") or ())]


def call_id(name: str, index: int) -> str:
    return f"functions.{name}:{index}"


def render_turns(messages: list[dict], vocab: Vocab) -> list[RenderedTurn]:
    """Ids per message; raises ValueError naming the message for a malformed one (this is for
    data we write, not model output)."""
    turns = []
    n_calls = 0
    for i, message in enumerate(messages):
        role = message.get("role")
        if role not in ROLES:
            raise ValueError(f"message {i}: unknown role {role!r}; expected one of {ROLES}")
        if not isinstance(message.get("content", ""), str):
            raise ValueError(f"message {i}: content must be a string")
        if role == "assistant":
            body = assistant_body(message, vocab, first_index=n_calls)
            n_calls += len(message.get("tool_calls") or ())
        elif role == "tool":
            if "name" not in message or "call_index" not in message:
                raise ValueError(f"message {i}: a tool message needs the 'name' and 'call_index' of its call")
            body = tool_body(message, vocab)
        else:
            body = vocab.encode(message.get("content", "")) + [vocab.im_end]
        if message.get("media"):
            if role == "assistant":
                raise ValueError(f"message {i}: an assistant turn cannot carry media")
            body = [t for item in message["media"] for t in media_ids(item, vocab)] + body
        turns.append(RenderedTurn(role, vocab.role_header(role), body))
    return turns


def render(messages: list[dict], vocab: Vocab, add_generation_prompt: bool = False) -> list[int]:
    """All ids of a conversation; with add_generation_prompt it ends with an open assistant turn."""
    ids = [t for turn in render_turns(messages, vocab) for t in turn.header + turn.body]
    return ids + (vocab.role_header("assistant") if add_generation_prompt else [])


def assistant_body(message: dict, vocab: Vocab, first_index: int = 0) -> list[int]:
    ids: list[int] = []
    if message.get("reasoning") is not None:
        ids += [vocab.think] + vocab.encode(message["reasoning"]) + [vocab.end_think]
    ids += vocab.encode(message.get("content", ""))
    calls = message.get("tool_calls") or []
    if calls:
        ids.append(vocab.tool_calls_begin)
        for k, call in enumerate(calls):
            ids += tool_call_ids(call["name"], first_index + k, call.get("arguments", {}), vocab)
        ids.append(vocab.tool_calls_end)
    return ids + [vocab.im_end]


def tool_call_ids(name: str, index: int, arguments: dict, vocab: Vocab) -> list[int]:
    if not _CALL_NAME.match(call_id(name, index)):
        raise ValueError(f"tool name {name!r} is not an identifier")
    return ([vocab.tool_call_begin] + vocab.encode(call_id(name, index)) + [vocab.tool_call_argument_begin]
            + vocab.encode(json.dumps(arguments, ensure_ascii=False)) + [vocab.tool_call_end])


def tool_body(message: dict, vocab: Vocab) -> list[int]:
    head = f"## Return of {call_id(message['name'], message['call_index'])}\n"
    return vocab.encode(head + message.get("content", "")) + [vocab.im_end]


# ---- parsing model output

@dataclass
class ToolCall:
    """A call as the model wrote it. `error` is set (and `arguments` may be None) when it is
    malformed; the agent loop answers such a call with the error as its observation."""
    name: str
    index: int
    arguments: dict | None
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


@dataclass
class ParsedTurn:
    content: str
    reasoning: str | None = None
    calls: list[ToolCall] = field(default_factory=list)
    finished: bool = True  # the turn ended with <|im_end|> or a closed call section
    errors: list[str] = field(default_factory=list)  # problems outside any one call

    def as_message(self) -> dict:
        msg: dict = {"role": "assistant", "content": self.content}
        if self.reasoning is not None:
            msg["reasoning"] = self.reasoning
        if self.calls:
            msg["tool_calls"] = [{"name": c.name, "arguments": c.arguments} for c in self.calls]
        return msg


def parse_assistant(ids: list[int], vocab: Vocab) -> ParsedTurn:
    """Read one assistant turn's generated ids (after its header). Never raises: anything
    malformed becomes a ToolCall with an error or an entry in `errors`."""
    ids = list(ids)
    finished = bool(ids) and ids[-1] in (vocab.im_end, vocab.tool_calls_end)
    if ids and ids[-1] == vocab.im_end:
        ids = ids[:-1]
    reasoning = None
    errors: list[str] = []
    if ids and ids[0] == vocab.think:
        if vocab.end_think in ids:
            end = ids.index(vocab.end_think)
            reasoning, ids = vocab.decode(ids[1:end]), ids[end + 1:]
        else:
            reasoning, ids = vocab.decode(ids[1:]), []
            errors.append("unclosed <think>")
    if vocab.tool_calls_begin not in ids:
        stray = _stray_call_tokens(ids, vocab)
        if stray:
            errors.append(f"tool-call tokens outside a call section: {stray}")
        return ParsedTurn(vocab.decode(_strip_specials(ids, vocab)), reasoning, [], finished, errors)
    start = ids.index(vocab.tool_calls_begin)
    content = vocab.decode(_strip_specials(ids[:start], vocab))
    section = ids[start + 1:]
    if vocab.tool_calls_end in section:
        end = section.index(vocab.tool_calls_end)
        if any(t not in (vocab.im_end,) for t in section[end + 1:]):
            errors.append("text after the tool-call section")
        section = section[:end]
    else:
        errors.append("unclosed tool-call section")
        finished = False
    return ParsedTurn(content, reasoning, _parse_calls(section, vocab), finished, errors)


def _parse_calls(section: list[int], vocab: Vocab) -> list[ToolCall]:
    """Calls are the pieces after each <|tool_call_begin|>; anything before the first one is
    reported as a malformed call, so it is answered rather than silently dropped."""
    starts = [i for i, t in enumerate(section) if t == vocab.tool_call_begin]
    calls = []
    lead = section[: starts[0]] if starts else section
    if lead:
        calls.append(ToolCall(vocab.decode(_strip_specials(lead, vocab)).strip(), -1, None,
                              "malformed tool call: text before <|tool_call_begin|>"))
    for k, s in enumerate(starts):
        end = starts[k + 1] if k + 1 < len(starts) else len(section)
        calls.append(_parse_call(section[s + 1:end], vocab))
    return calls


def _parse_call(piece: list[int], vocab: Vocab) -> ToolCall:
    closed = bool(piece) and piece[-1] == vocab.tool_call_end
    body = piece[:-1] if closed else piece
    if vocab.tool_call_argument_begin not in body:
        return ToolCall(vocab.decode(_strip_specials(body, vocab)).strip(), -1, None,
                        "malformed tool call: no <|tool_call_argument_begin|>")
    split = body.index(vocab.tool_call_argument_begin)
    head, args_ids = vocab.decode(body[:split]).strip(), body[split + 1:]
    m = _CALL_NAME.match(head)
    name, index = (m.group(1), int(m.group(2))) if m else (head, -1)
    if not closed:
        return ToolCall(name, index, None, "malformed tool call: no <|tool_call_end|>")
    if not m:
        return ToolCall(name, index, None, f"malformed tool call name {head!r}: expected functions.NAME:IDX")
    if any(t in vocab.special_ids for t in args_ids):
        return ToolCall(name, index, None, "malformed tool call: special tokens inside the arguments")
    text = vocab.decode(args_ids)
    try:
        arguments = json.loads(text)
    except json.JSONDecodeError as e:
        return ToolCall(name, index, None, f"tool call arguments are not valid JSON ({e.msg} at char {e.pos}): {text[:200]!r}")
    if not isinstance(arguments, dict):
        return ToolCall(name, index, None, f"tool call arguments must be a JSON object, got {type(arguments).__name__}")
    return ToolCall(name, index, arguments)


def _stray_call_tokens(ids: list[int], vocab: Vocab) -> int:
    calls = {vocab.tool_call_begin, vocab.tool_call_argument_begin, vocab.tool_call_end, vocab.tool_calls_end}
    return sum(t in calls for t in ids)


def _strip_specials(ids: list[int], vocab: Vocab) -> list[int]:
    return [t for t in ids if t not in vocab.special_ids]
