"""`widesearch_local`: a wide-search environment over a real local corpus (POSTTRAIN.md §5;
RECIPE.md §7), for the Agent Swarm and PARL.

The corpus: one prose page per country, written from the `countryinfo` package's data (MIT:
capital, population, area, region, subregion, currencies, languages, borders, calling codes,
provinces, demonym), plus the King James Bible's chapters as real-prose distractors. A page's
first sentence never states an attribute, so a search result alone answers nothing: the page
must be opened. Ground truth is always the page a task was built from (`Corpus.facts`).

Tools (`WideSearchTools`): `search(queries)` (BM25 over titles and text, top results with id,
title and first sentence), `open(doc_id)` (one page, cut at `page_chars`), `find(doc_id, text)`
(the page's sentences containing a string) and `submit(table)`.

Tasks: `wide` (n countries x c attributes, a table keyed by country) and `deep` (two hops: "the
neighbour of X with the largest area"). Countries are split train/test by a hash of their name,
and some attribute pairs are asked only at test time. Scored the WideSearch way (`score_table`):
item-F1 over the non-key cells, row-F1 over whole rows and success (the whole table right), cells
compared after normalisation and numbers within 0.5%.
"""

from __future__ import annotations

import asyncio
import hashlib
import math
import random
import re
import unicodedata
from collections import Counter
from dataclasses import dataclass, field
from functools import lru_cache

from agents.loop import RewardBreakdown, ToolResult

ATTRIBUTES = ("capital", "population", "area", "region", "subregion", "currency", "languages", "calling_code",
              "demonym", "provinces")
NUMERIC = ("population", "area", "provinces")
NUMBER_TOLERANCE = 0.005  # WideSearch: numbers within 0.5%
HELD_OUT_PAIRS = (("capital", "population"), ("area", "currency"))  # asked together only at test time
_TOKEN = re.compile(r"[a-z0-9]+")


@dataclass(frozen=True)
class Page:
    doc_id: str
    title: str
    text: str  # the whole page; the first sentence states no attribute

    @property
    def first_sentence(self) -> str:
        return self.text.split(". ", 1)[0].rstrip(".") + "."


def _split(name: str, test_share: float = 0.3) -> str:
    h = int.from_bytes(hashlib.sha256(f"widesearch:{name}".encode()).digest()[:4], "little") / 2**32
    return "test" if h < test_share else "train"


@dataclass
class Corpus:
    pages: dict[str, Page]
    facts: dict[str, dict[str, object]]  # country name -> attribute -> value (what its page states)
    neighbours: dict[str, list[str]]  # country name -> bordering country names
    index: "BM25" = field(repr=False, default=None)

    def countries(self, split: str | None = None) -> list[str]:
        return sorted(n for n in self.facts if split is None or _split(n) == split)


def _facts(info: dict) -> dict[str, object]:
    out: dict[str, object] = {}
    if info.get("capital"):
        out["capital"] = info["capital"]
    if info.get("population"):
        out["population"] = int(info["population"])
    if info.get("area"):
        out["area"] = float(info["area"])
    if info.get("region"):
        out["region"] = info["region"]
    if info.get("subregion"):
        out["subregion"] = info["subregion"]
    if info.get("currencies"):
        out["currency"] = ", ".join(info["currencies"])
    if info.get("languages"):
        out["languages"] = ", ".join(info["languages"])
    if info.get("callingCodes") and info["callingCodes"][0]:
        out["calling_code"] = "+" + info["callingCodes"][0].lstrip("+")  # the data writes "44" and "+44"
    if info.get("demonym"):
        out["demonym"] = info["demonym"]
    if info.get("provinces"):
        out["provinces"] = len(info["provinces"])
    return out


def _area(v: float) -> str:
    return f"{v:,.0f}" if float(v).is_integer() else f"{v:,}"  # Vatican City's 0.44 stays 0.44


def _sentences(name: str, facts: dict[str, object], borders: list[str]) -> list[str]:
    says = {
        "capital": lambda v: f"The capital of {name} is {v}.",
        "population": lambda v: f"{name} has a population of {v:,} people.",
        "area": lambda v: f"{name} covers an area of {_area(v)} square kilometres.",
        "region": lambda v: f"{name} belongs to the region of {v}.",
        "subregion": lambda v: f"Geographers place {name} in {v}.",
        "currency": lambda v: f"The currency code used in {name} is {v}.",
        "languages": lambda v: f"The language codes of {name} are {v}.",
        "calling_code": lambda v: f"The international calling code of {name} is {v}.",
        "demonym": lambda v: f"People from {name} are called {v}.",
        "provinces": lambda v: f"{name} is divided into {v} provinces.",
    }
    out = [says[k](v) for k, v in facts.items()]
    if borders:
        out.append(f"{name} shares borders with " + ", ".join(borders) + ".")
    else:
        out.append(f"{name} shares no land border with another country.")
    return out


