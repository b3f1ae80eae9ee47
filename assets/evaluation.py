"""Evaluation: a checkpoint of any training stage on the benchmark suites (GSM8K, MATH-500,
AIME 2024/2025, AMC23, MMLU 5-shot, HumanEval in a sandbox) and the vision substitutes built by
this project (digit and picture caption retrieval, short-video questions). Per-suite metrics go to
MLflow with the evaluated LoggedModel as input, which closes the lineage chain evaluation ->
checkpoint -> ... -> data digests; the report (table with the change against the previous
evaluation, and a bar chart) shows here.

Which checkpoint: `checkpoint_stage` names a training stage (its latest materialization) or
`latest` (the most recently materialized stage); `checkpoint_uri` pins one checkpoint exactly (the
sensor sets it). The `nightly_evaluation` schedule re-evaluates the latest checkpoint; the
`new_checkpoint_evaluation` sensor evaluates each new checkpoint of the watched stages. Both start
stopped: switch them on in the UI (Automation)."""


import os

import dagster as dg

from assets.common import StageRunConfig, check_specs, metadata_value, mixture_uri, upstream_checkpoint
from evaluation.config import ConfigError, eval_config
from infra import storage
from pipelines.resources import ArtifactStore, MlflowTracking, TorchrunLauncher, default_data_root
from training import checkpoint
from training.config import STAGES, load_profile

TRAINING_STAGES = STAGES[:-1]
EVAL_CHECKS = ("report_written", "every_suite_scored")


class EvaluationRunConfig(StageRunConfig):
    checkpoint_stage: str = "parl"  # a training stage, or "latest" (the most recently materialized one)
    checkpoint_uri: str = ""  # evaluate exactly this checkpoint (overrides checkpoint_stage)
    mlflow_model_id: str = ""  # its LoggedModel, when known (the sensor passes it)


def latest_trained_stage(instance: dg.DagsterInstance) -> str:
    """The training stage whose latest materialization is the newest."""
    newest, stage = -1, None
    for name in TRAINING_STAGES:
        event = instance.get_latest_materialization_event(dg.AssetKey(name))
        if event is not None and event.timestamp > newest:
            newest, stage = event.timestamp, name
    if stage is None:
        raise dg.Failure(description="checkpoint_stage=latest: no training stage has been materialized yet")
    return stage


def resolve_checkpoint(context: dg.AssetExecutionContext, config: EvaluationRunConfig) -> tuple[str, str | None, str]:
    """(checkpoint URI, LoggedModel id or None, stage label), verified to exist."""
    if config.checkpoint_uri:
        try:
            manifest, _ = checkpoint.read_manifest(config.checkpoint_uri)
        except checkpoint.CheckpointError as e:
            raise dg.Failure(description=f"checkpoint_uri: {e}") from e
        return config.checkpoint_uri, config.mlflow_model_id or None, manifest.get("stage", "?")
    stage = config.checkpoint_stage
    if stage == "latest":
        stage = latest_trained_stage(context.instance)
    if stage not in TRAINING_STAGES:
        raise dg.Failure(description=f"checkpoint_stage must be 'latest' or one of {TRAINING_STAGES}, got {stage!r}")
    uri, model_id = upstream_checkpoint(context, stage)
    return uri, model_id, stage


def previous_metrics(context: dg.AssetExecutionContext) -> dict[str, float]:
    event = context.instance.get_latest_materialization_event(dg.AssetKey("evaluation"))
    if event is None or event.asset_materialization is None:
        return {}
    md = {k: metadata_value(v) for k, v in event.asset_materialization.metadata.items()}
    return {k: v for k, v in md.items() if "/" in k and isinstance(v, (int, float))}


def comparison_md(metrics: dict[str, float], previous: dict[str, float], checkpoint_label: str) -> str:
    rows = []
    for key in sorted(k for k in metrics if k.endswith(("/accuracy", "/pass@1"))):
        before = previous.get(key)
        delta = f"{metrics[key] - before:+.4f}" if isinstance(before, (int, float)) else "n/a"
        rows.append(f"| {key} | {metrics[key]:.4f} | {before if before is not None else 'n/a'} | {delta} |")
    return (f"Compared with the previous evaluation ({checkpoint_label} now)\n\n| metric | now | before | change |\n"
            "|---|---|---|---|\n" + "\n".join(rows) + "\n")


@dg.asset(group_name="eval", code_version="eval-v2", kinds={"pytorch"}, deps=["parl", "mixture"],
          check_specs=check_specs("evaluation", EVAL_CHECKS))
