"""Typed stage configs and named profiles.

A profile is a Python object: the model preset, the number of ranks and one `StageConfig` per
stage. Only a profile name and a few `key=value` overrides cross the Dagster UI; both are
validated here, before any process starts.

Phases. A stage may train in `phases` (sub-stages run in order by one program, each starting
from the previous one's final checkpoint): mid-training's context lengths (RECIPE.md §3.1) and
the ViT warm-up's caption / projector-only stages (§3.2). A `Phase` has a name, a step count and
StageConfig overrides. Overrides from the UI resolve as

    profile stage config < stage-level overrides < the phase's own overrides < `<phase>.<field>`

A stage-level override of a field that some phase sets itself (e.g. `seq_len` for mid-training,
and always `steps`) is rejected, since the phase would silently win; set it per phase instead:
`phase_steps=14,4,2` (one count per phase, in order) or `ctx4k.batch_size=2`. `phase=<name>` is
how the program asks for one phase's config (`stage_config` then returns that phase resolved);
set by hand, the program trains only that phase, in the given run directory.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field

from model.config import PRESETS

STAGES = ("vit_warmup", "joint_pretrain", "midtrain", "sft", "rl", "parl", "evaluation")
MODULE_GROUPS = ("vision", "projector", "llm")
PHASE_NAME = re.compile(r"^[a-z][a-z0-9_]*$")  # used in run-dir names and `<phase>.<field>` keys
PHASE_RESERVED = ("steps", "phases", "phase")  # not a phase override: steps is Phase.steps


@dataclass(frozen=True)
class Phase:
    """One sub-stage of a stage that trains in phases (see the module docstring).

    `overrides` maps StageConfig fields to values, typed (`1024`, `("projector",)`) or strings
    as they come from the UI; they are coerced and validated like any override. Unless a phase
    sets `seed`, phase k trains with the stage's seed + k (fresh shard orders and shuffles for
    each sub-stage's data instead of re-reading the first phase's)."""

    name: str
    steps: int
    overrides: dict = field(default_factory=dict)


@dataclass
class StageConfig:
    steps: int = 40
    batch_size: int = 4  # sequences per rank per step
    seq_len: int = 128
    lr: float = 3e-3
    min_lr_ratio: float = 0.1
    warmup_steps: int = 5
    decay_fraction: float = 0.2  # WSD: last fraction of steps decays linearly to min_lr
    weight_decay: float = 0.1
    optimizer: str = "adamw"  # "adamw", or "muonclip" (Muon + RMS matching + per-head QK-Clip, RECIPE.md §1.5)
    qk_clip_tau: float = 100.0  # QK-Clip threshold on the max attention logit per head (K2: 100)
    dep: bool = False  # Decoupled Encoder Process: balanced ViT forward / recompute across ranks (§4.2)
    # Data parallelism: 0 = replicated optimizer, gradients all-reduced by the engine; 1 = ZeRO-1:
    # DeepSpeed's for AdamW (optimizer state and fp32 masters partitioned; bf16 on GPU), for MuonClip
    # the optimizer state sharded by whole matrices (training/zero.py).
    zero_stage: int = 0
    # Expert parallelism: routed experts sharded over groups of this many ranks with all-to-all
    # token dispatch (RECIPE.md §4.1 uses EP16); 1 = every rank holds every expert.
    expert_parallel: int = 1
    grad_clip: float = 1.0
    # ViT warm-up: weight of the SigLIP-style contrastive loss added to the caption loss (0 = off),
    # with SigLIP's fixed temperature and bias ([not stated] for K2.5; training/siglip.py)
    siglip_weight: float = 0.0
    siglip_temperature: float = 10.0
    siglip_bias: float = -10.0
    trainable: tuple[str, ...] = MODULE_GROUPS
    sources: tuple[str, ...] = ("text", "image_text", "video")
    vision_ratio: float = 0.1  # vision share of tokens; 10:90 from step 0 = early fusion
    # Fusion schedule: this fraction of the steps is text-only, then vision_ratio applies
    # (0 = early fusion; the paper's mid/late-fusion ablations use a larger fraction).
    text_only_warmup_fraction: float = 0.0
    num_workers: int = 1  # data-loader worker processes per rank (0 = in the training process)
    ratio_log_every: int = 10  # log the realised vision token ratio over the last this-many steps
    # YaRN factor over the model's original_max_position (mid-training context extension);
    # None keeps the factor of the checkpoint the stage starts from.
    yarn_factor: float | None = None
    router_bias_rate: float = 1e-3  # aux-loss-free bias step (DeepSeek-V3 value; K2 [not stated])
    checkpoint_every: int = 20
    log_every: int = 5
    seed: int = 1234
    # Sub-stages trained in order by one program (Phase above); () = the stage is one run.
    phases: tuple[Phase, ...] = ()
    phase: str = ""  # the phase this config is resolved for ("" = the stage as a whole)
    # RL / PARL / evaluation
    prompts_per_step: int = 2  # per rank
    group_size: int = 4  # samples per prompt
    max_new_tokens: int = 32
    temperature: float = 1.0
    top_p: float = 1.0
    eval_examples: int = 16
    updates_per_rollout: int = 2  # optimizer steps per rollout batch (makes pi_old != pi_theta)
    ratio_low: float = 0.5  # alpha: tokens with pi/pi_old outside [alpha, beta] get no gradient [not stated]
    ratio_high: float = 2.0  # beta [not stated]
    kl_tau: float = 0.01  # tau of the squared log-ratio penalty [not stated]
    answer_style: str = "solution"  # SFT targets: "solution" (worked GSM8K solution) or "final" ("#### N" only)
    format_reward: float = 0.2  # rule reward for a well-formed final answer line (partial credit)
    # PARL
    swarm_subtasks: int = 4  # independent problems per wide-search task
    critical_step_budget: int = 4  # episode budget in critical steps
    lambda_parallel: float = 0.5  # initial lambda1, annealed linearly to 0 [not stated]
    lambda_finish: float = 0.5  # initial lambda2, annealed linearly to 0 [not stated]

    def validate(self, stage: str) -> None:
        errors = []
        for name in ("steps", "batch_size", "seq_len", "checkpoint_every", "log_every", "group_size",
                     "prompts_per_step", "max_new_tokens", "eval_examples", "updates_per_rollout",
                     "swarm_subtasks", "critical_step_budget"):
            if getattr(self, name) <= 0:
                errors.append(f"{name} must be > 0 (got {getattr(self, name)})")
        if not self.lr > 0:
            errors.append(f"lr must be > 0 (got {self.lr})")
        if self.num_workers < 0:
            errors.append(f"num_workers must be >= 0 (got {self.num_workers})")
        if not 0 < self.ratio_log_every <= 100:
            errors.append(f"ratio_log_every must be in [1, 100] (got {self.ratio_log_every})")
        if not 0 <= self.text_only_warmup_fraction < 1:  # also rejects NaN
            errors.append(f"text_only_warmup_fraction must be in [0, 1) (got {self.text_only_warmup_fraction})")
        elif self.text_only_warmup_fraction > 0 and "text" not in self.sources:
            errors.append("text_only_warmup_fraction > 0 needs the text source")
        if not 0 <= self.vision_ratio < 1:
            errors.append(f"vision_ratio must be in [0, 1) (got {self.vision_ratio})")
        if not 0 < self.ratio_low < 1 < self.ratio_high:
            errors.append(f"need 0 < ratio_low < 1 < ratio_high (got {self.ratio_low}, {self.ratio_high})")
        if self.yarn_factor is not None and not self.yarn_factor >= 1:  # also rejects NaN
            errors.append(f"yarn_factor must be >= 1 (got {self.yarn_factor})")
        if not 0 < self.top_p <= 1:
            errors.append(f"top_p must be in (0, 1] (got {self.top_p})")
        for name in ("temperature", "kl_tau", "warmup_steps", "format_reward"):
            if not getattr(self, name) >= 0:
                errors.append(f"{name} must be >= 0 (got {getattr(self, name)})")
        if self.zero_stage not in (0, 1):
            errors.append(f"zero_stage must be 0 or 1 (got {self.zero_stage})")
        elif self.zero_stage == 1:
            # AdamW stages use DeepSpeed ZeRO-1, which owns the backward: not with our DEP path.
            # MuonClip shards its state by whole matrices (training/zero.py ShardedOptimizer).
            # Expert shards differ per rank, so their optimizer state cannot be partitioned again.
            for name, bad in (("dep=true (with optimizer=adamw)", self.dep and self.optimizer == "adamw"),
                              ("expert_parallel>1", self.expert_parallel > 1)):
                if bad:
                    errors.append(f"zero_stage=1 cannot be combined with {name}; use zero_stage=0 for it")
        if not self.siglip_weight >= 0:
            errors.append(f"siglip_weight must be >= 0 (got {self.siglip_weight})")
        elif self.siglip_weight > 0 and self.dep:
            errors.append("siglip_weight > 0 needs the plain forward (dep=false): DEP runs its own backward")
        if not self.siglip_temperature > 0:
            errors.append(f"siglip_temperature must be > 0 (got {self.siglip_temperature})")
        if self.expert_parallel < 1:
            errors.append(f"expert_parallel must be >= 1 (got {self.expert_parallel})")
        if self.optimizer not in ("adamw", "muonclip"):
            errors.append(f"optimizer must be 'adamw' or 'muonclip' (got {self.optimizer!r})")
        if not self.qk_clip_tau > 0:
            errors.append(f"qk_clip_tau must be > 0 (got {self.qk_clip_tau})")
        if not self.grad_clip > 0:
            errors.append(f"grad_clip must be > 0 (got {self.grad_clip})")
        for name in ("min_lr_ratio", "decay_fraction"):
            if not 0 <= getattr(self, name) <= 1:
                errors.append(f"{name} must be in [0, 1] (got {getattr(self, name)})")
        unknown = set(self.trainable) - set(MODULE_GROUPS)
        if unknown or not self.trainable:
            errors.append(f"trainable must be a non-empty subset of {MODULE_GROUPS} (got {self.trainable})")
        if self.answer_style not in ("solution", "final"):
            errors.append(f"answer_style must be 'solution' or 'final' (got {self.answer_style!r})")
        bad_sources = set(self.sources) - {"text", "image_text", "video"}
        if bad_sources:
            errors.append(f"unknown sources {sorted(bad_sources)}")
        errors += _phase_errors(self)
        if errors:
            raise ConfigError(f"invalid config for stage {stage!r}: " + "; ".join(errors))


class ConfigError(ValueError):
    """A bad profile name, override or value, raised before any training process starts."""


def _phase_errors(cfg: StageConfig) -> list[str]:
    errors = []
    names = [p.name for p in cfg.phases]
    fields = {f.name for f in dataclasses.fields(StageConfig)}
    for p in cfg.phases:
        if not isinstance(p, Phase):
            errors.append(f"phases must hold Phase objects (got {p!r})")
            continue
        if not PHASE_NAME.match(p.name):
            errors.append(f"phase name {p.name!r} must match {PHASE_NAME.pattern}")
        if not isinstance(p.steps, int) or p.steps <= 0:
            errors.append(f"phase {p.name!r}: steps must be > 0 (got {p.steps})")
        for key in p.overrides:
            if key in PHASE_RESERVED or key not in fields:
                errors.append(f"phase {p.name!r}: {key!r} is not a phase override (StageConfig fields other "
                              f"than {', '.join(PHASE_RESERVED)})")
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        errors.append(f"phase names must be unique (repeated: {dupes})")
    if cfg.phase and cfg.phase not in names:
        errors.append(f"unknown phase {cfg.phase!r}; phases: {names or 'none'}")
    return errors


def _override_text(value) -> str:
    """A typed profile value as the string an override would carry (tuples comma-joined)."""
    if isinstance(value, (tuple, list)):
        return ",".join(str(v) for v in value)
    if value is None:
        return "none"
    return str(value).lower() if isinstance(value, bool) else str(value)


@dataclass
class Profile:
    name: str
    model: str  # a key of model.config.PRESETS
    nproc_per_node: int
    tokenizer_vocab: int
    stages: dict[str, StageConfig] = field(default_factory=dict)


def _vit_warmup_phases(caption: int, projector: int) -> tuple[Phase, ...]:
    """Stage 2 is "very short" [not stated how short]; Kimi-VL's alignment was 0.1T after 2T."""
    return (Phase("caption", caption),
            Phase("projector", projector, {"trainable": ("projector",), "warmup_steps": 1}))


