"""The run spec: profiles (recipes/), typed overrides as they arrive from the launchpad or the
command line, validation per block, and resolution once per launch."""

import pytest

import recipes
from infra import spec as spec_io
from infra.refs import MixtureRef
from infra.spec import SpecError, apply_overrides, read_spec, write_spec
from model.config import PRESETS
from training.program import program_args
from training.spec import MODULE_GROUPS, STAGE_NAMES, StageInputs, StageSpec, TrainConfig


@pytest.mark.parametrize("profile", sorted(recipes.PROFILES))
def test_every_stage_of_every_profile_validates(profile):
    p = recipes.load_profile(profile)
    assert p.name == profile and p.model in PRESETS
    assert set(p.stages) == set(STAGE_NAMES)
    for stage in STAGE_NAMES:
        spec = recipes.resolve_stage(profile, stage)
        assert isinstance(spec, StageSpec) and spec.profile == profile and spec.stage == stage
        # no overrides: the profile's own values (phases get their own resolved specs)
        assert spec.model_dump(exclude={"phases"}) == p.stages[stage].model_dump(exclude={"phases"})
        assert all(ph.spec is not None and ph.spec.phase == ph.name for ph in spec.phases)
    recipes.resolve_evaluation(profile)


def test_profiles_encode_the_recipe():
    tiny = recipes.load_profile("tiny")
    assert tiny.stages["vit_warmup"].data.sources == ("image_text", "video")
    assert tiny.stages["joint_pretrain"].data.vision_ratio == pytest.approx(0.1)
    assert tiny.stages["midtrain"].train.yarn_factor > 1
    for stage in ("sft", "rl", "parl"):
        assert tiny.stages[stage].data.sources == ("text",) and tiny.stages[stage].train.trainable == ("llm",)
    assert tiny.stages["sft"].sft is not None and tiny.stages["parl"].rl is not None
    assert tiny.stages["joint_pretrain"].rl is None  # a block only where its stage uses it
    k25 = recipes.resolve_stage("k25", "vit_warmup")
    # ViT warm-up: stage 1 trains MoonViT-3D + projector, stage 2 only the projector (phases)
    caption, projector = (p.spec for p in k25.phases)
    assert caption.train.trainable == ("vision", "projector") and projector.train.trainable == ("projector",)
    mid, joint = recipes.resolve_stage("k25", "midtrain"), recipes.resolve_stage("k25", "joint_pretrain")
    assert mid.phases[0].spec.data.seq_len > joint.data.seq_len


def test_specs_are_immutable():
    tiny = recipes.load_profile("tiny")
    with pytest.raises(Exception, match="frozen"):
        tiny.stages["sft"].train.steps = 999


def test_unknown_profile_and_stage():
    with pytest.raises(SpecError, match="unknown profile 'huge'"):
        recipes.resolve_stage("huge", "sft")
    with pytest.raises(SpecError, match="unknown profile"):
        recipes.load_profile("")
    with pytest.raises(SpecError, match="unknown stage 'pretrain'"):
        recipes.resolve_stage("tiny", "pretrain")


def test_unknown_override_key_names_it():
    with pytest.raises(SpecError, match=r"unknown override 'train.stepz'.*no field 'stepz' in train"):
        recipes.resolve_stage("tiny", "sft", {"train.stepz": "3"})
    with pytest.raises(SpecError, match="unknown override 'steps'"):
        recipes.resolve_stage("tiny", "sft", {"steps": "3"})  # fields live in their block
    with pytest.raises(SpecError, match="stage 'joint_pretrain' .* has no 'rl' block"):
        recipes.resolve_stage("tiny", "joint_pretrain", {"rl.group_size": "3"})  # a block of post-training
    with pytest.raises(SpecError, match="'profile' is not supported"):
        recipes.resolve_stage("tiny", "sft", {"profile": "small"})  # one profile per run


@pytest.mark.parametrize("key,value,message", [
    ("train.steps", "ten", "valid integer"), ("train.steps", "1.5", "valid integer"),
    ("optimizer.lr", "fast", "valid number"), ("data.batch_size", "", "valid integer")])
def test_unparsable_override_names_field_and_value(key, value, message):
    with pytest.raises(SpecError, match=rf"{key}: .*{message}.*\(got '{value}'\)"):
        recipes.resolve_stage("tiny", "joint_pretrain", {key: value})


