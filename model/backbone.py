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


def _has_grouped_mm() -> bool:
    return hasattr(torch, "_grouped_mm")


def grouped_matmul(x: torch.Tensor, w: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
    """Rows of `x` sorted by expert times that expert's matrix: x[offs[e-1]:offs[e]] @ w[e].

    One grouped GEMM (torch._grouped_mm) instead of a Python loop over experts; indexing a stacked
    weight per expert would also make autograd materialise a full-size gradient per expert.
    """
    if _has_grouped_mm() and x.dtype in (torch.float32, torch.bfloat16) and x.dtype == w.dtype:
        return torch._grouped_mm(x.contiguous(), w.contiguous(), offs=offsets)
    bounds = [0, *offsets.tolist()]  # fallback: per-expert views (unbind keeps one gradient buffer)
    return torch.cat([x[bounds[e]:bounds[e + 1]] @ we for e, we in enumerate(w.unbind(0))])


class MoE(nn.Module):
    """Sigmoid-routed experts with aux-loss-free balancing and one shared expert (RECIPE.md §1.3).

    Expert weights are stacked ([E, ...]); dispatch sorts the (token, expert) pairs by expert once
    and runs each projection as one grouped GEMM over all experts.
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
        scores = torch.sigmoid(F.linear(x.float(), self.router.weight.float()))  # fp32 routing
        _, idx = torch.topk(scores + self.expert_bias, self.top_k, dim=-1)  # bias: selection only
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
        offsets = counts.cumsum(0).to(torch.int32)
        h = flat.index_select(0, token_of)  # backward is an index_add, cheaper than index_put
        h = F.silu(grouped_matmul(h, self.w_gate, offsets)) * grouped_matmul(h, self.w_up, offsets)
        y = grouped_matmul(h, self.w_down, offsets) * gates.reshape(-1)[order].unsqueeze(-1).to(flat.dtype)
        out = torch.zeros_like(flat).index_add_(0, token_of, y)
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
