"""MoonViT-3D: one encoder for images and 4-frame video chunks, plus the PatchMerger projector
(RECIPE.md §2.2), and the navit resize rule of the preprocessor (RECIPE.md §2.3).

Items of different sizes are packed into one [N, dim] sequence (NaViT) with no padding: every
linear layer runs on the packed sequence, and only attention is split by item (variable-length
attention), so attention never crosses items and no N x N mask is ever built.

Attention backends, chosen per call:
- CUDA with `flash_attn` installed and a half-precision input: `flash_attn_varlen_func` over
  `cu_seqlens`, as in the released inference code.
- otherwise: one `scaled_dot_product_attention` call per item. Measured on a 2-core CPU (15
  items, 16..768 patches, 4 heads of 64, attention forward+backward): per-item SDPA 48 ms,
  nested jagged tensors + SDPA 1070 ms, one dense block-diagonal mask 1023 ms, so per-item SDPA
  it is. Items are passed 4-D ([1, heads, L, head_dim]); 3-D inputs take the math path, ~2x slower.

Parameter names follow the release where it costs nothing (`blocks.{i}.norm0/wqkv/wo/norm1/mlp.fc0
/mlp.fc1`, `final_layernorm`, `projector.pre_norm/proj.0/proj.2`); `patch_embed` is the Conv2d itself
(release: `patch_embed.proj`) and `pos_emb` is the learnable table (release: `patch_embed.pos_emb.weight`).
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from model.config import ModelConfig, VisionConfig

try:  # GPU-only fast path; absent on CPU machines
    from flash_attn import flash_attn_varlen_func
except ImportError:
    flash_attn_varlen_func = None


# ---------------------------------------------------------------------------------------------
# Preprocessing arithmetic (pure python; the data pipeline calls these without torch)


def vision_token_count(height: int, width: int, patch: int = 14, merge: int = 2) -> int:
    """LLM tokens of an image or a video chunk whose (padded) frames are height x width."""
    unit = patch * merge
    if height % unit or width % unit:
        raise ValueError(f"image size {height}x{width} is not a multiple of {unit}")
    return (height // unit) * (width // unit)


def navit_resize_size(width: int, height: int, patch_limit: int, patch: int = 14,
                      side_limit: int = 512, merge: int = 2) -> tuple[int, int, int, int]:
    """RECIPE.md §2.3: the size to resize to and the zero-padded size the encoder sees.

    The scale is the largest one (at most 1: images are only ever downscaled) that keeps the patch
    count within `patch_limit` and each side within `side_limit` patches. The resized image is then
    zero-padded right and bottom to multiples of patch * merge. Returns (new_w, new_h, padded_w,
    padded_h). Use patch_limit=16384 for images and 4096 for video frames.
    """
    if width < 1 or height < 1:
        raise ValueError(f"image size must be positive, got {width}x{height}")
    patches = max(1, width // patch) * max(1, height // patch)  # max(1, .): images under one patch
    scale = min(1.0, math.sqrt(patch_limit / patches), side_limit * patch / width, side_limit * patch / height)
    new_w, new_h = max(1, int(width * scale)), max(1, int(height * scale))
    unit = patch * merge
    return new_w, new_h, -(-new_w // unit) * unit, -(-new_h // unit) * unit


# ---------------------------------------------------------------------------------------------
# Position encodings


def sincos_time_embedding(n_frames: int, dim: int) -> torch.Tensor:
    """Fixed 1-D sincos table [n_frames, dim]: first half sin, second half cos, w_k = 10000^(-2k/dim)."""
    pos = torch.arange(n_frames, dtype=torch.float32)[:, None]
    omega = torch.exp(torch.arange(dim // 2, dtype=torch.float32) * (-2.0 * math.log(10000.0) / dim))
    return torch.cat([torch.sin(pos * omega), torch.cos(pos * omega)], dim=1)


def rope_2d_angles(h: int, w: int, head_dim: int, theta: float, device=None) -> torch.Tensor:
    """Rotation angles [h*w, head_dim/2] of the 2-D RoPE, row-major over the grid.

    Frequency k = theta^(-4k/head_dim) for k < head_dim/4 is used twice: complex pair 2k rotates by
    x*freq_k (x = column), pair 2k+1 by y*freq_k (y = row), i.e. [x0, y0, x1, y1, ...].
    """
    freqs = theta ** (-torch.arange(0, head_dim, 4, device=device, dtype=torch.float64) / head_dim)
    ys, xs = torch.meshgrid(torch.arange(h, device=device, dtype=torch.float64),
                            torch.arange(w, device=device, dtype=torch.float64), indexing="ij")
    x_ang = xs.reshape(-1, 1) * freqs  # [h*w, head_dim/4]
    y_ang = ys.reshape(-1, 1) * freqs
    return torch.stack([x_ang, y_ang], dim=-1).reshape(h * w, head_dim // 2).float()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate complex pairs made of adjacent channels (2i, 2i+1), i.e. `view_as_complex(x) * e^{i a}`,
    in float32. x: [N, heads, head_dim]; cos, sin: [N, head_dim/2]."""
    xf = x.float().unflatten(-1, (-1, 2))
    re, im = xf[..., 0], xf[..., 1]
    cos, sin = cos[:, None], sin[:, None]  # broadcast over heads
    out = torch.stack([re * cos - im * sin, re * sin + im * cos], dim=-1)
    return out.flatten(-2).type_as(x)


