"""Stages trained in phases (training/spec.py): the profiles' phases, each phase's resolved spec,
the `phase_steps` and `<phase>.<block>.<field>` overrides and their validation; the reporter's
step offset that makes the phases one metric curve."""

import pytest

import recipes
from infra.spec import SpecError
from model.config import PRESETS
from training.reporting import Reporter
from training.spec import Phase, StageSpec, resolve_stage


def phases_of(profile, stage, overrides=None):
    return [p.spec for p in recipes.resolve_stage(profile, stage, overrides).phases]


def bare(phases) -> StageSpec:
    return StageSpec(stage="midtrain", profile="tiny", model="tiny", nproc_per_node=1, phases=phases)


# ----------------------------------------------------------------------------------------------
# Profiles


def test_tiny_midtrain_extends_context_with_yarn_factor_seq_len_over_original():
    original = PRESETS["tiny"].original_max_position
    phases = phases_of("tiny", "midtrain")
    assert [p.phase for p in phases] == ["ctx256", "ctx1k", "ctx4k"]
    assert [p.data.seq_len for p in phases] == [256, 1024, 4096]
    for p in phases:
        assert p.train.yarn_factor * original == p.data.seq_len  # YaRN's extended context is the phase's length
        assert p.phases == () and p.train.steps > 0
    assert phases[-1].data.batch_size == 1 and phases[-1].train.steps <= 2  # the 4K phase stays cheap on a CPU


def test_k25_midtrain_is_32k_then_256k_with_the_released_factor():
    original = PRESETS["k25"].original_max_position
    phases = phases_of("k25", "midtrain")
    assert [(p.data.seq_len, p.train.yarn_factor) for p in phases] == [(32768, 8.0), (262144, 64.0)]
    assert all(p.train.yarn_factor * original == p.data.seq_len for p in phases)
    assert phases[0].data.seq_len > recipes.resolve_stage("k25", "joint_pretrain").data.seq_len == original


@pytest.mark.parametrize("profile", ["tiny", "small", "k25"])
def test_vit_warmup_is_caption_then_projector_only(profile):
    caption, projector = phases_of(profile, "vit_warmup")
    assert (caption.phase, projector.phase) == ("caption", "projector")
    assert projector.train.trainable == ("projector",)
    assert "vision" in caption.train.trainable and "projector" in caption.train.trainable
    # no pretrained decoder at tiny/small size: the caption phase trains the LLM too
    assert ("llm" in caption.train.trainable) == (profile != "k25")
    assert projector.train.steps < caption.train.steps  # stage 2 is "very short"
    assert caption.data.sources == projector.data.sources == ("image_text", "video")


# ----------------------------------------------------------------------------------------------
# Resolution and overrides


def test_phase_spec_applies_the_phase_overrides_steps_and_seed_offset():
    stage = recipes.resolve_stage("tiny", "midtrain", {"optimizer.lr": "5e-4", "train.seed": "7"})
    ctx1k = stage.phases[1].spec
    assert (ctx1k.data.seq_len, ctx1k.train.yarn_factor, ctx1k.data.batch_size, ctx1k.train.steps) == (1024, 8.0, 1, 4)
    assert ctx1k.optimizer.lr == 5e-4 and stage.optimizer.lr == 5e-4  # a stage-level override reaches every phase
    assert ctx1k.train.seed == 7 + 1 and stage.train.seed == 7  # phase k: seed + k
    assert ctx1k.optimizer.name == stage.optimizer.name == "muonclip"
    # a phase that sets its own seed keeps it
    spec = resolve_stage(bare((Phase(name="a", steps=1), Phase(name="b", steps=1, overrides={"train.seed": 3}))))
    assert spec.phases[1].spec.train.seed == 3 and spec.phases[0].spec.train.seed == spec.train.seed


