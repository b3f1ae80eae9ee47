"""Pieces shared by the RL and PARL programs: rollouts, log-probs, the K2.5 policy objective and
rule-based math rewards."""

from __future__ import annotations

import re

import torch

from agents.chat import render
from model.multimodal import K25Model
from model.tokens import Vocab

_FINAL = re.compile(r"####\s*\$?\s*(-?[\d,]*\.?\d+)")


def final_answer(text: str) -> str | None:
    """The `#### N` answer of a GSM8K-style response, commas removed."""
    m = _FINAL.search(text)
    return m.group(1).replace(",", "") if m else None


def reference_answer(gsm8k_answer: str) -> str:
    ans = final_answer(gsm8k_answer)
    if ans is None:
        raise ValueError(f"reference has no '#### N' line: {gsm8k_answer[-80:]!r}")
    return ans


def math_reward(response: str, reference: str, format_reward: float) -> tuple[float, bool]:
    """1 for the right final number; `format_reward` for a well-formed but wrong final line."""
    got = final_answer(response)
    if got is None:
        return 0.0, False
    try:
        correct = abs(float(got) - float(reference)) < 1e-6
    except ValueError:
        correct = False
    return (1.0 if correct else format_reward), correct


def prompt_ids(vocab: Vocab, question: str) -> list[int]:
    return render([{"role": "user", "content": question}], vocab, add_generation_prompt=True)


def sequence_logprobs(model: K25Model, prompts: list[list[int]], responses: list[list[int]], pad_id: int):
    """Per-token log-probs of each response given its prompt: ([N, L] log-probs, [N, L] mask)."""
    seqs = [p + r for p, r in zip(prompts, responses)]
    width = max(len(s) for s in seqs)
    device = model.backbone.head.weight.device
    tokens = torch.tensor([s + [pad_id] * (width - len(s)) for s in seqs], device=device)
    logits = model(tokens[:, :-1])  # right padding: causal attention never sees it
    logp = torch.log_softmax(logits.float(), -1).gather(-1, tokens[:, 1:, None]).squeeze(-1)
    mask = torch.zeros_like(logp)
    for i, (p, r) in enumerate(zip(prompts, responses)):
        mask[i, len(p) - 1: len(p) - 1 + len(r)] = 1.0
    return logp, mask


def k25_policy_loss(logp: torch.Tensor, logp_old: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor,
                    ratio_low: float, ratio_high: float, tau: float) -> tuple[torch.Tensor, dict[str, float]]:
    """RECIPE.md §6.1: loss = -1/N sum m*rho*A + tau/N sum (log rho)^2, with N the number of
    generated tokens and m = 1[alpha <= rho <= beta] a constant gradient mask (token-level)."""
    log_ratio = logp - logp_old
    ratio = log_ratio.exp()
    keep = ((ratio >= ratio_low) & (ratio <= ratio_high)).float().detach() * mask
    n = mask.sum().clamp_min(1.0)
    pg = -(keep * ratio * advantages[:, None]).sum() / n
    penalty = tau * (log_ratio.pow(2) * mask).sum() / n
    with torch.no_grad():
        stats = {"masked_token_fraction": float(1 - keep.sum() / n), "mean_log_ratio": float((log_ratio * mask).sum() / n)}
    return pg + penalty, stats


def group_advantages(rewards: torch.Tensor, group_size: int) -> torch.Tensor:
    """r - mean over the prompt's K samples; no std normalisation (K2.5)."""
    g = rewards.view(-1, group_size)
    return (g - g.mean(-1, keepdim=True)).reshape(-1)


def cut_at_stop(ids: list[int], stop: set[int]) -> list[int]:
    for i, t in enumerate(ids):
        if t in stop:
            return ids[: i + 1]
    return ids



def policy_step(engine, batch: dict, group_size: int) -> tuple[torch.Tensor, dict[str, float], int]:
    """One optimizer step's loss on a stored rollout batch (prompts, responses, rewards, pi_old)."""
    cfg = engine.spec
    engine.model.train()
    logp, mask = sequence_logprobs(engine.model, batch["prompts"], batch["responses"], engine.vocab.pad)
    adv = group_advantages(batch["rewards"], group_size).to(logp.device)
    loss, stats = k25_policy_loss(logp, batch["logp_old"], adv, mask, cfg.rl.ratio_low, cfg.rl.ratio_high, cfg.rl.kl_tau)
    stats.update(reward_mean=float(batch["rewards"].mean()), response_tokens=float(mask.sum() / mask.shape[0]))
    return loss, stats, int(mask.sum())


class RolloutCache:
    """Keeps the current rollout batch; batch `i` must be a pure function of (seed, rank, i) so
    a resumed run regenerates exactly what the interrupted one used."""

    def __init__(self, collect):
        self.collect = collect
        self.index, self.batch = None, None

    def get(self, index: int) -> dict:
        if index != self.index:
            self.index, self.batch = index, self.collect(index)
        return self.batch
