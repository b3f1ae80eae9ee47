"""Stages trained in phases by one 2-rank torchrun program (training/pretrain.py): per-phase
checkpoints with the phase's context length and YaRN factor, the init_from chain, one metric
curve across phases, resume that skips finished phases and continues the one in progress bit for
bit, and a projector-only phase that leaves every other weight bitwise unchanged."""

import math
import re
import shutil
from pathlib import Path

import helpers
import pytest
import torch
from mlflow import MlflowClient

from training import checkpoint

pytestmark = pytest.mark.integration

# The tiny profile's three mid-training phases with 2, 2, 1 steps; per-phase overrides shorten the
# 1K and 4K contexts to 512 and 1024 (YaRN factor = seq_len / 128) to keep the test quick.
MIDTRAIN = ["--stage", "midtrain", "--profile", "tiny", "--set", "phase_steps=2,2,1", "--set", "checkpoint.every=1",
            "--set", "train.log_every=1", "--set", "ctx1k.data.seq_len=512", "--set", "ctx1k.train.yarn_factor=4",
            "--set", "ctx4k.data.seq_len=1024", "--set", "ctx4k.train.yarn_factor=8"]
EXPECTED = [("ctx256", 2, 256, 2.0), ("ctx1k", 2, 512, 4.0), ("ctx4k", 1, 1024, 8.0)]


@pytest.fixture(scope="module")
def mixture(tmp_path_factory):
    return helpers.build_tiny_data(str(tmp_path_factory.mktemp("phase-data"))).mixture_uri


def launch(mixture: str, run_dir: Path, *args: str):
    proc = helpers.run_torchrun("training.pretrain", [*args, "--mixture", mixture, "--run-dir", str(run_dir)])
    assert proc.returncode == 0, proc.stdout[-4000:]
    return proc.stdout


def final_model(run_dir: Path) -> dict:
    return checkpoint.load(checkpoint.latest(str(run_dir)), names=("model",))["model"]


def test_midtrain_phases_chain_report_and_resume(mixture, tmp_path):
    run_dir = tmp_path / "run"
    tracking = f"sqlite:///{tmp_path}/mlflow.db"
    out = launch(mixture, run_dir, *MIDTRAIN, "--tracking-uri", tracking)

    dirs = [run_dir / f"phase-{k}-{name}" for k, (name, *_) in enumerate(EXPECTED)]
    assert sorted(p.name for p in run_dir.iterdir()) == [d.name for d in dirs] + ["spec.json"]
    previous = None
    for d, (name, steps, seq_len, factor) in zip(dirs, EXPECTED):
        uri = checkpoint.latest(str(d))
        manifest, _ = checkpoint.read_manifest(uri)
        assert manifest["step"] == steps and manifest["world_size"] == 2
        sc, mc = manifest["spec"], manifest["model_config"]
        assert (sc["phase"], sc["train"]["steps"], sc["data"]["seq_len"], sc["train"]["yarn_factor"]) == (
            name, steps, seq_len, factor)
        assert mc["yarn_factor"] == factor and mc["max_seq_len"] >= seq_len
        assert manifest["init_from"] == previous  # phase k starts from phase k-1's final checkpoint
        previous = uri
    # per-modality losses are logged next to the loss
    assert "loss_text" in out and "loss_vision" in out
    # one MLflow run, one loss curve: global steps continue across the phases
    client = MlflowClient(tracking)
    runs = client.search_runs([client.get_experiment_by_name("k25").experiment_id])
    assert len(runs) == 1
    run_id = runs[0].info.run_id
    assert [m.step for m in client.get_metric_history(run_id, "loss")] == [1, 2, 3, 4, 5]
    assert [m.step for m in client.get_metric_history(run_id, "loss_text")] == [1, 2, 3, 4, 5]
    assert len(client.get_metric_history(run_id, "loss_vision")) >= 3
    expected_weights = final_model(dirs[-1])

    # The job dies after step 1 of phase 2: phase 1 is complete, phase 2 in progress, phase 3 absent.
    shutil.rmtree(dirs[1] / "step_000002")
    (dirs[1] / "latest").write_text("step_000001")
    shutil.rmtree(dirs[2])
    out = launch(mixture, run_dir, *MIDTRAIN, "--resume", "must")
    first = checkpoint.latest(str(dirs[0]))
    assert f"phase 1/3 'ctx256': complete at {first}, skipped" in out
    assert "step 1/2" not in out.split("phase 2/3")[0]  # phase 1 trained nothing
    assert f"resumed from {dirs[1] / 'step_000001'} at step 1" in out
    assert checkpoint.read_manifest(checkpoint.latest(str(dirs[2])))[0]["init_from"] == checkpoint.latest(str(dirs[1]))
    resumed = final_model(dirs[-1])
    assert [k for k in expected_weights if not torch.equal(expected_weights[k], resumed[k])] == []


