"""RL with the K2.5 policy objective on verifiable math (first version).

    torchrun --nproc-per-node 2 -m training.rl --spec <run dir>/spec.json
    torchrun --nproc-per-node 2 -m training.rl --profile tiny --mixture <mixture.json> \
        --run-dir <uri> --init-from <sft checkpoint>

Each rollout batch: every rank samples `group_size` responses for `prompts_per_step` GSM8K train
problems, recording the sampling policy's log-probs (pi_old). The reward is rule-based: 1 for the
right final number, `format_reward` for a well-formed wrong one. The loss is RECIPE.md §6.1 with
token-level ratio masking and the squared log-ratio penalty; each rollout batch is used for
`updates_per_rollout` optimizer steps, so pi_theta drifts from pi_old and the mask matters.
Generative reward models and Toggle arrive with the RL issue.
"""

from __future__ import annotations

import random

import torch

from training.data import gsm8k_path, read_jsonl
from training.engine import Engine
from training.policy import (
    RolloutCache,
    cut_at_stop,
    math_reward,
    policy_step,
    prompt_ids,
    reference_answer,
    sequence_logprobs,
)
from training.program import program_args


class Rollouts:
    def __init__(self, engine: Engine, problems: list[dict]):
        self.engine, self.problems = engine, problems
        self.cache = RolloutCache(self.collect)

    @torch.no_grad()
    def collect(self, index: int) -> dict:
        e, cfg, vocab = self.engine, self.engine.spec, self.engine.vocab
        rng = random.Random(f"{cfg.train.seed}:{e.rank}:{index}")
        picks = [self.problems[rng.randrange(len(self.problems))] for _ in range(cfg.rl.prompts_per_step)]
        prompts = [prompt_ids(vocab, p["question"]) for p in picks for _ in range(cfg.rl.group_size)]
        gen = torch.Generator().manual_seed(hash((cfg.train.seed, e.rank, index)) % (2**31))
        e.model.eval()
        stop = {vocab.im_end, vocab.eos}
        outs = e.model.generate(prompts, cfg.rl.max_new_tokens, stop, cfg.rl.temperature, cfg.rl.top_p, gen)
        responses = [cut_at_stop(o, stop) or [vocab.eos] for o in outs]
        rewards, correct = [], []
        for i, resp in enumerate(responses):
            r, ok = math_reward(vocab.decode(resp), reference_answer(picks[i // cfg.rl.group_size]["answer"]), cfg.rl.format_reward)
            rewards.append(r)
            correct.append(ok)
        logp_old, mask = sequence_logprobs(e.model, prompts, responses, vocab.pad)
        return {"prompts": prompts, "responses": responses, "rewards": torch.tensor(rewards),
                "correct": torch.tensor(correct, dtype=torch.float), "logp_old": logp_old, "mask": mask}


def main(argv: list[str] | None = None) -> None:
    spec, run = program_args(("rl",), argv)
    problems = read_jsonl(gsm8k_path(run.data_root, "train"))
    engine = Engine(spec, run)
    cfg = engine.spec
    rollouts = Rollouts(engine, problems)

    def step_fn(step: int):
        batch = rollouts.cache.get(step // cfg.rl.updates_per_rollout)
        loss, stats, tokens = policy_step(engine, batch, cfg.rl.group_size)
        stats["correct_rate"] = float(batch["correct"].mean())
        return loss, stats, tokens

    engine.fit(step_fn, lambda: {"seed": cfg.train.seed})


if __name__ == "__main__":
    main()
