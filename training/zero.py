"""ZeRO-1 for the engine (`zero_stage=1`): DeepSpeed's for AdamW, `ShardedOptimizer` for MuonClip.

ZeRO-1 partitions the optimizer state and the fp32 master weights over the data-parallel ranks;
gradients are averaged over all ranks and each rank updates only its partition, then the updated
parameters are all-gathered. On GPU the model runs in bf16 (DeepSpeed keeps fp32 masters); on the
CPU (tests, `DS_ACCELERATOR=cpu`, gloo) it stays fp32.

We keep our own atomic checkpoint format (training/checkpoint.py) rather than DeepSpeed's folder
layout: the full model state is written once by rank 0 (downstream stages and evaluation load it
without DeepSpeed), and each rank writes its own ZeRO partition (`ZeroOptimizer.state_dict()`,
including the fp32 master partition), so resume is exact at the same world size. DeepSpeed's rigid
(non-elastic) partition format cannot be loaded at another world size; `check_resumable` says so
before anything is loaded.
"""

from __future__ import annotations

import os

import torch
import torch.nn as nn

from training.spec import StageSpec


def import_deepspeed():
    """DeepSpeed picks its accelerator at import: say CPU explicitly where there is no GPU."""
    if not torch.cuda.is_available():
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    import deepspeed

    return deepspeed


def zero1_config(cfg: StageSpec, bf16: bool) -> dict:
    return {
        "train_micro_batch_size_per_gpu": cfg.data.batch_size,
        "gradient_accumulation_steps": 1,
        "gradient_clipping": cfg.optimizer.grad_clip,
        "zero_optimization": {"stage": 1, "elastic_checkpoint": False},
        "bf16": {"enabled": bf16},
        # our AdamW / param groups are passed in; DeepSpeed only partitions their state
        "zero_allow_untested_optimizer": True,
        "steps_per_print": 2**31 - 1,
        "wall_clock_breakdown": False,
    }


def wrap_zero1(model: nn.Module, optimizer: torch.optim.Optimizer, cfg: StageSpec):
    """(DeepSpeed engine, ZeRO optimizer) around `model` and our optimizer. The process group must
    already exist (DeepSpeed reuses it)."""
    deepspeed = import_deepspeed()
    bf16 = torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    engine, zero_opt, _, _ = deepspeed.initialize(model=model, optimizer=optimizer, config=zero1_config(cfg, bf16),
                                                  dist_init_required=False)
    return engine, zero_opt


def check_resumable(manifest_meta: dict, world: int) -> str | None:
    """Why a ZeRO-1 checkpoint cannot be resumed at this world size (None if it can)."""
    saved = manifest_meta.get("world_size")
    if manifest_meta.get("zero_stage", 0) == 1 and saved is not None and saved != world:
        return (f"checkpoint holds ZeRO-1 optimizer partitions for {saved} ranks, this run has {world}; "
                "resume at the same world size (or start a new run with --init-from, which loads weights only)")
    return None


def load_partition(zero_opt, state: dict, dp_rank: int, world: int) -> None:
    """Restore this rank's partition (optimizer moments and fp32 masters) saved by `state_dict()`."""
    states = [None] * world
    states[dp_rank] = state  # rigid checkpoints read only the current rank's entry
    zero_opt.load_state_dict(states, load_optimizer_states=True, load_from_fp32_weights=True)


class ShardedOptimizer:
    """ZeRO-1 by whole tensors, for optimizers that need full matrices (MuonClip).

    DeepSpeed's ZeRO-1 partitions one flat buffer, which splits matrices across ranks; Muon's
    Newton-Schulz orthogonalisation needs each matrix whole. Here every parameter has one owner rank
    (largest tensors first, each to the least-loaded rank), the wrapped optimizer holds state only for
    the owned parameters, and after each step every owner broadcasts its updated parameters. The
    gradients are the engine's usual all-reduced ones, so each update is exactly what the replicated
    optimizer computes: the trained weights are bitwise equal, at 1/world of the optimizer memory
    (the distributed Muon of Moonlight/K2 works the same way).
    """

    def __init__(self, make_optimizer, param_groups: list[dict], rank: int, world: int):
        self.rank, self.world = rank, world
        params = [p for g in param_groups for p in g["params"]]
        self.owned_by = self._assign(params, world)
        owner = {id(p): r for r, ps in enumerate(self.owned_by) for p in ps}
        mine = []
        for g in param_groups:
            keep = [i for i, p in enumerate(g["params"]) if owner[id(p)] == rank]
            if keep:
                group = {**g, "params": [g["params"][i] for i in keep]}
                if "names" in g:
                    group["names"] = [g["names"][i] for i in keep]
                mine.append(group)
        # a rank that owns nothing still steps (and broadcasts nothing): an empty inner optimizer
        self.inner = make_optimizer(mine) if mine else None
        self._lr_groups = mine or [{"lr": param_groups[0].get("lr", 0.0)}]

    @staticmethod
    def _assign(params: list[torch.Tensor], world: int) -> list[list[torch.Tensor]]:
        owned: list[list[torch.Tensor]] = [[] for _ in range(world)]
        load = [0] * world
        for i in sorted(range(len(params)), key=lambda i: (-params[i].numel(), i)):  # deterministic on all ranks
            r = min(range(world), key=lambda r: (load[r], r))
            owned[r].append(params[i])
            load[r] += params[i].numel()
        order = {id(p): i for i, p in enumerate(params)}
        for ps in owned:  # keep model order within a rank (the broadcast order)
            ps.sort(key=lambda p: order[id(p)])
        return owned

    @property
    def param_groups(self) -> list[dict]:
        return self.inner.param_groups if self.inner is not None else self._lr_groups

    def zero_grad(self, set_to_none: bool = True) -> None:
        for ps in self.owned_by:
            for p in ps:
                if set_to_none:
                    p.grad = None
                elif p.grad is not None:
                    p.grad.zero_()

    @torch.no_grad()
    def step(self) -> None:
        import torch.distributed as dist

        if self.inner is not None:
            self.inner.step()
        if self.world == 1:
            return
        for src, ps in enumerate(self.owned_by):  # one coalesced broadcast per owner
            if not ps:
                continue
            flat = torch.cat([p.detach().reshape(-1) for p in ps])
            dist.broadcast(flat, src=src)
            if src != self.rank:
                offset = 0
                for p in ps:
                    p.copy_(flat[offset:offset + p.numel()].view_as(p))
                    offset += p.numel()

    def state_dict(self) -> dict:
        return {"world": self.world, "rank": self.rank,
                "inner": self.inner.state_dict() if self.inner is not None else None}

    def load_state_dict(self, state: dict) -> None:
        if state.get("world") != self.world:
            raise ValueError(f"optimizer shard saved by {state.get('world')} ranks, this run has {self.world}")
        if self.inner is not None:
            self.inner.load_state_dict(state["inner"])
