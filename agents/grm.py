"""Generative reward models (RECIPE.md §6.2; POSTTRAIN.md §4.3): a judge model reads a rubric, a
prompt and a response, writes a short rationale and ends with `Score: k/10`.

    judge = LocalJudge(model, vocab)                      # a checkpoint through our engine
    judge = HTTPJudge("http://127.0.0.1:8000/v1", "k25")  # any OpenAI-compatible server
    ledger = ParseLedger(max_fail_share=0.05)
    score, rationale = ledger.record(judge.score(prompt, response, rubric))  # score in [0, 1] or None

- Rubrics come in families (K2's core and prescriptive rubrics, and task rubrics), each with
  several alternative wordings; a group of rollouts is judged under one sampled variant
  (`Rubrics.sample`), and agreement between variants is measured by `agreement`.
- The parse contract is strict: exactly one `Score: k/10` with an integer 0 <= k <= 10 at the
  end of the judgment, else None. `ParseLedger` counts failures and raises GRMParseError once
  more than `max_fail_share` of judgments (after `min_count`) did not parse, so a broken judge
  stops the stage instead of silently paying 0.
- `gated_reward`: where a verifier exists the GRM term is added only when the verifier passes,
  so a GRM can never turn a verified failure positive.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import random
import re
import urllib.request
from dataclasses import dataclass, field

from agents.chat import parse_assistant, render
from agents.engine import BatchingEngine, GenerateRequest, SamplingParams

JUDGE_SYSTEM = "You are a strict reward model. Judge the response only by the rubric."
_SCORE = re.compile(r"Score:\s*(\d{1,2})\s*/\s*10\s*\.?\s*$")
_ANY_SCORE = re.compile(r"Score:")


@dataclass(frozen=True)
class Rubric:
    family: str
    variant: int
    text: str


# K2's core rubrics (clarity and relevance; fluency; objective interaction without flattery), its
# prescriptive rubrics (no initial praise; no explicit self-justification), and task rubrics
# (strict instruction following; answer correctness). Three wordings each.
RUBRIC_TEXTS = {
    "core": ("The response is clear, relevant to the prompt and free of meta-commentary.",
             "A good response answers what was asked, plainly and to the point.",
             "Reward responses that stay on the prompt's topic and communicate clearly."),
    "no_praise": ("The response must not open by praising the prompt or the user.",
                  "Penalise any flattery at the start, such as calling the question great.",
                  "A compliant response begins with content, never with compliments."),
    "no_self_justification": ("The response must not justify itself or claim to be correct.",
                              "Penalise statements defending the answer's own quality or confidence.",
                              "A compliant response gives its answer without vouching for it."),
    "instruction": ("The response follows every explicit instruction in the prompt.",
                    "Check each constraint the prompt states (length, words, ending, case, format).",
                    "A compliant response satisfies all the stated requirements exactly."),
    "correctness": ("The final answer to the problem is correct.",
                    "Reward only responses whose final answer is right.",
                    "Check the result the response arrives at against the problem."),
}


class Rubrics:
    def __init__(self, texts: dict[str, tuple[str, ...]] = RUBRIC_TEXTS):
        self.by_family = {f: [Rubric(f, i, t) for i, t in enumerate(ts)] for f, ts in texts.items()}

    def sample(self, family: str, rng: random.Random) -> Rubric:
        if family not in self.by_family:
            raise ValueError(f"unknown rubric family {family!r}; known: {sorted(self.by_family)}")
        return rng.choice(self.by_family[family])

    def variants(self, family: str) -> list[Rubric]:
        return list(self.by_family[family])


def judge_messages(prompt: str, response: str, rubric: Rubric, media: list | None = None) -> list[dict]:
    user = {"role": "user", "content": f"Rubric: {rubric.text}\nPrompt: {prompt}\nResponse: {response}\n"
                                       "Give a one-line rationale, then end with 'Score: k/10'."}
    if media:
        user["media"] = list(media)
    return [{"role": "system", "content": JUDGE_SYSTEM}, user]


def judge_target(rationale: str, score: int) -> str:
    """What the judge is trained to write (the parse contract's format)."""
    return f"{rationale} Score: {int(score)}/10"


def parse_score(text: str) -> float | None:
    """k/10 from exactly one `Score: k/10` ending the text (0 <= k <= 10), else None."""
    text = (text or "").strip()
    if len(_ANY_SCORE.findall(text)) != 1:
        return None
    m = _SCORE.search(text)
    if m is None or int(m.group(1)) > 10:
        return None
    return int(m.group(1)) / 10


@dataclass(frozen=True)
class Judgment:
    score: float | None  # in [0, 1]; None: the judgment did not parse
    rationale: str


class GRMParseError(RuntimeError):
    pass


@dataclass
class ParseLedger:
    """Counts judgments and parse failures; refuses to go on above the configured share."""
    max_fail_share: float = 0.05
    min_count: int = 20
    total: int = 0
    failed: int = 0
    by_rubric: dict = field(default_factory=dict)  # family -> [judged, failed, score sum, rationale chars]

    def record(self, j: Judgment, family: str = "") -> tuple[float | None, str]:
        self.total += 1
        self.failed += j.score is None
        stats = self.by_rubric.setdefault(family, [0, 0, 0.0, 0])
        stats[0] += 1
        stats[1] += j.score is None
        stats[2] += j.score or 0.0
        stats[3] += len(j.rationale)
        if self.total >= self.min_count and self.failed > self.max_fail_share * self.total:
            raise GRMParseError(f"{self.failed} of {self.total} GRM judgments did not parse (more than "
                                f"{self.max_fail_share:.0%}); last: {j.rationale[-200:]!r}")
        return j.score, j.rationale

    def metrics(self) -> dict[str, float]:
        out = {"grm_parse_fail_share": self.failed / max(1, self.total)}
        for fam, (n, bad, total, chars) in self.by_rubric.items():
            if fam:
                out[f"grm/{fam}_parse_fail"] = bad / max(1, n)
                out[f"grm/{fam}_mean_score"] = total / max(1, n - bad)
                out[f"grm/{fam}_rationale_chars"] = chars / max(1, n)
        return out


def gated_reward(verified: bool | None, rule_reward: float, grm_score: float | None, weight: float) -> float:
    """(1 - w) * r_rule + w * grm where a verifier exists and passed (the GRM ranks verified
    answers among themselves); the rule reward alone where it failed (a GRM never lifts a
    verified failure); r = grm where no verifier exists. A judgment that did not parse adds 0."""
    grm = grm_score or 0.0
    if verified is None:
        return grm
    if not verified:
        return rule_reward
    return (1 - weight) * rule_reward + weight * grm


def agreement(scores_a: list[float | None], scores_b: list[float | None], threshold: float = 0.5) -> float:
    """Share of items on which two rubric variants give the same verdict (score >= threshold)."""
    pairs = [(a >= threshold, b >= threshold) for a, b in zip(scores_a, scores_b) if a is not None and b is not None]
    return sum(x == y for x, y in pairs) / len(pairs) if pairs else float("nan")


class LocalJudge:
    """A judge checkpoint served by our batching engine (greedy, bounded rationale)."""

    def __init__(self, model, vocab, slots: int = 16, max_new_tokens: int = 96, max_len: int | None = None):
        """`max_len`: the KV-cache length per slot (default the model's whole context)."""
        self.vocab = vocab
        self.engine = BatchingEngine(model, slots=slots, max_len=max_len, decode=vocab.decode)
        self.sampling = SamplingParams(max_new_tokens, 0.0, 1.0, 0, stop_ids=(vocab.im_end, vocab.eos))

    async def ascore(self, prompt: str, response: str, rubric: Rubric, media: list | None = None) -> Judgment:
        messages = judge_messages(prompt, response, rubric, media)
        ids = render(messages, self.vocab, add_generation_prompt=True)
        if len(ids) + self.sampling.max_new_tokens >= self.engine.max_len:
            return Judgment(None, f"judge context too long ({len(ids)} tokens)")
        out = await self.engine.generate(GenerateRequest(ids, list(media or ()), self.sampling))
        text = parse_assistant(out.ids, self.vocab).content
        return Judgment(parse_score(text), text)

    def score_many(self, items: list[tuple]) -> list[Judgment]:
        """Judgments of (prompt, response, rubric[, media]) items, all in flight at once."""
        async def run():
            return await asyncio.gather(*(self.ascore(*item) for item in items))
        return list(asyncio.run(run()))

    def score(self, prompt: str, response: str, rubric: Rubric, media: list | None = None) -> Judgment:
        return asyncio.run(self.ascore(prompt, response, rubric, media))


class HTTPJudge:
    """Any OpenAI-compatible chat-completions server (vLLM, SGLang, a hosted judge). Text only:
    images would need the server's own multimodal message format."""

    def __init__(self, base_url: str, model: str, api_key: str | None = None, timeout_s: float = 60.0,
                 max_tokens: int = 128):
        self.url = base_url.rstrip("/") + "/chat/completions"
        self.model, self.api_key, self.timeout_s, self.max_tokens = model, api_key, timeout_s, max_tokens

    def score(self, prompt: str, response: str, rubric: Rubric, media: list | None = None) -> Judgment:
        if media:
            raise ValueError("HTTPJudge sends text only; judge multimodal traces with LocalJudge")
        body = json.dumps({"model": self.model, "messages": judge_messages(prompt, response, rubric),
                           "temperature": 0.0, "max_tokens": self.max_tokens}).encode()
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        request = urllib.request.Request(self.url, body, headers)
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s) as reply:
                data = json.loads(reply.read())
            text = data["choices"][0]["message"]["content"] or ""
        except (OSError, http.client.HTTPException, KeyError, IndexError, TypeError, ValueError) as e:
            return Judgment(None, f"judge request failed: {type(e).__name__}: {e}")
        return Judgment(parse_score(text), text)