def _tiny() -> Profile:
    vision_only = dict(sources=("image_text", "video"), vision_ratio=0.0)
    text_only = dict(sources=("text",), vision_ratio=0.0, trainable=("llm",))
    return Profile(
        name="tiny", model="tiny", nproc_per_node=2, tokenizer_vocab=4096,
        stages={
            # ViT warm-up (RECIPE.md §3.2): stage 1 "caption" aligns the encoder through the decoder
            # on caption cross-entropy; stage 2 "projector" (very short) trains only the projector.
            # No pretrained decoder exists at tiny scale, so the caption loss trains the small LLM
            # too; at k25 scale stage 1 trains the ViT and projector against a frozen decoder.
            "vit_warmup": StageConfig(steps=100, lr=3e-3, checkpoint_every=50, log_every=10, yarn_factor=1.0,
                                      phases=_vit_warmup_phases(90, 10), **vision_only),
            "joint_pretrain": StageConfig(steps=60, lr=3e-3, checkpoint_every=30, optimizer="muonclip"),
            # Long-context mid-training (§3.1): 256 -> 1K -> 4K with YaRN, factor = seq_len /
            # original_max_position (128 for the tiny model), so the extended context is exactly the
            # phase's length. The 4K phase is two steps of one sequence (measured about 8 s a step
            # with 2 ranks on 2 CPU cores).
            "midtrain": StageConfig(steps=20, seq_len=256, batch_size=2, lr=1e-3, yarn_factor=2.0, checkpoint_every=10,
                                   optimizer="muonclip", phases=(
                                       Phase("ctx256", 14, {"seq_len": 256, "yarn_factor": 2.0, "batch_size": 2}),
                                       Phase("ctx1k", 4, {"seq_len": 1024, "yarn_factor": 8.0, "batch_size": 1,
                                                          "warmup_steps": 1}),
                                       Phase("ctx4k", 2, {"seq_len": 4096, "yarn_factor": 32.0, "batch_size": 1,
                                                          "warmup_steps": 1}))),
            # Zero-vision SFT and RL on text: the encoder is frozen (no vision tokens reach it).
            # A tiny model cannot learn 100-token worked solutions in minutes; with final-answer
            # targets it learns the answer format, so RL gets rewards with non-zero variance.
            "sft": StageConfig(steps=40, seq_len=256, batch_size=4, lr=1e-3, answer_style="final", **text_only),
            "rl": StageConfig(steps=8, lr=2e-4, warmup_steps=0, checkpoint_every=4, **text_only),
            "parl": StageConfig(steps=8, lr=2e-4, warmup_steps=0, checkpoint_every=4, max_new_tokens=8, **text_only),
            "evaluation": StageConfig(eval_examples=16, max_new_tokens=48, temperature=0.0),
        },
    )


