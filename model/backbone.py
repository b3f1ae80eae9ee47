"""Decoder-only MoE backbone in the Kimi K2 / DeepSeek-V3 form (RECIPE.md §1.1-1.3).

Each layer: RMSNorm -> MLA attention -> residual, RMSNorm -> FFN -> residual. The first
`n_dense_layers` FFNs are dense SwiGLU, the rest MoE: sigmoid router, top-k on score + aux-loss-free
bias (the bias changes selection only, never the gate weights), renormalised gates times
`routed_scaling`, one shared expert.

Attention is MLA with the DeepSeek-V3 Hugging Face module names and weight layout, so weights copy
1:1 to and from `DeepseekV3ForCausalLM` and QK-Clip can take per-head row slices (RECIPE.md §1.2):
q_b_proj rows [h*(nope+rope), (h+1)*(nope+rope)) and kv_b_proj rows [h*(nope+v), (h+1)*(nope+v)),
nope part first. RoPE acts on the rope dims only; YaRN extends the context (`Backbone.set_yarn`).
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from model.config import ModelConfig
from model.kv_cache import LatentKVCache

# DeepSeek-V3 (reference code and transformers) normalises the MLA latents c_Q and c_KV with its
# RMSNorm default eps, not with rms_norm_eps; keep it for exact parity with released weights.
LATENT_NORM_EPS = 1e-6


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x32 = x.float()
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return (x32 * self.weight.float()).to(x.dtype)


# ----------------------------------------------------------------------------------------------
# RoPE with DeepSeek-V3 YaRN


def yarn_get_mscale(factor: float, mscale: float = 1.0) -> float:
    """DeepSeek-V3's attention-temperature term: 0.1 * mscale * ln(factor) + 1 (1 without scaling)."""
    return 1.0 if factor <= 1 else 0.1 * mscale * math.log(factor) + 1.0


