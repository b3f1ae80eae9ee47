r"""Multiple-choice answer extraction (chat-mode MMLU).

Math answers are graded by Math-Verify (`agents.rewards.math.math_score`), the maintained
grader the RL rewards use; the hand-written LaTeX parser that lived here is gone (Math-Verify agrees
with the intended verdict on far more real answer formats: `**Final Answer:** $9$`, `52_{8}`,
`\{1,-2\}` against `1,-2`, hedged `0 \text{ or } 1`).

Multiple choice (`extract_choice`)
----------------------------------
Convention: the LAST explicit statement wins (reasoning often mentions other options first):
a boxed letter, then the last "Answer: C" / "the answer is (C)" / "the correct option is C",
then an output that is only a letter ("C", "(C)", "C."), then a leading "C." / "C)" before an
explanation, then the last "(C)", then the last stand-alone capital letter. Letters inside words never count, a
capital "A" followed by a lower-case word is read as the article, lower-case letters count only
in explicit statements, and a letter outside the first `n_choices` is ignored.
"""

from __future__ import annotations

import re

from agents.rewards.base import last_boxed

__all__ = ["extract_choice"]


# ----------------------------------------------------------------------------------------------
# multiple choice


def extract_choice(text: str | None, n_choices: int = 4) -> str | None:
    """The chosen option letter ("A".."J") in a model output, or None (see the module docstring)."""
    if not text or not 1 <= n_choices <= 10:
        return None
    letters = "ABCDEFGHIJ"[:n_choices]
    boxed = last_boxed(text)
    if boxed is not None:
        m = re.fullmatch(rf"\s*(?:\\text\{{)?\(?([{letters}])\)?\}}?\s*", boxed)
        if m:
            return m.group(1)
    # keyword case-insensitive, letters case-sensitive: "the answer is a prime" names no option
    explicit = re.compile(rf"(?i:\b(?:final\s+answer|answer|correct\s+(?:option|choice)))(?:\s+(?:is|would\s+be|should\s+be))?"
                          rf"\s*\**\s*[:：]?\s*\**\s*(?:\\boxed\{{|\\text\{{)?"
                          rf"(\(([{letters}{letters.lower()}])\)|([{letters}])(?![\w'’-])|"
                          rf"([{letters.lower()}])(?=\s*[.,;:!?)*]|\s*$))")
    found = [m for m in explicit.finditer(text) if _explicit_letter(m, letters)]
    if found:
        return _explicit_letter(found[-1], letters)
    bare = re.fullmatch(rf"[\s*]*\(?([{letters}])\)?[.:]?[\s*]*", text)
    if bare:
        return bare.group(1)
    lead = re.match(rf"\s*\(?([{letters}])[.):]\s", text)
    if lead:
        return lead.group(1)
    paren = re.findall(rf"\(([{letters}])\)", text)
    if paren:
        return paren[-1]
    for m in reversed(list(re.finditer(rf"(?<![\w'’-])([{letters}])(?![\w'’-])", text))):
        if m.group(1) == "A" and re.match(r"\s+[a-z]", text[m.end():]):
            continue  # "A train leaves ...": the article
        return m.group(1)
    return None


def _explicit_letter(m: re.Match, letters: str) -> str | None:
    """The letter of an explicit-answer match; a bare lower-case letter must end the clause."""
    letter = m.group(2) or m.group(3) or m.group(4)
    if letter is None:
        return None
    letter = letter.upper()
    return letter if letter in letters else None
