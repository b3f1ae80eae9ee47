"""Typed references between stages: metadata round trips, verification against what lies in
storage, and the MLflow stage run that ends with the right status on every path."""

import json

import pytest
from mlflow import MlflowClient

from infra import storage
from infra.refs import CheckpointRef, MissingReference, MixtureRef
from infra.tracking import Tracker
from training import checkpoint


def _commit(run_dir, step=3, meta=None):
    return checkpoint.save(str(run_dir), step, {"model": {"w": 1}}, {}, {"stage": "sft", "profile": "tiny", **(meta or {})})


def test_checkpoint_ref_round_trips_through_metadata_and_verifies(tmp_path):
    uri, digest = _commit(tmp_path / "run")
    ref = CheckpointRef(uri=uri, digest=digest, stage="sft", step=3, model_id="m-1", profile="tiny")
    md = ref.to_metadata()
    assert md == {"checkpoint_uri": uri, "checkpoint_digest": digest, "stage": "sft", "steps": 3,
                  "mlflow_model_id": "m-1", "profile": "tiny"}

    class Materialization:  # what Dagster hands over: metadata values wrapped in `.value`
        metadata = {k: type("Value", (), {"value": v})() for k, v in md.items()}

    assert CheckpointRef.from_materialization(Materialization()) == ref
    assert ref.verify()["step"] == 3
    assert CheckpointRef.at(uri) == CheckpointRef(uri=uri, digest=digest, stage="sft", step=3, profile="tiny")


def test_checkpoint_ref_refuses_a_rewritten_or_missing_checkpoint(tmp_path):
    uri, digest = _commit(tmp_path / "run")
    with pytest.raises(MissingReference, match="lacks \\['checkpoint_digest'"):
        CheckpointRef.from_metadata({"checkpoint_uri": uri, "stage": "sft", "steps": 3})
    rewritten = CheckpointRef(uri=uri, digest="0" * 64, stage="sft", step=3)
    with pytest.raises(MissingReference, match="rewritten since it was recorded"):
        rewritten.verify()
    with pytest.raises(MissingReference, match="no checkpoint at"):
        CheckpointRef.at(str(tmp_path / "nowhere"))


def test_mixture_ref_reads_the_manifest_once_and_checks_its_digest(tmp_path):
    body = {"digest": "a" * 64, "sources": {}, "tokenizer": {}}
    storage.write_text(str(tmp_path / "mixture.json"), json.dumps(body))
    ref = MixtureRef.at(str(tmp_path))
    assert ref == MixtureRef(uri=str(tmp_path / "mixture.json"), digest="a" * 64)
    assert ref.verify() == body
    with pytest.raises(MissingReference, match="expected"):
        MixtureRef(uri=ref.uri, digest="b" * 64).verify()
    with pytest.raises(MissingReference, match="not found"):
        MixtureRef.at(str(tmp_path / "none"))


def test_load_model_needs_the_recorded_media_id(tmp_path):
    uri, digest = _commit(tmp_path / "run", meta={"model_config": {}})
    with pytest.raises(checkpoint.CheckpointError, match="media_pad_id"):
        checkpoint.load_model(CheckpointRef(uri=uri, digest=digest, stage="sft", step=3))


def test_a_closing_run_ends_finished_killed_or_failed_and_so_does_its_parent(tmp_path):
    tracker = Tracker(f"sqlite:///{tmp_path}/m.db", "k25-test", artifact_location=str(tmp_path / "art"))
    client = MlflowClient(tracker.tracking_uri)
    parent = tracker.parent_run("dagster-run-1")
    with tracker.closing(tracker.child_run(parent, "ok")) as ok:
        running = tracker.child_run(parent, "still running")
    assert client.get_run(ok).info.status == "FINISHED"
    assert client.get_run(parent).info.status == "RUNNING"  # a child is still running
    tracker.finish(running)
    assert client.get_run(parent).info.status == "FINISHED"
    with pytest.raises(KeyboardInterrupt):  # a stop from the UI
        with tracker.closing(tracker.child_run(parent, "stopped")) as stopped:
            raise KeyboardInterrupt
    assert client.get_run(stopped).info.status == "KILLED"
    assert client.get_run(parent).info.status == "KILLED"
    assert client.get_run(parent).info.end_time is not None
    with pytest.raises(ValueError):
        with tracker.closing(tracker.child_run(parent, "broken")) as broken:
            raise ValueError("bad")
    assert client.get_run(broken).info.status == "FAILED"
    assert client.get_run(parent).info.status == "FAILED"
    with tracker.closing(tracker.child_run(parent, "later ok")):
        pass
    assert client.get_run(parent).info.status == "FAILED"  # a failure of the Dagster run is final
