"""Shared fixtures: an S3 server on loopback (moto) and fresh PostgreSQL databases.

Both servers are started or reached once per session; each test gets its own bucket or database
name, so tests never see each other's state. Only loopback addresses are used.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))  # `import helpers` from any test folder
_REPO = str(Path(__file__).resolve().parents[1])
if _REPO not in sys.path:  # the project packages, also when pytest is not started from the repo
    sys.path.insert(0, _REPO)

import helpers

from curation.image_text import ImageCurationConfig, curate_image_text
from curation.mixture import build_mixture, read_mixture
from curation.text import TextCurationConfig, curate_text
from curation.tokenizer import train_tokenizer
from curation.video import VideoCurationConfig, curate_video
from training.data import load_vocab

# MLflow's usage telemetry calls an outside address; tests (and the programs they start) talk to
# loopback only.
os.environ["MLFLOW_DISABLE_TELEMETRY"] = "true"
os.environ["DO_NOT_TRACK"] = "true"

LOOPBACK = "127.0.0.1"


# ----------------------------------------------------------------------------------------------
# S3 (moto server mode, so subprocesses such as torchrun ranks reach it too)

@pytest.fixture(scope="session")
def s3_server():
    """The endpoint URL of a moto S3 server on 127.0.0.1 (ephemeral port).

    For the session, AWS_ENDPOINT_URL_S3 points at it and dummy credentials are set, so plain
    `boto3.client("s3")` in this process and in every child process targets moto; the previous
    environment is restored afterwards. `storage.s3_client` is re-created on both edges."""
    pytest.importorskip("moto.server", reason="moto[server] is not installed")
    from moto.server import ThreadedMotoServer

    from infra import storage

    server = ThreadedMotoServer(ip_address=LOOPBACK, port=0, verbose=False)  # never 0.0.0.0
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    env = {
        "AWS_ENDPOINT_URL_S3": endpoint,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        # no real profile or credentials file may leak in
        "AWS_CONFIG_FILE": os.devnull,
        "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
    }
    unset = ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN", "AWS_ENDPOINT_URL", "AWS_REGION")
    try:
        with helpers.patched_environ(env, unset):
            storage.s3_client.cache_clear()
            yield endpoint
    finally:
        storage.s3_client.cache_clear()
        server.stop()


@pytest.fixture
def s3_bucket(s3_server):
    """`s3://<fresh bucket>/<prefix>` on the session's moto server."""
    from infra import storage

    bucket = helpers.unique_name("k25-test")
    storage.s3_client().create_bucket(Bucket=bucket)
    return f"s3://{bucket}/k25"


# ----------------------------------------------------------------------------------------------
# PostgreSQL: fresh databases on the server at 127.0.0.1:5432 (trust auth)

def _admin_connection():
    import psycopg2

    conn = psycopg2.connect(connect_timeout=3, **helpers.POSTGRES_ADMIN)
    conn.autocommit = True  # CREATE/DROP DATABASE cannot run inside a transaction
    return conn


@pytest.fixture(scope="session")
def postgres_db_factory():
    """`make(prefix) -> database name`: creates a fresh, uniquely named database; every database
    made this way is dropped at the end of the session (WITH (FORCE) closes pooled connections
    that Dagster or MLflow still hold). Skips when PostgreSQL is not reachable."""
    psycopg2 = pytest.importorskip("psycopg2", reason="psycopg2 is not installed")
    try:
        admin = _admin_connection()
    except psycopg2.OperationalError as e:
        a = helpers.POSTGRES_ADMIN
        why = f"PostgreSQL is not reachable at {a['host']}:{a['port']} as user {a['user']}: {str(e).strip()}"
        if os.environ.get("CI"):  # CI machines run PostgreSQL: its absence is a failure there
            pytest.fail(why)
        pytest.skip(why)
    created: list[str] = []

    def make(prefix: str = "k25_test") -> str:
        name = helpers.unique_name(prefix, sep="_")
        with admin.cursor() as cur:
            cur.execute(f'CREATE DATABASE "{name}"')
        created.append(name)
        return name

    try:
        yield make
    finally:
        with admin.cursor() as cur:
            for name in created:
                cur.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()


@pytest.fixture(scope="session")
def postgres_url(postgres_db_factory):
    """SQLAlchemy URL `postgresql+psycopg2://postgres@127.0.0.1:5432/<fresh db>` (one per session,
    dropped afterwards), usable by dagster-postgres and MLflow; `helpers.libpq_url` turns it into
    a URL for psycopg2.connect. The plain `postgresql://` form (psycopg 3) is tested in
    test_postgres.py as well."""
    return helpers.postgres_url_for(postgres_db_factory("k25_test"))


# ----------------------------------------------------------------------------------------------
# tiny curated data (real sources, small): one build per session for the loader tests

@pytest.fixture(scope="session")
def tiny(tmp_path_factory):
    """(mixture manifest, Vocab) of a small curated data set with its tokenizer."""
    from curation.mixture import read_mixture
    from training.data import load_vocab

    data = helpers.build_tiny_data(str(tmp_path_factory.mktemp("tiny-data")))
    mixture = read_mixture(data.mixture_uri)
    return mixture, load_vocab(mixture)


# A tiny real mixture and its trained tokenizer, shared by the loader and chat tests.
@pytest.fixture(scope="session")
def mixture(tmp_path_factory):
    root = tmp_path_factory.mktemp("loader-data")
    text = curate_text(str(root / "text"), TextCurationConfig(max_docs_per_source=20, max_chars=2000))
    image = curate_image_text(str(root / "image"), ImageCurationConfig(max_digits=30, include_skimage=False))
    video = curate_video(str(root / "video"), VideoCurationConfig(max_chunks_per_video=1))
    tok = train_tokenizer(text.uri, str(root / "tokenizer"), vocab_size=512)
    build_mixture({"text": text, "image": image, "video": video}, tok, str(root / "mixture"))
    return read_mixture(str(root / "mixture"))  # as the stage programs read it


@pytest.fixture(scope="session")
def vocab(mixture):
    return load_vocab(mixture)
