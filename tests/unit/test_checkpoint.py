"""Checkpoints in one process on a local folder: commit protocol, verification, latest marker."""

import json
import random

import pytest
import torch

from infra import storage
from training import checkpoint
from training.checkpoint import CheckpointError


def objects(seed: int):
    torch.manual_seed(seed)
    model = torch.nn.Linear(4, 3)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model(torch.randn(2, 4)).sum().backward()
    opt.step()
    shared = {"model": model.state_dict(), "optim": opt.state_dict(), "trainer": {"step": seed, "loader": {"seed": 1}}}
    per_rank = {"rng": {"torch": torch.get_rng_state(), "python": random.getstate()}}
    return shared, per_rank


def assert_state_equal(a, b):
    assert type(a) is type(b) or (isinstance(a, dict) and isinstance(b, dict))
    if isinstance(a, torch.Tensor):
        assert torch.equal(a, b)
    elif isinstance(a, dict):
        assert a.keys() == b.keys()
        for k in a:
            assert_state_equal(a[k], b[k])
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b)
        for x, y in zip(a, b):
            assert_state_equal(x, y)
    else:
        assert a == b


def test_save_latest_load_round_trip(tmp_path):
    run = str(tmp_path / "run")
    assert checkpoint.latest(run) is None  # no run folder yet
    shared, per_rank = objects(3)
    uri, digest = checkpoint.save(run, 3, shared, per_rank, {"stage": "sft", "model_config": {"dim": 4}})
    assert uri == storage.join(run, "step_000003")
    assert checkpoint.latest(run) == uri

    manifest, manifest_digest = checkpoint.read_manifest(uri)
    assert manifest_digest == digest == storage.sha256_file(storage.join(uri, "manifest.json"))
    assert manifest["step"] == 3 and manifest["world_size"] == 1
    assert manifest["stage"] == "sft" and manifest["model_config"] == {"dim": 4}
    assert set(manifest["files"]) == {"model.pt", "optim.pt", "trainer.pt", "rng_rank0.pt"}
    for name, entry in manifest["files"].items():
        data = storage.read_bytes(storage.join(uri, name))
        assert entry == {"bytes": len(data), "sha256": storage.sha256_bytes(data)}

    state = checkpoint.load(uri)
    assert set(state) == {"model", "optim", "trainer", "rng"}
    assert_state_equal(state["model"], shared["model"])
    assert_state_equal(state["optim"], shared["optim"])
    assert state["trainer"] == shared["trainer"]
    assert torch.equal(state["rng"]["torch"], per_rank["rng"]["torch"])
    assert state["rng"]["python"] == per_rank["rng"]["python"]

    # The loaded objects restore a model and optimizer exactly.
    model = torch.nn.Linear(4, 3)
    model.load_state_dict(state["model"])
    torch.optim.AdamW(model.parameters(), lr=1e-3).load_state_dict(state["optim"])


def test_load_subsets_and_other_ranks(tmp_path):
    run = str(tmp_path / "run")
    shared, per_rank = objects(1)
    uri, _ = checkpoint.save(run, 1, shared, per_rank, {})
    assert set(checkpoint.load(uri, names=("model",))) == {"model"}  # names filter per-rank objects too
    assert set(checkpoint.load(uri, names=("model", "rng"))) == {"model", "rng"}
    assert set(checkpoint.load(uri, rank=1)) == {"model", "optim", "trainer"}  # no rank-1 files


def test_digest_is_deterministic_and_content_addressed(tmp_path):
    shared, per_rank = objects(2)
    _, d1 = checkpoint.save(str(tmp_path / "a"), 2, shared, per_rank, {"x": 1})
    _, d2 = checkpoint.save(str(tmp_path / "b"), 2, shared, per_rank, {"x": 1})
    _, d3 = checkpoint.save(str(tmp_path / "c"), 2, shared, per_rank, {"x": 2})
    assert d1 == d2 != d3


