"""The artifact root on S3 (a moto server on loopback): storage, curated sets, checkpoints and a
2-rank torchrun that checkpoints to S3 and resumes from it."""

from __future__ import annotations

import io
import json

import helpers
import pytest
import torch

from curation.shards import CuratedSet, iter_samples
from curation.text import TextCurationConfig, curate_text
from curation.tokenizer import train_tokenizer
from infra import storage
from training import checkpoint

pytestmark = pytest.mark.integration


def _keys(uris: list[str], root: str) -> list[str]:
    return [u[len(root.rstrip("/")) + 1:] for u in uris]


def _bucket_keys(s3_uri: str) -> list[str]:
    bucket, prefix = s3_uri[len("s3://"):].split("/", 1)
    resp = storage.s3_client().list_objects_v2(Bucket=bucket, Prefix=prefix)
    return sorted(o["Key"] for o in resp.get("Contents", []))


# ----------------------------------------------------------------------------------------------
# (a) storage

def test_storage_round_trip_on_s3(s3_bucket, tmp_path):
    root = s3_bucket
    assert storage.is_s3(root)
    assert storage.join(root, "a/", "/b.txt") == f"{root}/a/b.txt"

    # bytes and text
    storage.write_bytes(storage.join(root, "data", "blob.bin"), b"\x00\x01binary")
    storage.write_text(storage.join(root, "data", "sub", "note.txt"), "héllo s3")
    storage.write_text(storage.join(root, "data2", "other.txt"), "sibling prefix")
    assert storage.read_bytes(storage.join(root, "data", "blob.bin")) == b"\x00\x01binary"
    assert storage.read_text(storage.join(root, "data", "sub", "note.txt")) == "héllo s3"
    # the object really is in the bucket, under the prefix
    assert f"{root.split('/', 3)[3]}/data/sub/note.txt" in _bucket_keys(root)

    # exists
    assert storage.exists(storage.join(root, "data", "blob.bin"))
    assert not storage.exists(storage.join(root, "data", "missing.bin"))
    assert not storage.exists(storage.join(root, "data"))  # a prefix is not an object

    # list: recursive, sorted, and "data" does not match the sibling prefix "data2"
    data = storage.join(root, "data")
    assert _keys(storage.list_files(data), data) == ["blob.bin", "sub/note.txt"]
    assert _keys(storage.list_files(data + "/"), data) == ["blob.bin", "sub/note.txt"]
    assert storage.list_files(storage.join(root, "nothing-here")) == []

    # upload / download / local_copy
    payload = bytes(range(256)) * 1000
    src = tmp_path / "src.bin"
    src.write_bytes(payload)
    uri = storage.join(root, "files", "src.bin")
    storage.upload_file(src, uri)
    assert storage.read_bytes(uri) == payload
    got = storage.download_file(uri, tmp_path / "dl" / "deep" / "copy.bin")
    assert got.read_bytes() == payload
    assert storage.sha256_file(got) == storage.sha256_bytes(payload)
    cached = storage.local_copy(uri, tmp_path / "cache")
    assert cached.is_file() and cached.read_bytes() == payload
    assert tmp_path / "cache" in cached.parents

    # overwrite replaces the object
    storage.write_text(uri, "replaced")
    assert storage.read_text(uri) == "replaced"

    # missing keys
    with pytest.raises(FileNotFoundError):
        storage.read_bytes(storage.join(root, "data", "missing.bin"))
    with pytest.raises(FileNotFoundError):
        storage.read_text(storage.join(root, "no", "such", "key.txt"))

    # the writability probe passes on the bucket and names the root when the bucket is missing
    storage.check_root_writable(root)
    bad = "s3://k25-no-such-bucket-for-tests/x"
    with pytest.raises(RuntimeError, match="k25-no-such-bucket-for-tests"):
        storage.check_root_writable(bad)


# ----------------------------------------------------------------------------------------------
# (b) curated sets

