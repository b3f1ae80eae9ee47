"""Training and test data for the generative reward model: (rubric, prompt, response, verdict),
the verdict always from a hidden programmatic checker, never from a model.

Families and their hidden checkers:
- `instruction`: KJV-verse prompts with two constraints (agents/envs/rl_tasks.py); the checker is
  agents/rewards/instructions.py. Responses are constructed to meet every constraint or to break
  exactly one, plus any policy samples given.
- `no_praise` (K2 prescriptive): a neutral answer, or the same answer opened by flattery; the
  checker matches praise openers.
- `no_self_justification` (K2 prescriptive): a neutral answer, or the same answer followed by a
  claim that it is correct; the checker matches self-vouching phrases.
- `correctness`: small digit-sum problems answered right or wrong; the checker is the math
  reward (Math-Verify).
Prompts are split by a hash of their text (new prompts at test time), and HELD_OUT_FAMILY never
appears in training: its test accuracy measures transfer to an unseen rubric family.
The verdict is binary (all constraints met / rubric satisfied): target score 10 or 0, after the
checker's own reasoning as the rationale (`checker_rationale`: each constraint checked, the right
sum beside the stated one), so the judge learns to check before it scores.
`policy_examples` adds a policy's own samples on instruction prompts (the `grm` stage samples its
upstream SFT checkpoint), verdicts again from the hidden checker.
"""

from __future__ import annotations

import hashlib
import random
import re
from dataclasses import dataclass, replace

from agents.envs.rl_tasks import _verses, instruction_constraints
from agents.grm import Rubrics, judge_messages, judge_target
from agents.rewards import score
from agents.rewards.base import strip_reasoning
from agents.rewards.instructions import check, describe, words

FAMILIES = ("instruction", "no_praise", "no_self_justification", "correctness")
HELD_OUT_FAMILY = "no_self_justification"
PRAISE = ("Great question! ", "What a wonderful question. ", "I love this question! ", "Excellent question. ")
VOUCH = (" I am confident this answer is correct.", " This answer is certainly right, I checked it carefully.",
         " Trust me, my answer is correct.")
_PRAISE_RE = re.compile(r"^\s*(great|what a wonderful|i love this|excellent)\b", re.IGNORECASE)
_VOUCH_RE = re.compile(r"\b(i am confident|certainly right|trust me|my answer is correct)\b", re.IGNORECASE)


@dataclass(frozen=True)
class JudgeExample:
    family: str
    prompt: str
    response: str
    verdict: bool  # the hidden checker's
    split: str  # train | test
    source: str = "constructed"  # constructed | policy (sampled from a checkpoint)
    rationale: str = ""  # the hidden checker's reasoning (checker_rationale), the judge's training target


def _constraint_note(text: str, c: dict) -> str:
    kind, ok = c["kind"], "yes" if check(text, c) else "no"
    if kind in ("max_words", "min_words"):
        bound = "at most" if kind == "max_words" else "at least"
        return f"{len(words(text))} words, {bound} {c['n']}: {ok}"
    if kind in ("include", "exclude"):
        return f'"{c["words"][0]}" {"used" if kind == "include" else "avoided"}: {ok}'
    return {"json": "valid JSON", "ends_with": "ends with the phrase", "lowercase": "all lowercase",
            "uppercase": "all capitals"}[kind] + f": {ok}"


