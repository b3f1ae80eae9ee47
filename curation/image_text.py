"""Image-text curation: decode, validate, convert to RGB, resize by the NaViT rule, dedup, write shards.

Resize rule (RECIPE.md §2.3, `model.vision.navit_resize_size`): keep the aspect ratio, only ever
downscale, to the largest size whose 14x14 patch count fits `patch_limit` and whose sides fit
`side_limit` patches; then zero-pad right and bottom to multiples of 28 (patch 14 x merge 2), so
every image maps onto whole vision tokens. Images therefore come out in varied sizes.

Release setting (`k25`): patch_limit=16384 per image (at most 4096 tokens), side_limit=512.
The tiny default (64 patches, about 16 tokens) keeps the walking skeleton's sequences short.

The rule never upscales, so an 8x8 scikit-learn digit would become a 28x28 canvas with the digit
in one corner (one token, mostly padding). `min_side` first upscales tiny inputs so their short
side is at least that many pixels (default 56: a digit becomes 56x56, 2x2 tokens); 0 turns it off.
"""

from __future__ import annotations

import hashlib
import io
import warnings
from collections import Counter
from dataclasses import dataclass, field
from typing import Iterable, Iterator

import numpy as np
from PIL import Image

from curation import sources
from curation.quarantine import Quarantine, Reject
from curation.shards import CuratedSet, image_sample, save_curated_set, write_shards
from infra.progress import Log, track
from model.vision import navit_resize_size, vision_token_count

# MoonViT cuts 14x14 patches and merges 2x2 of them into one token, so a side must be a
# multiple of 28 for the image to map onto whole vision tokens.
VISION_TOKEN_PIXELS = 28
PATCH = 14
RELEASE_IMAGE_PATCH_LIMIT = 16384  # RECIPE.md §2.3 in_patch_limit
RELEASE_SIDE_LIMIT = 512  # patch_limit_on_one_side
MAX_DECODE_PIXELS = 178_956_970  # PIL's own decompression-bomb limit, as an explicit check


@dataclass
class ImageCurationConfig:
    patch_limit: int = 64  # 14x14 patches per image after resize; k25 release: 16384
    side_limit: int = 512  # patches per side; k25 release: 512 (7168 px)
    min_side: int = 56  # upscale inputs whose short side is below this (px) before the rule; 0: never
    sources: list[sources.SourceSpec | str] = field(default_factory=lambda: ["skimage", "digits"])
    max_digits: int | None = 600  # scikit-learn digits to take (None: all 1,797)
    include_skimage: bool = True  # the 21 scikit-image sample pictures that ship in the wheel
    max_items: int | None = None  # cap on kept images over all sources (None: no cap)
    min_input_side: int = 8  # smaller inputs carry no usable picture (rejected as too_small)
    shard_maxcount: int = 1000

    def validate(self) -> None:
        if self.patch_limit < 1 or self.side_limit < 1:
            raise ValueError(f"patch_limit and side_limit must be positive, got {self.patch_limit}, {self.side_limit}")
        if self.min_side < 0 or self.min_side > self.side_limit * PATCH:
            raise ValueError(f"min_side must be in [0, side_limit*14], got {self.min_side}")
        if self.max_items is not None and self.max_items <= 0:
            raise ValueError(f"max_items must be positive or None, got {self.max_items}")
        self.specs()

    def specs(self) -> list[sources.SourceSpec]:
        specs = sources.parse_sources(self.sources, "image_text")
        return [s for s in specs if self.include_skimage or not (s.kind == "bundled" and s.uri == "skimage")]


def check_vision_size(size: int, name: str) -> None:
    if size <= 0 or size % VISION_TOKEN_PIXELS:
        raise ValueError(f"{name} must be a positive multiple of {VISION_TOKEN_PIXELS} "
                         f"(patch 14 x merge 2), got {size}")


