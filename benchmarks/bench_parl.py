"""The Agent Swarm's structural speed-up, measured on widesearch_local (agents/swarm.py).

    python -m benchmarks.bench_parl --oracle [--quick]

`--oracle` (no learning): SCRIPTED serial and swarm plans (the oracle arms, never a model) on
wide tasks of n countries x 2 attributes, n in {4, 8, 16}, through the episode's own tools, with
budgets wide enough to finish. Serial: the orchestrator searches then opens each page itself,
one tool call per step, then submits (closed form 2n + 1). Swarm: one stage deals the countries
to k = min(n, 8) scripted sub-agents (each searching then opening its share one call per step,
then answering), then submits (closed form 3 + 2 * ceil(n / k)). Critical steps are read from
the recorded execution graph and checked against the closed forms; R* = CS_serial / CS_swarm.

Wall-clock: each step of every agent also decodes `--step-tokens` tokens on one shared
continuous-batching engine (a fresh tiny model), so concurrent sub-agents decode together as
they would with model sub-agents; the baseline is the serial plan's wall-clock in the same run.
Ends with `RESULT R_star_4=... R_star_8=... R_star_16=... oracle_f1=... wall_16=...`.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import random
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def oracle(args) -> None:
    import torch

    from agents.engine import BatchingEngine, GenerateRequest, SamplingParams
    from agents.envs.widesearch import build_corpus, wide_task
    from agents.swarm import ScriptedSubAgents, SwarmEpisode, SwarmLimits, scripted_orchestrator
    from model.config import model_preset
    from model.multimodal import K25Model

    sys.path.insert(0, str(REPO / "tests"))
    import helpers

    from training.data import load_vocab

    corpus = build_corpus()
    vocab = load_vocab(helpers.build_tiny_data(tempfile.mkdtemp(prefix="bench-parl-")).mixture)
    torch.manual_seed(0)
    model = K25Model(model_preset("tiny", vocab_size=vocab.size), media_pad_id=vocab.media_pad).eval()
    engine = BatchingEngine(model, slots=16, max_len=256)
    prompt = vocab.encode("Search the encyclopedia for the next country.")
    calls = 0

    async def pace() -> None:
        nonlocal calls
        calls += 1
        await engine.generate(GenerateRequest(prompt, sampling=SamplingParams(args.step_tokens, seed=calls)))

    figures, f1s = {}, []
    print("| n | k | CS serial (closed form) | CS swarm (closed form) | R* | item-F1 serial / swarm | "
          "wall serial s | wall swarm s | wall ratio |")
    print("|---|---|---|---|---|---|---|---|---|")
    for n in (4, 8, 16):
        k = min(n, 8)
        task = wide_task(corpus, 0, n, ("capital", "population"), "train", random.Random(n))
        wide = SwarmLimits(main_steps=2 * n + 2, sub_steps=2 * math.ceil(n / k) + 1, max_concurrent=k, budget=10 * n)
        out = {}
        for fan in (0, k):
            episode = SwarmEpisode(corpus, wide, ScriptedSubAgents(corpus, pace=pace if args.step_tokens else None))
            t0 = time.perf_counter()
            asyncio.run(scripted_orchestrator(episode, task, fan, pace if args.step_tokens else None))
            out[fan] = (episode.graph.critical_steps(), episode.rewards(0, 0)["r_perf"], time.perf_counter() - t0)
        (cs_s, f1_s, wall_s), (cs_w, f1_w, wall_w) = out[0], out[k]
        closed_s, closed_w = 2 * n + 1, 3 + 2 * math.ceil(n / k)
        assert (cs_s, cs_w) == (closed_s, closed_w), f"n={n}: measured CS {cs_s}, {cs_w} vs closed form {closed_s}, {closed_w}"
        f1s += [f1_s, f1_w]
        figures[f"R_star_{n}"] = cs_s / cs_w
        figures[f"wall_{n}"] = wall_s / max(wall_w, 1e-9)
        print(f"| {n} | {k} | {cs_s} ({closed_s}) | {cs_w} ({closed_w}) | {cs_s / cs_w:.2f} | {f1_s:.2f} / {f1_w:.2f} | "
              f"{wall_s:.2f} | {wall_w:.2f} | {wall_s / max(wall_w, 1e-9):.2f} |", flush=True)
    print(f"RESULT R_star_4={figures['R_star_4']:.3f} R_star_8={figures['R_star_8']:.3f} "
          f"R_star_16={figures['R_star_16']:.3f} oracle_f1={min(f1s):.3f} wall_16={figures['wall_16']:.2f}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--oracle", action="store_true", help="the scripted oracles: R* and wall-clock (no learning)")
    p.add_argument("--step-tokens", type=int, default=32, help="tokens each agent step decodes (0: no pacing)")
    p.add_argument("--quick", action="store_true", help="fewer decoded tokens per step")
    args = p.parse_args()
    if args.quick:
        args.step_tokens = min(args.step_tokens, 16)
    if not args.oracle:
        raise SystemExit("the learning arms of bench_parl are not built yet; run with --oracle")
    oracle(args)


if __name__ == "__main__":
    main()
