"""Expert parallelism (RECIPE.md §4.1, EP16): all-to-all token dispatch over an EP process group.

Each of the `ep` ranks of the group holds a contiguous block of E/ep experts (its slices of the
stacked w_gate / w_up / w_down) plus replicated copies of the router, the selection bias and the
shared expert. A forward pass

1. routes the rank's own tokens exactly as `MoE.route` does (fp32 sigmoid, top-k on score + bias,
   renormalised gates x routed_scaling),
2. sorts the (token, expert) pairs by expert (so also by destination rank),
3. exchanges per-expert counts (`all_to_all_single`, equal splits), then the token activations
   (`all_to_all_single`, variable splits; gloo supports this on CPU, NCCL on GPU),
4. runs the local experts as one grouped GEMM over the received rows re-sorted by local expert,
5. sends the results back with the reverse all-to-all, weights them by the gates and adds the
   shared expert.

Autograd flows through both exchanges (`_AllToAll`: the backward is the reverse exchange), so every
rank must run backward through every EP layer it ran forward through (the backward is collective).

`last_load` is the global per-expert load over the EP group ([E], all-reduced), `last_local_load`
this rank's own counts (what the single-process MoE would report for this rank's tokens).

Gradient semantics (what the engine must do, see `sync_gradients`): expert weights receive the
gradient of the *sum* of the losses of all EP ranks (tokens from every rank reach them), so they
must not be all-reduced over the EP group; replicated parameters (router, shared expert, the rest of
the model) receive only the local loss's gradient and are all-reduced over the world as usual.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F

from model.backbone import MoE, SwiGLU, expert_weights, grouped_matmul

EXPERT_PARAM_NAMES = ("w_gate", "w_up", "w_down")


# ----------------------------------------------------------------------------------------------
# autograd-aware all-to-all

class _AllToAll(torch.autograd.Function):
    """all_to_all_single over `group` with variable splits along dim 0; backward = reverse exchange."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, output_splits: list[int], input_splits: list[int], group) -> torch.Tensor:
        ctx.group, ctx.output_splits, ctx.input_splits = group, output_splits, input_splits
        return _all_to_all(x, output_splits, input_splits, group)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return _all_to_all(grad, ctx.input_splits, ctx.output_splits, ctx.group), None, None, None


def _all_to_all(x: torch.Tensor, output_splits: list[int], input_splits: list[int], group) -> torch.Tensor:
    out = x.new_empty((sum(output_splits), *x.shape[1:]))
    dist.all_to_all_single(out, x.contiguous(), output_splits, input_splits, group=group)
    return out


def all_to_all(x: torch.Tensor, output_splits: list[int], input_splits: list[int], group=None) -> torch.Tensor:
    """Differentiable `all_to_all_single` (rows of x; splits are row counts per peer rank)."""
    return _AllToAll.apply(x, list(output_splits), list(input_splits), group)


# ----------------------------------------------------------------------------------------------
# the module

