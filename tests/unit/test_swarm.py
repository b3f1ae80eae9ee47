"""The swarm runtime's mechanics: critical steps from recorded graphs, the budget cut-off,
spurious assignments, the lambda schedule, and the scripted oracles' closed forms."""

import asyncio
import math
import random

import pytest

from agents.envs.widesearch import build_corpus, wide_task
from agents.swarm import (
    MAIN,
    ExecutionGraph,
    ScriptedSubAgents,
    SwarmEpisode,
    SwarmLimits,
    annealed,
    mentioned_countries,
    scripted_orchestrator,
)


@pytest.fixture(scope="module")
def corpus():
    return build_corpus()


def graph(spec: list[tuple[str, int]]) -> ExecutionGraph:
    g = ExecutionGraph()
    for agent, stage in spec:
        g.add(agent, stage)
    return g


def test_critical_steps_on_hand_built_graphs():
    # stage 0: main + a (3 steps) + b (1 step) -> 1 + 3; stage 1: main alone -> 1
    g = graph([(MAIN, 0), ("a", 0), ("a", 0), ("b", 0), ("a", 0), (MAIN, 1)])
    assert g.stage_cost(0) == 4 and g.stage_cost(1) == 1
    assert g.critical_steps() == 5 and g.total_steps() == 6
    assert [n.step for n in g.nodes if n.agent == "a"] == [0, 1, 2]


def test_a_serial_episode_costs_its_total_steps():
    g = graph([(MAIN, s) for s in range(7)])
    assert g.critical_steps() == g.total_steps() == 7


def test_critical_steps_never_exceed_total_steps():
    rng = random.Random(0)
    for _ in range(300):
        spec = []
        for stage in range(rng.randint(1, 6)):
            spec.append((MAIN, stage))
            spec += [(f"s{rng.randrange(5)}", stage) for _ in range(rng.randint(0, 12))]
        g = graph(spec)
        assert len({n.stage for n in g.nodes}) <= g.critical_steps() <= g.total_steps()


def test_the_lambda_schedule_anneals_to_zero_and_stays_there():
    values = [annealed(0.5, s, 100, 0.5) for s in (0, 25, 50, 75, 99)]
    assert values == [0.5, 0.25, 0.0, 0.0, 0.0]


def test_scripted_oracles_meet_their_closed_forms(corpus):
    for n, k in ((4, 4), (8, 8), (16, 8)):
        task = wide_task(corpus, 0, n, ("capital", "area"), "train", random.Random(n))
        unbounded = SwarmLimits(main_steps=99, sub_steps=99, max_concurrent=k, budget=999)
        serial = SwarmEpisode(corpus, unbounded, ScriptedSubAgents(corpus))
        asyncio.run(scripted_orchestrator(serial, task, 0))
        swarm = SwarmEpisode(corpus, unbounded, ScriptedSubAgents(corpus))
        asyncio.run(scripted_orchestrator(swarm, task, k))
        for ep in (serial, swarm):
            assert ep.rewards(0, 0)["r_perf"] == 1.0
        assert serial.graph.critical_steps() == 2 * n + 1
        assert swarm.graph.critical_steps() == 3 + 2 * math.ceil(n / k)


def test_the_budget_stops_a_serial_plan_and_leaves_a_parallel_one(corpus):
    task = wide_task(corpus, 0, 4, ("capital",), "train", random.Random(4))
    serial = SwarmEpisode(corpus, SwarmLimits(), ScriptedSubAgents(corpus))
    asyncio.run(scripted_orchestrator(serial, task, 0))
    # 2n+1 = 9 > B = 8: after three countries (6 steps) a fourth and the submit no longer fit
    assert serial.graph.critical_steps() == 7 and len(serial.submitted) == 3
    # 3 right rows of 4: precision 1, recall 6/8 items, item-F1 6/7; no assignment earns nothing more
    assert serial.rewards(0.5, 0.5)["reward"] == pytest.approx(6 / 7)
    swarm = SwarmEpisode(corpus, SwarmLimits(), ScriptedSubAgents(corpus))
    asyncio.run(scripted_orchestrator(swarm, task, 4))
    assert swarm.graph.critical_steps() == 5 and swarm.rewards(0, 0)["r_perf"] == 1.0


