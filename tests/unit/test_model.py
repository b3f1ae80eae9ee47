"""Model v0: MoE routing against a naive reference, packed vision encoding, early fusion, generation,
config round trips. Tiny shapes, CPU, a few seconds for the whole file."""

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from model.backbone import MoE
from model.config import PRESETS, ModelConfig, VisionConfig, model_preset
from model.multimodal import K25Model
from model.vision import VisionEncoder, vision_token_count

MEDIA_PAD = 10  # the id of <|media_pad|> in the curated tokenizer; any id works for the model


def small_cfg(**overrides) -> ModelConfig:
    return model_preset("tiny", vocab_size=256, **overrides)


def images(seed: int, *shapes) -> list[torch.Tensor]:
    rng = np.random.default_rng(seed)
    return [torch.from_numpy(rng.integers(0, 256, size=s, dtype=np.uint8)) for s in shapes]


# ----------------------------------------------------------------------------------------------
# MoE


def naive_moe(moe: MoE, x: torch.Tensor) -> torch.Tensor:
    """Token by token: sigmoid scores, top-k on score + bias, gates = renormalised scores (no bias)
    times routed_scaling, SwiGLU experts, plus the shared expert."""
    flat = x.reshape(-1, x.shape[-1])
    out = torch.zeros_like(flat)
    for t in range(flat.shape[0]):
        h = flat[t]
        scores = torch.sigmoid(moe.router.weight.float() @ h.float())
        chosen = sorted(range(moe.n_experts), key=lambda e: -(scores[e] + moe.expert_bias[e]).item())[: moe.top_k]
        gates = scores[chosen] / scores[chosen].sum() * moe.scaling
        y = torch.zeros_like(h)
        for g, e in zip(gates, chosen):
            y = y + g * ((F.silu(h @ moe.w_gate[e]) * (h @ moe.w_up[e])) @ moe.w_down[e])
        out[t] = y + moe.shared(h[None])[0]
    return out.reshape(x.shape)


@pytest.fixture
def moe():
    torch.manual_seed(0)
    return MoE(small_cfg())


def test_moe_matches_naive_reference(moe):
    x = torch.randn(3, 7, moe.router.in_features)
    with torch.no_grad():
        got = moe(x)
        ref = naive_moe(moe, x)
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-4)
    # The load statistic counts every (token, expert) assignment.
    assert int(moe.last_load.sum()) == 21 * moe.top_k
    assert moe.last_load.shape == (moe.n_experts,)


def test_moe_matches_reference_with_bias(moe):
    with torch.no_grad():
        moe.expert_bias.copy_(torch.linspace(-0.3, 0.3, moe.n_experts))
    x = torch.randn(2, 9, moe.router.in_features)
    with torch.no_grad():
        torch.testing.assert_close(moe(x), naive_moe(moe, x), atol=1e-5, rtol=1e-4)


def test_router_bias_changes_selection_not_gate_values(moe):
    x = torch.randn(16, moe.router.in_features)
    idx0, gates0 = moe.route(x)
    scores = torch.sigmoid(moe.router(x).float())
    with torch.no_grad():
        moe.expert_bias[3] = 10.0  # forces expert 3 into every token's top-k
    idx1, gates1 = moe.route(x)
    assert (idx1 == 3).any(-1).all()
    assert not torch.equal(idx0, idx1)  # selection changed
    # Gates are the renormalised *unbiased* scores of the selected experts, times the scaling.
    expect = scores.gather(-1, idx1)
    expect = expect / expect.sum(-1, keepdim=True) * moe.scaling
    torch.testing.assert_close(gates1, expect)
    torch.testing.assert_close(gates1.sum(-1), torch.full((16,), moe.scaling))
    # Tokens whose selection the bias did not change keep exactly the same gates.
    same = (idx0.sort(-1).values == idx1.sort(-1).values).all(-1)
    for t in torch.nonzero(same).flatten().tolist():
        order0, order1 = idx0[t].argsort(), idx1[t].argsort()
        torch.testing.assert_close(gates0[t][order0], gates1[t][order1])


def test_update_bias_moves_toward_underloaded_experts(moe):
    load = torch.tensor([10, 0, 5, 5, 9, 1, 5, 5])
    moe.update_bias(load, rate=0.01)
    expect = torch.tensor([-0.01, 0.01, 0, 0, -0.01, 0.01, 0, 0])
    torch.testing.assert_close(moe.expert_bias, expect)
    moe.update_bias(load, rate=0.01)
    torch.testing.assert_close(moe.expert_bias, 2 * expect)


