"""What every asset shares: the UI config, reading upstream materializations, MLflow runs, and
the launch of a training program with its blocking checks.

Assets pass URIs, not tensors: each materialization's metadata holds the URI and digest of what
it wrote, and the next asset reads them from the instance. Everything that can be checked
cheaply (profile, overrides, upstream checkpoint present, data reachable) is checked here,
before any training process starts.
"""


import json
import math
from typing import Any

import dagster as dg

from infra import storage
from infra.tracking import DatasetRef
from pipelines.resources import ArtifactStore, MlflowTracking, TorchrunLauncher, default_data_root
from training import checkpoint
from training.config import ConfigError, Profile, StageConfig, load_profile, stage_config

CHECKPOINT_CHECKS = ("checkpoint_manifest_present", "loss_is_finite")


class StageRunConfig(dg.Config):
    """What the launchpad may set: a profile name and a few `field: value` overrides."""

    profile: str = "tiny"
    overrides: dict[str, str] = {}


def resolve_stage(config: StageRunConfig, stage: str) -> tuple[Profile, StageConfig]:
    try:
        return load_profile(config.profile), stage_config(config.profile, stage, config.overrides)
    except ConfigError as e:
        raise dg.Failure(description=str(e)) from e


def overrides_args(config: StageRunConfig) -> list[str]:
    return [a for k, v in sorted(config.overrides.items()) for a in ("--set", f"{k}={v}")]


def metadata_value(entry: Any) -> Any:
    return entry.value if hasattr(entry, "value") else entry


def upstream_metadata(context: dg.AssetExecutionContext, key: str, required: tuple[str, ...]) -> dict[str, Any]:
    """The metadata of the latest materialization of `key`; fails naming what is missing."""
    event = context.instance.get_latest_materialization_event(dg.AssetKey(key))
    if event is None or event.asset_materialization is None:
        raise dg.Failure(description=f"missing upstream: asset {key!r} has never been materialized; materialize it first")
    md = {k: metadata_value(v) for k, v in event.asset_materialization.metadata.items()}
    missing = [r for r in required if r not in md]
    if missing:
        raise dg.Failure(description=f"upstream asset {key!r} materialization lacks {missing}; re-materialize it")
    return md


def upstream_checkpoint(context: dg.AssetExecutionContext, key: str) -> tuple[str, str | None]:
    """(checkpoint URI, MLflow model id) of an upstream training asset, verified to exist."""
    md = upstream_metadata(context, key, ("checkpoint_uri",))
    uri = md["checkpoint_uri"]
    try:
        checkpoint.read_manifest(uri)
    except checkpoint.CheckpointError as e:
        raise dg.Failure(description=f"missing upstream checkpoint of {key!r}: {e}") from e
    return uri, md.get("mlflow_model_id")


def mixture_uri(context: dg.AssetExecutionContext) -> tuple[str, dict]:
    uri = upstream_metadata(context, "mixture", ("mixture_uri",))["mixture_uri"]
    if not storage.exists(uri):
        raise dg.Failure(description=f"mixture manifest {uri} recorded by the 'mixture' asset no longer exists")
    return uri, json.loads(storage.read_text(uri))


def mixture_datasets(uri: str, mixture: dict) -> list[DatasetRef]:
    """The data sets a training run consumes, with the digests curation computed."""
    refs = [DatasetRef("mixture", mixture["digest"], uri),
            DatasetRef("tokenizer", mixture["tokenizer"]["digest"], mixture["tokenizer"]["uri"])]
    refs += [DatasetRef(name, src["digest"], src["manifest_uri"]) for name, src in sorted(mixture["sources"].items())]
    return refs


def checkpoint_checks(asset: str, md: dict[str, Any], data_version: str | None) -> list[dg.AssetCheckResult]:
    """Verified from storage by the orchestrator, independently of what the trainer claims."""
    uri = md.get("checkpoint_uri")
    try:
        _, digest = checkpoint.read_manifest(uri) if uri else (None, None)
        present, why = digest is not None and digest == data_version, f"manifest digest {digest} vs data version {data_version}"
    except checkpoint.CheckpointError as e:
        present, why = False, str(e)
    loss = md.get("loss_last")
    finite = isinstance(loss, (int, float)) and math.isfinite(loss)
    return [
        dg.AssetCheckResult(check_name="checkpoint_manifest_present", asset_key=asset, passed=present,
                            metadata={"checkpoint_uri": str(uri), "detail": why}),
        dg.AssetCheckResult(check_name="loss_is_finite", asset_key=asset, passed=finite,
                            metadata={"loss_last": str(loss)}),
    ]


def check_specs(asset: str, names: tuple[str, ...]) -> list[dg.AssetCheckSpec]:
    return [dg.AssetCheckSpec(n, asset=asset, blocking=True) for n in names]


def run_training_stage(context: dg.AssetExecutionContext, config: StageRunConfig, artifacts: ArtifactStore,
                       mlflow: MlflowTracking, launcher: TorchrunLauncher, stage: str, module: str,
                       upstream: str | None) -> dg.MaterializeResult:
    profile, _ = resolve_stage(config, stage)
    mix_uri, mixture = mixture_uri(context)
    init_from, init_model = upstream_checkpoint(context, upstream) if upstream else (None, None)

    tracker, run_id = mlflow.stage_run(context, stage)
    tracker.log_datasets(run_id, mixture_datasets(mix_uri, mixture))
    if init_model:
        tracker.log_model_input(run_id, init_model)
    run_dir = artifacts.uri("checkpoints", stage, context.run_id)
    args = ["--stage", stage, "--profile", config.profile, *overrides_args(config), "--mixture", mix_uri,
            "--run-dir", run_dir, "--tracking-uri", mlflow.tracking_uri, "--mlflow-run-id", run_id,
            "--data-root", default_data_root()]
    if init_from:
        args += ["--init-from", init_from]
    try:
        result = launcher.run(context, module, args, profile.nproc_per_node)
    except Exception:
        tracker.finish(run_id, ok=False)
        raise
    tracker.finish(run_id)
    md = {k: metadata_value(v) for k, v in (result.metadata or {}).items()}
    data_version = result.data_version.value if result.data_version else None
    extra = {"mlflow_run": dg.MetadataValue.text(tracker.run_url(run_id)), "init_from": str(init_from),
             "run_dir": run_dir}
    return dg.MaterializeResult(metadata={**(result.metadata or {}), **extra}, data_version=result.data_version,
                                check_results=checkpoint_checks(stage, md, data_version))


def define_training_asset(name: str, module: str, upstream: str | None, group: str, doc: str,
                          code_version: str = "train-v1") -> dg.AssetsDefinition:
    """A training stage asset: validate, resolve inputs, launch `module` under torchrun via Pipes,
    verify the checkpoint. Training stages share the `gpu` pool and are never auto-materialized."""
    deps = ["mixture", *([upstream] if upstream else [])]

    @dg.asset(name=name, group_name=group, deps=deps, code_version=code_version, kinds={"pytorch"}, pool="gpu",
              description=doc, check_specs=check_specs(name, CHECKPOINT_CHECKS))
    def _stage(context: dg.AssetExecutionContext, config: StageRunConfig, artifacts: ArtifactStore,
               mlflow: MlflowTracking, launcher: TorchrunLauncher) -> dg.MaterializeResult:
        return run_training_stage(context, config, artifacts, mlflow, launcher, name, module, upstream)

    return _stage