def test_resume_must_fails_without_any_phase_checkpoint(mixture, tmp_path):
    run_dir = tmp_path / "empty"
    proc = helpers.run_torchrun("training.pretrain", [*MIDTRAIN, "--mixture", mixture, "--run-dir", str(run_dir),
                                                      "--resume", "must"], nproc=1)
    assert proc.returncode != 0
    assert "--resume must: no committed checkpoint" in proc.stdout
    assert not run_dir.exists() or not any(run_dir.iterdir())


def test_projector_phase_changes_only_the_projector(mixture, tmp_path):
    run_dir = tmp_path / "vit"
    log = launch(mixture, run_dir, "--stage", "vit_warmup", "--profile", "tiny", "--set", "phase_steps=2,3",
                 "--set", "checkpoint.every=5", "--set", "train.log_every=1", "--set", "caption.train.siglip_weight=0.5")
    # the caption phase adds the SigLIP-style loss (config per phase); the projector phase does not
    siglip = [float(x) for x in re.findall(r"loss_siglip (\S+)", log)]
    assert len(siglip) == 2 and all(math.isfinite(x) and x > 0 for x in siglip), log[-3000:]
    caption_uri = checkpoint.latest(str(run_dir / "phase-0-caption"))
    projector_uri = checkpoint.latest(str(run_dir / "phase-1-projector"))
    manifest, _ = checkpoint.read_manifest(projector_uri)
    assert manifest["spec"]["train"]["trainable"] == ["projector"] and manifest["init_from"] == caption_uri
    assert checkpoint.read_manifest(caption_uri)[0]["spec"]["train"]["trainable"] == ["vision", "projector", "llm"]
    before = checkpoint.load(caption_uri, names=("model",))["model"]
    after = checkpoint.load(projector_uri, names=("model",))["model"]
    assert before.keys() == after.keys()
    projector = [k for k in before if k.startswith("vision.projector.")]
    others = [k for k in before if not k.startswith("vision.projector.")]
    assert projector and len(others) > len(projector)
    assert [k for k in others if not torch.equal(before[k], after[k])] == []  # bitwise unchanged
    assert all(not torch.equal(before[k], after[k]) for k in projector)  # every projector tensor trained


def test_phases_on_s3_skip_when_complete(mixture, s3_bucket):
    """Phase run directories are storage URIs: on S3 the chain and the skip-on-resume work the same."""
    from infra import storage

    run_dir = storage.join(s3_bucket, "checkpoints", "vit_warmup")
    args = ["--stage", "vit_warmup", "--profile", "tiny", "--set", "phase_steps=1,1", "--mixture", mixture,
            "--run-dir", run_dir]
    env = helpers.stage_env()
    proc = helpers.run_torchrun("training.pretrain", args, env=env)
    assert proc.returncode == 0, proc.stdout[-4000:]
    caption = checkpoint.latest(storage.join(run_dir, "phase-0-caption"))
    projector = checkpoint.latest(storage.join(run_dir, "phase-1-projector"))
    assert caption == storage.join(run_dir, "phase-0-caption", "step_000001")
    assert projector == storage.join(run_dir, "phase-1-projector", "step_000001")
    assert checkpoint.read_manifest(projector)[0]["init_from"] == caption
    # everything done: the first phase is skipped, the last one resumes at its end and reports again
    proc = helpers.run_torchrun("training.pretrain", [*args, "--resume", "must"], env=env)
    assert proc.returncode == 0, proc.stdout[-4000:]
    assert f"phase 1/2 'caption': complete at {caption}, skipped" in proc.stdout
    assert f"resumed from {projector} at step 1" in proc.stdout
