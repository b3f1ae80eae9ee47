"""The K2.5 objective (Eq. 1): a hand-computed case, the ratio mask, per-prompt normalisation,
zero-variance groups, 2-rank gloo against 1-rank gradients, and engine against trainer log-probs;
plus the PARL episode arithmetic."""

import asyncio
import math
import os
import socket

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from agents.engine import BatchingEngine, GenerateRequest, SamplingParams
from agents.trajectory import Trajectory
from model.config import model_preset
from model.multimodal import K25Model
from model.vision import vision_token_count
from training.policy import (
    PolicyBatch,
    group_advantages,
    k25_policy_loss,
    policy_batch,
    ratio_stats,
    token_logprobs,
    token_weights,
)

MEDIA_PAD = 10


def batch_of(mask, rewards, groups, logp_old=None):
    mask = torch.as_tensor(mask, dtype=torch.float32)
    B, L = mask.shape
    old = torch.zeros(B, L) if logp_old is None else torch.as_tensor(logp_old, dtype=torch.float32)
    return PolicyBatch(torch.zeros(B, L + 1, dtype=torch.long), mask, old.clone(), old,
                       torch.tensor(rewards, dtype=torch.float32), torch.tensor(groups), [], 1.0)


# ---- the hand-computed 2x3 case

def test_loss_and_gradient_equal_the_hand_computed_2x3_case():
    # one prompt, two answers of three tokens; pi_old = 0.5 everywhere
    old = torch.full((2, 3), math.log(0.5))
    ratios = torch.tensor([[1.0, 1.2, 0.5], [1.0, 1.5, 0.9]])
    logp = (old + ratios.log()).requires_grad_(True)
    batch = batch_of(torch.ones(2, 3), [1.0, 0.0], [0, 0], old)
    adv, kept = group_advantages(batch.rewards, batch.groups)
    assert adv.tolist() == [0.5, -0.5] and kept.all()
    weights, count = token_weights(batch, kept, "prompt")
    assert count == 1.0  # one prompt
    loss = k25_policy_loss(logp, batch.logp_old, adv, weights, alpha=0.6, beta=1.4, tau=0.1, denominator=count)
    # by hand: per token -m*rho*A + tau*(log rho)^2, m = [[1,1,0],[1,0,1]], summed, over N = 6
    #   row 0: -0.5, -0.6 + 0.1*ln(1.2)^2, 0.1*ln(0.5)^2;  row 1: 0.5, 0.1*ln(1.5)^2, 0.45 + 0.1*ln(0.9)^2
    assert float(loss.detach()) == pytest.approx(-0.0810803 / 6, abs=1e-6)
    loss.backward()
    # d/dlogp = (-m*rho*A + 2*tau*log rho) / 6
    expect = torch.tensor([[-0.5, -0.5635357, -0.1386294], [0.5, 0.0810930, 0.4289279]]) / 6
    torch.testing.assert_close(logp.grad, expect, atol=1e-6, rtol=0)


@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_tokens_outside_the_ratio_band_get_zero_gradient_for_either_sign(sign):
    old = torch.zeros(2, 4)
    ratios = torch.tensor([[0.3, 1.0, 2.5, 1.1], [0.9, 4.0, 0.49, 1.0]])
    logp = ratios.log().requires_grad_(True)
    batch = batch_of(torch.ones(2, 4), [1.0 if sign > 0 else 0.0, 0.0 if sign > 0 else 1.0], [0, 0], old)
    adv, kept = group_advantages(batch.rewards, batch.groups)
    weights, count = token_weights(batch, kept, "prompt")
    k25_policy_loss(logp, batch.logp_old, adv, weights, 0.5, 2.0, tau=0.0, denominator=count).backward()
    outside = (ratios < 0.5) | (ratios > 2.0)
    assert (logp.grad[outside] == 0).all()
    assert (logp.grad[~outside] != 0).all()
    stats = ratio_stats(logp.detach(), batch, 0.5, 2.0)
    assert stats["masked_fraction"] == pytest.approx(4 / 8)