def test_every_assignment_of_a_turn_runs_at_once_through_the_agent_loop(corpus, vocab):
    from agents.chat import assistant_body
    from agents.loop import LoopLimits, run_agent
    from agents.swarm import orchestrator_loop

    task = wide_task(corpus, 0, 6, ("capital",), "train", random.Random(6))
    calls = [{"name": "create_subagent", "arguments": {"name": f"a{i}"}} for i in range(6)]
    calls += [{"name": "assign_task", "arguments": {"agent": f"a{i}", "prompt": f"Find the capital of {c}."}}
              for i, c in enumerate(task.entities)]
    submit = {"content": "", "tool_calls": [{"name": "submit", "arguments": {"table": [[c, "?"] for c in task.entities]}}]}
    replay = [assistant_body({"content": "", "tool_calls": calls}, vocab, 0)[:-1], assistant_body(submit, vocab, 12)[:-1]]
    in_flight, most = 0, 0

    async def pace():
        nonlocal in_flight, most
        in_flight += 1
        most = max(most, in_flight)
        for _ in range(3):
            await asyncio.sleep(0)
        in_flight -= 1

    for loop, expected in ((orchestrator_loop(LoopLimits(), SwarmLimits()), 6), (LoopLimits(max_turns=6), 4)):
        most = 0
        episode = SwarmEpisode(corpus, SwarmLimits(), ScriptedSubAgents(corpus, pace=pace))
        asyncio.run(run_agent(ReplayEngine(list(replay)), vocab, episode, task, loop, on_turn=episode.on_turn))
        assert all(a.finished for a in episode.assignments) and len(episode.assignments) == 6
        assert most == expected  # the loop's own gate (4 calls) would queue two of the six sub-agents


def test_an_opened_page_reaches_the_orchestrator_whole(corpus, vocab):
    from agents.swarm import PAGE_TOKENS

    longest = max((p for d, p in corpus.pages.items() if d.startswith("country-")), key=lambda p: len(vocab.encode(p.text)))
    assert len(vocab.encode(longest.text)) + 16 < PAGE_TOKENS


def test_a_sub_agent_without_enough_steps_is_unfinished(corpus):
    task = wide_task(corpus, 0, 4, ("capital",), "train", random.Random(4))
    episode = SwarmEpisode(corpus, SwarmLimits(sub_steps=4), ScriptedSubAgents(corpus))
    asyncio.run(scripted_orchestrator(episode, task, 2))  # 2 countries each: 5 steps > cap 4
    assert [a.finished for a in episode.assignments] == [False, False]
    assert episode.graph.stage_cost(0) == 1 + 4  # they used their whole cap
    assert episode.rewards(0.5, 0.5)["r_finish"] == 0.0


def test_spurious_assignments_are_counted_and_earn_nothing(corpus):
    task = wide_task(corpus, 0, 2, ("capital",), "train", random.Random(2))
    episode = SwarmEpisode(corpus, SwarmLimits(), ScriptedSubAgents(corpus))
    episode.reset(task)
    assert episode.on_turn(0)
    run = asyncio.run
    run(episode.tools["create_subagent"]({"name": "a", "system_prompt": "search"}))
    good = f"Find the capital of {task.entities[0]}."
    replies = [run(episode.tools["assign_task"]({"agent": "a", "prompt": p}))
               for p in (good, good, "", "Find the capital of Atlantis.")]
    assert [a.spurious for a in episode.assignments] == ["", "duplicate", "empty", "no task entity"]
    assert replies[0].ok and not any(r.ok for r in replies[1:])
    r = episode.rewards(0.5, 0.5)
    assert r["r_finish"] == 0.25 and r["subagents"] == 1 and r["spurious"] == 3
    assert not run(episode.tools["assign_task"]({"agent": "nobody", "prompt": good})).ok


def test_the_single_agent_arm_has_no_delegation_tools(corpus):
    episode = SwarmEpisode(corpus, SwarmLimits(), ScriptedSubAgents(corpus), delegate=False)
    assert "assign_task" not in episode.tools and "create_subagent" not in episode.tools
    assert {"search", "open", "find", "submit"} <= set(episode.tools)


def test_countries_are_found_longest_name_first(corpus):
    assert mentioned_countries("Nigeria and Niger, then France", corpus) == ["Nigeria", "Niger", "France"]


def test_the_scripted_reading_recovers_every_fact_of_every_page(corpus):
    from agents.envs.widesearch import _cell, cell_matches
    from agents.swarm import page_value

    for name, facts in corpus.facts.items():
        page = next(p for p in corpus.pages.values() if p.title == name)
        for attr, value in facts.items():
            assert cell_matches(page_value(page.text, name, attr), _cell(value)), (name, attr)


