"""The generative reward model inside RL (RECIPE.md §6.2): each group is judged under one rubric
(a family drawn from the task's own rubric and `rl.grm_families`, then one of its wordings), and
the judge's score joins the rule reward through `agents.grm.gated_reward`: where the task's
verifier passes, r = (1 - w) * rule + w * GRM; a verified failure keeps its rule reward, so the
judge can rank good answers but never lift a wrong one.

Logged per iteration: the mean GRM score (`grm_mean`) and per rubric family (`grm/<family>`), the
share of samples the GRM term was added to (`grm_gated_share`), how often the judge's verdict
agrees with the verifier's (`grm_verifier_agreement`), the agreement of two wordings of the same
rubric on one group (`grm_variant_agreement`) and the run's parse-failure share; ParseLedger stops
the stage once more than `rl.grm_max_parse_fail` of judgments do not parse.
"""

from __future__ import annotations

import random
from typing import Callable

from agents.grm import RUBRIC_TEXTS, LocalJudge, ParseLedger, Rubric, Rubrics, gated_reward
from training.spec import RLConfig

# The task rubric of a domain, judged beside the general families (K2's "task rubrics").
TASK_RUBRIC = {"instruction": "instruction", "reasoning": "correctness"}
FAMILIES = tuple(sorted(RUBRIC_TEXTS))  # the figures' fixed order across ranks


class GRMReward:
    def __init__(self, judge: LocalJudge, cfg: RLConfig):
        self.judge, self.cfg = judge, cfg
        self.rubrics = Rubrics()
        self.ledger = ParseLedger(max_fail_share=cfg.grm_max_parse_fail)

    def families(self, domain: str) -> list[str]:
        own = [TASK_RUBRIC[domain]] if domain in TASK_RUBRIC else []
        return own + [f for f in self.cfg.grm_families if f not in own]

    def rubric(self, domain: str, rng: random.Random) -> Rubric:
        return self.rubrics.sample(rng.choice(self.families(domain)), rng)

    def rewards(self, groups: list[list], rule: list[list[float]], seed: int,
                reduce: Callable[[list[float]], list[float]] = list) -> tuple[list[list[float]], dict[str, float]]:
        """Gated rewards for `groups` of rollout samples (one task each) and their figures;
        `reduce` sums the figures' counts over the data-parallel ranks (training/rl.all_sum)."""
        rng = random.Random(seed)
        rubrics = [self.rubric(g[0].task.domain, rng) for g in groups]
        items = [(s.task.text, s.text, rub, list(s.task.media)) for g, rub in zip(groups, rubrics) for s in g]
        judged = self.judge.score_many(items)
        scores = [self.ledger.record(j, rub.family)[0] for j, (_, _, rub, _) in zip(judged, items)]
        samples = [s for g in groups for s in g]
        out, flat = [], iter(scores)
        for g, r in zip(groups, rule):
            out.append([gated_reward(s.score.correct, v, next(flat), self.cfg.grm_weight) for s, v in zip(g, r)])
        verified = [bool(s.score.correct) for s in samples]
        family_sums = [sum(x or 0.0 for x, it in zip(scores, items) if it[2].family == f) for f in FAMILIES]
        family_counts = [sum(it[2].family == f for it in items) for f in FAMILIES]
        pairs, agreeing = self._variant_pairs(groups[0], rubrics[0], scores[:len(groups[0])])
        local = [len(scores), sum(x or 0.0 for x in scores), sum(verified),
                 sum(x is not None and (x >= 0.5) == v for x, v in zip(scores, verified)), sum(map(sum, out)),
                 self.ledger.failed, self.ledger.total, pairs, agreeing, *family_sums, *family_counts]
        n, grm, gated, agree, reward, failed, total, pairs, agreeing, *per_family = reduce(local)
        n = max(n, 1)
        stats = {"grm_mean": grm / n, "grm_gated_share": gated / n, "grm_verifier_agreement": agree / n,
                 "grm_reward_mean": reward / n, "grm_parse_fail_share": failed / max(total, 1)}
        if pairs:
            stats["grm_variant_agreement"] = agreeing / pairs
        k = len(FAMILIES)
        stats.update({f"grm/{f}": per_family[i] / per_family[k + i] for i, f in enumerate(FAMILIES) if per_family[k + i]})
        return out, stats

    def _variant_pairs(self, group: list, rubric: Rubric, scores: list[float | None]) -> tuple[int, int]:
        """The first group judged again under the next wording of its rubric: (items both
        wordings parsed, items on which their verdicts agree)."""
        variants = self.rubrics.variants(rubric.family)
        other = variants[(rubric.variant + 1) % len(variants)]
        again = self.judge.score_many([(s.task.text, s.text, other, list(s.task.media)) for s in group])
        both = [(a >= 0.5, b.score >= 0.5) for a, b in zip(scores, again) if a is not None and b.score is not None]
        return len(both), sum(x == y for x, y in both)
