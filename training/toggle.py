"""Toggle (RECIPE.md §6.4, Eq. 2; POSTTRAIN.md §4.5): token-efficient RL by alternating phases.

    phase(t) = floor(t / m) mod 2
    phase 0 (budget-limited):  r~(x, y) = r(x, y) * 1[ mean_K r(x, .) < lambda  or  |y| <= budget(x) ]
    phase 1 (standard scaling): r~(x, y) = r(x, y)

budget(x) is the rho-th percentile of the lengths of the prompt's *correct* rollouts, estimated
once before training (K samples per pool prompt) and then fixed: it is written to
`toggle_budgets.parquet` in the run folder, its digest goes into the run's metadata, and a
resumed run reads the file and never re-estimates. A prompt with no correct sample has no
budget (null) and is never constrained. Toggle changes only the reward.

lambda, m and rho are [not stated] by the paper; defaults lambda=0.5, rho=50, m=8 (tiny 2).
"""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass

import numpy as np
import pandas as pd

from infra import storage

BUDGETS_FILE = "toggle_budgets.parquet"


def budgets_uri(run_dir: str) -> str:
    return storage.join(run_dir, BUDGETS_FILE)


def phase(iteration: int, m: int) -> int:
    return (iteration // m) % 2


def budget_from_samples(lengths: list[int], correct: list[bool], rho: float) -> float | None:
    """The rho-th percentile of the correct samples' lengths (None: no correct sample)."""
    ok = [n for n, c in zip(lengths, correct) if c]
    return float(np.percentile(ok, rho)) if ok else None


@dataclass(frozen=True)
class ToggleResult:
    rewards: list[float]
    active: bool  # phase 0, a budget, and the prompt's mean reward >= lambda
    zeroed: int  # rewards set to 0 by the budget


def toggle_rewards(rewards: list[float], lengths: list[int], budget: float | None, phase_now: int,
                   lam: float) -> ToggleResult:
    """Eq. 2 for one prompt's K samples."""
    if phase_now == 1 or budget is None or sum(rewards) / len(rewards) < lam:
        return ToggleResult(list(rewards), False, 0)
    out = [r if n <= budget else 0.0 for r, n in zip(rewards, lengths)]
    return ToggleResult(out, True, sum(1 for r, o in zip(rewards, out) if r != o))


@dataclass
class Budgets:
    """budget(x) per task id, as estimated once; `data` is the parquet file, `digest` its hash."""
    table: dict[str, float | None]
    n_correct: dict[str, int]
    data: bytes

    @property
    def digest(self) -> str:
        return hashlib.sha256(self.data).hexdigest()

    def get(self, task_id: str) -> float | None:
        if task_id not in self.table:
            raise KeyError(f"task {task_id!r} has no Toggle budget: the budget pass covers the whole pool")
        return self.table[task_id]

    @classmethod
    def from_rows(cls, rows: list[dict]) -> "Budgets":
        """rows: {"task_id", "budget" (None: no correct sample), "n_correct", "n_samples"}."""
        frame = pd.DataFrame(rows, columns=["task_id", "budget", "n_correct", "n_samples"]).sort_values("task_id")
        return cls._from_bytes(_parquet_bytes(frame))

    @classmethod
    def _from_bytes(cls, data: bytes) -> "Budgets":
        frame = pd.read_parquet(io.BytesIO(data))
        table = {r.task_id: (None if pd.isna(r.budget) else float(r.budget)) for r in frame.itertuples()}
        return cls(table, {r.task_id: int(r.n_correct) for r in frame.itertuples()}, data)

    def write(self, run_dir: str) -> str:
        uri = budgets_uri(run_dir)
        storage.write_bytes(uri, self.data)
        return uri

    @classmethod
    def load(cls, run_dir: str) -> "Budgets | None":
        uri = budgets_uri(run_dir)
        return cls._from_bytes(storage.read_bytes(uri)) if storage.exists(uri) else None

    def share_with_budget(self) -> float:
        """Share of pool prompts that have a budget at all (a correct sample in the pass)."""
        return sum(v is not None for v in self.table.values()) / max(1, len(self.table))


def _parquet_bytes(frame: pd.DataFrame) -> bytes:
    buf = io.BytesIO()
    frame.reset_index(drop=True).to_parquet(buf, index=False)
    return buf.getvalue()
