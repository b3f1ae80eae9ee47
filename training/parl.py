"""PARL: RL of the Agent Swarm orchestrator with frozen sub-agents (first version, RECIPE.md §7).

    torchrun --nproc-per-node 2 -m training.parl --spec <run dir>/spec.json
    torchrun --nproc-per-node 2 -m training.parl --profile tiny --mixture <mixture.json> \
        --run-dir <uri> --init-from <rl checkpoint>

A task is a wide-search bundle of `swarm_subtasks` independent GSM8K problems. The orchestrator
(the trainable policy) answers with how many sub-agents to launch; the problems are dealt
round-robin to that many frozen sub-agents (a frozen copy of the initial checkpoint), each of
which solves its share one problem per step. The episode is measured in critical steps,
sum over stages of (main steps + the longest sub-agent branch); problems not finished within
`critical_step_budget` count as unfinished. Reward:
r = lambda1 * r_parallel + lambda2 * r_finish + r_perf, with lambda1, lambda2 annealed linearly
to 0, r_parallel = (agents - 1) / (subtasks - 1), r_finish = finished / assigned and r_perf the
fraction of correct answers. Only orchestrator tokens are trained; sub-agent outputs are
observations. The tool-calling swarm environment arrives with the PARL issue.
"""

from __future__ import annotations

import asyncio
import math
import random
import re

import torch

from agents.chat import parse_assistant, render
from agents.engine import BatchingEngine, GenerateRequest, SamplingParams
from agents.envs.rl_tasks import gsm8k_reference
from agents.rewards import score
from agents.trajectory import Trajectory
from model.multimodal import K25Model
from training import checkpoint
from training.data import gsm8k_path, read_jsonl
from training.engine import Engine
from training.policy import RolloutCache
from training.program import program_args
from training.rl import all_sum, policy_loss, prepare_batch, stable_seed


def critical_steps(n_subtasks: int, n_agents: int) -> tuple[int, int]:
    """(critical steps, longest branch) of one launch stage plus the orchestrator's two main steps
    (plan and aggregate). Extra agents help only while they shorten the longest branch."""
    longest = math.ceil(n_subtasks / n_agents)
    return 1 + longest + 1, longest


def parse_agent_count(text: str, max_agents: int) -> int:
    """The first integer in the orchestrator's reply, clamped to [1, max]; none means serial (1)."""
    m = re.search(r"-?\d+", text)
    return min(max(int(m.group()), 1), max_agents) if m else 1


def orchestrator_prompt(questions: list[str]) -> str:
    listing = "\n".join(f"{i + 1}. {q}" for i, q in enumerate(questions))
    return (f"You can launch sub-agents that work in parallel. Tasks:\n{listing}\n"
            f"How many sub-agents (1-{len(questions)}) should work on these tasks? Answer with a number.")


def frozen_subagent(engine: Engine) -> K25Model:
    """The sub-agent policy: the fixed upstream checkpoint, also after this run resumes."""
    model = checkpoint.load_model(engine.spec.inputs.init_from, manifest=engine.init_manifest)
    for p in model.parameters():
        p.requires_grad_(False)
    return model.to(engine.device).eval()


def prompt_ids(vocab, text: str) -> list[int]:
    return render([{"role": "user", "content": text}], vocab, add_generation_prompt=True)


