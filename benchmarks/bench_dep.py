"""DEP (training/dep.py) vs the naive path on 2 CPU ranks (gloo): multimodal training efficiency.

Efficiency = multimodal step throughput / text-only step throughput at the same token count per
rank (RECIPE.md §4.2; the paper reports 0.90 for K2.5 with DEP). Each step is forward + backward +
the engine's gradient all-reduce (sum, divide by world), timed as the slowest rank's wall time
between two barriers. Images are skewed on purpose: rank 0 holds several large images, rank 1 one
small image, as happens when a global batch mixes screenshots with icons.

- text:  model.loss on text tokens only (same B x T), backward, all-reduce.
- naive: model.loss with each rank encoding its own images, backward, all-reduce.
- dep:   dep_loss_and_backward (balanced no-grad encode, backbone, recompute + ViT backward), all-reduce.

Timings are medians over rounds; within a round the three variants alternate. Each rank runs one
thread (the machine has 2 cores), and denormals are flushed as in the other benchmarks.

    python -m benchmarks.bench_dep [--seq 256 --batch 4 --big 4 --big-side 224 --small-side 56 --rounds 5]
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

from model.vision import vision_token_count

VOCAB, MEDIA_PAD = 512, 5


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _batch(rank: int, a, shapes: list[tuple[int, ...]], with_media: bool):
    g = torch.Generator().manual_seed(rank)
    tokens = torch.randint(MEDIA_PAD + 1, VOCAB, (a.batch, a.seq), generator=g)
    items = [torch.randint(0, 256, sh, dtype=torch.uint8, generator=g) for sh in shapes] if with_media else []
    n_media = sum(vision_token_count(sh[-3], sh[-2]) for sh in shapes) if with_media else 0
    flat = tokens.view(-1)
    if n_media > flat.numel() // 2:
        raise SystemExit(f"{n_media} media tokens do not fit a {a.batch}x{a.seq} batch with text")
    # spread placeholders: one block per item, evenly over the batch
    step = flat.numel() // max(1, len(items))
    for k, sh in enumerate(shapes if with_media else []):
        n = vision_token_count(sh[-3], sh[-2])
        flat[k * step + 1:k * step + 1 + n] = MEDIA_PAD
    targets = torch.roll(tokens, -1, dims=1)
    targets[tokens == MEDIA_PAD] = -100
    targets[:, -1] = -100
    return tokens, targets, items


def _all_reduce(params, world):
    flat = torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1) for p in params])
    dist.all_reduce(flat)
    flat /= world
    off = 0
    for p in params:
        p.grad = flat[off:off + p.numel()].view_as(p).clone()
        off += p.numel()


def _worker(rank: int, world: int, port: int, a, out: dict) -> None:
    torch.set_num_threads(1)
    torch.set_flush_denormal(True)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    from model.config import VisionConfig, model_preset
    from model.multimodal import K25Model
    from training.dep import dep_loss_and_backward

    torch.manual_seed(0)
    cfg = model_preset("tiny", vocab_size=VOCAB, dim=a.dim, max_seq_len=max(256, a.seq),
                       vision=VisionConfig(dim=a.vit_dim, n_layers=a.vit_layers, n_heads=4, mlp_dim=4 * a.vit_dim))
    model = K25Model(cfg, media_pad_id=MEDIA_PAD)
    params = [p for p in model.parameters() if p.requires_grad]
    big = [(a.big_side, a.big_side, 3)] * a.big
    small = [(a.small_side, a.small_side, 3)]
    shapes = big if rank == 0 else small
    text = _batch(rank, a, shapes, with_media=False)
    mm = _batch(rank, a, shapes, with_media=True)

    def step_text():
        loss = model.loss(text[0], text[1])
        loss.backward()

    def step_naive():
        loss = model.loss(mm[0], mm[1], mm[2] or None)
        loss.backward()

    def step_dep():
        dep_loss_and_backward(model, mm[0], mm[1], None, mm[2])

    variants = {"text": step_text, "naive": step_naive, "dep": step_dep}
    times: dict[str, list[float]] = {k: [] for k in variants}
    for rnd in range(a.rounds + 1):  # round 0 is warm-up
        for name, fn in variants.items():
            model.zero_grad(set_to_none=True)
            dist.barrier()
            t0 = time.perf_counter()
            fn()
            _all_reduce(params, world)
            dt = torch.tensor([time.perf_counter() - t0])
            dist.all_reduce(dt, op=dist.ReduceOp.MAX)
            if rnd:
                times[name].append(float(dt))
    if rank == 0:
        out.update({k: statistics.median(v) for k, v in times.items()})
        patches = [len(big) * (a.big_side // 14) ** 2, (a.small_side // 14) ** 2]
        out["patches"] = patches
        out["media_tokens"] = [len(big) * vision_token_count(a.big_side, a.big_side),
                               vision_token_count(a.small_side, a.small_side)]
    dist.destroy_process_group()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--dim", type=int, default=128, help="LLM width (tiny preset otherwise)")
    ap.add_argument("--vit-dim", type=int, default=64)
    ap.add_argument("--vit-layers", type=int, default=2)
    ap.add_argument("--big", type=int, default=4, help="large images on rank 0")
    ap.add_argument("--big-side", type=int, default=224)
    ap.add_argument("--small-side", type=int, default=56, help="rank 1's one small image")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--quick", action="store_true", help="3 rounds (well under 3 minutes on 2 cores)")
    a = ap.parse_args()
    if a.quick:
        a.rounds = 3
    with mp.Manager() as mgr:
        out = mgr.dict()
        mp.spawn(_worker, args=(2, _free_port(), a, out), nprocs=2, join=True)
        r = dict(out)
    tokens = a.seq * a.batch
    e_naive, e_dep = r["text"] / r["naive"], r["text"] / r["dep"]
    print(f"tokens/rank/step {tokens}  media tokens per rank {r['media_tokens']}  ViT patches per rank {r['patches']}")
    print(f"step seconds (median of {a.rounds}, slowest rank): text {r['text']:.4f}  naive {r['naive']:.4f}  dep {r['dep']:.4f}")
    print(f"text-only tokens/s {2 * tokens / r['text']:.0f}  naive {2 * tokens / r['naive']:.0f}  dep {2 * tokens / r['dep']:.0f}")
    print(f"multimodal efficiency (vs text-only): naive={e_naive:.3f} dep={e_dep:.3f} ratio dep/naive={e_dep / e_naive:.3f} "
          f"(paper, K2.5 with DEP on GPUs: 0.90)")
    print(f"RESULT dep_efficiency={e_dep:.3f} naive_efficiency={e_naive:.3f} dep_over_naive={e_dep / e_naive:.3f}")


if __name__ == "__main__":
    main()