def rope_inv_freq(cfg: ModelConfig, device=None) -> tuple[torch.Tensor, float]:
    """Inverse frequencies of the rope dims and the cos/sin multiplier.

    With yarn_factor > 1 this is DeepSeek-V3 YaRN (transformers rope_type "yarn"): dims that turn
    more than beta_fast times over the original context keep their frequency (extrapolation),
    dims that turn fewer than beta_slow times are slowed down by the factor (interpolation), with
    a linear ramp in between. cos/sin are multiplied by mscale(mscale) / mscale(mscale_all_dim),
    which is 1 for K2's mscale = mscale_all_dim = 1; the softmax scale carries the rest
    (ModelConfig.softmax_scale).
    """
    dim, base, factor = cfg.qk_rope_head_dim, cfg.rope_theta, cfg.yarn_factor
    pos_freqs = base ** (torch.arange(0, dim, 2, dtype=torch.float32, device=device) / dim)
    extrapolated = 1.0 / pos_freqs
    if factor <= 1:
        return extrapolated, 1.0
    interpolated = 1.0 / (factor * pos_freqs)

    def correction_dim(n_rotations: float) -> float:  # the dim whose wavelength fits n_rotations times
        return dim * math.log(cfg.original_max_position / (n_rotations * 2 * math.pi)) / (2 * math.log(base))

    low = max(math.floor(correction_dim(cfg.yarn_beta_fast)), 0)
    high = min(math.ceil(correction_dim(cfg.yarn_beta_slow)), dim - 1)
    if low == high:
        high += 0.001  # avoid a zero-width ramp
    ramp = ((torch.arange(dim // 2, dtype=torch.float32, device=device) - low) / (high - low)).clamp(0, 1)
    inv_freq = interpolated * ramp + extrapolated * (1 - ramp)  # ramp 0: high frequency, kept
    mscale = yarn_get_mscale(factor, cfg.yarn_mscale) / yarn_get_mscale(factor, cfg.yarn_mscale_all_dim)
    return inv_freq, mscale


def rope_tables(cfg: ModelConfig, seq_len: int, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """fp32 cos/sin of shape [seq_len, qk_rope_head_dim // 2] for positions 0..seq_len-1."""
    inv_freq, mscale = rope_inv_freq(cfg, device)
    freqs = torch.outer(torch.arange(seq_len, device=device, dtype=torch.float32), inv_freq)
    return freqs.cos() * mscale, freqs.sin() * mscale


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate interleaved pairs (x0, x1), (x2, x3), ... by their angle: the pair layout of
    DeepSeek-V3 weights (its reference code rotates them as complex numbers; transformers
    de-interleaves and applies rotate_half, with the same result). The output holds the rotated
    pairs de-interleaved (all first members, then all second members) like transformers' output.
    q and k get the same permutation, so q.k is unchanged; the cached k_rope uses this order.
    x: [..., T, D]; cos, sin: broadcastable to [..., T, D/2]."""
    x1, x2 = x[..., 0::2], x[..., 1::2]
    return torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1)


# ----------------------------------------------------------------------------------------------
# MLA attention


class MLA(nn.Module):
    """Multi-head latent attention (RECIPE.md §1.2), DeepSeek-V3 module names.

    Two ways to attend, same result:
    - expanded (training, prefill): kv_b_proj up-projects the latent to per-head k_nope and v,
      k = [k_nope; k_rope shared by all heads], then one SDPA over heads.
    - absorbed (decoding with a cache): W_UK is folded into the query and W_UV applied after the
      softmax, so attention runs directly on the cached latents [c_KV; k_rope] as a single shared
      key/value head (MQA). Per step this reads the cache once instead of up-projecting all of it.
    """

    def __init__(self, cfg: ModelConfig, layer_idx: int):
        super().__init__()
        self.cfg = cfg  # read at forward time: set_yarn changes the softmax scale
        self.layer_idx = layer_idx
        self.n_heads, self.kv_rank = cfg.n_heads, cfg.kv_lora_rank
        self.nope, self.rope, self.v_dim = cfg.qk_nope_head_dim, cfg.qk_rope_head_dim, cfg.v_head_dim
        self.q_a_proj = nn.Linear(cfg.dim, cfg.q_lora_rank, bias=False)
        self.q_a_layernorm = RMSNorm(cfg.q_lora_rank, LATENT_NORM_EPS)
        self.q_b_proj = nn.Linear(cfg.q_lora_rank, cfg.n_heads * cfg.qk_head_dim, bias=False)
        self.kv_a_proj_with_mqa = nn.Linear(cfg.dim, cfg.kv_lora_rank + cfg.qk_rope_head_dim, bias=False)
        self.kv_a_layernorm = RMSNorm(cfg.kv_lora_rank, LATENT_NORM_EPS)
        self.kv_b_proj = nn.Linear(cfg.kv_lora_rank, cfg.n_heads * (cfg.qk_nope_head_dim + cfg.v_head_dim), bias=False)
        self.o_proj = nn.Linear(cfg.n_heads * cfg.v_head_dim, cfg.dim, bias=False)
        # QK-Clip input (RECIPE.md §1.5), opt-in: when True each forward writes the per-head max
        # pre-softmax logit (scale * q.k over batch, queries and unmasked keys) to max_logits [H].
        self.record_max_logits: bool = False
        self.max_logits: torch.Tensor | None = None

    def latents(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        """[normed c_KV ; roped k_rope] per token: [B, T, kv_lora_rank + rope], what the cache stores."""
        c_kv, k_rope = self.kv_a_proj_with_mqa(x).split([self.kv_rank, self.rope], dim=-1)
        return torch.cat((self.kv_a_layernorm(c_kv), apply_rope(k_rope, cos, sin)), dim=-1)

    def forward(self, x, cos, sin, attn_mask=None, cache: LatentKVCache | None = None):
        """x: [B, T, dim]; cos/sin: [B or 1, T, rope/2]; attn_mask: None (causal) or bool
        [B, 1, T, S] (True = may attend), S = cached + new tokens."""
        B, T, _ = x.shape
        q = self.q_b_proj(self.q_a_layernorm(self.q_a_proj(x))).view(B, T, self.n_heads, -1).transpose(1, 2)
        q_nope, q_rope = q.split([self.nope, self.rope], dim=-1)
        q_rope = apply_rope(q_rope, cos[:, None], sin[:, None])
        latent = self.latents(x, cos, sin)
        past = 0
        if cache is not None:
            past = cache.length
            latent = cache.update(self.layer_idx, latent)  # all tokens so far: [B, S, kv_rank + rope]
        if past:
            out = self._attend_absorbed(q_nope, q_rope, latent, attn_mask)
        else:
            out = self._attend_expanded(q_nope, q_rope, latent, attn_mask)
        return self.o_proj(out.transpose(1, 2).reshape(B, T, self.n_heads * self.v_dim))

    def _attend_expanded(self, q_nope, q_rope, latent, attn_mask):
        B, H, T, _ = q_nope.shape
        S = latent.shape[1]
        c_kv, k_rope = latent.split([self.kv_rank, self.rope], dim=-1)
        kv = self.kv_b_proj(c_kv).view(B, S, H, self.nope + self.v_dim).transpose(1, 2)
        k_nope, v = kv.split([self.nope, self.v_dim], dim=-1)
        k = torch.cat((k_nope, k_rope[:, None].expand(B, H, S, self.rope)), dim=-1)
        q = torch.cat((q_nope, q_rope), dim=-1)
        # SDPA's fused kernels (CPU flash, CUDA flash) need v as wide as q and k; MLA's v is narrower
        # (128 vs 192 in K2) and would fall back to the unfused math path (5x slower forward on CPU).
        # Zero-padding v and dropping the padded outputs gives the same result.
        pad = q.shape[-1] - self.v_dim
        v = F.pad(v, (0, pad)) if pad > 0 else v
        scale = self.cfg.softmax_scale()
        if self.record_max_logits:
            self._record_max_logits(q, k, scale, attn_mask)
        if attn_mask is None:  # causal; only valid without cached tokens (S == T)
            out = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scale)
        else:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, scale=scale)
        return out[..., : self.v_dim]

    def _attend_absorbed(self, q_nope, q_rope, latent, attn_mask):
        B, H, T, _ = q_nope.shape
        S = latent.shape[1]
        w = self.kv_b_proj.weight.view(H, self.nope + self.v_dim, self.kv_rank)
        w_uk, w_uv = w[:, : self.nope], w[:, self.nope:]  # [H, nope, C], [H, v, C]
        # q_nope . (W_UK c) = (q_nope W_UK) . c: queries move into the latent space.
        q = torch.cat((q_nope @ w_uk, q_rope), dim=-1)  # [B, H, T, C + rope]
        # All heads share one key/value (the latent), so heads fold into query rows: MQA, one head.
        q = q.reshape(B, 1, H * T, -1)
        # The value is the latent c_KV; pass all of [c_KV; k_rope] (equal q/k/v widths keep SDPA on a
        # fused kernel, see _attend_expanded) and drop the k_rope columns of the output.
        key = value = latent[:, None]
        if attn_mask is not None:
            attn_mask = attn_mask.expand(B, H, T, S).reshape(B, 1, H * T, S)
        elif T > 1:
            raise ValueError("several new tokens after cached ones need an explicit attn_mask")
        if self.record_max_logits:  # absorbed q . latent equals the expanded q . k per head
            self._record_max_logits(q.view(B, H, T, -1), latent[:, None], self.cfg.softmax_scale(),
                                    None if attn_mask is None else attn_mask.view(B, H, T, S))
        out = F.scaled_dot_product_attention(q, key, value, attn_mask=attn_mask, scale=self.cfg.softmax_scale())
        out = out[..., : self.kv_rank].reshape(B, H, T, self.kv_rank)
        return out @ w_uv.transpose(1, 2)  # W_UV after the softmax: [B, H, T, v]

    @torch.no_grad()
    def _record_max_logits(self, q, k, scale, attn_mask):
        """max over batch, query, key of scale * q.k per head -> self.max_logits [H] (fp32).
        q: [B, H, T, D]; k: [B, H or 1, S, D]; attn_mask: None (causal, aligned to the end) or bool
        broadcastable to [B, H, T, S]. Fully masked query rows contribute -inf. Costs one explicit
        [B, H, T, S] fp32 logit tensor per layer (no grad), beside the unchanged SDPA call."""
        logits = (q.float() @ k.float().transpose(-1, -2)) * scale  # [B, H, T, S]
        T, S = logits.shape[-2:]
        if attn_mask is None:
            attn_mask = torch.ones(T, S, dtype=torch.bool, device=q.device).tril(S - T)
        logits = logits.masked_fill(~attn_mask, float("-inf"))
        self.max_logits = logits.amax(dim=(0, 2, 3)).detach()


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


def expert_weights(n_experts: int, dim: int, expert_dim: int) -> tuple[nn.Parameter, nn.Parameter, nn.Parameter]:
    """Stacked gate, up [E, dim, expert_dim] and down [E, expert_dim, dim] weights, each drawn like
    the nn.Linear it stands for (uniform within 1/sqrt(fan_in)), as the dense SwiGLU and the shared
    expert are. A unit-variance draw (randn / sqrt(fan_in)) is sqrt(3) larger per projection, so
    the routed output started ~5x (x routed_scaling) larger than the dense layers' and drowned the
    attention's residual signal: the tiny model then needed 6x the steps to learn to copy 16 tokens
    back and never copied 128 back (benchmarks/bench_copy.py, benchmarks/README.md 2026-12-06)."""

    def draw(fan_in: int, *shape: int) -> nn.Parameter:
        bound = 1.0 / math.sqrt(fan_in)
        return nn.Parameter(torch.empty(*shape).uniform_(-bound, bound))

    return (draw(dim, n_experts, dim, expert_dim), draw(dim, n_experts, dim, expert_dim),
            draw(expert_dim, n_experts, expert_dim, dim))


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
        self.w_gate, self.w_up, self.w_down = expert_weights(cfg.n_experts, cfg.dim, cfg.expert_dim)
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
    def __init__(self, cfg: ModelConfig, layer_idx: int):
        super().__init__()
        self.attn_norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.attn = MLA(cfg, layer_idx)
        self.ffn_norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.ffn = MoE(cfg) if layer_idx >= cfg.n_dense_layers else SwiGLU(cfg.dim, cfg.ffn_dim)

    def forward(self, x, cos, sin, attn_mask=None, cache=None):
        x = x + self.attn(self.attn_norm(x), cos, sin, attn_mask, cache)
        return x + self.ffn(self.ffn_norm(x))


class Backbone(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.embed = nn.Embedding(cfg.vocab_size, cfg.dim)
        self.layers = nn.ModuleList(Block(cfg, i) for i in range(cfg.n_layers))
        self.norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.head = nn.Linear(cfg.dim, cfg.vocab_size, bias=False)  # untied, as in K2
        self._rope_cache: dict[tuple[int, torch.device], tuple[torch.Tensor, torch.Tensor]] = {}

    def moe_layers(self) -> list[MoE]:
        return [layer.ffn for layer in self.layers if isinstance(layer.ffn, MoE)]

    def set_yarn(self, factor: float) -> None:
        """Switch the YaRN factor (1 = plain RoPE), e.g. for a long-context mid-training stage.

        Writes cfg.yarn_factor (the config is shared with the model, so checkpoints record it and
        the softmax scale follows) and drops the cached rope tables."""
        if not factor >= 1:  # also rejects NaN
            raise ValueError(f"yarn factor must be >= 1, got {factor}")
        self.cfg.yarn_factor = float(factor)
        self._rope_cache.clear()

    def rope(self, seq_len: int, device) -> tuple[torch.Tensor, torch.Tensor]:
        """Cached fp32 cos/sin for positions < seq_len; lengths round up to a power of two so that
        decoding step by step reuses one table."""
        n = 1 << max(seq_len - 1, 0).bit_length()
        key = (n, torch.device(device))
        if key not in self._rope_cache:
            self._rope_cache[key] = rope_tables(self.cfg, n, device)
        return self._rope_cache[key]

    def forward_hidden(self, h: torch.Tensor, attn_mask=None, position_ids=None,
                       cache: LatentKVCache | None = None) -> torch.Tensor:
        """Final-normed hidden states [B, T, dim] for input embeddings h [B, T, dim].

        attn_mask: None = causal, else bool [B, 1, T, S] (True = may attend; S counts cached tokens).
        position_ids: None = 0..T-1 after the cached tokens, else [B, T] (left-padded batches).
        cache: a LatentKVCache to read and extend (generation)."""
        B, T, _ = h.shape
        past = cache.length if cache is not None else 0
        cos, sin = self.rope(past + T, h.device)
        if position_ids is None:
            cos, sin = cos[past:past + T][None], sin[past:past + T][None]
        else:
            cos, sin = cos[position_ids], sin[position_ids]
        cos, sin = cos.to(h.dtype), sin.to(h.dtype)
        if attn_mask is None and past and T > 1:  # causal over cached + new tokens
            attn_mask = torch.ones(T, past + T, dtype=torch.bool, device=h.device).tril(past)[None, None]
        for layer in self.layers:
            h = layer(h, cos, sin, attn_mask, cache)
        if cache is not None:
            cache.advance(T)
        return self.norm(h)

    def forward_embeddings(self, h: torch.Tensor, attn_mask=None, position_ids=None,
                           cache: LatentKVCache | None = None) -> torch.Tensor:
        """Logits [B, T, vocab]; arguments as in forward_hidden."""
        return self.head(self.forward_hidden(h, attn_mask, position_ids, cache))
