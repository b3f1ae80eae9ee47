"""RL with the K2.5 objective (RECIPE.md §6; POSTTRAIN.md §4) on tasks organised by ability.

    torchrun --nproc-per-node 2 -m training.rl --spec <run dir>/spec.json
    torchrun --nproc-per-node 2 -m training.rl --profile tiny --mixture <mixture.json> \
        --run-dir <uri> --init-from <sft checkpoint>

Each iteration every rank draws `prompts_per_step` tasks from a fixed pool (agents/envs/rl_tasks.py:
reasoning, knowledge, perception, instruction and tool domains by `rl.domains` weight, text and
image prompts), samples `group_size` responses per task with the continuous-batching engine
(tool tasks through the agent loop and the sandboxed kernel), scores them with the shared
rewards (agents/rewards) and trains `updates_per_rollout` optimizer steps on the batch with
Eq. 1 (training/policy.py): pi_old is the engine's recorded log-prob, the loss is normalised per
prompt, zero-variance groups are skipped. With `rl.toggle` the rewards follow Eq. 2
(training/toggle.py) with budgets estimated once before the first step.

Logged per iteration: the reward and accuracy, reward per domain and modality, the masked token
fraction, mean |log rho|, the train-inference mismatch KL, the share of groups skipped, the
generation share of wall time, and Toggle's phase, active share, zeroed share and lengths.
With `rl.grm_weight > 0` the `grm` stage's judge adds its score where the verifier passes
(training/grm_reward.py), with its own figures per rubric family.
"""

from __future__ import annotations

import hashlib
import random
import time
from dataclasses import dataclass

import torch
import torch.distributed as dist

from agents.engine import BatchingEngine
from agents.envs.rl_tasks import RLTask, build_pool, parse_domains
from agents.grm import LocalJudge
from agents.kernel import Kernel
from agents.sandbox import SandboxUnavailable
from agents.trajectory import Trajectory
from training import rft
from training import toggle as tg
from training.checkpoint import load_model
from training.engine import Engine
from training.grm_reward import GRMReward
from training.policy import (
    PolicyBatch,
    RolloutCache,
    group_advantages,
    k25_policy_loss,
    policy_batch,
    ratio_stats,
    token_logprobs,
    token_weights,
)
from training.program import program_args
from training.reporting import fail
from training.rollout import RolloutSettings, Sample, collect
from training.spec import RLConfig


def stable_seed(*parts) -> int:
    """A seed from its parts, the same in every process (str hashes are salted per process)."""
    return int.from_bytes(hashlib.sha256(repr(parts).encode()).digest()[:4], "little")


def all_sum(values: list[float], world: int, device="cpu") -> list[float]:
    """Sums over the data-parallel ranks (on the training device: NCCL groups take no CPU tensors)."""
    t = torch.tensor(values, dtype=torch.float64 if str(device) == "cpu" else torch.float32, device=device)
    if world > 1:
        dist.all_reduce(t)
    return t.cpu().tolist()


@dataclass
class PreparedBatch:
    batch: PolicyBatch
    advantages: torch.Tensor
    weights: torch.Tensor
    count: float  # this rank's share of the loss denominator (prompts or tokens)
    kept_groups: int  # groups with reward variance (the others are skipped)


def prepare_batch(groups: list[list[Sample | Trajectory]], rewards: list[list[float]], cfg: RLConfig, pad_id: int,
                  model) -> PreparedBatch:
    """A rollout's tensors for Eq. 1: per prompt its samples (or bare trajectories, as PARL's
    plans) and (possibly Toggle-shaped) rewards; pi_old (recomputed by the trainer if
    `pi_old=recompute`), advantages, kept groups and token weights."""
    trajectories = [s if isinstance(s, Trajectory) else s.trajectory for g in groups for s in g]
    batch = policy_batch(trajectories, [r for g in rewards for r in g],
                         [i for i, g in enumerate(groups) for _ in g], pad_id, cfg.temperature)
    if cfg.pi_old == "recompute":
        with torch.no_grad():
            batch.logp_old = token_logprobs(model, batch).cpu()
    adv, kept = group_advantages(batch.rewards, batch.groups)
    if not cfg.skip_zero_variance:
        kept = torch.ones_like(kept)
    weights, count = token_weights(batch, kept, cfg.loss_norm)
    return PreparedBatch(batch, adv, weights, count, len(set(batch.groups[kept].tolist())))


