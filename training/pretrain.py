"""Pre-training stages: ViT warm-up, joint pre-training and long-context mid-training.

    torchrun --nproc-per-node 2 -m training.pretrain --stage joint_pretrain --profile tiny \
        --mixture <artifact root>/mixture/mixture.json --run-dir <uri> --init-from <checkpoint uri>

The stage's config decides the sources (vision-only captions for the warm-up, the token-level
10:90 vision:text mix for joint pre-training), the trainable modules and the context length.
Batches come from the streaming loader (training/loader.py); its state is saved per rank in
every checkpoint and restored on resume, so a resumed run sees exactly the batches it would have.
"""

from __future__ import annotations

import torch.distributed as dist

from training.dep import dep_loss_and_backward
from training.engine import Engine, parse_args
from training.loader import LoaderStateError, StreamingLoader
from training.reporting import fail

STAGES = ("vit_warmup", "joint_pretrain", "midtrain")


def main(argv: list[str] | None = None) -> None:
    engine = Engine(parse_args(STAGES, argv))
    cfg = engine.cfg
    try:  # data parallel only for now: the DP rank is the global rank
        loader = StreamingLoader(engine.mixture, engine.vocab, cfg.sources, cfg.vision_ratio, cfg.seq_len,
                                 cfg.batch_size, cfg.seed, engine.rank, engine.world, num_workers=cfg.num_workers,
                                 text_only_warmup_fraction=cfg.text_only_warmup_fraction, steps=cfg.steps,
                                 state=engine.loader_state or None)
    except LoaderStateError as e:
        fail(f"cannot resume the data loader: {e}")
    if engine.step != loader.delivered:
        fail(f"checkpoint step {engine.step} but the loader state has delivered {loader.delivered} batches")
    device = engine.device

    use_dep = cfg.dep and dist.is_initialized() and engine.world > 1

    def step_fn(step: int):
        b = loader.batch(step)
        args = (b.tokens.to(device), b.targets.to(device))
        if use_dep:  # every rank, every step (collective), also for text-only batches
            loss = dep_loss_and_backward(engine.model, *args, b.attn_mask.to(device), b.vision_items)
        else:
            loss = engine.model.loss(*args, b.vision_items, b.attn_mask.to(device))
        total = b.text_tokens + b.vision_tokens
        metrics = {"vision_token_ratio": b.vision_tokens / max(1, total)}
        if (step + 1) % cfg.ratio_log_every == 0:
            window = loader.window_ratio(cfg.ratio_log_every)
            engine.reporter.metrics(step + 1, {"vision_token_ratio_window": window})
        return loss, metrics, total

    try:
        engine.fit(step_fn, loader.state_dict)
    finally:
        loader.close()


if __name__ == "__main__":
    main()
