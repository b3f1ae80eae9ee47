"""The K2.5 policy objective (RECIPE.md §6.1, Eq. 1; POSTTRAIN.md §4.1) and the tensors it reads.

    loss = sum over kept prompts x of  1/N_x * sum_{j, i} [ -m_ij * rho_ij * A_j + tau * (log rho_ij)^2 ]
           / (number of kept prompts)                                        (loss_norm = "prompt")

- rho = pi_theta / pi_old per generated token; pi_old is the rollout engine's recorded
  log-prob (`pi_old=engine`) or the trainer's re-forward at rollout time (`pi_old=recompute`).
- m = 1[alpha <= rho <= beta]: a constant (no gradient of its own) that depends only on the
  ratio, never on the sign of the advantage.
- A_j = r_j - mean of the prompt's K rewards, no std normalisation.
- N_x = sum_j |y_j| counts the prompt's generated (model) tokens only, never the prompt or tool
  results; the loss is the mean over prompts, so a prompt with 5-token answers weighs what a
  prompt with 50-token answers weighs. `loss_norm="batch"` divides by all generated tokens instead.
- Zero-variance groups (all K rewards equal: A = 0) are skipped and counted (DAPO's filter).
- With data parallelism the denominators are global (all-reduced counts), so the averaged
  gradient equals the one-rank full-batch gradient.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from agents.trajectory import Trajectory
from model.multimodal import K25Model


@dataclass
class PolicyBatch:
    """A rollout batch as aligned tensors: row r is one sampled trajectory, position t predicts
    token t+1."""
    tokens: torch.Tensor  # [B, T] ids, right padded
    mask: torch.Tensor  # [B, T-1] 1.0 where token t+1 was sampled by the policy
    logp_engine: torch.Tensor  # [B, T-1] the engine's log-probs (0 off the mask)
    logp_old: torch.Tensor  # [B, T-1] pi_old: the engine's, or the trainer's at rollout time
    rewards: torch.Tensor  # [B]
    groups: torch.Tensor  # [B] the prompt (group) index of each row
    media: list[torch.Tensor]  # every row's media, in row-major placeholder order
    temperature: float  # the sampling temperature (log-probs are of logits / T)

    @property
    def response_lengths(self) -> torch.Tensor:
        return self.mask.sum(-1)


def policy_batch(trajectories: list[Trajectory], rewards: list[float], groups: list[int], pad_id: int,
                 temperature: float) -> PolicyBatch:
    rows = [t.tensors() for t in trajectories]
    width = max(len(r["ids"]) for r in rows)
    B = len(rows)
    tokens = torch.full((B, width), pad_id, dtype=torch.long)
    mask = torch.zeros(B, width - 1)
    logp = torch.zeros(B, width - 1)
    for i, r in enumerate(rows):
        n = len(r["ids"])
        tokens[i, :n] = r["ids"]
        mask[i, : n - 1] = r["loss_mask"][1:].float()  # target t+1 is a model token
        logp[i, : n - 1] = r["logprobs"][1:]
    return PolicyBatch(tokens, mask, logp, logp.clone(), torch.tensor(rewards, dtype=torch.float32),
                       torch.tensor(groups, dtype=torch.long), [m for t in trajectories for m in t.media], temperature)


def token_logprobs(model: K25Model, batch: PolicyBatch) -> torch.Tensor:
    """[B, T-1] log pi_theta(token t+1 | prefix) under the distribution the engine samples from:
    logits / temperature (raw at temperature 0), `<|media_pad|>` excluded."""
    device = model.backbone.head.weight.device
    tokens = batch.tokens.to(device)
    logits = model(tokens[:, :-1], vision_items=batch.media or None).float()  # right padding: causal
    logits[..., model.media_pad_id] = float("-inf")
    if batch.temperature > 0:
        logits = logits / batch.temperature
    return torch.log_softmax(logits, -1).gather(-1, tokens[:, 1:, None]).squeeze(-1)


def group_advantages(rewards: torch.Tensor, groups: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(A = r - group mean, no std normalisation; kept: rows of groups whose rewards vary)."""
    n_groups = int(groups.max()) + 1 if len(groups) else 0
    sums = torch.zeros(n_groups).index_add_(0, groups, rewards)
    counts = torch.zeros(n_groups).index_add_(0, groups, torch.ones_like(rewards))
    mean = sums / counts.clamp_min(1)
    sq = torch.zeros(n_groups).index_add_(0, groups, (rewards - mean[groups]) ** 2)
    varies = sq > 1e-12
    return rewards - mean[groups], varies[groups]