def _small() -> Profile:
    p = _tiny()
    scale = dict(steps=2000, batch_size=16, checkpoint_every=500, log_every=10)
    stages = {k: dataclasses.replace(v, **(scale if k not in ("rl", "parl", "evaluation") else {}))
              for k, v in p.stages.items()}
    stages["vit_warmup"] = dataclasses.replace(stages["vit_warmup"], phases=_vit_warmup_phases(1800, 200))
    # The small model's original context is 4096 [choice]: 4K (no YaRN), then 16K with YaRN x4,
    # 16K tokens per sequence-batch in both.
    stages["midtrain"] = dataclasses.replace(stages["midtrain"], yarn_factor=1.0, phases=(
        Phase("ctx4k", 1500, {"seq_len": 4096, "yarn_factor": 1.0, "batch_size": 4}),
        Phase("ctx16k", 500, {"seq_len": 16384, "yarn_factor": 4.0, "batch_size": 1, "warmup_steps": 1})))
    return Profile(name="small", model="small", nproc_per_node=1, tokenizer_vocab=32768, stages=stages)


def _k25() -> Profile:
    """The paper's shape and sequence lengths (RECIPE.md §3.1); planned and validated, not run here."""
    p = _tiny()
    stages = dict(p.stages)
    # Stage 1 trains MoonViT-3D and the projector (the decoder frozen: Moonlight in the paper, the
    # model's own LLM here); stage 2 the projector only (the phases' own override).
    # The warm-up trains dense modules with AdamW: DeepSpeed ZeRO-1 partitions its optimizer state.
    stages["vit_warmup"] = dataclasses.replace(stages["vit_warmup"], seq_len=4096, trainable=("vision", "projector"),
                                               zero_stage=1)
    # DEP pays off with one device per rank; on a shared CPU it costs more than it saves
    # (benchmarks/bench_dep.py), so only the GPU profiles turn it on.
    # EP16 as in the paper (§4.1): 384 experts, 24 per rank; needs a world size divisible by 16.
    stages["joint_pretrain"] = dataclasses.replace(stages["joint_pretrain"], seq_len=4096, dep=True, expert_parallel=16)
    # Mid-training extends joint pre-training's 4K context: 32K, then 256K (§3.1, "500B -> 200B"
    # tokens). YaRN factor = seq_len / 4096: 8, then 64 (the released config's factor, giving
    # max_position_embeddings 262144). Per-sub-stage data mix and learning rate are [not stated].
    # Steps are in the token ratio at one sequence per rank per step (500B/32K : 200B/256K = 20:1);
    # their absolute size, like the rest of this profile, is a placeholder (global batch [not stated]).
    stages["midtrain"] = dataclasses.replace(stages["midtrain"], seq_len=32768, yarn_factor=8.0, dep=True,
                                             expert_parallel=16, phases=(
        Phase("ctx32k", 20, {"seq_len": 32768, "yarn_factor": 8.0, "batch_size": 1}),
        Phase("ctx256k", 1, {"seq_len": 262144, "yarn_factor": 64.0, "batch_size": 1, "warmup_steps": 0})))
    return Profile(name="k25", model="k25", nproc_per_node=8, tokenizer_vocab=163840, stages=stages)


