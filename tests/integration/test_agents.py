"""The agent loop with the real sandboxed kernel: tool calls are executed and their real output
appended (mask 0), malformed calls become observations, the tool-disabled arm never runs code,
and a trajectory recorded with the real engine replays to the same log-probs in the trainer's
forward (token in, token out). Needs root for the kernel: skipped elsewhere, a failure on CI."""

import asyncio

import pytest
import torch

from agents.chat import render_turns
from agents.engine import BatchingEngine, TokenOutput
from agents.envs.image_tasks import make_task
from agents.envs.ipython import DISABLED, IPythonImageEnv
from agents.loop import LoopLimits, run_agent
from agents.trajectory import check_provenance
from evaluation.agent_suites import summarize_ipython_tools
from model.config import model_preset
from model.multimodal import K25Model

pytestmark = pytest.mark.integration


class ScriptedEngine:
    """A test stand-in for the policy: replays fixed assistant turns (rendered by the chat
    format) so the loop's mechanics can be checked against a known script. Not a model."""

    def __init__(self, vocab, turns):
        self.vocab, self.turns, self.requests = vocab, list(turns), []

    async def generate(self, request):
        self.requests.append(request)
        body = render_turns([self.turns.pop(0)], self.vocab)[0].body
        if self.vocab.tool_calls_end in body:  # the real engine stops at the section end
            body = body[: body.index(self.vocab.tool_calls_end) + 1]
        return TokenOutput(body, [0.0] * len(body), "stop", 0, 1, "scripted")

    def release(self, session):
        pass


def test_tool_calls_run_in_the_kernel_and_their_real_output_is_appended(kernel, vocab):
    task = make_task("count", "test", 0)
    code = ("import numpy as np\nfrom scipy import ndimage\nrgb = img.astype(int)\n"
            f"mask = rgb[..., {['red', 'green', 'blue'].index(task.facts['color'])}] - "
            "np.delete(rgb, 0, axis=2).max(axis=2) * 0 - 120 > 0\nint(ndimage.label(mask)[1])")
    script = [
        {"role": "assistant", "content": "Counting.", "tool_calls": [
            {"name": "ipython", "arguments": {"code": "img.shape"}},
            {"name": "ipython", "arguments": {"code": "1 / 0"}},
            {"name": "nosuch", "arguments": {}}]},
        {"role": "assistant", "content": "", "tool_calls": [{"name": "ipython", "arguments": {"code": code}}]},
        {"role": "assistant", "content": f"\\boxed{{{task.answer}}}"},
    ]
    engine = ScriptedEngine(vocab, script)
    env = IPythonImageEnv(kernel, "tool")
    try:
        result = asyncio.run(run_agent(engine, vocab, env, task, LoopLimits(max_turns=4)))
        verdict = env.verify(result)
    finally:
        env.close()
    assert result.finish == "answer" and verdict.correct
    texts = [r.text for r in result.tool_results]
    assert texts[0] == "(64, 64, 3)\n"  # real kernel output
    assert "ZeroDivisionError" in texts[1] and not result.tool_results[1].ok
    assert "unknown tool 'nosuch'" in texts[2]
    appended = vocab.decode(list(engine.requests[1].ids))
    assert "## Return of functions.ipython:0\n(64, 64, 3)" in appended and "functions.nosuch:2" in appended
    assert appended.startswith("<|im_end|>") and appended.endswith("<|im_assistant|>assistant<|im_middle|>")
    mask = result.trajectory.tensors()["loss_mask"]
    for seg in result.trajectory.segments:
        assert seg.loss_mask == (seg.source == "model")
    assert int(mask.sum()) == result.trajectory.model_tokens()


def test_the_no_tool_arm_never_runs_code(kernel, vocab):
    task = make_task("maze", "test", 0)
    script = [{"role": "assistant", "content": "", "tool_calls": [
        {"name": "ipython", "arguments": {"code": "open('/tmp/ran', 'w').write('x')"}}]},
        {"role": "assistant", "content": "\\boxed{3}"}]
    env = IPythonImageEnv(kernel, "no_tool")
    try:
        result = asyncio.run(run_agent(ScriptedEngine(vocab, script), vocab, env, task))
        assert result.tool_results[0].text == DISABLED
        assert env.session.run("import os\nos.path.exists('/tmp/ran')").output == "False\n"
    finally:
        env.close()


