"""The RL stage program under torchrun (2 ranks, gloo): text and image tasks and multi-turn tool
tasks through the rollout engine, Eq. 1 with MuonClip, Toggle's budgets estimated once and read
back on resume, the per-iteration diagnostics, and a bad domain refused before any work."""

import hashlib
import subprocess
from pathlib import Path

import pytest
from helpers import logged, run_tiny_stage

from training import checkpoint
from training.toggle import BUDGETS_FILE

pytestmark = pytest.mark.integration
SETS = ["train.steps=4", "checkpoint.every=2", "train.log_every=1", "rl.pool_size=12", "rl.prompts_per_step=2",
        "rl.group_size=3", "rl.max_new_tokens=12", "rl.domains=reasoning:1,perception:1,instruction:1,tool:1",
        "rl.grm_weight=0"]  # the GRM term is tested with a trained judge in test_grm_stage.py


def rl(mixture: str, run_dir: Path, *sets: str) -> subprocess.CompletedProcess:
    return run_tiny_stage("training.rl", mixture, run_dir, SETS + list(sets))


def test_rl_trains_text_image_and_tool_tasks_and_resume_reads_the_budgets(mixture_uri, tmp_path):
    run_dir = tmp_path / "rl"
    first = rl(mixture_uri, run_dir)
    assert first.returncode == 0, first.stdout[-6000:]
    out = first.stdout
    assert "Toggle budget pass" in out and "Toggle budgets written" in out
    budgets = run_dir / BUDGETS_FILE
    digest = hashlib.sha256(budgets.read_bytes()).hexdigest()
    manifest, _ = checkpoint.read_manifest(checkpoint.latest(str(run_dir)))
    assert manifest["step"] == 4 and manifest["world_size"] == 2
    # every logged step carries the objective's diagnostics
    for name in ("masked_fraction", "mean_abs_log_ratio", "mismatch_kl", "groups_skipped", "generation_share",
                 "toggle_phase", "toggle_active_fraction", "toggle_zeroed_fraction", "reward_mean"):
        assert len(logged(out, name)) == 4, name
    # the first update of a rollout batch runs on the weights the engine sampled with (fp32, same
    # kernels): the train-inference mismatch is tiny
    assert max(logged(out, "mismatch_kl")) < 1e-3
    assert logged(out, "toggle_phase") == [0.0, 0.0, 0.0, 0.0]  # iterations 0 and 1 (m=2): phase 0

    second = rl(mixture_uri, run_dir, "train.steps=6")
    assert second.returncode == 0, second.stdout[-6000:]
    out2 = second.stdout
    assert "resumed from" in out2 and "Toggle budgets read from" in out2 and "Toggle budget pass" not in out2
    assert hashlib.sha256(budgets.read_bytes()).hexdigest() == digest  # never re-estimated
    assert logged(out2, "toggle_phase") == [1.0, 1.0]  # iteration 2: phase 1
    assert checkpoint.read_manifest(checkpoint.latest(str(run_dir)))[0]["step"] == 6


def test_an_unknown_domain_is_refused_before_any_work(mixture_uri, tmp_path):
    proc = rl(mixture_uri, tmp_path / "bad", "rl.domains=vision:1")
    assert proc.returncode != 0
    assert "unknown RL domain 'vision'" in proc.stdout
    assert not (tmp_path / "bad" / BUDGETS_FILE).exists()
