"""Expert-parallel MoE (2 gloo ranks, CPU) vs the single-process MoE on the same tokens, fwd+bwd.

Each rank runs its own tokens through (a) the full MoE (all experts local, no communication) and
(b) the EP layer (half the experts, all-to-all dispatch and combine). Outputs are checked equal
first. On CPU with gloo this measures the dispatch overhead (sorting, 3 small collectives, 2
all-to-alls each way), not the memory win EP exists for; the ratio says what EP costs per step.

    python -m benchmarks.bench_expert_parallel [--dim 512 --experts 16 --top-k 4 --expert-dim 256 --tokens 2048]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def _worker(rank: int, init_file: str, args) -> None:
    torch.set_num_threads(1)
    torch.set_flush_denormal(True)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    from model.backbone import MoE
    from model.config import ModelConfig
    from training.expert_parallel import ExpertParallelMoE

    cfg = ModelConfig(dim=args.dim, n_experts=args.experts, top_k=args.top_k, expert_dim=args.expert_dim)
    torch.manual_seed(0)
    moe = MoE(cfg)
    ep = ExpertParallelMoE.from_moe(moe, None)
    torch.manual_seed(1 + rank)
    x = torch.randn(args.tokens, args.dim)
    err = (ep(x) - moe(x)).abs().max().item()
    assert err < 1e-4, err

    def step(layer):
        xi = x.clone().requires_grad_()
        layer(xi).square().mean().backward()

    times = {"single": [], "ep": []}
    for _ in range(args.rounds):
        for name, layer in (("single", moe), ("ep", ep)):
            dist.barrier()
            t = time.perf_counter()
            step(layer)
            dist.barrier()
            times[name].append(time.perf_counter() - t)
    if rank == 0:
        s, e = statistics.median(times["single"]), statistics.median(times["ep"])
        tok = 2 * args.tokens
        print(f"moe fwd+bwd tokens/s (2 ranks) single-process-experts={tok / s:.0f} expert-parallel={tok / e:.0f} "
              f"ratio={s / e:.2f}  (max abs output diff {err:.2g})")
        print(f"RESULT ep_speedup={s / e:.2f} ep_tokens_per_s={tok / e:.0f} single_tokens_per_s={tok / s:.0f} "
              f"max_abs_diff={err:.2g}")
    dist.destroy_process_group()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dim", type=int, default=512)
    p.add_argument("--experts", type=int, default=16)
    p.add_argument("--top-k", type=int, default=4)
    p.add_argument("--expert-dim", type=int, default=256)
    p.add_argument("--tokens", type=int, default=2048, help="tokens per rank")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--quick", action="store_true", help="1024 tokens per rank, 3 rounds")
    args = p.parse_args()
    if args.quick:
        args.tokens, args.rounds = min(args.tokens, 1024), min(args.rounds, 3)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    with tempfile.TemporaryDirectory() as d:
        mp.spawn(_worker, args=(os.path.join(d, "init"), args), nprocs=2, join=True)


if __name__ == "__main__":
    main()
