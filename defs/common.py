"""What the assets of every domain share: typed launchpad fields, upstream references, the launch
of a training program and the checks of what it wrote.

A training asset resolves its stage's run spec once (recipes/: the run's profile, then the
launchpad's typed overrides), writes `spec.json` into the run folder, logs it as MLflow params and
launches the program with `--spec`. Stages hand each other typed references (infra/refs.py) read
from the upstream materialization's metadata; each is verified once, before any process starts.
"""

import base64
import dataclasses
import math
import typing
from typing import Any, Literal, Optional

import dagster as dg
import pydantic

from defs.resources import ArtifactStore, MlflowTracking, RunProfile, TorchrunLauncher
from infra import storage
from infra.refs import CheckpointRef, MissingReference, MixtureRef, ToolDataRef, plain_metadata
from infra.settings import default_data_root
from infra.spec import SpecError, block_class, spec_params, write_spec
from infra.tracking import DatasetRef
from training.spec import POST_TRAINING_BLOCKS, StageInputs, StageSpec, stage_info, upstream_of

CHECKPOINT_CHECKS = ("checkpoint_manifest_present", "loss_is_finite")


# ---- typed launchpad fields, generated from the spec's blocks

def _launchpad_type(annotation: Any) -> Any:
    """The Dagster config type of a block field: Literal choices become str (the spec checks the
    value before launch), tuples lists, `X | None` X (None in the launchpad means "the profile's")."""
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    origin = typing.get_origin(annotation)
    if origin is Literal:
        return type(args[0])
    if origin in (tuple, list):
        return list[_launchpad_type(args[0])]
    if args and origin is not dict and type(None) in typing.get_args(annotation):
        return _launchpad_type(args[0])
    return annotation


def _block_fields(cls: type) -> list[tuple[str, Any, str | None]]:
    if issubclass(cls, pydantic.BaseModel):
        return [(n, f.annotation, f.description) for n, f in cls.model_fields.items()]
    hints = typing.get_type_hints(cls)
    return [(f.name, hints[f.name], None) for f in dataclasses.fields(cls)]


def overrides_config(name: str, block: type, skip: tuple[str, ...] = (), base: type = dg.Config) -> type:
    """A dg.Config with one optional typed field per field of `block`; unset = the profile's value."""
    fields = {fname: (Optional[_launchpad_type(ann)], pydantic.Field(None, description=doc))
              for fname, ann, doc in _block_fields(block) if fname not in skip}
    return pydantic.create_model(name, __base__=base, __doc__=f"Overrides of {block.__name__}; unset = the profile's value.",
                                 **fields)


def set_fields(config: dg.Config, prefix: str = "") -> dict[str, Any]:
    """The fields a launchpad config sets, as dotted-path overrides (unset fields are None)."""
    out = {}
    for key, value in config:
        if isinstance(value, dg.Config):
            out.update(set_fields(value, f"{prefix}{key}."))
        elif value is not None:
            out[f"{prefix}{key}"] = value
    return out


def stage_config_class(stage: str, has_phases: bool) -> type:
    """The launchpad config of a training stage: one typed section per block of its spec."""
    blocks = ("train", "data", "optimizer", "parallel", "checkpoint", *POST_TRAINING_BLOCKS.get(stage, ()))
    fields: dict[str, Any] = {}
    for key in blocks:
        section = overrides_config(f"{stage}_{key}", block_class(StageSpec.model_fields[key].annotation))
        fields[key] = (section, pydantic.Field(default_factory=section, description=f"the {key} block"))
    if has_phases:
        fields["phase_steps"] = (Optional[list[int]], pydantic.Field(None, description="steps per phase, in order"))
        fields["phase_overrides"] = (dict[str, str], pydantic.Field(
            default_factory=dict, description="one phase's fields: '<phase>.<block>.<field>': value"))
    return pydantic.create_model(f"{stage}_config", __base__=dg.Config,
                                 __doc__=f"Overrides of the {stage} spec; unset fields keep the run profile's values.",
                                 **fields)


def stage_overrides(config: dg.Config) -> dict[str, Any]:
    out = set_fields(config)
    out.update(out.pop("phase_overrides", None) or {})
    return out


# ---- upstream references

def latest_materialization(context: dg.AssetExecutionContext, key: str):
    event = context.instance.get_latest_materialization_event(dg.AssetKey(key))
    if event is None or event.asset_materialization is None:
        raise dg.Failure(description=f"missing upstream: asset {key!r} has never been materialized; materialize it first")
    return event.asset_materialization


def upstream_ref(context: dg.AssetExecutionContext, key: str, ref_type: type):
    """The typed reference an upstream asset recorded, or a Failure naming what is missing."""
    try:
        return ref_type.from_materialization(latest_materialization(context, key), f"upstream asset {key!r}")
    except MissingReference as e:
        raise dg.Failure(description=str(e)) from e


