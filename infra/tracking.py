"""MLflow lineage through an explicit `MlflowClient` (no process-global mlflow state).

Layout: one parent run per Dagster run (tag `dagster.run_id`), one child run per asset
(tag `k25.stage`). Data sets are logged as run inputs with digests we compute; each checkpoint
is a LoggedModel whose weights stay in the artifact root (tags `checkpoint_uri`, `digest`),
linked to its run as an output; a stage that starts from a checkpoint takes that model as input.
Walking model inputs backwards from an evaluation run therefore reaches the data digests.
"""

from __future__ import annotations

import contextlib
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Callable

from mlflow import MlflowClient
from mlflow.entities import Dataset, DatasetInput, InputTag, LoggedModelInput, LoggedModelOutput, Metric, Param

from infra import storage
from infra.settings import default_artifact_root

STAGE_TAG = "k25.stage"
DAGSTER_RUN_TAG = "dagster.run_id"
FULL_DIGEST_TAG = "k25.sha256"


class TrackingUnavailable(RuntimeError):
    pass


@dataclass
class DatasetRef:
    name: str
    digest: str
    source: str  # URI of the manifest or shard folder
    context: str = "training"

    @property
    def short_digest(self) -> str:
        return self.digest[:32]  # MLflow caps a dataset digest at 36 characters

    @property
    def source_type(self) -> str:
        return "s3" if self.source.startswith("s3://") else "local"


def check_reachable(tracking_uri: str, timeout_s: float = 5.0) -> None:
    """Fail fast, naming the URI, when the tracking server cannot be reached."""
    if tracking_uri.startswith(("http://", "https://")):
        url = tracking_uri.rstrip("/") + "/health"
        try:
            with urllib.request.urlopen(url, timeout=timeout_s) as resp:
                if resp.status != 200:
                    raise TrackingUnavailable(f"MLflow tracking server {tracking_uri} answered {resp.status} on /health")
        except (urllib.error.URLError, OSError) as e:
            raise TrackingUnavailable(f"MLflow tracking server {tracking_uri} is unreachable: {e}") from e
        return
    try:  # database-backed stores: a cheap query proves the connection and schema
        MlflowClient(tracking_uri).search_experiments(max_results=1)
    except Exception as e:  # noqa: BLE001 - re-raised with the URI named
        raise TrackingUnavailable(f"MLflow tracking store {tracking_uri} is unusable: {e}") from e


