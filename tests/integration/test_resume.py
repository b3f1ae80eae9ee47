"""Resume is exact: losing the last checkpoint and resuming from the one before it reproduces the
uninterrupted run's final weights bit for bit (2 ranks, gloo, CPU)."""

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from training import checkpoint

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]


def train(mixture: str, run_dir: Path, *extra: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
           "-m", "training.pretrain", "--stage", "joint_pretrain", "--mixture", mixture, "--run-dir", str(run_dir),
           "--set", "train.steps=6", "--set", "checkpoint.every=3", "--set", "train.log_every=1", *extra]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=ROOT,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


ENGINES = {
    "adamw": (),
    # MuonClip with a low tau so QK-Clip fires, and DEP: their state and collectives resume too
    "muonclip_dep": ("--set", "optimizer.name=muonclip", "--set", "parallel.dep=true", "--set", "optimizer.qk_clip_tau=1.5"),
    # DeepSpeed ZeRO-1: each rank saves and restores its optimizer partition and fp32 masters
    "zero1": ("--set", "optimizer.name=adamw", "--set", "parallel.zero_stage=1"),
    # MuonClip with its state sharded by whole matrices (and DEP, and QK-Clip firing)
    "zero1_muonclip_dep": ("--set", "parallel.zero_stage=1", "--set", "parallel.dep=true", "--set", "optimizer.qk_clip_tau=1.5"),
    # experts sharded over the 2 ranks: sharded optimizer state per rank, full weights in the checkpoint
    "expert_parallel": ("--set", "parallel.expert_parallel=2"),
}


@pytest.mark.parametrize("engine", sorted(ENGINES))
def test_resume_from_earlier_checkpoint_is_bitwise_exact(mixture_uri, tmp_path, engine):
    run_dir = tmp_path / "run"
    first = train(mixture_uri, run_dir, *ENGINES[engine])
    if engine == "muonclip_dep":
        clipped = [float(x) for x in re.findall(r"qk_clipped_heads (\S+)", first.stdout)]
        assert clipped and max(clipped) > 0, first.stdout[-2000:]
    final = checkpoint.load(checkpoint.latest(str(run_dir)), names=("model",))["model"]

    # Lose the last checkpoint, as if the job died after step 3 had been committed.
    shutil.rmtree(run_dir / "step_000006")
    (run_dir / "latest").write_text("step_000003")
    proc = train(mixture_uri, run_dir, "--resume", "must", *ENGINES[engine])
    assert "resumed from" in proc.stdout and "at step 3" in proc.stdout
    resumed = checkpoint.load(checkpoint.latest(str(run_dir)), names=("model",))["model"]

    assert final.keys() == resumed.keys()
    different = [k for k in final if not torch.equal(final[k], resumed[k])]
    assert not different, different


def test_sigterm_saves_a_checkpoint_and_resume_continues(mixture_uri, tmp_path):
    """Preemption: SIGTERM to torchrun reaches both ranks, which agree on a step, commit a
    checkpoint there and exit; `--resume must` then finishes the run from that step."""
    import signal
    import time

    run_dir = tmp_path / "run"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
           "-m", "training.pretrain", "--stage", "joint_pretrain", "--mixture", mixture_uri, "--run-dir", str(run_dir),
           "--set", "train.steps=100000", "--set", "checkpoint.every=100000", "--set", "train.log_every=1"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT,
                            env={**os.environ, "OMP_NUM_THREADS": "1"}, start_new_session=True)
    seen = []
    for line in proc.stdout:  # wait until training is really under way
        seen.append(line)
        if "step 3/" in line:
            break
    proc.send_signal(signal.SIGTERM)
    try:
        out, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    log = "".join(seen) + out
    assert "stopped by SIGTERM: committed step" in log, log[-3000:]
    saved = checkpoint.latest(str(run_dir))
    assert saved is not None
    step = checkpoint.read_manifest(saved)[0]["step"]
    assert 3 <= step < 100000
    time.sleep(1)
    resumed = train(mixture_uri, run_dir, "--resume", "must", "--set", f"train.steps={step + 2}")
    assert f"at step {step}" in resumed.stdout
    assert checkpoint.read_manifest(checkpoint.latest(str(run_dir)))[0]["step"] == step + 2


