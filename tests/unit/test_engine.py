"""The batching rollout engine against the static `generate` reference and the trainer's
forward: greedy parity, batch independence, log-probs, group prefix sharing, live sessions
with appended tool results (and images), stops, and provenance."""

import asyncio
import random

import numpy as np
import pytest
import torch

from agents.engine import BatchingEngine, GenerateRequest, SamplingParams, group_seed
from agents.trajectory import ProvenanceError, Trajectory, check_provenance
from model.config import model_preset
from model.multimodal import K25Model
from model.vision import vision_token_count

MEDIA_PAD = 10


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return K25Model(model_preset("tiny", vocab_size=256), media_pad_id=MEDIA_PAD).eval()


def prompts(n, seed=0, lo=3, hi=60):
    rng = random.Random(seed)
    return [[rng.randrange(20, 256) for _ in range(rng.randint(lo, hi))] for _ in range(n)]


def run(coro):
    return asyncio.run(coro)


async def gather(engine, requests):
    return await asyncio.gather(*(engine.generate(r) for r in requests))


def test_greedy_equals_static_generate_on_32_mixed_length_prompts(model):
    ps = prompts(32)
    engine = BatchingEngine(model, slots=32)
    outs = run(gather(engine, [GenerateRequest(p, sampling=SamplingParams(max_new_tokens=12)) for p in ps]))
    for p, out in zip(ps, outs):
        assert out.ids == model.generate([p], 12, set())[0]
        assert out.finish_reason == "length"
    assert engine.ticks == 12  # one prefill tick for all 32, then one tick per decode step
    assert len(engine.free) == 32  # every slot returned


def test_a_request_is_the_same_alone_or_among_15_others(model):
    sampling = SamplingParams(max_new_tokens=16, temperature=1.0, seed=1234)
    target = prompts(1, seed=7)[0]
    alone = run(BatchingEngine(model, slots=16).generate(GenerateRequest(target, sampling=sampling)))
    others = [GenerateRequest(p, sampling=SamplingParams(max_new_tokens=random.Random(i).randint(1, 20),
                                                         temperature=1.0, seed=i)) for i, p in enumerate(prompts(15, seed=3))]
    crowd = run(gather(BatchingEngine(model, slots=16), others[:7] + [GenerateRequest(target, sampling=sampling)] + others[7:]))
    assert crowd[7].ids == alone.ids
    assert np.allclose(crowd[7].logprobs, alone.logprobs, atol=1e-5)


@pytest.mark.parametrize("temperature", [0.0, 0.7])
def test_engine_logprobs_equal_the_trainer_forward(model, temperature):
    ps = prompts(6, seed=11)
    engine = BatchingEngine(model, slots=8)
    outs = run(gather(engine, [GenerateRequest(p, sampling=SamplingParams(max_new_tokens=10, temperature=temperature,
                                                                          seed=i)) for i, p in enumerate(ps)]))
    worst = 0.0
    with torch.no_grad():
        for p, out in zip(ps, outs):
            seq = torch.tensor([p + out.ids])
            logits = model(seq[:, :-1]).float()[0, len(p) - 1:]
            logits[:, MEDIA_PAD] = float("-inf")
            scaled = logits / temperature if temperature > 0 else logits
            trainer = torch.log_softmax(scaled, -1).gather(-1, torch.tensor(out.ids)[:, None]).squeeze(-1)
            worst = max(worst, float((trainer - torch.tensor(out.logprobs)).abs().max()))
    assert worst < 1e-4


def test_a_group_prefills_once_and_each_member_samples_its_own_stream(model):
    p = prompts(1, seed=5, lo=40, hi=40)[0]
    sampling = SamplingParams(max_new_tokens=8, temperature=1.0, seed=99)
    engine = BatchingEngine(model, slots=8)
    group = run(engine.generate_group(GenerateRequest(p, sampling=sampling), k=8))
    assert engine.ticks == 8  # one prefill for all 8, then 7 decode ticks
    singles = run(gather(BatchingEngine(model, slots=8), [
        GenerateRequest(p, sampling=SamplingParams(max_new_tokens=8, temperature=1.0, seed=group_seed(99, i)))
        for i in range(8)]))
    assert [g.ids for g in group] == [s.ids for s in singles]
    assert len({tuple(g.ids) for g in group}) > 1  # members are not copies of each other


def test_appending_a_tool_result_continues_the_cached_context(model):
    p, tool = prompts(1, seed=2)[0], prompts(1, seed=4, lo=9, hi=9)[0]
    greedy = SamplingParams(max_new_tokens=6)
    engine = BatchingEngine(model, slots=2)

    async def turns():
        first = await engine.generate(GenerateRequest(p, sampling=greedy, keep=True))
        assert first.session is not None and engine.live_sessions == 1
        second = await engine.generate(GenerateRequest(tool, sampling=greedy, session=first.session))
        return first, second
    first, second = run(turns())
    assert engine.live_sessions == 0 and len(engine.free) == 2  # released after a turn without keep
    assert second.ids == model.generate([p + first.ids + tool], 6, set())[0]
    with pytest.raises(ValueError, match="not live"):
        run(engine.generate(GenerateRequest(tool, session=first.session)))


