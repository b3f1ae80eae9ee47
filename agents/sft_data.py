"""Zero-vision SFT data: executed IPython traces for image tasks, and program-of-thought GSM8K.

Every trace is really executed: a teacher program's cells run in a fresh session of the
sandboxed kernel, the real displayed output becomes the tool message, and the trace is kept only
when the answer read from that output equals the ground truth from how the task was built
(GSM8K: the gold `#### N`). The image reaches the model only as text (its variable name and
shape); the question never contains the answer.

Output (under `out_uri`): `conversations.jsonl` (one kept trace per line: id, source, family,
variant, messages, and the task's image recipe (family, split, index, seed) so any trace can be
rebuilt and re-executed) and `tool_data.json` (counts, keep rates, the digest of the JSONL).
"""

from __future__ import annotations

import json
import random
import re
from collections import Counter
from dataclasses import dataclass

from agents.envs.image_tasks import SFT_FAMILIES, boxed, is_correct, make_task
from agents.envs.teachers import answer_from_output, n_variants, teacher
from agents.envs.widesearch import score_table
from agents.kernel import Kernel
from infra import storage
from infra.progress import Log, track

SYSTEM = ("You can run Python with the `ipython` tool: call it with {\"code\": ...} and the value of the last line "
          "is shown. numpy, scipy, skimage and PIL are installed. Give the final answer as \\boxed{...}.")
MANIFEST = "tool_data.json"
CONVERSATIONS = "conversations.jsonl"


@dataclass(frozen=True)
class ToolDataConfig:
    traces_per_family: int = 220  # kept traces wanted per image family
    pot_traces: int = 200  # kept program-of-thought GSM8K traces wanted
    seed: int = 0
    families: tuple[str, ...] = SFT_FAMILIES
    search_traces: int = 120  # kept widesearch_local traces wanted (agents/swarm.py's scripted plans)
    delegation_share: float = 0.2  # of them, plans that delegate with a random fan-out [POSTTRAIN.md §5]


def search_task(index: int, seed: int):
    """The index-th wide widesearch_local training task of the SFT traces (2-6 countries, 1-2 attributes)."""
    import random

    from agents.envs.widesearch import attribute_sets, build_corpus, wide_task

    rng = random.Random(f"search-sft:{seed}:{index}")
    return wide_task(build_corpus(), index, rng.randint(2, 6), attribute_sets("train", rng.randint(1, 2), rng), "train", rng)


def search_trace(index: int, seed: int, fan_out: int) -> tuple[list[dict], list[str], bool]:
    """An executed widesearch_local trace: the scripted plan (serial for fan_out = 0, else that
    many scripted sub-agents) run through the swarm episode with budgets wide enough to finish;
    kept when the submitted table is exactly right. The orchestrator's calls are the trace's
    assistant turns; sub-agents' answers are tool results."""
    import asyncio

    from agents.envs.widesearch import build_corpus
    from agents.swarm import ScriptedSubAgents, SwarmEpisode, SwarmLimits, scripted_orchestrator

    corpus, task = build_corpus(), search_task(index, seed)
    n = len(task.entities)
    episode = SwarmEpisode(corpus, SwarmLimits(main_steps=2 * n + 2, sub_steps=2 * n + 1, budget=10 * n),
                           ScriptedSubAgents(corpus))
    messages = asyncio.run(scripted_orchestrator(episode, task, fan_out))
    outputs = [m["content"] for m in messages if m["role"] == "tool"]
    return messages, outputs, score_table(episode.submitted, task).success


def user_message(task, with_description: bool = True) -> str:
    parts = [task.describe_images()] if with_description else []
    return " ".join(parts + [task.question, "Put the final answer in \\boxed{}."])


def image_trace(kernel: Kernel, task, variant: int) -> tuple[list[dict], list[str], bool]:
    """(messages, the cells' real outputs, kept?) for one teacher variant on one task."""
    plan, cells = teacher(task, variant)
    messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": user_message(task)}]
    outputs = []
    with kernel.open_session() as session:
        for name, pixels in task.images.items():
            session.put(name, pixels)
        for k, code in enumerate(cells):
            result = session.run(code)
            outputs.append(result.observation())
            messages.append({"role": "assistant", "content": plan if k == 0 else "",
                             "tool_calls": [{"name": "ipython", "arguments": {"code": code}}]})
            messages.append({"role": "tool", "name": "ipython", "call_index": k, "content": result.observation()})
            if not result.ok:
                return messages, outputs, False
    answer = answer_from_output(task.family, outputs[-1])
    messages.append({"role": "assistant", "content": f"The answer is \\boxed{{{answer}}}."})
    return messages, outputs, answer is not None and is_correct(task.family, answer, task.answer)