class Swarm:
    def __init__(self, engine: Engine, problems: list[dict]):
        self.engine, self.problems = engine, problems
        self.subagent = frozen_subagent(engine)
        cfg = engine.spec.rl
        self.rollouts = BatchingEngine(engine.model, slots=cfg.prompts_per_step * cfg.group_size,
                                       max_len=engine.spec.data.seq_len, decode=engine.vocab.decode)
        self.cache = RolloutCache(self.collect)

    def lambdas(self, step: int) -> tuple[float, float]:
        keep = max(0.0, 1.0 - step / max(1, self.engine.spec.train.steps - 1))
        return self.engine.spec.parl.lambda_parallel * keep, self.engine.spec.parl.lambda_finish * keep

    def _plans(self, prompts: list[list[int]], seed: int) -> list[list[Trajectory]]:
        """The orchestrator's group_size plans per task, sampled by the rollout engine (pi_old)."""
        e, cfg, vocab = self.engine, self.engine.spec.rl, self.engine.vocab
        sampling = SamplingParams(cfg.max_new_tokens, cfg.temperature, cfg.top_p, seed, stop_ids=(vocab.im_end, vocab.eos))
        self.rollouts.update_weights(e.step)

        async def run():
            return await asyncio.gather(*(self.rollouts.generate_group(GenerateRequest(p, sampling=sampling), cfg.group_size)
                                          for p in prompts))
        out = []
        for p, group in zip(prompts, asyncio.run(run())):
            trajs = []
            for o in group:
                t = Trajectory()
                t.add_context(p)
                t.add_model(o)
                trajs.append(t)
            out.append(trajs)
        return out

    @torch.no_grad()
    def collect(self, index: int) -> dict:
        e, cfg, vocab = self.engine, self.engine.spec, self.engine.vocab
        rng = random.Random(f"{cfg.train.seed}:{e.rank}:{index}")
        tasks = [[self.problems[rng.randrange(len(self.problems))] for _ in range(cfg.parl.swarm_subtasks)]
                 for _ in range(cfg.rl.prompts_per_step)]
        prompts = [prompt_ids(vocab, orchestrator_prompt([p["question"] for p in t])) for t in tasks]
        e.model.eval()
        plans = self._plans(prompts, stable_seed("parl", cfg.train.seed, e.rank, index))
        e.model.train()
        lam_par, lam_fin = self.lambdas(index * cfg.rl.updates_per_rollout)
        rewards, stats = [], {"agents": 0.0, "critical_steps": 0.0, "r_perf": 0.0, "r_finish": 0.0}
        n = len(tasks) * cfg.rl.group_size
        for task, group in zip(tasks, plans):
            for plan in group:
                text = parse_assistant(plan.segments[-1].ids, vocab).content
                n_agents = parse_agent_count(text, cfg.parl.swarm_subtasks)
                r_perf, r_finish, steps = self._run_subagents(task, n_agents)
                r_parallel = (n_agents - 1) / max(1, cfg.parl.swarm_subtasks - 1)
                rewards.append(lam_par * r_parallel + lam_fin * r_finish + r_perf)
                for k, v in (("agents", n_agents), ("critical_steps", steps), ("r_perf", r_perf), ("r_finish", r_finish)):
                    stats[k] += v / n
        size = cfg.rl.group_size
        prepared = prepare_batch(plans, [rewards[i * size:(i + 1) * size] for i in range(len(plans))], cfg.rl, vocab.pad,
                                 e.model)
        total, = all_sum([prepared.count], e.world, e.device)
        stats["reward_mean"] = float(prepared.batch.rewards.mean())
        return {"prepared": prepared, "denominator": total / e.world, "stats": stats}

    def _run_subagents(self, task: list[dict], n_agents: int) -> tuple[float, float, int]:
        cfg, vocab = self.engine.spec, self.engine.vocab
        steps, longest = critical_steps(len(task), n_agents)
        # Sub-agent j solves problems j, j+n, j+2n, ... one per step; within the budget the
        # orchestrator's two main steps leave budget-2 steps for the longest branch.
        per_agent_budget = max(0, cfg.parl.critical_step_budget - 2)
        finished = [p for i, p in enumerate(task) if i // n_agents < per_agent_budget]
        if not finished:
            return 0.0, 0.0, steps
        stop = {vocab.im_end, vocab.eos}
        outs = self.subagent.generate([prompt_ids(vocab, p["question"]) for p in finished], cfg.rl.max_new_tokens, stop)
        correct = sum(score("math", vocab.decode(o), gsm8k_reference(p["answer"])).correct for o, p in zip(outs, finished))
        return correct / len(task), len(finished) / len(task), min(steps, cfg.parl.critical_step_budget)

    def step(self, step: int):
        cfg = self.engine.spec.rl
        rollout = self.cache.get(step // cfg.updates_per_rollout)
        loss, ratios = policy_loss(self.engine.model, rollout["prepared"], cfg, rollout["denominator"])
        lam_par, lam_fin = self.lambdas(step)
        stats = {"reward_mean": rollout["stats"]["reward_mean"], "lambda_parallel": lam_par, "lambda_finish": lam_fin,
                 **{f"swarm_{k}": v for k, v in rollout["stats"].items() if k != "reward_mean"}, **ratios}
        return loss, stats, int(rollout["prepared"].batch.mask.sum())


def main(argv: list[str] | None = None) -> None:
    spec, run = program_args(("parl",), argv)
    if spec.inputs.init_from is None:
        raise SystemExit("error: parl needs --init-from: the frozen sub-agents are that checkpoint")
    problems = read_jsonl(gsm8k_path(run.data_root, "train"))
    engine = Engine(spec, run)
    cfg = engine.spec
    swarm = Swarm(engine, problems)

    engine.fit(swarm.step, lambda: {"seed": cfg.train.seed})


if __name__ == "__main__":
    main()
