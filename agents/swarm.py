"""The Agent Swarm runtime (RECIPE.md §7; POSTTRAIN.md §5): an orchestrator with
`create_subagent(name, system_prompt)` and `assign_task(agent, prompt)` beside the wide-search
tools, sub-agents that run their own agent loops, and the execution graph that measures the
episode in critical steps.

    episode = SwarmEpisode(corpus, task, SwarmLimits(), ModelSubAgents(frozen_engine, vocab, corpus))
    result = await run_agent(engine, vocab, episode, task, limits, on_turn=episode.on_turn)
    episode.graph.critical_steps(), episode.rewards(lambdas)

- **Stages.** Each orchestrator turn is one stage: one main step plus the sub-agents its
  `assign_task` calls launched. All calls of a turn start concurrently (agents/loop.py runs a
  turn's calls with asyncio), so sub-agents sharing one continuous-batching engine decode
  together. Each sub-agent returns one message (its final answer), cut to
  `message_tokens`, which reaches the orchestrator as a tool result (loss mask 0).
- **Critical steps** come from the recorded graph (`ExecutionGraph`: a node per agent, stage and
  step): CS = sum over stages of (main steps + the longest sub-agent's steps). Before each turn
  the episode stops if the next stage could not fit in `budget`; a sub-agent launched at a stage
  gets at most the steps left, and one that has not answered by then is unfinished.
- **Sub-agents** are a frozen checkpoint (`ModelSubAgents`) or `ScriptedSubAgents`, a
  deterministic search-then-open policy over the same tools, labelled as scripted wherever it is
  used (the curriculum's small sub-agent and the oracle arm, never the system under test).
- **Rewards** (`SwarmEpisode.rewards`): r_perf = item-F1 of the submitted table; r_finish = the
  share of assignments that are not spurious and answered within their cap (0 with none); r_parallel =
  min(1, valid sub-agents / parallel_target). An empty, repeated or entity-free assignment is
  spurious: it counts as unfinished and its agent as not valid.
"""

from __future__ import annotations

import asyncio
import random
import re
from collections import Counter
from dataclasses import dataclass, field, replace
from typing import Awaitable, Callable, Protocol

from agents.envs.widesearch import Corpus, WideSearchEnv, WideSearchTask, normalise, score_table
from agents.loop import LoopLimits, ToolResult, run_agent

MAIN = "main"
PAGE_TOKENS = 640  # tool results up to this are whole: the longest country page is 607 tiny-tokenizer tokens (KJV chapters are cut)


@dataclass(frozen=True)
class SwarmLimits:
    main_steps: int = 6  # orchestrator turns
    sub_steps: int = 4  # turns of one sub-agent
    max_concurrent: int = 8  # sub-agents alive at once (assignments of one stage)
    budget: int = 8  # critical steps per episode
    message_tokens: int = 96  # a sub-agent's answer reaching the orchestrator is cut to this
    parallel_target: int = 4  # r_parallel saturates at this many valid sub-agents


# ---- the execution graph

@dataclass(frozen=True)
class Node:
    agent: str  # MAIN or a sub-agent's name
    stage: int  # the orchestrator turn it belongs to
    step: int  # the agent's step within that stage


@dataclass
class ExecutionGraph:
    nodes: list[Node] = field(default_factory=list)

    def add(self, agent: str, stage: int) -> Node:
        step = sum(1 for n in self.nodes if n.agent == agent and n.stage == stage)
        node = Node(agent, stage, step)
        self.nodes.append(node)
        return node

    def stage_cost(self, stage: int) -> int:
        steps = Counter(n.agent for n in self.nodes if n.stage == stage)
        main = steps.pop(MAIN, 0)
        return main + max(steps.values(), default=0)

    def critical_steps(self) -> int:
        return sum(self.stage_cost(s) for s in sorted({n.stage for n in self.nodes}))

    def total_steps(self) -> int:
        return len(self.nodes)


# ---- sub-agents

class SubAgents(Protocol):
    label: str  # "model" or "scripted", carried into every figure

    async def run(self, system_prompt: str, prompt: str, cap: int, on_step: Callable[[], None]) -> tuple[str, bool]:
        """(final message, answered within `cap` steps); `on_step()` once per step taken."""


class SubAgentEnv(WideSearchEnv):
    """A sub-agent's tools: search, open, find (ipython with a kernel); it answers in a message."""

    def __init__(self, corpus: Corpus, system_prompt: str, **kw):
        super().__init__(corpus, **kw)
        self.system_prompt = system_prompt
        del self.tools["submit"]

    def reset(self, prompt: str):
        return [{"role": "system", "content": self.system_prompt}, {"role": "user", "content": prompt}], []