PROFILES = {"tiny": _tiny, "small": _small, "k25": _k25}


def load_profile(name: str) -> Profile:
    if name not in PROFILES:
        raise ConfigError(f"unknown profile {name!r}; known profiles: {sorted(PROFILES)}")
    profile = PROFILES[name]()
    if profile.model not in PRESETS:
        raise ConfigError(f"profile {name!r} names unknown model preset {profile.model!r}")
    return profile


def _coerce(field_type, raw: str, key: str):
    text = str(raw).strip()
    kind = str(field_type).replace("<class '", "").replace("'>", "")
    if "None" in kind and text.lower() == "none":
        return None
    base = kind.replace("| None", "").strip()
    if base == "int":
        return int(text)
    if base == "float":
        return float(text)
    if base == "str":
        return text
    if base == "bool":
        if text.lower() not in ("true", "false", "1", "0"):
            raise ValueError("expected true or false")
        return text.lower() in ("true", "1")
    if base.startswith(("tuple", "list")):
        return tuple(s.strip() for s in text.split(",") if s.strip())
    raise ConfigError(f"override {key!r} has unsupported type {field_type}")


def apply_overrides(obj, overrides: dict[str, str] | None, what: str):
    """A copy of dataclass `obj` with string overrides coerced to the field types; unknown
    fields and unparsable values raise ConfigError naming them."""
    fields = {f.name: f.type for f in dataclasses.fields(obj)}
    values = {}
    for key, raw in (overrides or {}).items():
        if key not in fields:
            raise ConfigError(f"unknown override {key!r} for {what}; known fields: {sorted(fields)}")
        try:
            values[key] = _coerce(fields[key], raw, key)
        except ValueError as e:
            raise ConfigError(f"override {key}={raw!r} for {what} is not a valid {fields[key]}: {e}") from e
    return dataclasses.replace(obj, **values)