def test_curated_text_set_on_s3_matches_local(s3_bucket, tmp_path):
    cfg = TextCurationConfig(max_docs_per_source=20, shard_maxcount=15)  # several shards
    local = curate_text(str(tmp_path / "text"), cfg)
    remote = curate_text(storage.join(s3_bucket, "curated", "text"), cfg)

    assert remote.num_shards > 1
    assert remote.uri == storage.join(s3_bucket, "curated", "text")
    assert (remote.digest, remote.num_samples, remote.shards) == (local.digest, local.num_samples, local.shards)
    # shard bytes are identical on both backends
    for name in remote.shards:
        assert storage.read_bytes(storage.join(remote.uri, name)) == storage.read_bytes(storage.join(local.uri, name))
    # curated.json on S3 describes the S3 copy
    stored = CuratedSet.load(remote.uri)
    assert stored.digest == local.digest and stored.uri == remote.uri
    assert stored.manifest_uri == storage.join(remote.uri, "manifest.parquet")
    assert storage.exists(stored.manifest_uri)

    # reading back from S3 gives exactly the local samples, in order
    remote_samples = list(iter_samples(remote.uri))
    assert len(remote_samples) == remote.num_samples > 0
    assert remote_samples == list(iter_samples(local.uri))

    # a tokenizer trained from the S3 set and written to S3 matches the local one byte for byte
    tok_remote = train_tokenizer(remote.uri, storage.join(s3_bucket, "tokenizer"), vocab_size=400)
    tok_local = train_tokenizer(local.uri, str(tmp_path / "tokenizer"), vocab_size=400)
    assert tok_remote.uri.startswith("s3://")
    assert tok_remote.digest == tok_local.digest == storage.sha256_bytes(storage.read_bytes(tok_remote.uri))


# ----------------------------------------------------------------------------------------------
# (c) checkpoints

def _state(step: int) -> tuple[dict, dict]:
    shared = {"model": {"w": torch.arange(6.0).reshape(2, 3) * step}, "trainer": {"step": step}}
    per_rank = {"rng": {"torch": torch.get_rng_state()}}
    return shared, per_rank


def test_checkpoint_commit_protocol_on_s3(s3_bucket, monkeypatch):
    run_dir = storage.join(s3_bucket, "checkpoints", "run1")
    assert checkpoint.latest(run_dir) is None

    # Record every object write (checkpoint.py writes through storage.write_bytes/write_text).
    writes: list[str] = []
    real_write_bytes = storage.write_bytes

    def recording_write_bytes(uri, data):
        writes.append(uri)
        return real_write_bytes(uri, data)

    monkeypatch.setattr(storage, "write_bytes", recording_write_bytes)

    shared, per_rank = _state(1)
    uri, digest = checkpoint.save(run_dir, 1, shared, per_rank, {"stage": "test"})
    assert uri == storage.join(run_dir, "step_000001")

    # order: the data files, then manifest.json, then `latest` last
    names = [w[len(run_dir) + 1:] for w in writes]
    assert names[-1] == "latest"
    assert names[-2] == "step_000001/manifest.json"
    assert sorted(names[:-2]) == ["step_000001/model.pt", "step_000001/rng_rank0.pt", "step_000001/trainer.pt"]

    assert checkpoint.latest(run_dir) == uri
    manifest, manifest_digest = checkpoint.read_manifest(uri)
    assert manifest_digest == digest
    assert digest == storage.sha256_bytes(storage.read_bytes(storage.join(uri, "manifest.json")))
    assert manifest["step"] == 1 and manifest["world_size"] == 1 and manifest["stage"] == "test"
    assert sorted(manifest["files"]) == ["model.pt", "rng_rank0.pt", "trainer.pt"]
    for fname, entry in manifest["files"].items():
        data = storage.read_bytes(storage.join(uri, fname))
        assert entry == {"bytes": len(data), "sha256": storage.sha256_bytes(data)}

    # load: all objects, or only the named ones
    state = checkpoint.load(uri, rank=0)
    assert set(state) == {"model", "trainer", "rng"}
    assert torch.equal(state["model"]["w"], shared["model"]["w"])
    assert state["trainer"] == {"step": 1}
    assert torch.equal(state["rng"]["torch"], per_rank["rng"]["torch"])
    assert set(checkpoint.load(uri, names=("model",))) == {"model"}

    # A save that dies before its manifest: the step folder holds files but is no checkpoint,
    # and `latest` still names the last committed one.
    def dying_write_bytes(uri_, data):
        if uri_.endswith("step_000002/manifest.json"):
            raise OSError("simulated crash before the manifest")
        return recording_write_bytes(uri_, data)

    monkeypatch.setattr(storage, "write_bytes", dying_write_bytes)
    with pytest.raises(OSError, match="simulated crash"):
        checkpoint.save(run_dir, 2, *_state(2), {"stage": "test"})
    monkeypatch.setattr(storage, "write_bytes", real_write_bytes)

    partial = storage.join(run_dir, "step_000002")
    assert storage.exists(storage.join(partial, "model.pt"))  # the files did land
    with pytest.raises(checkpoint.CheckpointError, match="manifest.json is missing"):
        checkpoint.read_manifest(partial)
    with pytest.raises(checkpoint.CheckpointError):
        checkpoint.load(partial)
    assert checkpoint.latest(run_dir) == uri
    assert checkpoint.load(checkpoint.latest(run_dir))["trainer"] == {"step": 1}

    # A later successful save moves `latest` forward.
    uri3, digest3 = checkpoint.save(run_dir, 3, *_state(3), {"stage": "test"})
    assert checkpoint.latest(run_dir) == uri3 and digest3 != digest
    assert storage.read_text(storage.join(run_dir, "latest")) == "step_000003"
    assert checkpoint.load(uri3)["trainer"] == {"step": 3}

    # A corrupted object is detected against the manifest.
    buf = io.BytesIO()
    torch.save({"w": torch.zeros(2, 3)}, buf)
    storage.write_bytes(storage.join(uri3, "model.pt"), buf.getvalue())
    with pytest.raises(checkpoint.CheckpointError, match="checksum mismatch for model.pt"):
        checkpoint.load(uri3)


