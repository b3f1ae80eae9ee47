"""What may be shown: credentials are redacted from any text, and secrets reach resources as
environment variables (the UI then shows the variable's name, not its value)."""

import dagster as dg

from defs.resources import make_resources
from infra.settings import redacted


def test_passwords_in_uris_and_query_parameters_are_redacted():
    line = ("launching: --tracking-uri postgresql+psycopg2://k25:S3cret!@db:5432/mlflow "
            "s3://bucket/x https://user:tok@host/p?a=1&password=hunter2&token=abc")
    out = redacted(line)
    for secret in ("S3cret!", "hunter2", "tok@", "abc"):
        assert secret not in out, secret
    assert "postgresql+psycopg2://k25:***@db:5432/mlflow" in out and "s3://bucket/x" in out
    assert redacted("sqlite:////tmp/m.db http://127.0.0.1:5000") == "sqlite:////tmp/m.db http://127.0.0.1:5000"


def test_a_tracking_uri_from_the_environment_is_an_env_var_in_the_resource(monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "postgresql://u:pw@127.0.0.1/db")
    mlflow = make_resources()["mlflow"]
    assert isinstance(mlflow.tracking_uri, dg.EnvVar) and mlflow.tracking_uri == "MLFLOW_TRACKING_URI"
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    assert make_resources(tracking_uri="sqlite:///x.db")["mlflow"].tracking_uri == "sqlite:///x.db"


def test_the_mlflow_ui_address_defaults_to_a_tracking_server():
    from defs.resources import MlflowTracking

    assert MlflowTracking(tracking_uri="http://127.0.0.1:5000/").ui() == "http://127.0.0.1:5000"
    assert MlflowTracking(tracking_uri="postgresql://u:pw@h/db").ui() == ""
    assert MlflowTracking(tracking_uri="postgresql://u:pw@h/db", ui_url="https://mlflow.example.org/").ui() == \
        "https://mlflow.example.org"


def test_progress_counts_and_logs_with_an_eta_also_without_a_terminal():
    from infra.progress import track

    lines: list[str] = []
    assert list(track(range(5), "work", total=10, log=lines.append, every_s=0.0, unit="doc")) == list(range(5))
    assert lines[0] == "work: started (10 doc)"
    assert lines[1].startswith("work: 1/10 doc (10%)") and "ETA" in lines[1]
    assert lines[-1].startswith("work: done, 5/10 doc (50%)")
    lines.clear()
    list(track(iter("abc"), "stream", log=lines.append))  # no total: a count and a rate, no ETA
    assert lines[-1].startswith("stream: done, 3 it, ") and "ETA" not in lines[-1]