class ReplayEngine:
    """A test double for BatchingEngine: replays fixed assistant turns (the orchestrator's
    recorded calls) so the episode's bookkeeping can be checked without a trained model."""

    def __init__(self, turns: list[list[int]]):
        self.turns, self.version, self.sessions = list(turns), 0, 0

    async def generate(self, request):
        from agents.engine import TokenOutput

        ids = self.turns.pop(0)
        session = request.session
        if session is None and request.keep:  # a new live request, as the engine keeps its slot
            self.sessions += 1
            session = self.sessions
        return TokenOutput(ids, [-0.5] * len(ids), "stop", 0, session, "")

    def release(self, session):
        pass


def test_only_orchestrator_tokens_carry_loss_on_a_recorded_episode(corpus, vocab):
    from agents.chat import assistant_body
    from agents.loop import LoopLimits, run_agent
    from training.policy import policy_batch

    task = wide_task(corpus, 0, 1, ("capital",), "train", random.Random(1))
    country = task.entities[0]
    turns = [{"content": "", "tool_calls": [{"name": "create_subagent", "arguments": {"name": "a", "system_prompt": "s"}}]},
             {"content": "", "tool_calls": [{"name": "assign_task",
                                             "arguments": {"agent": "a", "prompt": f"Find the capital of {country}."}}]},
             {"content": "", "tool_calls": [{"name": "submit", "arguments": {"table": [[country, "?"]]}}]}]
    replay = [assistant_body(t, vocab, k)[:-1] for k, t in enumerate(turns)]  # each ends at its call's end token
    episode = SwarmEpisode(corpus, SwarmLimits(), ScriptedSubAgents(corpus), count_tokens=lambda s: len(vocab.encode(s)))
    result = asyncio.run(run_agent(ReplayEngine(replay), vocab, episode, task, LoopLimits(max_turns=6),
                                   on_turn=episode.on_turn))
    assert result.finish == "budget" and episode.submitted == [[country, "?"]]  # submit ends the episode
    assert episode.graph.critical_steps() == 1 + (1 + 3) + 1  # create; assign + the sub-agent's 3 steps; submit
    assert episode.assignments[0].finished and country in episode.assignments[0].message
    trained = [t for s in result.trajectory.segments if s.loss_mask for t in s.ids]
    assert trained == [t for ids in replay for t in ids]  # exactly the orchestrator's own tokens
    answer = episode.assignments[0].message
    context = [s for s in result.trajectory.segments if not s.loss_mask]
    assert answer in vocab.decode([t for s in context for t in s.ids])  # the sub-agent's answer: context only
    batch = policy_batch([result.trajectory], [1.0], [0], vocab.pad, 1.0)
    assert int(batch.mask.sum()) == len(trained)


def test_search_sft_traces_are_executed_plans_whose_tables_are_right(vocab):
    from agents.sft_data import gold_leaks, search_task, search_trace
    from training.data import encode_conversation

    for index, fan_out in ((0, 0), (1, 2), (2, 5)):
        messages, outputs, ok = search_trace(index, 0, fan_out)
        assert ok and outputs == [m["content"] for m in messages if m["role"] == "tool"]
        calls = [c["name"] for m in messages if m["role"] == "assistant" for c in m["tool_calls"]]
        assert calls[-1] == "submit" and ("assign_task" in calls) == bool(fan_out)
        assert search_trace(index, 0, fan_out)[1] == outputs  # re-running the plan reproduces it
        assert gold_leaks({"source": "search", "messages": messages}) == []
        assert messages[1]["content"] == search_task(index, 0).question
        ids, labels = encode_conversation(messages, vocab)  # SFT trains on the calls, not on tool results
        trained = vocab.decode([t for t, y in zip(ids, labels) if y != -100])
        assert "submit" in trained and outputs[0][:20] not in trained
    bad = search_trace(0, 0, 0)[0]
    bad[-2]["tool_calls"][0]["arguments"]["table"][0][1] = "columns"  # a word the question states
    assert gold_leaks({"source": "search", "messages": bad})