def test_killed_rank_restarts_and_ends_bitwise_equal(mixture_uri, tmp_path):
    """A rank is SIGKILLed mid-run; torchrun (--max-restarts 1) restarts the group, which resumes
    from the last committed checkpoint; the final weights equal an uninterrupted run bit for bit."""
    import signal
    import time

    import psutil

    steps = ("--set", "train.steps=10", "--set", "checkpoint.every=2", "--set", "data.num_workers=0")
    clean = tmp_path / "clean"
    train(mixture_uri, clean, *steps)
    expected = checkpoint.load(checkpoint.latest(str(clean)), names=("model",))["model"]

    run_dir = tmp_path / "killed"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", "--max-restarts=1",
           "-m", "training.pretrain", "--stage", "joint_pretrain", "--mixture", mixture_uri, "--run-dir", str(run_dir),
           "--set", "train.log_every=1", *steps]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT,
                            env={**os.environ, "OMP_NUM_THREADS": "1"}, start_new_session=True)
    log = []
    for line in proc.stdout:
        log.append(line)
        if "checkpoint step 4 committed" in line:
            break
    time.sleep(0.5)  # into step 5 or 6, past the commit
    workers = psutil.Process(proc.pid).children()
    rank1 = [w for w in workers if w.environ().get("RANK") == "1"]
    assert rank1, "no rank-1 worker found"
    os.kill(rank1[0].pid, signal.SIGKILL)
    out, _ = proc.communicate(timeout=300)
    log = "".join(log) + out
    assert proc.returncode == 0, log[-3000:]
    assert "resumed from" in log, log[-3000:]
    final = checkpoint.load(checkpoint.latest(str(run_dir)), names=("model",))["model"]
    assert [k for k in expected if not torch.equal(expected[k], final[k])] == []


def test_zero1_and_expert_parallel_train_the_same_model_as_plain_data_parallel(mixture_uri, tmp_path):
    """ZeRO-1 (DeepSpeed) and expert parallelism change where state lives, not the maths: after
    the same steps on the same batches the weights match plain data parallelism within float
    tolerance (reduction order differs), and the logs show each mode was really on."""
    steps = ("--set", "optimizer.name=adamw", "--set", "train.steps=3", "--set", "checkpoint.every=3", "--set", "data.num_workers=0")
    runs = {}
    for name, extra in {"plain": (), "zero1": ("--set", "parallel.zero_stage=1"),
                        "expert_parallel": ("--set", "parallel.expert_parallel=2")}.items():
        proc = train(mixture_uri, tmp_path / name, *steps, *extra)
        runs[name] = checkpoint.load(checkpoint.latest(str(tmp_path / name)), names=("model", "optim"))
        if name == "zero1":
            assert "DeepSpeed" in proc.stdout + proc.stderr
            assert "single_partition_of_fp32_groups" in runs[name]["optim"]  # rank 0's ZeRO partition
        if name == "expert_parallel":
            assert "expert parallelism: 1 group(s) of 2 ranks" in proc.stdout
    plain = runs["plain"]["model"]
    for name in ("zero1", "expert_parallel"):
        model = runs[name]["model"]
        assert model.keys() == plain.keys()  # EP checkpoints hold the full (gathered) experts
        worst = max(float((model[k].float() - plain[k].float()).abs().max()) for k in plain)
        print(name, "max |w - w_plain| =", worst)
        # 3 Adam steps move weights by ~1e-3; a mode that skipped or mis-scaled updates would differ by that much
        assert worst < 1e-4, (name, worst)


def test_sharded_muonclip_trains_bitwise_like_replicated_muonclip(mixture_uri, tmp_path):
    """ZeRO-1 for MuonClip: each rank updates only the matrices it owns, then broadcasts them; the
    updates are the replicated optimizer's own, so the weights are bitwise equal, and each rank's
    optimizer state holds only its share."""
    steps = ("--set", "train.steps=3", "--set", "checkpoint.every=3", "--set", "data.num_workers=0", "--set", "optimizer.qk_clip_tau=1.5")
    train(mixture_uri, tmp_path / "plain", *steps)
    train(mixture_uri, tmp_path / "sharded", *steps, "--set", "parallel.zero_stage=1")
    plain = checkpoint.load(checkpoint.latest(str(tmp_path / "plain")), names=("model", "optim"))
    sharded_uri = checkpoint.latest(str(tmp_path / "sharded"))
    sharded = checkpoint.load(sharded_uri, names=("model",))["model"]
    assert [k for k in plain["model"] if not torch.equal(plain["model"][k], sharded[k])] == []
    full_state = len(plain["optim"]["state"])
    shares = [len(checkpoint.load(sharded_uri, rank=r, names=("optim",))["optim"]["inner"]["state"]) for r in (0, 1)]
    assert sum(shares) == full_state and min(shares) > 0, (shares, full_state)
