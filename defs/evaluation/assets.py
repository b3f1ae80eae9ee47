"""Evaluation: a checkpoint of a training stage on the benchmark suites (GSM8K, MATH-500,
AIME 2024/2025, AMC23, MMLU 5-shot, HumanEval in a sandbox) and the vision substitutes built by
this project (digit and picture caption retrieval, short-video questions). Per-suite metrics go to
MLflow with the evaluated LoggedModel as input, which closes the lineage chain evaluation ->
checkpoint -> ... -> data digests; the report (table with the change against the previous
evaluation of the same stage, and a bar chart) shows here.

One evaluation asset per evaluated stage (`evaluation/<stage>`), whose real input is that stage:
the graph shows what was evaluated, and each asset's history compares like with like. It
evaluates the stage's latest checkpoint, or exactly `checkpoint_uri` (of that stage; the sensor
pins it). The `nightly_evaluation` schedule evaluates the newest checkpoint of any stage and the
`new_checkpoint_evaluation` sensor each new checkpoint of the watched stages, each checkpoint
once; both start stopped: switch them on in the UI (Automation). Evaluations share the `gpu` pool
with training."""

import dagster as dg

from defs.common import (
    check_profile,
    check_specs,
    image_markdown,
    overrides_config,
    resolve_or_fail,
    set_fields,
    upstream_ref,
    verified,
)
from defs.resources import ArtifactStore, MlflowTracking, RunProfile, TorchrunLauncher
from evaluation.config import EvalConfig
from infra import storage
from infra.refs import CheckpointRef, MissingReference, MixtureRef, plain_metadata
from infra.settings import default_data_root
from infra.spec import spec_params, write_spec

EVAL_CHECKS = ("report_written", "every_suite_scored")
# The stages that produce a language model to score (vit_warmup trains the vision tower only).
EVALUATED_STAGES = ("joint_pretrain", "midtrain", "sft", "rl", "parl")


def evaluation_key(stage: str) -> dg.AssetKey:
    return dg.AssetKey(["evaluation", stage])


class CheckpointChoice(dg.Config):
    checkpoint_uri: str = ""
    """Evaluate exactly this checkpoint of the stage (default: its latest materialization)."""
    mlflow_model_id: str = ""
    """Its LoggedModel, when known (the sensor passes it)."""


EvaluationRunConfig = overrides_config("EvaluationRunConfig", EvalConfig, base=CheckpointChoice)


def resolve_checkpoint(context: dg.AssetExecutionContext, config: CheckpointChoice, stage: str) -> tuple[CheckpointRef, dict]:
    """(checkpoint reference, its manifest) of `stage`, verified to exist."""
    if not config.checkpoint_uri:
        ref = upstream_ref(context, stage, CheckpointRef)
        return ref, verified(ref, f"checkpoint of {stage!r}")
    try:
        ref = CheckpointRef.at(config.checkpoint_uri, config.mlflow_model_id or None)
    except MissingReference as e:
        raise dg.Failure(description=f"checkpoint_uri: {e}") from e
    if ref.stage != stage:
        raise dg.Failure(description=f"checkpoint_uri {ref.uri} is a {ref.stage!r} checkpoint; this asset evaluates "
                                     f"{stage!r} (materialize evaluation/{ref.stage} for it)")
    return ref, verified(ref, "checkpoint")


def previous_evaluation(context: dg.AssetExecutionContext) -> dict:
    """The metadata of this asset's latest materialization (the same stage's previous evaluation)."""
    event = context.instance.get_latest_materialization_event(context.asset_key)
    if event is None or event.asset_materialization is None:
        return {}
    return plain_metadata(event.asset_materialization.metadata)


def suite_metrics(md: dict) -> dict[str, float]:
    return {k: v for k, v in md.items() if "/" in k and isinstance(v, (int, float))}


def checkpoint_label(uri: str, step, digest: str) -> str:
    return f"`{uri}` (step {step}, digest {str(digest)[:12]})"


def comparison_md(stage: str, metrics: dict[str, float], now: str, previous: dict) -> str:
    """The change against the previous evaluation of the same stage, naming both checkpoints."""
    if not previous:
        return f"First evaluation of {stage}: {now}; nothing to compare with yet.\n"
    before_metrics = suite_metrics(previous)
    before = checkpoint_label(previous.get("evaluated_checkpoint", "?"), previous.get("evaluated_step", "?"),
                              previous.get("evaluated_digest", "?"))
    rows = []
    for key in sorted(k for k in metrics if k.endswith(("/accuracy", "/pass@1"))):
        old = before_metrics.get(key)
        delta = f"{metrics[key] - old:+.4f}" if isinstance(old, (int, float)) else "n/a"
        rows.append(f"| {key} | {metrics[key]:.4f} | {old if old is not None else 'n/a'} | {delta} |")
    return (f"Compared with the previous evaluation of {stage}\n\n- now: {now}\n- before: {before}\n\n"
            "| metric | now | before | change |\n|---|---|---|---|\n" + "\n".join(rows) + "\n")


