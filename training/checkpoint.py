"""Atomic, verifiable checkpoints on a local folder or S3.

Layout under a run directory:

    <run_dir>/step_000040/model.pt, optim.pt, rng_rank0.pt, rng_rank1.pt, ..., manifest.json
    <run_dir>/latest          -> "step_000040"

Commit protocol: every rank writes its files, then rank 0 writes `manifest.json` (file list with
sizes and sha256) and only then `latest`. Locally the step folder is staged under a temporary
name and renamed after its manifest is in; on S3 a step without a manifest is not a checkpoint.
The checkpoint digest is the sha256 of the manifest, used as the Dagster data version.
"""

from __future__ import annotations

import io
import json
import shutil
import uuid
from pathlib import Path

import torch
import torch.distributed as dist

from infra import storage
from infra.refs import CheckpointRef  # noqa: F401 (the reference this module reads)
from model.config import ModelConfig, model_preset
from model.multimodal import K25Model

MANIFEST = "manifest.json"


class CheckpointError(RuntimeError):
    pass


def step_name(step: int) -> str:
    return f"step_{step:06d}"


def _barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def _broadcast(obj):
    if not dist.is_initialized():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def _tensor_bytes(obj) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def save(run_dir: str, step: int, shared: dict[str, object], per_rank: dict[str, object], meta: dict) -> tuple[str, str]:
    """Collective: all ranks call it. `shared` objects (model, optimizer, ...) are written by rank 0,
    `per_rank` objects (RNG state) by every rank. Returns (checkpoint URI, digest) on every rank."""
    rank = dist.get_rank() if dist.is_initialized() else 0
    world = dist.get_world_size() if dist.is_initialized() else 1
    name = step_name(step)
    final_uri = storage.join(run_dir, name)
    # Local: stage under a temporary sibling, renamed after the manifest lands.
    stage_uri = final_uri if storage.is_s3(run_dir) else storage.join(run_dir, f".tmp-{name}-{_broadcast(uuid.uuid4().hex)}")

    files: dict[str, bytes] = {f"{k}_rank{rank}.pt": _tensor_bytes(v) for k, v in per_rank.items()}
    if rank == 0:
        files.update({f"{k}.pt": _tensor_bytes(v) for k, v in shared.items()})
    for fname, data in files.items():
        storage.write_bytes(storage.join(stage_uri, fname), data)
    entries = {fname: {"bytes": len(data), "sha256": storage.sha256_bytes(data)} for fname, data in files.items()}
    gathered = [None] * world
    if dist.is_initialized():
        dist.all_gather_object(gathered, entries)
    else:
        gathered = [entries]
    _barrier()

    digest = None
    if rank == 0:
        all_files = {k: v for part in gathered for k, v in part.items()}
        manifest = {"step": step, "world_size": world, "files": dict(sorted(all_files.items())), **meta}
        body = json.dumps(manifest, sort_keys=True, indent=1).encode()
        digest = storage.sha256_bytes(body)
        storage.write_bytes(storage.join(stage_uri, MANIFEST), body)
        if stage_uri != final_uri:
            final = Path(storage.local_path(final_uri))
            old = None
            if final.exists():  # a re-save of the same step: keep the old copy until the new one is in
                old = final.with_name(f".old-{final.name}-{uuid.uuid4().hex}")
                final.rename(old)
            Path(storage.local_path(stage_uri)).rename(final)
            if old is not None:
                shutil.rmtree(old)
        storage.write_text(storage.join(run_dir, "latest"), name)  # commit marker, last
    digest = _broadcast(digest)
    _barrier()
    return final_uri, digest


def latest(run_dir: str) -> str | None:
    """URI of the committed latest checkpoint of a run directory, or None when there is none."""
    marker = storage.join(run_dir, "latest")
    if not storage.exists(marker):
        return None
    return storage.join(run_dir, storage.read_text(marker).strip())


def read_manifest(ckpt_uri: str) -> tuple[dict, str]:
    uri = storage.join(ckpt_uri, MANIFEST)
    if not storage.exists(uri):
        raise CheckpointError(f"no checkpoint at {ckpt_uri}: {MANIFEST} is missing (uncommitted or wrong URI)")
    body = storage.read_bytes(uri)
    return json.loads(body), storage.sha256_bytes(body)


def load(ckpt_uri: str, rank: int = 0, names: tuple[str, ...] | None = None,
         manifest: dict | None = None) -> dict[str, object]:
    """Load and verify a checkpoint's shared objects and this rank's per-rank objects.

    `names` restricts which objects are read, shared or per-rank (e.g. only "model" when
    initialising a new stage from an upstream checkpoint); `manifest` when already read."""
    if manifest is None:
        manifest, _ = read_manifest(ckpt_uri)
    out: dict[str, object] = {}
    for fname, entry in manifest["files"].items():
        key = fname[:-3]
        if "_rank" in key:
            key, r = key.rsplit("_rank", 1)
            if int(r) != rank:
                continue
        if names is not None and key not in names:
            continue
        try:
            data = storage.read_bytes(storage.join(ckpt_uri, fname))
        except FileNotFoundError as e:
            raise CheckpointError(f"{fname} is listed in the manifest of {ckpt_uri} but missing") from e
        if storage.sha256_bytes(data) != entry["sha256"]:
            raise CheckpointError(f"checksum mismatch for {fname} in {ckpt_uri}")
        out[key] = torch.load(io.BytesIO(data), map_location="cpu", weights_only=False)
    return out



def fresh_model(preset: str, vocab, max_seq_len: int = 0):
    """New weights of a model preset for a trained tokenizer (seed torch first for identical ranks)."""
    cfg = model_preset(preset, vocab_size=vocab.size)
    cfg.max_seq_len = max(cfg.max_seq_len, max_seq_len)
    return K25Model(cfg, media_pad_id=vocab.media_pad)


def load_model(ref: CheckpointRef, device="cpu", manifest: dict | None = None, max_seq_len: int = 0):
    """The one way to get a model out of a checkpoint: its config and media id from the manifest
    (`manifest` when the caller has read it through `ref.verify()`), its weights verified by
    sha256. `max_seq_len` widens the position budget for a stage with longer sequences."""
    manifest = manifest if manifest is not None else ref.verify()
    cfg = ModelConfig.from_dict(manifest["model_config"])
    cfg.max_seq_len = max(cfg.max_seq_len, max_seq_len)
    if "media_pad_id" not in manifest:
        raise CheckpointError(f"checkpoint {ref.uri} does not record media_pad_id (written by an older version)")
    model = K25Model(cfg, media_pad_id=manifest["media_pad_id"])
    model.load_state_dict(load(ref.uri, names=("model",), manifest=manifest)["model"])
    return model.to(device)
