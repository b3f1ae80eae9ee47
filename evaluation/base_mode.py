"""Base-model scoring, the lm-evaluation-harness way: no chat template, no instruction.

A pre-trained checkpoint does not follow a chat turn: asked in chat form it continues the text
(a follow-up question, another "Answer:" line) and is then scored on whatever letter or number it
wrote. Base mode asks the way a base model is measured:

- multiple choice (MMLU, 5-shot from dev) by log-likelihood: each option's continuation (" A" ..
  " D") after the prompt's "Answer:", summed log-probability of its tokens, the highest wins
  (lm-eval's `acc`); nothing is generated, so chance is exactly 1/4 for a model that knows nothing;
- math by few-shot generation with stop sequences: GSM8K 5-shot from its train split as
  "Question: ...\\nAnswer: <worked solution ending #### N>", cut at the next "Question:"; MATH-500,
  AIME and AMC 4-shot as "Problem: ...\\nSolution: ... \\boxed{}", the shots taken from the MATH
  test set outside MATH-500, cut at the next "Problem:"; graded by Math-Verify as in chat mode;
- HumanEval as a plain continuation of the prompt, cut at the Codex stop sequences (a new
  top-level def/class/if/print/comment), checked in the sandbox as in chat mode.

Prompts start after an [EOS], the document boundary pre-training packs documents with.
Generation stops at the model's end tokens; stop strings are applied to the decoded text (the
tokens before a stop are the same whether or not decoding continued past it). Which mode scored a
run is in the report and the MLflow metrics (`mode` 0 = chat, 1 = base).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from evaluation import suites as text_suites
from evaluation.suites import MMLU_CHOICES, Example

GSM8K_SHOTS = 5
MATH_SHOTS = 4
STOPS = {
    "gsm8k": ("Question:", "\n\n\n"),
    "math": ("Problem:", "\n\n\n"),
    "code": ("\nclass ", "\ndef ", "\n#", "\nif ", "\nprint("),
}


def _jsonl(path: Path) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def gsm8k_shots(bench: Path) -> str:
    rows = _jsonl(bench / "gsm8k" / "train.jsonl")[:GSM8K_SHOTS]
    return "".join(f"Question: {r['question']}\nAnswer: {r['answer']}\n\n" for r in rows)


def math_shots(bench: Path) -> str:
    """The first MATH test problems (levels 1-2, short solutions) that are not in MATH-500."""
    held = {r["problem"].strip() for r in _jsonl(bench / "math500" / "test.jsonl")}
    picked = [r for r in _jsonl(bench / "math" / "test.jsonl")
              if r["problem"].strip() not in held and r.get("level") in ("Level 1", "Level 2")
              and len(r["solution"]) < 400][:MATH_SHOTS]
    return "".join(f"Problem:\n{r['problem']}\n\nSolution:\n{r['solution']}\n\n" for r in picked)


def base_prompt(example: Example, shots: dict[str, str]) -> str:
    """The raw-text prompt a base model continues."""
    if example.kind == "choice":
        return example.prompt  # already the 5-shot MMLU prompt ending in "Answer:"
    if example.kind == "code":
        return example.meta["prompt"]
    if example.suite == "gsm8k":
        return shots["gsm8k"] + f"Question: {example.meta['question']}\nAnswer:"
    return shots["math"] + f"Problem:\n{example.meta['problem']}\n\nSolution:\n"


def load_shots(data_root: str) -> dict[str, str]:
    bench = Path(data_root) / "benchmarks"
    return {"gsm8k": gsm8k_shots(bench), "math": math_shots(bench)}


def cut_at_stop(text: str, stops: tuple[str, ...]) -> str:
    cut = min((i for i in (text.find(s) for s in stops) if i >= 0), default=len(text))
    return text[:cut]


def stops_for(example: Example) -> tuple[str, ...]:
    return STOPS["code"] if example.kind == "code" else STOPS["gsm8k" if example.suite == "gsm8k" else "math"]


# ----------------------------------------------------------------------------------------------
# log-likelihood of continuations


def continuation_ids(vocab, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """Context and continuation ids, split the way they tokenize together (a merge across the
    boundary would otherwise score tokens the model never sees in that text)."""
    whole, ctx = vocab.encode(context + continuation), vocab.encode(context)
    cont = whole[len(ctx):] if whole[: len(ctx)] == ctx and len(whole) > len(ctx) else vocab.encode(continuation)
    return [vocab.eos] + ctx, cont


@torch.no_grad()
def loglikelihoods(model, requests: list[tuple[list[int], list[int]]], max_len: int, device,
                   batch_rows: int = 16) -> list[float]:
    """Summed log p(continuation | context) per request. Contexts are cut from the left so that
    context + continuation fits `max_len` tokens; rows are right-padded (causal attention: padding
    never reaches a scored position)."""
    out = []
    for start in range(0, len(requests), batch_rows):
        rows = []
        for ctx, cont in requests[start:start + batch_rows]:
            if not cont or len(cont) >= max_len:
                raise ValueError(f"a continuation of {len(cont)} tokens cannot be scored in {max_len} tokens")
            rows.append((ctx[-(max_len - len(cont)):] or ctx[-1:], cont))
        width = max(len(c) + len(k) for c, k in rows)
        seqs = torch.tensor([c + k + [0] * (width - len(c) - len(k)) for c, k in rows], device=device)
        logp = torch.log_softmax(model(seqs[:, :-1]).float(), -1).gather(-1, seqs[:, 1:, None]).squeeze(-1)
        for j, (c, k) in enumerate(rows):
            out.append(float(logp[j, len(c) - 1:len(c) - 1 + len(k)].sum()))  # position t predicts t + 1
    return out


def eval_choice_by_likelihood(model, vocab, suite: str, examples: list[Example], max_len: int, device,
                              batch_rows: int = 16) -> list[dict]:
    requests = [continuation_ids(vocab, ex.prompt, f" {letter}") for ex in examples for letter in MMLU_CHOICES]
    scores = loglikelihoods(model, requests, max_len, device, batch_rows)
    records = []
    for i, ex in enumerate(examples):
        mine = scores[i * len(MMLU_CHOICES):(i + 1) * len(MMLU_CHOICES)]
        pred = MMLU_CHOICES[max(range(len(mine)), key=lambda j: (mine[j], -j))]  # first on ties
        records.append({"suite": suite, "id": ex.id, "sample": 0, "prompt": ex.prompt, "output": f" {pred}",
                        "extracted": pred, "reference": ex.reference, "score": float(pred == ex.reference),
                        "prompt_tokens": len(requests[i * len(MMLU_CHOICES)][0]), "output_tokens": 0})
    return records


@torch.no_grad()
def eval_generation(model, vocab, suite: str, examples: list[Example], cfg, shots: dict[str, str]) -> list[dict]:
    """Few-shot generation with stop sequences, avg@k samples per prompt as in chat mode."""
    k = cfg.samples_for(suite)
    max_new = min(cfg.max_new_tokens, model.cfg.max_seq_len // 2)
    budget = model.cfg.max_seq_len - max_new
    jobs = [(ex, s) for ex in examples for s in range(k)]
    records = []
    for start in range(0, len(jobs), cfg.batch_size):
        batch = jobs[start:start + cfg.batch_size]
        prompts = [[vocab.eos] + vocab.encode(base_prompt(ex, shots)) for ex, _ in batch]
        prompts = [p[-budget:] for p in prompts]
        generators = [text_suites.request_generator(cfg.seed, ex.id, s, model.backbone.head.weight.device)
                      for ex, s in batch]
        outs = model.generate(prompts, max_new, {vocab.eos, vocab.im_end}, cfg.temperature, cfg.top_p, generators)
        for (ex, sample), prompt, out in zip(batch, prompts, outs):
            text = cut_at_stop(vocab.decode([t for t in out if t not in (vocab.eos, vocab.im_end)]), stops_for(ex))
            scored = text_suites.score(ex, text, timeout_s=cfg.code_timeout_s, memory_mb=cfg.code_memory_mb)
            records.append({"suite": suite, "id": ex.id, "sample": sample, "prompt": ex.prompt, "output": text,
                            "extracted": str(scored.get("extracted")), "reference": str(ex.reference),
                            "score": float(scored["score"]), "prompt_tokens": len(prompt), "output_tokens": len(out)})
    return records