def checker_rationale(family: str, prompt: str, response: str, reference) -> str:
    """The hidden checker's own reasoning as one line (what the judge learns to write before its
    score): each instruction constraint checked, the running sum of the digits beside the stated
    answer, whether the answer opens with praise or vouches for itself."""
    if family == "instruction":
        text = strip_reasoning(response).strip()
        return "; ".join(_constraint_note(text, c) for c in reference) + "."
    if family == "correctness":
        stated = score("math", response, str(reference)).extracted
        digits = [int(d) for d in re.findall(r"\d", prompt.split(":", 1)[-1])]
        steps, total = [], digits[0]
        for d in digits[1:]:  # the running sum, as a small model can check it
            steps.append(f"{total}+{d}={total + d}")
            total += d
        return f"{', '.join(steps)}. The sum is {reference}; the response says {stated or 'nothing'}."
    if family == "no_praise":
        return "It opens with praise." if _PRAISE_RE.search(response) else "It opens with content."
    if family == "no_self_justification":
        return "It vouches for itself." if _VOUCH_RE.search(response) else "It does not vouch for itself."
    raise ValueError(f"unknown judge family {family!r}")


def hidden_check(family: str, prompt: str, response: str, reference) -> bool:
    if family == "instruction":
        return score("instructions", response, reference).correct
    if family == "no_praise":
        return _PRAISE_RE.search(response) is None
    if family == "no_self_justification":
        return _VOUCH_RE.search(response) is None
    if family == "correctness":
        return score("math", response, str(reference)).correct
    raise ValueError(f"unknown judge family {family!r}")


def split_of(prompt: str, test_share: float = 0.2) -> str:
    h = int.from_bytes(hashlib.sha256(prompt.encode()).digest()[:4], "little") / 2**32
    return "test" if h < test_share else "train"


def compliant_text(verse: str, constraints: list[dict], rng: random.Random) -> str:
    words = re.findall(r"[A-Za-z']+", verse)[: rng.randint(4, 8)]
    ending = None
    for c in constraints:
        if c["kind"] == "include" and c["words"][0] not in (w.lower() for w in words):
            words.append(c["words"][0])
        if c["kind"] == "exclude":
            words = [w for w in words if w.lower() not in c["words"]]
        if c["kind"] == "ends_with":
            ending = c["phrase"]
    if any(c["kind"] == "max_words" for c in constraints):
        limit = min(c["n"] for c in constraints if c["kind"] == "max_words") - (len(ending.split()) if ending else 0)
        words = words[:max(1, limit)]
    text = " ".join(words)
    if any(c["kind"] == "lowercase" for c in constraints):
        text = text.lower()
    return f"{text} {ending}" if ending else text + "."