# ----------------------------------------------------------------------------------------------
# (d) a 2-rank torchrun with its run directory and data on S3

def test_torchrun_checkpoints_to_s3_and_resumes(s3_bucket):
    data = helpers.build_tiny_data(storage.join(s3_bucket, "data"))
    assert data.mixture_uri.startswith("s3://") and all(s.uri.startswith("s3://") for s in data.sets.values())
    run_dir = storage.join(s3_bucket, "checkpoints", "joint_pretrain")
    env = helpers.stage_env()
    assert env["AWS_ENDPOINT_URL_S3"].startswith("http://127.0.0.1:")

    def launch(steps: int, resume: str, run: str = run_dir):
        args = ["--stage", "joint_pretrain", "--profile", "tiny", "--set", f"train.steps={steps}", "--set", "checkpoint.every=2",
                "--set", "train.log_every=1", "--mixture", data.mixture_uri, "--run-dir", run, "--resume", resume]
        return helpers.run_torchrun("training.pretrain", args, nproc=2, env=env)

    # --resume must with nothing committed fails before training
    empty = storage.join(s3_bucket, "checkpoints", "empty")
    proc = launch(2, "must", empty)
    assert proc.returncode != 0, proc.stdout[-4000:]
    assert "no committed checkpoint" in proc.stdout

    # first launch: 2 steps, one checkpoint committed to S3
    proc = launch(2, "auto")
    assert proc.returncode == 0, proc.stdout[-4000:]
    out1 = proc.stdout
    assert "resumed from" not in out1
    assert "step 2/2" in out1
    first = storage.join(run_dir, "step_000002")
    assert f"checkpoint step 2 committed: {first}" in out1
    assert checkpoint.latest(run_dir) == first
    manifest, _ = checkpoint.read_manifest(first)
    assert manifest["step"] == 2 and manifest["world_size"] == 2
    assert {"model.pt", "optim.pt", "trainer.pt", "rng_rank0.pt", "rng_rank1.pt"} <= set(manifest["files"])
    assert manifest["mixture_digest"] == data.mixture["digest"]
    state = checkpoint.load(first, rank=1, names=("trainer", "rng"))
    assert state["trainer"]["step"] == 2 and "rng" in state

    # second launch: 4 steps, must resume at step 2 from S3 and finish at step 4
    proc = launch(4, "must")
    assert proc.returncode == 0, proc.stdout[-4000:]
    out2 = proc.stdout
    assert f"resumed from {first} at step 2" in out2
    assert "from step 2" in out2
    assert "step 1/4" not in out2 and "step 2/4" not in out2  # no step was trained twice
    assert "step 3/4" in out2 and "step 4/4" in out2
    final = storage.join(run_dir, "step_000004")
    assert checkpoint.latest(run_dir) == final
    manifest, _ = checkpoint.read_manifest(final)
    assert manifest["step"] == 4 and manifest["world_size"] == 2
    assert checkpoint.load(final, names=("trainer",))["trainer"]["step"] == 4
    # both committed steps are on S3 and each has its manifest
    listed = _keys(storage.list_files(run_dir), run_dir)
    assert "latest" in listed
    assert {"step_000002/manifest.json", "step_000004/manifest.json"} <= set(listed)
    assert json.loads(storage.read_text(storage.join(final, "manifest.json")))["stage"] == "joint_pretrain"