def stage_config(profile: str, stage: str, overrides: dict[str, str] | None = None) -> StageConfig:
    """The validated config of one stage: profile defaults, then `overrides` (field -> string).

    For a stage with phases, every phase is resolved and validated too; with `phase=<name>` in
    the overrides the result is that phase's config (see the module docstring)."""
    if stage not in STAGES:
        raise ConfigError(f"unknown stage {stage!r}; known: {STAGES}")
    base = load_profile(profile).stages[stage]
    plain, scoped, phase_steps = {}, {}, None
    for key, raw in (overrides or {}).items():
        if key == "phase_steps":
            phase_steps = raw
        elif "." in key:
            name, _, fname = key.partition(".")
            scoped.setdefault(name, {})[fname] = raw
        else:
            plain[key] = raw
    if "phases" in plain:
        raise ConfigError("override 'phases' is not supported; use phase_steps=..., <phase>.<field>=... or phase=<name>")
    cfg = apply_overrides(base, plain, f"stage {stage!r}")
    if not cfg.phases:
        if scoped or phase_steps is not None:
            what = "phase_steps" if phase_steps is not None else f"{next(iter(scoped))}.<field>"
            raise ConfigError(f"override {what!r}: stage {stage!r} has no phases")
        cfg.validate(stage)
        return cfg
    cfg = dataclasses.replace(cfg, phases=_resolve_phases(cfg, stage, plain, scoped, phase_steps))
    cfg.validate(stage)
    resolved = {p.name: phase_config(cfg, p.name, stage) for p in cfg.phases}  # validates every phase
    return resolved[cfg.phase] if cfg.phase else cfg


