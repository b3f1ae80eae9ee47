"""Rollouts for RL: K samples per task from the continuous-batching engine, scored by the shared
rewards, as token-in-token-out trajectories carrying the engine's log-probs (pi_old).

Single-turn tasks are one `generate_group` (the prompt prefilled once for its K samples); tool
tasks run K agent loops (agents/loop.py) in the IPython image environment, each seeded apart.
All tasks of a batch are in flight at once, so the engine batches every sample's decoding.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

from agents.chat import parse_assistant, render
from agents.engine import BatchingEngine, GenerateRequest, SamplingParams, group_seed
from agents.envs.ipython import IPythonImageEnv
from agents.envs.rl_tasks import RLTask
from agents.kernel import Kernel
from agents.loop import LoopLimits, run_agent
from agents.rewards import Score, score
from agents.trajectory import Trajectory, check_provenance
from model.tokens import Vocab


@dataclass
class Sample:
    task: RLTask
    trajectory: Trajectory
    score: Score
    finish: str  # stop | length | context | answer (agent loop) ...
    text: str  # the final visible answer the reward read

    @property
    def length(self) -> int:
        return self.trajectory.model_tokens()


@dataclass(frozen=True)
class RolloutSettings:
    group_size: int
    max_new_tokens: int
    temperature: float
    top_p: float
    max_turns: int = 3  # tool tasks
    max_tool_tokens: int = 192


async def _single_turn(engine: BatchingEngine, vocab: Vocab, task: RLTask, s: RolloutSettings, seed: int) -> list[Sample]:
    ids = render(task.messages(), vocab, add_generation_prompt=True)
    sampling = SamplingParams(s.max_new_tokens, s.temperature, s.top_p, seed, stop_ids=(vocab.im_end, vocab.eos))
    outs = await engine.generate_group(GenerateRequest(ids, list(task.media), sampling), s.group_size)
    samples = []
    for out in outs:
        traj = Trajectory()
        traj.add_context(ids, "prompt", list(task.media))
        traj.add_model(out)
        text = parse_assistant(out.ids, vocab).content
        samples.append(Sample(task, traj, score(task.reward, text, task.reference), out.finish_reason, text))
    return samples


async def _tool_task(engine: BatchingEngine, vocab: Vocab, task: RLTask, s: RolloutSettings, seed: int,
                     kernel: Kernel) -> list[Sample]:
    async def one(member: int) -> Sample:
        env = IPythonImageEnv(kernel, "tool")
        limits = LoopLimits(max_turns=s.max_turns, max_new_tokens=s.max_new_tokens, max_tool_tokens=s.max_tool_tokens,
                            temperature=s.temperature, top_p=s.top_p, seed=group_seed(seed, member))
        try:
            result = await run_agent(engine, vocab, env, task.extra["image_task"], limits)
            verdict = env.verify(result)
        finally:
            env.close()
        return Sample(task, result.trajectory, Score(float(verdict.reward), verdict.correct, verdict.parts.get("answer")),
                      result.finish, result.final_text)
    return list(await asyncio.gather(*(one(m) for m in range(s.group_size))))


def collect(engine: BatchingEngine, vocab: Vocab, tasks: list[RLTask], settings: RolloutSettings, seed: int,
            kernel: Kernel | None = None) -> tuple[list[list[Sample]], float]:
    """(K samples per task, seconds spent generating). Every trained segment is checked to be
    the engine's own output before it reaches the loss."""
    if any(t.reward == "tool" for t in tasks) and kernel is None:
        raise ValueError("tool tasks need the sandboxed kernel (agents/kernel.py)")

    async def run():
        jobs = [(_tool_task(engine, vocab, t, settings, group_seed(seed, i), kernel) if t.reward == "tool"
                 else _single_turn(engine, vocab, t, settings, group_seed(seed, i))) for i, t in enumerate(tasks)]
        return list(await asyncio.gather(*jobs))

    t0 = time.perf_counter()
    groups = asyncio.run(run())
    seconds = time.perf_counter() - t0
    for group in groups:
        for sample in group:
            check_provenance(sample.trajectory, engine)
    return groups, seconds