def verified(ref, what: str):
    """`ref.verify()` (what it points to, read once), or a Failure naming the upstream."""
    try:
        return ref.verify()
    except MissingReference as e:
        raise dg.Failure(description=f"missing upstream {what}: {e}") from e


def mixture_datasets(ref: MixtureRef, mixture: dict) -> list[DatasetRef]:
    """The data sets a training run consumes, with the digests curation computed."""
    refs = [DatasetRef("mixture", ref.digest, ref.uri),
            DatasetRef("tokenizer", mixture["tokenizer"]["digest"], mixture["tokenizer"]["uri"])]
    refs += [DatasetRef(name, src["digest"], src["manifest_uri"]) for name, src in sorted(mixture["sources"].items())]
    return refs


def check_profile(ref: CheckpointRef, manifest: dict, profile: str, what: str) -> None:
    """A checkpoint trained under one profile is not continued under another (a tiny model with
    the small profile's settings would train without complaint, and wrongly)."""
    found = manifest.get("profile")
    if found != profile:
        raise dg.Failure(description=f"{what} checkpoint {ref.uri} was trained with profile {found!r}, this run's "
                                     f"profile is {profile!r}; materialize the chain with one profile")


def image_markdown(uri: str, title: str) -> dg.MetadataValue:
    """A PNG the program stored, inline in the materialization's metadata (Dagster renders
    markdown images): the program sends the image's URI, never the image, through Pipes."""
    png = storage.read_bytes(uri)
    return dg.MetadataValue.md(f"![{title}](data:image/png;base64,{base64.b64encode(png).decode()})")


# ---- training stages

def resolve_or_fail(resolve, *args):
    try:
        return resolve(*args)
    except SpecError as e:
        raise dg.Failure(description=str(e)) from e


TOOL_DATA_STAGES = ("sft",)  # stages that read sft_tool_data's executed traces
JUDGE_STAGES = ("rl",)  # stages that read the grm stage's judge (when rl.grm_weight > 0)


@dataclasses.dataclass(frozen=True)
class StageCheck:
    """A stage's own check of what its program reported: `judge(metadata, spec) -> (passed, facts)`."""
    name: str
    blocking: bool
    judge: typing.Callable[[dict, StageSpec], tuple[bool, dict]]

    def result(self, asset: str, md: dict, spec: StageSpec) -> dg.AssetCheckResult:
        passed, facts = self.judge(md, spec)
        return dg.AssetCheckResult(check_name=self.name, asset_key=asset, passed=bool(passed),
                                   severity=dg.AssetCheckSeverity.ERROR if self.blocking else dg.AssetCheckSeverity.WARN,
                                   metadata={k: str(v) for k, v in facts.items()})


def run_folder_id(context: dg.AssetExecutionContext) -> str:
    """The run folder is the root run's: "Re-execute" of a stopped or failed run in the UI finds
    the checkpoint its first attempt committed and resumes from it (resume=auto)."""
    return context.dagster_run.root_run_id or context.run_id


def with_judge(context: dg.AssetExecutionContext, spec: StageSpec, profile: str, run) -> StageSpec:
    """RL with a GRM term reads the grm stage's latest judge (checked like an upstream)."""
    if spec.rl is None or spec.rl.grm_weight == 0:
        return spec
    judge = upstream_ref(context, "grm", CheckpointRef)
    check_profile(judge, verified(judge, "checkpoint of 'grm'"), profile, "judge 'grm'")
    if judge.model_id:
        run.tracker.log_model_input(run.run_id, judge.model_id)
    return spec.model_copy(update={"inputs": spec.inputs.model_copy(update={"judge": judge})})


