"""The early-fusion multimodal model: text embeddings with vision tokens spliced in at
`<|media_pad|>` positions, one token per merged 2x2 patch group."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from model.backbone import Backbone
from model.config import ModelConfig
from model.kv_cache import LatentKVCache
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

    def forward(self, tokens, vision_items=None, attn_mask=None, position_ids=None,
                cache: LatentKVCache | None = None) -> torch.Tensor:
        return self.backbone.forward_embeddings(self.embed(tokens, vision_items), attn_mask, position_ids, cache)

    def loss(self, tokens, targets, vision_items=None, attn_mask=None) -> torch.Tensor:
        logits = self(tokens, vision_items, attn_mask)
        return F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(), ignore_index=-100)

    def token_losses(self, tokens, targets, vision_items=None, attn_mask=None) -> torch.Tensor:
        """Per-position cross-entropy [B, T] (fp32, 0 where the target is -100) from one forward;
        `mean_token_loss` of it is `loss` (for per-modality or per-document metrics)."""
        return token_cross_entropy(self(tokens, vision_items, attn_mask), targets)

    @torch.no_grad()
    def generate(self, prompts: list[list[int]], max_new_tokens: int, stop_ids: set[int],
                 temperature: float = 0.0, top_p: float = 1.0,
                 generator: torch.Generator | list[torch.Generator] | None = None,
                 vision_items: list[torch.Tensor] | None = None) -> list[list[int]]:
        """Static batched generation with the MLA latent cache: one prefill, then one token per
        step. `vision_items` are the prompts' media in placeholder order (row by row); each item's
        `<|media_pad|>` run gets its vision tokens as in training. (Rollouts use the batching
        engine, agents/engine.py; this is the simple reference it is tested against.)

        Prompts are left-padded; pad keys are masked out and position ids count real tokens only,
        so each row continues exactly as its prompt would alone. A prompt longer than max_seq_len
        keeps its last max_seq_len tokens. A row stops at its first stop token (included); rows
        that are done keep stepping with the others, their tokens dropped."""
        if any(len(p) == 0 for p in prompts):
            raise ValueError("generate needs non-empty prompts")
        if not prompts or max_new_tokens <= 0:
            return [[] for _ in prompts]
        device, dtype = self.backbone.head.weight.device, self.backbone.head.weight.dtype
        if vision_items and any(len(p) > self.cfg.max_seq_len for p in prompts):
            raise ValueError("a prompt with media must fit max_seq_len (cutting it could split a media run)")
        prompts = [list(p)[-self.cfg.max_seq_len:] for p in prompts]
        B, width = len(prompts), max(len(p) for p in prompts)
        pad_id = 1 if self.media_pad_id == 0 else 0  # any id but the placeholder (embed rejects it)
        tokens = torch.tensor([[pad_id] * (width - len(p)) + p for p in prompts], device=device)
        n_pad = torch.tensor([width - len(p) for p in prompts], device=device)
        idx = torch.arange(width, device=device)
        real = idx[None] >= n_pad[:, None]  # [B, width]
        positions = (idx[None] - n_pad[:, None]).clamp(min=0)
        # Prefill mask: causal over real keys; pad rows see themselves only (no all-masked row).
        causal = torch.ones(width, width, dtype=torch.bool, device=device).tril()
        mask = (causal[None] & real[:, None, :]) | torch.eye(width, dtype=torch.bool, device=device)
        cache = LatentKVCache.for_model(self.cfg, B, width + max_new_tokens, device, dtype)
        hidden = self.backbone.forward_hidden(self.embed(tokens, vision_items), mask[:, None], positions, cache)
        # Decoding masks: every real key so far; the new token is always real.
        keys = torch.cat([real, torch.ones(B, max_new_tokens, dtype=torch.bool, device=device)], dim=1)
        next_pos = n_pad.new_tensor([len(p) for p in prompts])
        outs: list[list[int]] = [[] for _ in prompts]
        done = [False] * B
        for step in range(max_new_tokens):
            logits = self.backbone.head(hidden[:, -1]).float()
            logits[:, self.media_pad_id] = float("-inf")  # placeholders come from data, never from sampling
            nxt = sample_next(logits, temperature, top_p, generator)
            for i, t in enumerate(nxt.tolist()):
                if not done[i]:
                    outs[i].append(t)
                    done[i] = t in stop_ids
            if all(done) or step == max_new_tokens - 1:
                break
            step_mask = keys[:, None, None, : cache.length + 1]
            hidden = self.backbone.forward_hidden(self.embed(nxt[:, None], None), step_mask, next_pos[:, None], cache)
            next_pos += 1
        return outs


def token_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Cross-entropy per position [B, T] in fp32 for logits [B, T, V]; 0 where the target is -100."""
    return F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(), ignore_index=-100,
                           reduction="none").view(targets.shape)


def mean_token_loss(token_loss: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """The mean over positions with a target: what `F.cross_entropy(..., ignore_index=-100)` gives."""
    return token_loss.sum() / (targets != -100).sum()


def sample_next(logits: torch.Tensor, temperature: float, top_p: float, generator=None) -> torch.Tensor:
    """Greedy at temperature <= 0, else softmax(logits / T) sampling restricted to the smallest set
    of tokens whose probability reaches top_p (the top token is always kept). `generator`: one
    torch.Generator for the batch, or a list with one per row (a request's draws then do not
    depend on which other requests share its batch)."""
    if temperature <= 0:
        return logits.argmax(-1)
    probs = torch.softmax(logits / temperature, -1)
    if top_p < 1.0:
        sorted_p, order = probs.sort(-1, descending=True)
        keep = sorted_p.cumsum(-1) - sorted_p < top_p
        sorted_p = sorted_p * keep
        probs = torch.zeros_like(probs).scatter(-1, order, sorted_p)
    probs = probs / probs.sum(-1, keepdim=True)
    if isinstance(generator, (list, tuple)):
        return torch.cat([torch.multinomial(row[None], 1, generator=g)[0] for row, g in zip(probs, generator)])
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)