def evaluate(context: dg.AssetExecutionContext, config: CheckpointChoice, profile: RunProfile, artifacts: ArtifactStore,
             mlflow: MlflowTracking, launcher: TorchrunLauncher, stage: str) -> dg.MaterializeResult:
    import recipes
    from evaluation.run import EvalSpec, missing_suite_data  # torch and the suites load only when evaluating

    asset = context.asset_key
    with mlflow.stage_run(context, "evaluation") as run:
        overrides = {k: v for k, v in set_fields(config).items() if k not in CheckpointChoice.model_fields}
        cfg = resolve_or_fail(recipes.resolve_evaluation, profile.name, overrides)
        data_root = default_data_root()
        missing = missing_suite_data(cfg, data_root)
        if missing:
            raise dg.Failure(description=f"evaluation data missing: {missing} (set K25_DATA_ROOT to your copy)")
        ckpt, manifest = resolve_checkpoint(context, config, stage)
        check_profile(ckpt, manifest, profile.name, "evaluated")
        mixture = upstream_ref(context, "mixture", MixtureRef)
        verified(mixture, "mixture")
        previous = previous_evaluation(context)
        out = artifacts.uri("evaluation", stage, context.run_id)
        spec = EvalSpec(profile=profile.name, evaluation=cfg, checkpoint=ckpt, mixture=mixture, out=out)
        spec_uri = write_spec(spec, out)
        run.tracker.log_params(run.run_id, spec_params(spec))
        if ckpt.model_id:
            run.tracker.log_model_input(run.run_id, ckpt.model_id)
        for key, value in (("evaluated_checkpoint", ckpt.uri), ("evaluated_stage", stage),
                           ("evaluated_digest", ckpt.digest)):
            run.tracker.client.set_tag(run.run_id, key, value)
        args = ["--spec", spec_uri, "--mlflow-run-id", run.run_id, "--data-root", data_root]
        result = launcher.run(context, "evaluation.run", args, profile.load().nproc_per_node,
                              env={"MLFLOW_TRACKING_URI": mlflow.tracking_uri})
        md = plain_metadata(result.metadata or {})
        metrics = suite_metrics(md)
        comparison = comparison_md(stage, metrics, checkpoint_label(ckpt.uri, ckpt.step, ckpt.digest), previous)
        run.tracker.client.log_text(run.run_id, comparison, "comparison.md")
        written = storage.exists(storage.join(out, "report.md")) and storage.exists(storage.join(out, "records.parquet"))
        scored = {s: md.get(f"{s}/n", 0) for s in cfg.suites}
        checks = run.record_checks([
            dg.AssetCheckResult(check_name="report_written", asset_key=asset, passed=written,
                                metadata={"report_uri": out}),
            dg.AssetCheckResult(check_name="every_suite_scored", asset_key=asset,
                                passed=all(n and n > 0 for n in scored.values()),
                                metadata={"examples_per_suite": dg.MetadataValue.json(scored)}),
        ])
    return dg.MaterializeResult(
        metadata={**(result.metadata or {}), **run.links(ckpt.model_id), "evaluated_stage": stage,
                  "evaluated_step": ckpt.step, "evaluated_digest": ckpt.digest, "spec_uri": spec_uri,
                  "report_md": dg.MetadataValue.md(md.get("report_md", "")),
                  "accuracy_chart": image_markdown(md["accuracy_png_uri"], f"accuracy of {stage}"),
                  "comparison": dg.MetadataValue.md(comparison)},
        data_version=result.data_version, check_results=checks)


def evaluation_asset(stage: str) -> dg.AssetsDefinition:
    key = evaluation_key(stage)

    @dg.asset(key=key, group_name="eval", code_version="eval-v4", kinds={"pytorch"}, deps=[stage, "mixture"],
              pool="gpu", check_specs=check_specs(key, EVAL_CHECKS),
              description=f"Evaluate the latest {stage} checkpoint (or `checkpoint_uri`, one of {stage}'s) on every "
                          "configured suite; report table, comparison with the previous evaluation of "
                          f"{stage} and chart, here and in MLflow.")
    def _evaluation(context: dg.AssetExecutionContext, config: EvaluationRunConfig, profile: RunProfile,  # type: ignore[valid-type]
                    artifacts: ArtifactStore, mlflow: MlflowTracking, launcher: TorchrunLauncher) -> dg.MaterializeResult:
        return evaluate(context, config, profile, artifacts, mlflow, launcher, stage)

    return _evaluation


EVALUATION_ASSETS = [evaluation_asset(s) for s in EVALUATED_STAGES]
