"""Streaming pre-training loader: WebDataset shards -> token-mixed packed batches, with exact resume.

Layout of the data flow on one data-parallel rank:

    source shards (local or s3://, streamed through boto3, never a whole source in memory)
      -> SourceStream per (source, dp_rank, logical worker): its share of the shards, shard order
         shuffled per (seed, source, dp_rank, worker, epoch), samples shuffled within blocks of
         SHUFFLE_BLOCK consecutive samples of a shard
      -> Packer (one per logical worker): packs rows of seq_len + 1 tokens. A deficit controller
         picks the next item: a vision item while the worker's running vision-token count is below
         `ratio * tokens`, else a text piece just long enough to bring the running share back to
         the target. Within the vision (text) group, the source furthest below its token share goes
         next. Text documents continue across rows; every packed document keeps its own id, so the
         attention mask is causal within a document and never crosses a boundary.
      -> torch DataLoader (num_workers processes, batch_size=None): worker w yields whole batches
         w, w + W, w + 2W, ...; the DataLoader returns them in that fixed round-robin order, so
         the batch of step s is a pure function of (seed, dp_rank, num_workers, data, config, s).
      -> Batch, with `modality` marking each position as text, vision sample (media tokens and the
         caption of an image-text or video sample) or padding, for per-modality loss metrics.

Sharding is by data-parallel rank (never the global rank): slot = dp_rank * W + worker. With at
least dp_size * W shards, rank r takes shards[r::dp_size] and worker w of them [w::W]; with fewer
shards (tiny runs), every slot reads all shards and keeps every m-th sample (m = min(slots, samples
per shard)), so no slot ever starves.

Exact resume: the state is, per logical worker, the position of every source stream (epoch, shard
position, start of the shuffle block, position within it), the token offset into the current text
document and the controller counters, plus the number of batches delivered. Each batch carries its
worker's state after it, so `state_dict()` is exact whatever the workers have prefetched. On
resume, physical worker p serves logical worker (p + delivered) % W, and each stream reopens its
shard and skips (without decoding) to the start of its block.

Text-only warm-up (the paper's early/mid/late fusion ablation): for the first
`round(text_only_warmup_fraction * steps)` batches the target vision ratio is 0, then it is
`vision_ratio`; the controller counters restart at the switch.
"""

from __future__ import annotations

import math
import random
import signal
from collections import deque
from dataclasses import asdict, dataclass

import numpy as np
import torch

from curation.shards import CuratedSet, decode_sample, tar_groups
from infra import storage
from model.tokens import Vocab
from model.vision import vision_token_count
from training.data import MODALITY_PAD, MODALITY_TEXT, MODALITY_VISION, Batch

VISION_MODALITIES = ("image_text", "video")
MIN_TEXT_PIECE = 8
SHUFFLE_BLOCK = 64
STATE_VERSION = 1


class LoaderStateError(ValueError):
    """A loader state that does not belong to this loader's data, config or layout."""


# ----------------------------------------------------------------------------------------------
# Sources

@dataclass(frozen=True)
class MixtureSource:
    name: str
    modality: str
    uri: str
    shards: tuple[str, ...]
    num_samples: int
    token_share: float


def mixture_sources(mixture: dict, sources: tuple[str, ...]) -> list[MixtureSource]:
    specs = []
    for name, src in sorted(mixture["sources"].items()):
        if src["modality"] not in sources:
            continue
        curated = CuratedSet.load(src["uri"])  # the shard list comes from curated.json, never a listing
        specs.append(MixtureSource(name, src["modality"], src["uri"], tuple(curated.shards), int(curated.num_samples),
                                float(src.get("token_share", 0.0))))
    return specs


