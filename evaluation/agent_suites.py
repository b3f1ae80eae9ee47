"""Agent suites: the checkpoint acts through the agent loop with real tools.

`ipython_tools`: held-out image tasks (test-split photos, larger mazes, and the `diff` family
that SFT never saw) solved through the sandboxed IPython kernel, in three arms on the same tasks
and the same checkpoint:
  - `tool`: as SFT taught it, the image described as text, its pixels in the kernel;
  - `no_tool`: the same prompt, but the ipython tool answers "disabled" (what the tool adds);
  - `media`: the zero-vision activation probe -- the image given as media tokens in the prompt
    and its text description removed (the kernel still holds the pixels).
Reported: tool-call well-formedness, the share of cells that ran without error, accuracy per
family and arm, the tool's gain over the no-tool arm in points, and the tool-call rate of the
media arm relative to the text arm (`probe_ratio`).

`widesearch_local`: held-out wide and deep tasks (test-split countries, the held-out attribute
pairs; agents/envs/widesearch.py) answered by the same checkpoint in three arms at the same
critical-step budget: `single` (search, open, find, submit; no delegation tools), `swarm`
(also create_subagent and assign_task, sub-agents being a frozen copy of the same checkpoint)
and `discard_all` (the single agent with RECIPE.md §7.4's context management: past
`discard_after_tokens` of context the history is dropped and it restarts from the task).
Reported per arm: item-F1 (the suite's accuracy is the swarm arm's), success, critical steps
and sub-agents per task.
"""

from __future__ import annotations

import asyncio
import dataclasses
import math

from agents.engine import BatchingEngine
from agents.envs.image_tasks import FAMILIES, ImageTask, make_task
from agents.envs.ipython import ARMS, IPythonImageEnv
from agents.envs.widesearch import WideSearchTask, build_corpus, build_tasks
from agents.kernel import Kernel
from agents.loop import LoopLimits, run_agent
from agents.swarm import ModelSubAgents, SwarmEpisode, SwarmLimits, orchestrator_loop
from model.tokens import Vocab

WIDESEARCH_ARMS = ("single", "swarm", "discard_all")
PRIMARY_ARM = {"ipython_tools": "tool", "widesearch_local": "swarm"}  # the arm a suite's accuracy is


def ipython_tasks(limit: int, seed: int) -> list[ImageTask]:
    """Held-out tasks, the same number per family (limit 0: 24 per family)."""
    per_family = max(1, math.ceil(limit / len(FAMILIES))) if limit else 24
    return [make_task(f, "test", i, seed) for i in range(per_family) for f in FAMILIES]


async def _run_arm(engine, vocab, kernel, tasks, arm, limits) -> list[dict]:
    async def one(task):
        env = IPythonImageEnv(kernel, arm)
        try:
            result = await run_agent(engine, vocab, env, task, limits)
            verdict = env.verify(result)
        finally:
            env.close()
        calls = result.calls
        executed = result.tool_results if arm != "no_tool" else []  # a disabled tool runs no cell
        return {"suite": "ipython_tools", "id": f"{task.id}:{arm}", "sample": 0, "arm": arm, "family": task.family,
                "prompt": task.question, "output": "\n---\n".join(t.content for t in result.turns),
                "extracted": str(verdict.parts["answer"]), "reference": str(task.answer),
                "score": float(verdict.correct), "prompt_tokens": 0, "output_tokens": result.trajectory.model_tokens(),
                "calls": len(calls), "well_formed_calls": sum(c.ok for c in calls),
                "cells": len(executed), "cells_ok": sum(r.ok for r in executed), "finish": result.finish}
    return list(await asyncio.gather(*(one(t) for t in tasks)))


def eval_ipython_tools(model, vocab: Vocab, tasks: list[ImageTask], cfg, kernel: Kernel | None = None,
                       arms: tuple[str, ...] = ARMS) -> list[dict]:
    """Records of every (task, arm); greedy or sampled as the evaluation config says."""
    limits = LoopLimits(max_turns=cfg.agent_max_turns, max_new_tokens=cfg.agent_max_new_tokens, temperature=cfg.temperature,
                        top_p=cfg.top_p, seed=cfg.seed)
    own = kernel is None
    kernel = kernel or Kernel()
    engine = BatchingEngine(model, slots=min(32, max(1, len(tasks))), max_len=min(model.cfg.max_seq_len, 2048),
                            decode=vocab.decode)
    try:
        records = []
        for arm in arms:
            records += asyncio.run(_run_arm(engine, vocab, kernel, tasks, arm, limits))
        return records
    finally:
        if own:
            kernel.close()


