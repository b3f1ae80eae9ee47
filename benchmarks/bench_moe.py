"""MoE layer: our grouped-GEMM dispatch vs a naive per-expert loop, forward + backward, same run.

The baseline is the common reference form (as in the HF DeepSeek-V3 code): one module per expert,
and for each expert a boolean mask of the tokens routed to it, a gather, the expert MLP and a
weighted scatter-add. Both layers share routing weights and expert weights and are checked to give
the same output before timing.

    python -m benchmarks.bench_moe [--dim 512 --experts 64 --top-k 8 --expert-dim 256 --tokens 4096]
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

from model.backbone import MoE
from model.config import ModelConfig


class NaiveMoE(nn.Module):
    def __init__(self, ours: MoE):
        super().__init__()
        self.ours_route = ours.route  # identical routing (sigmoid, bias for selection, renormalised gates)
        self.experts = nn.ModuleList()
        for e in range(ours.n_experts):
            gate = nn.Linear(ours.w_gate.shape[1], ours.w_gate.shape[2], bias=False)
            up = nn.Linear(ours.w_up.shape[1], ours.w_up.shape[2], bias=False)
            down = nn.Linear(ours.w_down.shape[1], ours.w_down.shape[2], bias=False)
            with torch.no_grad():
                gate.weight.copy_(ours.w_gate[e].T)
                up.weight.copy_(ours.w_up[e].T)
                down.weight.copy_(ours.w_down[e].T)
            self.experts.append(nn.ModuleDict({"gate": gate, "up": up, "down": down}))
        self.shared = ours.shared

    def forward(self, x):
        flat = x.reshape(-1, x.shape[-1])
        idx, gates = self.ours_route(flat)
        out = torch.zeros_like(flat)
        for e, expert in enumerate(self.experts):
            hit = idx == e  # [N, k]
            rows = hit.any(-1).nonzero().squeeze(-1)
            if rows.numel() == 0:
                continue
            w = (gates * hit).sum(-1)[rows].unsqueeze(-1)
            h = flat[rows]
            y = expert["down"](F.silu(expert["gate"](h)) * expert["up"](h))
            out.index_add_(0, rows, y * w)
        return (out + self.shared(flat)).reshape(x.shape)


def time_fwd_bwd(layer: nn.Module, x: torch.Tensor, repeats: int) -> float:
    grad = torch.randn_like(x)
    layer(x).backward(grad)  # warm-up
    start = time.perf_counter()
    for _ in range(repeats):
        layer(x).backward(grad)
    return (time.perf_counter() - start) / repeats


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dim", type=int, default=512)
    p.add_argument("--experts", type=int, default=64)
    p.add_argument("--top-k", type=int, default=8)
    p.add_argument("--expert-dim", type=int, default=256)
    p.add_argument("--tokens", type=int, default=4096)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--quick", action="store_true", help="2048 tokens, 2 repeats")
    a = p.parse_args()
    if a.quick:
        a.tokens, a.repeats = min(a.tokens, 2048), min(a.repeats, 2)
    torch.manual_seed(0)
    cfg = ModelConfig(dim=a.dim, n_experts=a.experts, top_k=a.top_k, expert_dim=a.expert_dim)
    ours = MoE(cfg)
    naive = NaiveMoE(ours)
    x = torch.randn(a.tokens, a.dim, requires_grad=True)
    with torch.no_grad():
        diff = (ours(x) - naive(x)).abs().max().item()
    assert diff < 1e-3, f"layers disagree by {diff}"
    t_ours = time_fwd_bwd(ours, x, a.repeats)
    t_naive = time_fwd_bwd(naive, x, a.repeats)
    print(f"moe config: tokens={a.tokens} dim={a.dim} experts={a.experts} top_k={a.top_k} "
          f"expert_dim={a.expert_dim} threads={torch.get_num_threads()} max_abs_diff={diff:.2e}")
    print(f"moe fwd+bwd: ours={t_ours * 1e3:.1f} ms naive_loop={t_naive * 1e3:.1f} ms speedup={t_naive / t_ours:.2f}x")
    print(f"RESULT moe_speedup={t_naive / t_ours:.2f} ours_ms={t_ours * 1e3:.1f} naive_ms={t_naive * 1e3:.1f} "
          f"max_abs_diff={diff:.2e}")


if __name__ == "__main__":
    main()
