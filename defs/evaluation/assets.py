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

import dagster as dg

from defs.common import (
    check_profile,
    check_specs,
    overrides_config,
    resolve_or_fail,
    set_fields,
    spec_params,
    upstream_ref,
    verified,
)
from defs.resources import ArtifactStore, MlflowTracking, RunProfile, TorchrunLauncher
from evaluation.config import EvalConfig
from infra import storage
from infra.refs import CheckpointRef, MissingReference, MixtureRef, plain_metadata
from infra.settings import default_data_root
from infra.spec import write_spec
from training.spec import STAGE_NAMES

EVAL_CHECKS = ("report_written", "every_suite_scored")


class CheckpointChoice(dg.Config):
    checkpoint_stage: str = "parl"
    """A training stage, or "latest" (the most recently materialized one)."""
    checkpoint_uri: str = ""
    """Evaluate exactly this checkpoint (overrides checkpoint_stage)."""
    mlflow_model_id: str = ""
    """Its LoggedModel, when known (the sensor passes it)."""


EvaluationRunConfig = overrides_config("EvaluationRunConfig", EvalConfig, base=CheckpointChoice)


def latest_trained_stage(instance: dg.DagsterInstance) -> str:
    """The training stage whose latest materialization is the newest."""
    newest, stage = -1, None
    for name in STAGE_NAMES:
        event = instance.get_latest_materialization_event(dg.AssetKey(name))
        if event is not None and event.timestamp > newest:
            newest, stage = event.timestamp, name
    if stage is None:
        raise dg.Failure(description="checkpoint_stage=latest: no training stage has been materialized yet")
    return stage


def resolve_checkpoint(context: dg.AssetExecutionContext, config: CheckpointChoice) -> tuple[CheckpointRef, dict, str]:
    """(checkpoint reference, its manifest, stage label), verified to exist."""
    if config.checkpoint_uri:
        try:
            ref = CheckpointRef.at(config.checkpoint_uri, config.mlflow_model_id or None)
        except MissingReference as e:
            raise dg.Failure(description=f"checkpoint_uri: {e}") from e
        return ref, verified(ref, "checkpoint"), ref.stage
    stage = config.checkpoint_stage
    if stage == "latest":
        stage = latest_trained_stage(context.instance)
    if stage not in STAGE_NAMES:
        raise dg.Failure(description=f"checkpoint_stage must be 'latest' or one of {STAGE_NAMES}, got {stage!r}")
    ref = upstream_ref(context, stage, CheckpointRef)
    return ref, verified(ref, f"checkpoint of {stage!r}"), stage


def previous_metrics(context: dg.AssetExecutionContext) -> dict[str, float]:
    event = context.instance.get_latest_materialization_event(dg.AssetKey("evaluation"))
    if event is None or event.asset_materialization is None:
        return {}
    md = plain_metadata(event.asset_materialization.metadata)
    return {k: v for k, v in md.items() if "/" in k and isinstance(v, (int, float))}


def comparison_md(metrics: dict[str, float], previous: dict[str, float], checkpoint_label: str) -> str:
    rows = []
    for key in sorted(k for k in metrics if k.endswith(("/accuracy", "/pass@1"))):
        before = previous.get(key)
        delta = f"{metrics[key] - before:+.4f}" if isinstance(before, (int, float)) else "n/a"
        rows.append(f"| {key} | {metrics[key]:.4f} | {before if before is not None else 'n/a'} | {delta} |")
    return (f"Compared with the previous evaluation ({checkpoint_label} now)\n\n| metric | now | before | change |\n"
            "|---|---|---|---|\n" + "\n".join(rows) + "\n")


@dg.asset(group_name="eval", code_version="eval-v3", kinds={"pytorch"}, deps=["parl", "mixture"],
          check_specs=check_specs("evaluation", EVAL_CHECKS))
def evaluation(context: dg.AssetExecutionContext, config: EvaluationRunConfig, profile: RunProfile,  # type: ignore[valid-type]
               artifacts: ArtifactStore, mlflow: MlflowTracking, launcher: TorchrunLauncher) -> dg.MaterializeResult:
    """Evaluate a checkpoint (latest of `checkpoint_stage`, or `checkpoint_uri`) on every configured
    suite; report table, comparison and chart in Dagster and MLflow."""
    import recipes
    from evaluation.run import EvalSpec, missing_suite_data  # torch and the suites load only when evaluating

    overrides = {k: v for k, v in set_fields(config).items() if k not in CheckpointChoice.model_fields}
    cfg = resolve_or_fail(recipes.resolve_evaluation, profile.name, overrides)
    data_root = default_data_root()
    missing = missing_suite_data(cfg, data_root)
    if missing:
        raise dg.Failure(description=f"evaluation data missing: {missing} (set K25_DATA_ROOT to your copy)")
    ckpt, manifest, stage = resolve_checkpoint(context, config)
    check_profile(ckpt, manifest, profile.name, "evaluated")
    mixture = upstream_ref(context, "mixture", MixtureRef)
    verified(mixture, "mixture")
    previous = previous_metrics(context)
    out = artifacts.uri("evaluation", context.run_id)
    spec = EvalSpec(profile=profile.name, evaluation=cfg, checkpoint=ckpt, mixture=mixture, out=out)
    spec_uri = write_spec(spec, out)

    with mlflow.stage_run(context, "evaluation") as (tracker, run_id):
        tracker.log_params(run_id, spec_params(spec))
        if ckpt.model_id:
            tracker.log_model_input(run_id, ckpt.model_id)
        tracker.client.set_tag(run_id, "evaluated_checkpoint", ckpt.uri)
        tracker.client.set_tag(run_id, "evaluated_stage", stage)
        args = ["--spec", spec_uri, "--tracking-uri", mlflow.tracking_uri, "--mlflow-run-id", run_id,
                "--data-root", data_root]
        nproc = profile.load().nproc_per_node
        result = launcher.run(context, "evaluation.run", args, nproc)
        md = plain_metadata(result.metadata or {})
        metrics = {k: v for k, v in md.items() if "/" in k and isinstance(v, (int, float))}
        comparison = comparison_md(metrics, previous, f"{stage} {ckpt.uri}")
        tracker.client.log_text(run_id, comparison, "comparison.md")

    written = storage.exists(storage.join(out, "report.md")) and storage.exists(storage.join(out, "records.parquet"))
    scored = {s: md.get(f"{s}/n", 0) for s in cfg.suites}
    return dg.MaterializeResult(
        metadata={**(result.metadata or {}), "mlflow_run": tracker.run_url(run_id), "evaluated_model_id": str(ckpt.model_id),
                  "evaluated_stage": stage, "spec_uri": spec_uri, "report_md": dg.MetadataValue.md(md.get("report_md", "")),
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
