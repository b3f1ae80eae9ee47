"""Backbone forward (+ backward) tokens/s: ours vs transformers' DeepseekV3ForCausalLM, same run.

Both models get the same config and the same weights (copied from ours) and are checked to give
the same logits before timing. The reference runs as transformers ships it (SDPA attention, its
default experts implementation).

    python -m benchmarks.bench_backbone [--dim 384 --layers 4 --experts 16 --top-k 4 --seq 512 --batch 2]

The reference is built by `model.transformers_io.to_transformers` (the export's mapping, also
what the parity tests use).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from model.backbone import Backbone
from model.config import ModelConfig
from model.transformers_io import to_transformers


def median_tokens_per_s(steps: dict, tokens: int, rounds: int) -> dict[str, float]:
    """Each round runs every step once, in turn, so load from other processes hits all of them
    alike; the median over rounds is reported."""
    for step in steps.values():
        step()  # warm-up
    times: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(rounds):
        for name, step in steps.items():
            start = time.perf_counter()
            step()
            times[name].append(time.perf_counter() - start)
    return {name: tokens / statistics.median(ts) for name, ts in times.items()}


# Random targets for the backward loss, wrapped into the output width (vocab, or dim for attention).
targets = torch.randint(0, 1 << 20, (1 << 16,))


def timed_step(fwd, model: torch.nn.Module, backward: bool):
    def step():
        if not backward:
            with torch.no_grad():
                fwd()
            return
        model.zero_grad(set_to_none=True)
        out = fwd().float()
        F.cross_entropy(out.flatten(0, -2), targets[: out[..., 0].numel()] % out.shape[-1]).backward()
    return step


def report(what: str, fwds: dict, models: dict, tokens: int, rounds: int, backward: bool) -> float:
    mode = "forward+backward" if backward else "forward"
    steps = {name: timed_step(fwds[name], models[name], backward) for name in fwds}
    r = median_tokens_per_s(steps, tokens, rounds)
    print(f"{what} {mode} tokens/s ours={r['ours']:.0f} reference={r['reference']:.0f} "
          f"ratio={r['ours'] / r['reference']:.2f}")
    return r['ours'] / r['reference']


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dim", type=int, default=384)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--heads", type=int, default=8)
    p.add_argument("--experts", type=int, default=16)
    p.add_argument("--top-k", type=int, default=4)
    p.add_argument("--expert-dim", type=int, default=256)
    p.add_argument("--seq", type=int, default=512)
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--yarn", type=float, default=1.0, help="YaRN factor (context extended from seq / factor)")
    p.add_argument("--no-backward", action="store_true")
    p.add_argument("--quick", action="store_true", help="seq 256, 2 rounds (well under 3 minutes on 2 cores)")
    args = p.parse_args()
    if args.quick:
        args.seq, args.rounds = min(args.seq, 256), min(args.rounds, 2)

    # Tiny gradients (softmax over the vocab) underflow to denormals, which are 10-20x slower on
    # CPU for both models alike and absent on GPU: flush them, as CPU training would.
    torch.set_flush_denormal(True)
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=8192, dim=args.dim, n_layers=args.layers, n_heads=args.heads,
                      q_lora_rank=args.dim // 2, kv_lora_rank=args.dim // 4, qk_nope_head_dim=32,
                      qk_rope_head_dim=16, v_head_dim=32, n_dense_layers=1, ffn_dim=4 * args.dim,
                      n_experts=args.experts, top_k=args.top_k, expert_dim=args.expert_dim,
                      max_seq_len=args.seq, original_max_position=max(1, int(args.seq / args.yarn)),
                      yarn_factor=args.yarn)
    ours = Backbone(cfg)
    theirs = to_transformers(ours)
    tokens = torch.randint(0, cfg.vocab_size, (args.batch, args.seq))
    with torch.no_grad():
        diff = diff_logits = (ours.forward_embeddings(ours.embed(tokens)) - theirs(tokens).logits).abs().max().item()
    print(f"config dim={args.dim} layers={args.layers} heads={args.heads} experts={args.experts} "
          f"top_k={args.top_k} seq={args.seq} batch={args.batch} threads={torch.get_num_threads()} flush_denormal=on "
          f"max_abs_logit_diff={diff:.2e}")

    models = {"ours": ours, "reference": theirs}
    fwds = {"ours": lambda: ours.forward_embeddings(ours.embed(tokens)), "reference": lambda: theirs(tokens).logits}
    # Attention alone (layer 0 on random hidden states): the part the backbone owns,
    # apart from the MoE layers shared with benchmarks/bench_moe.py.
    x = torch.randn(args.batch, args.seq, cfg.dim)
    cos, sin = ours.rope(args.seq, x.device)
    cos, sin = cos[None, : args.seq], sin[None, : args.seq]
    ref_rope = theirs.model.rotary_emb(x, torch.arange(args.seq)[None])
    attn = {"ours": ours.layers[0].attn, "reference": theirs.model.layers[0].self_attn}
    attn_fwds = {"ours": lambda: attn["ours"](x, cos, sin),
                 "reference": lambda: attn["reference"](x, ref_rope, None)[0]}
    with torch.no_grad():
        diff = (attn_fwds["ours"]() - attn_fwds["reference"]()).abs().max().item()
    print(f"attention max_abs_diff={diff:.2e}")
    n = tokens.numel()
    ratios = {}
    for backward in (False, True):
        if backward and args.no_backward:
            continue
        mode = "fwd_bwd" if backward else "fwd"
        ratios[f"attention_{mode}_ratio"] = report("attention", attn_fwds, attn, n, args.rounds, backward)
        ratios[f"backbone_{mode}_ratio"] = report("backbone", fwds, models, n, args.rounds, backward)
    print("RESULT " + " ".join(f"{k}={v:.2f}" for k, v in ratios.items()) + f" max_abs_logit_diff={diff_logits:.2e}")


if __name__ == "__main__":
    main()
