"""Image-text curation: validate, convert to RGB, centre-crop and resize, dedup, write shards."""

from __future__ import annotations

import hashlib
from collections import Counter
from dataclasses import dataclass
from typing import Iterable, Iterator

import numpy as np
from PIL import Image

from curation import sources
from curation.shards import CuratedSet, image_sample, save_curated_set, write_shards

# MoonViT cuts 14x14 patches and merges 2x2 of them into one token, so a side must be a
# multiple of 28 for the image to map onto whole vision tokens.
VISION_TOKEN_PIXELS = 28


@dataclass
class ImageCurationConfig:
    image_size: int = 56  # output side in pixels (square)
    max_digits: int | None = 600  # scikit-learn digits to take (None: all 1,797)
    include_skimage: bool = True  # the 21 scikit-image sample pictures that ship in the wheel
    max_items: int | None = None  # cap on kept images over all sources (None: no cap)
    min_side: int = 8  # smaller inputs carry no usable picture
    shard_maxcount: int = 1000

    def validate(self) -> None:
        check_vision_size(self.image_size, "image_size")
        if self.max_items is not None and self.max_items <= 0:
            raise ValueError(f"max_items must be positive or None, got {self.max_items}")


def check_vision_size(size: int, name: str) -> None:
    if size <= 0 or size % VISION_TOKEN_PIXELS:
        raise ValueError(f"{name} must be a positive multiple of {VISION_TOKEN_PIXELS} "
                         f"(patch 14 x merge 2), got {size}")


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
    """Centre-crop to a square (keeps the aspect ratio: no stretched faces), then resize."""
    h, w = image.shape[:2]
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    crop = Image.fromarray(image[top : top + side, left : left + side])
    return np.asarray(crop.resize((size, size), Image.Resampling.BICUBIC), dtype=np.uint8)


def source_images(cfg: ImageCurationConfig) -> Iterator[sources.ImageRecord]:
    if cfg.include_skimage:
        yield from sources.skimage_images()
    if cfg.max_digits != 0:
        yield from sources.sklearn_digits(cfg.max_digits)


def curate_image_text(out_uri: str, cfg: ImageCurationConfig,
                      records: Iterable[sources.ImageRecord] | None = None) -> CuratedSet:
    """Curate image-caption pairs into WebDataset shards. `records` overrides the sources."""
    cfg.validate()
    records = source_images(cfg) if records is None else records
    rejected, stats, per_source = Counter(), Counter(), Counter()

    def samples():
        seen: set[str] = set()
        for rec in records:
            if cfg.max_items is not None and sum(per_source.values()) >= cfg.max_items:
                break
            stats["input_images"] += 1
            try:
                rgb = to_rgb(np.asarray(rec.image))
            except ValueError:
                rejected["bad_format"] += 1
                continue
            if min(rgb.shape[:2]) < cfg.min_side:
                rejected["too_small"] += 1
                continue
            if not rec.caption.strip():
                rejected["no_caption"] += 1
                continue
            image = resize_square(rgb, cfg.image_size)
            digest = hashlib.sha256(image.tobytes() + rec.caption.encode("utf-8")).hexdigest()
            if digest in seen:
                rejected["duplicate"] += 1
                continue
            seen.add(digest)
            key = f"{rec.source}-{per_source[rec.source]:07d}"
            per_source[rec.source] += 1
            yield image_sample(key, rec.source, image, rec.caption.strip(), rec.name)

    result = write_shards(samples(), out_uri, prefix="image", maxcount=cfg.shard_maxcount)
    if result.num_samples == 0:
        raise ValueError(f"image curation kept no images (rejected: {dict(rejected)})")
    stats["images"] = result.num_samples
    stats["image_size"] = cfg.image_size
    stats["images_per_source"] = dict(sorted(per_source.items()))
    return save_curated_set(result, "image_text", dict(rejected), dict(sorted(stats.items())))
