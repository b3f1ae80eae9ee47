"""RL with the K2.5 policy objective on verifiable math (first version).

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
from training.engine import Engine, parse_args
from training.policy import (cut_at_stop, group_advantages, k25_policy_loss, math_reward, prompt_ids,
                             reference_answer, sequence_logprobs)


class Rollouts:
    """Rollout batch `i` is a pure function of (seed, rank, i), so resume replays it exactly."""

    def __init__(self, engine: Engine, problems: list[dict]):
        self.engine, self.problems = engine, problems
        self.cache: dict[int, dict] = {}

    def get(self, index: int) -> dict:
        if index not in self.cache:
            self.cache = {index: self._collect(index)}
        return self.cache[index]

    @torch.no_grad()
    def _collect(self, index: int) -> dict:
        e, cfg, vocab = self.engine, self.engine.cfg, self.engine.vocab
        rng = random.Random(f"{cfg.seed}:{e.rank}:{index}")
        picks = [self.problems[rng.randrange(len(self.problems))] for _ in range(cfg.prompts_per_step)]
        prompts = [prompt_ids(vocab, p["question"]) for p in picks for _ in range(cfg.group_size)]
        gen = torch.Generator().manual_seed(hash((cfg.seed, e.rank, index)) % (2**31))
        e.model.eval()
        stop = {vocab.im_end, vocab.eos}
        outs = e.model.generate(prompts, cfg.max_new_tokens, stop, cfg.temperature, cfg.top_p, gen)
        responses = [cut_at_stop(o, stop) or [vocab.eos] for o in outs]
        rewards, correct = [], []
        for i, resp in enumerate(responses):
            r, ok = math_reward(vocab.decode(resp), reference_answer(picks[i // cfg.group_size]["answer"]), cfg.format_reward)
            rewards.append(r)
            correct.append(ok)
        logp_old, mask = sequence_logprobs(e.model, prompts, responses, vocab.pad)
        return {"prompts": prompts, "responses": responses, "rewards": torch.tensor(rewards),
                "correct": torch.tensor(correct, dtype=torch.float), "logp_old": logp_old, "mask": mask}


def main(argv: list[str] | None = None) -> None:
    args = parse_args(("rl",), argv)
    problems = read_jsonl(gsm8k_path(args.data_root, "train"))
    engine = Engine(args)
    cfg = engine.cfg
    rollouts = Rollouts(engine, problems)

    def step_fn(step: int):
        batch = rollouts.get(step // cfg.updates_per_rollout)
        engine.model.train()
        logp, mask = sequence_logprobs(engine.model, batch["prompts"], batch["responses"], engine.vocab.pad)
        adv = group_advantages(batch["rewards"], cfg.group_size).to(logp.device)
        loss, stats = k25_policy_loss(logp, batch["logp_old"], adv, mask, cfg.ratio_low, cfg.ratio_high, cfg.kl_tau)
        stats.update(reward_mean=float(batch["rewards"].mean()), correct_rate=float(batch["correct"].mean()),
                     response_tokens=float(mask.sum() / mask.shape[0]))
        return loss, stats, int(mask.sum())

    engine.fit(step_fn, lambda: {"seed": cfg.seed})


if __name__ == "__main__":
    main()
