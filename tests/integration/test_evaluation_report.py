"""The evaluation report's figures (evaluation/run.py): bootstrap intervals, chance levels, the
mode, and substitute labels in MLflow names. Integration only because importing MLflow starts a
subprocess (`uname -p`)."""

import pytest

from evaluation.config import EvalConfig

pytestmark = pytest.mark.integration


def test_report_figures_carry_a_bootstrap_interval_chance_and_labelled_substitutes():
    import numpy as np
    import pandas as pd

    from evaluation.run import bootstrap_ci, mlflow_name, report, summarize

    scores = np.array([1.0] * 30 + [0.0] * 70)
    low, high = bootstrap_ci(scores)
    assert low < 0.3 < high and 0.19 < low and high < 0.41  # the normal interval is 0.3 +- 0.09
    assert bootstrap_ci(np.ones(10)) == (1.0, 1.0)
    df = pd.DataFrame([{"suite": "mmlu", "id": str(i), "score": float(i % 4 == 0), "chance": 0.25} for i in range(40)]
                      + [{"suite": "digits_caption_retrieval", "id": str(i), "score": 1.0, "chance": 0.125}
                         for i in range(8)])
    metrics = summarize(df, EvalConfig(suites=("mmlu", "digits_caption_retrieval")))
    assert metrics["mmlu/chance"] == 0.25 and metrics["digits_caption_retrieval/chance"] == 0.125
    assert metrics["mmlu/ci_low"] < metrics["mmlu/accuracy"] < metrics["mmlu/ci_high"]
    md, _ = report(metrics, "file:///ckpt", EvalConfig(), "base")
    assert "Mode: **base**" in md and "| 0.250 |" in md and "95% CI" in md
    assert mlflow_name("mmlu/accuracy") == "mmlu_accuracy"
    assert mlflow_name("digits_caption_retrieval/accuracy") == "substitute_digits_caption_retrieval_accuracy"


def test_a_missing_sandbox_is_found_before_any_suite_runs(monkeypatch):
    """Without root the sandbox cannot be built: the preflight says so (main() turns it into an
    error exit before the model loads); with root it passes."""
    import os

    from agents import sandbox
    from evaluation.run import sandbox_preflight

    if os.geteuid() != 0:
        pytest.skip("needs root to show the passing side")
    sandbox_preflight(EvalConfig())  # the real sandbox: passes
    monkeypatch.setattr(sandbox.os, "geteuid", lambda: 1000)
    with pytest.raises(sandbox.SandboxUnavailable, match="root"):
        sandbox_preflight(EvalConfig())
