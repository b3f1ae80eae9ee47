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


def _cell(text: str, limit: int = 90) -> str:
    text = " ".join(text.split()).replace("|", "\\|")
    return text if len(text) <= limit else text[: limit - 1] + "…"


def preview_markdown(set_uri: str, modality: str, n: int = 8) -> str:
    samples = list(itertools.islice(iter_samples(set_uri), n))
    if modality == "text":
        rows = "\n".join(f"| {s['key']} | {s['source']} | {_cell(s['text'])} |" for s in samples)
        return f"| key | source | text |\n|---|---|---|\n{rows}\n"
    if modality == "image_text":
        grid = np.concatenate([s["image"] for s in samples], axis=1)  # one row of thumbnails
        rows = "\n".join(f"| {s['key']} | {_cell(s['caption'])} |" for s in samples)
        return _png_markdown(grid, "images") + f"\n\n| key | caption |\n|---|---|\n{rows}\n"
    strip = np.concatenate([np.concatenate(list(s["frames"]), axis=1) for s in samples[:4]], axis=0)
    rows = "\n".join(f"| {s['key']} | {s['timestamp']} | {_cell(s['caption'])} |" for s in samples)
    return _png_markdown(strip, "chunks, 4 frames each") + f"\n\n| key | start | caption |\n|---|---|---|\n{rows}\n"
