"""Small helpers shared by the tests: environment save/restore, tiny curated data, torchrun."""

from __future__ import annotations

import contextlib
import io
import os
import re
import subprocess
import sys
import tarfile
import uuid
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
# The benchmark data: K25_DATA_ROOT, else ../shared/data beside the checkout (defined here only).
DATA_ROOT = Path(os.environ.get("K25_DATA_ROOT") or REPO_ROOT.parent / "shared" / "data").resolve()


def unique_name(prefix: str, sep: str = "-") -> str:
    """A lower-case name unique to this call (valid as an S3 bucket or PostgreSQL database name)."""
    return f"{prefix}{sep}{os.getpid()}{sep}{uuid.uuid4().hex[:10]}"


@contextlib.contextmanager
def patched_environ(set_vars: dict[str, str], unset: tuple[str, ...] = ()):
    """Set and unset environment variables, restoring the previous values on exit (usable at any
    fixture scope, unlike pytest's function-scoped monkeypatch)."""
    names = set(set_vars) | set(unset)
    saved = {name: os.environ.get(name) for name in names}
    try:
        for name in unset:
            os.environ.pop(name, None)
        os.environ.update(set_vars)
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


# ----------------------------------------------------------------------------------------------
# PostgreSQL URLs (the server the fixtures use: loopback, trust auth)

POSTGRES_ADMIN = {"host": "127.0.0.1", "port": 5432, "user": "postgres", "dbname": "postgres"}
# SQLAlchemy >= 2.1 maps a bare "postgresql://" to psycopg 3; the project ships psycopg2-binary.
SQLALCHEMY_PG_SCHEME = "postgresql+psycopg2"


def postgres_url_for(db: str, scheme: str = SQLALCHEMY_PG_SCHEME) -> str:
    a = POSTGRES_ADMIN
    return f"{scheme}://{a['user']}@{a['host']}:{a['port']}/{db}"


def libpq_url(url: str) -> str:
    """`postgresql+driver://...` -> `postgresql://...` (what psycopg2.connect accepts)."""
    scheme, sep, rest = url.partition("://")
    return f"{scheme.split('+', 1)[0]}{sep}{rest}"


# ----------------------------------------------------------------------------------------------
# Tiny curated data (a few seconds): real sources, test-sized caps

TINY_TEXT = {"max_docs_per_source": 20}
TINY_IMAGE = {"max_digits": 20}
TINY_VIDEO = {"max_chunks_per_video": 1}
TINY_VOCAB = 512


@dataclass
class TinyData:
    sets: dict  # name -> CuratedSet
    tokenizer: object  # TokenizerRef
    mixture: dict
    mixture_uri: str  # the mixture.json URI


def build_tiny_data(root_uri: str) -> TinyData:
    """Curate tiny text, image-text and video sets, train a tokenizer and build a mixture, all
    under `root_uri` (a local folder or s3:// prefix)."""
    from curation.image_text import ImageCurationConfig, curate_image_text
    from curation.mixture import MIXTURE_FILE, build_mixture
    from curation.text import TextCurationConfig, curate_text
    from curation.tokenizer import train_tokenizer
    from curation.video import VideoCurationConfig, curate_video
    from infra import storage

    sets = {
        "text": curate_text(storage.join(root_uri, "text"), TextCurationConfig(**TINY_TEXT)),
        "image_text": curate_image_text(storage.join(root_uri, "image_text"), ImageCurationConfig(**TINY_IMAGE)),
        "video": curate_video(storage.join(root_uri, "video"), VideoCurationConfig(**TINY_VIDEO)),
    }
    tok = train_tokenizer(sets["text"].uri, storage.join(root_uri, "tokenizer"), vocab_size=TINY_VOCAB)
    mix_root = storage.join(root_uri, "mixture")
    mixture = build_mixture(sets, tok, mix_root)
    return TinyData(sets, tok, mixture, storage.join(mix_root, MIXTURE_FILE))


# ----------------------------------------------------------------------------------------------
# Stage programs under torchrun

def stage_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment a stage program gets from the launcher (this process's environment, so
    the moto endpoint and credentials set by the fixtures travel along), with the data root set
    and no MLflow or Dagster Pipes state leaking in from the caller."""
    from infra import launcher

    env = launcher.program_env()
    env["OMP_NUM_THREADS"] = "1"
    env["K25_DATA_ROOT"] = str(DATA_ROOT)
    for name in ("MLFLOW_TRACKING_URI", "DAGSTER_PIPES_CONTEXT", "DAGSTER_PIPES_MESSAGES"):
        env.pop(name, None)
    env.update(extra or {})
    return env


def run_torchrun(module: str, args: list[str], nproc: int = 2, env: dict[str, str] | None = None,
                 timeout: float = 300) -> subprocess.CompletedProcess:
    """Run `python -m torch.distributed.run --standalone` on `module`; stdout and stderr merged."""
    from infra import launcher

    cmd = launcher.torchrun_command(module, args, nproc, sys.executable)
    return subprocess.run(cmd, cwd=str(REPO_ROOT), env=env or stage_env(), stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, timeout=timeout, check=False)


def run_tiny_stage(module: str, mixture: str, run_dir, sets: list[str], *extra: str,
                   timeout: float = 600) -> subprocess.CompletedProcess:
    """A stage program on the tiny profile under torchrun (2 ranks); `sets` are `--set` overrides."""
    args = ["--profile", "tiny", "--mixture", mixture, "--run-dir", str(run_dir),
            *(a for s in sets for a in ("--set", s)), *extra]
    return run_torchrun(module, args, timeout=timeout)


def logged(out: str, name: str) -> list[float]:
    """Every value a stage's console log gives metric `name` (not `prefix/name`)."""
    return [float(m) for m in re.findall(rf"(?<![/\w]){name} (-?[\d.e+-]+|nan)", out)]


# ----------------------------------------------------------------------------------------------
# Your own sources: real prose and WebDataset tars as a user brings them

PROSE = [
    "The river ran past the old mill and the children of the village would sit on the bank in the "
    "evening to watch the water turn the great wheel. Their grandmother told them that the mill had "
    "been built by her own father, who carried every stone from the quarry on the far side of the hill.",
    "A lighthouse keeper must climb the tower each night before dusk to trim the wick and wind the "
    "clockwork that turns the lens. If he is late, the ships that pass the reef in the dark have no "
    "way to know where the rocks lie, and so the keeper is never late, not even once in thirty years.",
    "In the spring the farmers of the valley plough their fields and sow barley and oats, and when the "
    "summer comes they watch the sky for rain. A dry year means that the cattle must be sold before the "
    "winter, because there will not be enough hay in the barns to feed them until the grass grows again.",
]


def write_tar(path, samples: list[tuple[str, dict[str, bytes]]]) -> None:
    with tarfile.open(path, "w") as tar:
        for key, fields in samples:
            for ext, data in fields.items():
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))


# ----------------------------------------------------------------------------------------------
# Servers the tests start on loopback (dg dev, MLflow, moto)

def free_port() -> int:
    """A free TCP port on 127.0.0.1."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def graphql(port: int, query: str, variables: dict | None = None) -> dict:
    """The `data` of a query to the Dagster webserver's GraphQL API on 127.0.0.1:port."""
    import json
    import urllib.request

    req = urllib.request.Request(f"http://127.0.0.1:{port}/graphql",
                                 data=json.dumps({"query": query, "variables": variables or {}}).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as resp:
        return json.loads(resp.read())["data"]
