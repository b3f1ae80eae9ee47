"""The early-fusion multimodal model: text embeddings with vision tokens spliced in at
`<|media_pad|>` positions, one token per merged 2x2 patch group."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from model.backbone import Backbone
from model.config import ModelConfig
from model.vision import VisionEncoder


class K25Model(nn.Module):
    def __init__(self, cfg: ModelConfig, media_pad_id: int):
        super().__init__()
        self.cfg = cfg
        self.media_pad_id = media_pad_id
        self.vision = VisionEncoder(cfg)
        self.backbone = Backbone(cfg)

    # Named parameter groups, so training stages can pick what is trainable.
    def module_groups(self) -> dict[str, nn.Module]:
        return {
            "vision": nn.ModuleList([m for n, m in self.vision.named_children() if n != "projector"]),
            "projector": self.vision.projector,
            "llm": self.backbone,
        }

    def embed(self, tokens: torch.Tensor, vision_items: list[torch.Tensor] | None) -> torch.Tensor:
        h = self.backbone.embed(tokens)
        slots = tokens == self.media_pad_id
        n_slots = int(slots.sum())
        if not vision_items:
            if n_slots:
                raise ValueError(f"{n_slots} media placeholders but no vision items")
            return h
        vis = self.vision(vision_items).to(h.dtype)
        if vis.shape[0] != n_slots:
            raise ValueError(f"vision produced {vis.shape[0]} tokens for {n_slots} media placeholders")
        h = h.clone()
        h[slots] = vis
        return h

    def forward(self, tokens, vision_items=None, attn_mask=None) -> torch.Tensor:
        return self.backbone.forward_embeddings(self.embed(tokens, vision_items), attn_mask)

    def loss(self, tokens, targets, vision_items=None, attn_mask=None) -> torch.Tensor:
        logits = self(tokens, vision_items, attn_mask)
        return F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(), ignore_index=-100)

    @torch.no_grad()
    def generate(self, prompts: list[list[int]], max_new_tokens: int, stop_ids: set[int],
                 temperature: float = 0.0, top_p: float = 1.0, generator: torch.Generator | None = None) -> list[list[int]]:
        """Batched text generation (left-padded). First version recomputes the full prefix each
        step; the KV-cache version arrives with the model issue."""
        device = self.backbone.head.weight.device
        outs: list[list[int]] = [[] for _ in prompts]
        done = [False] * len(prompts)
        seqs = [list(p) for p in prompts]
        for _ in range(max_new_tokens):
            width = max(len(s) for s in seqs)
            window = min(width, self.cfg.max_seq_len)
            batch = torch.tensor([[0] * (width - len(s)) + s for s in seqs], device=device)[:, -window:]
            pad = torch.tensor([[True] * (width - len(s)) + [False] * len(s) for s in seqs], device=device)[:, -window:]
            causal = torch.ones(window, window, dtype=torch.bool, device=device).tril()
            mask = (causal[None] & ~pad[:, None, :])[:, None]
            mask = mask | torch.eye(window, dtype=torch.bool, device=device)  # pad rows attend to self
            logits = self(batch, None, mask)[:, -1].float()
            logits[:, self.media_pad_id] = float("-inf")  # placeholders come from data, never from sampling
            nxt = sample_next(logits, temperature, top_p, generator)
            for i, t in enumerate(nxt.tolist()):
                if done[i]:
                    continue
                outs[i].append(t)
                seqs[i].append(t)
                done[i] = t in stop_ids
            if all(done):
                break
        return outs


def sample_next(logits: torch.Tensor, temperature: float, top_p: float, generator=None) -> torch.Tensor:
    if temperature <= 0:
        return logits.argmax(-1)
    probs = torch.softmax(logits / temperature, -1)
    if top_p < 1.0:
        sorted_p, order = probs.sort(-1, descending=True)
        keep = sorted_p.cumsum(-1) - sorted_p < top_p
        sorted_p = sorted_p * keep
        probs = torch.zeros_like(probs).scatter(-1, order, sorted_p)
    return torch.multinomial(probs / probs.sum(-1, keepdim=True), 1, generator=generator).squeeze(-1)
