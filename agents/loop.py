"""The asyncio agent loop: generate -> parse -> run the turn's tool calls concurrently -> append
their results to the live request -> generate again, until the model answers without a call or
a cap is hit. Token in, token out: the trajectory holds the engine's ids and log-probs for the
model's turns and the rendered ids of every tool result, and nothing is ever re-tokenized.

Environments follow one small interface (TRL's environment_factory and K2.5's toolset/judge
split): `reset(task) -> (messages, media)`, `tools` (name -> async callable), `verify(result)
-> RewardBreakdown`, `close()`. A malformed call, an unknown tool or a tool that raises becomes
an observation with the error, never an exception in the loop.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Awaitable, Callable, Protocol

from agents.chat import ParsedTurn, ToolCall, media_of, parse_assistant, render, render_turns
from agents.engine import FINISH_CONTEXT, BatchingEngine, GenerateRequest, SamplingParams
from agents.trajectory import Trajectory
from model.tokens import Vocab


@dataclass
class ToolResult:
    text: str
    ok: bool = True  # False: the call failed (cell error, bad arguments, unknown tool)
    media: list = field(default_factory=list)  # images the tool returns to the model


Tool = Callable[[dict], Awaitable[ToolResult]]


@dataclass
class RewardBreakdown:
    reward: float
    correct: bool
    parts: dict = field(default_factory=dict)


class Environment(Protocol):
    tools: dict[str, Tool]

    def reset(self, task) -> tuple[list[dict], list]: ...

    def verify(self, result: "AgentResult") -> RewardBreakdown: ...

    def close(self) -> None: ...


@dataclass(frozen=True)
class LoopLimits:
    max_turns: int = 4  # assistant turns
    max_new_tokens: int = 192  # per assistant turn
    max_tool_tokens: int = 256  # a tool result longer than this is cut (and says so)
    max_parallel_calls: int = 4  # calls of one turn run concurrently, at most this many
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int = 0
    # Discard-all (RECIPE.md §7.4), an evaluation baseline: past this many context tokens the
    # history is dropped and the agent restarts from the prompt (0: never). Such a trajectory is
    # several contexts in a row, not one training sequence.
    discard_after: int = 0


@dataclass
class AgentResult:
    trajectory: Trajectory
    turns: list[ParsedTurn]
    tool_results: list[ToolResult]
    finish: str  # "answer" | "max_turns" | "context" | "length" | "budget"
    final_text: str
    discards: int = 0  # Discard-all restarts

    @property
    def calls(self) -> list[ToolCall]:
        return [c for t in self.turns for c in t.calls]


async def run_agent(engine: BatchingEngine, vocab: Vocab, env: Environment, task,
                    limits: LoopLimits = LoopLimits(), on_turn: Callable[[int], bool] | None = None) -> AgentResult:
    """`on_turn(turn)` runs before each assistant turn; False ends the episode there (finish
    "budget"): the swarm's critical-step budget (agents/swarm.py)."""
    messages, _ = env.reset(task)
    prompt = render(messages, vocab, add_generation_prompt=True)
    media = media_of(messages)
    trajectory = Trajectory()
    trajectory.add_context(prompt, "prompt", media)
    stops = (vocab.im_end, vocab.tool_calls_end)
    turns: list[ParsedTurn] = []
    results: list[ToolResult] = []
    n_calls = 0
    request = GenerateRequest(prompt, media, keep=True)
    context, discards = len(prompt), 0
    finish = "max_turns"
    session = None
    try:
        for turn in range(limits.max_turns):
            if on_turn is not None and not on_turn(turn):
                finish = "budget"
                break
            request.sampling = SamplingParams(limits.max_new_tokens, limits.temperature, limits.top_p,
                                              seed=limits.seed * 1000 + turn, stop_ids=stops)
            out = await engine.generate(request)
            session = out.session
            if out.ids:
                trajectory.add_model(out)
            parsed = parse_assistant(out.ids, vocab)
            turns.append(parsed)
            if out.finish_reason == FINISH_CONTEXT:
                finish = "context"
                break
            if not parsed.calls:
                finish = "answer" if parsed.finished else "length"
                break
            if turn == limits.max_turns - 1:
                break
            called = await _run_calls(env, parsed.calls, limits.max_parallel_calls)
            results += called
            append = [vocab.im_end] if out.ids and out.ids[-1] == vocab.tool_calls_end else []
            tool_messages = [_tool_message(call, n_calls + k, res, vocab, limits.max_tool_tokens)
                             for k, (call, res) in enumerate(zip(parsed.calls, called))]
            n_calls += len(parsed.calls)
            for turn_ids in render_turns(tool_messages, vocab):
                append += turn_ids.header + turn_ids.body
            append += vocab.role_header("assistant")
            tool_media = media_of(tool_messages)
            trajectory.add_context(append, "tool", tool_media)
            context += len(out.ids) + len(append)
            if limits.discard_after and context > limits.discard_after:
                # Discard-all: the history goes, the task stays (the environment keeps its state)
                engine.release(session)
                session, context = None, len(prompt)
                trajectory.add_context(prompt, "prompt", media)
                request = GenerateRequest(prompt, media, keep=True)
                discards += 1
                continue
            request = GenerateRequest(append, tool_media, session=session, keep=True)
    finally:
        engine.release(session)
    final = turns[-1].content if turns else ""
    return AgentResult(trajectory, turns, results, finish, final, discards)


async def _run_calls(env: Environment, calls: list[ToolCall], parallel: int) -> list[ToolResult]:
    gate = asyncio.Semaphore(parallel)

    async def one(call: ToolCall) -> ToolResult:
        if not call.ok:
            return ToolResult(f"Error: {call.error}", ok=False)
        tool = env.tools.get(call.name)
        if tool is None:
            return ToolResult(f"Error: unknown tool {call.name!r}; available: {sorted(env.tools)}", ok=False)
        async with gate:
            try:
                return await tool(call.arguments)
            except Exception as e:  # a tool's own failure is the model's observation
                return ToolResult(f"Error: {type(e).__name__}: {e}", ok=False)
    return list(await asyncio.gather(*(one(c) for c in calls)))


def _tool_message(call: ToolCall, index: int, result: ToolResult, vocab: Vocab, max_tokens: int) -> dict:
    text = result.text
    if len(vocab.encode(text)) > max_tokens:
        ids = vocab.encode(text)[: max_tokens - 8]
        text = vocab.decode(ids) + "\n[truncated]"
    name = call.name if call.name.isidentifier() else "invalid"  # a malformed name cannot be rendered
    return {"role": "tool", "name": name, "call_index": index, "content": text, "media": result.media}