def test_override_coercion_by_annotation():
    spec = recipes.resolve_stage("tiny", "joint_pretrain", {
        "train.steps": " 12 ", "optimizer.lr": "1e-4", "train.yarn_factor": "2", "parallel.dep": "true",
        "train.trainable": "vision, projector", "data.sources": "text,video,", "parallel.zero_stage": "0"})
    assert spec.train.steps == 12 and isinstance(spec.train.steps, int)
    assert spec.optimizer.lr == pytest.approx(1e-4) and isinstance(spec.optimizer.lr, float)
    assert spec.train.yarn_factor == 2.0 and isinstance(spec.train.yarn_factor, float)
    assert spec.parallel.dep is True
    assert spec.train.trainable == ("vision", "projector")
    assert spec.data.sources == ("text", "video")
    assert recipes.resolve_stage("tiny", "joint_pretrain", {"train.yarn_factor": "none"}).train.yarn_factor is None
    # typed values (from the launchpad's typed fields) pass the same validation
    assert recipes.resolve_stage("tiny", "sft", {"train.steps": 7, "train.trainable": ["llm"]}).train.steps == 7
    assert recipes.load_profile("tiny").stages["joint_pretrain"].train.steps == 60  # the profile is untouched


def test_apply_overrides_returns_a_validated_copy():
    base = TrainConfig()
    new = apply_overrides(base, {"steps": "3"}, "test")
    assert new.steps == 3 and base.steps == TrainConfig().steps
    assert apply_overrides(base, None, "test") == base


@pytest.mark.parametrize("overrides,message", [
    ({"train.steps": "0"}, "train.steps: Input should be greater than 0"),
    ({"data.batch_size": "-1"}, "data.batch_size"),
    ({"optimizer.lr": "0"}, "optimizer.lr"),
    ({"optimizer.lr": "nan"}, "optimizer.lr"),
    ({"data.vision_ratio": "1.0"}, "data.vision_ratio"),
    ({"data.vision_ratio": "-0.1"}, "data.vision_ratio"),
    ({"data.vision_ratio": "nan"}, "data.vision_ratio"),
    ({"train.yarn_factor": "0.5"}, "train.yarn_factor"),
    ({"optimizer.name": "sgd"}, "optimizer.name"),
    ({"data.sources": "text,audio"}, "data.sources"),
    ({"train.trainable": "vision,decoder"}, "train.trainable"),
    ({"train.trainable": ""}, "trainable must be a non-empty subset"),
    ({"train.trainable": " , "}, "trainable must be a non-empty subset"),
    ({"data.text_only_warmup_fraction": "0.5", "data.sources": "video"}, "needs the text source"),
])
def test_out_of_range_values_are_rejected(overrides, message):
    with pytest.raises(SpecError, match=message) as info:
        recipes.resolve_stage("tiny", "joint_pretrain", overrides)
    assert "joint_pretrain" in str(info.value)


@pytest.mark.parametrize("overrides,message", [
    ({"rl.ratio_low": "1.5"}, "ratio_low"), ({"rl.ratio_low": "0"}, "ratio_low"),
    ({"rl.ratio_high": "0.9"}, "ratio_high"), ({"rl.group_size": "0"}, "rl.group_size"),
    ({"rl.domains": "vision:1"}, "unknown RL domain"), ({"rl.pi_old": "trainer"}, "pi_old"),
    ({"rl.loss_norm": "token"}, "loss_norm"), ({"checkpoint.every": "3"}, "multiple of rl.updates_per_rollout")])
def test_rl_block_is_validated(overrides, message):
    with pytest.raises(SpecError, match=message):
        recipes.resolve_stage("tiny", "rl", overrides)
    with pytest.raises(SpecError, match="answer_style"):
        recipes.resolve_stage("tiny", "sft", {"sft.answer_style": "essay"})


def test_all_errors_are_reported_together():
    with pytest.raises(SpecError) as info:
        recipes.resolve_stage("tiny", "rl", {"train.steps": "0", "optimizer.lr": "-1", "train.trainable": "x"})
    msg = str(info.value)
    assert "train.steps" in msg and "optimizer.lr" in msg and "train.trainable" in msg


@pytest.mark.parametrize("subset", ["vision", "projector", "llm", "vision,projector", "projector,llm",
                                    "vision,projector,llm"])
def test_every_trainable_subset_is_accepted(subset):
    spec = recipes.resolve_stage("tiny", "joint_pretrain", {"train.trainable": subset})
    assert set(spec.train.trainable) <= set(MODULE_GROUPS) and spec.train.trainable == tuple(subset.split(","))


