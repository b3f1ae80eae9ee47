"""Dagster resources: the run's profile, the artifact root, MLflow tracking and the torchrun launcher.

Below every domain of defs/: the domains import these classes; `make_resources` binds them
(definitions.py).

Defaults (infra/settings.py) are the embedded setup for one machine: everything under
`$K25_HOME` (default `./.k25`). Production points `K25_ARTIFACT_ROOT` at `s3://bucket/prefix`
and `MLFLOW_TRACKING_URI` at a server or PostgreSQL.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import hashlib
import os
import tempfile
from pathlib import Path
from typing import Iterator

import dagster as dg

from infra import launcher, storage
from infra.settings import default_artifact_root, default_tracking_uri, redacted
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


@dataclasses.dataclass
class StageRun:
    """The MLflow child run of one asset: its tracker and id, the links Dagster shows, and the
    checks that failed (a failed blocking check fails the Dagster run, so the MLflow run too)."""

    tracker: Tracker
    run_id: str
    ui_url: str
    failed_checks: list[str] = dataclasses.field(default_factory=list)

    def links(self, model_id: str | None = None) -> dict[str, dg.MetadataValue]:
        """Metadata linking to the MLflow UI (`url` entries Dagster renders as links), or naming
        the ids where no UI address is set; never the tracking URI (it may carry a password)."""
        exp = self.tracker.experiment_id
        out = {"mlflow_run_id": dg.MetadataValue.text(self.run_id)}
        if model_id:
            out["mlflow_model_id"] = dg.MetadataValue.text(model_id)
        if not self.ui_url:
            return out
        out["mlflow_run"] = dg.MetadataValue.url(f"{self.ui_url}/#/experiments/{exp}/runs/{self.run_id}")
        if model_id:
            out["mlflow_model"] = dg.MetadataValue.url(f"{self.ui_url}/#/experiments/{exp}/models/{model_id}")
        return out

    def record_checks(self, results: list[dg.AssetCheckResult]) -> list[dg.AssetCheckResult]:
        """Failed ERROR checks fail the MLflow run; failed WARN checks are tagged, nothing more."""
        failed = [r for r in results if not r.passed]
        self.failed_checks += [r.check_name for r in failed if r.severity != dg.AssetCheckSeverity.WARN]
        warned = [r.check_name for r in failed if r.severity == dg.AssetCheckSeverity.WARN]
        if self.failed_checks:
            self.tracker.client.set_tag(self.run_id, "k25.failed_checks", ",".join(self.failed_checks))
        if warned:
            self.tracker.client.set_tag(self.run_id, "k25.warned_checks", ",".join(warned))
        return results


class MlflowTracking(dg.ConfigurableResource):
    """MLflow through an explicit client; its schema is made once and the store checked before any
    step runs. Set `tracking_uri` from the environment (`dg.EnvVar("MLFLOW_TRACKING_URI")`, what
    make_resources does): a database URI carries a password, and a literal value would show in the
    launchpad and on the resource page."""

    tracking_uri: str
    experiment: str = "k25"
    ui_url: str = ""
    """Where the MLflow UI is (e.g. http://127.0.0.1:5000); Dagster links runs and models there."""

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

    def ui(self) -> str:
        return self.ui_url.rstrip("/") or (self.tracking_uri.rstrip("/") if self.tracking_uri.startswith("http") else "")

    @contextlib.contextmanager
    def stage_run(self, context: dg.AssetExecutionContext, stage: str) -> Iterator[StageRun]:
        """`with mlflow.stage_run(context, stage) as run:` the child run of this asset inside the
        parent run of this Dagster run, ended on every path: FINISHED, KILLED (a stop from the UI),
        FAILED (an error, or a failed blocking check)."""
        tracker = self.tracker()
        parent = tracker.parent_run(context.run_id, context.job_name)
        tags = {"dagster.run_id": context.run_id, "dagster.asset_key": context.asset_key.to_user_string(),
                "dagster.code_version": context.assets_def.code_versions_by_key.get(context.asset_key) or ""}
        run = StageRun(tracker, tracker.child_run(parent, stage, tags), self.ui())
        with tracker.closing(run.run_id, killed_by=(KeyboardInterrupt, dg.DagsterExecutionInterruptedError),  # a UI stop
                             failed=lambda: bool(run.failed_checks)):
            yield run


class TorchrunLauncher(dg.ConfigurableResource):
    """Runs a stage program with torchrun under Dagster Pipes; rank 0 reports back."""

    nproc_per_node: int = 0  # 0: the profile's value
    python: str = ""  # empty: this interpreter
    stop_grace_s: int = 600
    """After a stop from the UI, how long the ranks have to agree on a step and commit its
    checkpoint before torchrun kills them."""
    messages_bucket: str = ""
    """Empty: Pipes messages travel through a local file (the program runs on this machine). A
    bucket: through S3 (dagster-aws's channel), for programs that run off-box (cluster launchers)."""

    def message_reader(self):
        if not self.messages_bucket:
            return None  # Pipes' default: a temporary file on this machine
        from dagster_aws.pipes import PipesS3MessageReader

        return PipesS3MessageReader(bucket=self.messages_bucket, client=storage.s3_client(), interval=2)

    def run(self, context: dg.AssetExecutionContext, module: str, program_args: list[str], nproc_per_node: int,
            extras: dict | None = None, env: dict[str, str] | None = None) -> dg.MaterializeResult:
        n = self.nproc_per_node or nproc_per_node
        command = launcher.torchrun_command(module, program_args, n, self.python or None, self.stop_grace_s)
        context.log.info("launching: " + redacted(" ".join(command)))
        # Pipes sends SIGINT on a stop and waits this long for the program to commit and exit.
        client = dg.PipesSubprocessClient(cwd=str(launcher.PROJECT_ROOT), message_reader=self.message_reader(),
                                          termination_timeout_seconds=self.stop_grace_s + 30)
        invocation = client.run(context=context, command=command, extras=extras or {},
                                env={**launcher.program_env(), **(env or {})})
        return invocation.get_materialize_result()


def _from_env(name: str, default: str):
    """A resource value read from the environment where the variable is set (the UI then shows the
    variable's name, never its value), else the embedded default."""
    return dg.EnvVar(name) if os.environ.get(name) else default


def make_resources(artifact_root: str | None = None, tracking_uri: str | None = None, nproc_per_node: int = 0,
                   profile: str = "tiny") -> dict:
    return {
        "profile": RunProfile(name=profile),
        "artifacts": ArtifactStore(root=artifact_root or _from_env("K25_ARTIFACT_ROOT", default_artifact_root())),
        "mlflow": MlflowTracking(tracking_uri=tracking_uri or _from_env("MLFLOW_TRACKING_URI", default_tracking_uri()),
                                 ui_url=_from_env("K25_MLFLOW_UI_URL", "")),
        "launcher": TorchrunLauncher(nproc_per_node=nproc_per_node),
    }
