"""The generative reward model (RECIPE.md §6.2; POSTTRAIN.md §4.3): SFT of a judge that reads a
rubric, a prompt and a response, writes a one-line rationale and ends with `Score: k/10`.

    torchrun --nproc-per-node 2 -m training.grm --spec <run dir>/spec.json
    torchrun --nproc-per-node 2 -m training.grm --profile tiny --mixture <mixture.json> \
        --run-dir <uri> --init-from <sft checkpoint>

The judge starts from the SFT checkpoint. Its data (agents/grm_data.py) is (rubric, prompt,
response, verdict), every verdict from a hidden programmatic checker, never from a model:
constructed responses for four rubric families (instruction constraints, no initial praise, no
self-justification, answer correctness) plus the SFT checkpoint's own samples on RL's instruction
prompts and a compliant and a violating constructed answer to each of those prompts. Prompts are split train/test by hash, and `grm.held_out_family` is never trained on.
The data is drawn once, before the first step, and stored as `judge_data.parquet` in the run
folder (its digest in the report); a resumed run reads it back.

After training, the judge scores held-out prompts through LocalJudge (our batching engine,
greedy) under a random rubric wording each; reported per family, for the seen families and the
unseen one, with the parse-failure share and the agreement of two wordings on the same items.
The per-item judgments go to `judge_eval.parquet`.
"""

from __future__ import annotations

import io
import random
from dataclasses import asdict

import pandas as pd
import torch.distributed as dist

from agents.engine import BatchingEngine
from agents.envs.rl_tasks import BUILDERS
from agents.grm import LocalJudge, Rubrics, agreement
from agents.grm_data import JudgeExample, judge_examples, policy_examples, prompt_examples, training_conversations
from infra import storage
from training.data import ChatLoader
from training.engine import Engine
from training.program import program_args
from training.reporting import fail
from training.rl import stable_seed
from training.rollout import RolloutSettings, collect

JUDGE_DATA = "judge_data.parquet"
JUDGE_EVAL = "judge_eval.parquet"
POLICY_MAX_NEW_TOKENS = 32  # RL's tiny answer budget: the judge sees responses of that length


def gathered(rows: list, world: int) -> list:
    if world == 1:
        return rows
    parts = [None] * world
    dist.all_gather_object(parts, rows)
    return [r for part in parts for r in part]


def instruction_prompts(n: int, seed: int, data_root: str) -> list:
    """RL's own instruction-following prompts (agents/envs/rl_tasks.py), outside RL's pool ids."""
    build = BUILDERS["instruction"]["text"]
    return [build(10_000 + i, random.Random(stable_seed("grm-policy", seed, i)), data_root) for i in range(n)]


def policy_answers(model, vocab, tasks: list, samples: int, seed: int, max_len: int) -> list[tuple[str, str, list[dict]]]:
    """(prompt, response, constraints) for `samples` answers of `model` to each task."""
    if not tasks:
        return []
    rollouts = BatchingEngine(model, slots=len(tasks) * samples, max_len=max_len, decode=vocab.decode)
    groups, _ = collect(rollouts, vocab, tasks, RolloutSettings(samples, POLICY_MAX_NEW_TOKENS, 1.0, 1.0), seed)
    return [(t.text, s.text, t.reference) for t, g in zip(tasks, groups) for s in g]


def sample_policy(engine: Engine, prompts: list) -> list[tuple[str, str, list[dict]]]:
    """The upstream checkpoint's answers to `prompts`. Each rank samples its share of them;
    every rank gets all the answers."""
    cfg, seed = engine.spec.grm, engine.spec.train.seed
    mine = prompts[engine.rank::engine.world]
    rows = policy_answers(engine.model, engine.vocab, mine, cfg.policy_samples,
                          stable_seed("grm-policy-sample", seed, engine.rank), engine.spec.data.seq_len)
    return gathered(rows, engine.world)


def judge_data(engine: Engine, data_root: str) -> tuple[list[JudgeExample], str]:
    """The judge's examples, drawn once and stored in the run folder (a resumed run reads them)."""
    uri = storage.join(engine.spec.inputs.run_dir, JUDGE_DATA)
    if storage.exists(uri):
        data = storage.read_bytes(uri)
        engine.reporter.log(f"judge data read from {uri} (not drawn again)")
    else:
        if engine.step > 0:
            fail(f"resuming at step {engine.step} but {uri} is missing: the judge's data cannot be drawn again from "
                 "trained weights; use a new run folder")
        cfg = engine.spec.grm
        examples = judge_examples(cfg.per_family, engine.spec.train.seed, cfg.test_share)
        prompts = instruction_prompts(cfg.policy_prompts, engine.spec.train.seed, data_root)
        examples += policy_examples(sample_policy(engine, prompts), cfg.test_share)
        examples += prompt_examples(prompts, engine.spec.train.seed, cfg.test_share)
        buf = io.BytesIO()
        pd.DataFrame([asdict(e) for e in examples]).to_parquet(buf, index=False)
        data = buf.getvalue()
        if engine.rank == 0:
            storage.write_bytes(uri, data)
        if engine.world > 1:
            dist.barrier()
    frame = pd.read_parquet(io.BytesIO(data))
    examples = [JudgeExample(**{k: (bool(v) if k == "verdict" else v) for k, v in row.items()})
                for row in frame.to_dict("records")]
    return examples, storage.sha256_bytes(data)


