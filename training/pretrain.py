"""Pre-training stages: ViT warm-up, joint pre-training and long-context mid-training.

    torchrun --nproc-per-node 2 -m training.pretrain --stage joint_pretrain --profile tiny \
        --mixture <artifact root>/mixture/mixture.json --run-dir <uri> --init-from <checkpoint uri>

The stage's config decides the sources (vision-only captions for the warm-up, the token-level
10:90 vision:text mix for joint pre-training), the trainable modules and the context length.
"""

from __future__ import annotations

from training.data import MixtureLoader
from training.engine import Engine, parse_args

STAGES = ("vit_warmup", "joint_pretrain", "midtrain")


def main(argv: list[str] | None = None) -> None:
    engine = Engine(parse_args(STAGES, argv))
    cfg = engine.cfg
    loader = MixtureLoader(engine.mixture, engine.vocab, cfg.sources, cfg.vision_ratio, cfg.seq_len,
                           cfg.batch_size, cfg.seed, engine.rank, engine.world)
    device = engine.device

    def step_fn(step: int):
        b = loader.batch(step)
        loss = engine.model.loss(b.tokens.to(device), b.targets.to(device), b.vision_items, b.attn_mask.to(device))
        total = b.text_tokens + b.vision_tokens
        return loss, {"vision_token_ratio": b.vision_tokens / max(1, total)}, total

    engine.fit(step_fn, loader.state_dict)


if __name__ == "__main__":
    main()
