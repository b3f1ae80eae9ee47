"""MuonClip (RECIPE.md §1.5, Kimi K2 Algorithm 1): Muon + decoupled weight decay + AdamW-matched
update RMS for matrices, AdamW for everything else, and per-head QK-Clip on MLA after each step.

Usage (one training step)::

    groups = muon_param_groups(model, lr=2e-4, weight_decay=0.1)
    opt = MuonClip(groups)
    enable_max_logit_recording(model)            # MLA writes per-head max logits in forward
    loss = model.loss(tokens, targets); loss.backward()
    opt.step(); opt.zero_grad()
    stats = qk_clip(model, tau=100.0)            # reads the logits recorded by that forward

Muon (Moonlight `toy_train.py` form): buf = mu*buf + g; g' = g + mu*buf (Nesterov);
O = NewtonSchulz5(g') * 0.2 * sqrt(max(n, m)); W <- W*(1 - lr*wd) - lr*O. Stacked MoE expert
weights [E, in, out] are orthogonalised per expert (one batched Newton-Schulz).

QK-Clip (per head, MLA layout of RECIPE.md §1.2): for heads with S_max^h > tau, gamma = tau/S_max^h;
q_b_proj nope rows and kv_b_proj k-nope rows *= sqrt(gamma), q_b_proj rope rows *= gamma. The
shared rope key (kv_a_proj_with_mqa) and the value rows are never touched. Since q_nope.k_nope and
q_rope.k_rope both scale by gamma, the clipped head's logits on the same batch scale by exactly gamma.

With data parallelism the recorded max logits must be all-reduced (MAX) across ranks before
`qk_clip`, and across micro-batches with `merge_max_logits` under gradient accumulation.
"""

from __future__ import annotations

import math
from typing import Iterable

import torch
import torch.nn as nn

from model.backbone import MLA, Backbone, MoE

NS_COEFFS = (3.4445, -4.7750, 2.0315)
NS_STEPS = 5
RMS_MATCH = 0.2  # Muon update RMS matched to AdamW's typical ~0.2-0.4 (K2 / Moonlight)


# ----------------------------------------------------------------------------------------------
# Newton-Schulz orthogonalisation


def newton_schulz(g: torch.Tensor, steps: int = NS_STEPS, eps: float = 1e-7,
                  dtype: torch.dtype = torch.bfloat16) -> torch.Tensor:
    """Approximate U V^T of g = U S V^T with the quintic iteration (a, b, c) = (3.4445, -4.7750,
    2.0315). g: [..., n, m]; leading dims are a batch of independent matrices (e.g. experts), each
    normalised by its own Frobenius norm. Runs in `dtype` (bf16 as in Moonlight, or fp32); returns
    g's dtype. Output singular values land roughly in [0.7, 1.2], not exactly 1 (by design)."""
    if g.ndim < 2:
        raise ValueError(f"newton_schulz needs a matrix, got shape {tuple(g.shape)}")
    a, b, c = NS_COEFFS
    x = g.to(dtype)
    transposed = g.shape[-2] > g.shape[-1]
    if transposed:  # iterate on the wide form: X X^T is the smaller Gram matrix
        x = x.transpose(-1, -2)
    x = x / (x.norm(dim=(-2, -1), keepdim=True) + eps)
    for _ in range(steps):
        A = x @ x.transpose(-1, -2)
        B = b * A + c * (A @ A)
        x = a * x + B @ x
    if transposed:
        x = x.transpose(-1, -2)
    return x.to(g.dtype)


def muon_update_scale(shape: torch.Size | tuple[int, ...]) -> float:
    """0.2 * sqrt(max(n, m)) for a matrix (or each matrix of a stack) of trailing shape (n, m):
    an orthogonal n x m matrix has RMS 1/sqrt(max(n, m)), so the update RMS becomes 0.2."""
    return RMS_MATCH * math.sqrt(max(shape[-2], shape[-1]))


# ----------------------------------------------------------------------------------------------
# Parameter split


