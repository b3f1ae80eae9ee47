"""Benchmark suites (evaluation/suites.py) on the real benchmark files: every suite loads with
the README's counts; the oracle output of every example scores 100% and a deliberately wrong one
0% (HumanEval through the sandbox: tests/integration/test_humaneval_sandbox.py); missing data is reported with
the exact path; pass@k and avg@k match their definitions."""

import math
from itertools import combinations

import pytest

# CI clones the repository with shared/ as its sibling; K25_DATA_ROOT overrides
from helpers import DATA_ROOT

from agents.rewards.math import math_score
from evaluation.suites import (
    SUITES,
    Example,
    SuiteDataMissing,
    avg_at_k,
    extract_code,
    load_suite,
    oracle_output,
    pass_at_k,
    score,
    wrong_output,
)

COUNTS = {"gsm8k": 1319, "math500": 500, "aime24": 30, "aime25": 30, "amc23": 40, "mmlu": 14079, "humaneval": 164}
TEXT_SUITES = [name for name in COUNTS if name != "humaneval"]


@pytest.fixture(scope="module")
def loaded():
    return {}


def suite(name: str, cache: dict) -> list[Example]:
    if name not in cache:
        cache[name] = load_suite(name, DATA_ROOT)
    return cache[name]


def test_registry_matches_the_readme():
    assert set(SUITES) == set(COUNTS)


@pytest.mark.parametrize("name", list(COUNTS))
def test_suite_loads_with_the_readme_count(name, loaded):
    examples = suite(name, loaded)
    assert len(examples) == COUNTS[name]
    assert len({ex.id for ex in examples}) == len(examples)
    assert all(ex.suite == name and ex.kind == SUITES[name].kind and ex.prompt and ex.reference for ex in examples)
    assert [ex.id for ex in load_suite(name, DATA_ROOT)] == [ex.id for ex in examples]  # deterministic


def test_references_are_parsed_from_the_files(loaded):
    assert suite("gsm8k", loaded)[0].reference == "18"  # Janet's ducks, "#### 18"
    assert suite("aime24", loaded)[7].reference == "25"  # stored as "025"
    assert suite("amc23", loaded)[0].reference == "27"  # stored as 27.0
    assert suite("aime25", loaded)[0].reference == "70"
    assert suite("math500", loaded)[0].reference == r"\left( 3, \frac{\pi}{2} \right)"
    assert {ex.reference for ex in suite("mmlu", loaded)} == set("ABCD")
    first = suite("humaneval", loaded)[0]
    assert first.id == "HumanEval/0" and first.meta["entry_point"] == "has_close_elements"
    assert first.prompt.rstrip().endswith('"""') and "def check" in first.meta["test"]


def test_mmlu_prompt_is_the_standard_five_shot_format(loaded):
    ex = suite("mmlu", loaded)[0]
    assert ex.meta["subject"] == "abstract_algebra"
    assert ex.prompt.startswith("The following are multiple choice questions (with answers) about abstract algebra.\n\n")
    assert ex.prompt.count("\nAnswer: ") == 5  # five solved dev questions ...
    assert "\nD. 3\nAnswer: B\n\n" in ex.prompt  # (the first one)
    assert ex.prompt.endswith("over Q.\nA. 0\nB. 4\nC. 2\nD. 6\nAnswer:")  # ... then the open test question
    assert len({e.meta["subject"] for e in suite("mmlu", loaded)}) == 57


def test_limit_takes_the_first_items_and_spreads_mmlu_over_subjects():
    assert [e.id for e in load_suite("gsm8k", DATA_ROOT, limit=3)] == ["gsm8k/0", "gsm8k/1", "gsm8k/2"]
    assert load_suite("aime25", DATA_ROOT, limit=0) == []
    sample = load_suite("mmlu", DATA_ROOT, limit=60)
    assert len(sample) == 60 and len({e.meta["subject"] for e in sample}) == 57
    assert sample[0].id == "mmlu/abstract_algebra/0" and sample[57].id == "mmlu/abstract_algebra/1"
    assert [e.id for e in load_suite("mmlu", DATA_ROOT, limit=60)] == [e.id for e in sample]


