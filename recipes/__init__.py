"""The profiles: every component's config composed into one run spec per stage, the torchtitan way.

    tiny   the whole graph on a 2-core CPU in minutes (2 ranks, gloo)
    small  one GPU, hours
    k25    the paper's shapes, layout and sequence lengths (planned and validated, not run here)

A profile is chosen once per run (in Dagster: the `profile` resource of the run; standalone:
`--profile`). It fixes the model preset, the ranks, the tokenizer size, each training stage's
`StageSpec` (training/spec.py), the evaluation settings (evaluation/config.py) and the curation
configs (curation/*.py). `resolve_stage` / `resolve_evaluation` apply a run's overrides once.

This is the one registry of presets: model shapes stay in model/config.py (a profile names one),
everything else a profile decides is here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

from curation.image_text import ImageCurationConfig
from curation.text import TextCurationConfig
from curation.video import VideoCurationConfig
from evaluation.config import EvalConfig
from infra.spec import SpecError, apply_overrides
from training.spec import (
    CheckpointConfig,
    DataConfig,
    GRMConfig,
    OptimizerConfig,
    ParallelConfig,
    PARLConfig,
    Phase,
    RLConfig,
    SFTConfig,
    StageInputs,
    StageSpec,
    TrainConfig,
    stage_info,
)
from training.spec import (
    resolve_stage as _resolve,
)

CURATION_KINDS = ("text", "image_text", "video")


@dataclass(frozen=True)
class Profile:
    name: str
    model: str  # a key of model.config.PRESETS
    nproc_per_node: int
    tokenizer_vocab: int
    stages: dict[str, StageSpec]
    evaluation: EvalConfig
    curation: dict[str, Any] = field(default_factory=lambda: {
        "text": TextCurationConfig(), "image_text": ImageCurationConfig(), "video": VideoCurationConfig()})


def _spec(profile: str, stage: str, model: str, nproc: int, **blocks) -> StageSpec:
    return StageSpec(stage=stage, profile=profile, model=model, nproc_per_node=nproc, **blocks)


def _vit_warmup_phases(caption: int, projector: int) -> tuple[Phase, ...]:
    """Stage 2 is "very short" [not stated how short]; Kimi-VL's alignment was 0.1T after 2T."""
    return (Phase(name="caption", steps=caption),
            Phase(name="projector", steps=projector,
                  overrides={"train.trainable": ("projector",), "optimizer.warmup_steps": 1}))