def run_training_stage(context: dg.AssetExecutionContext, config: dg.Config, profile: RunProfile,
                       artifacts: ArtifactStore, mlflow: MlflowTracking, launcher: TorchrunLauncher,
                       stage: str, stage_checks: tuple[StageCheck, ...] = ()) -> dg.MaterializeResult:
    import recipes

    # The MLflow run opens first: whatever fails below (a missing upstream, a bad override, the
    # program, a failed check) ends it FAILED, and a stop from the UI ends it KILLED.
    with mlflow.stage_run(context, stage) as run:
        mixture_ref = upstream_ref(context, "mixture", MixtureRef)
        mixture = verified(mixture_ref, "mixture")
        upstream = upstream_of(stage)
        init = upstream_ref(context, upstream, CheckpointRef) if upstream else None
        if init is not None:
            check_profile(init, verified(init, f"checkpoint of {upstream!r}"), profile.name, f"upstream {upstream!r}")
        run_dir = artifacts.uri("checkpoints", stage, run_folder_id(context))
        tool_data = None
        if stage in TOOL_DATA_STAGES:
            tool_data = upstream_ref(context, "sft_tool_data", ToolDataRef)
            run.tracker.log_datasets(run.run_id, [DatasetRef("sft_tool_data", verified(tool_data, "sft_tool_data")["digest"],
                                                             tool_data.uri)])
        inputs = StageInputs(mixture=mixture_ref, run_dir=run_dir, init_from=init, tool_data=tool_data)
        spec: StageSpec = resolve_or_fail(recipes.resolve_stage, profile.name, stage, stage_overrides(config), inputs)
        if stage in JUDGE_STAGES:
            spec = with_judge(context, spec, profile.name, run)
        spec_uri = write_spec(spec, run_dir)
        run.tracker.log_params(run.run_id, spec_params(spec))
        run.tracker.log_datasets(run.run_id, mixture_datasets(mixture_ref, mixture))
        if init is not None and init.model_id:
            run.tracker.log_model_input(run.run_id, init.model_id)
        args = ["--spec", spec_uri, "--mlflow-run-id", run.run_id, "--data-root", default_data_root()]
        # The tracking URI travels in the environment: a command line shows in logs and `ps`.
        result = launcher.run(context, stage_info(stage).program, args, spec.nproc_per_node,
                              env={"MLFLOW_TRACKING_URI": mlflow.tracking_uri})
        md = plain_metadata(result.metadata or {})
        data_version = result.data_version.value if result.data_version else None
        checks = run.record_checks(checkpoint_checks(stage, md, data_version)
                                   + [c.result(stage, md, spec) for c in stage_checks])
    plot = {"loss_curve": image_markdown(md["curves_uri"], f"{stage} curves")} if md.get("curves_uri") else {}
    extra = {**plot, **run.links(md.get("mlflow_model_id")), "init_from": str(init.uri if init else None), "run_dir": run_dir,
             "spec_uri": spec_uri}
    return dg.MaterializeResult(metadata={**(result.metadata or {}), **extra}, data_version=result.data_version,
                                check_results=checks)


def checkpoint_checks(asset: str, md: dict[str, Any], data_version: str | None) -> list[dg.AssetCheckResult]:
    """Verified from storage by the orchestrator, independently of what the trainer claims."""
    try:
        ref = CheckpointRef.from_metadata(md, f"asset {asset!r}")
        ref.verify()
        present = ref.digest == data_version
        why = f"manifest digest {ref.digest} vs data version {data_version}"
    except MissingReference as e:
        present, why = False, str(e)
    loss = md.get("loss_last")
    finite = isinstance(loss, (int, float)) and math.isfinite(loss)
    return [
        dg.AssetCheckResult(check_name="checkpoint_manifest_present", asset_key=asset, passed=present,
                            metadata={"checkpoint_uri": str(md.get("checkpoint_uri")), "detail": why}),
        dg.AssetCheckResult(check_name="loss_is_finite", asset_key=asset, passed=finite,
                            metadata={"loss_last": str(loss)}),
    ]


def check_specs(asset: str | dg.AssetKey, names: tuple[str, ...]) -> list[dg.AssetCheckSpec]:
    return [dg.AssetCheckSpec(n, asset=asset, blocking=True) for n in names]


def training_asset(stage: str, description: str, code_version: str = "train-v3",
                   stage_checks: tuple[StageCheck, ...] = ()) -> dg.AssetsDefinition:
    """A training stage asset: resolve the spec, launch the stage's program under torchrun via
    Pipes, verify the checkpoint (and run the stage's own checks). Training stages share the
    `gpu` pool and are never auto-materialized (a retrain must be asked for)."""
    import recipes

    upstream = upstream_of(stage)
    has_phases = any(p.stages[stage].phases for p in map(recipes.load_profile, recipes.PROFILES))
    config_class = stage_config_class(stage, has_phases)

    side = ["sft_tool_data"] if stage in TOOL_DATA_STAGES else []
    side += ["grm"] if stage in JUDGE_STAGES else []
    checks = check_specs(stage, CHECKPOINT_CHECKS) + [dg.AssetCheckSpec(c.name, asset=stage, blocking=c.blocking)
                                                      for c in stage_checks]

    @dg.asset(name=stage, group_name=stage_info(stage).group, deps=["mixture", *([upstream] if upstream else []), *side],
              code_version=code_version, kinds={"pytorch"}, pool="gpu", description=description,
              check_specs=checks)
    def _stage(context: dg.AssetExecutionContext, config: config_class, profile: RunProfile,  # type: ignore[valid-type]
               artifacts: ArtifactStore, mlflow: MlflowTracking, launcher: TorchrunLauncher) -> dg.MaterializeResult:
        return run_training_stage(context, config, profile, artifacts, mlflow, launcher, stage, stage_checks)

    return _stage
