"""What the in-process RL benchmarks share: cross-entropy training of a tiny model on chat
conversations (a warm-up, an SFT, a judge), the way the SFT stage encodes them."""

from __future__ import annotations

import random
from typing import Callable

import torch


def ce_train(model, vocab, draw_batch: Callable[[random.Random], list[list[dict]]], steps: int, lr: float,
             seed: int, schedule: bool = True, max_len: int = 0, clip: float = 0.0,
             all_token_steps: int = 0) -> float:
    """`steps` AdamW steps on `draw_batch(rng)` conversations each (loss on assistant turns only,
    media spliced as in training); with `schedule`, 20 warm-up steps then a linear decay to 10%;
    rows longer than `max_len` (0: no cap) keep their first `max_len` tokens (text rows only);
    `clip` > 0 clips the gradient norm; the first `all_token_steps` steps put the loss on every
    token (pre-training style), not only on assistant turns. Returns the last loss."""
    from agents.chat import media_of
    from training.data import encode_conversation

    rng = random.Random(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 20) * max(0.1, 1 - s / steps)
                                              if schedule else 1.0)
    loss = torch.tensor(0.0)
    for step in range(steps):
        batch = draw_batch(rng)
        rows = [encode_conversation(c, vocab) for c in batch]
        if step < all_token_steps:
            rows = [(i, list(i)) for i, _ in rows]
        if max_len:
            rows = [(i[:max_len], lab[:max_len]) for i, lab in rows]
        width = max(len(i) for i, _ in rows)
        tokens = torch.tensor([i + [vocab.pad] * (width - len(i)) for i, _ in rows])
        labels = torch.tensor([lab + [-100] * (width - len(lab)) for _, lab in rows])
        media = [m for c in batch for m in media_of(c)]
        loss = model.loss(tokens[:, :-1], labels[:, 1:], vision_items=media or None)
        opt.zero_grad()
        loss.backward()
        if clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        opt.step()
        sched.step()
    return float(loss.detach())


def rl_updates(model, opt, prepared, cfg) -> None:
    """`cfg.updates_per_rollout` Eq. 1 steps on one prepared rollout batch, in one process (the
    denominator is this process's own token count, as one rank's would be)."""
    from training.rl import policy_loss

    for _ in range(cfg.updates_per_rollout):
        loss, _ = policy_loss(model, prepared, cfg, max(prepared.count, 1.0))
        opt.zero_grad()
        loss.backward()
        opt.step()
