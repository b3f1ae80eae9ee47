"""The production settings as a user starts them (scripts/production-local.sh, the shipped
PostgreSQL instance file, everything else from the environment): Dagster on PostgreSQL, MLflow
as a server on PostgreSQL with artifacts on S3, the artifact root on moto's S3 server, all on
127.0.0.1, each on fresh databases; and no credential anywhere a person or a log can read it."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
import urllib.request

import dagster as dg
import helpers
import pytest
from mlflow import MlflowClient

from infra import storage

pytestmark = pytest.mark.integration

SCRIPT = helpers.REPO_ROOT / "scripts" / "production-local.sh"
DATA_CONFIG = {
    "text_corpus": {"max_docs_per_source": 20},
    "image_text_corpus": {"max_digits": 20, "include_skimage": False},
    "video_corpus": {"max_chunks_per_video": 1},
    "tokenizer": {"vocab_size": helpers.TINY_VOCAB},
    "vit_warmup": {"phase_steps": [2, 1], "checkpoint": {"every": 2}},
}
SELECTED = [*DATA_CONFIG, "mixture"]
PASSWORD = "K25-known-Pa55word"  # trust authentication accepts it; it must never be shown
AWS_SECRET = "K25-known-aws-secret-key"


def read_env_file(path) -> dict[str, str]:
    """The variables `production-local.sh up` wrote (`export A=1 B='x'` lines)."""
    out = {}
    for line in path.read_text().splitlines():
        for item in shlex.split(line.removeprefix("export ")):
            key, _, value = item.partition("=")
            out[key] = value
    return out


@pytest.fixture
def production(tmp_path, postgres_db_factory, monkeypatch):
    """`production-local.sh up` on fresh databases and free ports; the environment it wrote is
    this test's; `down` afterwards."""
    if not shutil.which("psql") or not shutil.which("curl"):
        pytest.skip("production-local.sh needs psql and curl")
    home = tmp_path / "prod"
    settings = {"K25_PROD_HOME": str(home), "DAGSTER_PG_DB": postgres_db_factory("k25_prod_dagster"),
                "K25_MLFLOW_DB": postgres_db_factory("k25_prod_mlflow"), "K25_MLFLOW_PORT": str(helpers.free_port()),
                "K25_S3_PORT": str(helpers.free_port()), "K25_BUCKET": "k25-prod"}
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "MLFLOW_TRACKING", "K25_ARTIFACT"))}
    env.update(settings, PYTHON=sys.executable, PATH=f"{os.path.dirname(sys.executable)}:{env['PATH']}")
    up = subprocess.run(["bash", str(SCRIPT), "up"], env=env, capture_output=True, text=True, timeout=180)
    try:
        assert up.returncode == 0, up.stdout + up.stderr
        written = read_env_file(home / "env")
        for key in [k for k in os.environ if k.startswith("AWS_")]:
            monkeypatch.delenv(key)
        for key, value in written.items():
            monkeypatch.setenv(key, value)
        monkeypatch.setenv("K25_DATA_ROOT", str(helpers.DATA_ROOT))
        monkeypatch.chdir(tmp_path)
        storage.s3_client.cache_clear()
        yield written
    finally:
        subprocess.run(["bash", str(SCRIPT), "down"], env=env, capture_output=True, timeout=60)
        storage.s3_client.cache_clear()


def materialize(selection: list[str]):
    from definitions import build_definitions

    defs = build_definitions()  # every setting from the environment, as `dg dev` reads it
    instance = dg.DagsterInstance.get()  # $DAGSTER_HOME/dagster.yaml: the shipped PostgreSQL file
    assert type(instance.run_storage).__name__ == "PostgresRunStorage"
    run_config = {"ops": {k: {"config": v} for k, v in DATA_CONFIG.items()}}
    result = dg.materialize(list(defs.assets), instance=instance, resources=defs.resources, run_config=run_config,
                            selection=selection, raise_on_error=False)
    return defs, instance, result


