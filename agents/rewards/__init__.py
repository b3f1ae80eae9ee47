"""Rewards in one place: RL, rejection sampling and evaluation score a response with the same
code, so they extract the same answer from the same string.

    from agents.rewards import score
    s = score("math", response_text, "42")          # Score(value=1.0, correct=True, extracted="42")
    s = score("grounding", text, [[0, 0, 10, 10]])  # F1 with IoU soft matches

Every reward returns a `Score`: `value` in [0, 1] (the RL reward), `correct` (the verdict a
rejection sampler or an accuracy metric uses) and `extracted` (what was read from the response,
None when nothing could be). An empty or unparsable answer scores 0, never partial credit.
Kinds: math, choice, count, ocr, grounding, points, polygon, instructions, exact (see REWARDS).
Program-of-thought (agents/rewards/program.py) needs a sandbox runner, so it is not in the table.
"""

from __future__ import annotations

from agents.rewards.base import Score, final_answer, strip_reasoning
from agents.rewards.instructions import instruction_score
from agents.rewards.math import choice_score, exact_score, math_score
from agents.rewards.visual import count_score, grounding_score, ocr_score, points_score, polygon_score

REWARDS = {
    "math": math_score,
    "choice": choice_score,
    "exact": exact_score,
    "count": count_score,
    "ocr": ocr_score,
    "grounding": grounding_score,
    "points": points_score,
    "polygon": polygon_score,
    "instructions": instruction_score,
}


def score(kind: str, response: str, reference) -> Score:
    """The reward of `response` against `reference` under the verifier `kind`."""
    try:
        fn = REWARDS[kind]
    except KeyError:
        raise ValueError(f"unknown reward kind {kind!r}; known: {sorted(REWARDS)}") from None
    return fn(response or "", reference)


__all__ = ["REWARDS", "Score", "final_answer", "score", "strip_reasoning"]
