"""Rollout throughput: the batching engine vs calling `generate` per trajectory, on agent-shaped
work (generate, pause for a tool, append its result, generate again).

    python -m benchmarks.bench_rollout [--quick] [--profile tiny] [--device cpu] [--trajectories 16]

Arms, measured in the same run on the same randomly initialised model (speed does not depend on
the weights):
  - baseline: each trajectory calls the static `K25Model.generate` on its whole context every
    turn (the context is re-prefilled each time, one trajectory's forward at a time);
  - batching: all trajectories share one `BatchingEngine`: one forward per tick for every
    pending prefill and decode; a tool result is appended to the cached context.
The tool pause is `--tool-ms` of asyncio sleep standing in for a tool call (the same in both
arms); while a trajectory waits, the others keep the model busy.
Also: the cost of a K=8 group (prefill once, 8 first tokens) over one request's prefill, and
parity: greedy equals static generate token for token on 32 mixed-length prompts, a request's
tokens are the same alone or among 15 others, engine vs trainer log-probs < 1e-4 (fp32).
Ends with `RESULT speedup=... group_cost=... parity=1|0`.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import time

import torch


def build_model(profile: str, device: str):
    from model.config import model_preset
    from model.multimodal import K25Model

    torch.manual_seed(0)
    cfg = model_preset(profile, vocab_size=4096) if profile == "tiny" else model_preset(profile)
    return K25Model(cfg, media_pad_id=10).to(device).eval()


def random_ids(rng: random.Random, n: int, vocab: int) -> list[int]:
    return [rng.randrange(20, vocab) for _ in range(n)]


def plan(n_traj: int, vocab: int, seed: int = 0):
    """Per trajectory: a prompt and the tool results of its turns (fixed, so both arms do the same work)."""
    rng = random.Random(seed)
    return [(random_ids(rng, rng.randint(32, 64), vocab), [random_ids(rng, 12, vocab) for _ in range(2)])
            for _ in range(n_traj)]


async def baseline_arm(model, work, new_tokens: int, tool_s: float) -> int:
    async def trajectory(prompt, tools):
        context, produced = list(prompt), 0
        for turn in range(len(tools) + 1):
            out = model.generate([context], new_tokens, set())[0]  # blocking: one trajectory at a time
            produced += len(out)
            context += out
            if turn < len(tools):
                await asyncio.sleep(tool_s)
                context += tools[turn]
        return produced
    return sum(await asyncio.gather(*(trajectory(p, t) for p, t in work)))


async def batching_arm(engine, work, new_tokens: int, tool_s: float) -> int:
    from agents.engine import GenerateRequest, SamplingParams

    sampling = SamplingParams(max_new_tokens=new_tokens)

    async def trajectory(prompt, tools):
        out = await engine.generate(GenerateRequest(prompt, sampling=sampling, keep=True))
        produced = len(out.ids)
        for k, tool in enumerate(tools):
            await asyncio.sleep(tool_s)
            out = await engine.generate(GenerateRequest(tool, sampling=sampling, session=out.session,
                                                        keep=k < len(tools) - 1))
            produced += len(out.ids)
        return produced
    return sum(await asyncio.gather(*(trajectory(p, t) for p, t in work)))


def timed(fn):
    t0 = time.perf_counter()
    value = fn()
    return value, time.perf_counter() - t0


def group_cost(model, repeats: int) -> float:
    from agents.engine import BatchingEngine, GenerateRequest, SamplingParams

    prompt = random_ids(random.Random(5), 128, model.cfg.vocab_size)
    one = SamplingParams(max_new_tokens=1, temperature=1.0)
    engine = BatchingEngine(model, slots=8)
    single, group = [], []
    asyncio.run(engine.generate(GenerateRequest(prompt, sampling=one)))  # warm-up
    for _ in range(repeats):
        single.append(timed(lambda: asyncio.run(engine.generate(GenerateRequest(prompt, sampling=one))))[1])
        group.append(timed(lambda: asyncio.run(engine.generate_group(GenerateRequest(prompt, sampling=one), 8)))[1])
    return statistics.median(group) / statistics.median(single)


def parity(model) -> tuple[bool, dict]:
    from agents.engine import BatchingEngine, GenerateRequest, SamplingParams

    rng = random.Random(1)
    vocab = model.cfg.vocab_size
    prompts = [random_ids(rng, rng.randint(3, 100), vocab) for _ in range(32)]

    async def many(engine, requests):
        return await asyncio.gather(*(engine.generate(r) for r in requests))
    greedy = asyncio.run(many(BatchingEngine(model, slots=32),
                              [GenerateRequest(p, sampling=SamplingParams(max_new_tokens=16)) for p in prompts]))
    static = [model.generate([p], 16, set())[0] for p in prompts]
    greedy_ok = all(g.ids == s for g, s in zip(greedy, static))

    sampled = [GenerateRequest(p, sampling=SamplingParams(max_new_tokens=16, temperature=1.0, seed=i))
               for i, p in enumerate(prompts[:16])]
    alone = asyncio.run(BatchingEngine(model, slots=1).generate(sampled[5]))
    crowd = asyncio.run(many(BatchingEngine(model, slots=16), sampled))
    alone_ok = crowd[5].ids == alone.ids

    worst = 0.0
    device = model.backbone.head.weight.device
    with torch.no_grad():
        for req, out in zip(sampled, crowd):
            seq = torch.tensor([req.ids + out.ids], device=device)
            logits = model(seq[:, :-1]).float()[0, len(req.ids) - 1:]
            logits[:, model.media_pad_id] = float("-inf")
            ref = torch.log_softmax(logits, -1).gather(-1, seq[0, len(req.ids):, None]).squeeze(-1)
            worst = max(worst, float((ref.cpu() - torch.tensor(out.logprobs)).abs().max()))
    ok = greedy_ok and alone_ok and worst < 1e-4
    return ok, {"greedy_equal": greedy_ok, "alone_equal": alone_ok, "max_logprob_diff": worst}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--profile", default="tiny")
    p.add_argument("--device", default="cpu")
    p.add_argument("--trajectories", type=int, default=16)
    p.add_argument("--new-tokens", type=int, default=24)
    p.add_argument("--tool-ms", type=float, default=50.0)
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--threads", type=int, default=1, help="torch threads (stage programs run with 1 per rank)")
    p.add_argument("--quick", action="store_true", help="fewer group repeats and tokens (under 3 minutes on 2 cores)")
    args = p.parse_args()
    if args.quick:
        args.repeats, args.new_tokens = 3, 16
    torch.set_num_threads(args.threads)
    from agents.engine import BatchingEngine

    model = build_model(args.profile, args.device)
    work = plan(args.trajectories, model.cfg.vocab_size)
    tool_s = args.tool_ms / 1000
    asyncio.run(baseline_arm(model, work[:1], 2, 0.0))  # warm-up
    base_tokens, base_s = timed(lambda: asyncio.run(baseline_arm(model, work, args.new_tokens, tool_s)))
    engine = BatchingEngine(model, slots=args.trajectories)
    batch_tokens, batch_s = timed(lambda: asyncio.run(batching_arm(engine, work, args.new_tokens, tool_s)))
    base_tps, batch_tps = base_tokens / base_s, batch_tokens / batch_s
    print(f"baseline (generate per trajectory): {base_tokens} tokens in {base_s:.2f} s = {base_tps:.1f} tok/s")
    print(f"batching engine:                    {batch_tokens} tokens in {batch_s:.2f} s = {batch_tps:.1f} tok/s "
          f"({engine.ticks} forwards)")
    cost = group_cost(model, args.repeats)
    print(f"K=8 group prefill / one prefill (128-token prompt): {cost:.2f}x")
    ok, detail = parity(model)
    print("parity: " + ", ".join(f"{k}={v}" for k, v in detail.items()))
    print(f"RESULT speedup={batch_tps / base_tps:.2f} group_cost={cost:.2f} parity={int(ok)} "
          f"baseline_tok_s={base_tps:.1f} batching_tok_s={batch_tps:.1f} "
          f"max_logprob_diff={detail['max_logprob_diff']:.2e} profile={args.profile} device={args.device}")


if __name__ == "__main__":
    main()
