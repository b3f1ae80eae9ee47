"""The asset graph as agreed in DESIGN.md: keys, dependencies, checks, code versions, pools;
the whole graph as a reviewed syrupy snapshot; the launchpad's typed fields."""

import dagster as dg
import pytest

from definitions import build_definitions
from training.spec import STAGE_NAMES

EXPECTED_DEPS = {
    "text_corpus": set(),
    "image_text_corpus": set(),
    "video_corpus": set(),
    "tokenizer": {"text_corpus"},
    "mixture": {"text_corpus", "image_text_corpus", "video_corpus", "tokenizer"},
    "vit_warmup": {"mixture"},
    "joint_pretrain": {"mixture", "vit_warmup"},
    "midtrain": {"mixture", "joint_pretrain"},
    "sft_tool_data": set(),  # executed IPython traces, built from photos on disk and GSM8K
    "sft": {"mixture", "midtrain", "sft_tool_data"},
    "grm": {"mixture", "sft"},  # the judge starts from the SFT checkpoint
    "rl": {"mixture", "sft", "grm"},  # the policy from SFT, the GRM reward from grm
    "parl": {"mixture", "rl"},
    "rft_data": {"rl"},  # reward-1 vision trajectories of the RL run (rejection sampling)
    # one evaluation per evaluated stage, whose real input is that stage
    **{f"evaluation/{stage}": {"mixture", stage} for stage in ("joint_pretrain", "midtrain", "sft", "rl", "parl")},
}
TRAINING = STAGE_NAMES
WARNING_CHECKS = {("grm", "judge_accuracy")}  # a weak judge is reported, not blocked (its parse contract blocks)


def _graph(tmp_path):
    defs = build_definitions(artifact_root=str(tmp_path / "art"), tracking_uri=f"sqlite:///{tmp_path}/m.db")
    return defs, defs.resolve_asset_graph()


def test_definitions_load(tmp_path):
    defs, _ = _graph(tmp_path)
    dg.Definitions.validate_loadable(defs)


def test_asset_keys_and_dependencies_snapshot(tmp_path):
    _, graph = _graph(tmp_path)
    deps = {k.to_user_string(): {p.to_user_string() for p in graph.get(k).parent_keys}
            for k in graph.get_all_asset_keys()}
    assert deps == EXPECTED_DEPS


def test_every_asset_has_docstring_code_version_and_blocking_check(tmp_path):
    defs, graph = _graph(tmp_path)
    checks_by_asset: dict[str, list] = {}
    for key in graph.asset_check_keys:
        checks_by_asset.setdefault(key.asset_key.to_user_string(), []).append(key.name)
    for key in graph.get_all_asset_keys():
        name = key.to_user_string()
        node = graph.get(key)
        assert node.description and len(node.description) > 40, name
        assert node.code_version, name
        assert checks_by_asset.get(name), f"{name} has no asset check"
    for spec_key in graph.asset_check_keys:
        spec = defs.resolve_assets_def(spec_key.asset_key).get_spec_for_check_key(spec_key)
        assert spec.blocking == ((spec_key.asset_key.to_user_string(), spec_key.name) not in WARNING_CHECKS), spec_key


def test_training_stages_share_gpu_pool_and_have_checkpoint_checks(tmp_path):
    defs, graph = _graph(tmp_path)
    for name in TRAINING:
        assets_def = defs.resolve_assets_def(name)
        assert assets_def.op.pool == "gpu", name
        names = {k.name for k in graph.asset_check_keys if k.asset_key.to_user_string() == name}
        own = {"grm": {"judge_parses", "judge_accuracy"}}.get(name, set())
        assert names == {"checkpoint_manifest_present", "loss_is_finite"} | own, name


def test_evaluation_schedule_and_sensor_start_stopped_and_evaluations_share_the_gpu_pool(tmp_path):
    defs, graph = _graph(tmp_path)
    schedule = defs.resolve_schedule_def("nightly_evaluation")
    sensor = defs.resolve_sensor_def("new_checkpoint_evaluation")
    assert schedule.default_status == dg.DefaultScheduleStatus.STOPPED
    assert sensor.default_status == dg.DefaultSensorStatus.STOPPED
    evaluations = sorted(k.to_user_string() for k in defs.resolve_job_def("evaluation_job").asset_layer.selected_asset_keys)
    assert evaluations == sorted(k for k in EXPECTED_DEPS if k.startswith("evaluation/"))
    for key in evaluations:
        assert defs.resolve_assets_def(dg.AssetKey.from_user_string(key)).op.pool == "gpu", key
    # MLflow follows failed and canceled Dagster runs (in the daemon), on by default
    for name in ("mlflow_failed_runs", "mlflow_canceled_runs"):
        assert defs.resolve_sensor_def(name).default_status == dg.DefaultSensorStatus.RUNNING


