"""Stages trained in phases (training/config.py): the profiles' phases, resolution of a phase's
config, the `phase_steps` and `<phase>.<field>` overrides and their validation; the reporter's
step offset that makes the phases one metric curve."""

import dataclasses

import pytest

from model.config import PRESETS
from training.config import ConfigError, Phase, StageConfig, load_profile, stage_config
from training.reporting import Reporter


def phases_of(profile, stage, overrides=None):
    cfg = stage_config(profile, stage, overrides)
    return [stage_config(profile, stage, {**(overrides or {}), "phase": p.name}) for p in cfg.phases]


# ----------------------------------------------------------------------------------------------
# Profiles


def test_tiny_midtrain_extends_context_with_yarn_factor_seq_len_over_original():
    original = PRESETS["tiny"].original_max_position
    phases = phases_of("tiny", "midtrain")
    assert [p.phase for p in phases] == ["ctx256", "ctx1k", "ctx4k"]
    assert [p.seq_len for p in phases] == [256, 1024, 4096]
    for p in phases:
        assert p.yarn_factor * original == p.seq_len  # YaRN's extended context is the phase's length
        assert p.phases == stage_config("tiny", "midtrain").phases and p.steps > 0
    assert phases[-1].batch_size == 1 and phases[-1].steps <= 2  # the 4K phase stays cheap on a CPU


def test_k25_midtrain_is_32k_then_256k_with_the_released_factor():
    original = PRESETS["k25"].original_max_position
    phases = phases_of("k25", "midtrain")
    assert [(p.seq_len, p.yarn_factor) for p in phases] == [(32768, 8.0), (262144, 64.0)]
    assert all(p.yarn_factor * original == p.seq_len for p in phases)
    assert phases[0].seq_len > stage_config("k25", "joint_pretrain").seq_len == original


@pytest.mark.parametrize("profile", ["tiny", "small", "k25"])
def test_vit_warmup_is_caption_then_projector_only(profile):
    caption, projector = phases_of(profile, "vit_warmup")
    assert (caption.phase, projector.phase) == ("caption", "projector")
    assert projector.trainable == ("projector",)
    assert "vision" in caption.trainable and "projector" in caption.trainable
    # no pretrained decoder at tiny/small size: the caption phase trains the LLM too
    assert ("llm" in caption.trainable) == (profile != "k25")
    assert projector.steps < caption.steps  # stage 2 is "very short"
    assert caption.sources == projector.sources == ("image_text", "video")


@pytest.mark.parametrize("profile", ["tiny", "small", "k25"])
def test_every_phase_of_every_profile_validates(profile):
    for stage in load_profile(profile).stages:
        for p in stage_config(profile, stage).phases:
            resolved = stage_config(profile, stage, {"phase": p.name})
            assert resolved.phase == p.name and resolved.steps == p.steps


# ----------------------------------------------------------------------------------------------
# Resolution and overrides


def test_phase_config_applies_the_phase_overrides_steps_and_seed_offset():
    stage = stage_config("tiny", "midtrain", {"lr": "5e-4", "seed": "7"})
    ctx1k = stage_config("tiny", "midtrain", {"lr": "5e-4", "seed": "7", "phase": "ctx1k"})
    assert (ctx1k.seq_len, ctx1k.yarn_factor, ctx1k.batch_size, ctx1k.steps) == (1024, 8.0, 1, 4)
    assert ctx1k.lr == 5e-4 and stage.lr == 5e-4  # a stage-level override no phase sets reaches every phase
    assert ctx1k.seed == 7 + 1 and stage.seed == 7  # phase k: seed + k
    assert ctx1k.optimizer == stage.optimizer == "muonclip"
    # a phase that sets its own seed keeps it
    cfg = dataclasses.replace(StageConfig(), phases=(Phase("a", 1), Phase("b", 1, {"seed": 3})))
    from training.config import phase_config

    assert phase_config(cfg, "b", "x").seed == 3 and phase_config(cfg, "a", "x").seed == cfg.seed