def test_a_short_and_a_long_answer_prompt_weigh_the_same_per_prompt():
    # prompt 0 answers with 5 tokens, prompt 1 with 50; each group rewards [1, 0]
    L = 50
    mask = torch.zeros(4, L)
    mask[0:2, :5] = 1
    mask[2:4, :] = 1
    batch = batch_of(mask, [1.0, 0.0, 1.0, 0.0], [0, 0, 1, 1])
    adv, kept = group_advantages(batch.rewards, batch.groups)

    def group_grad(norm):
        logp = torch.zeros(4, L, requires_grad=True)
        weights, count = token_weights(batch, kept, norm)
        k25_policy_loss(logp, batch.logp_old, adv, weights, 0.5, 2.0, 0.0, count).backward()
        g = logp.grad.abs()
        return float(g[:2].sum()), float(g[2:].sum())

    short, long = group_grad("prompt")
    assert short == pytest.approx(long)
    short, long = group_grad("batch")
    assert long == pytest.approx(10 * short)  # batch normalisation favours long answers


def test_zero_variance_groups_are_skipped_and_do_not_count():
    batch = batch_of(torch.ones(6, 3), [1.0, 1.0, 0.0, 1.0, 0.5, 0.5], [0, 0, 1, 1, 2, 2])
    adv, kept = group_advantages(batch.rewards, batch.groups)
    assert kept.tolist() == [False, False, True, True, False, False]
    weights, count = token_weights(batch, kept, "prompt")
    assert count == 1.0 and float(weights[:2].sum()) == 0 and float(weights[4:].sum()) == 0
    _, count = token_weights(batch, kept, "batch")
    assert count == 6.0
    with pytest.raises(ValueError, match="loss_norm"):
        token_weights(batch, kept, "token")


def test_masked_positions_never_enter_ratio_or_normaliser():
    # a masked (prompt / tool) position with a garbage old log-prob changes nothing
    mask = torch.tensor([[0.0, 1.0, 1.0], [1.0, 1.0, 0.0]])
    old = torch.tensor([[-50.0, 0.0, 0.0], [0.0, 0.0, 99.0]])
    batch = batch_of(mask, [1.0, 0.0], [0, 0], old)
    adv, kept = group_advantages(batch.rewards, batch.groups)
    weights, count = token_weights(batch, kept, "prompt")
    logp = torch.zeros(2, 3)
    loss = k25_policy_loss(logp, batch.logp_old, adv, weights, 0.5, 2.0, 0.1, count)
    assert float(loss) == pytest.approx((-0.5 * 2 + 0.5 * 2) / 4)
    assert ratio_stats(logp, batch, 0.5, 2.0)["masked_fraction"] == 0.0


def test_a_far_off_policy_token_gives_zero_not_nan():
    # an engine log-prob near -inf makes rho overflow; the token is outside the band: no NaN
    old = torch.tensor([[-200.0, -1.0, -1.0], [-1.0, -1.0, -1.0]])
    logp = torch.full((2, 3), -1.0, requires_grad=True)
    batch = batch_of(torch.ones(2, 3), [1.0, 0.0], [0, 0], old)
    adv, kept = group_advantages(batch.rewards, batch.groups)
    weights, count = token_weights(batch, kept, "prompt")
    loss = k25_policy_loss(logp, batch.logp_old, adv, weights, 0.5, 2.0, 0.0, count)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(logp.grad).all() and logp.grad[0, 0] == 0


# ---- 2 ranks vs 1

def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _tiny_policy():
    torch.manual_seed(0)
    return K25Model(model_preset("tiny", vocab_size=128), media_pad_id=MEDIA_PAD)


def _dp_batch():
    """Four prompts (two rows each) of different answer lengths; prompt 2 has zero variance.
    Rank 0 gets prompts 0-1, rank 1 prompts 2-3: the ranks keep 2 and 1 prompts."""
    g = torch.Generator().manual_seed(1)
    B, T = 8, 12
    tokens = torch.randint(20, 128, (B, T), generator=g)
    mask = torch.zeros(B, T - 1)
    for r, n in enumerate([3, 5, 8, 2, 4, 4, 9, 6]):
        mask[r, 11 - n:] = 1
    rewards = torch.tensor([1.0, 0.0, 0.3, 0.9, 1.0, 1.0, 0.0, 1.0])
    groups = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
    old = torch.randn(B, T - 1, generator=g) * 0.1 - 4.0
    return tokens, mask, rewards, groups, old


