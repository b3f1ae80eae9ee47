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

from agents.grm import LocalJudge, ParseLedger, Rubric, Rubrics, agreement, gated_reward
from training.spec import RLConfig

# The task rubric of a domain, judged beside the general families (K2's "task rubrics").
TASK_RUBRIC = {"instruction": "instruction", "reasoning": "correctness"}


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

    def rewards(self, groups: list[list], rule: list[list[float]], seed: int) -> tuple[list[list[float]], dict[str, float]]:
        """Gated rewards for `groups` of rollout samples (one task each) and their figures."""
        rng = random.Random(seed)
        rubrics = [self.rubric(g[0].task.domain, rng) for g in groups]
        items = [(s.task.text, s.text, rub, list(s.task.media)) for g, rub in zip(groups, rubrics) for s in g]
        judged = self.judge.score_many(items)
        scores = [self.ledger.record(j, rub.family)[0] for j, (_, _, rub, _) in zip(judged, items)]
        out, k, by_family = [], 0, {}
        gated = agree = 0
        for g, r in zip(groups, rule):
            row = []
            for s, rule_value in zip(g, r):
                grm = scores[k]
                k += 1
                row.append(gated_reward(s.score.correct, rule_value, grm, self.cfg.grm_weight))
                gated += bool(s.score.correct)
                agree += grm is not None and (grm >= 0.5) == bool(s.score.correct)
                by_family.setdefault(items[k - 1][2].family, []).append(grm or 0.0)
            out.append(row)
        n = max(1, len(scores))
        stats = {"grm_mean": sum(x or 0.0 for x in scores) / n, "grm_gated_share": gated / n,
                 "grm_verifier_agreement": agree / n, "grm_reward_mean": sum(map(sum, out)) / n,
                 "grm_parse_fail_share": self.ledger.failed / max(1, self.ledger.total)}
        variants = self._variant_agreement(groups[0], rubrics[0], scores[:len(groups[0])])
        if variants == variants:  # NaN: nothing parsed under one of the wordings
            stats["grm_variant_agreement"] = variants
        stats.update({f"grm/{f}": sum(v) / len(v) for f, v in sorted(by_family.items())})
        return out, stats

    def _variant_agreement(self, group: list, rubric: Rubric, scores: list[float | None]) -> float:
        """The first group judged again under the next wording of its rubric."""
        other = self.rubrics.variants(rubric.family)[(rubric.variant + 1) % len(self.rubrics.variants(rubric.family))]
        again = self.judge.score_many([(s.task.text, s.text, other, list(s.task.media)) for s in group])
        return agreement(scores, [j.score for j in again])