def test_phase_steps_and_scoped_overrides():
    cfg = stage_config("tiny", "midtrain", {"phase_steps": "3, 2,1", "ctx4k.seq_len": "2048",
                                            "ctx4k.yarn_factor": "16", "ctx1k.steps": "5"})
    assert [(p.name, p.steps) for p in cfg.phases] == [("ctx256", 3), ("ctx1k", 5), ("ctx4k", 1)]
    ctx4k = cfg.phases[2]
    assert ctx4k.overrides["seq_len"] == 2048 and ctx4k.overrides["yarn_factor"] == 16.0  # typed, not strings
    resolved = stage_config("tiny", "midtrain", {"phase_steps": "3,2,1", "ctx4k.seq_len": "2048", "phase": "ctx4k"})
    assert (resolved.seq_len, resolved.steps, resolved.yarn_factor) == (2048, 1, 32.0)
    # the profile is untouched
    assert [p.steps for p in load_profile("tiny").stages["midtrain"].phases] == [14, 4, 2]
    proj = stage_config("tiny", "vit_warmup", {"projector.trainable": "projector,vision", "phase": "projector"})
    assert proj.trainable == ("projector", "vision")


@pytest.mark.parametrize("overrides,message", [
    ({"steps": "6"}, "set it per phase instead, e.g. phase_steps=14,4,2"),
    ({"seq_len": "512"}, "override 'seq_len': stage 'midtrain' sets it per phase (ctx256, ctx1k, ctx4k)"),
    ({"batch_size": "3"}, "override 'batch_size'"),
    ({"phase_steps": "1,2"}, "has 3 phases (ctx256, ctx1k, ctx4k), got 2 counts"),
    ({"phase_steps": "1,x,2"}, "expected comma-separated integers"),
    ({"phase_steps": "1,0,2"}, "phase 'ctx1k': steps must be > 0"),
    ({"ctx8k.seq_len": "8192"}, "has no phase 'ctx8k'"),
    ({"ctx4k.seqlen": "8192"}, "phase 'ctx4k': 'seqlen' is not a phase override"),
    ({"ctx4k.seq_len": "0"}, "invalid config for stage 'midtrain/ctx4k': seq_len must be > 0"),
    ({"ctx4k.yarn_factor": "0.5"}, "stage 'midtrain/ctx4k': yarn_factor must be >= 1"),
    ({"ctx4k.seq_len": "long"}, "override ctx4k.seq_len='long'"),
    ({"ctx1k.steps": "x"}, "override ctx1k.steps"),
    ({"ctx1k.phase": "ctx4k"}, "not supported"),
    ({"phases": "a,b"}, "override 'phases' is not supported"),
    ({"phase": "ctx2k"}, "unknown phase 'ctx2k'"),
])
def test_bad_phase_overrides_name_the_field(overrides, message):
    with pytest.raises(ConfigError) as info:
        stage_config("tiny", "midtrain", overrides)
    assert message in str(info.value)


def test_phase_overrides_need_a_phased_stage():
    for overrides in ({"phase_steps": "3"}, {"caption.steps": "3"}):
        with pytest.raises(ConfigError, match="stage 'joint_pretrain' has no phases"):
            stage_config("tiny", "joint_pretrain", overrides)
    with pytest.raises(ConfigError, match="unknown phase 'caption'"):
        stage_config("tiny", "joint_pretrain", {"phase": "caption"})


@pytest.mark.parametrize("phases,message", [
    ((Phase("Ctx", 1),), "must match"),
    ((Phase("a.b", 1),), "must match"),
    ((Phase("a", 1), Phase("a", 2)), "phase names must be unique"),
    ((Phase("a", 0),), "phase 'a': steps must be > 0"),
    ((Phase("a", 1, {"steps": 3}),), "phase 'a': 'steps' is not a phase override"),
    ((Phase("a", 1, {"nope": 3}),), "'nope' is not a phase override"),
])
def test_phase_definitions_are_validated(phases, message):
    with pytest.raises(ConfigError) as info:
        dataclasses.replace(StageConfig(), phases=phases).validate("x")
    assert message in str(info.value)


def test_phase_values_are_validated_with_the_phase_named():
    from training.config import phase_config

    cfg = dataclasses.replace(StageConfig(), phases=(Phase("long", 2, {"seq_len": -1}),))
    cfg.validate("x")  # the stage itself is fine
    with pytest.raises(ConfigError, match="stage 'x/long': seq_len must be > 0"):
        phase_config(cfg, "long", "x")


# ----------------------------------------------------------------------------------------------
# One metric curve across phases


def test_reporter_step_offset_shifts_metric_steps():
    r = Reporter(rank=0, stage="midtrain", tracking_uri=None, run_id=None)
    r.metrics(2, {"loss": 1.0})
    r.step_offset = 14
    r.metrics(1, {"loss": 0.5})
    assert r.history["loss"] == [(2, 1.0), (15, 0.5)]
    r.finish({}, None)
