"""The GRM client: the strict parse contract, the failure budget, the verifier gate, rubric
variants, and HTTPJudge against a real OpenAI-compatible server on 127.0.0.1 (and a dead one)."""

import random
import re
import threading

import pytest
import torch

from agents.grm import (
    GRMParseError,
    HTTPJudge,
    Judgment,
    LocalJudge,
    ParseLedger,
    Rubrics,
    agreement,
    gated_reward,
    judge_messages,
    parse_score,
)
from agents.grm_data import FAMILIES, HELD_OUT_FAMILY, hidden_check, judge_examples, training_conversations
from agents.judge_server import make_server
from defs.posttrain.assets import STAGE_CHECKS  # imports dagster (at collection: it probes the platform)
from model.config import model_preset
from model.multimodal import K25Model


@pytest.mark.parametrize("text,score", [
    ("Meets the rubric. Score: 10/10", 1.0), ("Score: 0/10", 0.0), ("ok Score: 7 / 10.", 0.7),
    ("Score: 11/10", None), ("Score: -1/10", None), ("Score: 7/10 and more", None),
    ("Score: 3/10 Score: 9/10", None), ("seven out of ten", None), ("", None), ("Score: 7.5/10", None),
])
def test_parse_contract_is_strict(text, score):
    assert parse_score(text) == score


def test_ledger_fails_the_stage_above_the_failure_share():
    ledger = ParseLedger(max_fail_share=0.05, min_count=20)
    for _ in range(19):
        ledger.record(Judgment(0.5, "Score: 5/10"), "instruction")
    ledger.record(Judgment(None, "garbage"), "instruction")  # 1/20 = 5%: allowed
    with pytest.raises(GRMParseError, match="2 of 21"):
        ledger.record(Judgment(None, "garbage"), "instruction")
    m = ledger.metrics()
    assert m["grm/instruction_parse_fail"] == pytest.approx(2 / 21) and m["grm/instruction_mean_score"] == 0.5


@pytest.mark.parametrize("verified,rule,grm,expect", [
    (True, 1.0, 0.8, 0.9), (True, 1.0, 0.2, 0.6), (False, 0.0, 1.0, 0.0), (False, 0.2, 1.0, 0.2),
    (None, 0.0, 0.7, 0.7), (True, 1.0, None, 0.5), (None, 0.0, None, 0.0),
])
def test_the_gate_never_lifts_a_verified_failure(verified, rule, grm, expect):
    assert gated_reward(verified, rule, grm, weight=0.5) == pytest.approx(expect)


def test_rubric_variants_and_agreement():
    rubrics = Rubrics()
    rng = random.Random(0)
    seen = {rubrics.sample("no_praise", rng).variant for _ in range(50)}
    assert seen == {0, 1, 2}
    with pytest.raises(ValueError, match="unknown rubric family"):
        rubrics.sample("vibes", rng)
    assert agreement([1.0, 0.0, 0.9, None], [0.8, 0.6, 0.7, 0.1]) == pytest.approx(2 / 3)


def test_judge_data_verdicts_come_from_the_hidden_checkers():
    examples = judge_examples(60, 0)
    assert {e.family for e in examples} == set(FAMILIES)
    for e in examples:
        assert isinstance(e.verdict, bool)
    both = {(e.family, e.verdict) for e in examples}
    assert all((f, v) in both for f in FAMILIES for v in (True, False))  # every family has both verdicts
    assert not hidden_check("no_praise", "q", "Great question! It is 4.", None)
    assert hidden_check("no_praise", "q", "It is 4. Great job to all.", None)  # praise that does not open
    convs = training_conversations(examples, Rubrics(), 0)
    held_out = {f"Response: {e.response}\n" for e in examples if e.family == HELD_OUT_FAMILY}
    assert held_out and not any(r in c[1]["content"] for c in convs for r in held_out)
    test_prompts = {e.prompt for e in examples if e.split == "test"}
    assert not any(f"Prompt: {p}\n" in c[1]["content"] for c in convs for p in test_prompts)
    assert all(c[-1]["content"].endswith(("Score: 10/10", "Score: 0/10")) for c in convs)


@pytest.fixture(scope="module")
def judge_model(vocab):
    torch.manual_seed(0)
    return K25Model(model_preset("tiny", vocab_size=vocab.size, max_seq_len=512), media_pad_id=vocab.media_pad).eval()


def test_http_judge_against_a_real_server_equals_the_local_judge(judge_model, vocab):
    server = make_server(judge_model, vocab, "127.0.0.1", 0)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/v1"
        rubric = Rubrics().variants("instruction")[0]
        remote = HTTPJudge(url, "k25-local", max_tokens=24).score("Say hi.", "hi", rubric)
        local = LocalJudge(judge_model, vocab, max_new_tokens=24).score("Say hi.", "hi", rubric)
        assert remote.rationale == local.rationale and remote.score == local.score  # an untrained judge: None
        with pytest.raises(ValueError, match="text only"):
            HTTPJudge(url, "k25-local").score("x", "y", rubric, media=[torch.zeros(28, 28, 3)])
    finally:
        server.shutdown()
    dead = HTTPJudge(f"http://127.0.0.1:{server.server_address[1]}/v1", "k25-local", timeout_s=2).score("a", "b", rubric)
    assert dead.score is None and "judge request failed" in dead.rationale


