"""PARL: RL of the Agent Swarm's orchestrator with frozen sub-agents (RECIPE.md §7;
POSTTRAIN.md §5; the runtime is agents/swarm.py).

    torchrun --nproc-per-node 2 -m training.parl --spec <run dir>/spec.json
    torchrun --nproc-per-node 2 -m training.parl --profile tiny --mixture <mixture.json> \
        --run-dir <uri> --init-from <rl checkpoint>

Each iteration every rank draws `rl.prompts_per_step` widesearch_local tasks (wide: n countries x
c attributes as a table; deep: two hops) and runs `rl.group_size` episodes of each, all at once:
the orchestrator (the trainable policy, on the rollout engine) has search, open, find, submit,
create_subagent and assign_task; sub-agents are the frozen upstream checkpoint on their own
engine (loaded once, never updated, also after resume) or, with `parl.subagents=scripted`, the
scripted policy (labelled so in every metric). Episodes are measured in critical steps from the
recorded execution graph and stopped by `parl.budget`.

Reward r = lambda1 * r_parallel + lambda2 * r_finish + r_perf (agents/swarm.py), lambdas annealed to
0 over `parl.anneal_fraction` of training; Eq. 1 as in RL (training/rl.prepare_batch, policy_loss)
on the orchestrator's trajectory only: sub-agent answers enter it as tool results, loss mask 0.
Logged per iteration: reward and its parts, item-F1, success, critical steps, sub-agents per
episode, the serial share (no assignment), spurious assignments, tool-call errors, lambdas.
"""

from __future__ import annotations

import asyncio
import dataclasses
import random

import torch

from agents.engine import BatchingEngine
from agents.envs.widesearch import build_corpus, build_tasks
from agents.loop import LoopLimits, run_agent
from agents.swarm import ModelSubAgents, ScriptedSubAgents, SwarmEpisode, SwarmLimits, annealed, orchestrator_loop
from model.multimodal import K25Model
from training import checkpoint
from training.engine import Engine
from training.policy import RolloutCache
from training.program import program_args
from training.reporting import fail
from training.rl import all_sum, policy_loss, prepare_batch, stable_seed

FIGURES = ("reward", "r_perf", "r_finish", "r_parallel", "row_f1", "success", "critical_steps", "total_steps",
           "subagents", "assignments", "spurious", "serial", "tool_errors")


def swarm_limits(spec) -> SwarmLimits:
    p = spec.parl
    return SwarmLimits(main_steps=p.main_steps, sub_steps=p.sub_steps, max_concurrent=p.max_concurrent,
                       budget=p.budget, message_tokens=p.message_tokens, parallel_target=p.parallel_target)


def frozen_subagent(engine: Engine) -> K25Model:
    """The sub-agent policy: the fixed upstream checkpoint, also after this run resumes."""
    model = checkpoint.load_model(engine.spec.inputs.init_from, manifest=engine.init_manifest)
    model.requires_grad_(False)
    return model.to(engine.device).eval()


async def run_episodes(rollouts: BatchingEngine, vocab, corpus, limits: SwarmLimits, loop: LoopLimits, tasks,
                       group_size: int, subagents, seed: int, delegate: bool = True) -> list[list[tuple]]:
    """`group_size` orchestrator episodes of every task, all at once on `rollouts`:
    [[(AgentResult, SwarmEpisode), ...] per task]. `subagents(seed)` gives one episode's sub-agents."""
    loop = orchestrator_loop(loop, limits)

    async def one(task, member: int):
        episode_seed = stable_seed(seed, task.id, member)
        episode = SwarmEpisode(corpus, limits, subagents(episode_seed), delegate=delegate,
                               count_tokens=lambda text: len(vocab.encode(text)))
        result = await run_agent(rollouts, vocab, episode, task, dataclasses.replace(loop, seed=episode_seed),
                                 on_turn=episode.on_turn)
        return result, episode
    groups = await asyncio.gather(*(asyncio.gather(*(one(t, m) for m in range(group_size))) for t in tasks))
    return [list(g) for g in groups]


def episode_figures(result, episode: SwarmEpisode, lambda_parallel: float, lambda_finish: float) -> dict[str, float]:
    """The episode's reward and its parts (SwarmEpisode.rewards) plus its share of failed tool calls."""
    figures = episode.rewards(lambda_parallel, lambda_finish)
    figures["tool_errors"] = sum(not r.ok for r in result.tool_results) / max(1, len(result.tool_results))
    return figures


