"""Learnability of the RL objective: does the reward rise when the stage's own pieces train a
policy that can already produce the rewarded answer but does not prefer it?

    python -m benchmarks.bench_rl_learn [--quick] [--task amen|digit] [--seeds 3] [--iterations 20]

Per seed, in one process (the shipped RL pieces, minus torchrun):
  1. a fresh tiny K25Model and the tiny tokenizer;
  2. a warm-up by cross-entropy that teaches the answer format but not the rewarded choice:
     - `amen` (the acceptance task): instruction-following prompts built from real KJV verses,
       each saying "End your answer with the exact phrase "Amen." Answer in at least 4 words."
       (the phrase alone fails). Warm-up answers are 3-6 words of the verse, ending with "Amen."
       only a quarter of the time (reward starts ~0.2).
     - `digit`: "Which digit is shown?" with a scikit-learn digit image (index < 1200, classes
       `--digits`); warm-up rows are captions of the image (vision features, as the pipeline's ViT
       warm-up gives them) and answers `\\boxed{d}` with d random (the format, not the mapping).
  3. `--iterations` RL iterations with the stage's code: the continuous-batching engine samples
     K answers per prompt with recorded log-probs (training/rollout.collect), the shared rewards
     score them (instruction checker / exact answer), Eq. 1 is built and minimised with MuonClip
     (training/rl.prepare_batch, policy_loss: engine pi_old, per-prompt normalisation,
     zero-variance groups skipped).
Baseline measured in the same run: the mean reward of the first 5 iterations.
Ends with `RESULT task=... gain_min=... gain_mean=... seeds_passed=N/M` (gain: mean reward of the
last 5 iterations minus the first 5; the acceptance is >= 0.2 in every seed).
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
AMEN = {"kind": "ends_with", "phrase": "Amen."}
CONTENT = {"kind": "min_words", "n": 4}  # the phrase alone is not an answer


def amen_tasks(n: int, seed: int):
    from agents.envs.rl_tasks import RLTask, _verses
    from agents.rewards.instructions import describe

    rng = random.Random(f"amen:{seed}")
    verses = _verses()
    picks = [verses[rng.randrange(len(verses))] for _ in range(n)]
    return [RLTask(f"amen/{i}", "instruction", "text",
                   f'Paraphrase this verse: "{v}" {describe(AMEN)} {describe(CONTENT)}', "instructions",
                   [AMEN, CONTENT], answer_text=v) for i, v in enumerate(picks)]


def digit_tasks(n: int, seed: int, digits: str, data_root: str):
    from agents.envs.rl_tasks import build_pool

    pool, _ = build_pool({"perception.digit": 1.0}, 4 * n, seed, data_root)
    return [t for t in pool if t.reference in digits][:n]


def warmup_answer(task, rng: random.Random, digits: str) -> list[dict]:
    """One warm-up conversation (see the module docstring)."""
    from agents.envs.rl_tasks import DIGIT_WORDS

    if task.domain == "instruction":
        words = task.answer_text.split()[: rng.randint(3, 6)]
        answer = " ".join(words) + (" Amen." if rng.random() < 0.25 else ".")
        return task.messages() + [{"role": "assistant", "content": answer}]
    if rng.random() < 0.5:
        return [{"role": "user", "content": "Describe the image.", "media": list(task.media)},
                {"role": "assistant", "content": f"a handwritten {DIGIT_WORDS[int(task.reference)]}"}]
    return task.messages() + [{"role": "assistant", "content": f"\\boxed{{{rng.choice(digits)}}}"}]


def warmup(model, vocab, tasks, steps: int, lr: float, seed: int, digits: str) -> float:
    """Cross-entropy on warm-up conversations, 8 per step, constant lr; returns the last loss."""
    from benchmarks.harness import ce_train

    return ce_train(model, vocab, lambda rng: [warmup_answer(t, rng, digits) for t in rng.sample(tasks, 8)],
                    steps, lr, seed, schedule=False)


def run_seed(vocab, seed: int, task: str, iterations: int, warmup_steps: int, prompts: int, group: int,
             lr: float, data_root: str, digits: str = "01") -> list[float]:
    """Mean reward per RL iteration."""
    from agents.engine import BatchingEngine
    from benchmarks.harness import rl_updates
    from model.config import model_preset
    from model.multimodal import K25Model
    from training.muonclip import MuonClip, muon_param_groups
    from training.rl import prepare_batch
    from training.rollout import RolloutSettings, collect
    from training.spec import RLConfig

    torch.manual_seed(seed)
    model = K25Model(model_preset("tiny", vocab_size=vocab.size, max_seq_len=256), media_pad_id=vocab.media_pad)
    pool = amen_tasks(256, seed) if task == "amen" else digit_tasks(256, seed, digits, data_root)
    warmup(model, vocab, pool, warmup_steps, 2e-3, seed, digits)
    cfg = RLConfig(prompts_per_step=prompts, group_size=group, max_new_tokens=24 if task == "amen" else 12,
                   temperature=1.0, updates_per_rollout=2)
    opt = MuonClip(muon_param_groups(model, lr=lr, weight_decay=0.0))
    engine = BatchingEngine(model, slots=prompts * group, max_len=256, decode=vocab.decode)
    settings = RolloutSettings(group, cfg.max_new_tokens, cfg.temperature, cfg.top_p)
    rng = random.Random(f"learn:{seed}")
    curve = []
    for it in range(iterations):
        tasks = [pool[rng.randrange(len(pool))] for _ in range(prompts)]
        model.eval()
        groups, _ = collect(engine, vocab, tasks, settings, seed * 100003 + it)
        model.train()
        rewards = [[s.score.value for s in g] for g in groups]
        curve.append(sum(map(sum, rewards)) / (prompts * group))
        prepared = prepare_batch(groups, rewards, cfg, vocab.pad, model)
        rl_updates(model, opt, prepared, cfg)
        engine.update_weights(it + 1)
    return curve


def gain(curve: list[float], window: int = 5) -> float:
    return sum(curve[-window:]) / window - sum(curve[:window]) / window


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--task", choices=("amen", "digit"), default="amen")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--iterations", type=int, default=20)
    p.add_argument("--warmup", type=int, default=100)
    p.add_argument("--prompts", type=int, default=8)
    p.add_argument("--group", type=int, default=8)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--digits", default="01", help="digit classes of --task digit (chance = 1/len)")
    p.add_argument("--quick", action="store_true", help="the acceptance setting itself (the defaults)")
    args = p.parse_args()
    sys.path.insert(0, str(REPO / "tests"))
    import helpers

    from infra.settings import default_data_root
    from training.data import load_vocab

    t0 = time.perf_counter()
    data = helpers.build_tiny_data(tempfile.mkdtemp(prefix="bench-rl-learn-"))
    vocab = load_vocab(data.mixture)
    gains = []
    for seed in range(args.seeds):
        t1 = time.perf_counter()
        curve = run_seed(vocab, seed, args.task, args.iterations, args.warmup, args.prompts, args.group, args.lr,
                         default_data_root(), args.digits)
        gains.append(gain(curve))
        print(f"seed {seed}: reward per iteration {[round(c, 2) for c in curve]} gain {gains[-1]:+.3f} "
              f"({time.perf_counter() - t1:.0f} s)")
    passed = sum(g >= 0.2 for g in gains)
    print(f"total {time.perf_counter() - t0:.0f} s")
    print(f"RESULT task={args.task} gain_min={min(gains):.3f} gain_mean={sum(gains) / len(gains):.3f} "
          f"seeds_passed={passed}/{len(gains)}")


if __name__ == "__main__":
    main()