_CALC = re.compile(r"<<([^=<>]+)=([^<>]+)>>")


def pot_program(solution: str) -> str | None:
    """A GSM8K worked solution's calculator annotations `<<expr=value>>` as a Python program whose
    last line displays the final step (None when the solution has no annotations)."""
    steps = [expr.strip() for expr, _ in _CALC.findall(solution)]
    if not steps:
        return None
    lines = [f"step{i + 1} = {expr}" for i, expr in enumerate(steps)]
    return "\n".join(lines + [f"step{len(steps)}"])


def pot_trace(kernel: Kernel, example: dict) -> tuple[list[dict], list[str], bool]:
    gold = example["answer"].rsplit("####", 1)[-1].strip().replace(",", "")
    code = pot_program(example["answer"])
    if code is None:
        return [], [], False
    with kernel.open_session() as session:
        result = session.run(code)
    out = result.observation()
    got = answer_from_output("count", out) if result.ok else None
    try:
        kept = got is not None and abs(float(result.output.strip()) - float(gold)) < 1e-6
    except ValueError:
        kept = False
    messages = [{"role": "system", "content": SYSTEM},
                {"role": "user", "content": example["question"] + " Put the final answer in \\boxed{}."},
                {"role": "assistant", "content": "Let me compute it step by step.",
                 "tool_calls": [{"name": "ipython", "arguments": {"code": code}}]},
                {"role": "tool", "name": "ipython", "call_index": 0, "content": out},
                {"role": "assistant", "content": f"The answer is \\boxed{{{gold}}}."}]
    return messages, [out], kept


def build_tool_data(out_uri: str, gsm8k_train: list[dict], cfg: ToolDataConfig = ToolDataConfig(),
                    log: Log | None = None, kernel: Kernel | None = None) -> dict:
    """Build, execute, filter and write the traces; returns the manifest (also at out_uri)."""
    own = kernel is None
    kernel = kernel or Kernel()
    rows, tried, kept = [], Counter(), Counter()
    try:
        for family in cfg.families:
            index = 0
            pbar = track(range(cfg.traces_per_family), f"sft_tool_data: {family} traces", cfg.traces_per_family, log,
                         unit="trace")
            for _ in pbar:
                while True:  # the next task whose trace is kept
                    task = make_task(family, "train", index, cfg.seed)
                    variant = index % n_variants(family)
                    index += 1
                    messages, outputs, ok = image_trace(kernel, task, variant)
                    tried[family] += 1
                    if ok:
                        kept[family] += 1
                        rows.append({"id": task.id, "source": "image", "family": family, "variant": variant,
                                     "description": task.describe_images(),
                                     "task": {"family": family, "split": "train", "index": index - 1, "seed": cfg.seed},
                                     "messages": messages, "outputs": outputs})
                        break
                    if tried[family] > 5 * cfg.traces_per_family + 50:
                        raise RuntimeError(f"{family}: only {kept[family]} of {tried[family]} traces kept; "
                                           "the teachers or the task builder are broken")
        examples = iter(enumerate(gsm8k_train))
        for _ in track(range(cfg.pot_traces), "sft_tool_data: GSM8K program-of-thought", cfg.pot_traces, log,
                       unit="trace"):
            for i, example in examples:  # the next problem whose program runs to the gold answer
                messages, outputs, ok = pot_trace(kernel, example)
                tried["pot"] += 1
                if ok and gold_leaks({"messages": messages}):  # a question that states its answer: not used
                    ok = False
                if ok:
                    kept["pot"] += 1
                    rows.append({"id": f"gsm8k-train-{i}", "source": "pot", "family": "pot", "variant": 0,
                                 "task": {"gsm8k_index": i}, "messages": messages, "outputs": outputs})
                    break
        rng = random.Random(f"search-fan-out:{cfg.seed}")
        index = 0
        for _ in track(range(cfg.search_traces), "sft_tool_data: widesearch_local traces", cfg.search_traces, log,
                       unit="trace"):
            while True:
                fan_out = rng.randint(1, 6) if rng.random() < cfg.delegation_share else 0
                messages, outputs, ok = search_trace(index, cfg.seed, fan_out)
                family = "delegate" if fan_out else "serial"
                tried[f"search_{family}"] += 1
                index += 1
                if ok:
                    kept[f"search_{family}"] += 1
                    rows.append({"id": f"widesearch-train-{index - 1}", "source": "search", "family": family,
                                 "variant": fan_out, "task": {"index": index - 1, "seed": cfg.seed},
                                 "messages": messages, "outputs": outputs})
                    break
                if index > 3 * cfg.search_traces + 50:
                    raise RuntimeError(f"widesearch_local: only {sum(kept[k] for k in kept if k.startswith('search'))} "
                                       f"of {index} scripted traces succeeded; the corpus or the plans are broken")
    finally:
        if own:
            kernel.close()
    body = "".join(json.dumps(r, sort_keys=True) + "\n" for r in rows).encode()
    manifest = {"digest": storage.sha256_bytes(body), "conversations": CONVERSATIONS,
                "kept": dict(kept), "tried": dict(tried),
                "keep_rate": {k: kept[k] / tried[k] for k in tried if tried[k]},
                "families": list(cfg.families), "seed": cfg.seed, "system_prompt": SYSTEM}
    storage.write_bytes(storage.join(out_uri, CONVERSATIONS), body)
    storage.write_bytes(storage.join(out_uri, MANIFEST), json.dumps(manifest, indent=1, sort_keys=True).encode())
    return manifest


