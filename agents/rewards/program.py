"""Program-of-thought reward: the response's last ```python block is run in the sandbox and
what it prints (or displays last) is checked against the reference with the math grader.

The program runs in a fresh kernel session (agents/kernel.py: its own namespaces, uid, memory
cap and per-cell time limit), never in this process. A response without a program, a program
that raises or times out, or one whose output is not the answer scores 0.
"""

from __future__ import annotations

import re

from agents.kernel import Kernel
from agents.rewards.base import ZERO, Score
from agents.rewards.math import math_score

_BLOCK = re.compile(r"```(?:python|py)\s*\n(.*?)```", re.DOTALL)
MAX_PROGRAM_CHARS = 8000


def extract_program(response: str) -> str | None:
    blocks = _BLOCK.findall(response or "")
    if not blocks or not blocks[-1].strip() or len(blocks[-1]) > MAX_PROGRAM_CHARS:
        return None
    return blocks[-1]


def program_score(response: str, reference: str, kernel: Kernel) -> Score:
    code = extract_program(response)
    if code is None:
        return ZERO
    with kernel.open_session() as session:
        result = session.run(code)
    if not result.ok or not result.output.strip():
        return Score(0.0, False, None)
    last = result.output.strip().splitlines()[-1]
    verdict = math_score(last, reference)
    return Score(verdict.value, verdict.correct, last)