def _split_params(model: nn.Module, trainable_only: bool = True) -> tuple[list, list]:
    """(muon, adamw) lists of (name, param). Muon: nn.Linear weights (attention, dense/shared FFN,
    vision and projector linears) and stacked MoE expert weights [E, in, out]. AdamW: token
    embedding, LM head, MoE routers, norms, biases, convolutions, position tables, all 1-D."""
    excluded: set[int] = set()
    muon_ids: set[int] = set()
    for module in model.modules():
        if isinstance(module, Backbone):
            excluded.update((id(module.embed.weight), id(module.head.weight)))
        if isinstance(module, MoE):
            excluded.add(id(module.router.weight))
            muon_ids.update(id(p) for p in (module.w_gate, module.w_up, module.w_down))
        if isinstance(module, nn.Embedding):
            excluded.add(id(module.weight))
        if isinstance(module, nn.Linear) and module.weight.ndim == 2:
            muon_ids.add(id(module.weight))
    muon, adamw, seen = [], [], set()
    for name, p in model.named_parameters():
        if id(p) in seen or (trainable_only and not p.requires_grad):
            continue
        seen.add(id(p))
        if id(p) in muon_ids and id(p) not in excluded and p.ndim in (2, 3):
            muon.append((name, p))
        else:
            adamw.append((name, p))
    return muon, adamw


def muon_param_groups(model: nn.Module, lr: float = 2e-4, weight_decay: float = 0.1,
                      adamw_lr: float | None = None, momentum: float = 0.95,
                      betas: tuple[float, float] = (0.9, 0.95), eps: float = 1e-8,
                      trainable_only: bool = True) -> list[dict]:
    """Two param groups for MuonClip: {"use_muon": True, ...} and {"use_muon": False, ...}.
    Thanks to RMS matching both use the same lr and weight decay by default (K2 / Moonlight).
    Each group also carries "names" (parameter names, for logging/tests; ignored by the step)."""
    muon, adamw = _split_params(model, trainable_only)
    groups = [
        dict(params=[p for _, p in muon], names=[n for n, _ in muon], use_muon=True, lr=lr,
             weight_decay=weight_decay, momentum=momentum),
        dict(params=[p for _, p in adamw], names=[n for n, _ in adamw], use_muon=False,
             lr=lr if adamw_lr is None else adamw_lr, weight_decay=weight_decay, betas=betas, eps=eps),
    ]
    return [g for g in groups if g["params"]]


# ----------------------------------------------------------------------------------------------
# Optimiser


class MuonClip(torch.optim.Optimizer):
    """Muon for groups with use_muon=True (2-D matrices, or stacks [E, n, m] orthogonalised per
    matrix), AdamW for the rest; decoupled weight decay p *= 1 - lr*wd in both. QK-Clip is the
    separate `qk_clip(model, tau)` call after `step()` (it needs the model, not just params)."""

    def __init__(self, params: Iterable, lr: float = 2e-4, weight_decay: float = 0.1,
                 momentum: float = 0.95, nesterov: bool = True, ns_steps: int = NS_STEPS,
                 ns_dtype: torch.dtype = torch.bfloat16, betas: tuple[float, float] = (0.9, 0.95),
                 eps: float = 1e-8):
        defaults = dict(lr=lr, weight_decay=weight_decay, momentum=momentum, nesterov=nesterov,
                        ns_steps=ns_steps, ns_dtype=ns_dtype, betas=betas, eps=eps, use_muon=False)
        super().__init__(params, defaults)
        for group in self.param_groups:
            if group["use_muon"]:
                for p in group["params"]:
                    if p.ndim not in (2, 3):
                        raise ValueError(f"Muon needs 2-D or stacked 3-D weights, got {tuple(p.shape)}")

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            if group["use_muon"]:
                self._muon_group(group)
            else:
                self._adamw_group(group)
        return loss

    def _muon_group(self, group: dict) -> None:
        lr, wd, mu = group["lr"], group["weight_decay"], group["momentum"]
        for p in group["params"]:
            if p.grad is None:
                continue
            g = p.grad.float()
            state = self.state[p]
            if "momentum_buffer" not in state:
                state["momentum_buffer"] = torch.zeros_like(g)
            buf = state["momentum_buffer"]
            buf.mul_(mu).add_(g)
            g = g.add(buf, alpha=mu) if group["nesterov"] else buf
            update = newton_schulz(g, group["ns_steps"], dtype=group["ns_dtype"]) * muon_update_scale(p.shape)
            if wd:
                p.mul_(1 - lr * wd)
            p.add_(update.to(p.dtype), alpha=-lr)

    def _adamw_group(self, group: dict) -> None:
        lr, wd, eps = group["lr"], group["weight_decay"], group["eps"]
        beta1, beta2 = group["betas"]
        for p in group["params"]:
            if p.grad is None:
                continue
            g = p.grad.float()
            state = self.state[p]
            if "step" not in state:
                state["step"] = 0
                state["exp_avg"] = torch.zeros_like(g)
                state["exp_avg_sq"] = torch.zeros_like(g)
            state["step"] += 1
            t = state["step"]
            m, v = state["exp_avg"], state["exp_avg_sq"]
            m.mul_(beta1).add_(g, alpha=1 - beta1)
            v.mul_(beta2).addcmul_(g, g, value=1 - beta2)
            denom = (v / (1 - beta2 ** t)).sqrt_().add_(eps)
            update = (m / (1 - beta1 ** t)) / denom
            if wd:
                p.mul_(1 - lr * wd)
            p.add_(update.to(p.dtype), alpha=-lr)


