"""Model configuration and named presets.

`tiny` runs on a 2-core CPU in seconds per step; `small` fits one GPU; `k25` is the released
Kimi K2.5 shape (RECIPE.md §1.1 and §2.1), meant for planning and meta-device checks.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field


@dataclass
class VisionConfig:
    patch_size: int = 14
    merge_size: int = 2  # 2x2 patch merger before the projector
    dim: int = 64
    n_layers: int = 2
    n_heads: int = 4
    mlp_dim: int = 128
    pos_grid: int = 16  # learnable position table is pos_grid x pos_grid, interpolated per image
    max_frames: int = 4  # video chunks hold at most 4 frames
    rope_theta: float = 10_000.0  # 2-D RoPE base
    norm_eps: float = 1e-5

    def __post_init__(self) -> None:
        if self.dim % self.n_heads:
            raise ValueError(f"vision dim {self.dim} is not divisible by n_heads {self.n_heads}")
        if (self.dim // self.n_heads) % 4:
            raise ValueError("vision head_dim must be a multiple of 4 (2-D RoPE uses x/y pairs)")


@dataclass
class ModelConfig:
    vocab_size: int = 4096
    dim: int = 128
    n_layers: int = 4
    n_heads: int = 4
    # MLA (DeepSeek-V3 form): low-rank q and kv, decoupled rope key shared by all heads
    q_lora_rank: int = 64
    kv_lora_rank: int = 32
    qk_nope_head_dim: int = 16
    qk_rope_head_dim: int = 8
    v_head_dim: int = 16
    # FFN / MoE
    n_dense_layers: int = 1  # first k layers are dense SwiGLU, the rest MoE
    ffn_dim: int = 256
    n_experts: int = 8
    top_k: int = 2
    n_shared_experts: int = 1
    expert_dim: int = 64
    routed_scaling: float = 2.827
    # positions: RoPE with YaRN context extension (factor 1 = off)
    rope_theta: float = 50_000.0
    max_seq_len: int = 256
    original_max_position: int = 128  # the pre-training context YaRN extends from
    yarn_factor: float = 1.0
    yarn_beta_fast: float = 32.0
    yarn_beta_slow: float = 1.0
    yarn_mscale: float = 1.0
    yarn_mscale_all_dim: float = 1.0
    norm_eps: float = 1e-5
    vision: VisionConfig = field(default_factory=VisionConfig)

    def __post_init__(self) -> None:
        if not 0 < self.top_k <= self.n_experts:
            raise ValueError(f"top_k {self.top_k} must be in 1..n_experts ({self.n_experts})")
        if self.n_dense_layers > self.n_layers:
            raise ValueError("n_dense_layers exceeds n_layers")
        if self.qk_rope_head_dim % 2:
            raise ValueError("qk_rope_head_dim must be even")
        if self.yarn_factor < 1:
            raise ValueError(f"yarn_factor must be >= 1, got {self.yarn_factor}")

    @property
    def qk_head_dim(self) -> int:
        return self.qk_nope_head_dim + self.qk_rope_head_dim

    def softmax_scale(self) -> float:
        """qk_head_dim^-1/2, times mscale^2 under YaRN (DeepSeek-V3 behaviour, RECIPE.md §1.2)."""
        scale = self.qk_head_dim ** -0.5
        if self.yarn_factor > 1:
            m = 0.1 * self.yarn_mscale_all_dim * math.log(self.yarn_factor) + 1.0
            scale *= m * m
        return scale

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "ModelConfig":
        d = dict(d)
        vision = VisionConfig(**d.pop("vision", {}))
        return cls(**d, vision=vision)


PRESETS: dict[str, ModelConfig] = {
    "tiny": ModelConfig(),
    "small": ModelConfig(
        vocab_size=32768, dim=1024, n_layers=16, n_heads=16, q_lora_rank=384, kv_lora_rank=128,
        qk_nope_head_dim=64, qk_rope_head_dim=32, v_head_dim=64, n_dense_layers=1, ffn_dim=4096,
        n_experts=32, top_k=4, expert_dim=512, max_seq_len=4096, original_max_position=4096,
        vision=VisionConfig(dim=512, n_layers=12, n_heads=8, mlp_dim=2048, pos_grid=64),
    ),
    # The released shape (RECIPE.md §1.1, §2.1): 61 layers (1 dense), 384 experts top-8 + 1 shared,
    # MLA ranks 1536/512, heads 64 with 128 nope + 64 rope dims, YaRN x64 from 4096 to 262144.
    "k25": ModelConfig(
        vocab_size=163840, dim=7168, n_layers=61, n_heads=64, q_lora_rank=1536, kv_lora_rank=512,
        qk_nope_head_dim=128, qk_rope_head_dim=64, v_head_dim=128, n_dense_layers=1, ffn_dim=18432,
        n_experts=384, top_k=8, n_shared_experts=1, expert_dim=2048, max_seq_len=262144,
        original_max_position=4096, yarn_factor=64.0,
        vision=VisionConfig(dim=1152, n_layers=27, n_heads=16, mlp_dim=4304, pos_grid=64),
    ),
}


def model_preset(name: str, **overrides) -> ModelConfig:
    if name not in PRESETS:
        raise ValueError(f"unknown model preset {name!r}; known: {sorted(PRESETS)}")
    return dataclasses.replace(PRESETS[name], **overrides)