def test_zero1_and_expert_parallel_options_are_validated():
    assert recipes.resolve_stage("tiny", "sft", {"parallel.zero_stage": "1"}).parallel.zero_stage == 1
    # MuonClip shards its own state by whole matrices, also with DEP
    spec = recipes.resolve_stage("tiny", "joint_pretrain", {"parallel.zero_stage": "1", "parallel.dep": "true"})
    assert spec.parallel.zero_stage == 1
    assert recipes.resolve_stage("tiny", "joint_pretrain", {"parallel.expert_parallel": "2"}).parallel.expert_parallel == 2
    for overrides, message in [
        ({"parallel.zero_stage": "1", "parallel.dep": "true"}, "zero_stage=1 cannot be combined with parallel.dep=true"),
        ({"parallel.zero_stage": "1", "parallel.expert_parallel": "2"}, "cannot be combined with parallel.expert_parallel"),
        ({"parallel.zero_stage": "3"}, "parallel.zero_stage"),
        ({"parallel.expert_parallel": "0"}, "parallel.expert_parallel"),
    ]:
        with pytest.raises(SpecError, match=message.replace(">", ".")):
            recipes.resolve_stage("tiny", "sft", overrides)


def test_a_midtrain_launch_parses_and_resolves_one_override_once(tmp_path, monkeypatch):
    """Asset side (resolve, write spec.json) then every rank's program start (read spec.json,
    take each phase's spec): the override string is parsed once and the spec resolved once."""
    parsed, resolved = [], []
    real_parse, real_resolve = spec_io.parse_value, recipes._resolve
    monkeypatch.setattr(spec_io, "parse_value", lambda ann, raw: (parsed.append(raw), real_parse(ann, raw))[1])
    monkeypatch.setattr(recipes, "_resolve", lambda *a: (resolved.append(a), real_resolve(*a))[1])

    inputs = StageInputs(mixture=MixtureRef(uri=str(tmp_path / "mixture.json"), digest="d" * 64), run_dir=str(tmp_path))
    spec = recipes.resolve_stage("tiny", "midtrain", {"optimizer.lr": "7e-4"}, inputs)
    uri = write_spec(spec, str(tmp_path))
    for _rank in range(2):
        loaded, _run = program_args(("vit_warmup", "joint_pretrain", "midtrain"), ["--spec", uri])
        assert [p.spec.optimizer.lr for p in loaded.phases] == [7e-4] * 3
    assert parsed.count("7e-4") == 1 and len(resolved) == 1
    assert read_spec(StageSpec, uri) == spec  # spec.json holds the whole resolved spec


def test_read_spec_names_a_bad_file(tmp_path):
    with pytest.raises(SpecError, match="no run spec"):
        read_spec(StageSpec, str(tmp_path / "spec.json"))
    (tmp_path / "spec.json").write_text('{"stage": "sft"}')
    with pytest.raises(SpecError, match="profile: Field required"):
        read_spec(StageSpec, str(tmp_path / "spec.json"))


@pytest.mark.parametrize("overrides,message", [
    ({"rl.grm_families": "flattery"}, "grm_families must be a non-empty subset"),
    ({"rl.grm_weight": "1.5"}, "grm_weight"),
])
def test_bad_grm_settings_of_rl_are_refused(overrides, message):
    with pytest.raises(SpecError, match=message):
        recipes.resolve_stage("tiny", "rl", overrides)


def test_an_unknown_held_out_judge_family_is_refused():
    with pytest.raises(SpecError, match="held_out_family must be one of"):
        recipes.resolve_stage("tiny", "grm", {"grm.held_out_family": "core"})


def test_parl_budgets_resolve_and_bad_ones_are_refused():
    spec = recipes.resolve_stage("tiny", "parl")
    assert (spec.parl.budget, spec.parl.main_steps, spec.parl.sub_steps, spec.parl.max_concurrent) == (8, 6, 4, 8)
    assert 2 * 4 + 1 > spec.parl.budget  # a serial plan of 4 countries cannot finish (agents/swarm.py)
    with pytest.raises(SpecError, match="entities_min=7 > entities_max=6"):
        recipes.resolve_stage("tiny", "parl", {"parl.entities_min": "7"})
    with pytest.raises(SpecError, match="subagents"):
        recipes.resolve_stage("tiny", "parl", {"parl.subagents": "oracle"})


def test_the_grm_parse_contract_binds_outside_the_tiny_profile():
    assert recipes.resolve_stage("tiny", "rl").rl.grm_max_parse_fail == 1.0  # logged, never stops (see recipes/)
    for profile in ("small", "k25"):
        assert recipes.resolve_stage(profile, "rl").rl.grm_max_parse_fail == 0.05
