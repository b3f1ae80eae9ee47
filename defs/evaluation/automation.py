"""Automation of the evaluation: a job, the nightly schedule and the new-checkpoint sensor.
Both start stopped; switch them on in the UI (Automation). Their runs use the profile in
K25_EVAL_PROFILE (default tiny), set as the run's `profile` resource."""

import json
import os

import dagster as dg

from infra.refs import plain_metadata
from training.spec import STAGE_NAMES

evaluation_job = dg.define_asset_job("evaluation_job", selection=["evaluation"],
                                     description="Evaluate a checkpoint (see the evaluation asset's config).")


def _run_config(stage: str, uri: str = "", model_id: str = "") -> dict:
    return {"ops": {"evaluation": {"config": {"checkpoint_stage": stage, "checkpoint_uri": uri,
                                              "mlflow_model_id": model_id}}},
            "resources": {"profile": {"config": {"name": os.environ.get("K25_EVAL_PROFILE", "tiny")}}}}


nightly_evaluation = dg.ScheduleDefinition(
    name="nightly_evaluation", job=evaluation_job, cron_schedule="0 3 * * *", run_config=_run_config("latest"),
    default_status=dg.DefaultScheduleStatus.STOPPED,
    description="Every night at 03:00: evaluate the newest checkpoint of any training stage.")


def watched_stages() -> tuple[str, ...]:
    """Stages whose new checkpoints the sensor evaluates: K25_EVAL_ON_STAGES (comma list)."""
    names = tuple(s.strip() for s in os.environ.get("K25_EVAL_ON_STAGES", "midtrain,sft,rl,parl").split(",") if s.strip())
    unknown = [s for s in names if s not in STAGE_NAMES]
    if unknown:
        raise ValueError(f"K25_EVAL_ON_STAGES names unknown stages {unknown}; known: {STAGE_NAMES}")
    return names


def new_checkpoint_requests(instance: dg.DagsterInstance, cursor: dict[str, float],
                            stages: tuple[str, ...]) -> tuple[list[dg.RunRequest], dict[str, float]]:
    """A run request per stage whose latest materialization is newer than the cursor; the run key
    (stage + checkpoint digest) makes a checkpoint evaluated once even if the cursor is lost."""
    requests, cursor = [], dict(cursor)
    for stage in stages:
        event = instance.get_latest_materialization_event(dg.AssetKey(stage))
        if event is None or event.asset_materialization is None or event.timestamp <= cursor.get(stage, -1.0):
            continue
        cursor[stage] = event.timestamp
        md = plain_metadata(event.asset_materialization.metadata)
        uri = md.get("checkpoint_uri")
        if not uri:
            continue
        digest = md.get("checkpoint_digest") or str(event.timestamp)
        requests.append(dg.RunRequest(run_key=f"{stage}:{digest}",
                                      run_config=_run_config(stage, uri, str(md.get("mlflow_model_id") or "")),
                                      tags={"k25/evaluated_stage": stage}))
    return requests, cursor


@dg.sensor(job=evaluation_job, minimum_interval_seconds=60, default_status=dg.DefaultSensorStatus.STOPPED,
           description="Evaluate each new checkpoint of the stages in K25_EVAL_ON_STAGES (default midtrain,sft,rl,parl).")
def new_checkpoint_evaluation(context: dg.SensorEvaluationContext):
    cursor = json.loads(context.cursor) if context.cursor else {}
    requests, cursor = new_checkpoint_requests(context.instance, cursor, watched_stages())
    context.update_cursor(json.dumps(cursor))
    if not requests:
        return dg.SkipReason("no new checkpoint of " + ", ".join(watched_stages()))
    return requests