def violate(text: str, constraint: dict, rng: random.Random) -> str:
    kind = constraint["kind"]
    if kind == "include":
        return re.sub(rf"\b{re.escape(constraint['words'][0])}\b", "", text, flags=re.IGNORECASE).replace("  ", " ")
    if kind == "exclude":
        return f"{constraint['words'][0]} {text}"
    if kind == "ends_with":
        return text[: -len(constraint["phrase"])].rstrip() + "." if text.endswith(constraint["phrase"]) else text
    if kind == "lowercase":
        return text[:1].upper() + text[1:] if text[:1].isalpha() else "The " + text
    if kind == "max_words":
        return text + " " + " ".join(["and so it was"] * (constraint["n"] // 3 + 2))
    if kind == "min_words":
        return " ".join(text.split()[: max(1, constraint["n"] - 2)])
    return text


def instruction_examples(n: int, rng: random.Random) -> list[JudgeExample]:
    verses = _verses()
    out = []
    while len(out) < n:
        verse = verses[rng.randrange(len(verses))]
        cons = instruction_constraints(rng, verse)
        prompt = instruction_prompt(verse, cons)
        text = compliant_text(verse, cons, rng)
        if rng.random() < 0.5:
            text = violate(text, rng.choice(cons), rng)
        out.append(JudgeExample("instruction", prompt, text, hidden_check("instruction", prompt, text, cons),
                                split_of(prompt), rationale=checker_rationale("instruction", prompt, text, cons)))
    return out


def _neutral(rng: random.Random) -> tuple[str, str]:
    verse = _verses()[rng.randrange(len(_verses()))]
    words = re.findall(r"[A-Za-z']+", verse)
    return f'What does this verse say: "{verse}"', "It says " + " ".join(words[: rng.randint(4, 9)]).lower() + "."


def prescriptive_examples(family: str, n: int, rng: random.Random) -> list[JudgeExample]:
    out = []
    for _ in range(n):
        prompt, text = _neutral(rng)
        if rng.random() < 0.5:
            text = rng.choice(PRAISE) + text if family == "no_praise" else text + rng.choice(VOUCH)
        out.append(JudgeExample(family, prompt, text, hidden_check(family, prompt, text, None), split_of(prompt),
                                rationale=checker_rationale(family, prompt, text, None)))
    return out


def correctness_examples(n: int, rng: random.Random) -> list[JudgeExample]:
    out = []
    for _ in range(n):
        digits = [rng.randrange(3) for _ in range(rng.randint(2, 4))]
        prompt = "Add these digits: " + " ".join(map(str, digits)) + "."
        answer = sum(digits) + (0 if rng.random() < 0.5 else rng.choice((-2, -1, 1, 2)))
        text = f"The sum is \\boxed{{{answer}}}"
        out.append(JudgeExample("correctness", prompt, text, hidden_check("correctness", prompt, text, sum(digits)),
                                split_of(prompt), rationale=checker_rationale("correctness", prompt, text, sum(digits))))
    return out


def judge_examples(per_family: int, seed: int, test_share: float = 0.2) -> list[JudgeExample]:
    rng = random.Random(f"grm-data:{seed}")
    out = instruction_examples(per_family, rng) + correctness_examples(per_family, rng)
    for fam in ("no_praise", "no_self_justification"):
        out += prescriptive_examples(fam, per_family, rng)
    return [replace(e, split=split_of(e.prompt, test_share)) for e in out]


def instruction_prompt(verse: str, constraints: list[dict]) -> str:
    return f'Paraphrase this verse: "{verse}" ' + " ".join(describe(c) for c in constraints)


def policy_examples(samples: list[tuple[str, str, list[dict]]], test_share: float = 0.2) -> list[JudgeExample]:
    """(prompt, policy response, constraints) triples as instruction-family examples, verdicts from
    the hidden checker: the judge also sees what the policy it will grade actually writes."""
    return [JudgeExample("instruction", p, r, hidden_check("instruction", p, r, c), split_of(p, test_share), "policy",
                         checker_rationale("instruction", p, r, c)) for p, r, c in samples]


def prompt_examples(tasks: list, seed: int, test_share: float = 0.2) -> list[JudgeExample]:
    """Constructed responses to given instruction prompts (RLTask-like: `text`, `reference` the
    constraints, the verse in quotes): one that meets every constraint and one that breaks one,
    so the judge sees both verdicts on exactly the prompts it will grade."""
    rng = random.Random(f"grm-prompt-examples:{seed}")
    out = []
    for task in tasks:
        verse = task.text.split('"')[1] if task.text.count('"') >= 2 else task.text
        good = compliant_text(verse, task.reference, rng)
        for text in (good, violate(good, rng.choice(task.reference), rng)):
            out.append(JudgeExample("instruction", task.text, text, hidden_check("instruction", task.text, text, task.reference),
                                    split_of(task.text, test_share), "constructed",
                                    checker_rationale("instruction", task.text, text, task.reference)))
    return out


def training_conversations(examples: list[JudgeExample], rubrics: Rubrics, seed: int,
                           held_out: str = HELD_OUT_FAMILY) -> list[list[dict]]:
    """SFT conversations for the judge: seen families, train prompts, a random rubric variant each."""
    rng = random.Random(f"grm-sft:{seed}")
    convs = []
    for ex in examples:
        if ex.split != "train" or ex.family == held_out:
            continue
        rubric = rubrics.sample(ex.family, rng)
        convs.append(judge_messages(ex.prompt, ex.response, rubric)
                     + [{"role": "assistant", "content": judge_target(ex.rationale, 10 if ex.verdict else 0)}])
    return convs
