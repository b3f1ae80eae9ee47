"""The math grader (Math-Verify behind `agents.rewards.math.math_score`, used by evaluation and
the RL rewards) against intended verdicts: a regression table of the formats a hand-written
parser once got wrong, and a battery built from the real MATH-500 / AIME / AMC / GSM8K gold
answers, each written in several answer formats (must match) and as near-misses (must not)."""

import re

import pytest
from helpers import DATA_ROOT

from agents.rewards.math import math_score
from evaluation.suites import load_suite

# (response, reference, intended verdict)
REGRESSIONS = [
    # markdown-bold final answers (a former parser missed all 1,061 such pairs of a real battery)
    ("**Final Answer:** $9$", "9", True),
    ("The answer is **18**.", "18", True),
    ("**Final Answer:** $9$", "8", False),
    # base subscripts with and without braces
    (r"$\boxed{52_{8}}$", "52_8", True),
    (r"$\boxed{52_{8}}$", "42", False),
    # sets against bare lists, in any order
    (r"$\boxed{\{1,-2\}}$", "1,-2", True),
    (r"$\boxed{\{-2,1\}}$", "1,-2", True),
    (r"$\boxed{\{1,2\}}$", "1,-2", False),
    # a hedged answer is not the answer
    (r"$\boxed{0 \text{ or } 1}$", "0", False),
    # the last boxed answer counts; reasoning blocks are not the answer
    (r"First $\boxed{3}$, then corrected: $\boxed{\frac{1}{\sqrt{2}}}$.", r"\frac{\sqrt{2}}{2}", True),
    (r"<think>the answer is $\boxed{5}$</think>So the answer is $\boxed{6}$.", "6", True),
    (r"<think>the answer is $\boxed{5}$</think>So the answer is $\boxed{6}$.", "5", False),
    # GSM8K's answer line wins over numbers of the worked solution
    ("33.333...%, which rounds down to 33%\n#### 33", "33", True),
    # equivalent forms
    (r"$\boxed{\dfrac{3}{4}}$", "0.75", True), (r"$\boxed{2\sqrt{2}}$", r"\sqrt{8}", True),
    (r"$\boxed{x^2-1}$", "(x-1)(x+1)", True), (r"$\boxed{(3,4]}$", r"\left(3, 4\right]", True),
    (r"$\boxed{10,\!080}$", "10080", True), (r"$\boxed{90^\circ}$", "90", True),
    (r"$\boxed{\text{(C)}}$", "C", True),
    # wrong but close
    (r"$\boxed{3.14}$", r"\pi", False), (r"$\boxed{1450001}$", "1450000", False),
    (r"$\boxed{(3,4]}$", "(3,4)", False), (r"$\boxed{(1,2)}$", "(2,1)", False),
    (r"$\boxed{x^2-1}$", "(x-1)(x+2)", False), (r"$\boxed{-5}$", "5", False),
    # a gold answer written with an escaped dollar sign (MATH-500 algebra/2626, prealgebra/1203)
    (r"$\boxed{\$36}$", r"\$36", True), (r"$\boxed{36}$", r"\$36", True), (r"$\boxed{37}$", r"\$36", False),
    # no answer at all
    ("", "5", False), ("I am not sure.", "5", False),
]

# Where Math-Verify's convention differs from what an earlier hand-written parser assumed, kept
# so that a change of Math-Verify's behaviour is noticed: (response, reference, Math-Verify's verdict).
MATH_VERIFY_CONVENTIONS = [
    (r"$\boxed{50\%}$", "0.5", True),  # a percent is its value
    (r"$\boxed{1e-3}$", "0.001", False),  # e-notation is not read as a number
    (r"$\boxed{5 \text{ dollars}}$", "5", True),  # \text units in a box are dropped
    (r"$\boxed{e^{i\pi}}$", "-1", False),  # no complex simplification
]


@pytest.mark.parametrize("response,reference,intended", REGRESSIONS + MATH_VERIFY_CONVENTIONS)
def test_math_grader_regressions(response, reference, intended):
    assert math_score(response, reference).correct is intended


FORMATS = (
    r"So the final answer is $\boxed{{{g}}}$.",
    r"The answer is ${g}$.",
    r"**Final Answer:** ${g}$",
    r"Therefore, the answer is $\boxed{{{g}}}$. I hope it is correct.",
)
NUMBER_FORMATS = ("The answer is **{g}**.", "#### {g}", "So there are {g} in total.\n#### {g}")


def _near_miss(gold: str) -> str | None:
    """The gold answer with its first digit changed (always a different value), None if it has none."""
    m = re.search(r"\d", gold)
    if m is None:
        return None
    return gold[: m.start()] + str((int(m.group()) + 1) % 10) + gold[m.end():]


def battery(per_suite: int = 120) -> list[tuple[str, str, bool]]:
    """(response, reference, intended verdict) pairs from the shipped benchmark answers."""
    pairs = []
    for suite in ("math500", "aime24", "aime25", "amc23", "gsm8k"):
        for ex in load_suite(suite, DATA_ROOT, limit=per_suite):
            gold = ex.reference
            numeric = re.fullmatch(r"-?\d+(\.\d+)?", gold) is not None
            for fmt in FORMATS + (NUMBER_FORMATS if numeric else ()):
                pairs.append((fmt.format(g=gold), gold, True))
            miss = _near_miss(gold)
            if miss is not None and miss != gold:
                pairs.append((FORMATS[0].format(g=miss), gold, False))
                pairs.append(((NUMBER_FORMATS[1] if numeric else FORMATS[2]).format(g=miss), gold, False))
    return pairs


def test_math_grader_agrees_with_the_intended_verdict_on_real_gold_answers():
    pairs = battery()
    assert len(pairs) >= 400
    disagree = [(resp[-80:], ref, want) for resp, ref, want in pairs if math_score(resp, ref).correct is not want]
    agreement = 1 - len(disagree) / len(pairs)
    assert agreement >= 0.99, (f"agreement {agreement:.4f} on {len(pairs)} pairs; disagreements:", disagree[:40])