class Swarm:
    def __init__(self, engine: Engine):
        self.engine, spec = engine, engine.spec
        self.corpus = build_corpus()
        self.limits = swarm_limits(spec)
        slots = spec.rl.prompts_per_step * spec.rl.group_size
        self.rollouts = BatchingEngine(engine.model, slots=slots, max_len=spec.data.seq_len, decode=engine.vocab.decode)
        if spec.parl.subagents == "model":
            frozen = frozen_subagent(engine)
            self.sub_engine = BatchingEngine(frozen, slots=slots * spec.parl.max_concurrent, max_len=spec.data.seq_len,
                                             decode=engine.vocab.decode)
        self.cache = RolloutCache(self.collect)
        engine.report_metadata.update({"parl_subagents": spec.parl.subagents, "parl_budget": spec.parl.budget})
        who = f"frozen {spec.inputs.init_from.uri}" if spec.parl.subagents == "model" else "SCRIPTED, not a model"
        engine.reporter.log(f"PARL: {spec.parl.subagents} sub-agents ({who}), budget {spec.parl.budget} critical steps, "
                            f"corpus of {len(self.corpus.pages)} pages")

    def lambdas(self, step: int) -> tuple[float, float]:
        p, steps = self.engine.spec.parl, self.engine.spec.train.steps
        return annealed(p.lambda_parallel, step, steps, p.anneal_fraction), annealed(p.lambda_finish, step, steps, p.anneal_fraction)

    def subagents(self, seed: int):
        spec = self.engine.spec
        if spec.parl.subagents == "scripted":
            return ScriptedSubAgents(self.corpus, spec.parl.scripted_error_rate, seed)
        return ModelSubAgents(self.sub_engine, self.engine.vocab, self.corpus, spec.rl.max_new_tokens,
                              spec.rl.temperature, seed)

    async def _episodes(self, tasks, seed: int) -> list[list[tuple]]:
        spec = self.engine.spec
        loop = LoopLimits(max_new_tokens=spec.rl.max_new_tokens, temperature=spec.rl.temperature, top_p=spec.rl.top_p)
        return await run_episodes(self.rollouts, self.engine.vocab, self.corpus, self.limits, loop, tasks,
                                  spec.rl.group_size, self.subagents, seed)

    @torch.no_grad()
    def collect(self, index: int) -> dict:
        e, spec = self.engine, self.engine.spec
        p = spec.parl
        rng = random.Random(f"{spec.train.seed}:{e.rank}:{index}")
        tasks = build_tasks(self.corpus, spec.rl.prompts_per_step, "train", rng.randrange(2**31),
                            (p.entities_min, p.entities_max), (1, p.attributes_max), p.deep_share)
        self.rollouts.update_weights(e.step)
        e.model.eval()
        groups = asyncio.run(self._episodes(tasks, stable_seed("parl", spec.train.seed, e.rank, index)))
        e.model.train()
        lam_par, lam_fin = self.lambdas(index * spec.rl.updates_per_rollout)
        rewards, sums = [], dict.fromkeys(FIGURES, 0.0)
        for group in groups:
            row = []
            for result, episode in group:
                figures = episode_figures(result, episode, lam_par, lam_fin)
                row.append(figures["reward"])
                for k in FIGURES:
                    sums[k] += figures[k]
            rewards.append(row)
        prepared = prepare_batch([[r.trajectory for r, _ in g] for g in groups], rewards, spec.rl, e.vocab.pad, e.model)
        n = sum(len(g) for g in groups)
        totals = all_sum([prepared.count, float(n), *sums.values()], e.world, e.device)
        count, n_all = totals[0], totals[1]
        stats = {f"swarm_{k}": v / n_all for k, v in zip(FIGURES, totals[2:])}
        stats["reward_mean"] = stats.pop("swarm_reward")
        return {"prepared": prepared, "denominator": count / e.world, "stats": stats}

    def step(self, step: int):
        cfg = self.engine.spec.rl
        rollout = self.cache.get(step // cfg.updates_per_rollout)
        loss, ratios = policy_loss(self.engine.model, rollout["prepared"], cfg, rollout["denominator"])
        lam_par, lam_fin = self.lambdas(step)
        stats = {**rollout["stats"], "lambda_parallel": lam_par, "lambda_finish": lam_fin, **ratios}
        if rollout["denominator"] == 0:  # every group on every rank had equal rewards
            stats["skip_update"] = 1.0
        return loss, stats, int(rollout["prepared"].batch.mask.sum())


def main(argv: list[str] | None = None) -> None:
    spec, run = program_args(("parl",), argv)
    if spec.inputs.init_from is None and spec.parl.subagents == "model":
        fail("parl needs --init-from: the frozen sub-agents are that checkpoint (or set parl.subagents=scripted)")
    engine = Engine(spec, run)
    swarm = Swarm(engine)
    engine.fit(swarm.step, lambda: {"seed": spec.train.seed})


if __name__ == "__main__":
    main()