# ---------------------------------------------------------------------------------------------
# Variable-length attention


def varlen_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, lengths: list[int],
                     cu_seqlens: torch.Tensor, scale: float) -> torch.Tensor:
    """Attention within each item of a packed sequence. q, k, v: [N, heads, head_dim] -> same."""
    if flash_attn_varlen_func is not None and q.is_cuda and q.dtype in (torch.float16, torch.bfloat16):
        max_len = max(lengths)
        return flash_attn_varlen_func(q, k, v, cu_seqlens, cu_seqlens, max_len, max_len, softmax_scale=scale)
    outs = []
    for qi, ki, vi in zip(q.split(lengths), k.split(lengths), v.split(lengths)):
        # Each item is one dense attention without a mask, as [1, heads, L, head_dim]: the batch dim
        # matters, CPU SDPA only takes its flash kernel for 4-D inputs (3-D falls back to ~2x slower math).
        qi, ki, vi = (t.transpose(0, 1)[None] for t in (qi, ki, vi))
        outs.append(F.scaled_dot_product_attention(qi, ki, vi, scale=scale)[0].transpose(0, 1))
    return torch.cat(outs)


# ---------------------------------------------------------------------------------------------
# Modules


class VisionMLP(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc0 = nn.Linear(dim, hidden)
        self.fc1 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc1(F.gelu(self.fc0(x), approximate="tanh"))


class VisionBlock(nn.Module):
    """Pre-LN block: x + wo(attn(rope(qkv(norm0 x)))), then x + mlp(norm1 x); all with biases."""

    def __init__(self, cfg: VisionConfig):
        super().__init__()
        self.n_heads = cfg.n_heads
        self.head_dim = cfg.dim // cfg.n_heads
        self.norm0 = nn.LayerNorm(cfg.dim, eps=cfg.norm_eps)
        self.wqkv = nn.Linear(cfg.dim, 3 * cfg.dim)
        self.wo = nn.Linear(cfg.dim, cfg.dim)
        self.norm1 = nn.LayerNorm(cfg.dim, eps=cfg.norm_eps)
        self.mlp = VisionMLP(cfg.dim, cfg.mlp_dim)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, lengths: list[int],
                cu_seqlens: torch.Tensor) -> torch.Tensor:
        N, D = x.shape
        # wqkv output is laid out [3, heads, head_dim], as in the released fused weight.
        q, k, v = self.wqkv(self.norm0(x)).view(N, 3, self.n_heads, self.head_dim).unbind(1)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        attn = varlen_attention(q, k, v, lengths, cu_seqlens, self.head_dim ** -0.5)
        x = x + self.wo(attn.reshape(N, D))
        return x + self.mlp(self.norm1(x))


class PatchMerger(nn.Module):
    """Projector: LayerNorm on each of the 4 sub-patches of a 2x2 group, concatenate to 4*dim,
    Linear(4dim, 4dim) -> GELU (exact) -> Linear(4dim, llm_dim)."""

    def __init__(self, dim: int, merge_size: int, llm_dim: int, eps: float):
        super().__init__()
        merged = dim * merge_size**2
        self.pre_norm = nn.LayerNorm(dim, eps=eps)
        self.proj = nn.Sequential(nn.Linear(merged, merged), nn.GELU(), nn.Linear(merged, llm_dim))

    def forward(self, groups: torch.Tensor) -> torch.Tensor:
        """groups: [M, merge^2, dim] -> [M, llm_dim]."""
        return self.proj(self.pre_norm(groups).flatten(1))


