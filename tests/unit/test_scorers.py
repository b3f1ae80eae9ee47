"""Multiple-choice letter extraction for chat-mode MMLU (evaluation/scorers.py), on hand-checked
cases. Math grading is Math-Verify's: tests/unit/test_math_grading.py."""

import pytest

from evaluation.scorers import extract_choice

# ----------------------------------------------------------------------------------------------
# multiple choice

CHOICES = [
    ("Answer: C", "C"),
    ("(B)", "B"),
    ("the answer is D", "D"),
    ("C", "C"),
    ("B.", "B"),
    ("**Answer:** B", "B"),
    ("**Answer**: b", "B"),
    (r"so the result is \boxed{C}", "C"),
    (r"\boxed{\text{(D)}}", "D"),
    # the last explicit statement wins over options discussed earlier
    ("Option A looks tempting and B is plausible, but the answer is (C).", "C"),
    ("The answer is (B) because A is wrong", "B"),
    ("Answer: A\n\nOn reflection, the answer is D.", "D"),
    ("The correct option is B, not A", "B"),
    # lower-case letters only in explicit statements; the article "A" is not an option
    ("A train leaves at noon. The answer is c.", "C"),
    ("the answer is a prime number, so B", "B"),
    ("A. Paris is the capital of France.", "A"),
    ("Both A and B are wrong; so D", "D"),
    ("I think it's B because the others fail", "B"),
    # letters inside words and out-of-range letters never count
    ("Vitamin B-12 deficiency and DNA damage", None),
    ("Answer: E", None),
    ("no option named here", None),
    ("", None),
]


@pytest.mark.parametrize("text,expected", CHOICES)
def test_extract_choice(text, expected):
    assert extract_choice(text, 4) == expected


def test_extract_choice_respects_n_choices():
    assert extract_choice("Answer: E", 5) == "E"
    assert extract_choice("Answer: C", 2) is None
    assert extract_choice("(J)", 10) == "J"


OPTIONS = ["Paris", "Lyon", "Marseille", "New Paris"]
STATED = [
    ("A is correct", "A"),
    ("I think C is the right answer.", "C"),
    ("I choose b.", "B"),
    ("I'd go with (D)", "D"),
    ("Option A is wrong. B is correct.", "B"),
    # the option text, when no letter is named
    ("The capital of France is Paris.", "A"),
    ("It is marseille, not lyon... actually Lyon", "B"),
    ("New Paris", "D"),  # "Paris" inside the longer stated option does not count
    ("none of these", None),
]


@pytest.mark.parametrize("text,expected", STATED)
def test_extract_choice_reads_stated_choices_and_option_texts(text, expected):
    assert extract_choice(text, 4, OPTIONS) == expected
