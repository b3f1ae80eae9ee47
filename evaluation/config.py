"""The evaluation block of the run spec (its per-profile values are in recipes/).

Sampling follows RECIPE.md §8.1: temperature 1.0, top-p 0.95 by default, avg@k per suite (AIME
avg@32 as in the README, code avg@5, vision avg@3). The `tiny` profile decodes greedily on a few
examples per suite so the whole pipeline stays minutes on a 2-core CPU; its numbers say whether the
harness runs and what a tiny model scores, not what K2.5 scores.

Values the recipe leaves open [not stated] and chosen here: the sandbox limits for code (10 s,
1 GiB) and the generation batch size.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from infra.spec import Block

TEXT_SUITES = ("gsm8k", "math500", "aime24", "aime25", "amc23", "mmlu", "humaneval")
VISION_SUITES = ("digits_caption_retrieval", "skimage_caption_retrieval", "video_clip_qa")
AGENT_SUITES = ("ipython_tools", "widesearch_local")
ALL_SUITES = TEXT_SUITES + VISION_SUITES


class EvalConfig(Block):
    suites: tuple[str, ...] = ALL_SUITES
    """Suites to run (a non-empty subset of the text benchmarks and vision substitutes)."""
    limit: int = Field(0, ge=0)
    """Examples per suite (0 = the whole suite)."""
    temperature: float = Field(1.0, ge=0)
    """Sampling temperature (0 = greedy)."""
    top_p: float = Field(0.95, gt=0, le=1)
    """Nucleus sampling threshold."""
    max_new_tokens: int = Field(98304, gt=0)
    """Completion budget (96K for the reasoning benchmarks)."""
    samples: int = Field(1, gt=0)
    """avg@k for suites not named in samples_per_suite."""
    samples_per_suite: str = "aime24:32,aime25:32,humaneval:5"
    """avg@k per suite, "suite:k,..."."""
    batch_size: int = Field(8, gt=0)
    """Prompts per generate() call per rank."""
    max_prompt_tokens: int = Field(0, ge=0)
    """Left-truncate longer prompts (0 = the model's context)."""
    code_timeout_s: float = Field(10.0, gt=0)
    """Wall-clock limit of one HumanEval program [not stated]."""
    code_memory_mb: int = Field(1024, gt=0)
    """Address-space limit of one HumanEval program [not stated]."""
    seed: int = 0
    """Seeds sampling."""
    mode: Literal["auto", "base", "chat"] = "auto"
    """How text suites ask: "base" = lm-evaluation-harness style (MMLU by log-likelihood, few-shot
    generation with stop sequences; evaluation/base_mode.py), "chat" = the chat template and an
    instruction, "auto" = base for the checkpoints of `base_stages`, chat for the others."""
    base_stages: tuple[str, ...] = ("vit_warmup", "joint_pretrain", "midtrain")
    """Stages whose checkpoints are base models (mode "auto")."""
    agent_suites: tuple[str, ...] = AGENT_SUITES
    """Suites run through the agent loop with real tools (evaluation/agent_suites.py)."""
    agent_stages: tuple[str, ...] = ("sft", "rl", "parl")
    """Checkpoints of these stages also run `agent_suites` (a pre-trained model has no tool use)."""
    agent_limit: int = Field(0, ge=0)
    """Tasks per agent suite, spread evenly over its families (0 = 24 per family)."""
    agent_max_new_tokens: int = Field(640, gt=0)
    """Tokens per assistant turn in agent suites (a tool call holds a whole program: a maze BFS is
    about 450 tokens with the tiny tokenizer)."""
    agent_max_turns: int = Field(4, gt=0)
    """Assistant turns per agent trajectory."""
    discard_after_tokens: int = Field(1024, gt=0)
    """widesearch_local's discard_all arm: past this many context tokens the history is dropped [not stated]."""
    swarm_max_new_tokens: int = Field(96, gt=0)
    """Tokens per assistant turn in widesearch_local (a search, open or assign call with its
    arguments), for the orchestrator and its sub-agents alike."""

    def samples_for(self, suite: str) -> int:
        return parse_samples(self.samples_per_suite).get(suite, self.samples)

    def mode_for(self, stage: str) -> str:
        """"base" or "chat" for a checkpoint of `stage`."""
        if self.mode != "auto":
            return self.mode
        return "base" if stage in self.base_stages else "chat"

    @model_validator(mode="after")
    def _check(self):
        unknown = [s for s in self.suites if s not in ALL_SUITES]
        if unknown or not self.suites:
            raise ValueError(f"suites must be a non-empty subset of {ALL_SUITES} (unknown: {unknown})")
        unknown_agent = [s for s in self.agent_suites if s not in AGENT_SUITES]
        if unknown_agent:
            raise ValueError(f"agent_suites must be a subset of {AGENT_SUITES} (unknown: {unknown_agent})")
        bad = [s for s in parse_samples(self.samples_per_suite) if s not in ALL_SUITES]
        if bad:
            raise ValueError(f"samples_per_suite names unknown suites {bad}")
        return self


def parse_samples(text: str) -> dict[str, int]:
    out = {}
    for item in filter(None, (p.strip() for p in text.split(","))):
        suite, sep, k = item.partition(":")
        if not sep or not k.strip().isdigit() or int(k) <= 0:
            raise ValueError(f"samples_per_suite expects 'suite:k' with k > 0, got {item!r}")
        out[suite.strip()] = int(k)
    return out
