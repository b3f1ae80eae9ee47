"""MuonClip (RECIPE.md §1.5): Newton-Schulz, Muon update scaling / momentum / weight decay, the
Muon-vs-AdamW parameter split, per-expert orthogonalisation, MLA max-logit recording and per-head
QK-Clip on the MLA row layout of §1.2. Tiny shapes, CPU, a few seconds."""

import math

import pytest
import torch

from model.backbone import MLA, Backbone, rope_tables
from model.config import model_preset
from model.kv_cache import LatentKVCache
from model.multimodal import K25Model
from training.muonclip import (
    MuonClip,
    enable_max_logit_recording,
    merge_max_logits,
    muon_param_groups,
    muon_update_scale,
    newton_schulz,
    qk_clip,
    read_max_logits,
)


def tiny_cfg(**overrides):
    base = dict(vocab_size=256, n_layers=2, max_seq_len=64, original_max_position=16)
    return model_preset("tiny", **{**base, **overrides})


# ----------------------------------------------------------------------------------------------
# Newton-Schulz and the Muon step


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("shape", [(64, 32), (32, 128), (96, 64), (64, 64), (4, 48, 80)])
def test_newton_schulz_singular_values_near_one(shape, dtype):
    torch.manual_seed(0)
    g = torch.randn(*shape) * 3.0  # the scale must not matter (Frobenius normalisation)
    o = newton_schulz(g, dtype=dtype)
    assert o.shape == g.shape and o.dtype == g.dtype
    s = torch.linalg.svdvals(o.float())
    # The quintic (3.4445, -4.7750, 2.0315) x5 drives every singular value that is not tiny relative
    # to ||g||_F into ~[0.68, 1.2] (the small-value gain is ~3.44^5 ~ 490, so sigma/||g||_F >= 3e-3
    # suffices). A square Gaussian matrix can have one much smaller singular value: it is only
    # amplified, never beyond the band.
    rel = torch.linalg.svdvals(g.float()) / g.float().norm(dim=(-2, -1), keepdim=True).squeeze(-1)
    assert (rel >= 3e-3).float().mean() > 0.9  # the band below is really exercised
    big = s[rel >= 3e-3]
    assert big.min() > 0.6 and s.max() < 1.25, (big.min(), s.max())
    assert (s[rel < 3e-3] > rel[rel < 3e-3]).all()
    # and keeps g's singular vectors: U^T O V is (nearly) diagonal
    u, _, vh = torch.linalg.svd(g.float(), full_matrices=False)
    core = u.transpose(-1, -2) @ o.float() @ vh.transpose(-1, -2)
    off = core - torch.diag_embed(torch.diagonal(core, dim1=-2, dim2=-1))
    assert off.norm() / core.norm() < (0.02 if dtype == torch.float32 else 0.08)


def one_step_update(p0, grad, **opt_kw):
    p = torch.nn.Parameter(p0.clone())
    opt = MuonClip([dict(params=[p], use_muon=True)], **opt_kw)
    p.grad = grad.clone()
    opt.step()
    return p0 - p.detach()


def test_muon_update_rms_matches_adamw_scale():
    torch.manual_seed(0)
    for n, m in [(64, 32), (32, 128), (96, 96)]:
        assert muon_update_scale((n, m)) == pytest.approx(0.2 * math.sqrt(max(n, m)))
        g = torch.randn(n, m)
        delta = one_step_update(torch.randn(n, m), g, lr=1.0, weight_decay=0.0, momentum=0.0,
                                ns_dtype=torch.float32)
        # exactly the formula: lr * 0.2 * sqrt(max(n, m)) * NS(g)
        torch.testing.assert_close(delta, 0.2 * math.sqrt(max(n, m)) * newton_schulz(g, dtype=torch.float32),
                                   atol=1e-5, rtol=1e-4)
        rms = delta.pow(2).mean().sqrt().item()
        assert 0.15 < rms < 0.22, (n, m, rms)  # ~0.2 (slightly less: NS singular values ~0.7-1.1)