@dataclass
class ModelSubAgents:
    """Sub-agents sampled from a frozen checkpoint's engine (all of them share it)."""
    engine: object
    vocab: object
    corpus: Corpus
    max_new_tokens: int = 64
    temperature: float = 1.0
    seed: int = 0
    label: str = "model"
    runs: int = 0

    async def run(self, system_prompt: str, prompt: str, cap: int, on_step) -> tuple[str, bool]:
        self.runs += 1
        env = SubAgentEnv(self.corpus, system_prompt)
        limits = LoopLimits(max_turns=cap, max_new_tokens=self.max_new_tokens, max_tool_tokens=PAGE_TOKENS,
                            temperature=self.temperature, seed=self.seed * 100_003 + self.runs)

        def step(turn: int) -> bool:
            on_step()
            return True
        result = await run_agent(self.engine, self.vocab, env, prompt, limits, on_turn=step)
        return result.final_text, result.finish == "answer"


@dataclass
class ScriptedSubAgents:
    """SCRIPTED (not a model): for each country the prompt names, search for it, then open its
    page (one tool call per step); then answer "country | attribute | ..." from the page text:
    2m + 1 steps for m countries, over the same tools a model sub-agent has. `error_rate`
    corrupts that share of cells."""
    corpus: Corpus
    error_rate: float = 0.0
    seed: int = 0
    label: str = "scripted"
    pace: Callable[[], Awaitable[None]] | None = None  # awaited once per step (e.g. decode on a shared engine)

    async def _step(self, on_step) -> None:
        on_step()
        if self.pace is not None:
            await self.pace()

    async def run(self, system_prompt: str, prompt: str, cap: int, on_step) -> tuple[str, bool]:
        env = SubAgentEnv(self.corpus, system_prompt)
        countries = mentioned_countries(prompt, self.corpus)
        attributes = asked_attributes(prompt)
        if 2 * len(countries) + 1 > cap:  # it works its whole cap and does not get to answer
            for _ in range(cap):
                await self._step(on_step)
            return "", False
        rng = random.Random(f"scripted:{self.seed}:{prompt}")
        lines = []
        for country in countries:  # one tool call per step, like the serial oracle
            await self._step(on_step)
            found = await env.tools["search"]({"queries": [country]})
            doc = re.search(rf"^- (\S+) \| {re.escape(country)} \|", found.text, re.M)
            await self._step(on_step)
            page = await env.tools["open"]({"doc_id": doc.group(1)}) if doc else ToolResult("", ok=False)
            cells = [("unknown" if rng.random() < self.error_rate else page_value(page.text, country, a)) for a in attributes]
            lines.append(" | ".join([country, *cells]))
        await self._step(on_step)  # the answer
        return "\n".join(lines), True


PAGE_PATTERNS = {
    "capital": r"The capital of {c} is (.+?){end}",
    "population": r"{c} has a population of ([\d,]+) people",
    "area": r"{c} covers an area of ([\d,.]+) square kilometres",
    "region": r"{c} belongs to the region of (.+?){end}",
    "subregion": r"Geographers place {c} in (.+?){end}",
    "currency": r"The currency code used in {c} is (.+?){end}",
    "languages": r"The language codes of {c} are (.+?){end}",
    "calling_code": r"The international calling code of {c} is (\+[\d-]+)",
    "demonym": r"People from {c} are called (.+?){end}",
    "provinces": r"{c} is divided into (\d+) provinces",
}


def page_value(text: str, country: str, attribute: str) -> str:
    """The scripted agents' reading of a page: the value in the sentence stating `attribute`."""
    c = re.escape(country)
    # a value ends where the page's next sentence starts (values such as "St. Peter Port" hold dots)
    end = rf"\.(?= (?:The |This |Geographers |People |{c} )|$)"
    m = re.search(PAGE_PATTERNS[attribute].format(c=c, end=end), text)
    return m.group(1).replace(",", "") if attribute in ("population", "area") and m else (m.group(1) if m else "")


def asked_attributes(text: str) -> list[str]:
    """The attributes a prompt asks for, in the order it names them ("region" is not "subregion")."""
    found = []
    for a in PAGE_PATTERNS:
        m = re.search(rf"(?<![a-z]){a.replace('_', ' ')}(?![a-z])", text.lower())
        if m:
            found.append((m.start(), a))
    return [a for _, a in sorted(found)]


def mentioned_countries(text: str, corpus: Corpus) -> list[str]:
    """Countries named in `text`, in order of first mention; a longer name wins over one inside it
    (Niger in Nigeria)."""
    found = []
    for name in sorted(corpus.facts, key=len, reverse=True):
        for m in re.finditer(rf"(?<![A-Za-z]){re.escape(name)}(?![A-Za-z])", text):
            if not any(s <= m.start() < e for _, s, e in found):
                found.append((name, m.start(), m.end()))
    return [n for n, _, _ in sorted(found, key=lambda x: x[1]) if n]