def token_weights(batch: PolicyBatch, kept: torch.Tensor, loss_norm: str) -> tuple[torch.Tensor, float]:
    """Per-token weights of the loss sum and this rank's count for the denominator: prompt
    norm weighs a token 1/N_x (its prompt's generated tokens) and counts kept prompts; batch norm
    weighs every token 1 and counts generated tokens."""
    mask = batch.mask * kept[:, None].float()
    if loss_norm == "batch":
        return mask, float(mask.sum())
    if loss_norm != "prompt":
        raise ValueError(f"loss_norm must be 'prompt' or 'batch', got {loss_norm!r}")
    per_row = mask.sum(-1)
    n_groups = int(batch.groups.max()) + 1
    n_x = torch.zeros(n_groups).index_add_(0, batch.groups, per_row)
    weights = mask / n_x[batch.groups].clamp_min(1)[:, None]
    return weights, float((n_x > 0).sum())


def k25_policy_loss(logp: torch.Tensor, logp_old: torch.Tensor, advantages: torch.Tensor, weights: torch.Tensor,
                    alpha: float, beta: float, tau: float, denominator: float) -> torch.Tensor:
    """Eq. 1 as a loss: sum of weights * (-m rho A + tau (log rho)^2) / denominator, with
    m = 1[alpha <= rho <= beta] detached. `denominator` is the global count of token_weights
    divided by the number of data-parallel ranks (their gradients are averaged)."""
    device = logp.device
    logp_old, advantages, weights = logp_old.to(device), advantages.to(device), weights.to(device)
    # Off-mask positions never enter: a prompt position whose target is `<|media_pad|>` has log-prob
    # -inf, and 0 * inf would poison the sum with NaN.
    log_ratio = torch.where(weights > 0, logp - logp_old, torch.zeros_like(logp))
    m = ((log_ratio >= math.log(alpha)) & (log_ratio <= math.log(beta))).detach()
    # rho only where the mask keeps it: a far-off-policy token (rho = inf) must give 0, not 0 * inf
    ratio = torch.where(m, log_ratio.clamp(max=math.log(beta)).exp(), torch.zeros_like(log_ratio))
    per_token = -ratio * advantages[:, None] + tau * log_ratio.pow(2)
    return (weights * per_token).sum() / max(denominator, 1e-12)


@torch.no_grad()
def ratio_stats(logp: torch.Tensor, batch: PolicyBatch, alpha: float, beta: float) -> dict[str, float]:
    """Diagnostics over the batch's generated tokens: the share outside [alpha, beta] (masked),
    mean |log rho| against pi_old, and the train-inference mismatch KL(pi_engine || pi_theta)
    (k3 estimator on the engine's own samples; at the first update of a rollout batch the
    weights are the engine's, so this is the pure framework mismatch)."""
    mask = batch.mask.to(logp.device)
    n = mask.sum().clamp_min(1)
    on = mask > 0
    zero = torch.zeros_like(logp)
    log_ratio = torch.where(on, logp - batch.logp_old.to(logp.device), zero)
    ratio = log_ratio.exp()
    outside = ((ratio < alpha) | (ratio > beta)).float()
    d = torch.where(on, logp - batch.logp_engine.to(logp.device), zero)  # log pi_theta / pi_engine
    k3 = (d.exp() - 1 - d).clamp_min(0)  # >= 0 in exact arithmetic; rounding can dip below
    return {"masked_fraction": float((outside * mask).sum() / n),
            "mean_abs_log_ratio": float((log_ratio.abs() * mask).sum() / n),
            "mismatch_kl": float((k3 * mask).sum() / n)}


class RolloutCache:
    """Keeps the current rollout batch; batch `i` must be a pure function of (seed, rank, i) and
    the weights at its first step, so a resumed run regenerates what the interrupted one used."""

    def __init__(self, collect):
        self.collect = collect
        self.index, self.batch = None, None

    def get(self, index: int):
        if index != self.index:
            self.index, self.batch = index, self.collect(index)
        return self.batch