@pytest.mark.parametrize("name", TEXT_SUITES)
def test_oracle_scores_100_and_wrong_scores_0(name, loaded):
    examples = suite(name, loaded)
    right = [score(ex, oracle_output(ex)) for ex in examples]
    wrong = [score(ex, wrong_output(ex)) for ex in examples]
    assert [ex.id for ex, r in zip(examples, right) if r["score"] != 1.0] == []
    assert [ex.id for ex, r in zip(examples, wrong) if r["score"] != 0.0] == []


def test_math500_gold_solutions_agree_with_the_answers(loaded):
    """The scorer reads the dataset's own worked solutions (their last \\boxed{}) as equal to the
    answer field for every problem: real formats, not only the oracle's."""
    examples = suite("math500", loaded)
    disagree = [ex.id for ex in examples if not math_score(ex.meta["solution"], ex.reference).correct]
    assert disagree == []


def test_extract_code_unwraps_a_fenced_block():
    body = "    return sorted(numbers)\n"
    assert extract_code(body) == body
    assert extract_code(f"Here you go:\n```python\n{body}```\nDone.") == body
    assert extract_code(f"```\n{body}```") == body


def test_unknown_suite_lists_the_known_ones():
    with pytest.raises(ValueError, match="gsm8k.*humaneval"):
        load_suite("gsm9k", DATA_ROOT)


def test_missing_data_names_the_exact_path(tmp_path):
    with pytest.raises(SuiteDataMissing) as e:
        load_suite("gsm8k", tmp_path / "nowhere")
    missing = tmp_path / "nowhere" / "benchmarks" / "gsm8k" / "test.jsonl"
    assert isinstance(e.value, FileNotFoundError)
    assert str(missing) in str(e.value) and "K25_DATA_ROOT" in str(e.value)
    (tmp_path / "partial" / "benchmarks" / "mmlu" / "test").mkdir(parents=True)
    with pytest.raises(SuiteDataMissing, match=str(tmp_path / "partial" / "benchmarks" / "mmlu" / "dev")):
        load_suite("mmlu", tmp_path / "partial")


@pytest.mark.parametrize("n,c,k", [(1, 0, 1), (1, 1, 1), (10, 0, 5), (10, 10, 3), (10, 3, 1), (10, 3, 4),
                                   (7, 2, 7), (20, 5, 10), (5, 4, 2)])
def test_pass_at_k_matches_the_combinatorial_definition(n, c, k):
    # probability that a random k-subset of the n samples holds at least one correct one
    samples = [1] * c + [0] * (n - c)
    subsets = list(combinations(range(n), k))
    expected = sum(any(samples[i] for i in s) for s in subsets) / len(subsets)
    assert pass_at_k(n, c, k) == pytest.approx(expected, rel=1e-12, abs=1e-12)
    assert pass_at_k(n, c, k) == pytest.approx(1 - math.comb(n - c, k) / math.comb(n, k), abs=1e-12)


def test_pass_at_1_is_the_fraction_correct_and_bad_arguments_are_refused():
    assert pass_at_k(64, 16, 1) == pytest.approx(0.25)
    for n, c, k in [(5, 6, 1), (5, 2, 0), (5, 2, 6), (5, -1, 1)]:
        with pytest.raises(ValueError):
            pass_at_k(n, c, k)


def test_avg_at_k():
    assert avg_at_k([[1, 0, 1, 1], [0, 0, 0, 0]]) == pytest.approx(0.375)
    assert avg_at_k([[1.0], [0.0], [1.0]]) == pytest.approx(2 / 3)
    with pytest.raises(ValueError):
        avg_at_k([])
