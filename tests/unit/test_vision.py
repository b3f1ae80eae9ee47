"""MoonViT-3D (RECIPE.md §2.2-2.3): NaViT packing against items run alone (outputs and gradients),
divided_fixed positions, 2-D RoPE, temporal pooling, the released parameter counts, navit resizing.
Tiny shapes on CPU; the whole file takes a few seconds."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from model.config import VisionConfig, model_preset
from model.vision import (
    VisionBlock,
    VisionEncoder,
    apply_rope,
    navit_resize_size,
    rope_2d_angles,
    sincos_time_embedding,
    varlen_attention,
    vision_token_count,
)


def tiny_encoder(seed: int = 0, **vision) -> VisionEncoder:
    torch.manual_seed(seed)
    cfg = model_preset("tiny", vocab_size=256, vision=VisionConfig(**{"n_layers": 3, **vision}))
    return VisionEncoder(cfg).eval()


def pixels(seed: int, *shapes) -> list[torch.Tensor]:
    rng = np.random.default_rng(seed)
    return [torch.from_numpy(rng.integers(0, 256, size=s, dtype=np.uint8)) for s in shapes]


@pytest.fixture(scope="module")
def encoder():
    return tiny_encoder()


# Images and 4-frame chunks of different sizes; 224 x 224 is the pos_grid (16 patches) itself.
MIXED = ((56, 84, 3), (4, 56, 56, 3), (224, 224, 3), (28, 112, 3), (4, 84, 28, 3), (2, 56, 56, 3))


def tokens_of(shape) -> int:
    return vision_token_count(shape[-3], shape[-2])


# ---------------------------------------------------------------------------------------------
# Packing


@torch.no_grad()
def test_packed_forward_equals_each_item_alone(encoder):
    items = pixels(0, *MIXED)
    packed = encoder(items)
    alone = torch.cat([encoder([item]) for item in items])
    assert packed.shape == (sum(tokens_of(s) for s in MIXED), encoder.projector.proj[-1].out_features)
    torch.testing.assert_close(packed, alone, atol=1e-5, rtol=1e-4)


def test_packed_backward_equals_sum_of_separate_backwards():
    enc = tiny_encoder(seed=1)
    items = pixels(1, *MIXED)
    counts = [tokens_of(s) for s in MIXED]
    weights = torch.randn(sum(counts), enc.projector.proj[-1].out_features)

    (enc(items) * weights).sum().backward()
    packed = {n: p.grad.clone() for n, p in enc.named_parameters()}
    enc.zero_grad()
    for item, w in zip(items, weights.split(counts)):
        (enc([item]) * w).sum().backward()  # gradients accumulate over the separate backwards

    for name, p in enc.named_parameters():
        assert float(packed[name].abs().max()) > 0, f"{name} gets no gradient"
        torch.testing.assert_close(packed[name], p.grad, atol=1e-5, rtol=1e-4, msg=name)


def test_varlen_attention_equals_block_diagonal_dense_attention():
    torch.manual_seed(2)
    lengths = [5, 17, 1, 9]
    q, k, v = torch.randn(3, sum(lengths), 4, 8).unbind(0)
    cu = torch.tensor([0, *lengths]).cumsum(0).int()
    out = varlen_attention(q, k, v, lengths, cu, scale=8**-0.5)
    item = torch.repeat_interleave(torch.arange(len(lengths)), torch.tensor(lengths))
    mask = item[:, None] == item[None, :]  # the dense reference the encoder avoids building
    ref = F.scaled_dot_product_attention(q.transpose(0, 1), k.transpose(0, 1), v.transpose(0, 1), attn_mask=mask)
    torch.testing.assert_close(out, ref.transpose(0, 1), atol=1e-6, rtol=1e-5)


# ---------------------------------------------------------------------------------------------
# Tokens, frames, positions


@torch.no_grad()
def test_image_and_chunk_of_the_same_size_give_the_same_token_count(encoder):
    img, chunk = pixels(3, (56, 112, 3), (4, 56, 112, 3))
    assert encoder([img]).shape[0] == encoder([chunk]).shape[0] == (56 // 28) * (112 // 28)


@torch.no_grad()
def test_time_embedding_only_for_chunks_of_more_than_one_frame():
    enc = tiny_encoder(seed=4)
    (img,) = pixels(4, (56, 84, 3))
    # A 1-frame chunk is the image: no time embedding.
    torch.testing.assert_close(enc([img[None]]), enc([img]), atol=0, rtol=0)
    # 4 copies of one frame differ from the image only through the time embedding: with it zeroed,
    # attention over 4 identical copies equals attention over one, and the temporal mean is a no-op.
    chunk = img[None].expand(4, -1, -1, -1)
    image_out = enc([img])
    assert not torch.allclose(enc([chunk]), image_out, atol=1e-4)
    enc.time_emb.zero_()
    torch.testing.assert_close(enc([chunk]), image_out, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(enc([img]), image_out, atol=0, rtol=0)  # the image never saw the table


def test_time_table_is_half_sin_half_cos():
    emb = sincos_time_embedding(4, 8)  # omega_k = 10000^(-2k/8) = 1, 0.1, 0.01, 0.001
    omega = torch.tensor([1.0, 0.1, 0.01, 0.001])
    torch.testing.assert_close(emb[2], torch.cat([torch.sin(2 * omega), torch.cos(2 * omega)]))
    torch.testing.assert_close(emb[0], torch.tensor([0.0] * 4 + [1.0] * 4))


def test_pos_table_interpolation_is_identity_at_its_own_size(encoder):
    G = encoder.cfg.pos_grid
    assert encoder.spatial_pos(G, G) is encoder.pos_emb  # used as is, no resampling
    # ...which is what bicubic resampling to the same size gives anyway.
    resampled = F.interpolate(encoder.pos_emb.permute(2, 0, 1)[None], size=(G, G), mode="bicubic", align_corners=False)
    torch.testing.assert_close(resampled[0].permute(1, 2, 0), encoder.pos_emb, atol=1e-6, rtol=0)
    other = encoder.spatial_pos(4, 6)
    assert other.shape == (4, 6, encoder.cfg.dim)


@torch.no_grad()
def test_patch_embedding_is_the_per_frame_conv2d(encoder):
    (chunk,) = pixels(5, (2, 56, 84, 3))
    frames = chunk.permute(0, 3, 1, 2).float() / 255 * 2 - 1  # [T, 3, H, W] in [-1, 1]
    conv = encoder.patch_embed(frames).permute(0, 2, 3, 1).reshape(-1, encoder.cfg.dim)  # frame-major, row-major
    patches = encoder._patchify(chunk)
    ours = F.linear(patches, encoder.patch_embed.weight.flatten(1), encoder.patch_embed.bias)
    torch.testing.assert_close(ours, conv, atol=1e-5, rtol=1e-5)


def test_temporal_pool_then_2x2_groups(encoder):
    t, h, w, d = 3, 4, 6, 2
    x = torch.randn(t, h, w, d)
    groups = encoder._tpool_groups(x.reshape(t * h * w, d), (t, h, w))
    mean = x.mean(0)
    assert groups.shape == (h // 2 * w // 2, 4, d)
    # group (i, j) holds patches (2i,2j), (2i,2j+1), (2i+1,2j), (2i+1,2j+1), rows of groups row-major
    i, j = 1, 2
    expect = torch.stack([mean[2 * i, 2 * j], mean[2 * i, 2 * j + 1], mean[2 * i + 1, 2 * j], mean[2 * i + 1, 2 * j + 1]])
    torch.testing.assert_close(groups[i * (w // 2) + j], expect)


@torch.no_grad()
def test_projector_normalises_each_sub_patch_separately(encoder):
    groups = torch.randn(5, 4, encoder.cfg.dim)
    scaled = groups.clone()
    scaled[:, 1] = scaled[:, 1] * 7.0 + 3.0  # LayerNorm(dim) per sub-patch removes this; LayerNorm(4dim) would not
    torch.testing.assert_close(encoder.projector(scaled), encoder.projector(groups), atol=1e-4, rtol=1e-4)


def test_rejects_bad_items(encoder):
    with pytest.raises(ValueError, match="at most 4 frames"):
        encoder(pixels(6, (5, 56, 56, 3)))
    with pytest.raises(ValueError, match="multiples of 28"):
        encoder(pixels(6, (56, 42, 3)))


# ---------------------------------------------------------------------------------------------
# 2-D RoPE


def test_rope_angles_interleave_x_and_y():
    hd, theta = 16, 10_000.0
    ang = rope_2d_angles(5, 7, hd, theta).view(5, 7, hd // 2)
    row, col = 2, 3
    freqs = theta ** (-torch.arange(0, hd, 4) / hd)  # theta^(-4k/hd), k < hd/4
    torch.testing.assert_close(ang[row, col, 0::2], col * freqs)  # pairs 0, 2, 4, ...: x = column
    torch.testing.assert_close(ang[row, col, 1::2], row * freqs)  # pairs 1, 3, 5, ...: y = row


def test_rope_rotates_adjacent_channel_pairs_as_complex_numbers():
    torch.manual_seed(7)
    x = torch.randn(12, 2, 16)
    ang = rope_2d_angles(3, 4, 16, 10_000.0)
    ref = torch.view_as_real(torch.view_as_complex(x.view(12, 2, 8, 2)) * torch.polar(torch.ones_like(ang), ang)[:, None])
    torch.testing.assert_close(apply_rope(x, ang.cos(), ang.sin()), ref.flatten(-2), atol=1e-6, rtol=1e-5)


def test_rope_scores_depend_only_on_relative_offset():
    torch.manual_seed(8)
    h, w, hd = 6, 7, 16
    ang = rope_2d_angles(h, w, hd, 100.0)
    cos, sin = ang.cos(), ang.sin()
    q, k = torch.randn(2, 1, 1, hd).unbind(0)  # one query and one key vector, placed at every cell
    qr = apply_rope(q.expand(h * w, 1, hd), cos, sin)[:, 0]
    kr = apply_rope(k.expand(h * w, 1, hd), cos, sin)[:, 0]
    scores = qr @ kr.T  # [query cell, key cell]
    ys, xs = torch.arange(h * w) // w, torch.arange(h * w) % w
    by_offset: dict[tuple[int, int], list[float]] = {}
    for a in range(h * w):
        for b in range(h * w):
            by_offset.setdefault((int(xs[a] - xs[b]), int(ys[a] - ys[b])), []).append(float(scores[a, b]))
    for offset, vals in by_offset.items():
        assert max(vals) - min(vals) < 1e-4, f"offset {offset}: scores vary {min(vals)}..{max(vals)}"
    # ...and it does see both axes: a step in x and a step in y are different.
    assert abs(by_offset[(1, 0)][0] - by_offset[(0, 1)][0]) > 1e-3
    assert abs(by_offset[(1, 0)][0] - by_offset[(0, 0)][0]) > 1e-3


def test_rope_table_grows_and_slices_to_any_grid():
    enc = tiny_encoder(seed=9)
    hd, theta = enc.head_dim, enc.cfg.rope_theta
    for h, w in ((3, 5), (6, 2), (3, 5), (1, 1), (7, 7)):  # (6, 2) grows rows only, (7, 7) both
        cos, sin = enc._rope(h, w, "cpu")
        ang = rope_2d_angles(h, w, hd, theta)
        torch.testing.assert_close(cos, ang.cos())
        torch.testing.assert_close(sin, ang.sin())
    assert enc._rope_cache["cpu"][0].shape == (7, 7, hd // 2)  # one table, not one per grid size


def test_rope_is_the_same_for_every_frame_of_a_chunk(encoder):
    # Without RoPE differences between frames, a block treats frames only via their content:
    # permuting identical-content frames of a chunk (no time embedding inside a block) is exact.
    block: VisionBlock = encoder.blocks[0]
    t, h, w = 3, 2, 4
    cos, sin = (c.repeat(t, 1) for c in encoder._rope(h, w, "cpu"))
    x = torch.randn(t, h * w, encoder.cfg.dim)
    lengths = [t * h * w]
    cu = torch.tensor([0, t * h * w]).int()
    with torch.no_grad():
        out = block(x.reshape(-1, encoder.cfg.dim), cos, sin, lengths, cu).view(t, h * w, -1)
        swapped = block(x.flip(0).reshape(-1, encoder.cfg.dim), cos, sin, lengths, cu).view(t, h * w, -1)
    torch.testing.assert_close(swapped, out.flip(0), atol=1e-5, rtol=1e-4)


# ---------------------------------------------------------------------------------------------
# The released shape


def test_k25_parameter_counts_on_meta():
    cfg = model_preset("k25")
    with torch.device("meta"):
        enc = VisionEncoder(cfg)
    n = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert n(enc.blocks[0]) == 15_239_504  # RECIPE.md §2.1, one block
    projector = n(enc.projector)
    vit = n(enc) - projector
    assert vit == pytest.approx(416.9e6, rel=0.005)
    assert projector == pytest.approx(54.3e6, rel=0.005)
    assert enc.patch_embed.weight.shape == (1152, 3, 14, 14) and enc.pos_emb.shape == (64, 64, 1152)
    assert enc.projector.pre_norm.weight.shape == (1152,)
    assert enc.projector.proj[1].approximate == "none"  # exact GELU in the projector (tanh in the blocks)
    assert enc.projector.proj[0].weight.shape == (4608, 4608) and enc.projector.proj[2].weight.shape == (7168, 4608)


# ---------------------------------------------------------------------------------------------
# Preprocessing


def test_navit_resize_size_hand_checked():
    # 7000x300: 500*21 = 10,500 patches <= 16,384 and 7000 < 512*14 = 7168, so no resize; the
    # height is padded 300 -> 308 (11 * 28), the width is already 250 * 28.
    assert navit_resize_size(7000, 300, 16384) == (7000, 300, 7000, 308)
    # With the per-frame limit 4096: s = sqrt(4096 / 10500) = 0.62458 -> 4372 x 187 -> 4396 x 196.
    assert navit_resize_size(7000, 300, 4096) == (4372, 187, 4396, 196)
    # 8000x300: the side limit binds, s = 7168 / 8000 = 0.896 -> 7168 x 268 -> 7168 x 280.
    assert navit_resize_size(8000, 300, 16384) == (7168, 268, 7168, 280)
    # 4000x3000 at 16384: 285*214 = 60,990 patches, s = sqrt(16384 / 60990) = 0.518299
    # -> 2073.2 x 1554.9 -> 2073 x 1554 -> padded 2100 x 1568 (75 x 56 groups of 28).
    assert navit_resize_size(4000, 3000, 16384) == (2073, 1554, 2100, 1568)
    # Small images are never upscaled, only zero-padded.
    assert navit_resize_size(100, 75, 16384) == (100, 75, 112, 84)
    assert navit_resize_size(56, 56, 16384) == (56, 56, 56, 56)
    assert navit_resize_size(10, 5, 16384) == (10, 5, 28, 28)
    _, _, pw, ph = navit_resize_size(4000, 3000, 16384)
    assert vision_token_count(ph, pw) == 75 * 56
