"""The RL objective learns: the learnability check of benchmarks/bench_rl_learn.py on one seed
(the benchmark runs three). The stage's own rollout, reward and loss code trains a warmed-up
tiny policy to end its answers with the phrase the instruction asks for."""

import pytest

from benchmarks.bench_rl_learn import gain, run_seed
from infra.settings import default_data_root

pytestmark = pytest.mark.integration


def test_mean_reward_rises_by_at_least_0_2(vocab):
    curve = run_seed(vocab, 0, "amen", iterations=20, warmup_steps=100, prompts=8, group=8, lr=1e-3,
                     data_root=default_data_root())
    assert gain(curve) >= 0.2, curve
