"""Small previews of a curated set for the Dagster UI: a markdown table and a picture."""

from __future__ import annotations

import base64
import io
import itertools

import numpy as np
from PIL import Image

from curation.shards import iter_samples


def _png_markdown(array: np.ndarray, alt: str) -> str:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return f"![{alt}](data:image/png;base64,{base64.b64encode(buf.getvalue()).decode()})"


def _pad(array: np.ndarray, h: int, w: int) -> np.ndarray:
    out = np.zeros((h, w, 3), dtype=np.uint8)
    out[: array.shape[0], : array.shape[1]] = array
    return out


def _hstack(arrays) -> np.ndarray:
    """Side by side; items have varied sizes (NaViT resize), so each is padded to the tallest."""
    arrays = list(arrays)
    h = max(a.shape[0] for a in arrays)
    return np.concatenate([_pad(a, h, a.shape[1]) for a in arrays], axis=1)


def _vstack(arrays) -> np.ndarray:
    arrays = list(arrays)
    w = max(a.shape[1] for a in arrays)
    return np.concatenate([_pad(a, a.shape[0], w) for a in arrays], axis=0)


def _cell(text: str, limit: int = 90) -> str:
    text = " ".join(text.split()).replace("|", "\\|")
    return text if len(text) <= limit else text[: limit - 1] + "…"


def preview_markdown(set_uri: str, modality: str, n: int = 8) -> str:
    samples = list(itertools.islice(iter_samples(set_uri), n))
    if modality == "text":
        rows = "\n".join(f"| {s['key']} | {s['source']} | {_cell(s['text'])} |" for s in samples)
        return f"| key | source | text |\n|---|---|---|\n{rows}\n"
    if modality == "image_text":
        grid = _hstack(s["image"] for s in samples)  # one row of thumbnails
        rows = "\n".join(f"| {s['key']} | {_cell(s['caption'])} |" for s in samples)
        return _png_markdown(grid, "images") + f"\n\n| key | caption |\n|---|---|\n{rows}\n"
    strip = _vstack(_hstack(s["frames"]) for s in samples[:4])
    rows = "\n".join(f"| {s['key']} | {s['timestamp']} | {_cell(s['caption'])} |" for s in samples)
    return _png_markdown(strip, "chunks, 4 frames each") + f"\n\n| key | start | caption |\n|---|---|---|\n{rows}\n"