def decode_image(data: bytes) -> np.ndarray:
    """Encoded bytes (PNG, JPEG, ...) as a uint8 array. Raises ValueError when undecodable."""
    if not data:
        raise ValueError("zero-length image")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as im:
                if im.width * im.height > MAX_DECODE_PIXELS:
                    raise ValueError(f"image too large to decode: {im.width}x{im.height}")
                im.load()  # the header alone parses for truncated files; force the pixel decode
                if im.mode not in ("L", "RGB", "RGBA", "1"):
                    im = im.convert("RGBA" if "A" in im.getbands() else "RGB")
                return np.asarray(im)
    except (OSError, SyntaxError, Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise ValueError(f"undecodable image: {type(e).__name__}: {e}") from e


def to_rgb(image: np.ndarray) -> np.ndarray:
    """Any supported input (uint8/bool; grey, RGB or RGBA) as uint8 HxWx3. Raises ValueError."""
    if image.dtype == np.bool_:
        image = image.astype(np.uint8) * 255
    if image.dtype != np.uint8:
        raise ValueError(f"unsupported dtype {image.dtype}")
    if image.ndim == 2:
        return np.repeat(image[:, :, None], 3, axis=2)
    if image.ndim == 3 and image.shape[2] == 3:
        return image
    if image.ndim == 3 and image.shape[2] == 4:
        # Composite on white: fully transparent pixels often hold arbitrary colour values.
        rgba = Image.fromarray(image)  # uint8 HxWx4 is read as RGBA
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return np.asarray(Image.alpha_composite(background, rgba).convert("RGB"))
    raise ValueError(f"unsupported shape {image.shape}")


def resize_square(image: np.ndarray, size: int) -> np.ndarray:
    """Centre-crop to a square, then resize (evaluation's fixed-size digits; curation uses navit_resize)."""
    h, w = image.shape[:2]
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    crop = Image.fromarray(image[top : top + side, left : left + side])
    return np.asarray(crop.resize((size, size), Image.Resampling.BICUBIC), dtype=np.uint8)


def pad_to(image: np.ndarray, padded_h: int, padded_w: int) -> np.ndarray:
    """Zero-pad an HxWx3 image right and bottom."""
    h, w = image.shape[:2]
    if (h, w) == (padded_h, padded_w):
        return image
    out = np.zeros((padded_h, padded_w, 3), dtype=np.uint8)
    out[:h, :w] = image
    return out


def navit_resize(image: np.ndarray, patch_limit: int, side_limit: int = RELEASE_SIDE_LIMIT,
                 min_side: int = 0) -> np.ndarray:
    """RGB uint8 HxWx3 -> the recipe's resized, zero-padded image (sides multiples of 28)."""
    h, w = image.shape[:2]
    pil = None
    if min_side and min(h, w) < min_side:
        scale = min_side / min(h, w)
        w, h = max(min_side, round(w * scale)), max(min_side, round(h * scale))
        pil = Image.fromarray(image).resize((w, h), Image.Resampling.BICUBIC)
    new_w, new_h, padded_w, padded_h = navit_resize_size(w, h, patch_limit, patch=PATCH, side_limit=side_limit)
    if (new_w, new_h) != (w, h):
        pil = (pil or Image.fromarray(image)).resize((new_w, new_h), Image.Resampling.BICUBIC)
    resized = image if pil is None else np.asarray(pil, dtype=np.uint8)
    return pad_to(resized, padded_h, padded_w)


def source_images(cfg: ImageCurationConfig) -> Iterator[sources.ImageRecord | Reject]:
    for spec in cfg.specs():
        if spec.kind == "bundled" and spec.uri == "digits" and cfg.max_digits == 0:
            continue
        yield from sources.limited(spec, sources.read_image_source(spec, max_digits=cfg.max_digits))


def curate_image_text(out_uri: str, cfg: ImageCurationConfig,
                      records: Iterable[sources.ImageRecord | Reject] | None = None, log: Log | None = None) -> CuratedSet:
    """Curate image-caption pairs into WebDataset shards. `records` overrides the sources.
    Every rejected sample is counted by reason and listed in `out_uri/quarantine.jsonl`."""
    cfg.validate()
    records = source_images(cfg) if records is None else records
    records = track(records, "image-text curation", log=log, unit="image")  # the sources stream: a count and rate, no total
    quarantine = Quarantine()
    stats, per_source, tokens = Counter(), Counter(), Counter()

    def samples():
        seen: set[str] = set()
        for rec in records:
            if cfg.max_items is not None and sum(per_source.values()) >= cfg.max_items:
                break
            stats["input_images"] += 1
            if isinstance(rec, Reject):
                quarantine.add_reject(rec)
                continue
            try:
                pixels = decode_image(rec.image) if isinstance(rec.image, (bytes, bytearray)) else np.asarray(rec.image)
            except ValueError as e:
                quarantine.add(rec.source, rec.name, "undecodable_image", str(e))
                continue
            try:
                rgb = to_rgb(pixels)
            except ValueError as e:
                quarantine.add(rec.source, rec.name, "bad_format", str(e))
                continue
            if min(rgb.shape[:2]) < cfg.min_input_side:
                quarantine.add(rec.source, rec.name, "too_small", f"{rgb.shape[1]}x{rgb.shape[0]}")
                continue
            caption = (rec.caption or "").strip()
            if not caption:
                quarantine.add(rec.source, rec.name, "no_caption")
                continue
            image = navit_resize(rgb, cfg.patch_limit, cfg.side_limit, cfg.min_side)
            digest = hashlib.sha256(image.tobytes() + caption.encode("utf-8")).hexdigest()
            if digest in seen:
                quarantine.add(rec.source, rec.name, "duplicate")
                continue
            seen.add(digest)
            key = f"{rec.source}-{per_source[rec.source]:07d}"
            per_source[rec.source] += 1
            tokens["vision_tokens"] += vision_token_count(image.shape[0], image.shape[1])
            yield image_sample(key, rec.source, image, caption, rec.name, target=rec.target)

    try:
        result = write_shards(samples(), out_uri, prefix="image", maxcount=cfg.shard_maxcount)
    except BaseException:
        quarantine.discard()
        raise
    quarantine_uri = quarantine.save(out_uri)
    if result.num_samples == 0:
        raise ValueError(f"image curation kept no images (rejected: {dict(quarantine.counts)}; see {quarantine_uri})")
    stats["images"] = result.num_samples
    stats["patch_limit"] = cfg.patch_limit
    stats["vision_tokens"] = tokens["vision_tokens"]
    stats["images_per_source"] = dict(sorted(per_source.items()))
    return save_curated_set(result, "image_text", dict(quarantine.counts), dict(sorted(stats.items())),
                            quarantine_uri=quarantine_uri)