def test_a_real_engine_trajectory_replays_to_the_same_logprobs(kernel, vocab):
    torch.manual_seed(0)
    model = K25Model(model_preset("tiny", vocab_size=vocab.size), media_pad_id=vocab.media_pad).eval()
    engine = BatchingEngine(model, slots=4, max_len=1024, decode=vocab.decode)
    tasks = [make_task("count", "test", i) for i in range(2)] + [make_task("pie", "test", 0)]
    limits = LoopLimits(max_turns=2, max_new_tokens=24, temperature=1.0, seed=3)

    async def all_arms():
        envs = [IPythonImageEnv(kernel, arm) for arm in ("tool", "media", "tool")]
        try:
            return await asyncio.gather(*(run_agent(engine, vocab, e, t, limits) for e, t in zip(envs, tasks))), envs
        finally:
            for e in envs:
                e.close()
    results, _ = asyncio.run(all_arms())
    assert engine.live_sessions == 0 and len(engine.free) == 4
    for result in results:
        check_provenance(result.trajectory, engine)
        t = result.trajectory.tensors()
        ids, mask = t["ids"], t["loss_mask"]
        with torch.no_grad():
            logits = model(ids[None, :-1], [m for m in result.trajectory.media] or None).float()[0]
        logits[:, vocab.media_pad] = float("-inf")
        replay = torch.log_softmax(logits, -1).gather(-1, ids[1:, None]).squeeze(-1)
        model_pos = mask[1:]
        assert model_pos.any()
        assert float((replay[model_pos] - t["logprobs"][1:][model_pos]).abs().max()) < 1e-4
    records = [{"arm": "tool", "family": "count", "score": 0.0, "calls": 1, "well_formed_calls": 1, "cells": 1,
                "cells_ok": 0}, {"arm": "media", "family": "count", "score": 0.0, "calls": 0,
                                 "well_formed_calls": 0, "cells": 0, "cells_ok": 0}]
    figures = summarize_ipython_tools(records)
    assert figures["ipython_tools/well_formed"] == 1.0 and figures["ipython_tools/cell_ok"] == 0.0
    assert figures["ipython_tools/probe_ratio"] == 0.0


def test_long_tool_output_is_cut_to_the_token_cap_and_turns_are_capped(kernel, vocab):
    task = make_task("size", "test", 1)
    flood = {"role": "assistant", "content": "", "tool_calls": [
        {"name": "ipython", "arguments": {"code": "for i in range(500):\n    print('row', i)"}}]}
    engine = ScriptedEngine(vocab, [flood, flood, flood])
    env = IPythonImageEnv(kernel, "tool")
    try:
        result = asyncio.run(run_agent(engine, vocab, env, task, LoopLimits(max_turns=2, max_tool_tokens=64)))
    finally:
        env.close()
    assert result.finish == "max_turns" and len(result.turns) == 2 and len(engine.requests) == 2
    tool_segment = next(s for s in result.trajectory.segments if s.source == "tool")
    text = vocab.decode(list(tool_segment.ids))
    assert "[truncated]" in text and "row 499" not in text
    assert len(tool_segment.ids) < 64 + 40  # the cap plus the turn's own framing


def test_sft_tool_data_builder_executes_filters_and_reproduces(kernel, tmp_path):
    from helpers import DATA_ROOT

    from agents.sft_data import ToolDataConfig, build_tool_data, gold_leaks, read_tool_data, reexecute
    from training.data import gsm8k_path, read_jsonl

    gsm8k = read_jsonl(gsm8k_path(str(DATA_ROOT), "train"))[:200]
    manifest = build_tool_data(str(tmp_path), gsm8k, ToolDataConfig(traces_per_family=6, pot_traces=6, search_traces=10,
                                                                     delegation_share=0.5), kernel=kernel)
    kept = manifest["kept"]
    assert {f: kept[f] for f in ("count", "size", "maze", "pie", "locate", "pot")} == dict.fromkeys(
        ("count", "size", "maze", "pie", "locate", "pot"), 6)
    assert kept["search_serial"] + kept["search_delegate"] == 10 and kept["search_delegate"] > 0
    assert "diff" not in manifest["tried"]  # held out of SFT entirely
    _, rows = read_tool_data(str(tmp_path))
    for row in rows:
        assert reexecute(kernel, row) == row["outputs"]  # byte for byte
        assert not gold_leaks(row)
        tool_turns = [m for m in row["messages"] if m["role"] == "tool"]
        assert [m["content"] for m in tool_turns] == row["outputs"]  # the tool message is the real output
        assert all("media" not in m for m in row["messages"])  # the image only as text, never as pixels
    tampered = dict(rows[0], outputs=["999\n"])
    assert reexecute(kernel, tampered) != tampered["outputs"]