class SourceStream:
    """The endless sample stream of one source for one (dp_rank, logical worker) slot."""

    def __init__(self, spec: MixtureSource, seed: int, dp_rank: int, dp_size: int, worker: int, num_workers: int,
                 state: dict | None = None):
        self.spec, self.seed, self.dp_rank, self.worker = spec, seed, dp_rank, worker
        n_slots, slot = dp_size * num_workers, dp_rank * num_workers + worker
        n_shards = len(spec.shards)
        if n_shards >= n_slots:
            self.shards = list(spec.shards[dp_rank::dp_size][worker::num_workers])
            self.keep_mod, self.keep_res = 1, 0
        else:  # fewer shards than slots: split every shard by sample index instead
            self.shards = list(spec.shards)
            self.keep_mod = max(1, min(n_slots, spec.num_samples // max(1, n_shards)))
            self.keep_res = slot % self.keep_mod
        if not self.shards or spec.num_samples == 0:
            raise ValueError(f"source {spec.name!r} has no data for dp_rank {dp_rank}, worker {worker}")
        st = state or {}
        self.epoch, self.shard_pos = st.get("epoch", 0), st.get("shard_pos", 0)
        self.block_start, self.pos = st.get("block_start", 0), st.get("pos", 0)
        self._block: list[tuple[str, dict]] | None = None
        self._decoded = None
        self._reader = None  # (epoch, shard_pos, next raw index, iterator) of the open shard

    def state(self) -> dict:
        return {"epoch": self.epoch, "shard_pos": self.shard_pos, "block_start": self.block_start, "pos": self.pos}

    def _order(self, epoch: int) -> list[str]:
        order = list(self.shards)
        random.Random(f"shards:{self.seed}:{self.spec.name}:{self.dp_rank}:{self.worker}:{epoch}").shuffle(order)
        return order

    def _load_block(self) -> None:
        empty_shards = 0
        while True:
            order = self._order(self.epoch)
            if self.shard_pos >= len(order):
                self.epoch, self.shard_pos, self.block_start = self.epoch + 1, 0, 0
                continue
            r = self._reader
            if r is None or r[:3] != (self.epoch, self.shard_pos, self.block_start):
                it = tar_groups(storage.join(self.spec.uri, order[self.shard_pos]))
                raw = 0
                for _ in range(self.block_start):  # resume: skip undecoded samples up to the block
                    next(it)
                    raw += 1
                r = (self.epoch, self.shard_pos, raw, it)
            epoch, shard_pos, raw, it = r
            block = []
            for key, fields in it:
                raw += 1
                if (raw - 1) % self.keep_mod == self.keep_res:
                    block.append((key, fields))
                    if len(block) == SHUFFLE_BLOCK:
                        break
            if block:
                random.Random(f"block:{self.seed}:{self.spec.name}:{self.dp_rank}:{self.worker}:{self.epoch}:"
                              f"{self.shard_pos}:{self.block_start}").shuffle(block)
                self._block, self._block_end = block, raw
                self._reader = (epoch, shard_pos, raw, it)
                return
            self._reader = None  # shard exhausted
            empty_shards += 1
            if empty_shards > 2 * len(self.shards) + 1:
                raise ValueError(f"source {self.spec.name!r} yields no samples for dp_rank {self.dp_rank}, "
                                 f"worker {self.worker}")
            self.shard_pos, self.block_start = self.shard_pos + 1, 0

    def peek(self) -> dict:
        if self._decoded is None:
            if self._block is None:
                self._load_block()
            key, fields = self._block[self.pos]
            self._decoded = decode_sample(self.spec.modality, key, fields)
        return self._decoded

    def advance(self) -> None:
        if self._block is None:
            self._load_block()
        self._decoded = None
        self.pos += 1
        if self.pos >= len(self._block):
            self.block_start, self.pos, self._block = self._block_end, 0, None
            if self._reader is not None:
                self._reader = (self._reader[0], self._reader[1], self.block_start, self._reader[3])


# ----------------------------------------------------------------------------------------------
# Packing

@dataclass(frozen=True)
class PackConfig:
    seq_len: int
    batch_size: int
    vision_ratio: float
    warmup_batches: int  # text-only batches before the vision ratio applies
    seed: int
    dp_rank: int
    dp_size: int
    num_workers: int  # logical workers (>= 1)


def target_ratio(cfg: PackConfig, index: int) -> float:
    return 0.0 if index < cfg.warmup_batches else cfg.vision_ratio


class Packer:
    """Packs the batches of one logical worker: global batch indices worker, worker + W, ..."""

    def __init__(self, cfg: PackConfig, vocab: Vocab, specs: list[MixtureSource], worker: int, state: dict | None):
        self.cfg, self.vocab, self.worker = cfg, vocab, worker
        st = state or {}
        self.index = st.get("index", worker)
        streams = st.get("streams", {})
        self.streams = {s.name: SourceStream(s, cfg.seed, cfg.dp_rank, cfg.dp_size, worker, cfg.num_workers,
                                             streams.get(s.name)) for s in specs}
        self.text = [s for s in specs if s.modality == "text"]
        self.vision = [s for s in specs if s.modality in VISION_MODALITIES]
        self.tok_offset: dict[str, int] = dict(st.get("tok_offset", {}))
        self.placed: dict[str, int] = dict(st.get("placed", {s.name: 0 for s in specs}))
        self.phase_ratio = st.get("phase_ratio", target_ratio(cfg, self.index))
        self.n_vision, self.n_total = st.get("n_vision", 0), st.get("n_total", 0)
        self._doc_cache: dict[str, list[int]] = {}

    def state(self) -> dict:
        return {"index": self.index, "streams": {n: s.state() for n, s in self.streams.items()},
                "tok_offset": dict(self.tok_offset), "placed": dict(self.placed), "phase_ratio": self.phase_ratio,
                "n_vision": self.n_vision, "n_total": self.n_total}

    # -- picking sources: the one furthest below its token share within its group
    def _pick(self, group: list[MixtureSource]) -> MixtureSource:
        if len(group) == 1:
            return group[0]
        total = sum(s.token_share for s in group)
        share = {s.name: (s.token_share / total if total > 0 else 1 / len(group)) for s in group}
        placed = sum(self.placed[s.name] for s in group) + 1
        return max(group, key=lambda s: (share[s.name] * placed - self.placed[s.name], s.name))

    def _vision_seq(self, sample: dict) -> list[int]:
        v = self.vocab
        px = sample["pixels"]
        n = vision_token_count(px.shape[-3], px.shape[-2])
        video = sample["timestamp"] is not None
        prefix = v.encode(sample["timestamp"]) if video else []
        kind = v.encode("video" if video else "image")
        seq = prefix + [v.media_begin] + kind + [v.media_content] + [v.media_pad] * n + [v.media_end]
        return seq + v.encode(sample["caption"]) + [v.eos]

    def _doc(self, name: str) -> list[int]:
        if name not in self._doc_cache:
            self._doc_cache[name] = self.vocab.encode(self.streams[name].peek()["text"]) + [self.vocab.eos]
        return self._doc_cache[name]

    def _text_piece(self, take: int) -> tuple[str, list[int]]:
        spec = self._pick(self.text)
        doc, off = self._doc(spec.name), self.tok_offset.get(spec.name, 0)
        piece = doc[off:off + take]
        off += len(piece)
        if off >= len(doc):
            self.streams[spec.name].advance()
            self._doc_cache.pop(spec.name, None)
            off = 0
        self.tok_offset[spec.name] = off
        self.placed[spec.name] += len(piece)
        return spec.name, piece

    def next_batch(self) -> dict:
        ratio = target_ratio(self.cfg, self.index)
        if ratio != self.phase_ratio:  # fusion schedule switch: the controller starts afresh
            self.phase_ratio, self.n_vision, self.n_total = ratio, 0, 0
        rows = [self._row(ratio) for _ in range(self.cfg.batch_size)]
        out = {
            "index": self.index,
            "tokens": np.array([r[0] for r in rows], dtype=np.int64),
            "targets": np.array([r[1] for r in rows], dtype=np.int64),
            "doc": np.array([r[2] for r in rows], dtype=np.int32),
            "items": [px for r in rows for px in r[3]],
            "modality": np.array([r[4] for r in rows], dtype=np.int8),
        }
        self.index += self.cfg.num_workers
        out["state"] = self.state()
        return out

    def _row(self, ratio: float):
        v, T = self.vocab, self.cfg.seq_len
        use_vision = bool(self.vision) and (ratio > 0 or not self.text)
        toks: list[int] = []
        doc: list[int] = []
        mod: list[int] = []  # MODALITY_* per token (bookkeeping only: never changes what is packed)
        pixels: list[np.ndarray] = []
        doc_ids: dict[str, int] = {}  # a text document continued later in the same row keeps its id
        n_docs = 0
        while len(toks) < T + 1:
            room = T + 1 - len(toks)
            want_vision = use_vision and (not self.text or self.n_vision < ratio * (self.n_total + 1))
            if want_vision:
                spec = self._pick(self.vision)
                stream = self.streams[spec.name]
                sample = stream.peek()
                seq = self._vision_seq(sample)
                if len(seq) <= room:  # never cut an item: a too-long one waits for the next row
                    stream.advance()
                    doc += [n_docs] * len(seq)
                    mod += [MODALITY_VISION] * len(seq)
                    n_docs += 1
                    toks += seq
                    pixels.append(sample["pixels"])
                    nv = seq.count(v.media_pad)
                    self.placed[spec.name] += nv
                    self.n_vision += nv
                    self.n_total += len(seq)
                    continue
                if not self.text:  # vision only: pad the rest of the row
                    toks += [v.pad] * room
                    doc += [-1] * room
                    mod += [MODALITY_PAD] * room
                    break
            take = room
            if use_vision and ratio > 0:
                take = min(room, max(MIN_TEXT_PIECE, math.ceil(self.n_vision / ratio) - self.n_total))
            name, piece = self._text_piece(take)
            if name not in doc_ids:
                doc_ids[name], n_docs = n_docs, n_docs + 1
            doc += [doc_ids[name]] * len(piece)
            mod += [MODALITY_TEXT] * len(piece)
            if self.tok_offset[name] == 0:  # the document ended: the next one is a new document
                del doc_ids[name]
            toks += piece
            self.n_total += len(piece)
        # The row's last token is only a target, never an input: keep it out of the counts.
        if toks[T] != v.pad:
            self.n_total -= 1
        inputs, nxt = toks[:T], toks[1:]
        targets = [t if (t != v.media_pad and t != v.pad and doc[i] == doc[i + 1]) else -100
                   for i, t in enumerate(nxt)]
        return inputs, targets, doc[:T], pixels, mod[:T]


# ----------------------------------------------------------------------------------------------
# The torch dataset and the loader

class PackedBatches(torch.utils.data.IterableDataset):
    """Endless packed batches of one dp rank; each DataLoader worker runs one logical worker."""

    def __init__(self, cfg: PackConfig, vocab: Vocab, specs: list[MixtureSource], delivered: int,
                 worker_states: list[dict | None]):
        self.cfg, self.vocab, self.specs = cfg, vocab, specs
        self.delivered, self.worker_states = delivered, worker_states

    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        physical = info.id if info is not None else 0
        worker = (physical + self.delivered) % self.cfg.num_workers  # the next batch comes from physical 0
        packer = Packer(self.cfg, self.vocab, self.specs, worker, self.worker_states[worker])
        while True:
            yield packer.next_batch()


def _ignore_stop_signals(worker_id: int) -> None:
    """Preemption sends SIGTERM to the whole process group; the training process must be the one
    to act on it (save a checkpoint, then exit), so its data workers keep serving until then.
    They still exit with their parent (the DataLoader's watchdog)."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole group too


def _identity(x):
    return x  # numpy arrays travel pickled: cheaper than one shared-memory tensor per small image


def doc_mask(doc: torch.Tensor) -> torch.Tensor:
    T = doc.shape[-1]
    causal = torch.ones(T, T, dtype=torch.bool).tril()
    return (causal[None] & (doc[:, :, None] == doc[:, None, :]))[:, None]


class StreamingLoader:
    """`batch(step)` for consecutive steps from `state["delivered"]` on; `state_dict()` after any step."""

    def __init__(self, mixture: dict, vocab: Vocab, sources: tuple[str, ...], vision_ratio: float, seq_len: int,
                 batch_size: int, seed: int, dp_rank: int, dp_size: int, num_workers: int = 1,
                 text_only_warmup_fraction: float = 0.0, steps: int = 0, state: dict | None = None,
                 prefetch_factor: int = 2):
        if not 0 <= dp_rank < dp_size:
            raise ValueError(f"dp_rank {dp_rank} not in [0, {dp_size})")
        if num_workers < 0:
            raise ValueError(f"num_workers must be >= 0 (got {num_workers})")
        if not 0 <= text_only_warmup_fraction < 1:
            raise ValueError(f"text_only_warmup_fraction must be in [0, 1) (got {text_only_warmup_fraction})")
        self.vocab = vocab
        self.specs = mixture_sources(mixture, sources)
        has_text = any(s.modality == "text" for s in self.specs)
        has_vision = any(s.modality in VISION_MODALITIES for s in self.specs)
        if "text" in sources and not has_text:
            raise ValueError("the mixture has no text source for these sources")
        if any(s in sources for s in VISION_MODALITIES) and not has_vision:
            raise ValueError("the mixture has no vision source for these sources")
        if text_only_warmup_fraction > 0 and not has_text:
            raise ValueError("a text-only warm-up needs a text source")
        if has_text and not vision_ratio > 0:  # text only: do not open the vision sources at all
            self.specs = [s for s in self.specs if s.modality == "text"]
        self.num_workers = num_workers
        self.cfg = PackConfig(seq_len, batch_size, vision_ratio if has_text else 0.0,
                              round(text_only_warmup_fraction * steps), seed, dp_rank, dp_size, max(1, num_workers))
        self.fingerprint = {"version": STATE_VERSION, "mixture_digest": mixture.get("digest"),
                            "sources": [s.name for s in self.specs], **asdict(self.cfg)}
        W = self.cfg.num_workers
        if state:
            got = state.get("fingerprint")
            if got != self.fingerprint:
                diff = {k: (got.get(k) if isinstance(got, dict) else None, v) for k, v in self.fingerprint.items()
                        if not isinstance(got, dict) or got.get(k) != v}
                raise LoaderStateError(f"loader state does not match this loader (saved, now): {diff}")
            self.delivered, self.worker_states = state["delivered"], list(state["workers"])
        else:
            self.delivered, self.worker_states = 0, [None] * W
        self._it = None
        self._prefetch = prefetch_factor
        self.last_ratio_window: deque[tuple[int, int]] = deque(maxlen=100)

    @classmethod
    def from_spec(cls, mixture: dict, vocab: Vocab, data, seed: int, steps: int, dp_rank: int, dp_size: int,
                  state: dict | None = None) -> "StreamingLoader":
        """The loader a stage's `data` block (training/spec.py DataConfig) asks for."""
        return cls(mixture, vocab, data.sources, data.vision_ratio, data.seq_len, data.batch_size, seed, dp_rank,
                   dp_size, num_workers=data.num_workers, text_only_warmup_fraction=data.text_only_warmup_fraction,
                   steps=steps, state=state)

    def _iterator(self):
        ds = PackedBatches(self.cfg, self.vocab, self.specs, self.delivered, list(self.worker_states))
        kw = dict(prefetch_factor=self._prefetch, persistent_workers=False,
                  worker_init_fn=_ignore_stop_signals) if self.num_workers > 0 else {}
        dl = torch.utils.data.DataLoader(ds, batch_size=None, num_workers=self.num_workers, collate_fn=_identity, **kw)
        return iter(dl)

    def state_dict(self) -> dict:
        return {"fingerprint": self.fingerprint, "delivered": self.delivered, "workers": list(self.worker_states)}

    def batch(self, step: int) -> Batch:
        if step != self.delivered:
            raise ValueError(f"streaming loader is sequential: asked for step {step}, next is {self.delivered}")
        if self._it is None:
            self._it = self._iterator()
        raw = next(self._it)
        if raw["index"] != self.delivered:  # the round-robin order is the determinism contract
            raise RuntimeError(f"loader delivered batch {raw['index']} for step {self.delivered}")
        self.worker_states[self.delivered % self.cfg.num_workers] = raw["state"]
        self.delivered += 1
        tokens = torch.from_numpy(raw["tokens"])
        doc = torch.from_numpy(raw["doc"])
        items = [torch.from_numpy(np.array(px)) for px in raw["items"]]  # own, writable copies
        n_vision = int((tokens == self.vocab.media_pad).sum())
        n_text = int((tokens != self.vocab.pad).sum()) - n_vision
        self.last_ratio_window.append((n_vision, n_text))
        return Batch(tokens, torch.from_numpy(raw["targets"]), doc_mask(doc), items, n_text, n_vision,
                     torch.from_numpy(raw["modality"]))

    def window_ratio(self, n: int) -> float:
        """The realised vision share of tokens over the last `n` (<= 100) batches."""
        last = list(self.last_ratio_window)[-n:]
        vis = sum(v for v, _ in last)
        tot = sum(v + t for v, t in last)
        return vis / tot if tot else 0.0

    def close(self) -> None:
        it, self._it = self._it, None
        if it is not None and hasattr(it, "_shutdown_workers"):
            it._shutdown_workers()