class Tracker:
    def __init__(self, tracking_uri: str, experiment: str = "k25", artifact_location: str | None = None):
        self.tracking_uri = tracking_uri
        self.client = MlflowClient(tracking_uri)
        if artifact_location is None and not tracking_uri.startswith(("http://", "https://")):
            # A database store would put run artifacts under ./mlruns of whatever directory a
            # process runs in; keep them beside the pipeline's other artifacts instead.
            artifact_location = storage.join(default_artifact_root(), "mlflow")
        exp = self.client.get_experiment_by_name(experiment)
        if exp is None:
            try:
                self.experiment_id = self.client.create_experiment(experiment, artifact_location=artifact_location)
            except Exception:  # created concurrently by another step
                self.experiment_id = self.client.get_experiment_by_name(experiment).experiment_id
        else:
            self.experiment_id = exp.experiment_id

    # ---- runs
    def find_parent(self, dagster_run_id: str) -> str | None:
        found = self.client.search_runs(
            [self.experiment_id], filter_string=f"tags.`{DAGSTER_RUN_TAG}` = '{dagster_run_id}' AND tags.`{STAGE_TAG}` = 'dagster-run'",
            max_results=1)
        return found[0].info.run_id if found else None

    def parent_run(self, dagster_run_id: str, job_name: str = "") -> str:
        """The parent run of a Dagster run, created once (idempotent by tag search)."""
        found = self.find_parent(dagster_run_id)
        if found:
            return found
        run = self.client.create_run(self.experiment_id, run_name=f"dagster-{dagster_run_id[:8]}",
                                     tags={DAGSTER_RUN_TAG: dagster_run_id, STAGE_TAG: "dagster-run", "dagster.job": job_name})
        return run.info.run_id

    def child_run(self, parent_run_id: str, stage: str, tags: dict[str, str] | None = None) -> str:
        run = self.client.create_run(self.experiment_id, run_name=stage,
                                     tags={"mlflow.parentRunId": parent_run_id, STAGE_TAG: stage, **(tags or {})})
        return run.info.run_id

    def finish(self, run_id: str, status: str = "FINISHED") -> None:
        """End a child run FINISHED, FAILED or KILLED, and bring its parent up to date: the parent
        ends FAILED (or KILLED) as soon as one child does and stays so; FINISHED once no child is
        left running."""
        self.client.set_terminated(run_id, status)
        parent_id = self.client.get_run(run_id).data.tags.get("mlflow.parentRunId")
        if parent_id:
            self.settle_parent(parent_id)

    def settle_parent(self, parent_id: str, status: str | None = None) -> None:
        """The parent's status from its children's (or `status`, from the Dagster run's outcome)."""
        current = self.client.get_run(parent_id).info.status
        if current == "FAILED":
            return  # a failure is final
        if status is None:
            children = self.client.search_runs([self.experiment_id],
                                               filter_string=f"tags.mlflow.parentRunId = '{parent_id}'")
            states = {c.info.status for c in children}
            status = next((s for s in ("FAILED", "KILLED", "RUNNING") if s in states), "FINISHED")
        if status == "RUNNING" or (current == "KILLED" and status == "FINISHED"):
            return
        self.client.set_terminated(parent_id, status)

    def end_dagster_run(self, dagster_run_id: str, status: str) -> None:
        """A Dagster run ended FAILED or KILLED (canceled) as a whole: its MLflow runs still
        RUNNING (a step process killed outright never ends its own) end so, and so does the parent."""
        parent = self.find_parent(dagster_run_id)
        if parent is None:
            return
        for child in self.client.search_runs([self.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{parent}'"):
            if child.info.status == "RUNNING":
                self.client.set_terminated(child.info.run_id, status)
        self.settle_parent(parent, status)

    @contextlib.contextmanager
    def closing(self, run_id: str, killed_by: tuple[type[BaseException], ...] = (KeyboardInterrupt,),
                failed: Callable[[], bool] = lambda: False):
        """Yield `run_id`; end the run FINISHED when the block completes (FAILED if `failed()` then
        says so), KILLED when it is interrupted (`killed_by`: a stop from the UI), FAILED on any
        other exception, then re-raise."""
        try:
            yield run_id
        except killed_by:
            self.finish(run_id, "KILLED")
            raise
        except BaseException:
            self.finish(run_id, "FAILED")
            raise
        self.finish(run_id, "FAILED" if failed() else "FINISHED")

    def log_params(self, run_id: str, params: dict[str, str]) -> None:
        """Params in batches of 100 (MLflow's limit per call)."""
        items = [Param(k, str(v)) for k, v in sorted(params.items())]
        for i in range(0, len(items), 100):
            self.client.log_batch(run_id, params=items[i:i + 100])

    # ---- lineage
    def log_datasets(self, run_id: str, datasets: list[DatasetRef]) -> None:
        # MLflow caps a dataset digest at 36 characters: the first 32 hex digits of the sha256
        # identify it; the full digest rides along as an input tag.
        inputs = [DatasetInput(Dataset(name=d.name, digest=d.short_digest, source_type=d.source_type, source=d.source),
                               tags=[InputTag("mlflow.data.context", d.context), InputTag(FULL_DIGEST_TAG, d.digest)])
                  for d in datasets]
        self.client.log_inputs(run_id, datasets=inputs)

    def log_model_input(self, run_id: str, model_id: str) -> None:
        self.client.log_inputs(run_id, models=[LoggedModelInput(model_id)])

    def register_checkpoint(self, run_id: str, stage: str, checkpoint_uri: str, digest: str, step: int,
                            params: dict[str, str] | None = None) -> str:
        """A LoggedModel for a committed checkpoint; weights stay where they are (external). Its
        page shows what an audit asks: the spec as params, the checkpoint URI and digest (tags and
        description); the trainer then logs the step's metrics against it (log_metrics, model_id)."""
        model = self.client.create_logged_model(
            self.experiment_id, name=stage, source_run_id=run_id,
            tags={"checkpoint_uri": checkpoint_uri, "digest": digest, STAGE_TAG: stage, "step": str(step),
                  "mlflow.note.content": f"Checkpoint `{checkpoint_uri}` (step {step}), manifest sha256 `{digest}`."},
            params={k: str(v) for k, v in (params or {}).items()}, model_type="k25-checkpoint")
        self.client.finalize_logged_model(model.model_id, "READY")
        self.client.log_outputs(run_id, [LoggedModelOutput(model.model_id, step)])
        return model.model_id

    def log_metrics(self, run_id: str, metrics: dict[str, float], step: int, synchronous: bool = False,
                    model_id: str | None = None, dataset: DatasetRef | None = None):
        """Batched; asynchronous by default so training never waits on the tracking server.
        With `model_id` (and `dataset`) the values also show on that LoggedModel's page.
        Returns the pending operation (call `.wait()` before the process exits)."""
        now = int(time.time() * 1000)
        ds = {"dataset_name": dataset.name, "dataset_digest": dataset.short_digest} if dataset else {}
        batch = [Metric(k, float(v), now, step, model_id=model_id, **ds) for k, v in metrics.items()]
        return self.client.log_batch(run_id, metrics=batch, synchronous=synchronous)
