"""MoonViT-3D (first version): one encoder for images and 4-frame video chunks, plus the projector.

Items of different sizes are packed into one sequence (NaViT); a block-diagonal mask keeps
attention inside each item. A chunk's frames are averaged after the encoder (temporal pooling),
then 2x2 patches are merged and projected to the LLM width, so an image of H x W and a chunk of
4 such frames both become (H/28)(W/28) tokens.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from model.config import ModelConfig, VisionConfig


def vision_token_count(height: int, width: int, patch: int = 14, merge: int = 2) -> int:
    unit = patch * merge
    if height % unit or width % unit:
        raise ValueError(f"image size {height}x{width} is not a multiple of {unit}")
    return (height // unit) * (width // unit)


def sincos_time_embedding(n_frames: int, dim: int) -> torch.Tensor:
    pos = torch.arange(n_frames).float()[:, None]
    div = torch.exp(torch.arange(0, dim, 2).float() * (-math.log(10000.0) / dim))
    emb = torch.zeros(n_frames, dim)
    emb[:, 0::2], emb[:, 1::2] = torch.sin(pos * div), torch.cos(pos * div)
    return emb


class VisionBlock(nn.Module):
    def __init__(self, cfg: VisionConfig):
        super().__init__()
        self.n_heads = cfg.n_heads
        self.norm0 = nn.LayerNorm(cfg.dim)
        self.wqkv = nn.Linear(cfg.dim, 3 * cfg.dim)
        self.wo = nn.Linear(cfg.dim, cfg.dim)
        self.norm1 = nn.LayerNorm(cfg.dim)
        self.mlp = nn.Sequential(nn.Linear(cfg.dim, cfg.mlp_dim), nn.GELU(approximate="tanh"), nn.Linear(cfg.mlp_dim, cfg.dim))

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        N, D = x.shape
        q, k, v = self.wqkv(self.norm0(x)).view(N, 3, self.n_heads, D // self.n_heads).permute(1, 2, 0, 3)
        attn = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        x = x + self.wo(attn.transpose(0, 1).reshape(N, D))
        return x + self.mlp(self.norm1(x))


class VisionEncoder(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        v = cfg.vision
        self.cfg = v
        self.patch_embed = nn.Linear(3 * v.patch_size**2, v.dim)
        self.pos_table = nn.Parameter(torch.randn(v.pos_grid, v.pos_grid, v.dim) * 0.02)
        self.register_buffer("time_table", sincos_time_embedding(v.max_frames, v.dim), persistent=False)
        self.blocks = nn.ModuleList(VisionBlock(v) for _ in range(v.n_layers))
        self.final_norm = nn.LayerNorm(v.dim)
        merged = v.dim * v.merge_size**2
        self.projector = nn.Sequential(nn.LayerNorm(merged), nn.Linear(merged, merged), nn.GELU(), nn.Linear(merged, cfg.dim))

    def _patchify(self, frames: torch.Tensor) -> torch.Tensor:
        """uint8 [T,H,W,3] -> float patches [T, h, w, 3*p*p] in [-1, 1]."""
        p = self.cfg.patch_size
        T, H, W, C = frames.shape
        x = frames.float().div(127.5).sub(1.0)
        x = x.view(T, H // p, p, W // p, p, C).permute(0, 1, 3, 2, 4, 5)
        return x.reshape(T, H // p, W // p, p * p * C)

    def _positions(self, h: int, w: int) -> torch.Tensor:
        table = self.pos_table.permute(2, 0, 1)[None]  # [1, D, G, G]
        if (h, w) != table.shape[-2:]:
            table = F.interpolate(table, size=(h, w), mode="bicubic", align_corners=False)
        return table[0].permute(1, 2, 0)  # [h, w, D]

    def forward(self, items: list[torch.Tensor]) -> torch.Tensor:
        """items: uint8 [H,W,3] images or [T,H,W,3] chunks -> [sum of tokens, llm_dim]."""
        device = self.pos_table.device
        seqs, shapes = [], []
        for item in items:
            frames = item[None] if item.dim() == 3 else item
            frames = frames.to(device)
            T = frames.shape[0]
            if T > self.cfg.max_frames:
                raise ValueError(f"a video chunk holds at most {self.cfg.max_frames} frames, got {T}")
            x = self.patch_embed(self._patchify(frames))  # [T,h,w,D]
            _, h, w, D = x.shape
            x = x + self._positions(h, w)[None] + self.time_table[:T, None, None, :]
            seqs.append(x.reshape(-1, D))
            shapes.append((T, h, w))
        x = torch.cat(seqs)
        lengths = torch.tensor([s.shape[0] for s in seqs], device=device)
        item_id = torch.repeat_interleave(torch.arange(len(seqs), device=device), lengths)
        mask = item_id[:, None] == item_id[None, :]  # attention never crosses items
        for block in self.blocks:
            x = block(x, mask)
        x = self.final_norm(x)
        return torch.cat([self._merge(chunk, shape) for chunk, shape in zip(x.split(lengths.tolist()), shapes)])

    def _merge(self, x: torch.Tensor, shape: tuple[int, int, int]) -> torch.Tensor:
        T, h, w = shape
        m = self.cfg.merge_size
        x = x.view(T, h, w, -1).mean(0)  # temporal pooling over the chunk's frames
        x = x.view(h // m, m, w // m, m, -1).permute(0, 2, 1, 3, 4).reshape((h // m) * (w // m), -1)
        return self.projector(x)
