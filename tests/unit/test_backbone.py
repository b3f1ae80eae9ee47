"""Backbone: MLA + YaRN + MoE against transformers' DeepseekV3, the latent KV cache against full
recomputation, YaRN switching, document masks. Tiny shapes, CPU, a few seconds."""

import math

import pytest
import torch

from model.backbone import Backbone, apply_rope, rope_inv_freq, rope_tables
from model.config import model_preset
from model.kv_cache import LatentKVCache
from model.multimodal import K25Model

MEDIA_PAD = 10


def tiny_cfg(**overrides):
    base = dict(vocab_size=256, n_layers=3, max_seq_len=64, original_max_position=16)
    return model_preset("tiny", **{**base, **overrides})


def randomise_norms_and_biases(backbone: Backbone) -> None:
    """Norm weights start at 1 and expert biases at 0: make both matter, so a weight that is not
    copied or a bias that is ignored shows up."""
    with torch.no_grad():
        for name, p in backbone.named_parameters():
            if name.endswith("norm.weight") or "layernorm" in name:
                p.uniform_(0.5, 1.5)
        for moe in backbone.moe_layers():
            moe.expert_bias.normal_(0, 0.1)


def logits(backbone: Backbone, tokens, **kw):
    return backbone.forward_embeddings(backbone.embed(tokens), **kw)


# ----------------------------------------------------------------------------------------------
# Parity with transformers' DeepseekV3


@pytest.mark.parametrize("yarn", [1.0, 4.0])
@torch.no_grad()
def test_matches_transformers_deepseek_v3(yarn):
    pytest.importorskip("transformers", minversion="5.0")
    from model.transformers_io import to_transformers

    torch.manual_seed(0)
    ours = Backbone(tiny_cfg()).eval()
    randomise_norms_and_biases(ours)
    ours.set_yarn(yarn)  # also checks that set_yarn reaches rope tables and softmax scale
    theirs = to_transformers(ours).eval()
    assert theirs.config.rope_parameters["rope_type"] == ("yarn" if yarn > 1 else "default")
    tokens = torch.randint(0, 256, (2, 48))  # 48 > original_max_position 16: YaRN matters
    torch.testing.assert_close(logits(ours, tokens), theirs(tokens).logits, atol=1e-4, rtol=1e-4)


# ----------------------------------------------------------------------------------------------
# KV cache


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(3)
    m = K25Model(tiny_cfg(), media_pad_id=MEDIA_PAD).eval()
    randomise_norms_and_biases(m.backbone)
    return m


def greedy_by_recomputation(model: K25Model, prompt: list[int], n: int) -> list[int]:
    seq = list(prompt)
    for _ in range(n):
        out = model(torch.tensor([seq]))[0, -1]
        out[MEDIA_PAD] = float("-inf")
        seq.append(int(out.argmax()))
    return seq[len(prompt):]


PROMPTS = [[1, 40, 41, 42, 43, 44, 45], [1, 50, 51], [7], [1, 60, 61, 62, 63, 64, 65, 66, 67, 68, 69]]


def test_cached_generation_equals_full_recomputation(model):
    expect = [greedy_by_recomputation(model, p, 8) for p in PROMPTS]
    assert [model.generate([p], 8, set())[0] for p in PROMPTS] == expect
    assert model.generate(PROMPTS, 8, set()) == expect
    assert model.generate(PROMPTS[::-1], 8, set()) == expect[::-1]


@torch.no_grad()
def test_cached_logits_equal_full_forward(model):
    # Prefill, then a 3-token chunk and single tokens on top of the cache (the absorbed attention
    # path, with and without an explicit mask): logits equal one full causal forward.
    bb = model.backbone
    tokens = torch.randint(11, 256, (2, 12))
    full = logits(bb, tokens)
    cache = LatentKVCache.for_model(bb.cfg, 2, 12)
    parts = [logits(bb, tokens[:, :6], cache=cache), logits(bb, tokens[:, 6:9], cache=cache)]
    parts += [logits(bb, tokens[:, t:t + 1], cache=cache) for t in range(9, 12)]
    torch.testing.assert_close(torch.cat(parts, 1), full, atol=1e-4, rtol=1e-4)
    assert cache.length == 12


@torch.no_grad()
def test_cache_holds_normed_latent_and_roped_shared_key(model):
    bb, cfg = model.backbone, model.cfg
    tokens = torch.randint(11, 256, (2, 5))
    cache = LatentKVCache.for_model(cfg, 2, 8)
    logits(bb, tokens, cache=cache)
    attn, x = bb.layers[0].attn, bb.layers[0].attn_norm(bb.embed(tokens))
    c_kv, k_rope = attn.kv_a_proj_with_mqa(x).split([cfg.kv_lora_rank, cfg.qk_rope_head_dim], -1)
    cos, sin = rope_tables(cfg, 5)
    assert cache.c_kv(0).shape == (2, 5, cfg.kv_lora_rank) and cache.k_rope(0).shape == (2, 5, cfg.qk_rope_head_dim)
    torch.testing.assert_close(cache.c_kv(0), attn.kv_a_layernorm(c_kv))
    torch.testing.assert_close(cache.k_rope(0), apply_rope(k_rope, cos, sin))
    with pytest.raises(ValueError, match="cache holds 8 tokens"):
        logits(bb, torch.randint(11, 256, (2, 4)), cache=cache)


