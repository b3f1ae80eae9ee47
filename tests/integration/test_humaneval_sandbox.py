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
