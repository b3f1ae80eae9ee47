"""Reward tables: perfect, partial, empty and adversarial cases for every reward kind."""

import itertools
import json

import numpy as np
import pytest
from skimage.draw import disk

from agents.rewards import score
from agents.rewards.base import final_answer, last_boxed, strip_reasoning
from agents.rewards.instructions import check, describe
from agents.rewards.program import extract_program
from agents.rewards.visual import edit_distance, polygon_mask, soft_f1

MATH = [
    # (response, reference, correct)
    ("\\boxed{42}", "42", True),
    ("**Final Answer:** $9$", "9", True),  # the hand-written parser missed these
    ("The answer is **18**.", "18", True),
    ("so the total is \\boxed{\\frac{1}{2}}", "0.5", True),
    ("#### 1,234", "1234", True),
    ("32 / 96 * 100% = 33.333...%, which rounds down to 33%\n#### 33", "33", True),  # the answer line wins
    ("####", "33", False),
    ("\\boxed{52_8}", "52_{8}", True),
    ("\\boxed{\\{1,-2\\}}", "\\{1,-2\\}", True),
    ("<think>maybe 7</think>The answer is \\boxed{8}", "8", True),
    ("<think>the answer is 8</think>", "8", False),  # only the visible answer counts
    ("\\boxed{41}", "42", False),
    ("", "42", False),
    ("0 \\text{ or } 1", "0", False),  # a hedge is not the answer 0
    ("\\boxed{3, 4}", "3", False),
    ("I do not know.", "42", False),
]


@pytest.mark.parametrize("response,reference,correct", MATH)
def test_math_table(response, reference, correct):
    s = score("math", response, reference)
    assert s.correct is correct and s.value == float(correct)


def test_math_empty_reference_is_an_error():
    with pytest.raises(ValueError, match="empty"):
        score("math", "\\boxed{1}", " ")


def test_math_adversarial_length_is_bounded():
    s = score("math", "1 " * 200_000 + "\\boxed{5}", "5")
    assert s.correct


@pytest.mark.parametrize("response,ref,correct", [
    ("\\boxed{B}", "B", True), ("The answer is (C).", "C", True), ("Answer: d", "D", True),
    ("Reasoning...\nA", "A", True), ("\\boxed{B}", "A", False), ("", "A", False),
    ("A or B", "A", False), ("\\boxed{Z}", "A", False),
])
def test_choice_table(response, ref, correct):
    assert score("choice", response, ref).correct is correct


def test_exact_and_empty():
    assert score("exact", "The name is\nParis.", "paris").correct
    assert not score("exact", "...", "paris").correct
    assert score("exact", "", "paris").value == 0


# ---- grounding

GT = [[10, 10, 30, 30], [50, 50, 90, 70]]


def boxes_text(boxes):
    return "\\boxed{" + "; ".join(",".join(str(v) for v in b) for b in boxes) + "}"


def test_grounding_perfect_partial_empty():
    assert score("grounding", boxes_text(GT), GT).value == pytest.approx(1.0)
    half = score("grounding", boxes_text(GT[:1]), GT)  # one of two: P=1, R=1/2
    assert half.value == pytest.approx(2 / 3)
    shifted = score("grounding", boxes_text([[15, 10, 35, 30], GT[1]]), GT)
    assert 0.5 < shifted.value < 1.0
    assert score("grounding", "", GT).value == 0
    assert score("grounding", "\\boxed{1,2,3}", GT).value == 0  # not a box


def test_grounding_adversarial():
    full = score("grounding", boxes_text([[0, 0, 100, 100]]), GT)
    assert full.value <= 1 / len(GT)
    spray = [[x, y, x + 20, y + 20] for x in range(0, 100, 10) for y in range(0, 100, 10)][:60]
    assert score("grounding", boxes_text(spray + GT), GT).value < 0.1  # guesses cost precision
    too_many = [[0, 0, 1, 1]] * 100
    assert score("grounding", boxes_text(too_many), GT).value == 0
    dup = score("grounding", boxes_text([GT[0], GT[0]]), GT)  # one box twice matches once
    assert dup.value == pytest.approx(0.5)


def test_grounding_permutation_invariant():
    a = score("grounding", boxes_text([[12, 10, 30, 33], [50, 52, 88, 70]]), GT).value
    b = score("grounding", boxes_text([[50, 52, 88, 70], [12, 10, 30, 33]]), GT).value
    assert a == pytest.approx(b)


# ---- points

PTS = [[10, 10], [40, 20], [70, 80]]


def points_text(points):
    return "\\boxed{" + "; ".join(f"({x},{y})" for x, y in points) + "}"


def test_points_table():
    ref = {"points": PTS, "sigma": 5.0}
    assert score("points", points_text(PTS), ref).value == pytest.approx(1.0)
    near = score("points", points_text([[x + 3, y] for x, y in PTS]), ref).value
    assert near == pytest.approx(np.exp(-9 / 50))
    assert score("points", points_text([[500, 500]]), ref).value < 1e-6
    assert score("points", "", ref).value == 0
    assert score("points", points_text(PTS[:1]), ref).value == pytest.approx(0.5)  # P=1, R=1/3


def test_points_permuting_predictions_changes_nothing():
    ref = {"points": PTS, "sigma": 6.0}
    pred = [[12, 9], [37, 22], [71, 84]]
    values = {round(score("points", points_text(list(p)), ref).value, 12) for p in itertools.permutations(pred)}
    assert len(values) == 1


