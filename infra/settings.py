"""Where the embedded (single-machine) setup keeps its state, overridable by environment.

    K25_HOME            default ./.k25: artifacts/ and mlflow.db live here
    K25_ARTIFACT_ROOT   default $K25_HOME/artifacts; or s3://bucket/prefix
    MLFLOW_TRACKING_URI default sqlite:///$K25_HOME/mlflow.db; or http(s)://server, postgresql://...
    K25_DATA_ROOT       default ../shared/data: benchmark files (GSM8K, ...)
    K25_MLFLOW_UI_URL   where the MLflow UI is (default: MLFLOW_TRACKING_URI when it is a server);
                        Dagster links every run and checkpoint there
"""

from __future__ import annotations

import os
import re
from pathlib import Path


def k25_home() -> Path:
    return Path(os.environ.get("K25_HOME", Path.cwd() / ".k25")).resolve()


def default_artifact_root() -> str:
    return os.environ.get("K25_ARTIFACT_ROOT", str(k25_home() / "artifacts"))


def default_tracking_uri() -> str:
    return os.environ.get("MLFLOW_TRACKING_URI", f"sqlite:///{k25_home() / 'mlflow.db'}")


def default_data_root() -> str:
    return str(Path(os.environ.get("K25_DATA_ROOT", Path.cwd().parent / "shared" / "data")).resolve())


_USERINFO = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)(?P<user>[^:/@\s]*):(?P<secret>[^@\s]*)@")
_SECRET_PARAM = re.compile(r"(?P<key>(?:password|passwd|pwd|secret|token|access_key)=)(?P<secret>[^&\s]+)", re.I)


def redacted(text: str) -> str:
    """`text` with the password of every URI in it (`scheme://user:password@host`) and every
    password-like query parameter replaced by ***: what may go into a log line or the UI."""
    text = _USERINFO.sub(lambda m: f"{m['scheme']}{m['user']}:***@", text)
    return _SECRET_PARAM.sub(lambda m: f"{m['key']}***", text)