def test_judge_prompt_carries_rubric_prompt_and_response():
    m = judge_messages("P?", "R.", Rubrics().variants("core")[1])
    assert "Rubric: A good response" in m[1]["content"] and "Prompt: P?" in m[1]["content"]
    assert "Response: R." in m[1]["content"]


# ---- the GRM inside RL, and the grm stage's figures

class ScriptedJudge:
    """A test double for LocalJudge: a fixed score per response text (None: unparsed)."""

    def __init__(self, by_text: dict):
        self.by_text, self.seen = by_text, []

    def score_many(self, items):
        self.seen.append(items)
        return [Judgment(self.by_text[resp], f"Score: {self.by_text[resp]}") for _, resp, _, _ in items]


def _group(domain: str, texts: list[str], correct: list[bool]):
    from agents.envs.rl_tasks import RLTask
    from agents.rewards import Score
    from agents.trajectory import Trajectory
    from training.rollout import Sample

    task = RLTask(f"{domain}/text/0", domain, "text", "Say amen.", "exact", "amen")
    return [Sample(task, Trajectory(), Score(float(c), c), "stop", t) for t, c in zip(texts, correct)]


def test_grm_reward_gates_on_the_verifier_and_judges_each_group_under_one_rubric():
    from training.grm_reward import GRMReward
    from training.spec import RLConfig

    judge = ScriptedJudge({"good": 1.0, "flattering": 0.0, "wrong": 1.0, "broken": None})
    grm = GRMReward(judge, RLConfig(grm_weight=0.5, grm_families=("no_praise",)))
    groups = [_group("instruction", ["good", "flattering", "wrong", "broken"], [True, True, False, True])]
    rewards, stats = grm.rewards(groups, [[1.0, 1.0, 0.0, 1.0]], seed=0)
    # verified: (1-w)*1 + w*grm; the verified failure keeps 0 although the judge liked it;
    # an unparsed judgment adds nothing
    assert rewards == [[1.0, 0.5, 0.0, 0.5]]
    assert len({rub.family for _, _, rub, _ in judge.seen[0]}) == 1  # one rubric for the group
    assert judge.seen[0][0][2].family in ("instruction", "no_praise")  # the task rubric or a general one
    assert stats["grm_gated_share"] == 0.75 and stats["grm_parse_fail_share"] == 0.25
    assert stats["grm_verifier_agreement"] == 0.25  # only "good" is judged >= 0.5 and verified
    assert grm.families("reasoning") == ["correctness", "no_praise"] and grm.families("perception") == ["no_praise"]


def test_grm_reward_stops_the_stage_when_judgments_do_not_parse():
    from training.grm_reward import GRMReward
    from training.spec import RLConfig

    grm = GRMReward(ScriptedJudge({"x": None}), RLConfig(grm_weight=0.3, grm_max_parse_fail=0.05))
    grm.ledger.min_count = 4
    with pytest.raises(GRMParseError, match="did not parse"):
        grm.rewards([_group("knowledge", ["x"] * 4, [True] * 4)], [[1.0] * 4], seed=0)


def test_judge_figures_count_unparsed_as_wrong_and_split_seen_from_unseen():
    import pandas as pd

    from training.grm import judge_figures

    frame = pd.DataFrame({"family": ["instruction"] * 4 + ["no_self_justification"] * 2,
                          "verdict": [True, False, True, False, True, False],
                          "score": [1.0, 0.0, None, 1.0, 1.0, 1.0], "second_score": [1.0, 0.0, None, 0.0, 1.0, 1.0]})
    figures = judge_figures(frame, "no_self_justification")
    assert figures["judge_acc/instruction"] == 0.5 and figures["judge_acc_seen"] == 0.5
    assert figures["judge_acc_unseen"] == 0.5 and figures["judge_parse_fail_share"] == pytest.approx(1 / 4)
    assert figures["judge_parse_fail_unseen"] == 0.0  # the unseen family parsed; the seen one did not once
    assert figures["judge_variant_agreement"] == pytest.approx(4 / 5)


@pytest.mark.parametrize("md,parses,accurate", [
    ({"judge_parse_fail_share": 0.0, "judge_acc_seen": 0.8}, True, True),
    ({"judge_parse_fail_share": 0.2, "judge_acc_seen": 0.8}, False, True),
    ({"judge_parse_fail_share": 0.0, "judge_acc_seen": 0.6}, True, False),
    ({}, False, False),  # the program reported nothing: both fail
])
def test_the_grm_assets_checks(md, parses, accurate):
    import recipes

    spec = recipes.resolve_stage("tiny", "grm")
    parse_check, accuracy_check = STAGE_CHECKS["grm"]
    assert parse_check.blocking and not accuracy_check.blocking
    assert parse_check.judge(md, spec)[0] is parses
    assert accuracy_check.judge(md, spec)[0] is accurate


def test_the_checker_rationale_states_what_the_verdict_rests_on():
    for e in judge_examples(80, 1):
        if e.family == "instruction":
            assert (": no" not in e.rationale) == e.verdict, e
        elif e.family == "correctness":
            right, stated = re.search(r"The sum is (\d+); the response says (\S+)\.$", e.rationale).groups()
            assert (right == stated) == e.verdict, e
        else:
            assert e.rationale.startswith("It"), e
    examples = judge_examples(20, 1)
    rationales = {e.rationale for e in examples}
    for conv in training_conversations(examples, Rubrics(), 1):
        target = conv[-1]["content"]
        assert target.endswith(("Score: 10/10", "Score: 0/10")) and target.rsplit(" Score:", 1)[0] in rationales