def _image_prompt(rng, shape=(28, 56, 3)):
    px = torch.from_numpy(np.random.default_rng(rng).integers(0, 256, size=shape, dtype=np.uint8))
    n = vision_token_count(shape[0], shape[1])
    return px, [30, 31] + [MEDIA_PAD] * n + [32]


def test_images_in_the_prompt_and_in_a_tool_result_are_spliced_as_in_training(model):
    img, run_ids = _image_prompt(0)
    p = [40, 41, 42] + run_ids + [43]
    greedy = SamplingParams(max_new_tokens=5)
    engine = BatchingEngine(model, slots=4)
    plain = prompts(2, seed=9)
    outs = run(gather(engine, [GenerateRequest(plain[0], sampling=greedy),
                               GenerateRequest(p, media=[img], sampling=greedy, keep=True),
                               GenerateRequest(plain[1], sampling=greedy)]))
    assert outs[1].ids == model.generate([p], 5, set(), vision_items=[img])[0]
    assert outs[0].ids == model.generate([plain[0]], 5, set())[0]
    img2, run2 = _image_prompt(1, (56, 28, 3))
    tool = [50] + run2 + [51]
    after = run(engine.generate(GenerateRequest(tool, media=[img2], sampling=greedy, session=outs[1].session)))
    assert after.ids == model.generate([p + outs[1].ids + tool], 5, set(), vision_items=[img, img2])[0]
    with pytest.raises(ValueError, match="media placeholders but no media"):
        run(engine.generate(GenerateRequest(p)))


def test_stops_and_context_limit(model):
    p = prompts(1, seed=1)[0]
    free_run = run(BatchingEngine(model).generate(GenerateRequest(p, sampling=SamplingParams(max_new_tokens=10))))
    stop = free_run.ids[3]
    out = run(BatchingEngine(model).generate(GenerateRequest(p, sampling=SamplingParams(max_new_tokens=10, stop_ids=(stop,)))))
    assert out.ids == free_run.ids[: free_run.ids.index(stop) + 1] and out.finish_reason == "stop"
    text = "".join(chr(65 + t % 26) for t in free_run.ids)
    decode = lambda ids: "".join(chr(65 + t % 26) for t in ids)  # noqa: E731
    by_string = run(BatchingEngine(model, decode=decode).generate(
        GenerateRequest(p, sampling=SamplingParams(max_new_tokens=10, stop_strings=(text[4:6],)))))
    assert by_string.finish_reason == "stop" and len(by_string.ids) <= 6
    small = BatchingEngine(model, slots=2, max_len=len(p) + 4)
    capped = run(small.generate(GenerateRequest(p, sampling=SamplingParams(max_new_tokens=10))))
    assert capped.finish_reason == "context" and len(capped.ids) == 4
    too_long = run(small.generate(GenerateRequest(p + p, sampling=SamplingParams(max_new_tokens=3))))
    assert too_long.finish_reason == "context" and too_long.ids == [] and len(small.free) == 2


def test_more_requests_than_slots_wait_for_a_free_slot(model):
    ps = prompts(10, seed=8)
    engine = BatchingEngine(model, slots=3)
    outs = run(gather(engine, [GenerateRequest(p, sampling=SamplingParams(max_new_tokens=4)) for p in ps]))
    assert [o.ids for o in outs] == [model.generate([p], 4, set())[0] for p in ps]


def test_provenance_refuses_tokens_the_engine_did_not_produce(model):
    engine = BatchingEngine(model)
    p = prompts(1)[0]
    out = run(engine.generate(GenerateRequest(p, sampling=SamplingParams(max_new_tokens=5))))
    traj = Trajectory()
    traj.add_context(p)
    traj.add_model(out)
    check_provenance(traj, engine)
    t = traj.tensors()
    assert t["loss_mask"].tolist() == [False] * len(p) + [True] * 5
    assert torch.allclose(t["logprobs"][len(p):], torch.tensor(out.logprobs))
    edited = Trajectory(traj.segments[:1])
    edited.add_model(type(out)([out.ids[0] ^ 1] + out.ids[1:], out.logprobs, out.finish_reason, out.version,
                               None, out.receipt))
    with pytest.raises(ProvenanceError, match="differ"):
        check_provenance(edited, engine)
    other = BatchingEngine(model)  # another engine's receipt does not verify here
    with pytest.raises(ProvenanceError):
        check_provenance(Trajectory([traj.segments[0], traj.segments[1]]), other)
    with pytest.raises(ValueError, match="context source"):
        traj.add_context([1], source="model")