def test_evaluation_config_rejects_bad_values():
    import recipes
    from infra.spec import SpecError

    assert recipes.resolve_evaluation("tiny", {"suites": "gsm8k,mmlu"}).suites == ("gsm8k", "mmlu")
    k25 = recipes.resolve_evaluation("k25")
    assert k25.samples_for("aime25") == 32 and k25.top_p == 0.95
    for overrides, message in [({"suites": "gsm8k,imagenet"}, "unknown: ['imagenet']"),
                               ({"samples_per_suite": "aime25=4"}, "'suite:k'"),
                               ({"top_p": "0"}, "top_p: Input should be greater than 0"),
                               ({"limt": "3"}, "unknown override 'limt'")]:
        with pytest.raises(SpecError, match=message.replace("[", r"\[").replace("(", r"\(").replace("]", r"\]")
                           .replace(")", r"\)")):
            recipes.resolve_evaluation("tiny", overrides)


def _snapshot_of(defs: dg.Definitions) -> dict:
    graph = defs.resolve_asset_graph()
    assets = {}
    for key in sorted(graph.get_all_asset_keys(), key=lambda k: k.to_user_string()):
        node, assets_def = graph.get(key), defs.resolve_assets_def(key)
        checks = sorted((c.name, assets_def.get_spec_for_check_key(c).blocking) for c in graph.asset_check_keys
                        if c.asset_key == key)
        config = assets_def.op.config_schema.as_field().config_type if assets_def.op.config_schema else None
        assets[key.to_user_string()] = {
            "group": node.group_name, "deps": sorted(p.to_user_string() for p in node.parent_keys),
            "kinds": sorted(node.kinds), "pool": assets_def.op.pool, "code_version": node.code_version,
            "description": node.description, "checks": checks,
            "config_fields": sorted(config.fields) if config is not None and hasattr(config, "fields") else [],
        }
    jobs = sorted(j.name for j in defs.resolve_all_job_defs() if not j.name.startswith("__"))
    def target(s) -> list[str]:  # the asset keys a schedule or sensor launches (none: a run-status sensor)
        targets = getattr(s, "targets", None) or ([s.target] if getattr(s, "target", None) else [])
        return [t.job_name for t in targets]

    schedules = {s.name: (s.cron_schedule, target(s), str(s.default_status)) for s in defs.schedules or []}
    sensors = {s.name: (target(s), s.minimum_interval_seconds, str(s.default_status)) for s in defs.sensors or []}
    return {"assets": assets, "jobs": jobs, "schedules": schedules, "sensors": sensors,
            "resources": sorted(defs.resources or {})}


def test_definitions_snapshot(tmp_path, snapshot):
    """A change to the graph (keys, deps, groups, kinds, pools, code versions, descriptions, checks,
    launchpad fields, jobs, schedules, sensors) shows as a snapshot diff to review:
    `pytest tests/unit/test_definitions.py --snapshot-update` after checking it is intended."""
    defs = build_definitions(artifact_root=str(tmp_path / "art"), tracking_uri=f"sqlite:///{tmp_path}/m.db")
    assert _snapshot_of(defs) == snapshot


def test_launchpad_fields_are_typed_and_reject_a_bad_value_before_launch(tmp_path):
    """`optimizer.lr: "fast"` is refused by Dagster's config check, before any step starts."""
    defs = build_definitions(artifact_root=str(tmp_path / "art"), tracking_uri=f"sqlite:///{tmp_path}/m.db")
    job = defs.resolve_implicit_global_asset_job_def()
    bad = {"ops": {"joint_pretrain": {"config": {"optimizer": {"lr": "fast"}}}}}
    with pytest.raises(dg.DagsterInvalidConfigError, match='Value "fast".*Float'):
        job.execute_in_process(run_config=bad, asset_selection=[dg.AssetKey("joint_pretrain")],
                               instance=dg.DagsterInstance.ephemeral())
    fields = job.get_subset(asset_selection={dg.AssetKey("midtrain")}).run_config_schema.config_type
    assert fields is not None
