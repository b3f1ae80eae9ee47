"""The asset graph as agreed in DESIGN.md: keys, dependencies, checks, code versions, pools."""

import dagster as dg

from pipelines import build_definitions

EXPECTED_DEPS = {
    "text_corpus": set(),
    "image_text_corpus": set(),
    "video_corpus": set(),
    "tokenizer": {"text_corpus"},
    "mixture": {"text_corpus", "image_text_corpus", "video_corpus", "tokenizer"},
    "vit_warmup": {"mixture"},
    "joint_pretrain": {"mixture", "vit_warmup"},
    "midtrain": {"mixture", "joint_pretrain"},
    "sft": {"mixture", "midtrain"},
    "rl": {"mixture", "sft"},
    "parl": {"mixture", "rl"},
    "evaluation": {"mixture", "parl"},
}
TRAINING = ("vit_warmup", "joint_pretrain", "midtrain", "sft", "rl", "parl")


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
        assert spec.blocking, spec_key


def test_training_stages_share_gpu_pool_and_have_checkpoint_checks(tmp_path):
    defs, graph = _graph(tmp_path)
    for name in TRAINING:
        assets_def = defs.resolve_assets_def(name)
        assert assets_def.op.pool == "gpu", name
        names = {k.name for k in graph.asset_check_keys if k.asset_key.to_user_string() == name}
        assert names == {"checkpoint_manifest_present", "loss_is_finite"}, name


def test_evaluation_schedule_and_sensor_are_defined_and_start_stopped(tmp_path):
    defs, _ = _graph(tmp_path)
    schedule = defs.resolve_schedule_def("nightly_evaluation")
    sensor = defs.resolve_sensor_def("new_checkpoint_evaluation")
    assert schedule.job_name == sensor.job_name == "evaluation_job"
    assert schedule.default_status == dg.DefaultScheduleStatus.STOPPED
    assert sensor.default_status == dg.DefaultSensorStatus.STOPPED
    assert [k.to_user_string() for k in defs.resolve_job_def("evaluation_job").asset_layer.selected_asset_keys] == [
        "evaluation"]


def test_evaluation_config_rejects_bad_values():
    import pytest

    from evaluation.config import eval_config
    from training.config import ConfigError

    assert eval_config("tiny", {"suites": "gsm8k,mmlu"}).suites == ("gsm8k", "mmlu")
    assert eval_config("k25").samples_for("aime25") == 32 and eval_config("k25").top_p == 0.95
    for overrides, message in [({"suites": "gsm8k,imagenet"}, "unknown: ['imagenet']"),
                               ({"samples_per_suite": "aime25=4"}, "'suite:k'"),
                               ({"top_p": "0"}, "top_p must be in (0, 1]"),
                               ({"limt": "3"}, "unknown override 'limt'")]:
        with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("(", r"\(").replace("]", r"\]")
                           .replace(")", r"\)")):
            eval_config("tiny", overrides)