class VisionEncoder(nn.Module):
    """MoonViT-3D + projector. `forward(items)` -> [sum of tokens, llm_dim] in item order."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        v = cfg.vision
        self.cfg = v
        self.head_dim = v.dim // v.n_heads
        # Conv2d parameters (kernel = stride = patch) so released weights load; forward runs it as
        # one linear over all packed patches, which is the same arithmetic.
        self.patch_embed = nn.Conv2d(3, v.dim, kernel_size=v.patch_size, stride=v.patch_size)
        self.pos_emb = nn.Parameter(torch.randn(v.pos_grid, v.pos_grid, v.dim) * 0.02)
        self.register_buffer("time_emb", sincos_time_embedding(v.max_frames, v.dim), persistent=False)
        self.blocks = nn.ModuleList(VisionBlock(v) for _ in range(v.n_layers))
        self.final_layernorm = nn.LayerNorm(v.dim, eps=v.norm_eps)
        self.projector = PatchMerger(v.dim, v.merge_size, cfg.dim, v.norm_eps)
        self._rope_cache: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}  # device -> (cos, sin) [H, W, head_dim/2]

    # -- input side

    def _frames(self, item: torch.Tensor) -> torch.Tensor:
        """Validate an item and return it as uint8 frames [T, H, W, 3]."""
        frames = item[None] if item.dim() == 3 else item
        T, H, W, C = frames.shape
        unit = self.cfg.patch_size * self.cfg.merge_size
        if C != 3 or H % unit or W % unit:
            raise ValueError(f"vision items are [T,]H,W,3 with H, W multiples of {unit}; got {tuple(item.shape)}")
        if not 1 <= T <= self.cfg.max_frames:
            raise ValueError(f"a video chunk holds at most {self.cfg.max_frames} frames, got {T}")
        return frames

    def _patchify(self, frames: torch.Tensor) -> torch.Tensor:
        """uint8 [T,H,W,3] -> [T*h*w, 3*p*p] in [-1, 1]; frame-major, row-major, channels laid out
        (c, py, px) like the Conv2d weight [dim, 3, p, p]."""
        p = self.cfg.patch_size
        T, H, W, C = frames.shape
        x = frames.to(self.patch_embed.weight.device, self.patch_embed.weight.dtype) / 127.5 - 1.0  # mean = std = 0.5
        x = x.view(T, H // p, p, W // p, p, C).permute(0, 1, 3, 5, 2, 4)
        return x.reshape(T * (H // p) * (W // p), C * p * p)

    def spatial_pos(self, h: int, w: int) -> torch.Tensor:
        """The learnable table, bicubically resized to [h, w, dim] unless it already matches."""
        if (h, w) == tuple(self.pos_emb.shape[:2]):
            return self.pos_emb
        table = self.pos_emb.permute(2, 0, 1)[None]  # [1, dim, G, G]
        return F.interpolate(table, size=(h, w), mode="bicubic", align_corners=False)[0].permute(1, 2, 0)

    def _positions(self, t: int, h: int, w: int) -> torch.Tensor:
        """divided_fixed: the spatial table on every frame, plus the sincos frame time only for t > 1."""
        pos = self.spatial_pos(h, w).reshape(1, h * w, -1)
        if t > 1:
            pos = pos + self.time_emb[:t, None, :].to(pos.dtype)
        return pos.expand(t, h * w, -1).reshape(t * h * w, -1)

    def _rope(self, h: int, w: int, device) -> tuple[torch.Tensor, torch.Tensor]:
        """cos, sin [h*w, head_dim/2] for an h x w grid.

        A cell's angles do not depend on the grid size, so one table for the largest grid seen so
        far serves every smaller grid by slicing (the release precomputes 512 x 512 the same way).
        One entry per grid size instead would grow with every new image size during training.
        """
        key = str(device)
        table = self._rope_cache.get(key)
        if table is None or table[0].shape[0] < h or table[0].shape[1] < w:
            H, W = max(h, table[0].shape[0] if table else 0), max(w, table[0].shape[1] if table else 0)
            ang = rope_2d_angles(H, W, self.head_dim, self.cfg.rope_theta, device).view(H, W, -1)
            table = self._rope_cache[key] = (ang.cos(), ang.sin())
        cos, sin = table
        return cos[:h, :w].reshape(h * w, -1), sin[:h, :w].reshape(h * w, -1)

    # -- forward

    def forward(self, items: list[torch.Tensor]) -> torch.Tensor:
        """items: uint8 [H,W,3] images or [T,H,W,3] chunks -> [sum of tokens, llm_dim]."""
        p = self.cfg.patch_size
        device = self.pos_emb.device
        frames = [self._frames(item) for item in items]
        grids = [(f.shape[0], f.shape[1] // p, f.shape[2] // p) for f in frames]  # (t, h, w)
        lengths = [t * h * w for t, h, w in grids]

        # Patch embedding as one matmul over all patches of all items.
        patches = torch.cat([self._patchify(f) for f in frames])
        x = F.linear(patches, self.patch_embed.weight.flatten(1), self.patch_embed.bias)
        x = x + torch.cat([self._positions(*g) for g in grids])

        # 2-D RoPE: the grid's table repeated over the frames (no temporal RoPE).
        ropes = [self._rope(h, w, device) for _, h, w in grids]
        cos = torch.cat([c.repeat(t, 1) for (t, _, _), (c, _) in zip(grids, ropes)])
        sin = torch.cat([s.repeat(t, 1) for (t, _, _), (_, s) in zip(grids, ropes)])
        cu_seqlens = torch.tensor([0, *lengths], device=device).cumsum(0).to(torch.int32)

        for block in self.blocks:
            x = block(x, cos, sin, lengths, cu_seqlens)
        x = self.final_layernorm(x)

        groups = torch.cat([self._tpool_groups(seq, g) for seq, g in zip(x.split(lengths), grids)])
        return self.projector(groups)

    def _tpool_groups(self, x: torch.Tensor, grid: tuple[int, int, int]) -> torch.Tensor:
        """sd2_tpool: [t*h*w, dim] -> mean over frames -> 2x2 groups [(h/2)(w/2), 4, dim]."""
        t, h, w = grid
        m = self.cfg.merge_size
        x = x.view(t, h // m, m, w // m, m, -1).mean(0)  # temporal pooling inside the chunk
        return x.permute(0, 2, 1, 3, 4).reshape((h // m) * (w // m), m * m, -1)