def test_the_widesearch_suite_runs_both_arms_at_one_budget(vocab):
    import torch

    from evaluation.agent_suites import eval_widesearch, summarize_widesearch, widesearch_tasks
    from evaluation.config import EvalConfig
    from model.config import model_preset
    from model.multimodal import K25Model

    torch.manual_seed(0)
    model = K25Model(model_preset("tiny", vocab_size=vocab.size, max_seq_len=1024), media_pad_id=vocab.media_pad).eval()
    tasks = widesearch_tasks(3, 0)
    held_out = set(build_corpus().countries("test"))  # a deep task's neighbours may be any country
    assert all(set(t.entities if t.kind == "wide" else t.entities[:1]) <= held_out for t in tasks)
    records = eval_widesearch(model, vocab, tasks, EvalConfig(swarm_max_new_tokens=16, temperature=0.0),
                              SwarmLimits(budget=4, main_steps=3, sub_steps=2))
    assert sorted(r["arm"] for r in records) == ["discard_all"] * 3 + ["single"] * 3 + ["swarm"] * 3
    assert all(r["critical_steps"] <= 4 for r in records)
    assert all(r["subagents"] == 0 for r in records if r["arm"] != "swarm")
    figures = summarize_widesearch(records)
    assert set(figures) == {f"widesearch_local/{a}_{k}" for a in ("single", "swarm", "discard_all")
                            for k in ("item_f1", "success", "critical_steps", "subagents")}


def test_discard_all_restarts_from_the_prompt_past_its_threshold(corpus, vocab):
    from agents.chat import assistant_body
    from agents.loop import LoopLimits, run_agent

    task = wide_task(corpus, 0, 2, ("capital",), "train", random.Random(2))
    calls = [{"content": "", "tool_calls": [{"name": "search", "arguments": {"queries": [c]}}]} for c in task.entities]
    replay = [assistant_body(t, vocab, k)[:-1] for k, t in enumerate(calls)] + [vocab.encode("done") + [vocab.im_end]]
    seen = []

    class Recording(ReplayEngine):
        async def generate(self, request):
            seen.append(request.session)
            return await super().generate(request)

    episode = SwarmEpisode(corpus, SwarmLimits(), ScriptedSubAgents(corpus), delegate=False)
    result = asyncio.run(run_agent(Recording(replay), vocab, episode, task, LoopLimits(max_turns=6, discard_after=10),
                                   on_turn=episode.on_turn))
    assert result.discards == 2 and seen == [None, None, None]  # every turn past the threshold starts afresh
    prompts = [s for s in result.trajectory.segments if s.source == "prompt"]
    assert len(prompts) == 3 and len({s.ids for s in prompts}) == 1  # the same task prompt each time
    seen.clear()
    kept = asyncio.run(run_agent(Recording(list(replay)), vocab, SwarmEpisode(corpus, SwarmLimits(), ScriptedSubAgents(corpus)),
                                 task, LoopLimits(max_turns=6), on_turn=None))
    assert kept.discards == 0 and seen == [None, 1, 1]  # without it the live request continues


def test_no_search_trace_is_flagged_for_a_country_named_in_its_own_question():
    """Singapore's capital is Singapore, South Africa lies in Africa: the countries a question
    lists are not leaks of their cells (the asset's leak check failed on such traces once)."""
    from agents.sft_data import gold_leaks, search_trace

    flagged = [i for i in range(300) if gold_leaks({"source": "search", "messages": search_trace(i, 0, i % 3)[0]})]
    assert flagged == []


def test_the_speedup_of_the_swarm_oracle_over_the_serial_oracle_is_r_star(corpus):
    from agents.envs.widesearch import build_tasks
    from benchmarks.bench_parl import SWARM_BUDGETS, oracle_ladder, speedup, steps_to

    tasks = build_tasks(corpus, 3, "test", 7, (6, 6), (1, 1), 0.0)
    serial = oracle_ladder(corpus, tasks, range(1, 14), 0)
    # m right countries of six: precision 1, recall m/6, item-F1 2m / (m + 6); one more per 2 steps
    assert [p[1] for p in serial] == pytest.approx([0, 0, 2 / 7, 2 / 7, 4 / 8, 4 / 8, 6 / 9, 6 / 9, 8 / 10, 8 / 10,
                                                    10 / 11, 10 / 11, 1])
    assert steps_to(serial, 1.0) == 13 and steps_to(serial, 0.3) == 5
    swarm = oracle_ladder(corpus, tasks, SWARM_BUDGETS, 6)
    assert [p[1] for p in swarm] == [0.0, 1.0, 1.0, 1.0]  # budget 4 leaves no step for the submit
    r, f1 = speedup(swarm, serial)
    assert (r, f1) == (13 / 5, 1.0)
    assert math.isnan(speedup([(5, 0.05, 5.0, 0.0)], serial)[0])  # nothing to match
