"""The streaming loader end to end: 2 real ranks under torchrun with 2 loader workers each resume
exactly (N steps == k steps + save + resume + N-k steps, checked on the weights and on every batch),
and shards stream from S3 (moto on 127.0.0.1) through boto3 in the worker processes."""

import hashlib
import json
import shutil
from pathlib import Path

import helpers
import pytest
import torch

from curation.mixture import read_mixture
from infra import storage
from training import checkpoint
from training.data import load_vocab
from training.loader import StreamingLoader

pytestmark = pytest.mark.integration
ALL = ("text", "image_text", "video")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return helpers.build_tiny_data(str(tmp_path_factory.mktemp("loader-resume")))


# A wrapper around the pretrain program that records a digest of every batch each rank trains on.
RECORDER = '''
import hashlib, json, os, sys
import training.loader as L
out = os.environ["BATCH_LOG"] + "." + os.environ["RANK"]
orig = L.StreamingLoader.batch
def batch(self, step):
    b = orig(self, step)
    h = hashlib.sha256()
    for t in (b.tokens, b.targets, b.attn_mask, *b.vision_items):
        h.update(t.numpy().tobytes())
    with open(out, "a") as f:
        f.write(json.dumps([step, h.hexdigest()]) + "\\n")
    return b
L.StreamingLoader.batch = batch
from training.pretrain import main
main(sys.argv[1:])
'''


def train(tiny, run_dir: Path, log: Path, *extra: str):
    script = run_dir.parent / "record_pretrain.py"
    script.write_text(RECORDER)
    args = ["--stage", "joint_pretrain", "--mixture", tiny.mixture_uri, "--run-dir", str(run_dir),
            "--set", "train.steps=8", "--set", "checkpoint.every=3", "--set", "train.log_every=1", "--set", "data.num_workers=2",
            "--set", "data.ratio_log_every=4", *extra]
    import subprocess
    import sys
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", str(script), *args]
    env = helpers.stage_env({"BATCH_LOG": str(log), "PYTHONPATH": str(helpers.REPO_ROOT)})
    proc = subprocess.run(cmd, cwd=str(helpers.REPO_ROOT), env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stdout[-4000:]
    return proc


def batch_log(log: Path, rank: int) -> dict[int, str]:
    lines = Path(f"{log}.{rank}").read_text().splitlines()
    return {step: digest for step, digest in map(json.loads, lines)}


def test_two_ranks_with_workers_resume_exactly(tiny, tmp_path):
    run_dir = tmp_path / "run"
    train(tiny, run_dir, tmp_path / "full")
    final = checkpoint.load(checkpoint.latest(str(run_dir)), names=("model",))["model"]
    full = [batch_log(tmp_path / "full", r) for r in (0, 1)]
    assert sorted(full[0]) == list(range(8)) and full[0] != full[1]  # the ranks read different data

    # The loader state is per rank in every checkpoint.
    ck = str(run_dir / "step_000006")
    states = [checkpoint.load(ck, rank=r, names=("loader",))["loader"] for r in (0, 1)]
    assert [s["delivered"] for s in states] == [6, 6]
    assert [s["fingerprint"]["dp_rank"] for s in states] == [0, 1]
    assert all(s["fingerprint"]["num_workers"] == 2 for s in states)

    # Lose the last two checkpoints, as if the job died after step 3 had been committed.
    shutil.rmtree(run_dir / "step_000008")
    shutil.rmtree(run_dir / "step_000006")
    (run_dir / "latest").write_text("step_000003")
    proc = train(tiny, run_dir, tmp_path / "resumed", "--resume", "must")
    assert "at step 3" in proc.stdout
    resumed = [batch_log(tmp_path / "resumed", r) for r in (0, 1)]
    for r in (0, 1):
        assert sorted(resumed[r]) == list(range(3, 8))
        assert all(resumed[r][s] == full[r][s] for s in range(3, 8)), r
    weights = checkpoint.load(checkpoint.latest(str(run_dir)), names=("model",))["model"]
    assert [k for k in final if not torch.equal(final[k], weights[k])] == []


def test_stage_fails_clearly_on_a_foreign_loader_state(tiny, tmp_path):
    run_dir = tmp_path / "run"
    train(tiny, run_dir, tmp_path / "log")
    (run_dir / "latest").write_text("step_000003")
    shutil.rmtree(run_dir / "step_000006")
    shutil.rmtree(run_dir / "step_000008")
    script = tmp_path / "record_pretrain.py"
    import subprocess
    import sys
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", str(script),
           "--stage", "joint_pretrain", "--mixture", tiny.mixture_uri, "--run-dir", str(run_dir), "--set", "train.steps=8",
           "--set", "data.num_workers=1", "--resume", "must"]
    env = helpers.stage_env({"BATCH_LOG": str(tmp_path / "x"), "PYTHONPATH": str(helpers.REPO_ROOT)})
    proc = subprocess.run(cmd, cwd=str(helpers.REPO_ROOT), env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True, timeout=300, check=False)
    assert proc.returncode != 0 and "cannot resume the data loader" in proc.stdout


def _digests(batches):
    out = []
    for b in batches:
        h = hashlib.sha256()
        for t in (b.tokens, b.targets, b.attn_mask, *b.vision_items):
            h.update(t.numpy().tobytes())
        out.append(h.hexdigest())
    return out


def test_streams_from_s3_match_local(tiny, s3_bucket):
    """Shards read as boto3 GetObject streams in 2 worker processes give the local batches, and a
    resume from S3 continues exactly."""
    mixture = read_mixture(tiny.mixture_uri)
    vocab = load_vocab(mixture)
    s3_mix = {**mixture, "sources": {}}
    for name, src in mixture["sources"].items():
        uri = storage.join(s3_bucket, name)
        for path in sorted(Path(storage.local_path(src["uri"])).iterdir()):
            storage.upload_file(path, storage.join(uri, path.name))
        s3_mix["sources"][name] = {**src, "uri": uri}
    kw = dict(sources=ALL, vision_ratio=0.1, seq_len=128, batch_size=4, seed=5, dp_rank=1, dp_size=2,
              num_workers=2, steps=20)
    local = StreamingLoader(mixture, vocab, **kw)
    expected = _digests([local.batch(s) for s in range(12)])
    local.close()
    remote = StreamingLoader(s3_mix, vocab, **kw)
    got = _digests([remote.batch(s) for s in range(5)])
    state = remote.state_dict()
    remote.close()
    again = StreamingLoader(s3_mix, vocab, state=state, **kw)
    got += _digests([again.batch(s) for s in range(5, 12)])
    again.close()
    assert got == expected
