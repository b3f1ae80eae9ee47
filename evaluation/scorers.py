r"""Multiple-choice answer extraction (chat-mode MMLU).

Math answers are graded by Math-Verify (`agents.rewards.math.math_score`), the maintained
grader the RL rewards use; the hand-written LaTeX parser that lived here is gone (Math-Verify agrees
with the intended verdict on far more real answer formats: `**Final Answer:** $9$`, `52_{8}`,
`\{1,-2\}` against `1,-2`, hedged `0 \text{ or } 1`).

Multiple choice (`extract_choice`)
----------------------------------
Convention: the LAST explicit statement wins (reasoning often mentions other options first):
a boxed letter, then the last "Answer: C" / "the answer is (C)" / "the correct option is C",
or a stated choice ("A is correct", "I choose b."), then an output that is only a letter ("C", "(C)", "C."), then a leading "C." / "C)" before an
explanation, then the last "(C)", then the option whose text the output states (given the
options), then the last stand-alone capital letter. Letters inside words never count, a
capital "A" followed by a lower-case word is read as the article, lower-case letters count only
in explicit statements, and a letter outside the first `n_choices` is ignored.
"""

from __future__ import annotations

import re

from agents.rewards.base import last_boxed

__all__ = ["extract_choice"]


# ----------------------------------------------------------------------------------------------
# multiple choice


def extract_choice(text: str | None, n_choices: int = 4, choices: list[str] | None = None) -> str | None:
    """The chosen option letter ("A".."J") in a model output, or None (see the module docstring).
    `choices`: the options' texts, so that an answer given as the option text is read too."""
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
    # "A is correct", "B is the right answer", "I choose b.", "I'd go with (C)"
    stated = re.compile(rf"(?<![\w'’-])\(?([{letters}{letters.lower()}])\)?\s+is\s+(?:the\s+)?(?i:correct|right)\b"
                        rf"|(?i:\b(?:choose|pick|select|go\s+with))\s+(?:option\s+)?\(?([{letters}{letters.lower()}])\)?(?![\w'’-])")
    found = [(m.start(), _explicit_letter(m, letters)) for m in explicit.finditer(text)]
    found += [(m.start(), (m.group(1) or m.group(2)).upper()) for m in stated.finditer(text)]
    found = sorted((pos, letter) for pos, letter in found if letter)
    if found:
        return found[-1][1]
    bare = re.fullmatch(rf"[\s*]*\(?([{letters}])\)?[.:]?[\s*]*", text)
    if bare:
        return bare.group(1)
    lead = re.match(rf"\s*\(?([{letters}])[.):]\s", text)
    if lead:
        return lead.group(1)
    paren = re.findall(rf"\(([{letters}])\)", text)
    if paren:
        return paren[-1]
    named = _option_named(text, choices, letters) if choices else None
    if named:
        return named
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


def _words(s: str) -> str:
    return " ".join(re.sub(r"[^\w\s]", " ", s.lower()).split())


def _option_named(text: str, choices: list[str], letters: str) -> str | None:
    """The option whose text the output states (whole words, case and punctuation ignored); the
    latest mention wins, and an option whose text lies inside another stated option's does not count."""
    said = f" {_words(text)} "
    options = {letter: _words(str(option)) for letter, option in zip(letters, choices)}
    stated = {letter: o for letter, o in options.items() if o and f" {o} " in said}
    stated = {letter: o for letter, o in stated.items()
              if not any(o != other and f" {o} " in f" {other} " for other in stated.values())}
    return max(stated, key=lambda k: said.rfind(f" {stated[k]} ") + len(stated[k])) if stated else None