def _resolve_phases(cfg: StageConfig, stage: str, plain: dict, scoped: dict[str, dict],
                    phase_steps) -> tuple[Phase, ...]:
    names = [p.name for p in cfg.phases]
    shadowed = {key: [p.name for p in cfg.phases if key in p.overrides or key == "steps"] for key in plain}
    shadowed = {k: v for k, v in shadowed.items() if v}
    if shadowed:
        key, by = next(iter(shadowed.items()))
        hint = (f"phase_steps={','.join(str(p.steps) for p in cfg.phases)}" if key == "steps"
                else f"{by[0]}.{key}=...")
        raise ConfigError(f"override {key!r}: stage {stage!r} sets it per phase ({', '.join(by)}), which would "
                          f"win over a stage-level value; set it per phase instead, e.g. {hint}")
    unknown = sorted(set(scoped) - set(names))
    if unknown:
        raise ConfigError(f"override '{unknown[0]}.<field>': stage {stage!r} has no phase {unknown[0]!r}; "
                          f"phases: {names}")
    steps = [p.steps for p in cfg.phases]
    if phase_steps is not None:
        parts = [s.strip() for s in str(phase_steps).split(",") if s.strip()]
        try:
            steps = [int(s) for s in parts]
        except ValueError as e:
            raise ConfigError(f"override phase_steps={phase_steps!r}: expected comma-separated integers") from e
        if len(steps) != len(names):
            raise ConfigError(f"override phase_steps={phase_steps!r}: stage {stage!r} has {len(names)} phases "
                              f"({', '.join(names)}), got {len(steps)} counts")
    types = {f.name: f.type for f in dataclasses.fields(StageConfig)}
    out = []
    for p, n in zip(cfg.phases, steps):
        extra = dict(scoped.get(p.name, {}))
        if "steps" in extra:
            try:
                n = int(str(extra.pop("steps")).strip())
            except ValueError as e:
                raise ConfigError(f"override {p.name}.steps: expected an integer") from e
        for key in extra:
            if key in ("phases", "phase"):
                raise ConfigError(f"override {p.name}.{key!r} is not supported")
            if key in types:  # typed now, so the manifests record values, not UI strings
                try:
                    extra[key] = _coerce(types[key], extra[key], key)
                except ValueError as e:
                    raise ConfigError(f"override {p.name}.{key}={extra[key]!r} is not a valid {types[key]}: {e}") from e
        out.append(Phase(p.name, n, {**p.overrides, **extra}))
    return tuple(out)


def phase_config(cfg: StageConfig, name: str, stage: str) -> StageConfig:
    """Phase `name` of a (resolved) phased stage config: the stage's values, then the phase's
    overrides, its steps, and seed + index unless the phase sets a seed; validated."""
    index = [p.name for p in cfg.phases].index(name)
    phase = cfg.phases[index]
    values = {k: _override_text(v) for k, v in phase.overrides.items()}
    values["steps"] = str(phase.steps)
    if "seed" not in phase.overrides:
        values["seed"] = str(cfg.seed + index)
    out = dataclasses.replace(apply_overrides(cfg, values, f"stage {stage!r} phase {name!r}"), phase=name)
    out.validate(f"{stage}/{name}")
    return out
