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

import math
import random
import re

import torch

from model.multimodal import K25Model
from training import checkpoint
from training.data import gsm8k_path, read_jsonl
from training.engine import Engine
from training.policy import (
    RolloutCache,
    cut_at_stop,
    math_reward,
    policy_step,
    prompt_ids,
    reference_answer,
    sequence_logprobs,
)
from training.program import program_args


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


class Swarm:
    def __init__(self, engine: Engine, problems: list[dict]):
        self.engine, self.problems = engine, problems
        self.subagent = frozen_subagent(engine)
        self.cache = RolloutCache(self.collect)

    def lambdas(self, step: int) -> tuple[float, float]:
        keep = max(0.0, 1.0 - step / max(1, self.engine.spec.train.steps - 1))
        return self.engine.spec.parl.lambda_parallel * keep, self.engine.spec.parl.lambda_finish * keep

    @torch.no_grad()
    def collect(self, index: int) -> dict:
        e, cfg, vocab = self.engine, self.engine.spec, self.engine.vocab
        rng = random.Random(f"{cfg.train.seed}:{e.rank}:{index}")
        tasks = [[self.problems[rng.randrange(len(self.problems))] for _ in range(cfg.parl.swarm_subtasks)]
                 for _ in range(cfg.rl.prompts_per_step)]
        prompts = [prompt_ids(vocab, orchestrator_prompt([p["question"] for p in t])) for t in tasks
                   for _ in range(cfg.rl.group_size)]
        gen = torch.Generator().manual_seed(hash((cfg.train.seed, e.rank, index, 7)) % (2**31))
        e.model.eval()
        stop = {vocab.im_end, vocab.eos}
        plans = [cut_at_stop(o, stop) or [vocab.eos] for o in e.model.generate(prompts, cfg.rl.max_new_tokens, stop, cfg.rl.temperature, cfg.rl.top_p, gen)]
        lam_par, lam_fin = self.lambdas(index * cfg.rl.updates_per_rollout)
        rewards, stats = [], {"agents": 0.0, "critical_steps": 0.0, "r_perf": 0.0, "r_finish": 0.0}
        for i, plan in enumerate(plans):
            task = tasks[i // cfg.rl.group_size]
            n_agents = parse_agent_count(vocab.decode(plan), cfg.parl.swarm_subtasks)
            r_perf, r_finish, steps = self._run_subagents(task, n_agents)
            r_parallel = (n_agents - 1) / max(1, cfg.parl.swarm_subtasks - 1)
            rewards.append(lam_par * r_parallel + lam_fin * r_finish + r_perf)
            for k, v in (("agents", n_agents), ("critical_steps", steps), ("r_perf", r_perf), ("r_finish", r_finish)):
                stats[k] += v / len(plans)
        logp_old, mask = sequence_logprobs(e.model, prompts, plans, vocab.pad)
        return {"prompts": prompts, "responses": plans, "rewards": torch.tensor(rewards), "logp_old": logp_old,
                "mask": mask, "stats": stats}

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
        correct = sum(math_reward(vocab.decode(o), reference_answer(p["answer"]), 0.0)[1] for o, p in zip(outs, finished))
        return correct / len(task), len(finished) / len(task), min(steps, cfg.parl.critical_step_budget)


def main(argv: list[str] | None = None) -> None:
    spec, run = program_args(("parl",), argv)
    if spec.inputs.init_from is None:
        raise SystemExit("error: parl needs --init-from: the frozen sub-agents are that checkpoint")
    problems = read_jsonl(gsm8k_path(run.data_root, "train"))
    engine = Engine(spec, run)
    cfg = engine.spec
    swarm = Swarm(engine, problems)

    def step_fn(step: int):
        batch = swarm.cache.get(step // cfg.rl.updates_per_rollout)
        loss, stats, tokens = policy_step(engine, batch, cfg.rl.group_size)
        lam_par, lam_fin = swarm.lambdas(step)
        stats.update(lambda_parallel=lam_par, lambda_finish=lam_fin, **{f"swarm_{k}": v for k, v in batch["stats"].items()})
        return loss, stats, tokens

    engine.fit(step_fn, lambda: {"seed": cfg.train.seed})


if __name__ == "__main__":
    main()
