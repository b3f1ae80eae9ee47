"""Evaluation: any stage's latest checkpoint on the benchmark suites (first version: GSM8K
accuracy and answer NLL, and a held-out digits caption-retrieval task as a vision substitute).
The MLflow run takes the evaluated LoggedModel as input, which closes the lineage chain
evaluation -> checkpoint -> ... -> data digests."""


import dagster as dg

from assets.common import (
    StageRunConfig,
    check_specs,
    metadata_value,
    mixture_uri,
    overrides_args,
    resolve_stage,
    upstream_checkpoint,
)
from infra import storage
from infra.tracking import DatasetRef
from pipelines.resources import ArtifactStore, MlflowTracking, TorchrunLauncher, default_data_root
from training.config import STAGES


class EvaluationRunConfig(StageRunConfig):
    checkpoint_stage: str = "parl"  # evaluate the latest checkpoint of this stage


@dg.asset(group_name="eval", code_version="eval-v1", kinds={"pytorch"}, deps=["parl", "mixture"],
          check_specs=check_specs("evaluation", ("report_written",)))
def evaluation(context: dg.AssetExecutionContext, config: EvaluationRunConfig, artifacts: ArtifactStore,
               mlflow: MlflowTracking, launcher: TorchrunLauncher) -> dg.MaterializeResult:
    """Evaluate the latest checkpoint of `checkpoint_stage`; report table and chart in Dagster and MLflow."""
    if config.checkpoint_stage not in STAGES[:-1]:
        raise dg.Failure(description=f"checkpoint_stage must be one of {STAGES[:-1]}, got {config.checkpoint_stage!r}")
    profile, _ = resolve_stage(config, "evaluation")
    ckpt, model_id = upstream_checkpoint(context, config.checkpoint_stage)
    mix_uri, mixture = mixture_uri(context)
    gsm8k = f"{default_data_root()}/benchmarks/gsm8k/test.jsonl"
    if not storage.exists(gsm8k):
        raise dg.Failure(description=f"evaluation data missing: {gsm8k} (set K25_DATA_ROOT)")

    tracker, run_id = mlflow.stage_run(context, "evaluation")
    if model_id:
        tracker.log_model_input(run_id, model_id)
    tracker.log_datasets(run_id, [DatasetRef("gsm8k-test", storage.sha256_bytes(storage.read_bytes(gsm8k)), gsm8k,
                                             context="evaluation")])
    out = artifacts.uri("evaluation", context.run_id)
    args = ["--checkpoint", ckpt, "--mixture", mix_uri, "--out", out, "--profile", config.profile,
            *overrides_args(config), "--tracking-uri", mlflow.tracking_uri, "--mlflow-run-id", run_id,
            "--data-root", default_data_root()]
    try:
        result = launcher.run(context, "evaluation.run", args, profile.nproc_per_node)
    except Exception:
        tracker.finish(run_id, ok=False)
        raise
    tracker.finish(run_id)
    written = storage.exists(storage.join(out, "report.md")) and storage.exists(storage.join(out, "records.parquet"))
    md = {k: metadata_value(v) for k, v in (result.metadata or {}).items()}
    return dg.MaterializeResult(
        metadata={**(result.metadata or {}), "mlflow_run": tracker.run_url(run_id), "evaluated_model_id": str(model_id),
                  "report_md": dg.MetadataValue.md(md.get("report_md", "")),
                  "accuracy_chart": dg.MetadataValue.md(md.get("accuracy_chart", ""))},
        data_version=result.data_version,
        check_results=[dg.AssetCheckResult(check_name="report_written", asset_key="evaluation", passed=written,
                                           metadata={"report_uri": out})])
