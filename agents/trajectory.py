"""Trajectories, token in and token out: what the trainer consumes is exactly what the engine
produced, never a re-tokenized conversation.

A trajectory is a list of segments `(ids, loss_mask, logprobs, policy_version, media)`:
- model segments (mask 1) hold the engine's own ids and log-probs, with the engine's receipt;
- prompt, tool-result and sub-agent segments (mask 0) hold ids the loop rendered, with the
  media (pixel tensors) their `<|media_pad|>` runs stand for.
`check_provenance` refuses a trajectory with a mask-1 segment whose ids (or log-probs) are not
the engine's output (slime's "string in, token out" guard): editing a sampled token, or
re-rendering a parsed message and training on it, is caught before any loss is computed.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from agents.engine import TokenOutput

SOURCES = ("prompt", "model", "tool", "subagent")


class ProvenanceError(ValueError):
    pass


@dataclass(frozen=True)
class Segment:
    ids: tuple[int, ...]
    loss_mask: int  # 1: sampled by the policy (trained on); 0: context
    source: str  # one of SOURCES
    logprobs: tuple[float, ...] | None = None  # engine log-probs of a model segment
    policy_version: int | None = None
    media: tuple[torch.Tensor, ...] = ()
    receipt: str | None = None


@dataclass
class Trajectory:
    segments: list[Segment] = field(default_factory=list)

    def add_context(self, ids: list[int], source: str = "prompt", media: list[torch.Tensor] = ()) -> None:
        if source not in SOURCES or source == "model":
            raise ValueError(f"context source must be one of {[s for s in SOURCES if s != 'model']}, got {source!r}")
        self.segments.append(Segment(tuple(ids), 0, source, media=tuple(media)))

    def add_model(self, output: TokenOutput) -> None:
        self.segments.append(Segment(tuple(output.ids), 1, "model", tuple(output.logprobs), output.version,
                                     receipt=output.receipt))

    @property
    def ids(self) -> list[int]:
        return [t for s in self.segments for t in s.ids]

    @property
    def media(self) -> list[torch.Tensor]:
        return [m for s in self.segments for m in s.media]

    def __len__(self) -> int:
        return sum(len(s.ids) for s in self.segments)

    def model_tokens(self) -> int:
        return sum(len(s.ids) for s in self.segments if s.loss_mask)

    def tensors(self) -> dict[str, torch.Tensor]:
        """Aligned per-token tensors: ids, loss_mask (1 on model tokens), old log-probs (0 where
        the mask is 0) and the policy version of each model token (-1 elsewhere)."""
        mask, logp, version = [], [], []
        for s in self.segments:
            mask += [s.loss_mask] * len(s.ids)
            logp += list(s.logprobs) if s.loss_mask else [0.0] * len(s.ids)
            version += [s.policy_version if s.loss_mask else -1] * len(s.ids)
        return {"ids": torch.tensor(self.ids, dtype=torch.long), "loss_mask": torch.tensor(mask, dtype=torch.bool),
                "logprobs": torch.tensor(logp, dtype=torch.float32), "version": torch.tensor(version, dtype=torch.long)}


def check_provenance(trajectory: Trajectory, engine) -> None:
    """Raise ProvenanceError unless every mask-1 segment carries the engine's receipt for exactly
    its ids and log-probs."""
    for i, s in enumerate(trajectory.segments):
        if not s.loss_mask:
            continue
        if s.source != "model" or s.receipt is None or s.logprobs is None or len(s.logprobs) != len(s.ids):
            raise ProvenanceError(f"segment {i} is trained on (mask 1) but was not produced by the engine")
        output = TokenOutput(list(s.ids), list(s.logprobs), "", s.policy_version or 0, None, s.receipt)
        if not engine.verify(output):
            raise ProvenanceError(f"segment {i}: its ids or log-probs differ from what the engine produced")
