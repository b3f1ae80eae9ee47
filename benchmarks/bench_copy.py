"""Can the tiny backbone learn to copy? An induction probe (why bench_parl's orchestrator fails).

    python -m benchmarks.bench_copy [--quick] [--steps 1500] [--gap 16]

Task: 8 random tokens, `--gap` random filler tokens, a separator, then the same 8 tokens again;
the loss and the accuracy are on the repeated 8 only, so the only way to learn is to look back
and copy (an induction circuit). Models, trained on the same batches:
  - the tiny K25Model (MLA with its 8-dim RoPE part and 32-dim KV latent, MoE feed-forward),
    the model every tiny stage trains;
  - the baseline, measured in the same run: a plain pre-norm `torch.nn.TransformerEncoder` with
    the same width (128), depth (4), heads (4) and feed-forward width (256), learned absolute
    positions, a causal mask.
Both AdamW lr 1e-3, batch 16, tokens 20..511 of the tiny vocabulary (no special ids). Every
`--every` steps: greedy copy accuracy on a fresh batch. Ends with
`RESULT k25_steps_to_copy=... ref_steps_to_copy=... ratio=... k25_final_acc=... ref_final_acc=...`
(steps to reach 0.9 accuracy; nan if never reached).
"""

from __future__ import annotations

import argparse
import math
import time

import torch
import torch.nn as nn

KEY, SEP, LOW, VOCAB = 8, 19, 20, 512


class PlainTransformer(nn.Module):
    def __init__(self, dim: int = 128, layers: int = 4, heads: int = 4, ffn: int = 256, max_len: int = 2048):
        super().__init__()
        self.embed, self.pos = nn.Embedding(VOCAB, dim), nn.Embedding(max_len, dim)
        layer = nn.TransformerEncoderLayer(dim, heads, ffn, dropout=0.0, batch_first=True, norm_first=True)
        self.blocks = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.head = nn.Linear(dim, VOCAB)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        t = tokens.shape[1]
        mask = nn.Transformer.generate_square_subsequent_mask(t)
        return self.head(self.blocks(self.embed(tokens) + self.pos(torch.arange(t)), mask=mask, is_causal=True))


def batch(gen: torch.Generator, size: int, gap: int) -> torch.Tensor:
    key = torch.randint(LOW, VOCAB, (size, KEY), generator=gen)
    filler = torch.randint(LOW, VOCAB, (size, gap), generator=gen)
    return torch.cat([key, filler, torch.full((size, 1), SEP), key], 1)


def train(model, steps: int, gap: int, every: int, seed: int) -> list[tuple[int, float]]:
    """(step, greedy copy accuracy on a fresh batch) every `every` steps."""
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    gen, held = torch.Generator().manual_seed(seed), torch.Generator().manual_seed(seed + 1)
    curve = []
    for step in range(1, steps + 1):
        x = batch(gen, 16, gap)
        logits = model(x[:, :-1])[:, -KEY:]
        loss = nn.functional.cross_entropy(logits.flatten(0, 1), x[:, -KEY:].flatten())
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % every == 0:
            with torch.no_grad():
                y = batch(held, 64, gap)
                acc = (model(y[:, :-1])[:, -KEY:].argmax(-1) == y[:, -KEY:]).float().mean().item()
            curve.append((step, acc))
    return curve


def steps_to(curve: list[tuple[int, float]], target: float = 0.9) -> float:
    return next((float(s) for s, a in curve if a >= target), math.nan)


def main() -> None:
    from model.config import model_preset
    from model.multimodal import K25Model

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=1500)
    p.add_argument("--gap", type=int, default=16, help="filler tokens between the key and its copy")
    p.add_argument("--every", type=int, default=100)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                   help="override a field of the tiny ModelConfig (e.g. rope_theta=100), to take the probe apart")
    p.add_argument("--models", default="k25,ref", help="which models to train (comma-separated)")
    p.add_argument("--quick", action="store_true", help="1000 steps")
    args = p.parse_args()
    if args.quick:
        args.steps = min(args.steps, 1000)
    overrides = {k: type(getattr(model_preset("tiny"), k))(v) for k, v in (kv.split("=", 1) for kv in args.set)}
    curves = {}
    for name in args.models.split(","):
        torch.manual_seed(args.seed)
        model = (K25Model(model_preset("tiny", vocab_size=VOCAB, max_seq_len=2048, **overrides), media_pad_id=10)
                 if name == "k25" else PlainTransformer())
        t0 = time.perf_counter()
        curves[name] = train(model, args.steps, args.gap, args.every, args.seed)
        print(f"{name}: accuracy by step {[(s, round(a, 2)) for s, a in curves[name]]} ({time.perf_counter() - t0:.0f} s)",
              flush=True)
    figures = " ".join(f"{n}_steps_to_copy={steps_to(c):.0f} {n}_final_acc={c[-1][1]:.3f}" for n, c in curves.items())
    if {"k25", "ref"} <= set(curves):
        figures += f" ratio={steps_to(curves['k25']) / steps_to(curves['ref']):.2f}"
    print(f"RESULT {figures} gap={args.gap}" + "".join(f" {kv}" for kv in args.set))


if __name__ == "__main__":
    main()
