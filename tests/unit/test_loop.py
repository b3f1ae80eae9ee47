"""The agent loop's mechanics without a kernel (a pure-Python tool), so they are checked on any
machine: calls of a turn run concurrently, results are appended in call order with their
indices, malformed calls and failing tools become observations, and the real batching engine's
sessions are released whatever happens."""

import asyncio

import torch

from agents.chat import render_turns
from agents.engine import BatchingEngine, TokenOutput
from agents.loop import LoopLimits, RewardBreakdown, ToolResult, run_agent
from model.config import model_preset
from model.multimodal import K25Model


class Script:
    """A test stand-in for the policy that replays fixed assistant turns (not a model)."""

    def __init__(self, vocab, turns):
        self.vocab, self.turns, self.requests, self.released = vocab, list(turns), [], []

    async def generate(self, request):
        self.requests.append(request)
        body = render_turns([self.turns.pop(0)], self.vocab)[0].body
        return TokenOutput(body, [0.0] * len(body), "stop", 0, len(self.requests), "scripted")

    def release(self, session):
        self.released.append(session)


class AddEnv:
    def __init__(self):
        self.started = []
        self.tools = {"add": self.add, "boom": self.boom}

    async def add(self, args):
        self.started.append(args["a"])
        await asyncio.sleep(0.05 * (3 - args["a"]))  # finish in reverse order
        return ToolResult(str(args["a"] + args["b"]))

    async def boom(self, args):
        raise RuntimeError("tool crashed")

    def reset(self, task):
        return [{"role": "user", "content": task}], []

    def verify(self, result):
        return RewardBreakdown(float("\\boxed{7}" in result.final_text), "\\boxed{7}" in result.final_text)

    def close(self):
        pass


def test_calls_run_concurrently_and_results_keep_call_order(vocab):
    turn = {"role": "assistant", "content": "", "tool_calls": [
        {"name": "add", "arguments": {"a": 1, "b": 1}}, {"name": "add", "arguments": {"a": 2, "b": 5}},
        {"name": "boom", "arguments": {}}]}
    script = Script(vocab, [turn, {"role": "assistant", "content": "\\boxed{7}"}])
    env = AddEnv()
    result = asyncio.run(run_agent(script, vocab, env, "add things"))
    assert env.verify(result).correct and result.finish == "answer"
    assert [r.text for r in result.tool_results] == ["2", "7", "Error: RuntimeError: tool crashed"]
    appended = vocab.decode(list(script.requests[1].ids))
    assert appended.index("functions.add:0\n2") < appended.index("functions.add:1\n7") < appended.index("functions.boom:2")
    assert script.released == [2]


def test_a_malformed_call_is_answered_with_its_error(vocab):
    bad = render_turns([{"role": "assistant", "content": "x"}], vocab)[0].body[:-1]
    bad += [vocab.tool_calls_begin, vocab.tool_call_begin] + vocab.encode("functions.add:0") + [
        vocab.tool_call_argument_begin] + vocab.encode('{"a": 1,') + [vocab.tool_call_end, vocab.tool_calls_end]

    class Raw(Script):
        async def generate(self, request):
            self.requests.append(request)
            if len(self.requests) == 1:
                return TokenOutput(bad, [0.0] * len(bad), "stop", 0, 1, "scripted")
            return await super().generate(request)
    script = Raw(vocab, [{"role": "assistant", "content": "done"}])
    result = asyncio.run(run_agent(script, vocab, AddEnv(), "q"))
    assert not result.calls[0].ok and result.tool_results[0].text.startswith("Error: tool call arguments are not valid JSON")
    assert "## Return of functions.add:0\nError:" in vocab.decode(list(script.requests[1].ids))


def test_the_real_engine_releases_every_session(vocab):
    torch.manual_seed(0)
    model = K25Model(model_preset("tiny", vocab_size=vocab.size), media_pad_id=vocab.media_pad).eval()
    engine = BatchingEngine(model, slots=3, max_len=512)
    limits = LoopLimits(max_turns=2, max_new_tokens=16)

    async def many():
        return await asyncio.gather(*(run_agent(engine, vocab, AddEnv(), f"question {i}", limits) for i in range(5)))
    results = asyncio.run(many())
    assert len(results) == 5 and engine.live_sessions == 0 and len(engine.free) == 3
    for r in results:
        assert r.trajectory.model_tokens() > 0
