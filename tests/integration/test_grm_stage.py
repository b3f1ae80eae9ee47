"""The GRM stage program under torchrun (2 ranks, gloo), then RL reading its judge: the judge's
data drawn once (constructed and policy-sampled, hidden-checker verdicts) and read back on
resume, held-out accuracy per family reported, and RL logging the GRM figures per iteration;
RL with a GRM weight but no judge is refused before any work."""

import hashlib

import pandas as pd
import pytest
from helpers import logged, run_tiny_stage

from training import checkpoint
from training.grm import JUDGE_DATA, JUDGE_EVAL

pytestmark = pytest.mark.integration
GRM_SETS = ["train.steps=4", "checkpoint.every=2", "train.log_every=2", "grm.per_family=40", "grm.policy_prompts=4",
            "grm.eval_per_family=6"]
RL_SETS = ["train.steps=2", "checkpoint.every=2", "train.log_every=1", "rl.pool_size=8", "rl.prompts_per_step=2",
           "rl.group_size=3", "rl.max_new_tokens=8", "rl.domains=reasoning:1,instruction:1", "rl.toggle=false",
           "rl.grm_weight=0.5", "rl.grm_max_parse_fail=1.0"]


def test_grm_trains_a_judge_reports_it_and_rl_reads_it(mixture_uri, tmp_path):
    grm_dir = tmp_path / "grm"
    first = run_tiny_stage("training.grm", mixture_uri, grm_dir, GRM_SETS)
    out = first.stdout
    assert first.returncode == 0, out[-4000:]
    data = pd.read_parquet(grm_dir / JUDGE_DATA)
    assert set(data["family"]) == {"instruction", "no_praise", "no_self_justification", "correctness"}
    assert (data["source"] == "policy").sum() == 4 * 2  # policy_prompts x policy_samples, from every rank
    assert set(data["split"]) == {"train", "test"}
    judged = pd.read_parquet(grm_dir / JUDGE_EVAL)
    assert len(judged) == 4 * 6
    assert set(judged["prompt"]) <= set(data.loc[data["split"] == "test", "prompt"])  # held-out prompts only
    for name in ("judge_acc_seen", "judge_acc_unseen", "judge_parse_fail_share"):
        (value,) = logged(out, name)
        assert 0.0 <= value <= 1.0, (name, value)
    digest = hashlib.sha256((grm_dir / JUDGE_DATA).read_bytes()).hexdigest()

    again = run_tiny_stage("training.grm", mixture_uri, grm_dir, GRM_SETS[1:] + ["train.steps=6"])
    out2 = again.stdout
    assert again.returncode == 0, out2[-4000:]
    assert "judge data read from" in out2 and "resumed from" in out2
    assert hashlib.sha256((grm_dir / JUDGE_DATA).read_bytes()).hexdigest() == digest  # never drawn again
    judge = checkpoint.latest(str(grm_dir))
    assert checkpoint.read_manifest(judge)[0]["step"] == 6

    rl = run_tiny_stage("training.rl", mixture_uri, tmp_path / "rl", RL_SETS, "--judge", judge)
    out3 = rl.stdout
    assert rl.returncode == 0, out3[-4000:]
    assert f"GRM: judge {judge}" in out3
    for name in ("grm_mean", "grm_gated_share", "grm_verifier_agreement", "grm_parse_fail_share"):
        assert len(logged(out3, name)) == 2, name
    # nothing is verified correct at this scale, so the GRM term is never added
    assert logged(out3, "grm_gated_share") == [0.0, 0.0]


def test_rl_with_a_grm_weight_and_no_judge_is_refused_before_any_work(mixture_uri, tmp_path):
    proc = run_tiny_stage("training.rl", mixture_uri, tmp_path / "rl", RL_SETS)
    out = proc.stdout
    assert proc.returncode != 0
    assert "rl.grm_weight=0.5 needs the judge checkpoint" in out
    assert checkpoint.latest(str(tmp_path / "rl")) is None