# ----------------------------------------------------------------------------------------------
# QK-Clip


def mla_modules(model: nn.Module) -> list[MLA]:
    return [m for m in model.modules() if isinstance(m, MLA)]


def enable_max_logit_recording(model: nn.Module, on: bool = True) -> None:
    """Switch MLA.record_max_logits on (off) in every attention layer; clears stale values."""
    for m in mla_modules(model):
        m.record_max_logits = on
        m.max_logits = None


def read_max_logits(model: nn.Module) -> dict[int, torch.Tensor]:
    """{layer_idx: per-head max logit [H]} as recorded by the last forward of each MLA layer
    (layers that have recorded nothing are left out)."""
    return {m.layer_idx: m.max_logits for m in mla_modules(model) if m.max_logits is not None}


def merge_max_logits(a: dict[int, torch.Tensor], b: dict[int, torch.Tensor]) -> dict[int, torch.Tensor]:
    """Element-wise max of two read_max_logits results (e.g. across micro-batches)."""
    out = dict(a)
    for k, v in b.items():
        out[k] = torch.maximum(out[k], v) if k in out else v
    return out


@torch.no_grad()
def qk_clip(model: nn.Module, tau: float,
            max_logits: dict[int, torch.Tensor] | None = None) -> dict[int, dict]:
    """Per-head QK-Clip (K2 Algorithm 1) on every MLA layer; call after optimizer.step().

    max_logits: {layer_idx: [H]}; default read_max_logits(model). For head h with S > tau,
    gamma = tau / S: q_b_proj rows [h*(nope+rope), +nope) and kv_b_proj rows [h*(nope+v), +nope)
    scale by sqrt(gamma), q_b_proj rows [h*(nope+rope)+nope, (h+1)*(nope+rope)) by gamma. Returns
    {layer_idx: {"max_logit": float, "n_clipped": int, "clipped_heads": [h...], "min_gamma": float}}.
    """
    if max_logits is None:
        max_logits = read_max_logits(model)
    stats: dict[int, dict] = {}
    for m in mla_modules(model):
        s = max_logits.get(m.layer_idx)
        if s is None:
            continue
        s = s.detach().float().to(m.q_b_proj.weight.device)
        H, nope, rope, v = m.n_heads, m.nope, m.rope, m.v_dim
        if s.shape != (H,):
            raise ValueError(f"layer {m.layer_idx}: max logits shape {tuple(s.shape)}, expected ({H},)")
        gamma = torch.where(s > tau, tau / s, torch.ones_like(s))  # NaN/-inf -> no clip
        gamma = torch.nan_to_num(gamma, nan=1.0).clamp(max=1.0)
        clipped = (gamma < 1).nonzero().flatten().tolist()
        if clipped:
            wq = m.q_b_proj.weight.view(H, nope + rope, -1)
            wkv = m.kv_b_proj.weight.view(H, nope + v, -1)
            sq = gamma.sqrt().to(wq.dtype)[:, None, None]
            wq[:, :nope].mul_(sq)
            wq[:, nope:].mul_(gamma.to(wq.dtype)[:, None, None])
            wkv[:, :nope].mul_(sq.to(wkv.dtype))
        stats[m.layer_idx] = dict(max_logit=float(s.max()), n_clipped=len(clipped),
                                  clipped_heads=clipped, min_gamma=float(gamma.min()))
    return stats
