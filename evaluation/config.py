"""Typed evaluation settings with profiles (tiny / small / k25) and UI overrides.

Sampling follows RECIPE.md §8.1: temperature 1.0, top-p 0.95 by default, avg@k per suite (AIME
avg@32 as in the README, code avg@5, vision avg@3). The `tiny` profile decodes greedily on a few
examples per suite so the whole pipeline stays minutes on a 2-core CPU; its numbers say whether the
harness runs and what a tiny model scores, not what K2.5 scores.

Values the recipe leaves open [not stated] and chosen here: the sandbox limits for code (10 s,
1 GiB) and the generation batch size.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from training.config import ConfigError, apply_overrides

TEXT_SUITES = ("gsm8k", "math500", "aime24", "aime25", "amc23", "mmlu", "humaneval")
VISION_SUITES = ("digits_caption_retrieval", "skimage_caption_retrieval", "video_clip_qa")
ALL_SUITES = TEXT_SUITES + VISION_SUITES


@dataclass
class EvalConfig:
    suites: tuple[str, ...] = ALL_SUITES
    limit: int = 0  # examples per suite (0 = the whole suite)
    temperature: float = 1.0
    top_p: float = 0.95
    max_new_tokens: int = 98304  # 96K completion budget of the reasoning benchmarks
    samples: int = 1  # avg@k for suites not named in samples_per_suite
    samples_per_suite: str = "aime24:32,aime25:32,humaneval:5"  # "suite:k,..."
    batch_size: int = 8  # prompts per generate() call per rank
    max_prompt_tokens: int = 0  # left-truncate longer prompts (0 = the model's context)
    code_timeout_s: float = 10.0
    code_memory_mb: int = 1024
    seed: int = 0

    def samples_for(self, suite: str) -> int:
        return parse_samples(self.samples_per_suite).get(suite, self.samples)

    def validate(self) -> None:
        errors = []
        unknown = [s for s in self.suites if s not in ALL_SUITES]
        if unknown or not self.suites:
            errors.append(f"suites must be a non-empty subset of {ALL_SUITES} (unknown: {unknown})")
        for name in ("limit", "max_prompt_tokens"):
            if getattr(self, name) < 0:
                errors.append(f"{name} must be >= 0 (got {getattr(self, name)})")
        for name in ("max_new_tokens", "samples", "batch_size", "code_memory_mb"):
            if getattr(self, name) <= 0:
                errors.append(f"{name} must be > 0 (got {getattr(self, name)})")
        if not self.temperature >= 0:
            errors.append(f"temperature must be >= 0 (got {self.temperature})")
        if not 0 < self.top_p <= 1:
            errors.append(f"top_p must be in (0, 1] (got {self.top_p})")
        if not self.code_timeout_s > 0:
            errors.append(f"code_timeout_s must be > 0 (got {self.code_timeout_s})")
        try:
            per_suite = parse_samples(self.samples_per_suite)
            bad = [s for s in per_suite if s not in ALL_SUITES]
            if bad:
                errors.append(f"samples_per_suite names unknown suites {bad}")
        except ValueError as e:
            errors.append(str(e))
        if errors:
            raise ConfigError("invalid evaluation config: " + "; ".join(errors))


def parse_samples(text: str) -> dict[str, int]:
    out = {}
    for item in filter(None, (p.strip() for p in text.split(","))):
        suite, sep, k = item.partition(":")
        if not sep or not k.strip().isdigit() or int(k) <= 0:
            raise ValueError(f"samples_per_suite expects 'suite:k' with k > 0, got {item!r}")
        out[suite.strip()] = int(k)
    return out


def _tiny() -> EvalConfig:
    # greedy (avg@1 is then exact), short answers, a handful of examples per suite
    return EvalConfig(limit=8, temperature=0.0, top_p=1.0, max_new_tokens=48, samples_per_suite="", batch_size=8,
                      code_timeout_s=5.0, code_memory_mb=512)


def _small() -> EvalConfig:
    return EvalConfig(limit=200, max_new_tokens=1024, samples_per_suite="aime24:4,aime25:4,humaneval:5")


PROFILES = {"tiny": _tiny, "small": _small, "k25": EvalConfig}


def eval_config(profile: str, overrides: dict[str, str] | None = None) -> EvalConfig:
    """The validated evaluation config of a profile with string overrides (from the UI or CLI)."""
    if profile not in PROFILES:
        raise ConfigError(f"unknown profile {profile!r}; known profiles: {sorted(PROFILES)}")
    cfg = apply_overrides(PROFILES[profile](), overrides, "evaluation")
    cfg.validate()
    return cfg


def to_dict(cfg: EvalConfig) -> dict:
    return dataclasses.asdict(cfg)