# ---- the orchestrator's episode

@dataclass
class Assignment:
    agent: str
    prompt: str
    stage: int
    spurious: str = ""  # why it is spurious ("" = a real assignment)
    message: str = ""
    finished: bool = False


SUB_SYSTEM = "You are a search sub-agent. Use search and open, then answer with what you found, one line per country."


class SwarmEpisode(WideSearchEnv):
    """The orchestrator's environment: the wide-search tools plus create_subagent and assign_task,
    the execution graph and the budget (`on_turn`, passed to run_agent)."""

    def __init__(self, corpus: Corpus, limits: SwarmLimits, subagents: SubAgents, delegate: bool = True,
                 count_tokens: Callable[[str], int] | None = None, **kw):
        super().__init__(corpus, **kw)
        self.limits, self.subagents = limits, subagents
        self.graph = ExecutionGraph()
        self.stage = -1
        self.agents: dict[str, str] = {}
        self.assignments: list[Assignment] = []
        self.count_tokens = count_tokens or (lambda text: len(text.split()))
        if delegate:  # the single-agent arm has the same tools without these two
            self.tools.update(create_subagent=self._create, assign_task=self._assign)

    def reset(self, task: WideSearchTask):
        messages, media = super().reset(task)
        self.graph, self.stage, self.agents, self.assignments = ExecutionGraph(), -1, {}, []
        if "assign_task" in self.tools:
            messages[0] = {"role": "system", "content": messages[0]["content"] + (
                " You may also create_subagent(name, system_prompt) (the system prompt is optional) and "
                "assign_task(agent, prompt): a sub-agent searches on its own and answers with one message.")}
        return messages, media

    def on_turn(self, turn: int) -> bool:
        """Before orchestrator turn `turn`: open a new stage if one more step fits the budget."""
        if self.submitted is not None or self.graph.critical_steps() + 1 > self.limits.budget:
            return False
        self.stage += 1
        self.graph.add(MAIN, self.stage)
        return True

    async def _create(self, arguments: dict) -> ToolResult:
        name, system = arguments.get("name"), arguments.get("system_prompt", SUB_SYSTEM)
        if not isinstance(name, str) or not name.strip() or not isinstance(system, str):
            return ToolResult('Error: create_subagent takes {"name": <string>, "system_prompt": <string>}', ok=False)
        if name == MAIN or name in self.agents:
            return ToolResult(f"Error: an agent named {name!r} exists", ok=False)
        self.agents[name] = system.strip() or SUB_SYSTEM
        return ToolResult(f"Created sub-agent {name!r}.")

    def _spurious(self, prompt: str) -> str:
        if not prompt.strip():
            return "empty"
        if any(normalise(a.prompt) == normalise(prompt) for a in self.assignments):
            return "duplicate"
        if not set(mentioned_countries(prompt, self.corpus)) & set(self.task.entities):
            return "no task entity"
        return ""

    async def _assign(self, arguments: dict) -> ToolResult:
        agent, prompt = arguments.get("agent"), arguments.get("prompt")
        if agent not in self.agents or not isinstance(prompt, str):
            return ToolResult(f"Error: assign_task takes {{\"agent\": <a created sub-agent>, \"prompt\": <string>}}; "
                              f"sub-agents: {sorted(self.agents)}", ok=False)
        stage = self.stage
        live = sum(1 for a in self.assignments if a.stage == stage)
        task = Assignment(agent, prompt, stage, self._spurious(prompt))
        self.assignments.append(task)
        if live >= self.limits.max_concurrent:
            task.spurious = task.spurious or "over the concurrency cap"
            return ToolResult(f"Error: at most {self.limits.max_concurrent} sub-agents run at once", ok=False)
        before = sum(self.graph.stage_cost(s) for s in range(stage))  # the stages already closed
        cap = min(self.limits.sub_steps, self.limits.budget - before - 1)
        if task.spurious or cap <= 0:
            return ToolResult(f"Sub-agent {agent!r} did nothing ({task.spurious or 'no steps left'}).", ok=False)
        name = f"{agent}#{len(self.assignments)}"  # one branch per assignment, also for a reused agent
        message, finished = await self.subagents.run(self.agents[agent], prompt, cap, lambda: self.graph.add(name, stage))
        task.message, task.finished = message, finished and bool(message.strip())
        words = message.split()
        if self.count_tokens(message) > self.limits.message_tokens:
            message = " ".join(words[: self.limits.message_tokens // 2]) + " [cut]"
        status = "answered" if task.finished else "did not finish"
        return ToolResult(f"Sub-agent {agent!r} {status}:\n{message}", ok=task.finished)

    # ---- rewards
    def valid_agents(self) -> int:
        return len({a.agent for a in self.assignments if not a.spurious})

    def rewards(self, lambda_parallel: float, lambda_finish: float) -> dict[str, float]:
        score = score_table(self.submitted, self.task)
        n = len(self.assignments)
        finished = sum(a.finished and not a.spurious for a in self.assignments)
        r_finish = finished / n if n else 0.0
        r_parallel = min(1.0, self.valid_agents() / self.limits.parallel_target)
        return {"reward": lambda_parallel * r_parallel + lambda_finish * r_finish + score.item_f1,
                "r_perf": score.item_f1, "r_finish": r_finish, "r_parallel": r_parallel, "row_f1": score.row_f1,
                "success": float(score.success), "critical_steps": float(self.graph.critical_steps()),
                "total_steps": float(self.graph.total_steps()), "subagents": float(self.valid_agents()),
                "assignments": float(n), "spurious": float(sum(bool(a.spurious) for a in self.assignments)),
                "serial": float(n == 0)}


def orchestrator_loop(loop: LoopLimits, limits: SwarmLimits) -> LoopLimits:
    """The orchestrator's loop limits: every create_subagent and assign_task of a full stage runs
    at once (the loop's default gate of concurrent calls would queue sub-agents past it), and an
    opened page arrives whole."""
    return replace(loop, max_turns=limits.main_steps, max_tool_tokens=max(loop.max_tool_tokens, PAGE_TOKENS),
                   max_parallel_calls=max(loop.max_parallel_calls, 2 * limits.max_concurrent + 2))


def annealed(initial: float, step: int, total_steps: int, anneal_fraction: float) -> float:
    """lambda at `step`: linear from `initial` to 0 over the first `anneal_fraction` of training."""
    span = max(1.0, anneal_fraction * total_steps)
    return initial * max(0.0, 1.0 - step / span)


# ---- scripted orchestrators (the oracle arms)

async def scripted_orchestrator(episode: SwarmEpisode, task: WideSearchTask, fan_out: int,
                                pace: Callable[[], Awaitable[None]] | None = None) -> list[dict]:
    """SCRIPTED: fan_out = 0 is the serial plan (search then open each country itself, one call a
    turn, then submit; when the next country and the submit would not fit the budget it submits
    the rows it has); fan_out = k creates k sub-agents and deals them the countries in one
    turn, then submits their lines as the table. Runs through the episode's own tools and
    budget (a wide task's plan); `pace` is awaited once per main step, like
    ScriptedSubAgents.pace. Returns the transcript: the episode's messages, then one assistant
    message per turn (its tool calls) and the tool results, as SFT conversations hold them."""
    messages, _ = episode.reset(task)
    transcript = list(messages)

    async def turn(calls: list[tuple[str, dict]]) -> list[ToolResult] | None:
        if not episode.on_turn(len([m for m in transcript if m["role"] == "assistant"])):
            return None
        if pace is not None:
            await pace()
        first = sum(len(m.get("tool_calls", ())) for m in transcript)
        transcript.append({"role": "assistant", "content": "",
                           "tool_calls": [{"name": n, "arguments": a} for n, a in calls]})
        results = await asyncio.gather(*(episode.tools[n](a) for n, a in calls))
        transcript.extend({"role": "tool", "name": n, "call_index": first + i, "content": r.text}
                          for i, ((n, _), r) in enumerate(zip(calls, results)))
        return list(results)

    if fan_out == 0:
        pages = {}
        for country in task.entities:
            if episode.graph.critical_steps() + 3 > episode.limits.budget:  # search, open and submit no longer fit:
                break  # hand in the rows it has (a partial table scores partial item-F1)
            found = await turn([("search", {"queries": [country]})])
            if found is None:
                return transcript
            doc = re.search(rf"^- (\S+) \| {re.escape(country)} \|", found[0].text, re.M)
            opened = await turn([("open", {"doc_id": doc.group(1) if doc else ""})])
            if opened is None:
                return transcript
            pages[country] = opened[0].text
        rows = [[c, *(page_value(pages[c], c, a) for a in task.columns[1:])] for c in pages]
    else:
        shares = [task.entities[i::fan_out] for i in range(min(fan_out, len(task.entities)))]
        asks = " and ".join(a.replace("_", " ") for a in task.columns[1:])
        # no system_prompt: the default (SUB_SYSTEM) serves, and traces stay short enough for tiny rows
        calls = [("create_subagent", {"name": f"agent{i}"}) for i in range(len(shares))]
        calls += [("assign_task", {"agent": f"agent{i}", "prompt": f"Find the {asks} of: {', '.join(share)}."})
                  for i, share in enumerate(shares)]
        replies = await turn(calls)
        if replies is None:
            return transcript
        rows = [[cell.strip() for cell in line.split("|")] for r in replies[len(shares):]
                for line in r.text.splitlines()[1:] if "|" in line]
    await turn([("submit", {"table": rows})])
    return transcript
