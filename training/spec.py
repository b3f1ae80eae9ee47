"""The training run spec: one typed block per component, composed into a `StageSpec`.

    StageSpec(stage, profile, model, nproc_per_node,
              train=TrainConfig, data=DataConfig, optimizer=OptimizerConfig,
              parallel=ParallelConfig, checkpoint=CheckpointConfig,
              sft=SFTConfig | None, grm=GRMConfig | None, rl=RLConfig | None, parl=PARLConfig | None,
              phases=(Phase, ...), inputs=StageInputs)

Each block checks its own fields (pydantic constraints, a validator for what spans fields);
`StageSpec` checks what spans blocks (ZeRO-1 with DEP or expert parallelism, SigLIP with DEP,
the post-training block a stage needs, phases). The profiles that fill these blocks are in
`recipes/`; `resolve_stage` applies overrides to a profile's spec once.

Phases. A stage may train in `phases` (sub-stages run in order by one program, each starting
from the previous one's final checkpoint): mid-training's context lengths (RECIPE.md §3.1) and
the ViT warm-up's caption / projector-only stages (§3.2). A `Phase` has a name, a step count and
overrides of the stage spec. Values resolve as

    profile < stage-level overrides < the phase's own overrides < `<phase>.<block>.<field>`

A stage-level override of a field that some phase sets itself (`data.seq_len` for mid-training,
and always `train.steps`) is rejected, since the phase would silently win; set it per phase:
`phase_steps=14,4,2` (one count per phase, in order) or `ctx4k.data.batch_size=2`. Resolution
fills every phase's own complete spec (`Phase.spec`), so the program only reads them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Literal, Mapping

from pydantic import Field, model_validator

from infra import storage
from infra.refs import CheckpointRef, MixtureRef, ToolDataRef
from infra.spec import Block, SpecError, apply_overrides, parse_value, validated
from model.config import PRESETS

MODULE_GROUPS = ("vision", "projector", "llm")
SOURCES = ("text", "image_text", "video")
PHASE_NAME = re.compile(r"^[a-z][a-z0-9_]*$")  # used in run-dir names and `<phase>.<...>` keys

ModuleGroup = Literal["vision", "projector", "llm"]
SourceName = Literal["text", "image_text", "video"]


# ---- the stage list, defined once: the asset chain, the programs and evaluation derive from it

@dataclass(frozen=True)
class Stage:
    name: str
    program: str  # the module torchrun starts
    group: str  # the Dagster asset group (and defs/ domain)
    upstream: str | None  # the stage whose checkpoint this one starts from (None: fresh weights)


# The policy chain, plus the judge: `grm` starts from the SFT checkpoint, and RL reads it as its
# generative reward model (StageInputs.judge) beside its own upstream, SFT.
STAGES: tuple[Stage, ...] = (
    Stage("vit_warmup", "training.pretrain", "pretrain", None),
    Stage("joint_pretrain", "training.pretrain", "pretrain", "vit_warmup"),
    Stage("midtrain", "training.pretrain", "pretrain", "joint_pretrain"),
    Stage("sft", "training.sft", "posttrain", "midtrain"),
    Stage("grm", "training.grm", "posttrain", "sft"),
    Stage("rl", "training.rl", "posttrain", "sft"),
    Stage("parl", "training.parl", "posttrain", "rl"),
)
STAGE_NAMES = tuple(s.name for s in STAGES)
StageName = Literal["vit_warmup", "joint_pretrain", "midtrain", "sft", "grm", "rl", "parl"]


def stage_info(name: str) -> Stage:
    for s in STAGES:
        if s.name == name:
            return s
    raise SpecError(f"unknown stage {name!r}; known: {STAGE_NAMES}")


def upstream_of(name: str) -> str | None:
    """The stage whose checkpoint `name` starts from (None for the first)."""
    return stage_info(name).upstream


# ---- component blocks

class TrainConfig(Block):
    steps: int = Field(40, gt=0)
    """Optimizer steps of the stage (of the phase, inside a phase's spec)."""
    seed: int = 1234
    """Seeds the initial weights, the data order and sampling."""
    trainable: tuple[ModuleGroup, ...] = MODULE_GROUPS
    """Module groups that get gradients; the others stay bitwise unchanged."""
    yarn_factor: float | None = Field(None, ge=1)
    """YaRN factor over the model's original context; None keeps the upstream checkpoint's."""
    router_bias_rate: float = Field(1e-3, ge=0)
    """Aux-loss-free router-bias step (DeepSeek-V3's value; K2 [not stated])."""
    log_every: int = Field(5, gt=0)
    """Log metrics every this many steps."""
    siglip_weight: float = Field(0.0, ge=0)
    """ViT warm-up: weight of a SigLIP-style contrastive loss beside the caption loss (0 = off) [not stated]."""
    siglip_temperature: float = Field(10.0, gt=0)
    """SigLIP's fixed logit temperature."""
    siglip_bias: float = -10.0
    """SigLIP's fixed logit bias."""

    @model_validator(mode="after")
    def _check(self):
        if not self.trainable:
            raise ValueError(f"trainable must be a non-empty subset of {MODULE_GROUPS}")
        return self


class DataConfig(Block):
    sources: tuple[SourceName, ...] = SOURCES
    """Which curated sets of the mixture this stage reads."""
    vision_ratio: float = Field(0.1, ge=0, lt=1)
    """Vision share of all tokens; 10:90 from step 0 is early fusion (the recipe's choice)."""
    text_only_warmup_fraction: float = Field(0.0, ge=0, lt=1)
    """Fusion schedule: this fraction of the steps is text-only, then vision_ratio applies (0 = early fusion)."""
    seq_len: int = Field(128, gt=0)
    """Tokens per packed sequence."""
    batch_size: int = Field(4, gt=0)
    """Sequences per rank per step."""
    num_workers: int = Field(1, ge=0)
    """Data-loader worker processes per rank (0 = in the training process)."""
    ratio_log_every: int = Field(10, gt=0, le=100)
    """Log the realised vision token ratio over the last this-many steps."""

    @model_validator(mode="after")
    def _check(self):
        if self.text_only_warmup_fraction > 0 and "text" not in self.sources:
            raise ValueError("text_only_warmup_fraction > 0 needs the text source")
        return self


class OptimizerConfig(Block):
    name: Literal["adamw", "muonclip"] = "adamw"
    """adamw, or muonclip (Muon + RMS matching + per-head QK-Clip, RECIPE.md §1.5)."""
    lr: float = Field(3e-3, gt=0)
    """Peak learning rate."""
    min_lr_ratio: float = Field(0.1, ge=0, le=1)
    """WSD: the decay ends at lr * min_lr_ratio."""
    warmup_steps: int = Field(5, ge=0)
    """WSD: linear warmup steps."""
    decay_fraction: float = Field(0.2, ge=0, le=1)
    """WSD: the last fraction of steps decays linearly to the minimum."""
    weight_decay: float = Field(0.1, ge=0)
    """Decoupled weight decay of matrices."""
    grad_clip: float = Field(1.0, gt=0)
    """Global gradient-norm clip."""
    qk_clip_tau: float = Field(100.0, gt=0)
    """QK-Clip threshold on each head's max attention logit (K2: 100)."""


class ParallelConfig(Block):
    zero_stage: int = Field(0, ge=0, le=1)
    """0: replicated optimizer, gradients all-reduced; 1: ZeRO-1 (DeepSpeed's for AdamW, whole-matrix sharding for MuonClip)."""
    expert_parallel: int = Field(1, ge=1)
    """Routed experts sharded over groups of this many ranks with all-to-all dispatch (paper: EP16)."""
    dep: bool = False
    """Decoupled Encoder Process: balanced ViT forward / recompute across ranks (RECIPE.md §4.2)."""


class CheckpointConfig(Block):
    every: int = Field(20, gt=0)
    """Commit a checkpoint every this many steps (and always at the last step and on SIGTERM)."""


class SFTConfig(Block):
    answer_style: Literal["solution", "final"] = "solution"
    """Targets of the GSM8K chat conversations: the worked solution, or only its `#### N` line."""
    tool_share: float = Field(0.6, ge=0)
    """Share of rows drawn from the executed IPython image traces (sft_tool_data) [not stated]."""
    pot_share: float = Field(0.2, ge=0)
    """Share drawn from the executed program-of-thought GSM8K traces [not stated]."""
    chat_share: float = Field(0.2, ge=0)
    """Share drawn from the plain GSM8K chat conversations [not stated]."""
    search_share: float = Field(0.2, ge=0)
    """Share drawn from the executed widesearch_local traces of sft_tool_data (serial search, and
    a minority that delegates with a random fan-out: PARL learns when to delegate) [not stated]."""

    @model_validator(mode="after")
    def _check_shares(self):
        if self.tool_share + self.pot_share + self.chat_share + self.search_share <= 0:
            raise ValueError("sft shares must not all be 0")
        return self

    def shares(self) -> dict[str, float]:
        return {"tool": self.tool_share, "pot": self.pot_share, "chat": self.chat_share, "search": self.search_share}


class RLConfig(Block):
    prompts_per_step: int = Field(2, gt=0)
    """Prompts per rank per rollout batch."""
    group_size: int = Field(4, gt=0)
    """Samples per prompt (the group of the group-mean baseline)."""
    max_new_tokens: int = Field(32, gt=0)
    """Sampling budget per response (per assistant turn for tool tasks)."""
    max_turns: int = Field(3, gt=0)
    """Assistant turns of a tool task's agent loop."""
    temperature: float = Field(1.0, ge=0)
    """Sampling temperature (the log-probs of the ratio are of logits / temperature)."""
    top_p: float = Field(1.0, gt=0, le=1)
    """Nucleus sampling threshold."""
    updates_per_rollout: int = Field(2, gt=0)
    """Optimizer steps per rollout batch (makes pi_old != pi_theta)."""
    ratio_low: float = 0.5
    """alpha: tokens with pi/pi_old below it get no gradient [not stated]."""
    ratio_high: float = 2.0
    """beta: tokens with pi/pi_old above it get no gradient [not stated]."""
    kl_tau: float = Field(0.01, ge=0)
    """tau of the squared log-ratio penalty [not stated]."""
    pi_old: Literal["engine", "recompute"] = "engine"
    """pi_old of the ratio: the rollout engine's recorded log-probs (RECIPE.md §6.1, App. D), or the
    trainer's re-forward at rollout time."""
    loss_norm: Literal["prompt", "batch"] = "prompt"
    """N of Eq. 1: the prompt's generated tokens with the loss averaged over prompts, or all the
    batch's generated tokens."""
    skip_zero_variance: bool = True
    """Skip groups whose K rewards are all equal (no advantage); the share is logged."""
    domains: str = "reasoning:0.3,knowledge:0.15,perception:0.3,instruction:0.15,tool:0.1"
    """RL domains by ability and their weights in the task pool (agents/envs/rl_tasks.py)."""
    pool_size: int = Field(256, gt=0)
    """Tasks in the fixed pool (Toggle's budget pass samples each once)."""
    toggle: bool = False
    """Toggle (RECIPE.md §6.4, Eq. 2): alternate budget-limited and standard phases."""
    toggle_lambda: float = Field(0.5, ge=0, le=1)
    """lambda: the budget binds only prompts whose mean reward is at least this [not stated]."""
    toggle_m: int = Field(8, gt=0)
    """m: iterations per phase [not stated]."""
    toggle_rho: float = Field(50.0, ge=0, le=100)
    """rho: budget(x) is this percentile of the correct rollouts' lengths [not stated]."""
    grm_weight: float = Field(0.0, ge=0, le=1)
    """w of the generative reward model (the `grm` stage's judge): where the task's verifier passes,
    reward = (1 - w) * rule + w * GRM score; a verified failure keeps its rule reward (0 = no GRM)."""
    grm_families: tuple[str, ...] = ("no_praise",)
    """Rubric families (agents/grm.py) judged on every task, beside the task's own rubric
    (instruction -> instruction, reasoning -> correctness); one family and one wording per group."""
    grm_max_parse_fail: float = Field(0.05, ge=0, le=1)
    """The stage fails once more than this share of GRM judgments does not parse."""

    @model_validator(mode="after")
    def _check(self):
        if not 0 < self.ratio_low < 1 < self.ratio_high:
            raise ValueError(f"need 0 < ratio_low < 1 < ratio_high (got {self.ratio_low}, {self.ratio_high})")
        from agents.envs.domains import parse_domains
        from agents.grm import RUBRIC_TEXTS

        parse_domains(self.domains)
        unknown = [f for f in self.grm_families if f not in RUBRIC_TEXTS]
        if unknown or (self.grm_weight > 0 and not self.grm_families):
            raise ValueError(f"grm_families must be a non-empty subset of {sorted(RUBRIC_TEXTS)} (got {self.grm_families})")
        return self


class GRMConfig(Block):
    per_family: int = Field(400, gt=0)
    """Constructed judge examples per rubric family (agents/grm_data.py), before the train/test split."""
    policy_prompts: int = Field(32, ge=0)
    """Instruction prompts the upstream (SFT) checkpoint answers for the judge data [not stated]."""
    policy_samples: int = Field(2, gt=0)
    """Samples per such prompt; their verdicts come from the hidden checker like all others."""
    test_share: float = Field(0.2, gt=0, lt=1)
    """Share of prompts (by hash) held out for the judge's test accuracy."""
    held_out_family: str = "no_self_justification"
    """A rubric family never trained on: its accuracy measures transfer to an unseen rubric."""
    eval_per_family: int = Field(64, gt=0)
    """Held-out test items judged per family after training."""
    max_parse_fail_share: float = Field(0.05, ge=0, le=1)
    """The `judge_parses` check fails above this share of unparsed judgments."""
    min_accuracy: float = Field(0.75, ge=0, le=1)
    """The `judge_accuracy` check: mean held-out accuracy over the seen families (chance: 0.5)."""

    @model_validator(mode="after")
    def _check(self):
        from agents.grm_data import FAMILIES

        if self.held_out_family not in FAMILIES:
            raise ValueError(f"held_out_family must be one of {FAMILIES} (got {self.held_out_family!r})")
        return self


class PARLConfig(Block):
    """The Agent Swarm's budgets and PARL's reward (RECIPE.md §7; agents/swarm.py). The tiny
    defaults make a serial plan unable to finish 4+ countries (2n + 1 > budget) while a fan-out
    can, without any prompt asking for parallelism."""
    budget: int = Field(8, gt=0)
    """Critical steps per episode: sum over stages of (main steps + the longest sub-agent)."""
    main_steps: int = Field(6, gt=0)
    """Orchestrator turns per episode."""
    sub_steps: int = Field(4, gt=0)
    """Turns of one sub-agent."""
    max_concurrent: int = Field(8, gt=0)
    """Sub-agents one stage may launch."""
    message_tokens: int = Field(96, gt=0)
    """A sub-agent's answer reaching the orchestrator is cut to this many words."""
    parallel_target: int = Field(4, gt=0)
    """r_parallel = min(1, valid sub-agents / this) [not stated]."""
    lambda_parallel: float = Field(0.5, ge=0)
    """Initial lambda1 of r_parallel [not stated]."""
    lambda_finish: float = Field(0.5, ge=0)
    """Initial lambda2 of r_finish [not stated]."""
    anneal_fraction: float = Field(0.5, gt=0, le=1)
    """Both lambdas fall linearly to 0 over this fraction of the steps, then r_perf alone [not stated]."""
    subagents: Literal["model", "scripted"] = "model"
    """model: the frozen upstream (RL) checkpoint; scripted: a deterministic search-then-open
    policy over the same tools (the curriculum's small sub-agent, labelled as such)."""
    scripted_error_rate: float = Field(0.1, ge=0, le=1)
    """Share of cells a scripted sub-agent gets wrong."""
    entities_min: int = Field(2, gt=0)
    """Countries per wide task, at least."""
    entities_max: int = Field(6, gt=0)
    """Countries per wide task, at most."""
    attributes_max: int = Field(2, gt=0)
    """Attributes per wide task, at most."""
    deep_share: float = Field(0.25, ge=0, le=1)
    """Share of two-hop tasks (the neighbour of X with the largest area)."""

    @model_validator(mode="after")
    def _check(self):
        if self.entities_min > self.entities_max:
            raise ValueError(f"entities_min={self.entities_min} > entities_max={self.entities_max}")
        return self


class StageInputs(Block):
    """What the stage reads and where it writes; set by the resolver, never by a profile."""

    mixture: MixtureRef
    """The data and tokenizer (mixture.json)."""
    run_dir: str
    """This run's checkpoint folder (spec.json lies in it)."""
    init_from: CheckpointRef | None = None
    """The upstream stage's checkpoint (None: fresh weights)."""
    tool_data: ToolDataRef | None = None
    """Executed tool traces (sft_tool_data), read by SFT (None: chat data only)."""
    judge: CheckpointRef | None = None
    """The generative reward model (the `grm` stage's checkpoint), read by RL when rl.grm_weight > 0."""


class Phase(Block):
    name: str
    """Used in run-dir names (`phase-<k>-<name>`) and `<name>.<block>.<field>` overrides."""
    steps: int = Field(gt=0)
    """Steps of this phase."""
    overrides: dict[str, Any] = {}
    """Dotted-path overrides of the stage spec for this phase."""
    spec: "StageSpec | None" = None
    """The phase's complete spec, filled by resolve_stage."""


RESERVED = ("stage", "profile", "phases", "phase", "inputs", "model", "nproc_per_node")
POST_TRAINING_BLOCKS = {"sft": ("sft",), "grm": ("grm",), "rl": ("rl",), "parl": ("rl", "parl")}


class StageSpec(Block):
    stage: StageName
    """Which training stage."""
    profile: str
    """The profile this spec was resolved from (one per run)."""
    model: str
    """Model preset (model/config.py) for fresh weights; a checkpoint's own config wins."""
    nproc_per_node: int = Field(gt=0)
    """Ranks per node the profile plans for."""
    train: TrainConfig = TrainConfig()
    data: DataConfig = DataConfig()
    optimizer: OptimizerConfig = OptimizerConfig()
    parallel: ParallelConfig = ParallelConfig()
    checkpoint: CheckpointConfig = CheckpointConfig()
    sft: SFTConfig | None = None
    grm: GRMConfig | None = None
    rl: RLConfig | None = None
    parl: PARLConfig | None = None
    phases: tuple[Phase, ...] = ()
    """Sub-stages trained in order by one program; () = the stage is one run."""
    phase: str = ""
    """The phase this spec is (\"\" = the stage as a whole)."""
    inputs: StageInputs | None = None
    """Set by the resolver (asset or CLI) before launch."""

    @model_validator(mode="after")
    def _check(self):
        errors = []
        if self.model not in PRESETS:
            errors.append(f"model: unknown preset {self.model!r}; known: {sorted(PRESETS)}")
        if self.parallel.zero_stage == 1:
            # DeepSpeed ZeRO-1 (AdamW) owns the backward: not with our DEP path. Expert shards
            # differ per rank, so their optimizer state cannot be partitioned again.
            if self.parallel.dep and self.optimizer.name == "adamw":
                errors.append("parallel.zero_stage=1 cannot be combined with parallel.dep=true with "
                              "optimizer.name=adamw; use zero_stage=0 for it")
            if self.parallel.expert_parallel > 1:
                errors.append("parallel.zero_stage=1 cannot be combined with parallel.expert_parallel>1; "
                              "use zero_stage=0 for it")
        if self.train.siglip_weight > 0 and self.parallel.dep:
            errors.append("train.siglip_weight > 0 needs the plain forward (parallel.dep=false): DEP runs its own backward")
        for block in POST_TRAINING_BLOCKS.get(self.stage, ()):
            if getattr(self, block) is None:
                errors.append(f"stage {self.stage!r} needs the {block!r} block")
        if self.rl is not None and self.checkpoint.every % self.rl.updates_per_rollout:
            # a checkpoint inside a rollout batch would be resumed with regenerated rollouts from
            # partly updated weights: not the batch the interrupted run trained on
            errors.append(f"checkpoint.every={self.checkpoint.every} must be a multiple of "
                          f"rl.updates_per_rollout={self.rl.updates_per_rollout}")
        errors += self._phase_errors()
        if errors:
            raise ValueError("; ".join(errors))
        return self

    def _phase_errors(self) -> list[str]:
        names = [p.name for p in self.phases]
        errors = [f"phase name {n!r} must match {PHASE_NAME.pattern} and not be a block name"
                  for n in names if not PHASE_NAME.match(n) or n in type(self).model_fields]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            errors.append(f"phase names must be unique (repeated: {dupes})")
        for p in self.phases:
            bad = [k for k in p.overrides if k.split(".")[0] in RESERVED or k == "train.steps"]
            if bad:
                errors.append(f"phase {p.name!r}: {bad} cannot be set per phase (steps is Phase.steps)")
        if self.phase and (self.phases or not PHASE_NAME.match(self.phase)):
            errors.append(f"phase={self.phase!r}: a phase's own spec is a phase name and has no phases")
        return errors

    def phase_index(self, name: str) -> int:
        names = [p.name for p in self.phases]
        if name not in names:
            raise SpecError(f"stage {self.stage!r} has no phase {name!r}; phases: {names or 'none'}")
        return names.index(name)

    @property
    def optimizer_per_rank(self) -> bool:
        """Optimizer state differs per rank (ZeRO partitions, expert shards): saved per rank."""
        return self.parallel.zero_stage == 1 or self.parallel.expert_parallel > 1


Phase.model_rebuild()


# ---- resolution: profile spec + overrides, once

def _split(overrides: Mapping[str, Any], spec: StageSpec):
    """(stage-level, {phase: {path: value}}, phase_steps) from flat dotted overrides."""
    names = {p.name for p in spec.phases}
    plain, scoped, phase_steps = {}, {}, None
    for key, value in overrides.items():
        head, _, rest = key.partition(".")
        if key == "phase_steps":
            phase_steps = value
        elif head in RESERVED:
            raise SpecError(f"override {key!r} is not supported: {head} is set by the profile and the resolver; "
                            "phase lengths and settings are phase_steps=... and <phase>.<block>.<field>=...")
        elif head in names or (rest and head not in type(spec).model_fields):
            if head not in names:
                raise SpecError(f"override {key!r}: stage {spec.stage!r} has no block or phase {head!r}; "
                                f"phases: {sorted(names) or 'none'}")
            if rest.partition(".")[0] in RESERVED:
                raise SpecError(f"override {key!r} is not supported: {rest.partition('.')[0]} is not a phase setting")
            scoped.setdefault(head, {})[rest] = value
        else:
            plain[key] = value
    return plain, scoped, phase_steps


def _phase_steps(spec: StageSpec, raw) -> list[int]:
    names = [p.name for p in spec.phases]
    if raw is None:
        return [p.steps for p in spec.phases]
    try:
        steps = validated(list[int], parse_value(list[int], raw), "phase_steps")
    except SpecError:
        raise SpecError(f"override phase_steps={raw!r}: expected comma-separated integers") from None
    if len(steps) != len(names):
        raise SpecError(f"override phase_steps={raw!r}: stage {spec.stage!r} has {len(names)} phases "
                        f"({', '.join(names)}), got {len(steps)} counts")
    return steps


def resolve_stage(base: StageSpec, overrides: Mapping[str, Any] | None = None,
                  inputs: StageInputs | None = None) -> StageSpec:
    """The validated spec of one stage: the profile's `base`, then `overrides` (dotted paths),
    then every phase resolved into its own complete spec. Raises SpecError naming the field."""
    plain, scoped, phase_steps = _split(overrides or {}, base)
    what = f"stage {base.stage!r} (profile {base.profile!r})"
    spec = apply_overrides(base, plain, what)
    if not spec.phases:
        if scoped or phase_steps is not None:
            raise SpecError(f"override {'phase_steps' if phase_steps is not None else next(iter(scoped))!r}: "
                            f"stage {spec.stage!r} has no phases")
        return spec.model_copy(update={"inputs": inputs})
    _reject_shadowed(spec, plain)
    steps = _phase_steps(spec, phase_steps)
    stage_only = spec.model_copy(update={"phases": ()})
    phases = []
    for k, (p, n) in enumerate(zip(spec.phases, steps)):
        extra = dict(scoped.get(p.name, {}))
        n = validated(int, parse_value(int, extra.pop("train.steps", n)), f"override {p.name}.train.steps")
        own = {**p.overrides, **extra}
        # phase k reads fresh shard orders and shuffles (seed + k) unless it sets its own seed
        fixed = {"train.steps": n, "phase": p.name, "train.seed": own.pop("train.seed", spec.train.seed + k)}
        pspec = apply_overrides(stage_only, {**own, **fixed}, f"{what} phase {p.name!r}")
        phases.append(validated(Phase, {"name": p.name, "steps": n, "overrides": own, "spec": pspec},
                                f"{what} phase {p.name!r}"))
    return spec.model_copy(update={"phases": tuple(phases), "inputs": inputs})


def _reject_shadowed(spec: StageSpec, plain: Mapping[str, Any]) -> None:
    for key in plain:
        by = [p.name for p in spec.phases if key in p.overrides or key == "train.steps"]
        if by:
            hint = (f"phase_steps={','.join(str(p.steps) for p in spec.phases)}" if key == "train.steps"
                    else f"{by[0]}.{key}=...")
            raise SpecError(f"override {key!r}: stage {spec.stage!r} sets it per phase ({', '.join(by)}), which "
                            f"would win over a stage-level value; set it per phase instead, e.g. {hint}")


def phase_dir(run_dir: str, index: int, name: str) -> str:
    return storage.join(run_dir, f"phase-{index}-{name}")


def phase_dirs(spec: StageSpec) -> list[str]:
    """The checkpoint folders of a phased stage's phases, in order (`<run_dir>/phase-<k>-<name>`)."""
    return [phase_dir(spec.inputs.run_dir, k, p.name) for k, p in enumerate(spec.phases)]


def wsd_lr(spec: StageSpec, step: int) -> float:
    """Warmup-stable-decay: linear warmup, constant, then linear decay to min_lr over the tail."""
    opt, steps = spec.optimizer, spec.train.steps
    if step < opt.warmup_steps:
        return opt.lr * (step + 1) / opt.warmup_steps
    decay_start = int(steps * (1 - opt.decay_fraction))
    if step < decay_start:
        return opt.lr
    frac = (step - decay_start) / max(1, steps - decay_start)
    return opt.lr * (1 - frac * (1 - opt.min_lr_ratio))

