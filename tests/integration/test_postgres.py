"""PostgreSQL as the production store: Dagster instance storage (dagster-postgres) and the MLflow
tracking backend, each in its own fresh database on 127.0.0.1:5432."""

from __future__ import annotations

import json
import multiprocessing
import shutil

import dagster as dg
import helpers
import psycopg2
import pytest
from mlflow import MlflowClient

from curation.tokenizer import load_tokenizer
from definitions import build_definitions
from infra import storage
from infra.tracking import DatasetRef, Tracker, check_reachable

pytestmark = pytest.mark.integration

CURATION_ASSETS = ("text_corpus", "image_text_corpus", "video_corpus")
CURATION_CHECKS = ("has_samples", "rejected_fraction_below_threshold")
SELECTED = (*CURATION_ASSETS, "tokenizer")


def _query(url: str, sql: str, params: tuple = ()) -> list[tuple]:
    conn = psycopg2.connect(helpers.libpq_url(url), connect_timeout=5)
    try:
        with conn, conn.cursor() as cur:
            cur.execute(sql, params)
            return cur.fetchall()
    finally:
        conn.close()


def _shipped_instance(home, monkeypatch, db: str) -> None:
    """$DAGSTER_HOME/dagster.yaml is the shipped infra/deploy/dagster.postgres.yaml, unchanged, with
    the DAGSTER_PG_* variables the README names (the password empty: trust authentication)."""
    home.mkdir(parents=True, exist_ok=True)
    shutil.copy(helpers.REPO_ROOT / "infra" / "deploy" / "dagster.postgres.yaml", home / "dagster.yaml")
    a = helpers.POSTGRES_ADMIN
    for name, value in (("HOST", a["host"]), ("USER", a["user"]), ("PASSWORD", ""), ("DB", db)):
        monkeypatch.setenv(f"DAGSTER_PG_{name}", value)
    monkeypatch.setenv("DAGSTER_HOME", str(home))


# ----------------------------------------------------------------------------------------------
# (a) Dagster with PostgreSQL instance storage

