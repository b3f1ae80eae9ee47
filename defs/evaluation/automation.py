"""Automation of the evaluation: the nightly schedule and the new-checkpoint sensor, each
evaluating a checkpoint once. Both start stopped; switch them on in the UI (Automation). Their
runs use the profile in K25_EVAL_PROFILE (default tiny), set as the run's `profile` resource.

"Once" is decided from what Dagster already holds, not from a cursor: a checkpoint is due when
its digest differs from the one the stage's evaluation asset last recorded, and every request
carries the run key `<stage>:<digest>`, so a restarted sensor (or a manual evaluation first)
never evaluates a checkpoint twice.
"""

import os

import dagster as dg

from defs.evaluation.assets import EVALUATED_STAGES, evaluation_key
from infra.refs import plain_metadata

EVALUATIONS = dg.AssetSelection.key_prefixes("evaluation")
evaluation_job = dg.define_asset_job("evaluation_job", selection=EVALUATIONS,
                                     description="Evaluate checkpoints (one asset per evaluated stage).")


def watched_stages() -> tuple[str, ...]:
    """Stages whose new checkpoints the sensor evaluates: K25_EVAL_ON_STAGES (comma list)."""
    names = tuple(s.strip() for s in os.environ.get("K25_EVAL_ON_STAGES", "midtrain,sft,rl,parl").split(",") if s.strip())
    unknown = [s for s in names if s not in EVALUATED_STAGES]
    if unknown:
        raise ValueError(f"K25_EVAL_ON_STAGES names stages without an evaluation asset {unknown}; "
                         f"evaluated stages: {EVALUATED_STAGES}")
    return names


def _latest(instance: dg.DagsterInstance, key: dg.AssetKey):
    event = instance.get_latest_materialization_event(key)
    if event is None or event.asset_materialization is None:
        return None, {}
    return event, plain_metadata(event.asset_materialization.metadata)


def due_checkpoint(instance: dg.DagsterInstance, stage: str) -> tuple[float, dg.RunRequest] | None:
    """(when it was made, the request evaluating it) for the stage's latest checkpoint, or None
    when there is none or the stage's evaluation asset has already evaluated it."""
    event, md = _latest(instance, dg.AssetKey(stage))
    if event is None or not md.get("checkpoint_uri"):
        return None
    digest = md.get("checkpoint_digest", "")
    _, evaluated = _latest(instance, evaluation_key(stage))
    if evaluated.get("evaluated_digest") == digest:
        return None
    config = {"checkpoint_uri": md["checkpoint_uri"], "mlflow_model_id": str(md.get("mlflow_model_id") or "")}
    key = evaluation_key(stage)
    request = dg.RunRequest(
        run_key=f"{stage}:{digest}", asset_selection=[key],
        run_config={"ops": {key.to_python_identifier(): {"config": config}},
                    "resources": {"profile": {"config": {"name": os.environ.get("K25_EVAL_PROFILE", "tiny")}}}},
        tags={"k25/evaluated_stage": stage})
    return event.timestamp, request


def due_requests(instance: dg.DagsterInstance, stages: tuple[str, ...]) -> list[dg.RunRequest]:
    return [due[1] for due in (due_checkpoint(instance, s) for s in stages) if due is not None]


@dg.sensor(job=evaluation_job, minimum_interval_seconds=60, default_status=dg.DefaultSensorStatus.STOPPED,
           description="Evaluate each new checkpoint of the stages in K25_EVAL_ON_STAGES (default midtrain,sft,rl,parl), once.")
def new_checkpoint_evaluation(context: dg.SensorEvaluationContext):
    requests = due_requests(context.instance, watched_stages())
    if not requests:
        return dg.SkipReason("every checkpoint of " + ", ".join(watched_stages()) + " is evaluated")
    return requests


@dg.schedule(job=evaluation_job, cron_schedule="0 3 * * *", default_status=dg.DefaultScheduleStatus.STOPPED,
             description="Every night at 03:00: evaluate the newest checkpoint of any evaluated stage, unless it is.")
def nightly_evaluation(context: dg.ScheduleEvaluationContext):
    due = [d for d in (due_checkpoint(context.instance, s) for s in EVALUATED_STAGES) if d is not None]
    if not due:
        return dg.SkipReason("the newest checkpoint of every evaluated stage is evaluated")
    return max(due, key=lambda d: d[0])[1]