def test_phase_steps_and_scoped_overrides():
    spec = recipes.resolve_stage("tiny", "midtrain", {"phase_steps": "3, 2,1", "ctx4k.data.seq_len": "2048",
                                                      "ctx4k.train.yarn_factor": "16", "ctx1k.train.steps": "5"})
    assert [(p.name, p.steps) for p in spec.phases] == [("ctx256", 3), ("ctx1k", 5), ("ctx4k", 1)]
    ctx4k = spec.phases[2].spec
    assert (ctx4k.data.seq_len, ctx4k.train.steps, ctx4k.train.yarn_factor) == (2048, 1, 16.0)
    assert isinstance(ctx4k.data.seq_len, int)  # typed, not strings
    assert recipes.resolve_stage("tiny", "midtrain", {"phase_steps": [3, 2, 1]}).phases[2].steps == 1  # typed list
    # the profile is untouched
    assert [p.steps for p in recipes.load_profile("tiny").stages["midtrain"].phases] == [14, 4, 2]
    proj = recipes.resolve_stage("tiny", "vit_warmup", {"projector.train.trainable": "projector,vision"}).phases[1].spec
    assert proj.train.trainable == ("projector", "vision")


@pytest.mark.parametrize("overrides,message", [
    ({"train.steps": "6"}, "set it per phase instead, e.g. phase_steps=14,4,2"),
    ({"data.seq_len": "512"}, "override 'data.seq_len': stage 'midtrain' sets it per phase (ctx256, ctx1k, ctx4k)"),
    ({"data.batch_size": "3"}, "override 'data.batch_size'"),
    ({"phase_steps": "1,2"}, "has 3 phases (ctx256, ctx1k, ctx4k), got 2 counts"),
    ({"phase_steps": "1,x,2"}, "expected comma-separated integers"),
    ({"phase_steps": "1,0,2"}, "phase 'ctx1k'"),
    ({"ctx8k.data.seq_len": "8192"}, "has no block or phase 'ctx8k'"),
    ({"ctx4k.data.seqlen": "8192"}, "no field 'seqlen' in data"),
    ({"ctx4k.data.seq_len": "0"}, "phase 'ctx4k': data.seq_len: Input should be greater than 0"),
    ({"ctx4k.train.yarn_factor": "0.5"}, "phase 'ctx4k': train.yarn_factor"),
    ({"ctx4k.data.seq_len": "long"}, "data.seq_len: Input should be a valid integer"),
    ({"ctx1k.train.steps": "x"}, "valid integer"),
    ({"ctx1k.phase": "ctx4k"}, "override 'ctx1k.phase' is not supported"),
    ({"phases": "a,b"}, "override 'phases' is not supported"),
    ({"phase": "ctx2k"}, "override 'phase' is not supported"),
])
def test_bad_phase_overrides_name_the_field(overrides, message):
    with pytest.raises(SpecError) as info:
        recipes.resolve_stage("tiny", "midtrain", overrides)
    assert message in str(info.value)


def test_phase_overrides_need_a_phased_stage():
    for overrides in ({"phase_steps": "3"}, {"caption.train.steps": "3"}):
        with pytest.raises(SpecError, match="stage 'joint_pretrain' has no"):
            recipes.resolve_stage("tiny", "joint_pretrain", overrides)


@pytest.mark.parametrize("phases,message", [
    ((Phase(name="Ctx", steps=1),), "must match"),
    ((Phase(name="a.b", steps=1),), "must match"),
    ((Phase(name="data", steps=1),), "not be a block name"),
    ((Phase(name="a", steps=1), Phase(name="a", steps=2)), "phase names must be unique"),
    ((Phase(name="a", steps=1, overrides={"train.steps": 3}),), "cannot be set per phase"),
])
def test_phase_definitions_are_validated(phases, message):
    with pytest.raises(ValueError, match=message):
        bare(phases)
    with pytest.raises(ValueError, match="greater than 0"):
        Phase(name="a", steps=0)


def test_phase_values_are_validated_with_the_phase_named():
    stage = bare((Phase(name="long", steps=2, overrides={"data.seq_len": -1}),))  # the stage itself is fine
    with pytest.raises(SpecError, match="phase 'long': data.seq_len"):
        resolve_stage(stage)
    with pytest.raises(SpecError, match="no field 'nope'"):
        resolve_stage(bare((Phase(name="a", steps=1, overrides={"data.nope": 3}),)))


# ----------------------------------------------------------------------------------------------
# One metric curve across phases


def test_reporter_step_offset_shifts_metric_steps():
    r = Reporter(rank=0, stage="midtrain", tracking_uri=None, run_id=None)
    r.metrics(2, {"loss": 1.0})
    r.step_offset = 14
    r.metrics(1, {"loss": 0.5})
    assert r.history["loss"] == [(2, 1.0), (15, 0.5)]
    r.finish({}, None)
