"""Decoding cache for MLA: the latents, not the per-head keys and values.

Per layer and token MLA needs only the normed latent c_KV (kv_lora_rank) and the roped key k_rope
shared by all heads (qk_rope_head_dim): 512 + 64 = 576 values for K2 instead of 64 x (192 + 128) =
20480 for full K/V (RECIPE.md §1.1). Both sit side by side in one preallocated buffer per layer, so
a decoding step writes one row and attention reads [c_KV; k_rope] as its key without a copy.
"""

from __future__ import annotations

import torch

from model.config import ModelConfig


class LatentKVCache:
    def __init__(self, n_layers: int, batch: int, max_len: int, kv_lora_rank: int, rope_dim: int,
                 device=None, dtype: torch.dtype = torch.float32):
        self.kv_lora_rank, self.max_len = kv_lora_rank, max_len
        self.buffers = [torch.zeros(batch, max_len, kv_lora_rank + rope_dim, device=device, dtype=dtype)
                        for _ in range(n_layers)]
        self.length = 0  # tokens cached so far (the same in every layer once a forward is done)

    @classmethod
    def for_model(cls, cfg: ModelConfig, batch: int, max_len: int, device=None,
                  dtype: torch.dtype = torch.float32) -> "LatentKVCache":
        return cls(cfg.n_layers, batch, max_len, cfg.kv_lora_rank, cfg.qk_rope_head_dim, device, dtype)

    def update(self, layer: int, latent: torch.Tensor) -> torch.Tensor:
        """Store the new tokens' [c_KV; k_rope] ([B, T, kv_lora_rank + rope]) after the cached ones
        and return all of them, [B, length + T, ...]. `length` moves on in advance(), once per
        forward, because every layer writes at the same offset."""
        end = self.length + latent.shape[1]
        if end > self.max_len:
            raise ValueError(f"cache holds {self.max_len} tokens, {end} requested")
        buf = self.buffers[layer]
        buf[:, self.length:end] = latent
        return buf[:, :end]

    def advance(self, n: int) -> None:
        self.length += n

    def c_kv(self, layer: int) -> torch.Tensor:
        """Cached normed latents [B, length, kv_lora_rank]."""
        return self.buffers[layer][:, : self.length, : self.kv_lora_rank]

    def k_rope(self, layer: int) -> torch.Tensor:
        """Cached roped shared keys [B, length, rope_dim]."""
        return self.buffers[layer][:, : self.length, self.kv_lora_rank:]