def held_out_items(examples: list[JudgeExample], per_family: int, seed: int) -> list[JudgeExample]:
    """Up to `per_family` test-split examples of each family, a fixed sample."""
    rng = random.Random(f"grm-eval:{seed}")
    out = []
    for family in sorted({e.family for e in examples}):
        test = [e for e in examples if e.family == family and e.split == "test"]
        out += rng.sample(test, min(per_family, len(test)))
    return out


def evaluate(engine: Engine, examples: list[JudgeExample]) -> dict[str, float]:
    """Held-out accuracy of the trained judge (collective: each rank judges its share)."""
    cfg, seed = engine.spec.grm, engine.spec.train.seed
    rubrics, rng = Rubrics(), random.Random(f"grm-rubric:{seed}:{engine.rank}")
    items = held_out_items(examples, cfg.eval_per_family, seed)[engine.rank::engine.world]
    judge = LocalJudge(engine.model, engine.vocab, slots=32, max_len=engine.spec.data.seq_len)
    chosen = [rubrics.sample(e.family, rng) for e in items]
    judged = judge.score_many([(e.prompt, e.response, r) for e, r in zip(items, chosen)])
    second = judge.score_many([(e.prompt, e.response, rubrics.variants(e.family)[(r.variant + 1) % 3])
                               for e, r in zip(items, chosen)])
    rows = [{"family": e.family, "source": e.source, "prompt": e.prompt, "response": e.response, "verdict": e.verdict,
             "rubric_variant": r.variant, "score": j.score, "second_score": j2.score, "rationale": j.rationale}
            for e, r, j, j2 in zip(items, chosen, judged, second)]
    rows = gathered(rows, engine.world)
    frame = pd.DataFrame(rows)
    if engine.rank == 0:
        buf = io.BytesIO()
        frame.to_parquet(buf, index=False)
        storage.write_bytes(storage.join(engine.spec.inputs.run_dir, JUDGE_EVAL), buf.getvalue())
    return judge_figures(frame, cfg.held_out_family)


def judge_figures(frame: pd.DataFrame, held_out: str) -> dict[str, float]:
    """Accuracy per family (a judgment that did not parse counts as wrong), seen and unseen."""
    parsed = frame["score"].notna()
    right = parsed & ((frame["score"].fillna(0) >= 0.5) == frame["verdict"])
    by_family = right.groupby(frame["family"]).mean()
    seen = [v for f, v in by_family.items() if f != held_out]
    unseen = frame["family"] == held_out
    out = {f"judge_acc/{f}": float(v) for f, v in by_family.items()}
    # the parse contract is measured on the families RL judges with (the seen ones); the unseen
    # family's own failures are reported beside it
    out.update(judge_acc_seen=float(sum(seen) / len(seen)) if seen else float("nan"),
               judge_acc_unseen=float(by_family.get(held_out, float("nan"))),
               judge_parse_fail_share=float(1 - parsed[~unseen].mean()) if (~unseen).any() else float("nan"),
               judge_parse_fail_unseen=float(1 - parsed[unseen].mean()) if unseen.any() else float("nan"),
               judge_variant_agreement=agreement(_scores(frame["score"]), _scores(frame["second_score"])),
               judge_eval_items=float(len(frame)))
    return out


def _scores(column: pd.Series) -> list[float | None]:
    return [None if pd.isna(x) else float(x) for x in column]


def main(argv: list[str] | None = None) -> None:
    spec, run = program_args(("grm",), argv)
    engine = Engine(spec, run)  # from the SFT checkpoint (the asset's upstream), or fresh weights standalone
    examples, digest = judge_data(engine, run.data_root)
    convs = training_conversations(examples, Rubrics(), spec.train.seed, spec.grm.held_out_family)
    loader = ChatLoader(convs, engine.vocab, spec.data.seq_len, spec.data.batch_size, spec.train.seed,
                        engine.rank, engine.world)
    counts = pd.Series([(e.family, e.split, e.source) for e in examples]).value_counts()
    engine.reporter.log(f"judge data (digest {digest[:12]}): {len(examples)} examples, {len(convs)} training "
                        f"conversations, held-out family {spec.grm.held_out_family!r}; "
                        + ", ".join(f"{'/'.join(k)}={v}" for k, v in sorted(counts.items())))
    engine.report_metadata.update({"judge_data_uri": storage.join(spec.inputs.run_dir, JUDGE_DATA),
                                   "judge_data_digest": digest, "judge_training_examples": len(convs),
                                   "judge_eval_uri": storage.join(spec.inputs.run_dir, JUDGE_EVAL),
                                   "judge_held_out_family": spec.grm.held_out_family})
    device = engine.device

    def step_fn(step: int):
        b = loader.batch(step)
        loss = engine.model.loss(b.tokens.to(device), b.targets.to(device), None, b.attn_mask.to(device))
        return loss, {"verdict_tokens": float((b.targets != -100).sum())}, b.text_tokens

    engine.fit(step_fn, loader.state_dict, after=lambda: evaluate(engine, examples))


if __name__ == "__main__":
    main()