def test_the_production_settings_materialize_data_and_a_training_stage_first_try(production):
    defs, instance, result = materialize(SELECTED)
    with instance:
        assert result.success, [str(e.event_specific_data) for e in result.all_events if e.is_failure]
        event = instance.get_latest_materialization_event(dg.AssetKey("vit_warmup"))
        md = event.asset_materialization.metadata
    # the checkpoint is on S3, under the artifact root the environment names
    uri = md["checkpoint_uri"].value
    assert uri.startswith("s3://k25-prod/artifacts/checkpoints/vit_warmup/")
    assert storage.exists(storage.join(uri, "manifest.json"))
    # MLflow is the server: the run ended FINISHED with its params, its curve stored on S3 through
    # the server, and Dagster links to the run and the checkpoint's LoggedModel in its UI
    client = MlflowClient(production["MLFLOW_TRACKING_URI"])
    run = client.get_run(md["mlflow_run_id"].value)
    assert run.info.status == "FINISHED" and run.data.params["profile"] == "tiny"
    assert [a.path for a in client.list_artifacts(run.info.run_id, "plots")] == ["plots/vit_warmup_curves.png"]
    assert any(k.startswith("k25-prod/mlflow/") for k in _bucket_keys("k25-prod"))
    link, model_link = md["mlflow_run"], md["mlflow_model"]
    assert isinstance(link, dg.UrlMetadataValue) and isinstance(model_link, dg.UrlMetadataValue)
    ui = production["K25_MLFLOW_UI_URL"]
    assert link.url == f"{ui}/#/experiments/{run.info.experiment_id}/runs/{run.info.run_id}"
    assert model_link.url.endswith(f"/models/{md['mlflow_model_id'].value}")
    with urllib.request.urlopen(link.url.split("#")[0], timeout=10) as page:
        assert page.status == 200 and b"<html" in page.read(2000).lower()


def _bucket_keys(bucket: str) -> list[str]:
    keys = []
    for page in storage.s3_client().get_paginator("list_objects_v2").paginate(Bucket=bucket):
        keys += [f"{bucket}/{o['Key']}" for o in page.get("Contents", [])]
    return keys


def test_no_credential_appears_in_the_event_log_metadata_logs_resources_or_mlflow(
        tmp_path, monkeypatch, postgres_db_factory, s3_bucket, capfd):
    """A known database password (DAGSTER_PG_PASSWORD, and in MLFLOW_TRACKING_URI: MLflow on
    PostgreSQL directly) and a known AWS secret key, then a materialization with a training
    stage; neither appears in anything a person or a log reads."""
    from dagster._core.remote_representation.external_data import RepositorySnap
    from dagster_shared.serdes import serialize_value

    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copy(helpers.REPO_ROOT / "infra" / "deploy" / "dagster.postgres.yaml", home / "dagster.yaml")
    a = helpers.POSTGRES_ADMIN
    mlflow_db = postgres_db_factory("k25_secret_mlflow")
    for key, value in {"DAGSTER_HOME": str(home), "DAGSTER_PG_HOST": a["host"], "DAGSTER_PG_USER": a["user"],
                       "DAGSTER_PG_PASSWORD": PASSWORD, "DAGSTER_PG_DB": postgres_db_factory("k25_secret_dagster"),
                       "MLFLOW_TRACKING_URI": f"postgresql+psycopg2://{a['user']}:{PASSWORD}@{a['host']}:5432/{mlflow_db}",
                       "AWS_SECRET_ACCESS_KEY": AWS_SECRET, "K25_ARTIFACT_ROOT": s3_bucket,
                       "K25_DATA_ROOT": str(helpers.DATA_ROOT), "K25_HOME": str(tmp_path / "k25")}.items():
        monkeypatch.setenv(key, value)
    monkeypatch.chdir(tmp_path)
    storage.s3_client.cache_clear()  # the new secret key
    defs, instance, result = materialize(SELECTED)
    with instance:
        assert result.success, [str(e.event_specific_data) for e in result.all_events if e.is_failure]
        places = {"event log": "\n".join(serialize_value(r) for r in instance.all_logs(result.run_id)),
                  "run config and tags": serialize_value(instance.get_run_by_id(result.run_id))}
    snap = RepositorySnap.from_def(defs.get_repository_def())
    places["resources as the UI shows them"] = serialize_value(snap.resources)
    assert "MLFLOW_TRACKING_URI" in places["resources as the UI shows them"]  # the variable's name, not its value
    out, err = capfd.readouterr()
    places["process output (launch line, program logs)"] = out + err
    assert "launching:" in out + err or "launching:" in places["event log"]
    client = MlflowClient(os.environ["MLFLOW_TRACKING_URI"])
    exp = client.get_experiment_by_name("k25")
    runs = client.search_runs([exp.experiment_id])
    assert len(runs) >= len(SELECTED)
    places["MLflow tags and params"] = json.dumps([[r.data.tags, r.data.params] for r in runs])
    models = client.search_logged_models([exp.experiment_id])
    assert models
    places["MLflow models"] = json.dumps([[m.tags, m.params] for m in models])
    places["files under the artifact root"] = "\n".join(
        storage.read_bytes(u).decode("utf-8", "replace") for u in storage.list_files(s3_bucket)
        if u.endswith((".json", ".md", ".jsonl", ".txt")))
    for where, text in places.items():
        assert PASSWORD not in text, f"the database password appears in the {where}"
        assert AWS_SECRET not in text, f"the AWS secret key appears in the {where}"
