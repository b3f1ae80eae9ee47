"""Decoder-only MoE backbone in the Kimi K2 form (first version).

Dense SwiGLU for the first `n_dense_layers`, then MoE layers with a sigmoid router, top-k selection
on score + aux-loss-free bias (the bias changes selection only, never the gate weights),
renormalised gates times `routed_scaling`, and one shared expert. Attention here is standard
multi-head attention with RoPE; MLA and YaRN come with the model issue.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from model.config import ModelConfig


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x32 = x.float()
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return (x32 * self.weight.float()).to(x.dtype)


def rope_tables(seq_len: int, head_dim: int, theta: float, scale: float = 1.0, device=None):
    """cos/sin tables; `scale` > 1 interpolates positions (context extension in mid-training)."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, device=device).float() / head_dim))
    pos = torch.arange(seq_len, device=device).float() / scale
    freqs = torch.outer(pos, inv_freq)
    return freqs.cos(), freqs.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    # x: [B, H, T, D]; rotate pairs (even, odd) halves
    x1, x2 = x[..., ::2], x[..., 1::2]
    cos, sin = cos[None, None], sin[None, None]
    out = torch.stack((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1)
    return out.flatten(-2).type_as(x)


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.n_heads = cfg.n_heads
        self.head_dim = cfg.dim // cfg.n_heads
        self.wqkv = nn.Linear(cfg.dim, 3 * cfg.dim, bias=False)
        self.wo = nn.Linear(cfg.dim, cfg.dim, bias=False)

    def forward(self, x, cos, sin, attn_mask=None):
        B, T, _ = x.shape
        q, k, v = self.wqkv(x).view(B, T, 3, self.n_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if attn_mask is None:
            out = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        else:  # document-causal mask from packing: [B, 1, T, T] boolean
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
        return self.wo(out.transpose(1, 2).reshape(B, T, -1))


class SwiGLU(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.gate = nn.Linear(dim, hidden, bias=False)
        self.up = nn.Linear(dim, hidden, bias=False)
        self.down = nn.Linear(hidden, dim, bias=False)

    def forward(self, x):
        return self.down(F.silu(self.gate(x)) * self.up(x))


class MoE(nn.Module):
    """Sigmoid-routed experts with aux-loss-free balancing and one shared expert.

    Expert weights are stored stacked ([E, ...]) so dispatch is a sort by expert plus one
    batched matmul per expert group, not a loop over tokens.
    """

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.n_experts, self.top_k, self.scaling = cfg.n_experts, cfg.top_k, cfg.routed_scaling
        self.router = nn.Linear(cfg.dim, cfg.n_experts, bias=False)
        # Selection bias, updated by the trainer from expert load (not by gradients).
        self.register_buffer("expert_bias", torch.zeros(cfg.n_experts), persistent=True)
        std = 1.0 / math.sqrt(cfg.dim)
        self.w_gate = nn.Parameter(torch.randn(cfg.n_experts, cfg.dim, cfg.expert_dim) * std)
        self.w_up = nn.Parameter(torch.randn(cfg.n_experts, cfg.dim, cfg.expert_dim) * std)
        self.w_down = nn.Parameter(torch.randn(cfg.n_experts, cfg.expert_dim, cfg.dim) / math.sqrt(cfg.expert_dim))
        self.shared = SwiGLU(cfg.dim, cfg.expert_dim * cfg.n_shared_experts)
        self.last_load: torch.Tensor | None = None  # tokens per expert in the last forward

    def route(self, x: torch.Tensor):
        scores = torch.sigmoid(self.router(x).float())  # fp32 routing
        _, idx = torch.topk(scores + self.expert_bias, self.top_k, dim=-1)
        gates = scores.gather(-1, idx)
        gates = gates / (gates.sum(-1, keepdim=True) + 1e-20) * self.scaling
        return idx, gates

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        flat = x.reshape(-1, shape[-1])
        idx, gates = self.route(flat)
        expert_of = idx.reshape(-1)
        order = torch.argsort(expert_of, stable=True)
        token_of = order // self.top_k
        counts = torch.bincount(expert_of, minlength=self.n_experts)
        self.last_load = counts.detach()
        out = torch.zeros_like(flat)
        start = 0
        for e, n in enumerate(counts.tolist()):  # loop over experts, each a batched matmul
            if n == 0:
                continue
            tok = token_of[start:start + n]
            h = flat[tok]
            y = (F.silu(h @ self.w_gate[e]) * (h @ self.w_up[e])) @ self.w_down[e]
            w = gates.reshape(-1)[order[start:start + n]].unsqueeze(-1).to(y.dtype)
            out.index_add_(0, tok, y * w)
            start += n
        return (out + self.shared(flat)).reshape(shape)

    @torch.no_grad()
    def update_bias(self, load: torch.Tensor, rate: float) -> None:
        """DeepSeek-V3 aux-loss-free rule: b_e += rate * sign(mean_load - load_e)."""
        load = load.float()
        self.expert_bias += rate * torch.sign(load.mean() - load)


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig, moe: bool):
        super().__init__()
        self.attn_norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.attn = Attention(cfg)
        self.ffn_norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.ffn = MoE(cfg) if moe else SwiGLU(cfg.dim, cfg.ffn_dim)

    def forward(self, x, cos, sin, attn_mask=None):
        x = x + self.attn(self.attn_norm(x), cos, sin, attn_mask)
        return x + self.ffn(self.ffn_norm(x))


class Backbone(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.embed = nn.Embedding(cfg.vocab_size, cfg.dim)
        self.layers = nn.ModuleList(Block(cfg, moe=i >= cfg.n_dense_layers) for i in range(cfg.n_layers))
        self.norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.head = nn.Linear(cfg.dim, cfg.vocab_size, bias=False)  # untied, as in K2
        self.rope_scale = 1.0  # >1 after context extension (mid-training)

    def moe_layers(self) -> list[MoE]:
        return [layer.ffn for layer in self.layers if isinstance(layer.ffn, MoE)]

    def forward_embeddings(self, h: torch.Tensor, attn_mask=None) -> torch.Tensor:
        T = h.shape[1]
        cos, sin = rope_tables(T, self.cfg.dim // self.cfg.n_heads, self.cfg.rope_theta, self.rope_scale, h.device)
        for layer in self.layers:
            h = layer(h, cos, sin, attn_mask)
        return self.head(self.norm(h))