def policy_loss(model, prepared: PreparedBatch, cfg: RLConfig, denominator: float) -> tuple[torch.Tensor, dict]:
    """Eq. 1 on a prepared batch with the current weights, and its ratio diagnostics."""
    logp = token_logprobs(model, prepared.batch)
    loss = k25_policy_loss(logp, prepared.batch.logp_old, prepared.advantages, prepared.weights, cfg.ratio_low,
                           cfg.ratio_high, cfg.kl_tau, denominator)
    return loss, ratio_stats(logp, prepared.batch, cfg.ratio_low, cfg.ratio_high)


class RLRun:
    """The rollout side of an RL stage around the training Engine: task pool, rollout engine,
    kernel, Toggle budgets, and one `step(step)` for Engine.fit."""

    def __init__(self, engine: Engine, data_root: str):
        self.engine, cfg = engine, engine.spec.rl
        self.cfg = cfg
        self.domains = parse_domains(cfg.domains)
        self.pool, self.dropped = build_pool(self.domains, cfg.pool_size, engine.spec.train.seed, data_root)
        engine.reporter.log(f"RL pool: {len(self.pool)} tasks over {self.domains}; vision-critical filter dropped "
                            f"{sum(self.dropped.values())} {self.dropped or ''}")
        self.kernel = self._kernel() if any(t.reward == "tool" for t in self.pool) else None
        slots = cfg.prompts_per_step * cfg.group_size
        self.rollouts = BatchingEngine(engine.model, slots=slots, max_len=engine.spec.data.seq_len,
                                       decode=engine.vocab.decode)
        self.settings = RolloutSettings(cfg.group_size, cfg.max_new_tokens, cfg.temperature, cfg.top_p, cfg.max_turns)
        self.gen_seconds, self.t0 = 0.0, time.perf_counter()
        self.grm = self._grm() if cfg.grm_weight > 0 else None
        self.budgets = self._toggle_budgets() if cfg.toggle else None
        self.cache = RolloutCache(self.collect)
        engine.report_metadata.update({"rl_pool_tasks": len(self.pool), "rl_domains": str(self.domains),
                                       "rl_vision_critical_dropped": sum(self.dropped.values())})
        if self.budgets is not None:
            engine.report_metadata.update({
                "toggle_budgets_uri": tg.budgets_uri(engine.spec.inputs.run_dir), "toggle_budgets_digest": self.budgets.digest,
                "toggle_prompts_with_budget": round(self.budgets.share_with_budget(), 4)})

    def _kernel(self) -> Kernel:
        try:
            return Kernel(memory_mb=1536)
        except SandboxUnavailable as e:
            fail(f"rl.domains includes 'tool', which runs model code in the sandboxed kernel, but it is unavailable "
                 f"here: {e}. Drop 'tool' from rl.domains or run where the sandbox works (root, cgroups).")

    def _grm(self) -> GRMReward:
        """The frozen judge of the `grm` stage, on every rank (never trained here)."""
        e = self.engine
        ref = e.spec.inputs.judge
        try:
            manifest = ref.verify()
        except LookupError as err:
            fail(f"rl judge: {err}")
        judge = load_model(ref, e.device, manifest)
        if judge.cfg.vocab_size != e.model.cfg.vocab_size:
            fail(f"judge {ref.uri} has vocabulary size {judge.cfg.vocab_size}, the policy {e.model.cfg.vocab_size}: "
                 "train the judge from this run's tokenizer (the grm stage of the same chain)")
        judge.requires_grad_(False)
        e.report_metadata.update({"grm_judge_uri": ref.uri, "grm_judge_digest": ref.digest, "grm_weight": self.cfg.grm_weight})
        e.reporter.log(f"GRM: judge {ref.uri} (w={self.cfg.grm_weight}, families {self.cfg.grm_families} + task rubrics)")
        return GRMReward(LocalJudge(judge.eval(), e.vocab, slots=self.cfg.prompts_per_step * self.cfg.group_size,
                                    max_len=e.spec.data.seq_len), self.cfg)

    # ---- sampling
    def _sample(self, tasks: list[RLTask], seed: int) -> list[list[Sample]]:
        self.rollouts.update_weights(self.engine.step)
        self.engine.model.eval()
        groups, seconds = collect(self.rollouts, self.engine.vocab, tasks, self.settings, seed, self.kernel)
        self.engine.model.train()
        self.gen_seconds += seconds
        return groups

    def _toggle_budgets(self) -> tg.Budgets:
        """Read the run's budgets (resume), or estimate them once over the whole pool: each rank
        samples its share, rank 0 writes the file, every rank reads it back."""
        e = self.engine
        run_dir = e.spec.inputs.run_dir
        found = tg.Budgets.load(run_dir)
        if found is not None:
            if set(found.table) != {t.id for t in self.pool}:
                fail(f"{tg.budgets_uri(run_dir)} holds budgets for another task pool (rl.domains, rl.pool_size or "
                     "train.seed changed since it was written); use a new run folder")
            e.reporter.log(f"Toggle budgets read from {run_dir} (digest {found.digest[:12]}); not re-estimated")
            return found
        e.reporter.log(f"Toggle budget pass: {self.cfg.group_size} samples for each of {len(self.pool)} pool tasks")
        mine = self.pool[e.rank::e.world]
        rows = []
        step = self.cfg.prompts_per_step
        for start in range(0, len(mine), step):
            chunk = mine[start: start + step]
            for task, group in zip(chunk, self._sample(chunk, stable_seed("budget", e.spec.train.seed, e.rank, start))):
                budget = tg.budget_from_samples([s.length for s in group], [s.score.correct for s in group], self.cfg.toggle_rho)
                rows.append({"task_id": task.id, "budget": budget, "n_correct": sum(s.score.correct for s in group),
                             "n_samples": len(group)})
        if e.world > 1:
            gathered = [None] * e.world
            dist.all_gather_object(gathered, rows)
            rows = [r for part in gathered for r in part]
        budgets = tg.Budgets.from_rows(rows)
        if e.rank == 0:
            budgets.write(run_dir)
        if e.world > 1:
            dist.barrier()
        e.reporter.log(f"Toggle budgets written (digest {budgets.digest[:12]}): {budgets.share_with_budget():.0%} of "
                       "pool tasks had a correct sample")
        return budgets

    # ---- one rollout batch
    def collect(self, iteration: int) -> dict:
        e, cfg = self.engine, self.cfg
        rng = random.Random(f"{e.spec.train.seed}:{e.rank}:{iteration}")
        tasks = [self.pool[rng.randrange(len(self.pool))] for _ in range(cfg.prompts_per_step)]
        groups = self._sample(tasks, stable_seed("rollout", e.spec.train.seed, e.rank, iteration))
        rft.write_shard(e.spec.inputs.run_dir, iteration, e.rank, rft.rft_rows(groups, iteration, e.rank))
        stats = self._reward_stats(groups)
        stats.update(self._domain_rewards(groups))
        rewards = [[s.score.value for s in g] for g in groups]
        if self.grm is not None:
            rewards, grm_stats = self.grm.rewards(groups, rewards, stable_seed("grm", e.spec.train.seed, e.rank, iteration),
                                                  lambda values: all_sum(values, e.world, e.device))
            stats.update(grm_stats)
        if self.budgets is not None:
            rewards = self._apply_toggle(iteration, tasks, groups, rewards, stats)
        prepared = prepare_batch(groups, rewards, cfg, e.vocab.pad, e.model)
        n = sum(len(g) for g in groups)
        local = [prepared.count, len(groups), prepared.kept_groups, n,
                 stats["reward_mean"] * n, stats["correct_rate"] * n, stats["response_tokens"] * n]
        count, n_groups, kept, n_all, reward, correct, tokens = all_sum(local, e.world, e.device)
        # the headline, per-domain and GRM figures are over every rank's samples
        stats.update(reward_mean=reward / n_all, correct_rate=correct / n_all, response_tokens=tokens / n_all,
                     groups_skipped=1.0 - kept / max(n_groups, 1))
        return {"prepared": prepared, "denominator": count / e.world, "stats": stats}

    def _reward_stats(self, groups: list[list[Sample]]) -> dict[str, float]:
        samples = [s for g in groups for s in g]
        return {"reward_mean": sum(s.score.value for s in samples) / len(samples),
                "correct_rate": sum(s.score.correct for s in samples) / len(samples),
                "response_tokens": sum(s.length for s in samples) / len(samples)}

    def _domain_rewards(self, groups: list[list[Sample]]) -> dict[str, float]:
        """`reward/<domain>_<modality>` over every rank's samples. The keys come from the pool (the
        same on every rank), so the all-reduce lines up; a key no rank sampled is left out."""
        keys = sorted({f"reward/{t.domain}_{t.modality}" for t in self.pool})
        sums, counts = [0.0] * len(keys), [0.0] * len(keys)
        for s in (s for g in groups for s in g):
            k = keys.index(f"reward/{s.task.domain}_{s.task.modality}")
            sums[k] += s.score.value
            counts[k] += 1
        totals = all_sum(sums + counts, self.engine.world, self.engine.device)
        return {key: totals[i] / totals[len(keys) + i] for i, key in enumerate(keys) if totals[len(keys) + i] > 0}

    def _apply_toggle(self, iteration, tasks, groups, rewards, stats) -> list[list[float]]:
        cfg = self.cfg
        now = tg.phase(iteration, cfg.toggle_m)
        out, active, zeroed = [], 0, 0
        for task, group, r in zip(tasks, groups, rewards):
            res = tg.toggle_rewards(r, [s.length for s in group], self.budgets.get(task.id), now, cfg.toggle_lambda)
            out.append(res.rewards)
            active += res.active
            zeroed += res.zeroed
        n = sum(len(g) for g in groups)
        stats.update({"toggle_phase": float(now), "toggle_active_fraction": active / len(tasks),
                      "toggle_zeroed_fraction": zeroed / n, f"toggle_length_phase{now}": stats["response_tokens"]})
        return out

    # ---- one optimizer step
    def step(self, step: int):
        cfg = self.cfg
        rollout = self.cache.get(step // cfg.updates_per_rollout)
        loss, ratios = policy_loss(self.engine.model, rollout["prepared"], cfg, rollout["denominator"])
        # the mismatch is measured at a batch's first update, when the trainer holds the weights
        # the engine sampled with; later updates add the policy's own drift
        if step % cfg.updates_per_rollout == 0:
            rollout["mismatch_kl"] = ratios["mismatch_kl"]
        ratios["mismatch_kl"] = rollout.get("mismatch_kl", ratios["mismatch_kl"])
        stats = {**rollout["stats"], **ratios}
        stats["generation_share"] = self.gen_seconds / max(time.perf_counter() - self.t0, 1e-9)
        if rollout["denominator"] == 0:  # every group on every rank skipped: nothing to learn from
            stats["skip_update"] = 1.0
        return loss, stats, int(rollout["prepared"].batch.mask.sum())

    def close(self) -> None:
        if self.kernel is not None:
            self.kernel.close()


def main(argv: list[str] | None = None) -> None:
    spec, run = program_args(("rl",), argv)
    if spec.rl.grm_weight > 0 and spec.inputs.judge is None:
        fail(f"rl.grm_weight={spec.rl.grm_weight} needs the judge checkpoint (the grm stage's; --judge standalone)")
    engine = Engine(spec, run)
    rl = RLRun(engine, run.data_root)
    try:
        engine.fit(rl.step, lambda: {"seed": spec.train.seed, "toggle_budgets": rl.budgets.digest if rl.budgets else None})
    finally:
        rl.close()


if __name__ == "__main__":
    main()