def test_dagster_materializations_persist_in_postgres(tmp_path, monkeypatch, postgres_db_factory):
    monkeypatch.chdir(tmp_path)  # nothing relative (mlruns, .k25) may land in the repo
    monkeypatch.setenv("K25_DATA_ROOT", str(helpers.DATA_ROOT))
    home = tmp_path / "dagster_home"
    dagster_db = postgres_db_factory("k25_dagster")
    _shipped_instance(home, monkeypatch, dagster_db)
    postgres_url = helpers.postgres_url_for(dagster_db)
    mlflow_url = helpers.postgres_url_for(postgres_db_factory("k25_mlflow_dg"))

    defs = build_definitions(artifact_root=str(tmp_path / "art"), tracking_uri=mlflow_url)
    run_config = {"ops": {
        "text_corpus": {"config": helpers.TINY_TEXT},
        "image_text_corpus": {"config": helpers.TINY_IMAGE},
        "video_corpus": {"config": helpers.TINY_VIDEO},
        "tokenizer": {"config": {"vocab_size": helpers.TINY_VOCAB}},
    }}

    with dg.DagsterInstance.from_config(str(home)) as instance:
        # dagster.yaml took effect: no sqlite fallback
        assert type(instance.run_storage).__name__ == "PostgresRunStorage"
        assert type(instance.event_log_storage).__name__ == "PostgresEventLogStorage"
        result = dg.materialize(list(defs.assets), instance=instance, resources=defs.resources,
                                run_config=run_config, selection=list(SELECTED))
        assert result.success
        run_id = result.run_id
        produced = {e.asset_key.to_user_string() for e in result.get_asset_materialization_events()}
        assert produced == set(SELECTED)
    assert not (home / "history").exists()  # nothing went to the default sqlite storage

    # A fresh instance from the same dagster.yaml reads everything back from PostgreSQL.
    with dg.DagsterInstance.from_config(str(home)) as instance:
        run = instance.get_run_by_id(run_id)
        assert run is not None and run.is_success
        event = instance.get_latest_materialization_event(dg.AssetKey("tokenizer"))
        assert event is not None and event.run_id == run_id
        md = {k: v.value for k, v in event.asset_materialization.metadata.items()}
        tok_uri = md["tokenizer_uri"]
        assert tok_uri.startswith(str(tmp_path / "art"))
        assert md["digest"] == storage.sha256_bytes(storage.read_bytes(tok_uri))
        assert md["vocab_size"] == load_tokenizer(tok_uri).get_vocab_size()
        assert event.asset_materialization.tags["dagster/data_version"] == md["digest"]
        text_event = instance.get_latest_materialization_event(dg.AssetKey("text_corpus"))
        text_md = {k: v.value for k, v in text_event.asset_materialization.metadata.items()}
        assert md["text_digest"] == text_md["digest"] and md["trained_on"] == text_md["set_uri"]

        checks = [(a, c) for a in CURATION_ASSETS for c in CURATION_CHECKS] + [("tokenizer", "special_tokens_single_ids")]
        for asset, check in checks:
            record = instance.get_latest_asset_check_evaluation_record(dg.AssetCheckKey(dg.AssetKey(asset), check))
            assert record is not None, (asset, check)
            assert record.run_id == run_id
            assert record.status.value == "SUCCEEDED", (asset, check, record.status)

    # The rows themselves are in the Dagster database.
    materialized = _query(postgres_url, "SELECT asset_key FROM event_logs WHERE run_id = %s AND "
                          "dagster_event_type = 'ASSET_MATERIALIZATION'", (run_id,))
    assert sorted(json.loads(k)[0] for (k,) in materialized) == sorted(SELECTED)
    n_check_events = _query(postgres_url, "SELECT count(*) FROM event_logs WHERE run_id = %s AND "
                            "dagster_event_type = 'ASSET_CHECK_EVALUATION'", (run_id,))[0][0]
    assert n_check_events == len(checks)
    executions = _query(postgres_url, "SELECT asset_key, check_name, execution_status FROM asset_check_executions "
                        "WHERE run_id = %s", (run_id,))
    assert sorted((json.loads(a)[0], c, s) for a, c, s in executions) == sorted((a, c, "SUCCEEDED") for a, c in checks)
    assert _query(postgres_url, "SELECT status FROM runs WHERE run_id = %s", (run_id,)) == [("SUCCESS",)]

    # MLflow (its own PostgreSQL database) holds one child run per asset under the Dagster run.
    client = MlflowClient(mlflow_url)
    exp = client.get_experiment_by_name("k25")
    runs = client.search_runs([exp.experiment_id], filter_string=f"tags.`dagster.run_id` = '{run_id}'")
    stages = {r.data.tags.get("k25.stage") for r in runs}
    assert set(SELECTED) <= stages
    tok_run = next(r for r in runs if r.data.tags.get("k25.stage") == "tokenizer")
    assert tok_run.data.tags["k25.tokenizer_digest"] == md["digest"]
    assert tok_run.info.status == "FINISHED"


# ----------------------------------------------------------------------------------------------
# (b) MLflow with a PostgreSQL backend store

