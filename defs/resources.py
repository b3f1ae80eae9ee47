"""Dagster resources: the run's profile, the artifact root, MLflow tracking and the torchrun launcher.

Below every domain of defs/: the domains import these classes; `make_resources` binds them
(definitions.py).

Defaults (infra/settings.py) are the embedded setup for one machine: everything under
`$K25_HOME` (default `./.k25`). Production points `K25_ARTIFACT_ROOT` at `s3://bucket/prefix`
and `MLFLOW_TRACKING_URI` at a server or PostgreSQL.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import tempfile
from pathlib import Path
from typing import Iterator

import dagster as dg

from infra import launcher, storage
from infra.settings import default_artifact_root, default_tracking_uri
from infra.tracking import Tracker, check_reachable


class RunProfile(dg.ConfigurableResource):
    """The profile of this run (tiny, small, k25): one value for every asset of a Dagster run,
    set once in the launchpad's resources section (`resources: {profile: {config: {name: small}}}`)."""

    name: str = "tiny"

    def setup_for_execution(self, context: dg.InitResourceContext) -> None:
        import recipes

        recipes.load_profile(self.name)  # an unknown profile fails before any step runs

    def load(self):
        import recipes

        return recipes.load_profile(self.name)


def _schema_lock(tracking_uri: str) -> Path:
    """The lock file of a database tracking store: beside a sqlite file, else in the temp folder."""
    if tracking_uri.startswith("sqlite:///"):
        db = Path(tracking_uri[len("sqlite:///"):])
        db.parent.mkdir(parents=True, exist_ok=True)
        return db.with_name(db.name + ".lock")
    return Path(tempfile.gettempdir()) / f"k25-mlflow-schema-{hashlib.sha256(tracking_uri.encode()).hexdigest()[:16]}.lock"


class ArtifactStore(dg.ConfigurableResource):
    """One artifact root URI: a local folder or `s3://bucket/prefix`."""

    root: str

    def setup_for_execution(self, context: dg.InitResourceContext) -> None:
        storage.check_root_writable(self.root)

    def uri(self, *parts: str) -> str:
        return storage.join(self.root, *parts)


class MlflowTracking(dg.ConfigurableResource):
    """MLflow through an explicit client; checked for reachability before any step runs."""

    tracking_uri: str
    experiment: str = "k25"

    def setup_for_execution(self, context: dg.InitResourceContext) -> None:
        if self.tracking_uri.startswith(("http://", "https://")):
            check_reachable(self.tracking_uri)  # the server owns its schema
            return
        # A database store creates its schema on first use; parallel Dagster steps would race to
        # create it (sqlite: "table already exists", PostgreSQL: duplicate pg_type rows). The
        # first step creates it under a file lock, the others then find it.
        with open(_schema_lock(self.tracking_uri), "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            check_reachable(self.tracking_uri)

    def tracker(self) -> Tracker:
        return Tracker(self.tracking_uri, self.experiment)

    @contextlib.contextmanager
    def stage_run(self, context: dg.AssetExecutionContext, stage: str) -> Iterator[tuple[Tracker, str]]:
        """`with mlflow.stage_run(context, stage) as (tracker, run_id):` the child run of this
        asset inside the parent run of this Dagster run, ended FINISHED or FAILED on every path."""
        tracker = self.tracker()
        parent = tracker.parent_run(context.run_id, context.job_name)
        tags = {"dagster.run_id": context.run_id, "dagster.asset_key": context.asset_key.to_user_string(),
                "dagster.code_version": context.assets_def.code_versions_by_key.get(context.asset_key) or ""}
        with tracker.closing(tracker.child_run(parent, stage, tags)) as run_id:
            yield tracker, run_id


class TorchrunLauncher(dg.ConfigurableResource):
    """Runs a stage program with torchrun under Dagster Pipes; rank 0 reports back."""

    nproc_per_node: int = 0  # 0: the profile's value
    python: str = ""  # empty: this interpreter

    def run(self, context: dg.AssetExecutionContext, module: str, program_args: list[str], nproc_per_node: int,
            extras: dict | None = None, env: dict[str, str] | None = None) -> dg.MaterializeResult:
        n = self.nproc_per_node or nproc_per_node
        command = launcher.torchrun_command(module, program_args, n, self.python or None)
        context.log.info("launching: " + " ".join(command))
        client = dg.PipesSubprocessClient(cwd=str(launcher.PROJECT_ROOT))
        invocation = client.run(context=context, command=command, extras=extras or {},
                                env={**launcher.program_env(), **(env or {})})
        return invocation.get_materialize_result()


def make_resources(artifact_root: str | None = None, tracking_uri: str | None = None, nproc_per_node: int = 0,
                   profile: str = "tiny") -> dict:
    return {
        "profile": RunProfile(name=profile),
        "artifacts": ArtifactStore(root=artifact_root or default_artifact_root()),
        "mlflow": MlflowTracking(tracking_uri=tracking_uri or default_tracking_uri()),
        "launcher": TorchrunLauncher(nproc_per_node=nproc_per_node),
    }