def _tiny() -> Profile:
    name, model, nproc = "tiny", "tiny", 2
    vision_only = DataConfig(sources=("image_text", "video"), vision_ratio=0.0)
    text_only = DataConfig(sources=("text",), vision_ratio=0.0)
    llm_only = TrainConfig(trainable=("llm",))
    rl = RLConfig()
    stages = {
        # ViT warm-up (RECIPE.md §3.2): stage 1 "caption" aligns the encoder through the decoder on
        # caption cross-entropy; stage 2 "projector" (very short) trains only the projector. No
        # pretrained decoder exists at tiny scale, so the caption loss trains the small LLM too; at
        # k25 scale stage 1 trains the ViT and projector against a frozen decoder.
        "vit_warmup": _spec(name, "vit_warmup", model, nproc, train=TrainConfig(steps=100, log_every=10, yarn_factor=1.0),
                            data=vision_only, checkpoint=CheckpointConfig(every=50), phases=_vit_warmup_phases(90, 10)),
        "joint_pretrain": _spec(name, "joint_pretrain", model, nproc, train=TrainConfig(steps=60),
                                optimizer=OptimizerConfig(name="muonclip"), checkpoint=CheckpointConfig(every=30)),
        # Long-context mid-training (§3.1): 256 -> 1K -> 4K with YaRN, factor = seq_len / the tiny
        # model's original context (128), so the extended context is exactly the phase's length.
        # The 4K phase is two steps of one sequence (about 8 s a step, 2 ranks on 2 CPU cores).
        "midtrain": _spec(name, "midtrain", model, nproc, train=TrainConfig(steps=20, yarn_factor=2.0),
                          data=DataConfig(seq_len=256, batch_size=2),
                          optimizer=OptimizerConfig(name="muonclip", lr=1e-3), checkpoint=CheckpointConfig(every=10),
                          phases=(
                              Phase(name="ctx256", steps=14, overrides={
                                  "data.seq_len": 256, "train.yarn_factor": 2.0, "data.batch_size": 2}),
                              Phase(name="ctx1k", steps=4, overrides={
                                  "data.seq_len": 1024, "train.yarn_factor": 8.0, "data.batch_size": 1,
                                  "optimizer.warmup_steps": 1}),
                              Phase(name="ctx4k", steps=2, overrides={
                                  "data.seq_len": 4096, "train.yarn_factor": 32.0, "data.batch_size": 1,
                                  "optimizer.warmup_steps": 1}))),
        # Zero-vision SFT on executed tool traces (sft_tool_data) and GSM8K chat, and RL on text:
        # the encoder is frozen (no vision tokens reach it). Rows of 1024 tokens: a maze trace is
        # about 700 tokens with the tiny tokenizer, and conversations are never split. A tiny model
        # cannot learn 100-token worked solutions in minutes; with final-answer targets it learns
        # the answer format, so RL gets rewards with non-zero variance.
        "sft": _spec(name, "sft", model, nproc, train=replace_block(llm_only, steps=60),
                     data=replace_block(text_only, seq_len=1024, batch_size=2),
                     optimizer=OptimizerConfig(lr=1e-3), sft=SFTConfig(answer_style="final")),
        # The GRM judge (RECIPE.md §6.2) starts from SFT: judge SFT on rubric, prompt, response and
        # the hidden checker's verdict (~150-token conversations, a few to a 512-token row). 200
        # steps (about a minute) teach a tiny model the verdict format (60 do not: its rationales
        # degenerate and nothing parses); its held-out accuracy is measured and checked against
        # grm.min_accuracy, a warning at this scale (benchmarks/bench_grm.py trains longer).
        "grm": _spec(name, "grm", model, nproc, train=replace_block(llm_only, steps=200, log_every=20),
                     data=replace_block(text_only, seq_len=512, batch_size=4),
                     optimizer=OptimizerConfig(lr=2e-3), checkpoint=CheckpointConfig(every=100),
                     grm=GRMConfig(per_family=300, policy_prompts=16, eval_per_family=24)),
        # RL and PARL (RECIPE.md §6.1): MuonClip, 1024-token contexts (tool tasks carry a system
        # prompt and tool results), a 24-task pool over every domain; Toggle on, phases of 2
        # iterations (at tiny scale accuracy is ~0, so its budget stays inactive: that is logged);
        # the grm judge at w=0.3 (it only ranks verified answers, so it rarely acts at this scale).
        # The tiny judge's verdicts on RL's own samples parse only half the time (CI, 2026-12-04:
        # 6 and 11 of 20 failed), so here the share is logged (grm_parse_fail_share) and never
        # stops the stage; small and k25 keep the contract's 5%.
        "rl": _spec(name, "rl", model, nproc, train=replace_block(llm_only, steps=8),
                    data=replace_block(text_only, seq_len=1024),
                    optimizer=OptimizerConfig(name="muonclip", lr=2e-4, warmup_steps=0), checkpoint=CheckpointConfig(every=4),
                    rl=replace_block(rl, pool_size=24, toggle=True, toggle_m=2, grm_weight=0.3, grm_max_parse_fail=1.0)),
        # PARL on widesearch_local: 2K-token orchestrator contexts (pages come back as tool
        # results), 64 tokens a turn (a tool call with its JSON arguments), the frozen RL
        # checkpoint as sub-agents, the tiny budgets of PARLConfig.
        "parl": _spec(name, "parl", model, nproc, train=replace_block(llm_only, steps=8),
                      data=replace_block(text_only, seq_len=2048),
                      optimizer=OptimizerConfig(name="muonclip", lr=2e-4, warmup_steps=0), checkpoint=CheckpointConfig(every=4),
                      rl=replace_block(rl, max_new_tokens=64), parl=PARLConfig()),
    }
    # greedy (avg@1 is then exact), short answers, a handful of examples per suite
    evaluation = EvalConfig(limit=8, agent_limit=12, temperature=0.0, top_p=1.0, max_new_tokens=48, samples_per_suite="",
                            batch_size=8, code_timeout_s=5.0, code_memory_mb=512)
    return Profile(name=name, model=model, nproc_per_node=nproc, tokenizer_vocab=4096, stages=stages,
                   evaluation=evaluation)


def replace_block(block, **values):
    """A copy of a block with `values` set, validated."""
    return type(block).model_validate({**block.model_dump(), **values})


def _retarget(spec: StageSpec, profile: str, model: str, nproc: int, **blocks) -> StageSpec:
    data = {**spec.model_dump(), "profile": profile, "model": model, "nproc_per_node": nproc}
    data.update({k: (v.model_dump() if hasattr(v, "model_dump") else v) for k, v in blocks.items()})
    return StageSpec.model_validate(data)


