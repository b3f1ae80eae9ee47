"""What every reward shares: the Score record and reading the final answer of a response."""

from __future__ import annotations

import re
from dataclasses import dataclass

# Parsing work per response is bounded: a policy can emit anything up to its token limit, and a
# reward must cost the same on adversarial text as on a normal answer.
MAX_RESPONSE_CHARS = 20_000

_THINK = re.compile(r"<think>.*?</think>", re.DOTALL)


@dataclass(frozen=True)
class Score:
    value: float  # the reward, in [0, 1]
    correct: bool  # the verdict (rejection sampling, accuracy)
    extracted: object = None  # what was read from the response; None: nothing usable

    def __post_init__(self):
        if not 0.0 <= self.value <= 1.0:
            raise ValueError(f"a reward must lie in [0, 1], got {self.value}")


ZERO = Score(0.0, False, None)


def strip_reasoning(text: str) -> str:
    """The visible answer: `<think>...</think>` blocks removed (an unclosed one drops the rest)."""
    text = _THINK.sub("", text or "")
    head, sep, _ = text.partition("<think>")
    return head if sep else text


def last_boxed(text: str) -> str | None:
    """The content of the last `\\boxed{...}`, braces balanced (None when there is none or it is
    unclosed)."""
    start = text.rfind("\\boxed{")
    if start < 0:
        return None
    depth, i = 0, start + len("\\boxed")
    for j in range(i, len(text)):
        if text[j] == "{":
            depth += 1
        elif text[j] == "}":
            depth -= 1
            if depth == 0:
                return text[i + 1: j].strip()
    return None


def final_answer(response: str) -> str | None:
    """The response's final answer: the last `\\boxed{}` of the visible text, else its last
    non-empty line (None for an empty response)."""
    text = strip_reasoning(response)[-MAX_RESPONSE_CHARS:].strip()
    if not text:
        return None
    boxed = last_boxed(text)
    if boxed is not None:
        return boxed or None
    return text.splitlines()[-1].strip() or None


_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")


def numbers(text: str) -> list[float]:
    """Every number in `text`, in order (thousands separators are not numbers here)."""
    return [float(x) for x in _NUMBER.findall(text)]