def country_page(name: str, facts: dict[str, object], borders: list[str]) -> Page:
    body = _sentences(name, facts, borders)
    random.Random(f"page:{name}").shuffle(body)  # attributes in no fixed place
    opening = f"This page is about {name}."  # states no attribute: a search result answers nothing
    return Page(f"country-{_slug(name)}", name, " ".join([opening, *body]))


def _slug(text: str) -> str:
    return "-".join(_TOKEN.findall(_fold(text)))


def _fold(text: str) -> str:
    return unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode().lower()


def tokens(text: str) -> list[str]:
    return _TOKEN.findall(_fold(text))


class BM25:
    """Okapi BM25 over the pages (k1 = 1.5, b = 0.75). Ours, since the index is a few dozen lines
    and the corpus is fixed: no search service or extra dependency for a local environment."""

    def __init__(self, pages: list[Page], k1: float = 1.5, b: float = 0.75):
        self.ids = [p.doc_id for p in pages]
        self.k1, self.b = k1, b
        self.docs = [Counter(tokens(p.title + " " + p.title + " " + p.text)) for p in pages]  # the title counts twice
        self.lengths = [sum(d.values()) for d in self.docs]
        self.avg = sum(self.lengths) / max(1, len(self.lengths))
        df = Counter(t for d in self.docs for t in d)
        n = len(self.docs)
        self.idf = {t: math.log(1 + (n - f + 0.5) / (f + 0.5)) for t, f in df.items()}

    def top(self, query: str, k: int) -> list[str]:
        q = tokens(query)
        scores = []
        for i, d in enumerate(self.docs):
            s = 0.0
            for t in q:
                if t in d:
                    f = d[t]
                    s += self.idf[t] * f * (self.k1 + 1) / (f + self.k1 * (1 - self.b + self.b * self.lengths[i] / self.avg))
            if s > 0:
                scores.append((s, self.ids[i]))
        scores.sort(key=lambda x: (-x[0], x[1]))
        return [doc for _, doc in scores[:k]]


@lru_cache(maxsize=1)
def build_corpus(distractor_chapters: int = 300) -> Corpus:
    """Every country with a capital and a population, and the first `distractor_chapters` KJV
    chapters; built once per process (the data is a few hundred kilobytes)."""
    from countryinfo import all_countries

    from curation.sources import kjv_chapters

    infos = [c.info() for c in all_countries()]
    infos = [i for i in infos if i.get("capital") and i.get("population") and i.get("name")]
    names_by_code = {i["ISO"]["alpha3"]: i["name"] for i in infos if i.get("ISO")}
    pages, facts, neighbours = {}, {}, {}
    for info in infos:
        name = info["name"]
        borders = [names_by_code[c] for c in info.get("borders") or [] if c in names_by_code]
        facts[name] = _facts(info)
        neighbours[name] = borders
        page = country_page(name, facts[name], borders)
        pages[page.doc_id] = page
    for doc in list(kjv_chapters())[:distractor_chapters]:
        page = Page(f"kjv-{_slug(doc.doc_id)}", doc.doc_id, doc.text)
        pages[page.doc_id] = page
    corpus = Corpus(pages, facts, neighbours)
    corpus.index = BM25(list(pages.values()))
    return corpus


# ---- tasks

@dataclass(frozen=True)
class WideSearchTask:
    id: str
    kind: str  # wide | deep
    question: str
    columns: tuple[str, ...]  # the first is the key ("country")
    gold: tuple[tuple[str, ...], ...]  # rows, cells as strings
    entities: tuple[str, ...]  # the countries the task needs pages of

    @property
    def n_items(self) -> int:
        return len(self.gold) * (len(self.columns) - 1)


def _cell(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.0f}" if value == int(value) else f"{value}"
    return str(value)