def evaluation(context: dg.AssetExecutionContext, config: EvaluationRunConfig, artifacts: ArtifactStore,
               mlflow: MlflowTracking, launcher: TorchrunLauncher) -> dg.MaterializeResult:
    """Evaluate a checkpoint (latest of `checkpoint_stage`, or `checkpoint_uri`) on every configured
    suite; report table, comparison and chart in Dagster and MLflow."""
    try:
        cfg = eval_config(config.profile, config.overrides)
        nproc = load_profile(config.profile).nproc_per_node
    except ConfigError as e:
        raise dg.Failure(description=str(e)) from e
    from evaluation.run import missing_suite_data  # torch and the suites load only when evaluating

    data_root = default_data_root()
    missing = missing_suite_data(cfg, data_root)
    if missing:
        raise dg.Failure(description=f"evaluation data missing: {missing} (set K25_DATA_ROOT to your copy)")
    ckpt, model_id, stage = resolve_checkpoint(context, config)
    mix_uri, _ = mixture_uri(context)
    previous = previous_metrics(context)

    tracker, run_id = mlflow.stage_run(context, "evaluation")
    if model_id:
        tracker.log_model_input(run_id, model_id)
    tracker.client.set_tag(run_id, "evaluated_checkpoint", ckpt)
    tracker.client.set_tag(run_id, "evaluated_stage", stage)
    out = artifacts.uri("evaluation", context.run_id)
    args = ["--checkpoint", ckpt, "--mixture", mix_uri, "--out", out, "--profile", config.profile,
            *[a for k, v in sorted(config.overrides.items()) for a in ("--set", f"{k}={v}")],
            "--tracking-uri", mlflow.tracking_uri, "--mlflow-run-id", run_id, "--data-root", data_root]
    try:
        result = launcher.run(context, "evaluation.run", args, nproc)
    except Exception:
        tracker.finish(run_id, ok=False)
        raise
    md = {k: metadata_value(v) for k, v in (result.metadata or {}).items()}
    metrics = {k: v for k, v in md.items() if "/" in k and isinstance(v, (int, float))}
    comparison = comparison_md(metrics, previous, f"{stage} {ckpt}")
    tracker.client.log_text(run_id, comparison, "comparison.md")
    tracker.finish(run_id)

    written = storage.exists(storage.join(out, "report.md")) and storage.exists(storage.join(out, "records.parquet"))
    scored = {s: md.get(f"{s}/n", 0) for s in cfg.suites}
    return dg.MaterializeResult(
        metadata={**(result.metadata or {}), "mlflow_run": tracker.run_url(run_id), "evaluated_model_id": str(model_id),
                  "evaluated_stage": stage, "report_md": dg.MetadataValue.md(md.get("report_md", "")),
                  "accuracy_chart": dg.MetadataValue.md(md.get("accuracy_chart", "")),
                  "comparison": dg.MetadataValue.md(comparison)},
        data_version=result.data_version,
        check_results=[
            dg.AssetCheckResult(check_name="report_written", asset_key="evaluation", passed=written,
                                metadata={"report_uri": out}),
            dg.AssetCheckResult(check_name="every_suite_scored", asset_key="evaluation",
                                passed=all(n and n > 0 for n in scored.values()),
                                metadata={"examples_per_suite": dg.MetadataValue.json(scored)}),
        ])


evaluation_job = dg.define_asset_job("evaluation_job", selection=["evaluation"],
                                     description="Evaluate a checkpoint (see the evaluation asset's config).")


def _run_config(stage: str, uri: str = "", model_id: str = "") -> dict:
    return {"ops": {"evaluation": {"config": {"checkpoint_stage": stage, "checkpoint_uri": uri,
                                              "mlflow_model_id": model_id,
                                              "profile": os.environ.get("K25_EVAL_PROFILE", "tiny")}}}}


nightly_evaluation = dg.ScheduleDefinition(
    name="nightly_evaluation", job=evaluation_job, cron_schedule="0 3 * * *", run_config=_run_config("latest"),
    default_status=dg.DefaultScheduleStatus.STOPPED,
    description="Every night at 03:00: evaluate the newest checkpoint of any training stage.")


def watched_stages() -> tuple[str, ...]:
    """Stages whose new checkpoints the sensor evaluates: K25_EVAL_ON_STAGES (comma list)."""
    names = tuple(s.strip() for s in os.environ.get("K25_EVAL_ON_STAGES", "midtrain,sft,rl,parl").split(",") if s.strip())
    unknown = [s for s in names if s not in TRAINING_STAGES]
    if unknown:
        raise ValueError(f"K25_EVAL_ON_STAGES names unknown stages {unknown}; known: {TRAINING_STAGES}")
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
        md = {k: metadata_value(v) for k, v in event.asset_materialization.metadata.items()}
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
    import json

    cursor = json.loads(context.cursor) if context.cursor else {}
    requests, cursor = new_checkpoint_requests(context.instance, cursor, watched_stages())
    context.update_cursor(json.dumps(cursor))
    if not requests:
        return dg.SkipReason("no new checkpoint of " + ", ".join(watched_stages()))
    return requests
