"""DeepSpeed ZeRO-1 for the engine (`zero_stage=1`).

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

from training.config import StageConfig


def import_deepspeed():
    """DeepSpeed picks its accelerator at import: say CPU explicitly where there is no GPU."""
    if not torch.cuda.is_available():
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    import deepspeed

    return deepspeed


def zero1_config(cfg: StageConfig, bf16: bool) -> dict:
    return {
        "train_micro_batch_size_per_gpu": cfg.batch_size,
        "gradient_accumulation_steps": 1,
        "gradient_clipping": cfg.grad_clip,
        "zero_optimization": {"stage": 1, "elastic_checkpoint": False},
        "bf16": {"enabled": bf16},
        # our AdamW / param groups are passed in; DeepSpeed only partitions their state
        "zero_allow_untested_optimizer": True,
        "steps_per_print": 2**31 - 1,
        "wall_clock_breakdown": False,
    }


def wrap_zero1(model: nn.Module, optimizer: torch.optim.Optimizer, cfg: StageConfig):
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