def test_text_sources_on_s3(s3_bucket, tmp_path):
    """Your own JSONL and WebDataset text sources on S3, streamed by the one shard reader."""
    import dataclasses
    import json

    from helpers import PROSE, write_tar

    from curation.text import TextCurationConfig, curate_text

    storage.write_bytes(f"{s3_bucket}/in/a.jsonl", (json.dumps({"text": PROSE[0]}) + "\n").encode())
    write_tar(tmp_path / "s.tar", [("k0", {"txt": PROSE[1].encode()})])
    storage.upload_file(tmp_path / "s.tar", f"{s3_bucket}/wds/s-000.tar")
    cfg = dataclasses.replace(TextCurationConfig(min_chars=100),
                              sources=[f"jsonl:{s3_bucket}/in/", f"webdataset:{s3_bucket}/wds"])
    curated = curate_text(f"{s3_bucket}/out", cfg)
    assert sorted(s["text"] for s in iter_samples(curated.uri)) == sorted(PROSE[:2])
    assert storage.exists(curated.quarantine_uri)


def test_a_stage_reports_through_the_s3_pipes_channel(s3_bucket, tmp_path, monkeypatch):
    """The channel for programs off the orchestrator's machine (dagster-aws): the launcher names a
    bucket, the program writes its Pipes messages there, the materialization arrives through it."""
    import re

    import dagster as dg

    from definitions import build_definitions
    from defs.resources import TorchrunLauncher

    monkeypatch.setenv("K25_DATA_ROOT", str(helpers.DATA_ROOT))
    monkeypatch.chdir(tmp_path)
    bucket = s3_bucket.split("/")[2]
    defs = build_definitions(artifact_root=s3_bucket, tracking_uri=f"sqlite:///{tmp_path}/mlflow.db")
    resources = {**defs.resources, "launcher": TorchrunLauncher(messages_bucket=bucket)}
    config = {"text_corpus": helpers.TINY_TEXT, "image_text_corpus": {**helpers.TINY_IMAGE, "include_skimage": False},
              "video_corpus": helpers.TINY_VIDEO, "tokenizer": {"vocab_size": helpers.TINY_VOCAB},
              "vit_warmup": {"phase_steps": [2, 1], "checkpoint": {"every": 2}}}
    (tmp_path / "dagster").mkdir()
    with dg.instance_for_test(temp_dir=str(tmp_path / "dagster")) as instance:
        result = dg.materialize(list(defs.assets), instance=instance, resources=resources,
                                run_config={"ops": {k: {"config": v} for k, v in config.items()}},
                                selection=[*config, "mixture"])
        assert result.success
        md = instance.get_latest_materialization_event(dg.AssetKey("vit_warmup")).asset_materialization.metadata
    manifest, digest = checkpoint.read_manifest(md["checkpoint_uri"].value)
    assert md["checkpoint_digest"].value == digest and manifest["step"] == 1
    messages = [k for k in _bucket_keys(f"s3://{bucket}/") if re.fullmatch(r"[A-Za-z]{30}/\d+\.json", k)]
    assert messages, "no Pipes message went through the bucket"
