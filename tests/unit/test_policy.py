"""RL pieces: answer extraction, rule rewards, group advantages, the K2.5 policy objective, and the
PARL episode arithmetic."""

import pytest
import torch

from training.parl import critical_steps, parse_agent_count
from training.policy import (
    cut_at_stop,
    final_answer,
    group_advantages,
    k25_policy_loss,
    math_reward,
    reference_answer,
    sequence_logprobs,
)

# ----------------------------------------------------------------------------------------------
# Answers and rewards


@pytest.mark.parametrize("text,expected", [
    ("so the total is\n#### 1,234", "1234"),
    ("#### 72", "72"),
    ("####72", "72"),
    ("#### -5", "-5"),
    ("#### 3.75", "3.75"),
    ("#### .5", ".5"),
    ("#### 1,234,567.25 dollars", "1234567.25"),
    ("#### 18.", "18"),  # a sentence-ending period is not part of the number
    ("first #### 3 then #### 4", "3"),
    ("the answer is 42", None),
    ("####", None),
    ("#### abc", None),
    ("", None),
])
def test_final_answer(text, expected):
    assert final_answer(text) == expected


def test_reference_answer():
    assert reference_answer("Natalia sold 48/2 = 24 clips.\n#### 72") == "72"
    with pytest.raises(ValueError, match="no '#### N' line"):
        reference_answer("no final line here")


@pytest.mark.parametrize("response,reference,expected", [
    ("work\n#### 72", "72", (1.0, True)),
    ("#### 1,000", "1000", (1.0, True)),
    ("#### 72.0", "72", (1.0, True)),  # numerically equal
    ("#### -3", "-3", (1.0, True)),
    ("#### 71", "72", (0.2, False)),  # well formed but wrong: format credit
    ("#### 3", "-3", (0.2, False)),
    ("72", "72", (0.0, False)),  # right number, no final line: nothing
    ("", "72", (0.0, False)),
])
def test_math_reward(response, reference, expected):
    assert math_reward(response, reference, format_reward=0.2) == expected


def test_math_reward_without_format_credit():
    assert math_reward("#### 5", "6", 0.0) == (0.0, False)
    assert math_reward("#### 6", "6", 0.0) == (1.0, True)


def test_cut_at_stop():
    assert cut_at_stop([5, 6, 2, 7, 2], {2}) == [5, 6, 2]
    assert cut_at_stop([5, 6], {2}) == [5, 6]
    assert cut_at_stop([], {2}) == []


# ----------------------------------------------------------------------------------------------
# Advantages


def test_group_advantages_center_each_group_without_std():
    rewards = torch.tensor([1.0, 0.0, 0.0, 0.0, 0.2, 0.2, 1.0, 1.0, 0.5, 0.5, 0.5, 0.5])
    adv = group_advantages(rewards, group_size=4)
    expect = torch.tensor([0.75, -0.25, -0.25, -0.25, -0.4, -0.4, 0.4, 0.4, 0.0, 0.0, 0.0, 0.0])
    torch.testing.assert_close(adv, expect)
    torch.testing.assert_close(adv.view(3, 4).sum(-1), torch.zeros(3))
    # No std normalisation: scaling the rewards scales the advantages.
    torch.testing.assert_close(group_advantages(rewards * 10, 4), expect * 10)
    # Groups are consecutive blocks of group_size samples.
    torch.testing.assert_close(group_advantages(torch.tensor([1.0, 0.0, 0.0, 0.0]), 2), torch.tensor([0.5, -0.5, 0.0, 0.0]))


def test_group_advantages_rejects_partial_groups():
    with pytest.raises(RuntimeError):
        group_advantages(torch.tensor([1.0, 0.0, 1.0]), 2)


# ----------------------------------------------------------------------------------------------
# K2.5 policy objective


def setup_case():
    logp_old = torch.log(torch.tensor([[0.5, 0.5, 0.5, 0.5, 0.5], [0.4, 0.4, 0.4, 0.4, 0.4]]))
    ratio = torch.tensor([[1.0, 0.3, 2.5, 1.5, 0.6], [0.49, 2.01, 1.2, 0.8, 3.0]])
    logp = (logp_old + ratio.log()).clone().requires_grad_(True)
    mask = torch.tensor([[1.0, 1, 1, 1, 1], [1, 1, 1, 1, 0]])  # the last token is padding
    return logp, logp_old, ratio, mask


