"""MoonViT-3D on a mixed-resolution batch: NaViT packing (ours) vs pad-to-max batching, forward +
backward, same weights, same run.

The batch mirrors the preprocessor (RECIPE.md §2.3) scaled down to a small encoder: 18 images of
many source sizes go through `navit_resize_size` with an image patch limit of 768 (448x336 at most),
and 3 video chunks of 4 frames use a quarter of it per frame (the release's 16384 vs 4096). The baseline
pads every item's patch sequence to the longest item, batches them and masks padded keys; it runs
the encoder's own modules, and its output is checked against the packed one before timing.

Padding is counted in patch slots the encoder computes on:
- sequence padding: slots added so items line up in a batch (packed: none; padded: B*L_max - sum L);
- image padding: the zero border that rounds each resized frame up to multiples of 28 px, as
  patch-area equivalents (pixels / 14^2). Both variants carry the same image padding.

    python -m benchmarks.bench_vit_packing [--dim 256 --layers 4 --heads 4 --repeats 2]
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

from model.config import ModelConfig, VisionConfig
from model.vision import VisionEncoder, apply_rope, navit_resize_size

PATCH = 14
IMAGE_PATCH_LIMIT = 768  # 448 x 336; scaled down from 16384
FRAME_PATCH_LIMIT = IMAGE_PATCH_LIMIT // 4  # video frames get a quarter, as 4096 vs 16384
# (width, height) of source images: icons, thumbnails, charts and screenshots spread from 56x56 to
# 448x336 (kept as they are, only padded), plus two camera photos that get downscaled to the limit.
IMAGE_SOURCES = [(56, 56), (64, 64), (96, 96), (120, 90), (128, 128), (160, 120), (200, 150), (224, 224),
                 (256, 192), (240, 320), (320, 240), (300, 400), (400, 300), (420, 280), (448, 336),
                 (336, 448), (4000, 3000), (1920, 1080)]
VIDEO_SOURCES = [(1280, 720), (640, 360), (854, 480)]  # one 4-frame chunk each


def make_item(gen: torch.Generator, width: int, height: int, frames: int, limit: int):
    """Random pixels in the resized region, zeros in the 28-px padding; returns (item, padded px)."""
    new_w, new_h, pad_w, pad_h = navit_resize_size(width, height, limit)
    x = torch.zeros(frames, pad_h, pad_w, 3, dtype=torch.uint8)
    x[:, :new_h, :new_w] = torch.randint(0, 256, (frames, new_h, new_w, 3), dtype=torch.uint8, generator=gen)
    return (x[0] if frames == 1 else x), frames * (pad_w * pad_h - new_w * new_h)


def make_batch(seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    made = [make_item(gen, w, h, 1, IMAGE_PATCH_LIMIT) for w, h in IMAGE_SOURCES]
    made += [make_item(gen, w, h, 4, FRAME_PATCH_LIMIT) for w, h in VIDEO_SOURCES]
    return [m[0] for m in made], sum(m[1] for m in made) / PATCH**2


def padded_forward(enc: VisionEncoder, items: list[torch.Tensor]) -> torch.Tensor:
    """The baseline: the same encoder run as a padded batch [B, L_max, dim] with a key padding mask."""
    p, D, hd = enc.cfg.patch_size, enc.cfg.dim, enc.head_dim
    frames = [enc._frames(item) for item in items]
    grids = [(f.shape[0], f.shape[1] // p, f.shape[2] // p) for f in frames]
    lengths = [t * h * w for t, h, w in grids]
    B, L = len(items), max(lengths)

    def pad(seqs, value=0.0):  # list of [L_i, C] -> [B, L, C]
        return torch.stack([F.pad(s, (0, 0, 0, L - s.shape[0]), value=value) for s in seqs])

    embedded = [F.linear(enc._patchify(f), enc.patch_embed.weight.flatten(1), enc.patch_embed.bias) + enc._positions(*g)
                for f, g in zip(frames, grids)]
    x = pad(embedded)
    cos = pad([enc._rope(h, w, x.device)[0].repeat(t, 1) for t, h, w in grids], 1.0).view(B * L, -1)
    sin = pad([enc._rope(h, w, x.device)[1].repeat(t, 1) for t, h, w in grids]).view(B * L, -1)
    valid = torch.arange(L)[None, :] < torch.tensor(lengths)[:, None]  # [B, L]
    key_mask = valid[:, None, None, :]  # padded keys are never attended to

    for blk in enc.blocks:
        q, k, v = blk.wqkv(blk.norm0(x)).view(B * L, 3, blk.n_heads, hd).unbind(1)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        q, k, v = (t.view(B, L, blk.n_heads, hd).transpose(1, 2) for t in (q, k, v))
        attn = F.scaled_dot_product_attention(q, k, v, attn_mask=key_mask, scale=hd**-0.5)
        x = x + blk.wo(attn.transpose(1, 2).reshape(B, L, D))
        x = x + blk.mlp(blk.norm1(x))
    x = enc.final_layernorm(x)
    groups = torch.cat([enc._tpool_groups(x[i, :n], g) for i, (n, g) in enumerate(zip(lengths, grids))])
    return enc.projector(groups)


def fwd_bwd_seconds(fn, enc: VisionEncoder, items, grad: torch.Tensor) -> float:
    enc.zero_grad(set_to_none=True)
    start = time.perf_counter()
    (fn(enc, items) * grad).sum().backward()
    return time.perf_counter() - start


def time_both(enc: VisionEncoder, items, grad: torch.Tensor, repeats: int) -> tuple[float, float]:
    """Best of `repeats` forward+backward for each variant, alternating them so that load from other
    processes on the machine hits both alike; one warm-up each first (fills the RoPE cache)."""
    packed, padded = [], []
    for i in range(repeats + 1):
        t_packed = fwd_bwd_seconds(packed_forward, enc, items, grad)
        t_padded = fwd_bwd_seconds(padded_forward, enc, items, grad)
        if i:
            packed.append(t_packed)
            padded.append(t_padded)
    return min(packed), min(padded)


def packed_forward(enc: VisionEncoder, items: list[torch.Tensor]) -> torch.Tensor:
    return enc(items)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dim", type=int, default=256)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--quick", action="store_true", help="1 repeat")
    args = ap.parse_args()
    if args.quick:
        args.repeats = 1

    torch.manual_seed(0)
    vcfg = VisionConfig(dim=args.dim, n_layers=args.layers, n_heads=args.heads, mlp_dim=4 * args.dim, pos_grid=32)
    enc = VisionEncoder(ModelConfig(dim=512, vision=vcfg))
    items, image_pad = make_batch()
    p = vcfg.patch_size
    lengths = [(x.shape[0] if x.dim() == 4 else 1) * (x.shape[-3] // p) * (x.shape[-2] // p) for x in items]
    real, slots = sum(lengths), len(lengths) * max(lengths)
    print(f"batch: {len(IMAGE_SOURCES)} images + {len(VIDEO_SOURCES)} 4-frame chunks, patches per item "
          f"{min(lengths)}..{max(lengths)}, {real} patches; encoder dim {args.dim}, {args.layers} layers, "
          f"{args.heads} heads; torch threads {torch.get_num_threads()}")

    with torch.no_grad():
        out = enc(items)
        torch.testing.assert_close(padded_forward(enc, items), out, atol=1e-4, rtol=1e-4)
    grad = torch.randn(out.shape, generator=torch.Generator().manual_seed(1))

    t_packed, t_padded = time_both(enc, items, grad, args.repeats)

    seq_pad = slots - real
    print(f"padding (sequence): packed=0 slots, padded={seq_pad} of {slots} slots; "
          f"image 28-px zero border: {image_pad:.0f} patch-equivalents in both ({100 * image_pad / real:.1f}% of {real})")
    print(f"vit packed vs padded: padding packed={100 * 0 / real:.1f}% padded={100 * seq_pad / slots:.1f}% "
          f"(sequence padding; +image border: packed={100 * image_pad / real:.1f}% "
          f"padded={100 * (seq_pad + image_pad) / slots:.1f}%), "
          f"time packed={t_packed:.3f}s padded={t_padded:.3f}s, speedup={t_padded / t_packed:.2f}x")
    print(f"RESULT packing_speedup={t_padded / t_packed:.2f} padded_share={seq_pad / slots:.3f} "
          f"packed_share=0.000")


if __name__ == "__main__":
    main()