def test_mlflow_lineage_in_postgres(tmp_path, monkeypatch, postgres_db_factory):
    monkeypatch.chdir(tmp_path)
    db = postgres_db_factory("k25_mlflow")
    url = helpers.postgres_url_for(db)
    check_reachable(url)  # creates the schema on first use

    tracker = Tracker(url, experiment="k25-lineage", artifact_location=(tmp_path / "mlartifacts").as_uri())
    parent = tracker.parent_run("dagster-run-0001", "k25_job")
    assert tracker.parent_run("dagster-run-0001", "k25_job") == parent  # idempotent
    warmup = tracker.child_run(parent, "vit_warmup", {"dagster.asset_key": "vit_warmup"})
    joint = tracker.child_run(parent, "joint_pretrain")

    text_digest = storage.sha256_bytes(b"text set")
    tok_digest = storage.sha256_bytes(b"tokenizer")
    datasets = [DatasetRef("text", text_digest, "s3://bucket/curated/text/manifest.parquet"),
                DatasetRef("tokenizer", tok_digest, str(tmp_path / "tokenizer.json"))]
    tracker.log_datasets(warmup, datasets)
    tracker.log_metrics(warmup, {"loss": 2.5}, step=1, synchronous=True)
    tracker.log_metrics(warmup, {"loss": 1.5}, step=2, synchronous=True)
    ckpt_digest = storage.sha256_bytes(b"manifest")
    model_id = tracker.register_checkpoint(warmup, "vit_warmup", "s3://bucket/ckpt/step_000002", ckpt_digest, 2,
                                           {"lr": 0.003})
    tracker.log_model_input(joint, model_id)
    tracker.finish(warmup)
    tracker.finish(joint, "FAILED")

    # Read back through a fresh client.
    client = MlflowClient(url)
    run = client.get_run(warmup)
    assert run.info.status == "FINISHED"
    assert run.data.tags["mlflow.parentRunId"] == parent and run.data.tags["k25.stage"] == "vit_warmup"
    inputs = {d.dataset.name: d for d in run.inputs.dataset_inputs}
    assert set(inputs) == {"text", "tokenizer"}
    assert inputs["text"].dataset.digest == text_digest[:32]
    assert inputs["text"].dataset.source_type == "s3"
    assert inputs["text"].dataset.source == "s3://bucket/curated/text/manifest.parquet"
    assert inputs["tokenizer"].dataset.source_type == "local"
    text_tags = {t.key: t.value for t in inputs["text"].tags}
    assert text_tags["k25.sha256"] == text_digest and text_tags["mlflow.data.context"] == "training"
    assert [(o.model_id, o.step) for o in run.outputs.model_outputs] == [(model_id, 2)]
    assert [(m.step, m.value) for m in client.get_metric_history(warmup, "loss")] == [(1, 2.5), (2, 1.5)]

    model = client.get_logged_model(model_id)
    assert model.source_run_id == warmup and model.status.to_int() == model.status.READY.to_int()
    assert model.tags["checkpoint_uri"] == "s3://bucket/ckpt/step_000002"
    assert model.tags["digest"] == ckpt_digest and model.tags["step"] == "2"
    assert model.params == {"lr": "0.003"}

    downstream = client.get_run(joint)
    assert [m.model_id for m in downstream.inputs.model_inputs] == [model_id]
    assert downstream.info.status == "FAILED"
    children = client.search_runs([tracker.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{parent}'")
    assert {r.info.run_id for r in children} == {warmup, joint}

    # It is all in the PostgreSQL database (and a new Tracker finds the experiment again).
    assert Tracker(url, experiment="k25-lineage").experiment_id == tracker.experiment_id
    assert _query(url, "SELECT name, digest FROM datasets ORDER BY name") == [("text", text_digest[:32]),
                                                                             ("tokenizer", tok_digest[:32])]
    assert _query(url, "SELECT count(*) FROM runs WHERE experiment_id = %s", (int(tracker.experiment_id),))[0][0] == 3


def test_plain_postgresql_url_works_for_mlflow(postgres_db_factory):
    """The URL form the README documents (`postgresql://`, psycopg 3 driver) is usable as is."""
    url = helpers.postgres_url_for(postgres_db_factory("k25_plain"), scheme="postgresql")
    check_reachable(url)
    tracker = Tracker(url, "plain-url")
    run_id = tracker.child_run(tracker.parent_run("dagster-run-plain"), "sft")
    tracker.finish(run_id)
    assert MlflowClient(url).get_run(run_id).info.status == "FINISHED"


def _setup_tracking(url: str, barrier) -> None:
    from defs.resources import MlflowTracking

    barrier.wait()  # both processes reach the fresh database at the same moment
    MlflowTracking(tracking_uri=url).setup_for_execution(None)


def test_parallel_steps_create_the_mlflow_schema_of_a_fresh_postgres_database_once(postgres_db_factory):
    """Two step processes set up MLflow on a fresh PostgreSQL database at once (as parallel
    Dagster steps do): both succeed, the schema exists once."""
    url = helpers.postgres_url_for(postgres_db_factory("k25_mlflow_race"))
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(2)
    procs = [ctx.Process(target=_setup_tracking, args=(url, barrier)) for _ in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    assert [p.exitcode for p in procs] == [0, 0]
    assert _query(url, "SELECT count(*) FROM information_schema.tables WHERE table_name = 'experiments'") == [(1,)]
