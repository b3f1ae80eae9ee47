"""ZeRO-1 on 2 CPU ranks (gloo): optimizer memory per rank and step time against replicated state.

Variants, each on the same tiny K2.5 model and random token batch, one optimizer step after the
engine's gradient all-reduce:

- adamw:            replicated torch AdamW (the baseline for the DeepSpeed row)
- adamw_zero1:      DeepSpeed ZeRO-1 (DS_ACCELERATOR=cpu) around the same AdamW
- muonclip:         replicated MuonClip (the baseline for the sharded row)
- muonclip_zero1:   training/zero.py ShardedOptimizer (state by whole matrices, owner broadcast)

Optimizer memory = bytes of tensors in this rank's optimizer state (for DeepSpeed also its fp32
partition of the master weights). Step time = median over steps of the slowest rank's forward +
backward + sync + step. Ratios are against the replicated variant of the same optimizer, measured
in the same run.

    python -m benchmarks.bench_zero [--steps 6 --model tiny]
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _tensor_bytes(obj) -> int:
    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, dict):
        return sum(_tensor_bytes(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(_tensor_bytes(v) for v in obj)
    return 0


def _variant(name: str, rank: int, world: int, a) -> tuple[float, int]:
    import recipes
    from benchmarks.bench_dep import _all_reduce as average_gradients
    from model.config import model_preset
    from model.multimodal import K25Model
    from training.muonclip import MuonClip, muon_param_groups
    from training.zero import ShardedOptimizer, wrap_zero1

    torch.manual_seed(0)
    model = K25Model(model_preset(a.model, vocab_size=512), media_pad_id=5)
    params = [p for p in model.parameters()]
    cfg = recipes.resolve_stage("tiny", "joint_pretrain", {"data.batch_size": a.batch, "optimizer.grad_clip": 1.0,
                                                           "optimizer.name": "adamw"})
    ds = None
    if name.startswith("adamw"):
        opt = torch.optim.AdamW(params, lr=1e-3)
        if name == "adamw_zero1":
            ds, opt = wrap_zero1(model, opt, cfg)
    else:
        groups = muon_param_groups(model, lr=1e-3)
        opt = ShardedOptimizer(MuonClip, groups, rank, world) if name == "muonclip_zero1" else MuonClip(groups)
    g = torch.Generator().manual_seed(rank)
    tokens = torch.randint(6, 512, (a.batch, a.seq), generator=g)
    targets = torch.roll(tokens, -1, 1)
    times = []
    for _ in range(a.steps):
        opt.zero_grad(set_to_none=True)
        dist.barrier()
        t0 = time.perf_counter()
        loss = model.loss(tokens, targets)
        if ds is not None:
            ds.backward(loss)
            ds.step()
        else:
            loss.backward()
            average_gradients(params, world)  # the engine's plain data-parallel sync
            opt.step()
        t = torch.tensor([time.perf_counter() - t0])
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        times.append(float(t))
    state = opt.state_dict()
    return statistics.median(times[1:]), _tensor_bytes(state)


def _worker(rank: int, world: int, port: int, a, out) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank), DS_ACCELERATOR="cpu")
    torch.set_num_threads(1)
    torch.set_flush_denormal(True)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    results = {}
    for name in ("adamw", "adamw_zero1", "muonclip", "muonclip_zero1"):
        results[name] = _variant(name, rank, world, a)
    if rank == 0:
        out.update(results)
    dist.barrier()
    dist.destroy_process_group()


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--seq", type=int, default=128)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--model", default="tiny")
    p.add_argument("--quick", action="store_true", help="4 steps (well under 3 minutes on 2 cores)")
    a = p.parse_args(argv)
    if a.quick:
        a.steps = 4
    with mp.Manager() as manager:
        out = manager.dict()
        mp.spawn(_worker, args=(2, _free_port(), a, out), nprocs=2, join=True)
        res = dict(out)
    print(f"ZeRO-1 on 2 ranks, model {a.model}, batch {a.batch}x{a.seq}, median of {a.steps - 1} steps")
    print(f"{'variant':<16} {'step ms':>9} {'optim MiB/rank':>15} {'memory ratio':>13} {'time ratio':>11}")
    for name, base in (("adamw", "adamw"), ("adamw_zero1", "adamw"), ("muonclip", "muonclip"),
                       ("muonclip_zero1", "muonclip")):
        t, b = res[name]
        tb, bb = res[base]
        print(f"{name:<16} {t * 1e3:9.1f} {b / 2**20:15.2f} {b / bb:13.2f} {tb / t:11.2f}")
    ratio = {name: (res[name][1] / res[base][1], res[base][0] / res[name][0])
             for name, base in (("adamw_zero1", "adamw"), ("muonclip_zero1", "muonclip"))}
    print(f"RESULT adamw_zero1_memory={ratio['adamw_zero1'][0]:.2f} adamw_zero1_speed={ratio['adamw_zero1'][1]:.2f} "
          f"muonclip_sharded_memory={ratio['muonclip_zero1'][0]:.2f} "
          f"muonclip_sharded_speed={ratio['muonclip_zero1'][1]:.2f}")


if __name__ == "__main__":
    main()