def summarize_ipython_tools(records: list[dict]) -> dict[str, float]:
    """The suite's figures (accuracy is the tool arm's, as for other suites)."""
    out: dict[str, float] = {}
    by_arm = {arm: [r for r in records if r["arm"] == arm] for arm in ARMS}
    tool = by_arm["tool"]
    if not tool:
        return out
    calls = sum(r["calls"] for r in tool)
    cells = sum(r["cells"] for r in tool)
    out["ipython_tools/well_formed"] = sum(r["well_formed_calls"] for r in tool) / calls if calls else 0.0
    out["ipython_tools/cell_ok"] = sum(r["cells_ok"] for r in tool) / cells if cells else 0.0
    out["ipython_tools/tool_call_rate"] = sum(r["calls"] > 0 for r in tool) / len(tool)
    for arm, rows in by_arm.items():
        if not rows:
            continue
        out[f"ipython_tools/{arm}_accuracy"] = sum(r["score"] for r in rows) / len(rows)
        for family in FAMILIES:
            fam = [r for r in rows if r["family"] == family]
            if fam:
                out[f"ipython_tools/{family}_{arm}_accuracy"] = sum(r["score"] for r in fam) / len(fam)
    if by_arm["no_tool"]:
        for family in ("count", "maze"):
            a = out.get(f"ipython_tools/{family}_tool_accuracy")
            b = out.get(f"ipython_tools/{family}_no_tool_accuracy")
            if a is not None and b is not None:
                out[f"ipython_tools/tool_gain_{family}"] = 100.0 * (a - b)
    if by_arm["media"]:
        media_rate = sum(r["calls"] > 0 for r in by_arm["media"]) / len(by_arm["media"])
        out["ipython_tools/media_tool_call_rate"] = media_rate
        text_rate = out["ipython_tools/tool_call_rate"]
        out["ipython_tools/probe_ratio"] = media_rate / text_rate if text_rate else 0.0
    return out


# ---- widesearch_local

def widesearch_tasks(limit: int, seed: int) -> list[WideSearchTask]:
    """Held-out tasks (limit 0: 48): test countries, 2-8 of them, 1-3 attributes, a quarter deep."""
    return build_tasks(build_corpus(), limit or 48, "test", seed, n_range=(2, 8), c_range=(1, 3))


def eval_widesearch(model, vocab: Vocab, tasks: list[WideSearchTask], cfg, limits: SwarmLimits = SwarmLimits()) -> list[dict]:
    """Records of every (task, arm): the checkpoint as a single agent and as a swarm whose
    sub-agents are the same weights (frozen here: evaluation never trains)."""
    corpus = build_corpus()
    max_len = min(model.cfg.max_seq_len, 2048)
    engine = BatchingEngine(model, slots=min(32, max(1, len(tasks))), max_len=max_len, decode=vocab.decode)
    sub_engine = BatchingEngine(model, slots=min(64, max(1, len(tasks) * limits.max_concurrent)), max_len=max_len,
                                decode=vocab.decode)
    loop = orchestrator_loop(LoopLimits(max_new_tokens=cfg.swarm_max_new_tokens, temperature=cfg.temperature,
                                        top_p=cfg.top_p, seed=cfg.seed), limits)

    async def one(task: WideSearchTask, arm: str) -> dict:
        subagents = ModelSubAgents(sub_engine, vocab, corpus, cfg.swarm_max_new_tokens, cfg.temperature, cfg.seed)
        episode = SwarmEpisode(corpus, limits, subagents, delegate=arm == "swarm",
                               count_tokens=lambda text: len(vocab.encode(text)))
        arm_loop = dataclasses.replace(loop, discard_after=cfg.discard_after_tokens) if arm == "discard_all" else loop
        result = await run_agent(engine, vocab, episode, task, arm_loop, on_turn=episode.on_turn)
        r = episode.rewards(0.0, 0.0)
        return {"suite": "widesearch_local", "id": f"{task.id}:{arm}", "sample": 0, "arm": arm, "family": task.kind,
                "prompt": task.question, "output": "\n---\n".join(t.content for t in result.turns),
                "extracted": str(episode.submitted), "reference": str(task.gold), "score": r["r_perf"],
                "success": r["success"], "critical_steps": r["critical_steps"], "subagents": r["subagents"],
                "prompt_tokens": 0, "output_tokens": result.trajectory.model_tokens(), "calls": len(result.calls),
                "well_formed_calls": sum(c.ok for c in result.calls), "finish": result.finish,
                "discards": result.discards}

    async def run() -> list[dict]:
        return list(await asyncio.gather(*(one(t, arm) for arm in WIDESEARCH_ARMS for t in tasks)))
    return asyncio.run(run())


def summarize_widesearch(records: list[dict]) -> dict[str, float]:
    out: dict[str, float] = {}
    for arm in WIDESEARCH_ARMS:
        rows = [r for r in records if r["arm"] == arm]
        if not rows:
            continue
        for key, name in (("score", "item_f1"), ("success", "success"), ("critical_steps", "critical_steps"),
                          ("subagents", "subagents")):
            out[f"widesearch_local/{arm}_{name}"] = sum(r[key] for r in rows) / len(rows)
    return out
