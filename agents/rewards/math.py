"""Answer-checking rewards: math by Math-Verify, multiple-choice letters, exact strings.

Math goes to Math-Verify (HuggingFace's maintained grader) rather than a parser of our own: it
reads `**Final Answer:** $9$`, `The answer is **18**.`, `\\boxed{\\frac12}` and sets, and it
compares symbolically. Its parse and verify take a SIGALRM timeout, which only the main thread
may arm; elsewhere (a Dagster worker thread) `math_score` grades in a helper process.
"""

from __future__ import annotations

import functools
import multiprocessing
import re
import threading
from concurrent.futures import ProcessPoolExecutor

from math_verify import parse, verify

from agents.rewards.base import MAX_RESPONSE_CHARS, ZERO, Score, final_answer, last_boxed, strip_reasoning

PARSE_TIMEOUT_S = 5


def _timeout() -> int | None:
    return PARSE_TIMEOUT_S if threading.current_thread() is threading.main_thread() else None


def _gold(reference: str) -> list:
    ref = str(reference).strip()
    if not ref:
        raise ValueError("a math reference must not be empty")
    delimited = re.search(r"(?<!\\)\$", ref) or "\\boxed" in ref  # `\$36` is a dollar sign, not math mode
    return parse(ref if delimited else f"${ref}$", parsing_timeout=_timeout())


def math_answer(response: str) -> list:
    """Math-Verify's reading of the response's visible answer ([] when there is none)."""
    text = strip_reasoning(response)[-MAX_RESPONSE_CHARS:]
    if "####" in text and "\\boxed" not in text:
        # GSM8K's answer line is the answer, whatever numbers the worked solution shows before it
        # (Math-Verify alone reads "33.333...%, which rounds down to 33%\n#### 33" as 33.333)
        text = "$" + text.rsplit("####", 1)[1].strip().split("\n", 1)[0] + "$"
    if not text.strip("$ \n"):
        return []
    return parse(text, parsing_timeout=_timeout())


def math_score(response: str, reference: str) -> Score:
    """Math-Verify's verdict on the response's answer against `reference`, always under Math-Verify's
    own timeouts: off the main thread (a Dagster worker, a scoring thread pool), where SIGALRM
    cannot be armed, the grading runs in a helper process's main thread instead; a short answer
    such as `9^{9^{9^{9}}}` would otherwise hang the caller."""
    if threading.current_thread() is threading.main_thread():
        return _math_score(response, reference)
    return _grader_process().submit(_math_score, response, reference).result()


@functools.cache
def _grader_process() -> ProcessPoolExecutor:
    return ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn"))


def _math_score(response: str, reference: str) -> Score:
    pred = math_answer(response)
    if not pred:
        return ZERO
    ok = verify(_gold(reference), pred, timeout_seconds=_timeout())
    return Score(1.0 if ok else 0.0, bool(ok), str(pred[-1]))


_LETTER_PATTERNS = (
    re.compile(r"answer\s*(?:is|:)?\s*:?\s*\(?\**([A-J])\b", re.IGNORECASE),
    re.compile(r"^\(?([A-J])[).:]?\s*$"),
)


def choice_letter(response: str, letters: str = "ABCD") -> str | None:
    """The chosen option: `\\boxed{B}`, `the answer is (B)`, or a final line that is just `B`."""
    text = strip_reasoning(response)[-MAX_RESPONSE_CHARS:].strip()
    if not text:
        return None
    boxed = last_boxed(text)
    candidates = [boxed] if boxed is not None else []
    candidates += [m.group(1) for m in _LETTER_PATTERNS[0].finditer(text)][-1:]
    candidates += [m.group(1) for m in [_LETTER_PATTERNS[1].match(text.splitlines()[-1].strip())] if m]
    for c in candidates:
        c = c.strip().strip("()*.").upper()
        if len(c) == 1 and c in letters:
            return c
    return None


def choice_score(response: str, reference: str) -> Score:
    """Multiple choice: `reference` is the correct letter."""
    got = choice_letter(response, "ABCDEFGHIJ")
    if got is None:
        return ZERO
    ok = got == str(reference).strip().upper()
    return Score(float(ok), ok, got)


def _norm(s: str) -> str:
    return " ".join(re.sub(r"[^\w\s]", " ", s.lower()).split())


def exact_score(response: str, reference: str) -> Score:
    """The final answer equals the reference after lower-casing and dropping punctuation."""
    got = final_answer(response)
    if got is None or not _norm(got):
        return ZERO
    ok = _norm(got) == _norm(str(reference))
    return Score(float(ok), ok, got)