def test_bias_updates_balance_a_skewed_router(moe):
    x = torch.randn(512, moe.router.in_features)
    with torch.no_grad():
        moe.router.weight[0] += 0.5 * x.mean(0) / x.mean(0).norm() ** 2 * 4  # expert 0 favoured
        moe(x)
        before = moe.last_load.float()
        for _ in range(60):
            moe(x)
            moe.update_bias(moe.last_load, rate=0.02)
        moe(x)
        after = moe.last_load.float()
    assert before.max() / before.mean() > 2.0  # the skew is real
    assert before.max() / before.mean() > after.max() / after.mean()
    assert after.max() / after.mean() < 1.5


# ----------------------------------------------------------------------------------------------
# Vision


@pytest.fixture(scope="module")
def encoder():
    torch.manual_seed(1)
    return VisionEncoder(small_cfg()).eval()


def test_vision_token_count():
    assert vision_token_count(56, 84) == 6
    assert vision_token_count(28, 28) == 1
    for h, w in ((56, 50), (14, 28), (30, 56)):
        with pytest.raises(ValueError, match="multiple of 28"):
            vision_token_count(h, w)


@torch.no_grad()
def test_packed_vision_equals_each_item_alone(encoder):
    a, b, chunk = images(0, (56, 56, 3), (84, 56, 3), (4, 56, 84, 3))
    packed = encoder([a, b, chunk])
    alone = torch.cat([encoder([a]), encoder([b]), encoder([chunk])])
    assert packed.shape == (4 + 6 + 6, encoder.projector.proj[-1].out_features)
    torch.testing.assert_close(packed, alone, atol=1e-5, rtol=1e-4)
    # Reversing the order reverses the blocks: items never see each other.
    torch.testing.assert_close(encoder([b, a])[:6], alone[4:10], atol=1e-5, rtol=1e-4)