@pytest.mark.parametrize("victim", ["model.pt", "rng_rank0.pt"])
def test_tampered_file_fails_verification(tmp_path, victim):
    run = str(tmp_path / "run")
    uri, _ = checkpoint.save(run, 5, *objects(5), {})
    path = tmp_path / "run" / "step_000005" / victim
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size, different bytes
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=f"checksum mismatch for {victim}"):
        checkpoint.load(uri)


def test_missing_file_fails_load(tmp_path):
    uri, _ = checkpoint.save(str(tmp_path / "run"), 5, *objects(5), {})
    (tmp_path / "run" / "step_000005" / "model.pt").unlink()
    with pytest.raises((CheckpointError, FileNotFoundError)):
        checkpoint.load(uri)


def test_tampered_file_not_read_is_not_reported(tmp_path):
    # Only the files that are loaded are verified: a damaged optimizer does not block init-from.
    uri, _ = checkpoint.save(str(tmp_path / "run"), 5, *objects(5), {})
    (tmp_path / "run" / "step_000005" / "optim.pt").write_bytes(b"garbage")
    assert set(checkpoint.load(uri, names=("model",))) == {"model"}
    with pytest.raises(CheckpointError):
        checkpoint.load(uri)


def test_folder_without_manifest_is_not_a_checkpoint(tmp_path):
    uri, _ = checkpoint.save(str(tmp_path / "run"), 7, *objects(7), {})
    (tmp_path / "run" / "step_000007" / "manifest.json").unlink()
    with pytest.raises(CheckpointError, match="manifest.json is missing"):
        checkpoint.read_manifest(uri)
    with pytest.raises(CheckpointError, match="manifest.json is missing"):
        checkpoint.load(uri)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(CheckpointError):
        checkpoint.load(str(empty))


def test_latest_absent_and_committed_last(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    assert checkpoint.latest(str(run)) is None
    (run / "step_000009").mkdir()  # an uncommitted folder is not the latest checkpoint
    assert checkpoint.latest(str(run)) is None
    u1, _ = checkpoint.save(str(run), 1, *objects(1), {})
    u2, _ = checkpoint.save(str(run), 2, *objects(2), {})
    assert checkpoint.latest(str(run)) == u2 != u1
    assert (run / "latest").read_text() == "step_000002"
    # No staging folders are left behind.
    assert sorted(p.name for p in run.iterdir()) == ["latest", "step_000001", "step_000002", "step_000009"]


def test_resaving_the_same_step_replaces_it(tmp_path):
    run = str(tmp_path / "run")
    shared_a, rank_a = objects(10)
    shared_b, rank_b = objects(11)
    uri_a, digest_a = checkpoint.save(run, 4, shared_a, rank_a, {"tag": "a"})
    # The second save has a file the first one lacked, and lacks none: stale files must not survive.
    shared_b["extra"] = {"k": 1}
    uri_b, digest_b = checkpoint.save(run, 4, shared_b, rank_b, {"tag": "b"})
    assert uri_a == uri_b == checkpoint.latest(run)
    assert digest_a != digest_b
    manifest, digest = checkpoint.read_manifest(uri_b)
    assert digest == digest_b and manifest["tag"] == "b"
    state = checkpoint.load(uri_b)
    assert_state_equal(state["model"], shared_b["model"])
    assert state["extra"] == {"k": 1}
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["latest", "step_000004"]

    # A smaller re-save leaves no file from the earlier one behind.
    del shared_b["extra"]
    uri_c, _ = checkpoint.save(run, 4, shared_b, rank_b, {"tag": "c"})
    assert sorted(p.name for p in (tmp_path / "run" / "step_000004").iterdir()) == \
        ["manifest.json", "model.pt", "optim.pt", "rng_rank0.pt", "trainer.pt"]
    assert json.loads((tmp_path / "run" / "step_000004" / "manifest.json").read_text())["tag"] == "c"


def test_step_name():
    assert checkpoint.step_name(0) == "step_000000"
    assert checkpoint.step_name(123456) == "step_123456"