def _loss_grad(model, rows, world):
    tokens, mask, rewards, groups, old = _dp_batch()
    gid = groups[rows] - groups[rows].min()
    batch = PolicyBatch(tokens[rows], mask[rows], old[rows], old[rows], rewards[rows], gid, [], 1.0)
    adv, kept = group_advantages(batch.rewards, batch.groups)
    weights, count = token_weights(batch, kept, "prompt")
    total = torch.tensor([count])
    if world > 1:
        dist.all_reduce(total)
    loss = k25_policy_loss(token_logprobs(model, batch), batch.logp_old, adv, weights, 0.5, 2.0, 0.05,
                           float(total) / world)
    model.zero_grad()
    loss.backward()
    flat = torch.cat([p.grad.reshape(-1) for p in model.parameters() if p.grad is not None])
    if world > 1:
        dist.all_reduce(flat)
        flat /= world
    return flat


def _rank(rank, port, out):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    try:
        rows = torch.arange(0, 4) if rank == 0 else torch.arange(4, 8)
        flat = _loss_grad(_tiny_policy(), rows, 2)
        if rank == 0:
            torch.save(flat, out)
    finally:
        dist.destroy_process_group()


def test_two_rank_gloo_gradients_equal_one_rank_full_batch(tmp_path):
    out = str(tmp_path / "grad.pt")
    mp.start_processes(_rank, args=(_free_port(), out), nprocs=2, join=True, start_method="spawn")
    two = torch.load(out)
    one = _loss_grad(_tiny_policy(), torch.arange(8), 1)
    assert one.abs().max() > 0
    torch.testing.assert_close(two, one, atol=1e-6, rtol=1e-5)


# ---- engine vs trainer log-probs

def test_engine_and_trainer_logprobs_agree_on_a_recorded_multiturn_trajectory():
    torch.manual_seed(0)
    model = K25Model(model_preset("tiny", vocab_size=256), media_pad_id=MEDIA_PAD).eval()
    image = torch.from_numpy(np.random.default_rng(0).integers(0, 255, (56, 84, 3), dtype=np.uint8))
    prompt = [30, 31] + [MEDIA_PAD] * vision_token_count(56, 84) + [40, 41, 42]
    tool = [50, 51, 52, 53]
    engine = BatchingEngine(model, slots=4)

    async def episode():
        s = SamplingParams(max_new_tokens=7, temperature=0.8, seed=3)
        first = await engine.generate(GenerateRequest(prompt, [image], s, keep=True))
        second = await engine.generate(GenerateRequest(tool, [], SamplingParams(6, 0.8, 1.0, 4), session=first.session))
        engine.release(second.session)
        return first, second

    first, second = asyncio.run(episode())
    traj = Trajectory()
    traj.add_context(prompt, "prompt", [image])
    traj.add_model(first)
    traj.add_context(tool, "tool")
    traj.add_model(second)
    batch = policy_batch([traj], [1.0], [0], pad_id=0, temperature=0.8)
    with torch.no_grad():
        trainer = token_logprobs(model, batch)
    on = batch.mask.bool()
    assert int(on.sum()) == len(first.ids) + len(second.ids)
    diff = (trainer[on] - batch.logp_engine[on]).abs().max()
    assert diff < 1e-4
    stats = ratio_stats(trainer, batch, 0.5, 2.0)
    assert stats["mismatch_kl"] < 1e-6 and stats["masked_fraction"] == 0.0
    # the prompt's media positions have log-prob -inf (placeholders are never sampled); they
    # must not reach the loss or its gradient
    pair = policy_batch([traj, traj], [1.0, 0.0], [0, 0], pad_id=0, temperature=0.8)
    logp = token_logprobs(model, pair)
    assert torch.isinf(logp).any()
    adv, kept = group_advantages(pair.rewards, pair.groups)
    weights, count = token_weights(pair, kept, "prompt")
    loss = k25_policy_loss(logp, pair.logp_old, adv, weights, 0.5, 2.0, 0.1, count)
    loss.backward()
    assert torch.isfinite(loss) and all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