def test_muon_nesterov_momentum_and_decoupled_weight_decay():
    torch.manual_seed(0)
    p = torch.nn.Parameter(torch.randn(16, 24))
    opt = MuonClip([dict(params=[p], use_muon=True)], lr=0.1, weight_decay=0.5, momentum=0.9,
                   ns_dtype=torch.float32)
    g1, g2 = torch.randn(16, 24), torch.randn(16, 24)
    w0 = p.detach().clone()
    p.grad = g1.clone(); opt.step()
    w1 = p.detach().clone()
    p.grad = g2.clone(); opt.step()
    scale = muon_update_scale((16, 24))
    # step 1: buf = g1, nesterov g = g1 + 0.9 g1; step 2: buf = 0.9 g1 + g2, g = g2 + 0.9 buf
    exp1 = w0 * (1 - 0.1 * 0.5) - 0.1 * scale * newton_schulz(1.9 * g1, dtype=torch.float32)
    buf = 0.9 * g1 + g2
    exp2 = exp1 * (1 - 0.1 * 0.5) - 0.1 * scale * newton_schulz(g2 + 0.9 * buf, dtype=torch.float32)
    torch.testing.assert_close(w1, exp1, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(p.detach(), exp2, atol=1e-5, rtol=1e-5)
    # zero gradient: only the decoupled decay acts, in both the Muon and the AdamW group
    q = torch.nn.Parameter(torch.randn(7))
    opt = MuonClip([dict(params=[p], use_muon=True), dict(params=[q], use_muon=False)], lr=0.1, weight_decay=0.5)
    before_p, before_q = p.detach().clone(), q.detach().clone()
    p.grad, q.grad = torch.zeros_like(p), torch.zeros_like(q)
    opt.step()
    torch.testing.assert_close(p.detach(), before_p * 0.95)
    torch.testing.assert_close(q.detach(), before_q * 0.95)


def test_adamw_group_matches_torch_adamw():
    torch.manual_seed(0)
    w = torch.randn(5, 3)
    a, b = torch.nn.Parameter(w.clone()), torch.nn.Parameter(w.clone())
    ours = MuonClip([dict(params=[a], use_muon=False)], lr=0.01, weight_decay=0.1, betas=(0.9, 0.95), eps=1e-8)
    ref = torch.optim.AdamW([b], lr=0.01, weight_decay=0.1, betas=(0.9, 0.95), eps=1e-8)
    for _ in range(3):
        g = torch.randn(5, 3)
        a.grad, b.grad = g.clone(), g.clone()
        ours.step(); ref.step()
    torch.testing.assert_close(a.detach(), b.detach(), atol=1e-6, rtol=1e-5)


def test_stacked_expert_weights_orthogonalised_per_expert():
    torch.manual_seed(0)
    E, n, m = 4, 24, 40
    w0, g = torch.randn(E, n, m), torch.randn(E, n, m)
    g[1] *= 50  # per-expert normalisation: one big expert must not shrink the others' updates
    kw = dict(lr=1.0, weight_decay=0.0, momentum=0.0, ns_dtype=torch.float32)
    stacked = one_step_update(w0, g, **kw)
    for e in range(E):
        torch.testing.assert_close(stacked[e], one_step_update(w0[e], g[e], **kw), atol=1e-5, rtol=1e-4)
        assert 0.15 < stacked[e].pow(2).mean().sqrt() < 0.22
    # ...and it is not the orthogonalisation of the experts as one flattened matrix
    flat = one_step_update(w0.reshape(E * n, m), g.reshape(E * n, m), **kw).reshape(E, n, m)
    assert (flat - stacked).abs().max() > 0.05


def test_param_groups_split_by_role():
    model = K25Model(tiny_cfg(), media_pad_id=10)
    groups = muon_param_groups(model, lr=1e-3, weight_decay=0.1)
    muon = next(g for g in groups if g["use_muon"])
    adamw = next(g for g in groups if not g["use_muon"])
    mnames, anames = set(muon["names"]), set(adamw["names"])
    all_names = {n for n, _ in model.named_parameters()}
    assert mnames | anames == all_names and not mnames & anames
    # AdamW: embedding, LM head, norms, routers, biases, every 1-D parameter, conv / position tables
    for name in ["backbone.embed.weight", "backbone.head.weight", "backbone.norm.weight",
                 "backbone.layers.1.ffn.router.weight", "backbone.layers.0.attn.q_a_layernorm.weight",
                 "backbone.layers.0.attn_norm.weight", "vision.blocks.0.wqkv.bias",
                 "vision.patch_embed.weight", "vision.pos_emb"]:
        assert name in anames, name
    assert all(p.ndim == 1 for n, p in model.named_parameters() if n in anames and n not in {
        "backbone.embed.weight", "backbone.head.weight", "backbone.layers.1.ffn.router.weight",
        "backbone.layers.2.ffn.router.weight", "vision.patch_embed.weight", "vision.pos_emb"})
    assert all(p.ndim >= 2 for p in muon["params"])
    # Muon: attention projections, dense / shared FFN matrices, stacked experts, vision linears
    for name in ["backbone.layers.0.attn.q_a_proj.weight", "backbone.layers.0.attn.q_b_proj.weight",
                 "backbone.layers.0.attn.kv_a_proj_with_mqa.weight", "backbone.layers.0.attn.kv_b_proj.weight",
                 "backbone.layers.0.attn.o_proj.weight", "backbone.layers.0.ffn.gate.weight",
                 "backbone.layers.1.ffn.w_gate", "backbone.layers.1.ffn.w_up", "backbone.layers.1.ffn.w_down",
                 "backbone.layers.1.ffn.shared.down.weight", "vision.blocks.0.wqkv.weight"]:
        assert name in mnames, name
    # a bare Backbone splits the same way; frozen parameters are left out by default
    bb = model.backbone
    for p in model.vision.parameters():
        p.requires_grad_(False)
    names = {n for g in muon_param_groups(model) for n in g["names"]}
    assert not any(n.startswith("vision.") for n in names)
    bgroups = {g["use_muon"]: set(g["names"]) for g in muon_param_groups(bb)}
    assert "embed.weight" in bgroups[False] and "head.weight" in bgroups[False]
    assert "layers.1.ffn.w_down" in bgroups[True]


# ----------------------------------------------------------------------------------------------
# Max-logit recording


def naive_mla_logits(mla: MLA, x, cos, sin):
    """scale * q_h . k_h for every (b, h, i, j), from the weights, one head at a time."""
    cfg = mla.cfg
    B, T, _ = x.shape
    H, nope, rope, v = mla.n_heads, mla.nope, mla.rope, mla.v_dim
    cq = mla.q_a_layernorm(x @ mla.q_a_proj.weight.T)
    ckv_kr = x @ mla.kv_a_proj_with_mqa.weight.T
    ckv = mla.kv_a_layernorm(ckv_kr[..., : mla.kv_rank])
    kr = ckv_kr[..., mla.kv_rank:]

    def rot(t):  # interleaved-pair rotation (same permutation for q and k)
        t1, t2 = t[..., 0::2], t[..., 1::2]
        return torch.cat((t1 * cos - t2 * sin, t2 * cos + t1 * sin), -1)

    out = torch.empty(B, H, T, T)
    for h in range(H):
        wq = mla.q_b_proj.weight[h * (nope + rope):(h + 1) * (nope + rope)]
        wk = mla.kv_b_proj.weight[h * (nope + v):h * (nope + v) + nope]
        qh = cq @ wq.T
        q = torch.cat((qh[..., :nope], rot(qh[..., nope:])), -1)
        k = torch.cat((ckv @ wk.T, rot(kr)), -1)
        out[:, h] = torch.einsum("bid,bjd->bij", q, k) * cfg.softmax_scale()
    return out


def test_recorded_max_logits_equal_naive_computation():
    torch.manual_seed(0)
    cfg = tiny_cfg()
    mla = MLA(cfg, 0)
    with torch.no_grad():
        mla.q_b_proj.weight.mul_(torch.linspace(0.5, 4.0, cfg.n_heads).repeat_interleave(cfg.qk_head_dim)[:, None])
    B, T = 3, 12
    x = torch.randn(B, T, cfg.dim)
    cos, sin = rope_tables(cfg, T)
    cos, sin = cos[None], sin[None]
    naive = naive_mla_logits(mla, x, cos, sin)
    causal = torch.ones(T, T, dtype=torch.bool).tril()

    assert not mla.record_max_logits and mla.max_logits is None
    out_off = mla(x, cos, sin)
    assert mla.max_logits is None  # off by default: nothing recorded
    mla.record_max_logits = True
    out_on = mla(x, cos, sin)
    torch.testing.assert_close(out_on, out_off, atol=0, rtol=0)  # recording does not change outputs
    expected = naive.masked_fill(~causal, float("-inf")).amax(dim=(0, 2, 3))
    assert mla.max_logits.shape == (cfg.n_heads,) and not mla.max_logits.requires_grad
    torch.testing.assert_close(mla.max_logits, expected, atol=1e-4, rtol=1e-4)
    # the causal mask matters: the unmasked max is different
    assert not torch.allclose(naive.amax(dim=(0, 2, 3)), expected)

    # an explicit (document) mask is respected
    mask = causal.clone()
    mask[6:, :6] = False
    mla(x, cos, sin, attn_mask=mask.expand(B, 1, T, T))
    torch.testing.assert_close(mla.max_logits, naive.masked_fill(~mask, float("-inf")).amax(dim=(0, 2, 3)),
                               atol=1e-4, rtol=1e-4)

    # decoding with the latent cache (absorbed path): the new query row against all keys so far
    cache = LatentKVCache(1, B, T, cfg.kv_lora_rank, cfg.qk_rope_head_dim)
    mla(x[:, : T - 1], cos[:, : T - 1], sin[:, : T - 1], cache=cache)
    cache.advance(T - 1)
    mla(x[:, T - 1:], cos[:, T - 1:], sin[:, T - 1:], cache=cache)
    torch.testing.assert_close(mla.max_logits, naive[:, :, T - 1].amax(dim=(0, 2)), atol=1e-4, rtol=1e-4)


# ----------------------------------------------------------------------------------------------
# QK-Clip


def test_qk_clip_caps_exceeding_heads_and_leaves_the_rest_untouched():
    torch.manual_seed(0)
    cfg = tiny_cfg()
    bb = Backbone(cfg)
    H, nope, rope, v = cfg.n_heads, cfg.qk_nope_head_dim, cfg.qk_rope_head_dim, cfg.v_head_dim
    hot = [0, 2]
    with torch.no_grad():  # huge q/k weights on heads 0 and 2 of every layer
        for layer in bb.layers:
            wq = layer.attn.q_b_proj.weight.view(H, nope + rope, -1)
            wkv = layer.attn.kv_b_proj.weight.view(H, nope + v, -1)
            wq[hot] *= 8.0
            wkv[hot, :nope] *= 8.0
            layer.attn.kv_a_proj_with_mqa.weight.mul_(3.0)
    tokens = torch.randint(0, cfg.vocab_size, (2, 24))

    def max_logits():
        enable_max_logit_recording(bb)
        with torch.no_grad():
            bb.forward_embeddings(bb.embed(tokens))
        return read_max_logits(bb)

    before = max_logits()
    assert sorted(before) == list(range(cfg.n_layers))
    cold_max = max(before[i][h].item() for i in before for h in range(H) if h not in hot)
    hot_min = min(before[i][h].item() for i in before for h in hot)
    assert hot_min > 2 * cold_max  # the setup: hot heads far above every cold head
    tau = (hot_min + cold_max) / 2

    # what must not change: the first layer's attention sees the same input after clipping
    w_before = {n: p.detach().clone() for n, p in bb.named_parameters()}
    stats = qk_clip(bb, tau)
    for i, s in stats.items():
        assert s["clipped_heads"] == hot and s["n_clipped"] == 2
        assert s["max_logit"] == pytest.approx(before[i].max().item())
        assert s["min_gamma"] == pytest.approx(tau / before[i].max().item(), rel=1e-5)

    for name, p in bb.named_parameters():
        if "q_b_proj" in name or "kv_b_proj" in name:
            continue
        assert torch.equal(p, w_before[name]), name  # incl. kv_a_proj_with_mqa (shared rope key)
    for i, layer in enumerate(bb.layers):
        pre = f"layers.{i}.attn."
        wq, wq0 = layer.attn.q_b_proj.weight.view(H, nope + rope, -1), w_before[pre + "q_b_proj.weight"].view(H, nope + rope, -1)
        wkv, wkv0 = layer.attn.kv_b_proj.weight.view(H, nope + v, -1), w_before[pre + "kv_b_proj.weight"].view(H, nope + v, -1)
        assert torch.equal(wkv[:, nope:], wkv0[:, nope:])  # value rows untouched
        for h in range(H):
            if h in hot:
                gamma = tau / before[i][h].item()
                torch.testing.assert_close(wq[h, :nope], wq0[h, :nope] * math.sqrt(gamma))
                torch.testing.assert_close(wq[h, nope:], wq0[h, nope:] * gamma)
                torch.testing.assert_close(wkv[h, :nope], wkv0[h, :nope] * math.sqrt(gamma))
            else:
                assert torch.equal(wq[h], wq0[h]) and torch.equal(wkv[h], wkv0[h]), (i, h)

    # Recomputed on the same batch: layer 0 sees identical inputs, so its hot heads sit exactly
    # at tau; later layers see slightly changed inputs but must still not exceed tau noticeably.
    after = max_logits()
    torch.testing.assert_close(after[0][hot], torch.full((2,), tau), rtol=1e-4, atol=0)
    torch.testing.assert_close(after[0][[1, 3]], before[0][[1, 3]], rtol=1e-5, atol=0)
    for i in after:
        assert after[i].max() <= tau * 1.05, (i, after[i], tau)
    # heads below tau: clipping again with a larger tau changes nothing
    w_mid = {n: p.detach().clone() for n, p in bb.named_parameters()}
    stats = qk_clip(bb, tau=10 * hot_min)
    assert all(s["n_clipped"] == 0 for s in stats.values())
    assert all(torch.equal(p, w_mid[n]) for n, p in bb.named_parameters())


def test_merge_max_logits_takes_the_elementwise_max():
    a = {0: torch.tensor([1.0, 5.0]), 1: torch.tensor([2.0, 2.0])}
    b = {0: torch.tensor([3.0, 4.0]), 2: torch.tensor([7.0, 0.0])}
    m = merge_max_logits(a, b)
    assert torch.equal(m[0], torch.tensor([3.0, 5.0])) and torch.equal(m[1], a[1]) and torch.equal(m[2], b[2])


# ----------------------------------------------------------------------------------------------
# End to end


def test_muonclip_training_reduces_loss_on_a_fixed_batch():
    torch.manual_seed(0)
    cfg = tiny_cfg()
    model = K25Model(cfg, media_pad_id=10)
    opt = MuonClip(muon_param_groups(model, lr=0.02, weight_decay=0.01, adamw_lr=0.01))
    enable_max_logit_recording(model)
    tokens = torch.randint(11, cfg.vocab_size, (4, 33))
    inputs, targets = tokens[:, :-1], tokens[:, 1:]
    losses, tau = [], 3.0  # aggressive tau so that the clip really acts during the run
    n_clipped = 0
    for _ in range(8):
        loss = model.loss(inputs, targets)
        opt.zero_grad()
        loss.backward()
        opt.step()
        stats = qk_clip(model, tau)
        n_clipped += sum(s["n_clipped"] for s in stats.values())
        losses.append(loss.item())
    assert all(math.isfinite(x) for x in losses)
    assert losses[-1] < 0.5 * losses[0], losses
    assert n_clipped > 0
