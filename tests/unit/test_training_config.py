"""Stage configs: profiles, string overrides (as they arrive from the Dagster UI) and validation."""

import dataclasses

import pytest

from model.config import PRESETS
from training.config import (
    MODULE_GROUPS,
    PROFILES,
    STAGES,
    ConfigError,
    StageConfig,
    apply_overrides,
    load_profile,
    stage_config,
)


@pytest.mark.parametrize("profile", sorted(PROFILES))
def test_every_stage_of_every_profile_validates(profile):
    p = load_profile(profile)
    assert p.name == profile and p.model in PRESETS
    assert set(p.stages) == set(STAGES)
    for stage in STAGES:
        cfg = stage_config(profile, stage)
        assert isinstance(cfg, StageConfig)
        assert cfg == p.stages[stage]  # no overrides: the profile's own values


def test_profiles_encode_the_recipe():
    tiny = load_profile("tiny")
    assert tiny.stages["vit_warmup"].sources == ("image_text", "video")
    assert tiny.stages["joint_pretrain"].vision_ratio == pytest.approx(0.1)
    assert tiny.stages["midtrain"].yarn_factor > 1
    for stage in ("sft", "rl", "parl"):
        assert tiny.stages[stage].sources == ("text",) and tiny.stages[stage].trainable == ("llm",)
    k25 = load_profile("k25")
    # ViT warm-up: stage 1 trains MoonViT-3D + projector, stage 2 only the projector (phases)
    assert stage_config("k25", "vit_warmup", {"phase": "caption"}).trainable == ("vision", "projector")
    assert stage_config("k25", "vit_warmup", {"phase": "projector"}).trainable == ("projector",)
    assert k25.stages["midtrain"].seq_len > k25.stages["joint_pretrain"].seq_len
    # Profiles are built fresh on each load: mutating one never leaks into the next.
    tiny.stages["sft"].steps = 999
    assert load_profile("tiny").stages["sft"].steps != 999


def test_unknown_profile_and_stage():
    with pytest.raises(ConfigError, match="unknown profile 'huge'"):
        stage_config("huge", "sft")
    with pytest.raises(ConfigError, match="unknown profile"):
        load_profile("")
    with pytest.raises(ConfigError, match="unknown stage 'pretrain'"):
        stage_config("tiny", "pretrain")


def test_unknown_override_key_names_it():
    with pytest.raises(ConfigError, match="unknown override 'stepz'"):
        stage_config("tiny", "sft", {"stepz": "3"})


@pytest.mark.parametrize("key,value", [("steps", "ten"), ("steps", "1.5"), ("lr", "fast"), ("batch_size", "")])
def test_unparsable_override_is_a_config_error(key, value):
    with pytest.raises(ConfigError, match=f"override {key}="):
        stage_config("tiny", "joint_pretrain", {key: value})


def test_override_coercion():
    cfg = stage_config("tiny", "joint_pretrain", {
        "steps": " 12 ", "lr": "1e-4", "yarn_factor": "2", "answer_style": " final ",
        "trainable": "vision, projector", "sources": "text,video,", "temperature": "0.5"})
    assert cfg.steps == 12 and isinstance(cfg.steps, int)
    assert cfg.lr == pytest.approx(1e-4) and isinstance(cfg.lr, float)
    assert cfg.yarn_factor == 2.0 and isinstance(cfg.yarn_factor, float)
    assert cfg.answer_style == "final"
    assert cfg.trainable == ("vision", "projector")
    assert cfg.sources == ("text", "video")
    assert cfg.temperature == 0.5
    # Non-string values (e.g. ints from a run config) are coerced the same way.
    assert stage_config("tiny", "sft", {"steps": 7}).steps == 7
    # The profile object is not mutated by overrides.
    assert load_profile("tiny").stages["joint_pretrain"].steps == 60


def test_apply_overrides_returns_a_copy():
    base = StageConfig()
    new = apply_overrides(base, {"steps": "3"}, "test")
    assert new.steps == 3 and base.steps == StageConfig().steps
    assert apply_overrides(base, None, "test") == base


@pytest.mark.parametrize("overrides,message", [
    ({"steps": "0"}, "steps must be > 0"),
    ({"batch_size": "-1"}, "batch_size must be > 0"),
    ({"group_size": "0"}, "group_size must be > 0"),
    ({"lr": "0"}, "lr must be > 0"),
    ({"lr": "nan"}, "lr must be > 0"),
    ({"vision_ratio": "1.0"}, "vision_ratio"),
    ({"vision_ratio": "-0.1"}, "vision_ratio"),
    ({"vision_ratio": "nan"}, "vision_ratio"),
    ({"ratio_low": "1.5"}, "ratio_low"),
    ({"ratio_low": "0"}, "ratio_low"),
    ({"ratio_high": "0.9"}, "ratio_high"),
    ({"yarn_factor": "0.5"}, "yarn_factor"),
    ({"answer_style": "essay"}, "answer_style"),
    ({"sources": "text,audio"}, "unknown sources"),
    ({"trainable": "vision,decoder"}, "trainable"),
    ({"trainable": ""}, "trainable"),
    ({"trainable": " , "}, "trainable"),
])
def test_out_of_range_values_are_rejected(overrides, message):
    with pytest.raises(ConfigError, match=message) as info:
        stage_config("tiny", "joint_pretrain", overrides)
    assert "joint_pretrain" in str(info.value)


def test_all_errors_are_reported_together():
    with pytest.raises(ConfigError) as info:
        stage_config("tiny", "rl", {"steps": "0", "lr": "-1", "trainable": "x"})
    msg = str(info.value)
    assert "steps must be > 0" in msg and "lr must be > 0" in msg and "trainable" in msg


@pytest.mark.parametrize("subset", ["vision", "projector", "llm", "vision,projector", "projector,llm",
                                    "vision,projector,llm"])
def test_every_trainable_subset_is_accepted(subset):
    cfg = stage_config("tiny", "joint_pretrain", {"trainable": subset})
    assert set(cfg.trainable) <= set(MODULE_GROUPS) and cfg.trainable == tuple(subset.split(","))


def test_validate_directly():
    StageConfig().validate("x")
    with pytest.raises(ConfigError):
        dataclasses.replace(StageConfig(), seq_len=0).validate("x")
    assert issubclass(ConfigError, ValueError)


def test_zero1_and_expert_parallel_options_are_validated():
    import pytest

    from training.config import ConfigError, stage_config

    assert stage_config("tiny", "sft", {"zero_stage": "1"}).zero_stage == 1
    # MuonClip shards its own state by whole matrices, also with DEP
    assert stage_config("tiny", "joint_pretrain", {"zero_stage": "1", "dep": "true"}).zero_stage == 1
    assert stage_config("tiny", "joint_pretrain", {"expert_parallel": "2"}).expert_parallel == 2
    for stage, overrides, message in [
        ("sft", {"zero_stage": "1", "dep": "true"}, "zero_stage=1 cannot be combined with dep=true"),
        ("sft", {"zero_stage": "1", "expert_parallel": "2"}, "cannot be combined with expert_parallel>1"),
        ("sft", {"zero_stage": "3"}, "zero_stage must be 0 or 1"),
        ("sft", {"expert_parallel": "0"}, "expert_parallel must be >= 1"),
    ]:
        with pytest.raises(ConfigError, match=message.replace(">", ".")):
            stage_config("tiny", stage, overrides)
