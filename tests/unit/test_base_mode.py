"""Base-model scoring (evaluation/base_mode.py): MMLU by log-likelihood is at chance for a
random-weights model, the batched log-likelihoods equal one-request-at-a-time sums, the few-shot
prompts hold no evaluated item, and the mode follows the checkpoint's stage."""

import math

import pytest
import torch
from helpers import DATA_ROOT

from curation.text import TextCurationConfig, curate_text
from curation.tokenizer import load_tokenizer, train_tokenizer
from evaluation import base_mode
from evaluation.config import EvalConfig
from evaluation.suites import load_suite
from model.config import model_preset
from model.multimodal import K25Model
from model.tokens import Vocab


@pytest.fixture(scope="module")
def vocab(tmp_path_factory):
    root = tmp_path_factory.mktemp("base-mode-tok")
    text = curate_text(str(root / "text"), TextCurationConfig(max_docs_per_source=20, max_chars=2000))
    return Vocab(load_tokenizer(train_tokenizer(text.uri, str(root / "tokenizer"), vocab_size=512).uri))


@pytest.fixture(scope="module")
def random_model(vocab):
    torch.manual_seed(0)
    return K25Model(model_preset("tiny", vocab_size=vocab.size), media_pad_id=vocab.media_pad).eval()


def test_batched_loglikelihoods_equal_one_request_at_a_time(vocab, random_model):
    requests = [base_mode.continuation_ids(vocab, ctx, cont) for ctx, cont in
                [("The capital of France is", " Paris"), ("Answer:", " B"), ("a b c d e f g h", " i j k")]]
    batched = base_mode.loglikelihoods(random_model, requests, 256, "cpu", batch_rows=3)
    for (ctx, cont), got in zip(requests, batched):
        seq = torch.tensor([ctx + cont])
        with torch.no_grad():
            logp = torch.log_softmax(random_model(seq[:, :-1]).float(), -1)[0]
        want = sum(float(logp[len(ctx) - 1 + i, t]) for i, t in enumerate(cont))
        assert got == pytest.approx(want, abs=1e-4)
    assert requests[0][0][0] == vocab.eos  # the document boundary of pre-training


def test_random_weights_score_mmlu_at_chance_by_loglikelihood(vocab, random_model):
    examples = load_suite("mmlu", DATA_ROOT, limit=228)  # 4 per subject
    records = base_mode.eval_choice_by_likelihood(random_model, vocab, "mmlu", examples, 256, "cpu", batch_rows=32)
    n = len(records)
    acc = sum(r["score"] for r in records) / n
    half_width = 1.96 * math.sqrt(0.25 * 0.75 / n)  # 95% interval of a 1-in-4 guesser
    assert abs(acc - 0.25) <= half_width, (acc, half_width)
    assert {r["extracted"] for r in records} <= set("ABCD")


def test_fewshot_prompts_hold_no_evaluated_item():
    shots = base_mode.load_shots(str(DATA_ROOT))
    assert shots["gsm8k"].count("Question:") == base_mode.GSM8K_SHOTS and "####" in shots["gsm8k"]
    assert shots["math"].count("Problem:") == base_mode.MATH_SHOTS and "\\boxed" in shots["math"]
    for ex in load_suite("gsm8k", DATA_ROOT, limit=50):
        assert ex.meta["question"] not in shots["gsm8k"]
        assert base_mode.base_prompt(ex, shots).endswith(f"Question: {ex.meta['question']}\nAnswer:")
    for ex in load_suite("math500", DATA_ROOT):
        assert ex.meta["problem"].strip() not in shots["math"]


def test_stop_sequences_cut_the_continuation():
    assert base_mode.cut_at_stop(" 3 + 4 = 7.\n#### 7\n\nQuestion: next", base_mode.STOPS["gsm8k"]) == " 3 + 4 = 7.\n#### 7\n\n"
    assert base_mode.cut_at_stop("    return x\n\ndef other():\n", base_mode.STOPS["code"]) == "    return x\n"
    assert base_mode.cut_at_stop("no stop here", base_mode.STOPS["math"]) == "no stop here"


def test_mode_follows_the_stage_unless_set():
    cfg = EvalConfig()
    assert [cfg.mode_for(s) for s in ("joint_pretrain", "midtrain", "sft", "rl", "parl")] == \
        ["base", "base", "chat", "chat", "chat"]
    assert EvalConfig(mode="chat").mode_for("midtrain") == "chat"
    assert EvalConfig(mode="base").mode_for("rl") == "base"



def test_sampled_answers_do_not_depend_on_the_batch(vocab, random_model):
    """One generator per request: a prompt sampled alone, or beside others in any order, draws the
    same tokens (what makes avg@k reproducible across world and batch sizes)."""
    from evaluation.suites import request_generator

    prompts = [vocab.encode("The capital of France"), vocab.encode("Numbers: 1 2 3"), vocab.encode("Once upon")]
    ids = ["a", "b", "c"]

    def sample(order):
        gens = [request_generator(0, ids[i], 0) for i in order]
        outs = random_model.generate([prompts[i] for i in order], 8, set(), 1.0, 1.0, gens)
        return {ids[i]: out for i, out in zip(order, outs)}

    alone = {ids[i]: sample([i])[ids[i]] for i in range(3)}
    assert sample([0, 1, 2]) == alone and sample([2, 0, 1]) == alone
    assert len({tuple(v) for v in alone.values()}) == 3
    other_seed = random_model.generate([prompts[0]], 8, set(), 1.0, 1.0, [request_generator(1, "a", 0)])[0]
    assert other_seed != alone["a"]  # the seed matters