def wide_task(corpus: Corpus, index: int, n: int, attributes: tuple[str, ...], split: str, rng: random.Random) -> WideSearchTask:
    pool = [c for c in corpus.countries(split) if all(a in corpus.facts[c] for a in attributes)]
    chosen = sorted(rng.sample(pool, n))
    columns = ("country", *attributes)
    gold = tuple((c, *(_cell(corpus.facts[c][a]) for a in attributes)) for c in chosen)
    question = (f"For each of these countries: {', '.join(chosen)}, find its " + " and ".join(a.replace('_', ' ') for a in attributes)
                + f". Submit a table with the columns {', '.join(columns)}, one row per country.")
    return WideSearchTask(f"wide/{split}/{index}", "wide", question, columns, gold, tuple(chosen))


def deep_task(corpus: Corpus, index: int, split: str, rng: random.Random) -> WideSearchTask:
    """Two hops: open X's page for its neighbours, then each neighbour's page for its area."""
    pool = [c for c in corpus.countries(split)
            if len([b for b in corpus.neighbours[c] if "area" in corpus.facts.get(b, {})]) >= 2]
    country = rng.choice(pool)
    near = [b for b in corpus.neighbours[country] if "area" in corpus.facts.get(b, {})]
    best = max(near, key=lambda b: corpus.facts[b]["area"])
    question = (f"Which country bordering {country} has the largest area, and what is that area in square "
                "kilometres? Submit a table with the columns country, area and one row.")
    return WideSearchTask(f"deep/{split}/{index}", "deep", question, ("country", "area"),
                          ((best, _cell(corpus.facts[best]["area"])),), (country, *near))


def attribute_sets(split: str, c: int, rng: random.Random) -> tuple[str, ...]:
    """c attributes; the held-out pairs appear together only in test tasks."""
    while True:
        chosen = tuple(sorted(rng.sample(ATTRIBUTES, c)))
        held = any(set(p) <= set(chosen) for p in HELD_OUT_PAIRS)
        if held == (split == "test") or (split == "test" and c == 1):
            return chosen


def build_tasks(corpus: Corpus, count: int, split: str, seed: int, n_range=(2, 4), c_range=(1, 2),
                deep_share: float = 0.25) -> list[WideSearchTask]:
    rng = random.Random(f"widesearch-tasks:{split}:{seed}")
    out = []
    for i in range(count):
        if rng.random() < deep_share:
            out.append(deep_task(corpus, i, split, rng))
        else:
            attrs = attribute_sets(split, rng.randint(*c_range), rng)
            out.append(wide_task(corpus, i, rng.randint(*n_range), attrs, split, rng))
    return out


# ---- scoring (WideSearch: item-F1, row-F1, success)

def normalise(cell: object) -> str:
    text = _fold(str(cell)).strip()
    text = re.sub(r"\s+", " ", re.sub(r"[^\w\s+.-]", " ", text)).strip()
    return text


def _number(text: str) -> float | None:
    t = text.replace(",", "").replace(" ", "")
    t = re.sub(r"(km2|km|squarekilometres|people)$", "", t)
    try:
        return float(t)
    except ValueError:
        return None


def cell_matches(pred: object, gold: str) -> bool:
    p, g = normalise(pred), normalise(gold)
    if p == g:
        return True
    pn, gn = _number(str(pred)), _number(gold)
    if pn is not None and gn is not None:
        return abs(pn - gn) <= NUMBER_TOLERANCE * max(abs(gn), 1e-9)
    return False


@dataclass(frozen=True)
class TableScore:
    item_f1: float
    row_f1: float
    success: bool
    well_formed: bool


def _f1(correct: int, predicted: int, gold: int) -> float:
    if correct == 0:
        return 0.0
    p, r = correct / predicted, correct / gold
    return 2 * p * r / (p + r)


def parse_table(table: object, columns: tuple[str, ...]) -> list[dict] | None:
    """A submitted table as rows of {column: cell}: a list of dicts, or a list of lists in column
    order. None when it is neither (not well formed)."""
    if not isinstance(table, list):
        return None
    rows = []
    for row in table:
        if isinstance(row, dict):
            rows.append({normalise(k).replace(" ", "_"): v for k, v in row.items()})
        elif isinstance(row, (list, tuple)) and len(row) == len(columns):
            rows.append(dict(zip(columns, row)))
        else:
            return None
    return rows