class ExpertParallelMoE(MoE):
    """A `MoE` whose routed experts are sharded over an EP process group.

    Subclasses MoE so that `Backbone.moe_layers()`, `MoE.route` and `MoE.update_bias` keep working,
    but does not run MoE.__init__ (which would allocate all E experts). Parameter names match MoE's,
    with w_gate/w_up/w_down holding only this rank's [E/ep, ...] slices, so `shard_state_dict` /
    `gather_state_dict` convert between full and EP checkpoints.
    """

    def __init__(self, n_experts: int, top_k: int, routed_scaling: float, dim: int, expert_dim: int,
                 n_shared_experts: int, group=None):
        nn.Module.__init__(self)
        self.group = group
        self.ep_size = dist.get_world_size(group)
        self.ep_rank = dist.get_rank(group)
        if n_experts % self.ep_size:
            raise ValueError(f"n_experts={n_experts} is not divisible by the EP size {self.ep_size}")
        self.n_experts, self.top_k, self.scaling = n_experts, top_k, routed_scaling
        self.n_local = n_experts // self.ep_size
        self.expert_start = self.ep_rank * self.n_local
        self.router = nn.Linear(dim, n_experts, bias=False)
        self.register_buffer("expert_bias", torch.zeros(n_experts), persistent=True)
        self.w_gate, self.w_up, self.w_down = expert_weights(self.n_local, dim, expert_dim)
        self.mark_expert_params()  # marker for the engine's gradient sync / clipping
        self.shared = SwiGLU(dim, expert_dim * n_shared_experts)
        self.last_load: torch.Tensor | None = None  # global tokens per expert (over the EP group)
        self.last_local_load: torch.Tensor | None = None  # this rank's tokens per expert

    @classmethod
    def from_config(cls, cfg, group=None) -> "ExpertParallelMoE":
        """Fresh (randomly initialised) EP layer. Ranks draw different expert weights unless they seed
        identically; load a sharded checkpoint or use `from_moe` for a defined start."""
        return cls(cfg.n_experts, cfg.top_k, cfg.routed_scaling, cfg.dim, cfg.expert_dim, cfg.n_shared_experts,
                   group)

    @classmethod
    def from_moe(cls, moe: MoE, group=None) -> "ExpertParallelMoE":
        """EP layer holding this rank's experts of `moe` (copied) and copies of its replicated parts.
        `moe` must be identical on all ranks of the group (same seed or broadcast)."""
        E, dim, expert_dim = moe.w_gate.shape
        n_shared = moe.shared.gate.out_features // expert_dim
        ep = cls(E, moe.top_k, moe.scaling, dim, expert_dim, n_shared, group)
        shard = shard_moe_state_dict(moe.state_dict(), ep.ep_rank, ep.ep_size)
        # assign=True keeps moe's dtypes/devices (e.g. bf16 weights, fp32 expert_bias)
        ep.load_state_dict({k: v.detach().clone() for k, v in shard.items()}, assign=True)
        ep.mark_expert_params()
        return ep

    def mark_expert_params(self) -> None:
        """Tag the expert weights (`is_expert_param`); call again after load_state_dict(assign=True)."""
        for p in (self.w_gate, self.w_up, self.w_down):
            p.expert_parallel = True

    def local_experts(self) -> range:
        return range(self.expert_start, self.expert_start + self.n_local)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        flat = x.reshape(-1, shape[-1])
        ep, n_local = self.ep_size, self.n_local
        idx, gates = self.route(flat)
        expert_of = idx.reshape(-1)
        order = torch.argsort(expert_of, stable=True)  # by global expert = by destination rank, then expert
        token_of = order // self.top_k
        counts = torch.bincount(expert_of, minlength=self.n_experts)  # [E] sent by this rank
        self.last_local_load = counts.detach()

        # 1) counts: recv_counts[s, e] = rows rank s sends to my local expert e
        recv_counts = torch.empty_like(counts)
        dist.all_to_all_single(recv_counts, counts, group=self.group)
        recv_counts = recv_counts.view(ep, n_local)
        counts_cpu = torch.stack([counts, recv_counts.reshape(-1)]).cpu()  # one host sync for both
        input_splits = counts_cpu[0].view(ep, n_local).sum(1).tolist()
        output_splits = counts_cpu[1].view(ep, n_local).sum(1).tolist()
        local_counts = counts_cpu[1].view(ep, n_local).sum(0)

        # global load for the router-bias update: the all-reduced counts (a small collective)
        load = counts.clone()
        dist.all_reduce(load, group=self.group)
        self.last_load = load

        # 2) activations: rows arrive grouped by source rank, then by local expert
        recv = all_to_all(flat.index_select(0, token_of), output_splits, input_splits, self.group)

        # 3) local experts over the rows re-sorted by local expert
        n_recv = recv.shape[0]
        if n_recv:
            local_expert_of = torch.repeat_interleave(
                torch.arange(n_local, device=recv.device).repeat(ep), recv_counts.reshape(-1), output_size=n_recv)
            order2 = torch.argsort(local_expert_of, stable=True)
            h = recv.index_select(0, order2)
            offsets = local_counts.cumsum(0).to(device=recv.device, dtype=torch.int32)
            h = F.silu(grouped_matmul(h, self.w_gate, offsets)) * grouped_matmul(h, self.w_up, offsets)
            y_sorted = grouped_matmul(h, self.w_down, offsets)
            y = torch.empty_like(y_sorted).index_copy(0, order2, y_sorted)  # back to arrival order
        else:
            # Nothing to compute, but keep the graph connected: the backward of the dispatch exchange
            # is collective and must run on this rank too (grouped_mm cannot backprop zero rows).
            y = (F.silu(recv @ self.w_gate[0]) * (recv @ self.w_up[0])) @ self.w_down[0]

        # 4) results back to their source ranks, in the order they were sent (sorted by expert)
        back = all_to_all(y, input_splits, output_splits, self.group)
        back = back * gates.reshape(-1)[order].unsqueeze(-1).to(flat.dtype)
        out = torch.zeros_like(flat).index_add_(0, token_of, back)
        return (out + self.shared(flat)).reshape(shape)


# ----------------------------------------------------------------------------------------------
# model-level helpers

