"""Rejection-sampling data (RECIPE.md §6.3): the reward-1 vision trajectories of RL, kept for a
later fine-tuning stage (the self-improving data loop of K2.5's outcome-based visual RL).

During RL every iteration's reward-1 image-task samples are written to
`<run dir>/rft/iter<IIIIII>-rank<R>.parquet` as they are produced (a resumed run rewrites an
iteration's shard with the same rows, so nothing is lost or doubled). The `rft_data` asset
gathers the shards of the iterations a checkpoint was trained on into one Parquet file with a
manifest (digest, source run and checkpoint) — its lineage.

A row holds the trajectory token for token (`ids`, `loss_mask`: what the engine sampled, never a
re-tokenization), the conversation as text (`prompt`, `response`), the images as PNG bytes in
placeholder order, and where it came from (task, domain, iteration, rank, member, policy version).
`read_rft` returns conversations in agents/chat.py's format (media as pixel tensors), so the
SFT loader's `encode_conversation` reads them like any other chat data.
"""

from __future__ import annotations

import io
import json
import re

import numpy as np
import pandas as pd
import torch
from PIL import Image

from infra import storage

SHARDS = "rft"
DATA_FILE, MANIFEST = "rft.parquet", "rft_data.json"
_SHARD = re.compile(r"iter(\d{6})-rank(\d+)\.parquet$")
COLUMNS = ["task_id", "domain", "iteration", "rank", "member", "policy_version", "reward", "prompt", "response",
           "images", "ids", "loss_mask"]


def _png(pixels: torch.Tensor) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.asarray(pixels, dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def rft_rows(groups, iteration: int, rank: int) -> list[dict]:
    """The reward-1 samples of image tasks in one rollout batch (groups of training.rollout.Sample)."""
    rows = []
    for group in groups:
        for member, s in enumerate(group):
            # tool tasks are left out: their trajectory is a multi-turn conversation with a system
            # prompt and tool results that the prompt/response columns cannot hold
            if s.task.modality != "image" or s.task.reward == "tool" or s.score.value < 1.0:
                continue
            t = s.trajectory.tensors()
            model = [seg for seg in s.trajectory.segments if seg.loss_mask]
            rows.append({"task_id": s.task.id, "domain": s.task.domain, "iteration": iteration, "rank": rank,
                         "member": member, "policy_version": model[0].policy_version if model else -1,
                         "reward": float(s.score.value), "prompt": s.task.text, "response": s.text,
                         "images": [_png(m) for m in s.trajectory.media],
                         "ids": t["ids"].tolist(), "loss_mask": t["loss_mask"].int().tolist()})
    return rows


def write_shard(run_dir: str, iteration: int, rank: int, rows: list[dict]) -> str | None:
    if not rows:
        return None
    uri = storage.join(run_dir, SHARDS, f"iter{iteration:06d}-rank{rank}.parquet")
    buf = io.BytesIO()
    pd.DataFrame(rows, columns=COLUMNS).to_parquet(buf, index=False)
    storage.write_bytes(uri, buf.getvalue())
    return uri


def gather(run_dir: str, iterations: int, out: str, source: dict) -> dict:
    """Concatenate the shards of iterations [0, iterations) into `out`/rft.parquet; returns the
    manifest (rows, per-domain counts, digest, `source`: the RL run and checkpoint)."""
    folder = storage.join(run_dir, SHARDS)
    shards = sorted(u for u in storage.list_files(folder)
                    if (m := _SHARD.search(u)) and int(m.group(1)) < iterations)
    frames = [pd.read_parquet(io.BytesIO(storage.read_bytes(u))) for u in shards]
    frame = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=COLUMNS)
    frame = frame.sort_values(["iteration", "rank", "task_id", "member"]).reset_index(drop=True)
    buf = io.BytesIO()
    frame.to_parquet(buf, index=False)
    body = buf.getvalue()
    storage.write_bytes(storage.join(out, DATA_FILE), body)
    manifest = {"rows": len(frame), "shards": len(shards), "iterations": iterations,
                "domains": {str(k): int(v) for k, v in frame["domain"].value_counts().items()} if len(frame) else {},
                "digest": storage.sha256_bytes(body), "data": DATA_FILE, "source": source}
    storage.write_text(storage.join(out, MANIFEST), json.dumps(manifest, indent=2, sort_keys=True))
    return manifest


def read_rft(uri: str) -> tuple[dict, list[dict]]:
    """(manifest, rows) with each row's `messages` as a conversation whose user turn carries the
    images as pixel tensors; fails if the data differ from the manifest's digest."""
    manifest = json.loads(storage.read_text(storage.join(uri, MANIFEST)))
    body = storage.read_bytes(storage.join(uri, manifest["data"]))
    if storage.sha256_bytes(body) != manifest["digest"]:
        raise ValueError(f"{uri}: rejection-sampling data do not match the manifest digest")
    rows = pd.read_parquet(io.BytesIO(body)).to_dict("records")
    for r in rows:
        media = [torch.from_numpy(np.array(Image.open(io.BytesIO(b)).convert("RGB"))) for b in r["images"]]
        r["messages"] = [{"role": "user", "content": r["prompt"], "media": media},
                         {"role": "assistant", "content": r["response"]}]
    return manifest, rows