def score_table(table: object, task: WideSearchTask) -> TableScore:
    """Rows are matched on the key column (normalised); each other gold cell is one item."""
    rows = parse_table(table, task.columns)
    if rows is None:
        return TableScore(0.0, 0.0, False, False)
    by_key = {}
    for row in rows:
        key = normalise(row.get(task.columns[0], ""))
        by_key.setdefault(key, row)  # a repeated key: the first row counts, the others are extra
    items_correct = rows_correct = 0
    for gold in task.gold:
        row = by_key.get(normalise(gold[0]))
        if row is None:
            continue
        hits = [cell_matches(row.get(col, ""), cell) for col, cell in zip(task.columns[1:], gold[1:])]
        items_correct += sum(hits)
        rows_correct += all(hits)
    width = len(task.columns) - 1
    item_f1 = _f1(items_correct, len(rows) * width, task.n_items)
    row_f1 = _f1(rows_correct, len(rows), len(task.gold))
    return TableScore(item_f1, row_f1, rows_correct == len(task.gold) == len(rows), True)


# ---- the environment (agents/loop.py's interface)

SYSTEM = ("You answer questions about countries by searching a local encyclopedia. Tools: "
          "search(queries: list of strings) lists matching pages (id, title, first sentence); "
          "open(doc_id) shows a page; find(doc_id, text) shows the page's sentences containing the text; "
          "submit(table) hands in your answer, a list of rows (lists in the asked column order).")


class WideSearchEnv:
    """One trajectory's tools over the shared corpus; `submit` ends the task with a table."""

    def __init__(self, corpus: Corpus, results_per_query: int = 5, max_queries: int = 4, page_chars: int = 1200,
                 kernel=None):
        self.corpus, self.k, self.max_queries, self.page_chars = corpus, results_per_query, max_queries, page_chars
        self.task: WideSearchTask | None = None
        self.submitted: object = None
        self.opened: list[str] = []
        self.tools = {"search": self._search, "open": self._open, "find": self._find, "submit": self._submit}
        self.session = kernel.open_session() if kernel is not None else None
        if self.session is not None:
            self.tools["ipython"] = self._ipython

    def reset(self, task: WideSearchTask) -> tuple[list[dict], list]:
        self.task, self.submitted, self.opened = task, None, []
        return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": task.question}], []

    async def _search(self, arguments: dict):
        queries = arguments.get("queries")
        if isinstance(queries, str):
            queries = [queries]
        if not isinstance(queries, list) or not queries or not all(isinstance(q, str) for q in queries):
            return ToolResult('Error: search takes {"queries": [<string>, ...]}', ok=False)
        lines = []
        for q in queries[: self.max_queries]:
            hits = self.corpus.index.top(q, self.k)
            lines.append(f"Results for {q!r}:" if hits else f"No results for {q!r}.")
            lines += [f"- {d} | {self.corpus.pages[d].title} | {self.corpus.pages[d].first_sentence}" for d in hits]
        return ToolResult("\n".join(lines))

    def _page(self, arguments: dict):
        doc = arguments.get("doc_id")
        return self.corpus.pages.get(doc) if isinstance(doc, str) else None

    async def _open(self, arguments: dict):
        page = self._page(arguments)
        if page is None:
            return ToolResult(f"Error: no page {arguments.get('doc_id')!r}; use an id from search", ok=False)
        self.opened.append(page.doc_id)
        text = page.text if len(page.text) <= self.page_chars else page.text[: self.page_chars] + " [cut]"
        return ToolResult(f"{page.title}\n{text}")

    async def _find(self, arguments: dict):
        page, needle = self._page(arguments), arguments.get("text")
        if page is None or not isinstance(needle, str) or not needle.strip():
            return ToolResult('Error: find takes {"doc_id": <id from search>, "text": <string>}', ok=False)
        hits = [s for s in re.split(r"(?<=\.) ", page.text) if _fold(needle) in _fold(s)]
        return ToolResult("\n".join(hits) if hits else f"{needle!r} does not occur on {page.doc_id}.")

    async def _submit(self, arguments: dict):
        table = arguments.get("table")
        if parse_table(table, self.task.columns) is None:
            return ToolResult("Error: submit takes {\"table\": [[...], ...]} with the asked columns in order", ok=False)
        self.submitted = table
        return ToolResult("Submitted.")

    async def _ipython(self, arguments: dict):

        code = arguments.get("code")
        if not isinstance(code, str):
            return ToolResult('Error: the ipython tool takes {"code": <string>}', ok=False)
        result = await asyncio.to_thread(self.session.run, code)
        return ToolResult(result.observation(), ok=result.ok)

    def verify(self, result):
        s = score_table(self.submitted, self.task)
        return RewardBreakdown(s.item_f1, s.success, {"item_f1": s.item_f1, "row_f1": s.row_f1, "success": s.success,
                                                       "well_formed": s.well_formed, "opened": len(self.opened)})

    def close(self) -> None:
        if self.session is not None:
            self.session.close()