def test_policy_loss_masks_gradient_outside_the_ratio_band():
    logp, logp_old, ratio, mask = setup_case()
    adv = torch.tensor([1.0, -2.0])
    loss, stats = k25_policy_loss(logp, logp_old, adv, mask, 0.5, 2.0, tau=0.0)
    loss.backward()
    inside = (ratio >= 0.5) & (ratio <= 2.0) & (mask > 0)
    n = mask.sum()
    # d/dlogp of -rho*A/N is -rho*A/N on kept tokens; exactly zero elsewhere (and on padding).
    expect = torch.where(inside, -ratio * adv[:, None] / n, torch.zeros_like(ratio))
    torch.testing.assert_close(logp.grad, expect)
    assert (logp.grad[~inside] == 0).all()
    assert inside.sum() == 5
    expect_loss = -(ratio * adv[:, None] * inside).sum() / n
    torch.testing.assert_close(loss, expect_loss)
    assert stats["masked_token_fraction"] == pytest.approx(1 - 5 / 9)


def test_policy_loss_penalty_still_pulls_masked_tokens_back():
    logp, logp_old, ratio, mask = setup_case()
    tau = 0.1
    loss, _ = k25_policy_loss(logp, logp_old, torch.tensor([1.0, -2.0]), mask, 0.5, 2.0, tau)
    loss.backward()
    outside = ((ratio < 0.5) | (ratio > 2.0)) & (mask > 0)
    # The squared log-ratio penalty is the only gradient on out-of-band tokens.
    expect = 2 * tau * ratio.log() / mask.sum()
    torch.testing.assert_close(logp.grad[outside], expect[outside])
    assert (logp.grad[mask == 0] == 0).all()


def test_policy_loss_is_the_penalty_when_advantages_are_zero():
    logp, logp_old, ratio, mask = setup_case()
    tau = 0.05
    loss, stats = k25_policy_loss(logp, logp_old, torch.zeros(2), mask, 0.5, 2.0, tau)
    log_ratio = ratio.log()[mask > 0]
    torch.testing.assert_close(loss, tau * log_ratio.pow(2).mean())
    assert stats["mean_log_ratio"] == pytest.approx(float(log_ratio.mean()), rel=1e-5)


def test_policy_loss_on_policy_equals_reinforce():
    # pi == pi_old: ratio 1, the penalty is 0 and its gradient is -A/N per token.
    logp = torch.log(torch.rand(2, 3) * 0.9 + 0.05).requires_grad_(True)
    adv = torch.tensor([0.5, -1.5])
    mask = torch.ones(2, 3)
    loss, stats = k25_policy_loss(logp, logp.detach(), adv, mask, 0.5, 2.0, 0.01)
    loss.backward()
    torch.testing.assert_close(logp.grad, (-adv[:, None] / 6).expand(2, 3))
    assert stats["masked_token_fraction"] == 0.0


def test_sequence_logprobs_masks_only_response_tokens():
    class Uniform(torch.nn.Module):
        """A stand-in policy: logits depend on the previous token only (log-probs are checkable)."""

        def __init__(self):
            super().__init__()
            self.backbone = torch.nn.Module()
            self.backbone.head = torch.nn.Linear(1, 1)
            self.table = torch.randn(8, 8)

        def forward(self, tokens):
            return self.table[tokens]

    model = Uniform()
    prompts, responses = [[1, 2, 3], [4]], [[5, 6], [7, 1, 2]]
    logp, mask = sequence_logprobs(model, prompts, responses, pad_id=0)
    table = torch.log_softmax(model.table, -1)
    assert logp.shape == mask.shape == (2, 4)
    assert mask.tolist() == [[0, 0, 1, 1], [1, 1, 1, 0]]
    torch.testing.assert_close(logp[0, 2:], torch.stack([table[3, 5], table[5, 6]]))
    torch.testing.assert_close(logp[1, :3], torch.stack([table[4, 7], table[7, 1], table[1, 2]]))


# ----------------------------------------------------------------------------------------------
# PARL


@pytest.mark.parametrize("subtasks,agents,expected", [
    (4, 1, (6, 4)),
    (4, 2, (4, 2)),
    (4, 3, (4, 2)),  # a third agent does not shorten the longest branch
    (4, 4, (3, 1)),
    (5, 2, (5, 3)),
    (1, 1, (3, 1)),
])
def test_critical_steps(subtasks, agents, expected):
    assert critical_steps(subtasks, agents) == expected


def test_more_agents_never_lengthen_the_episode():
    for n in range(1, 9):
        steps = [critical_steps(n, a)[0] for a in range(1, n + 1)]
        assert steps == sorted(steps, reverse=True)
        assert steps[0] == n + 2 and steps[-1] == 3


@pytest.mark.parametrize("text,expected", [
    ("3", 3),
    ("I will launch 2 sub-agents.", 2),
    ("Use 2 or 3 agents", 2),  # the first integer counts
    ("10", 4),  # clamped to the number of subtasks
    ("0", 1),
    ("four", 1),  # no number: serial
    ("", 1),
])
def test_parse_agent_count(text, expected):
    assert parse_agent_count(text, max_agents=4) == expected