def read_tool_data(uri: str) -> tuple[dict, list[dict]]:
    manifest = json.loads(storage.read_text(storage.join(uri, MANIFEST)))
    body = storage.read_bytes(storage.join(uri, manifest["conversations"]))
    if storage.sha256_bytes(body) != manifest["digest"]:
        raise ValueError(f"{uri}: conversations do not match the manifest digest")
    return manifest, [json.loads(line) for line in body.decode().splitlines() if line.strip()]


def reexecute(kernel: Kernel, row: dict) -> list[str]:
    """Run a stored trace's cells again, in a fresh session with the task rebuilt from its recipe
    (a widesearch_local trace: its plan again, over the same corpus)."""
    if row["source"] == "search":
        return search_trace(row["task"]["index"], row["task"]["seed"], row["variant"])[1]
    cells = [c["arguments"]["code"] for m in row["messages"] if m["role"] == "assistant" for c in m.get("tool_calls", ())]
    with kernel.open_session() as session:
        if row["source"] == "image":
            t = row["task"]
            task = make_task(t["family"], t["split"], t["index"], t["seed"])
            for name, pixels in task.images.items():
                session.put(name, pixels)
        return [session.run(code).observation() for code in cells]


def gold_leaks(row: dict) -> list[str]:
    """User turns that contain the trace's gold answer as a standalone number (should be none).
    The image description ("`img` is a 64x64x3 uint8 RGB array ...") is the same for every task
    of a size and says nothing about the answer; it is left out of the search, or every count of 3
    or area of 64 would be flagged."""
    if row.get("source") == "search":  # the submitted cells, other than the country names the question lists
        submit = row["messages"][-2]["tool_calls"][0]["arguments"]["table"]
        values = [str(c) for r in submit for c in r[1:] if str(c).strip()]
        question = next(m["content"] for m in row["messages"] if m["role"] == "user")
        for key in sorted((str(r[0]) for r in submit), key=len, reverse=True):
            question = question.replace(key, " ")  # the countries asked about are not leaks (Singapore's capital)
        return [v for v in values if re.search(rf"(?<![\w.]){re.escape(v)}(?![\w.])", question)]
    final = boxed(row["messages"][-1]["content"])
    if final is None:
        return ["no final answer"]
    leaks = []
    for m in row["messages"]:
        if m["role"] == "user":
            text = m["content"].replace(row.get("description", ""), "")
            for value in final.split(","):
                if re.search(rf"(?<![\d.]){re.escape(value)}(?![\d.])", text):
                    leaks.append(m["content"])
    return leaks