def _small() -> Profile:
    base = _tiny()
    stages = {}
    for name, spec in base.stages.items():
        if name in ("rl", "parl"):
            stages[name] = _retarget(spec, "small", "small", 1, rl=replace_block(spec.rl, grm_max_parse_fail=0.05))
            continue
        stages[name] = _retarget(spec, "small", "small", 1, train=replace_block(spec.train, steps=2000, log_every=10),
                                 data=replace_block(spec.data, batch_size=16), checkpoint=CheckpointConfig(every=500))
    stages["vit_warmup"] = _retarget(stages["vit_warmup"], "small", "small", 1, phases=_vit_warmup_phases(1800, 200))
    # The small model's original context is 4096 [choice]: 4K (no YaRN), then 16K with YaRN x4,
    # 16K tokens per sequence-batch in both.
    stages["midtrain"] = _retarget(stages["midtrain"], "small", "small", 1,
                                   train=replace_block(stages["midtrain"].train, yarn_factor=1.0), phases=(
        Phase(name="ctx4k", steps=1500, overrides={"data.seq_len": 4096, "train.yarn_factor": 1.0,
                                                    "data.batch_size": 4}),
        Phase(name="ctx16k", steps=500, overrides={"data.seq_len": 16384, "train.yarn_factor": 4.0,
                                                    "data.batch_size": 1, "optimizer.warmup_steps": 1})))
    evaluation = EvalConfig(limit=200, max_new_tokens=1024, samples_per_suite="aime24:4,aime25:4,humaneval:5")
    return Profile(name="small", model="small", nproc_per_node=1, tokenizer_vocab=32768, stages=stages,
                   evaluation=evaluation)


def _k25() -> Profile:
    """The paper's shape and sequence lengths (RECIPE.md §3.1); planned and validated, not run here."""
    base = _tiny()
    stages = {name: _retarget(spec, "k25", "k25", 8, **({"rl": replace_block(spec.rl, grm_max_parse_fail=0.05)}
                                                          if spec.rl else {}))
              for name, spec in base.stages.items()}
    vit, joint, mid = stages["vit_warmup"], stages["joint_pretrain"], stages["midtrain"]
    # Stage 1 trains MoonViT-3D and the projector (the decoder frozen: Moonlight in the paper, the
    # model's own LLM here); stage 2 the projector only (the phases' own override). The warm-up
    # trains dense modules with AdamW: DeepSpeed ZeRO-1 partitions its optimizer state.
    stages["vit_warmup"] = _retarget(vit, "k25", "k25", 8, train=replace_block(vit.train, trainable=("vision", "projector")),
                                     data=replace_block(vit.data, seq_len=4096), parallel=ParallelConfig(zero_stage=1))
    # DEP pays off with one device per rank; on a shared CPU it costs more than it saves
    # (benchmarks/bench_dep.py), so only the GPU profiles turn it on. EP16 as in the paper (§4.1):
    # 384 experts, 24 per rank; needs a world size divisible by 16.
    ep16 = ParallelConfig(dep=True, expert_parallel=16)
    stages["joint_pretrain"] = _retarget(joint, "k25", "k25", 8, data=replace_block(joint.data, seq_len=4096),
                                         parallel=ep16)
    # Mid-training extends joint pre-training's 4K context: 32K, then 256K (§3.1, "500B -> 200B"
    # tokens). YaRN factor = seq_len / 4096: 8, then 64 (the released config's factor, giving
    # max_position_embeddings 262144). Per-sub-stage data mix and learning rate are [not stated].
    # Steps are in the token ratio at one sequence per rank per step (500B/32K : 200B/256K = 20:1);
    # their absolute size, like the rest of this profile, is a placeholder (global batch [not stated]).
    stages["midtrain"] = _retarget(mid, "k25", "k25", 8, train=replace_block(mid.train, yarn_factor=8.0),
                                   data=replace_block(mid.data, seq_len=32768), parallel=ep16, phases=(
        Phase(name="ctx32k", steps=20, overrides={"data.seq_len": 32768, "train.yarn_factor": 8.0,
                                                   "data.batch_size": 1}),
        Phase(name="ctx256k", steps=1, overrides={"data.seq_len": 262144, "train.yarn_factor": 64.0,
                                                   "data.batch_size": 1, "optimizer.warmup_steps": 0})))
    return Profile(name="k25", model="k25", nproc_per_node=8, tokenizer_vocab=163840, stages=stages,
                   evaluation=EvalConfig())


PROFILES = {"tiny": _tiny, "small": _small, "k25": _k25}


def load_profile(name: str) -> Profile:
    if name not in PROFILES:
        raise SpecError(f"unknown profile {name!r}; known profiles: {sorted(PROFILES)}")
    return PROFILES[name]()


def resolve_stage(profile: str, stage: str, overrides: Mapping[str, Any] | None = None,
                  inputs: StageInputs | None = None) -> StageSpec:
    """The one resolution of a training stage's spec: the profile's, then the run's overrides."""
    stage_info(stage)
    return _resolve(load_profile(profile).stages[stage], overrides, inputs)


def resolve_evaluation(profile: str, overrides: Mapping[str, Any] | None = None) -> EvalConfig:
    return apply_overrides(load_profile(profile).evaluation, overrides, f"evaluation (profile {profile!r})")


def resolve_curation(profile: str, kind: str, overrides: Mapping[str, Any] | None = None):
    if kind not in CURATION_KINDS:
        raise SpecError(f"unknown curation kind {kind!r}; known: {CURATION_KINDS}")
    cfg = apply_overrides(load_profile(profile).curation[kind], overrides, f"{kind} curation (profile {profile!r})")
    try:
        cfg.validate()
    except ValueError as e:
        raise SpecError(f"invalid {kind} curation config: {e}") from e
    return cfg
