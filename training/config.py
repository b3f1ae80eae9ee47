"""Typed stage configs and named profiles.

A profile is a Python object: the model preset, the number of ranks and one `StageConfig` per
stage. Only a profile name and a few `key=value` overrides cross the Dagster UI; both are
validated here, before any process starts.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from model.config import PRESETS

STAGES = ("vit_warmup", "joint_pretrain", "midtrain", "sft", "rl", "parl", "evaluation")
MODULE_GROUPS = ("vision", "projector", "llm")


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
    # Data parallelism: 0 = replicated optimizer, gradients all-reduced by the engine; 1 = DeepSpeed
    # ZeRO-1 (optimizer state and fp32 master weights partitioned over the ranks; bf16 on GPU).
    zero_stage: int = 0
    # Expert parallelism: routed experts sharded over groups of this many ranks with all-to-all
    # token dispatch (RECIPE.md §4.1 uses EP16); 1 = every rank holds every expert.
    expert_parallel: int = 1
    grad_clip: float = 1.0
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
            # ZeRO-1 partitions flattened parameters: MuonClip needs whole matrices and its QK-Clip
            # rewrites weights after the step (DeepSpeed's fp32 master copies would not see it); our
            # EP and DEP paths run their own collective backward and gradient sync.
            for name, bad in (("optimizer=muonclip", self.optimizer == "muonclip"), ("dep=true", self.dep),
                              ("expert_parallel>1", self.expert_parallel > 1)):
                if bad:
                    errors.append(f"zero_stage=1 cannot be combined with {name}; use zero_stage=0 for it")
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
        if errors:
            raise ConfigError(f"invalid config for stage {stage!r}: " + "; ".join(errors))


class ConfigError(ValueError):
    """A bad profile name, override or value, raised before any training process starts."""


@dataclass
class Profile:
    name: str
    model: str  # a key of model.config.PRESETS
    nproc_per_node: int
    tokenizer_vocab: int
    stages: dict[str, StageConfig] = field(default_factory=dict)


def _tiny() -> Profile:
    vision_only = dict(sources=("image_text", "video"), vision_ratio=0.0)
    text_only = dict(sources=("text",), vision_ratio=0.0, trainable=("llm",))
    return Profile(
        name="tiny", model="tiny", nproc_per_node=2, tokenizer_vocab=4096,
        stages={
            # No pretrained decoder exists at tiny scale, so the caption loss trains the small LLM
            # too; at k25 scale stage 1 trains only the ViT against a frozen decoder.
            "vit_warmup": StageConfig(steps=100, lr=3e-3, checkpoint_every=50, log_every=10, yarn_factor=1.0,
                                      **vision_only),
            "joint_pretrain": StageConfig(steps=60, lr=3e-3, checkpoint_every=30, optimizer="muonclip"),
            "midtrain": StageConfig(steps=20, seq_len=256, batch_size=2, lr=1e-3, yarn_factor=2.0, checkpoint_every=10,
                                   optimizer="muonclip"),
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
    return Profile(
        name="small", model="small", nproc_per_node=1, tokenizer_vocab=32768,
        stages={k: dataclasses.replace(v, **(scale if k not in ("rl", "parl", "evaluation") else {}))
                for k, v in p.stages.items()},
    )


def _k25() -> Profile:
    """The paper's shape and sequence lengths (RECIPE.md §3.1); planned and validated, not run here."""
    p = _tiny()
    stages = dict(p.stages)
    stages["vit_warmup"] = dataclasses.replace(stages["vit_warmup"], seq_len=4096, trainable=("vision",))
    # DEP pays off with one device per rank; on a shared CPU it costs more than it saves
    # (benchmarks/bench_dep.py), so only the GPU profiles turn it on.
    stages["joint_pretrain"] = dataclasses.replace(stages["joint_pretrain"], seq_len=4096, dep=True)
    # first mid-training sub-stage, 4K -> 32K; the 256K sub-stage is the same stage with
    # overrides seq_len=262144, yarn_factor=64 (the released config's factor)
    stages["midtrain"] = dataclasses.replace(stages["midtrain"], seq_len=32768, yarn_factor=8.0, dep=True)
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
    """The validated config of one stage: profile defaults, then `overrides` (field -> string)."""
    if stage not in STAGES:
        raise ConfigError(f"unknown stage {stage!r}; known: {STAGES}")
    cfg = apply_overrides(load_profile(profile).stages[stage], overrides, f"stage {stage!r}")
    cfg.validate(stage)
    return cfg
