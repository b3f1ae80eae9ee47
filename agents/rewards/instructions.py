"""Instruction-following checkers (IFEval-style verifiable constraints).

A constraint is a dict with a `kind` and its parameters; a prompt carries a list of them and
the reward is 1 only when every one is satisfied (IFEval's strict reading): partial credit would
pay a one-word reply for every "exclude" or "max_words" it trivially meets. The checkers read the visible answer
(reasoning blocks removed); an empty answer satisfies nothing, not even "exclude a word".

    [{"kind": "max_words", "n": 30}, {"kind": "include", "words": ["light"]},
     {"kind": "exclude", "words": ["very"]}, {"kind": "json"}, {"kind": "ends_with", "phrase": "Amen."},
     {"kind": "lowercase"}, {"kind": "uppercase"}, {"kind": "min_words", "n": 5}]

`describe` renders a constraint as the sentence a prompt states, so prompts and checkers cannot
drift apart.
"""

from __future__ import annotations

import json
import re

from agents.rewards.base import MAX_RESPONSE_CHARS, ZERO, Score, strip_reasoning

_WORD = re.compile(r"[A-Za-z0-9']+")
_FENCE = re.compile(r"^```(?:json)?\s*(.*?)\s*```$", re.DOTALL)


def words(text: str) -> list[str]:
    return _WORD.findall(text)


def _is_json(text: str) -> bool:
    body = text.strip()
    m = _FENCE.match(body)
    if m:
        body = m.group(1)
    try:
        value = json.loads(body)
    except (ValueError, RecursionError):
        return False
    return isinstance(value, (dict, list))


def _has_word(text: str, word: str) -> bool:
    return re.search(rf"(?<![A-Za-z0-9']){re.escape(word)}(?![A-Za-z0-9'])", text, re.IGNORECASE) is not None


CHECKS = {
    "max_words": lambda t, c: len(words(t)) <= c["n"],
    "min_words": lambda t, c: len(words(t)) >= c["n"],
    "include": lambda t, c: all(_has_word(t, w) for w in c["words"]),
    "exclude": lambda t, c: not any(_has_word(t, w) for w in c["words"]),
    "json": lambda t, c: _is_json(t),
    "ends_with": lambda t, c: t.rstrip().endswith(c["phrase"]),
    "lowercase": lambda t, c: any(ch.isalpha() for ch in t) and t == t.lower(),
    "uppercase": lambda t, c: any(ch.isalpha() for ch in t) and t == t.upper(),
}


def describe(c: dict) -> str:
    kind = c["kind"]
    if kind == "max_words":
        return f"Answer in at most {c['n']} words."
    if kind == "min_words":
        return f"Answer in at least {c['n']} words."
    if kind == "include":
        return "Use the word" + ("s " if len(c["words"]) > 1 else " ") + ", ".join(f'"{w}"' for w in c["words"]) + "."
    if kind == "exclude":
        return "Do not use the word" + ("s " if len(c["words"]) > 1 else " ") + ", ".join(f'"{w}"' for w in c["words"]) + "."
    if kind == "json":
        return "Answer with valid JSON only."
    if kind == "ends_with":
        return f'End your answer with the exact phrase "{c["phrase"]}".'
    if kind == "lowercase":
        return "Write your whole answer in lowercase letters."
    if kind == "uppercase":
        return "Write your whole answer in capital letters."
    raise ValueError(f"unknown constraint kind {kind!r}; known: {sorted(CHECKS)}")


def check(text: str, constraint: dict) -> bool:
    kind = constraint.get("kind")
    if kind not in CHECKS:
        raise ValueError(f"unknown constraint kind {kind!r}; known: {sorted(CHECKS)}")
    return bool(CHECKS[kind](text, constraint))


def instruction_score(response: str, reference: list[dict]) -> Score:
    """`reference`: the prompt's constraints. Value 1 when all are met, else 0; `extracted`: which."""
    if not reference:
        raise ValueError("an instruction-following prompt needs at least one constraint")
    text = strip_reasoning(response)[-MAX_RESPONSE_CHARS:].strip()
    if not text:
        return ZERO
    met = [check(text, c) for c in reference]
    return Score(float(all(met)), all(met), met)
