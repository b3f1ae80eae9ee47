"""Toggle (RECIPE.md §6.4, Eq. 2) against plain RL and an always-on budget, on a controlled task
whose correct traces carry redundant checking lines.

    python -m benchmarks.bench_toggle [--quick] [--seeds 3] [--iterations 24] [--eval 512]

The task: "Add these k digits". A worked answer writes the running sums (needed: their number
grows with k), then 0-3 "check:" lines that repeat the total (correct but redundant: the
"repeated verification" K2.5 says Toggle removes), then `\\boxed{sum}`. Training problems have
k in [3, 8]; the long set has k in [9, 12] and is sampled at twice the token limit (the
length-overfitting test: a policy that learned to stop early fails there).

Per seed, in one process, with the stage's own pieces:
  1. a fresh tiny K25Model learns the traces by cross-entropy (`--sft-steps`), checks drawn
     uniformly from 0-3;
  2. Toggle's budget pass on the training pool (training/toggle.py: K samples per prompt, budget =
     the rho-th percentile of the correct samples' lengths, estimated once);
  3. three RL arms from that same checkpoint and the same rollout seeds, `--iterations` each:
     `plain` (K2.5 RL, Eq. 1), `always` (phase 0 every iteration: a K2-style fixed budget) and
     `toggle` (phases alternate every m iterations); rollouts by the batching engine, the math
     reward (Math-Verify), Eq. 1 minimised with MuonClip (training/rl.prepare_batch, policy_loss);
  4. greedy evaluation on `--eval` held-out problems (k in [3, 8]) and on the long set.
Baseline measured in the same run: the plain arm.
Printed per arm: mean tokens, accuracy with a 95% CI (bootstrap over problems and seeds), the
long-set accuracy, and Toggle's active share. Ends with
`RESULT token_reduction=... delta_acc=... delta_acc_lo=... long_toggle_minus_always=...`
(token_reduction: 1 - toggle tokens / plain tokens; delta_acc, in points: toggle - plain).
Pass: token_reduction >= 0.20, delta_acc >= -2 with its CI lower bound >= -3, and
long_toggle_minus_always >= 0; a miss is reported with its numbers.
"""

from __future__ import annotations

import argparse
import copy
import random
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
ARMS = ("plain", "always", "toggle")
TRAIN_K, LONG_K = (3, 8), (9, 12)


@dataclass(frozen=True)
class Problem:
    id: str
    digits: tuple[int, ...]

    @property
    def answer(self) -> int:
        return sum(self.digits)

    @property
    def question(self) -> str:
        return "Add these digits: " + " ".join(map(str, self.digits)) + ". Put the sum in \\boxed{}."


def problems(n: int, k_range: tuple[int, int], seed: str, high: int = 3) -> list[Problem]:
    """Digits in [0, high): small addends keep the tiny model's running sums learnable."""
    rng = random.Random(f"toggle-task:{seed}")
    return [Problem(f"{seed}/{i}", tuple(rng.randrange(high) for _ in range(rng.randint(*k_range)))) for i in range(n)]


def trace(p: Problem, checks: int) -> str:
    sums = np.cumsum(p.digits).tolist()
    lines = ["sums " + " ".join(map(str, sums))]
    lines += [f"check {sums[-1]}" for _ in range(checks)]
    return "\n".join(lines + [f"\\boxed{{{sums[-1]}}}"])


def task_of(p: Problem):
    from agents.envs.rl_tasks import RLTask

    return RLTask(p.id, "reasoning", "text", p.question, "math", str(p.answer))


def sft(model, vocab, pool: list[Problem], steps: int, lr: float, seed: int) -> float:
    from benchmarks.harness import ce_train

    def draw(rng):
        return [[{"role": "user", "content": p.question}, {"role": "assistant", "content": trace(p, rng.randint(0, 3))}]
                for p in rng.sample(pool, 16)]
    return ce_train(model, vocab, draw, steps, lr, f"sft:{seed}")