def test_sampling_respects_top_p_and_seed(model):
    def run(seed, top_p):
        g = torch.Generator().manual_seed(seed)
        return model.generate(PROMPTS, 6, set(), temperature=1.0, top_p=top_p, generator=g)

    assert run(0, 0.9) == run(0, 0.9)
    # top_p -> 0 keeps only the most likely token: sampling becomes greedy.
    assert run(1, 1e-6) == model.generate(PROMPTS, 6, set())


# ----------------------------------------------------------------------------------------------
# RoPE and YaRN


def test_rope_matches_complex_rotation_of_interleaved_pairs():
    # DeepSeek-V3's reference code: pairs (x0, x1), (x2, x3), ... are complex numbers times
    # e^{i pos theta_j}. Ours returns them de-interleaved (real parts, then imaginary parts).
    cfg = tiny_cfg()
    x = torch.randn(2, 3, 9, cfg.qk_rope_head_dim)
    cos, sin = rope_tables(cfg, 9)
    inv_freq = 1.0 / cfg.rope_theta ** (torch.arange(0, cfg.qk_rope_head_dim, 2).float() / cfg.qk_rope_head_dim)
    rot = torch.polar(torch.ones(9, len(inv_freq)), torch.outer(torch.arange(9).float(), inv_freq))
    z = torch.view_as_complex(x.reshape(*x.shape[:-1], -1, 2)) * rot
    torch.testing.assert_close(apply_rope(x, cos, sin), torch.cat([z.real, z.imag], -1), atol=1e-6, rtol=1e-5)


def test_yarn_factor_one_is_plain_rope():
    cfg = tiny_cfg(yarn_factor=1.0)
    inv_freq, mscale = rope_inv_freq(cfg)
    d = cfg.qk_rope_head_dim
    torch.testing.assert_close(inv_freq, 1.0 / cfg.rope_theta ** (torch.arange(0, d, 2).float() / d))
    assert mscale == 1.0 and cfg.softmax_scale() == cfg.qk_head_dim ** -0.5


def test_yarn_keeps_high_frequencies_and_interpolates_low_ones():
    cfg = tiny_cfg(qk_rope_head_dim=32, original_max_position=4096, rope_theta=50_000.0, yarn_factor=64.0)
    plain, _ = rope_inv_freq(tiny_cfg(qk_rope_head_dim=32, rope_theta=50_000.0))
    yarn, mscale = rope_inv_freq(cfg)
    torch.testing.assert_close(yarn[:2], plain[:2])  # many turns over 4096 tokens: extrapolated
    torch.testing.assert_close(yarn[-2:], plain[-2:] / 64)  # under one turn: interpolated
    assert mscale == 1.0  # mscale == mscale_all_dim
    assert rope_inv_freq(tiny_cfg(yarn_factor=64.0, yarn_mscale=0.5))[1] == pytest.approx(
        (0.05 * math.log(64) + 1) / (0.1 * math.log(64) + 1))


@torch.no_grad()
def test_set_yarn_changes_softmax_scale_and_rope_tables():
    torch.manual_seed(4)
    cfg = model_preset("k25", vocab_size=64, dim=32, n_layers=1, n_heads=2, q_lora_rank=16, kv_lora_rank=8,
                       ffn_dim=32, yarn_factor=1.0)  # K2 head dims 128 + 64
    bb = Backbone(cfg).eval()
    tokens = torch.randint(0, 64, (1, 10))
    before = logits(bb, tokens)
    cos1 = bb.rope(10, "cpu")[0]
    assert bb.rope(10, "cpu")[0] is cos1  # cached, not recomputed
    bb.set_yarn(64.0)
    assert cfg.yarn_factor == 64.0
    m = 0.1 * math.log(64) + 1  # RECIPE §1.2: m ~= 1.416, m^2 ~= 2.005
    assert m == pytest.approx(1.416, abs=1e-3)
    assert cfg.softmax_scale() == pytest.approx(192 ** -0.5 * m * m)
    assert not torch.equal(bb.rope(10, "cpu")[0], cos1)  # tables rebuilt for the new factor
    assert not torch.allclose(logits(bb, tokens), before, atol=1e-4)
    bb.set_yarn(1.0)
    torch.testing.assert_close(logits(bb, tokens), before)
    with pytest.raises(ValueError, match="yarn factor"):
        bb.set_yarn(0.5)
    assert not hasattr(bb, "rope_scale")


# ----------------------------------------------------------------------------------------------
# Document masks


@torch.no_grad()
def test_document_mask_equals_each_document_alone(model):
    bb = model.backbone
    docs = [torch.randint(11, 256, (n,)) for n in (5, 8, 3, 4, 12)]
    rows = [[docs[0], docs[1], docs[2]], [docs[3], docs[4]]]  # two packed rows of 16 tokens
    tokens = torch.stack([torch.cat(r) for r in rows])
    doc_id = torch.stack([torch.cat([torch.full((len(d),), i) for i, d in enumerate(r)]) for r in rows])
    mask = torch.ones(16, 16, dtype=torch.bool).tril() & (doc_id[:, :, None] == doc_id[:, None, :])
    packed = logits(bb, tokens, attn_mask=mask[:, None])
    for b, row in enumerate(rows):
        start = 0
        for d in row:
            alone = logits(bb, d[None])[0]
            torch.testing.assert_close(packed[b, start:start + len(d)], alone, atol=1e-4, rtol=1e-4)
            start += len(d)
