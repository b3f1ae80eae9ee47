"""Loader headroom: batches/s of the full streaming loader vs the tiny trainer's steps/s.

    python -m benchmarks.bench_loader [--quick] [--workers 2] [--batches 300] [--steps 20] [--stage joint_pretrain]

Builds the tiny curated data (a few seconds), then times, on the stage's batch shape:
  - loader: batches/s of `StreamingLoader` (shard streaming, decoding, tokenising, packing, the
    worker processes and the mask) after the first batch, which includes worker start-up;
  - trainer: steps/s of the tiny model (forward + backward + AdamW step) on loader batches,
    one rank, as one rank of the tiny pre-training stage runs it.
Headroom = loader batches/s / trainer steps/s (target >= 10). Both sides share the same CPU cores,
so on 2 cores the loader's figure is measured alone, as a ceiling for what it can feed.
"""

from __future__ import annotations

import argparse
import tempfile
import time

import torch


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--batches", type=int, default=300)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--stage", default="joint_pretrain")
    p.add_argument("--quick", action="store_true", help="100 batches, 8 steps (well under 3 minutes on 2 cores)")
    args = p.parse_args()
    if args.quick:
        args.batches, args.steps = 100, 8

    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    import helpers

    import recipes
    from curation.mixture import read_mixture
    from model.config import model_preset
    from model.multimodal import K25Model
    from training.data import load_vocab
    from training.loader import StreamingLoader

    spec = recipes.resolve_stage("tiny", args.stage, {"data.num_workers": args.workers})
    cfg = spec.data
    torch.set_num_threads(1)  # as the stage programs run (OMP_NUM_THREADS=1 per rank)
    with tempfile.TemporaryDirectory(prefix="bench-loader-") as root:
        data = helpers.build_tiny_data(root)
        mixture = read_mixture(data.mixture_uri)
        vocab = load_vocab(mixture)

        def loader():
            return StreamingLoader.from_spec(mixture, vocab, cfg, spec.train.seed, 10**6, dp_rank=0, dp_size=2)

        ld = loader()
        t0 = time.perf_counter()
        first = ld.batch(0)
        startup = time.perf_counter() - t0
        t0 = time.perf_counter()
        for s in range(1, args.batches + 1):
            ld.batch(s)
        loader_rate = args.batches / (time.perf_counter() - t0)
        ld.close()

        torch.manual_seed(0)
        model = K25Model(model_preset("tiny", vocab_size=vocab.size), media_pad_id=vocab.media_pad)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
        ld = loader()
        batches = [ld.batch(s) for s in range(args.steps + 2)]
        ld.close()

        def step(b):
            loss = model.loss(b.tokens, b.targets, b.vision_items, b.attn_mask)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

        for b in batches[:2]:  # warm-up
            step(b)
        t0 = time.perf_counter()
        for b in batches[2:]:
            step(b)
        trainer_rate = args.steps / (time.perf_counter() - t0)

    print(f"stage {args.stage}: batch {cfg.batch_size} x {cfg.seq_len}, workers {args.workers}, "
          f"first batch {startup * 1000:.0f} ms (worker start-up), vision items/batch {len(first.vision_items)}")
    print(f"loader   batches/s {loader_rate:8.1f}")
    print(f"trainer  steps/s   {trainer_rate:8.1f}")
    print(f"headroom {loader_rate / trainer_rate:.1f}x (target >= 10x)")
    print(f"RESULT loader_batches_per_s={loader_rate:.1f} trainer_steps_per_s={trainer_rate:.1f} "
          f"headroom={loader_rate / trainer_rate:.1f}")


if __name__ == "__main__":
    main()