def sample(model, vocab, probs: list[Problem], k: int, max_tokens: int, temperature: float, seed: int):
    """K samples per problem: [[Sample]]."""
    from agents.engine import BatchingEngine
    from training.rollout import RolloutSettings, collect

    engine = BatchingEngine(model, slots=min(64, len(probs) * k), max_len=model.cfg.max_seq_len, decode=vocab.decode)
    model.eval()
    groups = []
    step = max(1, 64 // k)
    for i in range(0, len(probs), step):
        out, _ = collect(engine, vocab, [task_of(p) for p in probs[i: i + step]],
                         RolloutSettings(k, max_tokens, temperature, 1.0), seed + i)
        groups += out
    model.train()
    return groups


def evaluate(model, vocab, probs: list[Problem], max_tokens: int) -> tuple[list[float], list[int]]:
    """Greedy: per problem (correct 0/1, tokens)."""
    groups = sample(model, vocab, probs, 1, max_tokens, 0.0, 0)
    return [float(g[0].score.correct) for g in groups], [g[0].length for g in groups]


def budget_pass(model, vocab, pool: list[Problem], k: int, max_tokens: int, rho: float, seed: int):
    from training.toggle import Budgets, budget_from_samples

    rows = []
    for p, g in zip(pool, sample(model, vocab, pool, k, max_tokens, 1.0, seed)):
        budget = budget_from_samples([s.length for s in g], [s.score.correct for s in g], rho)
        rows.append({"task_id": p.id, "budget": budget, "n_correct": sum(s.score.correct for s in g), "n_samples": len(g)})
    return Budgets.from_rows(rows)


def rl_arm(model, vocab, arm: str, pool: list[Problem], budgets, args, seed: int) -> dict:
    """Train `model` in place; returns the arm's training log."""
    from training import toggle as tg
    from training.muonclip import MuonClip, muon_param_groups
    from training.rl import policy_loss, prepare_batch
    from training.spec import RLConfig

    cfg = RLConfig(prompts_per_step=args.prompts, group_size=args.group, max_new_tokens=args.max_tokens,
                   temperature=1.0, updates_per_rollout=2, toggle=arm != "plain", toggle_m=args.m,
                   toggle_lambda=args.lam, toggle_rho=args.rho)
    opt = MuonClip(muon_param_groups(model, lr=args.lr, weight_decay=0.0))
    rng = random.Random(f"rl:{seed}")  # the same prompts and sampling seeds in every arm
    log = {"active": [], "zeroed": [], "length": [], "reward": []}
    for it in range(args.iterations):
        probs = [pool[rng.randrange(len(pool))] for _ in range(args.prompts)]
        groups = sample(model, vocab, probs, args.group, args.max_tokens, 1.0, seed * 7919 + it * 131)
        rewards = [[s.score.value for s in g] for g in groups]
        if arm != "plain":
            now = 0 if arm == "always" else tg.phase(it, args.m)
            shaped = [tg.toggle_rewards(r, [s.length for s in g], budgets.get(p.id), now, args.lam)
                      for p, g, r in zip(probs, groups, rewards)]
            rewards = [s.rewards for s in shaped]
            log["active"].append(sum(s.active for s in shaped) / len(shaped))
            log["zeroed"].append(sum(s.zeroed for s in shaped) / (len(shaped) * args.group))
        log["length"].append(float(np.mean([s.length for g in groups for s in g])))
        log["reward"].append(float(np.mean([s.score.value for g in groups for s in g])))
        prepared = prepare_batch(groups, rewards, cfg, vocab.pad, model)
        for _ in range(cfg.updates_per_rollout):
            loss, _ = policy_loss(model, prepared, cfg, max(prepared.count, 1.0))
            opt.zero_grad()
            loss.backward()
            opt.step()
    return log


def bootstrap_diff(a: np.ndarray, b: np.ndarray, n: int = 2000, seed: int = 0) -> tuple[float, float]:
    """95% CI of mean(a) - mean(b) for paired per-problem outcomes (rows: seeds x problems)."""
    rng = np.random.default_rng(seed)
    d = (a - b).reshape(-1)
    means = [d[rng.integers(0, len(d), len(d))].mean() for _ in range(n)]
    return float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--sft-steps", type=int, default=800)
    p.add_argument("--iterations", type=int, default=24)
    p.add_argument("--prompts", type=int, default=8)
    p.add_argument("--group", type=int, default=8)
    p.add_argument("--max-tokens", type=int, default=80)
    p.add_argument("--lr", type=float, default=3e-4)
    p.add_argument("--m", type=int, default=2, help="Toggle: iterations per phase")
    p.add_argument("--lam", type=float, default=0.5, help="Toggle: lambda")
    p.add_argument("--rho", type=float, default=50.0, help="Toggle: budget percentile")
    p.add_argument("--pool", type=int, default=128, help="training prompts (the budget pass samples each)")
    p.add_argument("--eval", type=int, default=512)
    p.add_argument("--quick", action="store_true", help="1 seed, fewer steps and problems (about 3 minutes)")
    args = p.parse_args()
    if args.quick:
        args.seeds, args.sft_steps, args.iterations, args.pool, args.eval = 1, 400, 8, 32, 64
    sys.path.insert(0, str(REPO / "tests"))
    import helpers

    from model.config import model_preset
    from model.multimodal import K25Model
    from training.data import load_vocab

    t0 = time.perf_counter()
    vocab = load_vocab(helpers.build_tiny_data(tempfile.mkdtemp(prefix="bench-toggle-")).mixture)
    pool = problems(args.pool, TRAIN_K, "train")
    held, long = problems(args.eval, TRAIN_K, "test"), problems(max(32, args.eval // 4), LONG_K, "long")
    results = {arm: {"acc": [], "tokens": [], "long": [], "log": []} for arm in ARMS}
    for seed in range(args.seeds):
        torch.manual_seed(seed)
        base = K25Model(model_preset("tiny", vocab_size=vocab.size, max_seq_len=256), media_pad_id=vocab.media_pad)
        sft_pool = problems(4096, TRAIN_K, f"sft{seed}")
        loss = sft(base, vocab, sft_pool, args.sft_steps, 2e-3, seed)
        acc0, tok0 = evaluate(base, vocab, held, args.max_tokens)
        budgets = budget_pass(base, vocab, pool, args.group, args.max_tokens, args.rho, seed)
        print(f"seed {seed}: sft loss {loss:.3f}, accuracy {np.mean(acc0):.3f}, tokens {np.mean(tok0):.1f}; "
              f"budgets for {budgets.share_with_budget():.0%} of the pool ({time.perf_counter() - t0:.0f} s)", flush=True)
        for arm in ARMS:
            model = copy.deepcopy(base)
            log = rl_arm(model, vocab, arm, pool, budgets, args, seed)
            acc, tok = evaluate(model, vocab, held, args.max_tokens)
            acc_long, _ = evaluate(model, vocab, long, 2 * args.max_tokens)
            r = results[arm]
            r["acc"].append(acc)
            r["tokens"].append(tok)
            r["long"].append(acc_long)
            r["log"].append(log)
            active = f", active {np.mean(log['active']):.2f}, zeroed {np.mean(log['zeroed']):.2f}" if log["active"] else ""
            print(f"  {arm:7s} accuracy {np.mean(acc):.3f} tokens {np.mean(tok):.1f} long {np.mean(acc_long):.3f}"
                  f"{active} ({time.perf_counter() - t0:.0f} s)", flush=True)
    acc = {a: np.array(results[a]["acc"]) for a in ARMS}
    tokens = {a: float(np.mean(results[a]["tokens"])) for a in ARMS}
    long_acc = {a: float(np.mean(results[a]["long"])) for a in ARMS}
    reduction = 1 - tokens["toggle"] / tokens["plain"]
    delta = 100 * float(acc["toggle"].mean() - acc["plain"].mean())
    lo, hi = (100 * x for x in bootstrap_diff(acc["toggle"], acc["plain"]))
    long_gap = 100 * (long_acc["toggle"] - long_acc["always"])
    for a in ARMS:
        print(f"{a:7s} tokens {tokens[a]:.1f} accuracy {100 * acc[a].mean():.1f} long {100 * long_acc[a]:.1f}")
    ok = reduction >= 0.2 and delta >= -2 and lo >= -3 and long_gap >= 0
    print(f"total {time.perf_counter() - t0:.0f} s; {'PASS' if ok else 'MISS'}: token reduction {reduction:.1%}, "
          f"delta acc {delta:+.1f} points (95% CI {lo:+.1f}..{hi:+.1f}), long toggle - always {long_gap:+.1f} points")
    print(f"RESULT token_reduction={reduction:.3f} delta_acc={delta:.2f} delta_acc_lo={lo:.2f} "
          f"long_toggle_minus_always={long_gap:.2f}")


if __name__ == "__main__":
    main()
