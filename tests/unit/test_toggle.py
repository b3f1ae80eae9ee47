"""Toggle (Eq. 2): the truth table, the budget percentile over correct samples only, the phase
schedule, and the budget file that a resumed run reads instead of re-estimating."""

import pandas as pd
import pytest

from training.toggle import BUDGETS_FILE, Budgets, budget_from_samples, phase, toggle_rewards


def test_phase_schedule_alternates_every_m_iterations():
    assert [phase(t, 2) for t in range(8)] == [0, 0, 1, 1, 0, 0, 1, 1]
    assert [phase(t, 3) for t in range(7)] == [0, 0, 0, 1, 1, 1, 0]


@pytest.mark.parametrize("rewards,lengths,budget,ph,expect,active", [
    # phase 1: the standard reward, whatever the length
    ([1, 1, 0, 1], [10, 90, 50, 70], 40, 1, [1, 1, 0, 1], False),
    # phase 0, mean accuracy 0.75 >= lambda: over-budget rewards are zeroed
    ([1, 1, 0, 1], [10, 90, 50, 40], 40, 0, [1, 0, 0, 1], True),
    # phase 0, mean accuracy 0.25 < lambda: unconstrained (no premature sacrifice of quality)
    ([1, 0, 0, 0], [90, 10, 10, 10], 40, 0, [1, 0, 0, 0], False),
    # phase 0, no budget (no correct sample in the budget pass): unconstrained
    ([1, 1, 1, 1], [90, 90, 90, 90], None, 0, [1, 1, 1, 1], False),
    # exactly at the budget is within it; exactly at lambda binds
    ([1, 1, 0, 0], [40, 41, 5, 5], 40, 0, [1, 0, 0, 0], True),
])
def test_eq2_truth_table(rewards, lengths, budget, ph, expect, active):
    res = toggle_rewards([float(r) for r in rewards], lengths, budget, ph, lam=0.5)
    assert res.rewards == [float(r) for r in expect] and res.active is active
    assert res.zeroed == sum(a != b for a, b in zip(rewards, expect))


def test_budget_is_the_percentile_of_correct_lengths_only():
    lengths = [10, 20, 30, 1000, 5]
    correct = [True, True, True, False, False]
    assert budget_from_samples(lengths, correct, 50) == 20.0
    assert budget_from_samples(lengths, correct, 100) == 30.0  # the long wrong answer never counts
    assert budget_from_samples(lengths, [False] * 5, 50) is None


def test_budget_file_round_trip_and_resume_reads_it(tmp_path):
    rows = [{"task_id": "b", "budget": 12.5, "n_correct": 2, "n_samples": 4},
            {"task_id": "a", "budget": None, "n_correct": 0, "n_samples": 4}]
    budgets = Budgets.from_rows(rows)
    assert Budgets.load(str(tmp_path)) is None  # nothing yet: the run estimates
    uri = budgets.write(str(tmp_path))
    assert uri.endswith(BUDGETS_FILE)
    again = Budgets.load(str(tmp_path))
    assert again.digest == budgets.digest and again.table == {"a": None, "b": 12.5}
    assert again.n_correct == {"a": 0, "b": 2} and again.share_with_budget() == 0.5
    # the same rows in another order give the same file (the digest identifies the estimate)
    assert Budgets.from_rows(rows[::-1]).digest == budgets.digest
    # a resumed run reads the file as written, even if re-estimating would now give other values
    frame = pd.read_parquet(tmp_path / BUDGETS_FILE)
    assert list(frame.task_id) == ["a", "b"]
    with pytest.raises(KeyError, match="budget pass covers the whole pool"):
        again.get("zzz")
