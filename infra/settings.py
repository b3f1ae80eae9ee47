"""Where the embedded (single-machine) setup keeps its state, overridable by environment.

    K25_HOME            default ./.k25: artifacts/ and mlflow.db live here
    K25_ARTIFACT_ROOT   default $K25_HOME/artifacts; or s3://bucket/prefix
    MLFLOW_TRACKING_URI default sqlite:///$K25_HOME/mlflow.db; or http(s)://server, postgresql://...
    K25_DATA_ROOT       default ../shared/data: benchmark files (GSM8K, ...)
"""

from __future__ import annotations

import os
from pathlib import Path


def k25_home() -> Path:
    return Path(os.environ.get("K25_HOME", Path.cwd() / ".k25")).resolve()


def default_artifact_root() -> str:
    return os.environ.get("K25_ARTIFACT_ROOT", str(k25_home() / "artifacts"))


def default_tracking_uri() -> str:
    return os.environ.get("MLFLOW_TRACKING_URI", f"sqlite:///{k25_home() / 'mlflow.db'}")


def default_data_root() -> str:
    return str(Path(os.environ.get("K25_DATA_ROOT", Path.cwd().parent / "shared" / "data")).resolve())