def test_soft_f1_uses_the_optimal_assignment():
    # greedy on row 0 would take column 0 (0.9) and leave row 1 with 0.0; optimal is 0.8 + 0.8
    sim = np.array([[0.9, 0.8], [0.8, 0.0]])
    assert soft_f1(sim) == pytest.approx((0.8 + 0.8) / 2)


# ---- polygons

SQUARE = {"polygon": [[10, 10], [50, 10], [50, 50], [10, 50]], "shape": [64, 64]}


def polygon_text(vertices):
    return "\\boxed{" + ", ".join(f"({x},{y})" for x, y in vertices) + "}"


def test_polygon_table():
    assert score("polygon", polygon_text(SQUARE["polygon"]), SQUARE).value == pytest.approx(1.0)
    half = score("polygon", polygon_text([[10, 10], [30, 10], [30, 50], [10, 50]]), SQUARE).value
    assert 0.4 < half < 0.6
    assert score("polygon", "", SQUARE).value == 0
    assert score("polygon", polygon_text([[0, 0], [5, 5]]), SQUARE).value == 0  # not a polygon
    whole = score("polygon", polygon_text([[0, 0], [63, 0], [63, 63], [0, 63]]), SQUARE).value
    assert whole < 0.45  # covering the image is not a segmentation


def test_polygon_mask_against_independent_raster():
    # a fine polygon approximating a disk against skimage.draw.disk
    t = np.linspace(0, 2 * np.pi, 200, endpoint=False)
    poly = np.stack([32 + 20 * np.cos(t), 32 + 20 * np.sin(t)], 1)
    mask = polygon_mask(poly, (64, 64))
    ref = np.zeros((64, 64), bool)
    ref[disk((32, 32), 20, shape=(64, 64))] = True
    assert (mask & ref).sum() / (mask | ref).sum() > 0.95


# ---- OCR and counting

def test_ocr_table():
    line = "In the beginning God created the heaven and the earth."
    assert score("ocr", f"\\boxed{{{line}}}", line).value == 1.0
    one_typo = score("ocr", line.replace("God", "Gop"), line)
    assert one_typo.value == pytest.approx(1 - 1 / len(line)) and not one_typo.correct
    assert score("ocr", "", line).value == 0
    assert score("ocr", "x" * 10_000, line).value == 0  # length is not rewarded
    assert edit_distance("kitten", "sitting") == 3


@pytest.mark.parametrize("response,gt,value", [
    ("\\boxed{5}", 5, 1.0), ("\\boxed{4}", 5, 0.8), ("There are 6 disks.", 5, 0.8),
    ("\\boxed{50}", 5, 0.0), ("", 5, 0.0), ("\\boxed{4 or 5}", 5, 0.0), ("\\boxed{-5}", 5, 0.0),
    ("\\boxed{0}", 0, 1.0), ("\\boxed{1}", 0, 0.0),
])
def test_count_table(response, gt, value):
    assert score("count", response, gt).value == pytest.approx(value)


# ---- instructions

def test_instructions_table():
    cons = [{"kind": "max_words", "n": 8}, {"kind": "include", "words": ["light"]},
            {"kind": "exclude", "words": ["very"]}, {"kind": "ends_with", "phrase": "Amen."}]
    assert score("instructions", "Let there be light. Amen.", cons).correct
    partial = score("instructions", "Let there be very bright light indeed, a lot of it", cons)
    assert partial.value == 0 and partial.extracted == [False, True, False, False]  # no partial credit
    assert score("instructions", "", [{"kind": "exclude", "words": ["x"]}]).value == 0
    assert score("instructions", "<think>light Amen.</think>", cons).value == 0
    # word boundaries: "delight" does not contain the word "light"
    assert not check("what a delight", {"kind": "include", "words": ["light"]})


@pytest.mark.parametrize("text,ok", [
    ('{"a": 1}', True), ('```json\n[1, 2]\n```', True), ("{'a': 1}", False), ("42", False),
    ("[" * 5000 + "]" * 5000, False), ("[" * 100000, False),
])
def test_json_check(text, ok):
    assert check(text, {"kind": "json"}) is ok


def test_case_checks_need_letters():
    assert check("all lower here", {"kind": "lowercase"})
    assert not check("123 456", {"kind": "lowercase"})
    assert check("SHOUT", {"kind": "uppercase"}) and not check("Shout", {"kind": "uppercase"})


def test_every_constraint_is_described_and_unknown_kinds_fail():
    for kind in ("max_words", "min_words", "include", "exclude", "json", "ends_with", "lowercase", "uppercase"):
        assert describe({"kind": kind, "n": 3, "words": ["a"], "phrase": "x"})
    with pytest.raises(ValueError, match="unknown constraint"):
        check("x", {"kind": "rhyme"})
    with pytest.raises(ValueError, match="unknown reward kind"):
        score("vibes", "x", None)


# ---- helpers

def test_answer_reading():
    assert last_boxed("a \\boxed{\\frac{1}{2}} b") == "\\frac{1}{2}"
    assert last_boxed("\\boxed{open") is None
    assert strip_reasoning("<think>x</think>y") == "y" and strip_reasoning("y<think>unclosed") == "y"
    assert final_answer("work\n\nThe answer: 7\n") == "The answer: 7"
    assert final_answer("   ") is None
    assert extract_program("text ```python\nprint(1)\n``` and ```python\nprint(2)\n```") == "print(2)\n"
    assert extract_program("no code") is None
    assert json.loads("[1]") == [1]