def apply_expert_parallel(model: nn.Module, group=None) -> list[ExpertParallelMoE]:
    """Replace every MoE submodule of `model` (in place) by its EP version; returns the new layers.
    The model must be identical on all ranks of the group beforehand (same seed / same checkpoint)."""
    replaced = []
    for name, module in list(model.named_modules()):
        for child_name, child in list(module.named_children()):
            if type(child) is MoE:
                ep = ExpertParallelMoE.from_moe(child, group)
                setattr(module, child_name, ep)
                replaced.append(ep)
    return replaced


def is_expert_param(p: torch.Tensor) -> bool:
    return bool(getattr(p, "expert_parallel", False))


def expert_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The sharded expert weights of every EP layer in `model` (by module type, not by tag)."""
    return [p for m in model.modules() if isinstance(m, ExpertParallelMoE) for p in (m.w_gate, m.w_up, m.w_down)]


def _is_expert_key(key: str) -> bool:
    return key.rsplit(".", 1)[-1] in EXPERT_PARAM_NAMES


def shard_moe_state_dict(state: dict[str, torch.Tensor], rank: int, ep_size: int,
                         is_expert_key=_is_expert_key) -> dict[str, torch.Tensor]:
    """This EP rank's view of a full (single-process) state dict: expert tensors ([E, ...]) sliced
    to [E/ep, ...] along dim 0; everything else passed through unchanged (not copied)."""
    out = {}
    for k, v in state.items():
        if is_expert_key(k):
            if v.shape[0] % ep_size:
                raise ValueError(f"{k}: {v.shape[0]} experts not divisible by EP size {ep_size}")
            n = v.shape[0] // ep_size
            out[k] = v[rank * n:(rank + 1) * n].clone()
        else:
            out[k] = v
    return out


def merge_moe_state_dicts(shards: list[dict[str, torch.Tensor]], is_expert_key=_is_expert_key) -> dict:
    """Inverse of `shard_moe_state_dict` given all ranks' shards (offline conversion)."""
    out = {}
    for k, v in shards[0].items():
        out[k] = torch.cat([s[k] for s in shards], 0) if is_expert_key(k) else v
    return out


def gather_moe_state_dict(state: dict[str, torch.Tensor], group=None, is_expert_key=_is_expert_key) -> dict:
    """Collective: the full state dict on every rank of the EP group, from each rank's EP state
    dict (expert tensors all-gathered along dim 0 in rank order; replicated tensors taken as is)."""
    ep = dist.get_world_size(group)
    out = {}
    for k, v in state.items():  # same key order on every rank (same module structure)
        if is_expert_key(k):
            parts = [torch.empty_like(v) for _ in range(ep)]
            dist.all_gather(parts, v.contiguous(), group=group)
            out[k] = torch.cat(parts, 0)
        else:
            out[k] = v
    return out


@torch.no_grad()
def sync_gradients(params: list[nn.Parameter], world_size: int, group=None, expert_dp_group=None) -> None:
    """Data-parallel gradient sync for a model with EP layers, averaging over the world's losses.

    Replicated params: all-reduce (sum) over `group` (default: world), divide by world_size.
    Expert params: already hold the sum over their EP group's losses; all-reduce only over
    `expert_dp_group` (the ranks holding the same expert shard; None = nobody, i.e. world == EP),
    then divide by world_size. Missing grads count as zeros."""
    dense = [p for p in params if not is_expert_param(p)]
    expert = [p for p in params if is_expert_param(p)]
    for ps, grp, skip in ((dense, group, False), (expert, expert_dp_group, expert_dp_group is None)):
        if not ps:
            continue
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in ps]
        flat = torch.cat([g.reshape(-1) for g in grads])
        if not skip and world_size > 1:
            dist.all_reduce(flat, group=grp)
        flat /= world_size
        off = 0
        for p in ps:
            p.grad = flat[off:off + p.numel()].view_as(p).clone()
            off += p.numel()


def grad_norm(params: list[nn.Parameter], ep_group=None) -> torch.Tensor:
    """Global L2 norm of the gradients after `sync_gradients`: replicated grads counted once,
    expert shards summed over the EP group (collective over ep_group)."""
    dense = [p.grad for p in params if p.grad is not None and not is_expert_param(p)]
    expert = [p.grad for p in params if p.grad is not None and is_expert_param(p)]
    device = (dense or expert)[0].device if (dense or expert) else None
    sq_d = sum((g.float().pow(2).sum() for g in dense), torch.zeros((), device=device))
    sq_e = sum((g.float().pow(2).sum() for g in expert), torch.zeros((), device=device))
    if dist.is_initialized() and dist.get_world_size(ep_group) > 1:
        dist.all_reduce(sq_e, group=ep_group)
    return (sq_d + sq_e).sqrt()
