"""widesearch_local: pages state exactly the countryinfo facts (and the first sentence none),
search finds pages, tasks split countries and attribute pairs, WideSearch scoring on perfect,
partial, empty and adversarial tables, and the tools as an agent meets them."""

import asyncio
import re

import pytest

from agents.envs.widesearch import (
    ATTRIBUTES,
    HELD_OUT_PAIRS,
    WideSearchEnv,
    WideSearchTask,
    _area,
    _split,
    build_corpus,
    build_tasks,
    cell_matches,
    score_table,
)


@pytest.fixture(scope="module")
def corpus():
    return build_corpus()


def test_every_page_states_its_facts_and_its_first_sentence_none(corpus):
    from countryinfo import CountryInfo

    assert len(corpus.facts) > 200
    for name, facts in corpus.facts.items():
        page = next(p for p in corpus.pages.values() if p.title == name)
        assert page.first_sentence == f"This page is about {name}."
        for attr, value in facts.items():
            shown = _area(value) if attr == "area" else (f"{value:,}" if attr == "population" else str(value))
            assert shown in page.text, (name, attr)
    france = CountryInfo("France").info()  # the package itself, not our copy
    assert corpus.facts["France"]["capital"] == france["capital"]
    assert corpus.facts["France"]["population"] == france["population"]
    assert "Germany" in corpus.neighbours["France"]


def test_search_finds_the_country_page_and_distractors_exist(corpus):
    assert corpus.pages[corpus.index.top("Japan", 1)[0]].title == "Japan"
    assert any(d.startswith("kjv-") for d in corpus.pages)
    assert corpus.index.top("zzzz qqqq", 5) == []


def test_tasks_keep_train_and_test_countries_and_held_out_pairs_apart(corpus):
    train, test = build_tasks(corpus, 200, "train", 0), build_tasks(corpus, 200, "test", 0)
    assert {e for t in train for e in t.entities if t.kind == "wide"} <= set(corpus.countries("train"))
    assert {e for t in test for e in t.entities if t.kind == "wide"} <= set(corpus.countries("test"))
    held = lambda t: any(set(p) <= set(t.columns) for p in HELD_OUT_PAIRS)  # noqa: E731
    assert not any(held(t) for t in train) and any(held(t) for t in test)
    assert {t.kind for t in train} == {"wide", "deep"}
    for t in train:  # the gold comes from the facts the pages state
        for row in t.gold:
            for col, cell in zip(t.columns[1:], row[1:]):
                assert cell_matches(corpus.facts[row[0]][col], cell)
    deep = next(t for t in train if t.kind == "deep")
    country, near = deep.entities[0], deep.entities[1:]
    assert deep.gold[0][0] == max(near, key=lambda b: corpus.facts[b]["area"])
    assert set(near) <= set(corpus.neighbours[country])
    assert _split("France") in ("train", "test")


TASK = WideSearchTask("t", "wide", "q", ("country", "capital", "population"),
                      (("France", "Paris", "66078000"), ("Japan", "Tokyo", "127000000")), ("France", "Japan"))


@pytest.mark.parametrize("table,item_f1,row_f1,success", [
    ([["France", "Paris", "66078000"], ["Japan", "Tokyo", "127000000"]], 1.0, 1.0, True),  # perfect
    ([{"Country": "france", "capital": "PARIS", "population": "66,078,000"},
      {"country": "Japan", "capital": "Tokyo", "population": "127.3e6"}], 1.0, 1.0, True),  # within 0.5%, normalised
    ([["France", "Paris", "66078000"]], 2 / 3, 2 / 3, False),  # one row missing
    ([["France", "Paris", "67078000"], ["Japan", "Tokyo", "127000000"]], 0.75, 0.5, False),  # 1.5% off
    ([], 0.0, 0.0, False),  # empty
    ("France Paris", 0.0, 0.0, False),  # not a table
    ([["France", "Paris", "66078000"], ["Japan", "Tokyo", "127000000"], ["Spain", "Madrid", "1"],
      ["Italy", "Rome", "1"]], 2 / 3, 2 / 3, False),  # extra rows cost precision
    ([["France", "Paris", "66078000"]] * 4, 2 * (1 / 4 * 1 / 2) / (1 / 4 + 1 / 2), 2 * (1 / 4 * 1 / 2) / (1 / 4 + 1 / 2),
     False),  # a repeated row counts once
])
def test_widesearch_scoring(table, item_f1, row_f1, success):
    s = score_table(table, TASK)
    assert s.item_f1 == pytest.approx(item_f1) and s.row_f1 == pytest.approx(row_f1) and s.success is success


def test_the_tools_as_an_agent_meets_them(corpus):
    env = WideSearchEnv(corpus)
    task = build_tasks(corpus, 1, "train", 3, deep_share=0.0)[0]
    messages, media = env.reset(task)
    assert messages[-1]["content"] == task.question and media == []
    run = asyncio.run
    found = run(env.tools["search"]({"queries": [task.entities[0]]}))
    doc = re.search(r"- (country-\S+) \| " + re.escape(task.entities[0]) + " ", found.text).group(1)
    page = run(env.tools["open"]({"doc_id": doc}))
    assert page.text.startswith(f"{task.entities[0]}\nThis page is about {task.entities[0]}.")
    assert run(env.tools["find"]({"doc_id": doc, "text": "zzz"})).text.endswith("does not occur on " + doc + ".")
    assert not run(env.tools["open"]({"doc_id": "nope"})).ok
    assert not run(env.tools["submit"]({"table": "a string"})).ok
    assert run(env.tools["submit"]({"table": [list(r) for r in task.gold]})).ok
    verdict = env.verify(None)
    assert verdict.correct and verdict.reward == 1.0 and verdict.parts["opened"] == 1
    assert set(ATTRIBUTES) >= set(task.columns[1:])