@torch.no_grad()
def test_chunk_and_image_have_the_same_token_count(encoder):
    img, chunk = images(2, (56, 84, 3), (4, 56, 84, 3))
    n = vision_token_count(56, 84)
    assert encoder([img]).shape[0] == encoder([chunk]).shape[0] == n == (56 // 28) * (84 // 28)
    # Fewer frames than max_frames are fine; more are rejected.
    assert encoder([chunk[:2]]).shape[0] == n
    with pytest.raises(ValueError, match="at most 4 frames"):
        encoder(images(3, (5, 56, 56, 3)))


@torch.no_grad()
def test_chunk_frames_are_ordered(encoder):
    # The time embedding makes frame order matter (temporal pooling alone would not).
    (chunk,) = images(4, (4, 56, 56, 3))
    assert not torch.allclose(encoder([chunk]), encoder([chunk.flip(0)]), atol=1e-4)


# ----------------------------------------------------------------------------------------------
# Early fusion


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(2)
    return K25Model(small_cfg(), media_pad_id=MEDIA_PAD).eval()


@torch.no_grad()
def test_embed_splices_vision_tokens_at_placeholders(model):
    (img,) = images(5, (56, 56, 3))
    tokens = torch.tensor([[1, 20, MEDIA_PAD, MEDIA_PAD, 21, MEDIA_PAD, MEDIA_PAD, 22]])
    h = model.embed(tokens, [img])
    slots = tokens == MEDIA_PAD
    torch.testing.assert_close(h[slots], model.vision([img]))
    torch.testing.assert_close(h[~slots], model.backbone.embed(tokens)[~slots])


def test_embed_rejects_placeholder_count_mismatch(model):
    (img,) = images(6, (56, 56, 3))  # 4 vision tokens
    three = torch.tensor([[1, MEDIA_PAD, MEDIA_PAD, MEDIA_PAD, 2]])
    with pytest.raises(ValueError, match="4 tokens for 3 media placeholders"):
        model.embed(three, [img])
    with pytest.raises(ValueError, match="no vision items"):
        model.embed(three, None)
    five = torch.tensor([[MEDIA_PAD] * 5])
    with pytest.raises(ValueError, match="placeholders"):
        model.embed(five, [img])
    # No placeholders and no items: plain text.
    assert model.embed(torch.tensor([[1, 2, 3]]), []).shape == (1, 3, model.cfg.dim)


@torch.no_grad()
def test_explicit_causal_mask_equals_default(model):
    tokens = torch.randint(11, 256, (2, 12))
    causal = torch.ones(12, 12, dtype=torch.bool).tril()[None, None].expand(2, 1, 12, 12)
    torch.testing.assert_close(model(tokens), model(tokens, None, causal), atol=1e-5, rtol=1e-4)


@torch.no_grad()
def test_packed_documents_are_independent(model):
    # Block-causal mask over [doc_a, doc_b]: doc_b's logits equal doc_b run alone (RoPE is relative).
    a, b = torch.randint(11, 256, (1, 7)), torch.randint(11, 256, (1, 9))
    doc = torch.tensor([0] * 7 + [1] * 9)
    mask = (torch.ones(16, 16, dtype=torch.bool).tril() & (doc[:, None] == doc[None, :]))[None, None]
    packed = model(torch.cat([a, b], 1), None, mask)
    torch.testing.assert_close(packed[:, :7], model(a), atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(packed[:, 7:], model(b), atol=1e-4, rtol=1e-4)


def test_loss_ignores_masked_targets_and_backpropagates(model):
    tokens = torch.randint(11, 256, (2, 10))
    targets = torch.randint(11, 256, (2, 10))
    targets[:, :5] = -100
    model.zero_grad()
    loss = model.loss(tokens, targets)
    logits = model(tokens)
    ref = F.cross_entropy(logits[:, 5:].flatten(0, 1), targets[:, 5:].flatten())
    torch.testing.assert_close(loss, ref)
    loss.backward()
    assert model.backbone.head.weight.grad is not None
    assert all(m.w_gate.grad is not None for m in model.backbone.moe_layers())
    model.zero_grad()


# ----------------------------------------------------------------------------------------------
# Generation


PROMPTS = [[1, 40, 41, 42, 43, 44, 45], [1, 50, 51], [1, 60, 61, 62, 63]]


def test_greedy_generation_is_deterministic(model):
    first = model.generate(PROMPTS[:1], max_new_tokens=6, stop_ids=set())
    again = model.generate(PROMPTS[:1], max_new_tokens=6, stop_ids=set())
    assert first == again and len(first[0]) == 6


def test_batched_generation_equals_unbatched(model):
    alone = [model.generate([p], max_new_tokens=6, stop_ids=set())[0] for p in PROMPTS]
    batched = model.generate(PROMPTS, max_new_tokens=6, stop_ids=set())
    assert batched == alone


def test_generation_stops_per_sequence(model):
    free = [model.generate([p], max_new_tokens=6, stop_ids=set())[0] for p in PROMPTS]
    stop = free[1][1]  # the second token of the second prompt's continuation
    expect = []
    for out in free:
        cut = out[: out.index(stop) + 1] if stop in out else out
        expect.append(cut)
    batched = model.generate(PROMPTS, max_new_tokens=6, stop_ids={stop})
    assert batched == expect
    assert batched[1][-1] == stop and len(batched[1]) <= 2


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_generation_never_emits_media_placeholders(model, temperature):
    # A policy that prefers <|media_pad|> must not crash the rollout (a placeholder without a
    # vision item makes the next step's embed raise) nor emit it.
    hook = model.backbone.head.register_forward_hook(
        lambda mod, inp, out: out + torch.nn.functional.one_hot(torch.tensor(MEDIA_PAD), out.shape[-1]) * 50.0)
    try:
        g = torch.Generator().manual_seed(0)
        outs = model.generate(PROMPTS, max_new_tokens=4, stop_ids=set(), temperature=temperature, generator=g)
    finally:
        hook.remove()
    assert all(len(o) == 4 and MEDIA_PAD not in o for o in outs)


def test_sampling_with_a_seeded_generator_is_reproducible(model):
    def run():
        g = torch.Generator().manual_seed(7)
        return model.generate(PROMPTS, max_new_tokens=5, stop_ids=set(), temperature=1.0, top_p=0.9, generator=g)

    assert run() == run()


# ----------------------------------------------------------------------------------------------
# Config


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_model_config_round_trip(name):
    cfg = PRESETS[name]
    assert ModelConfig.from_dict(cfg.to_dict()) == cfg
    assert ModelConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg  # as in a manifest
    assert isinstance(ModelConfig.from_dict(cfg.to_dict()).vision, VisionConfig)


def test_model_preset_overrides_and_errors():
    cfg = model_preset("tiny", vocab_size=512)
    assert cfg.vocab_size == 512 and PRESETS["tiny"].vocab_size == 4096  # the preset is not mutated
    with pytest.raises(ValueError, match="unknown model preset 'huge'"):
        model_preset("huge")
    with pytest.raises(ValueError, match="qk_rope_head_dim must be even"):
        model_preset("tiny", qk_rope_head_dim=7)
    with pytest.raises(ValueError, match="top_k"):
        model_preset("tiny", top_k=9)
    with pytest.raises(ValueError, match="n_dense_layers"):
        model_preset("tiny", n_dense_layers=5)
