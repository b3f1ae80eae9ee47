"""Kernel latency: a warm session's cell vs a fresh sandboxed program per call.

    python -m benchmarks.bench_kernel [--quick] [--cells 200] [--sessions 20]

Measured in the same run (needs root, like the sandbox itself):
  - kernel start: one zygote per rank (sandbox built, numpy/PIL/scipy.ndimage/scikit-image
    imported once);
  - session start: fork of a fresh isolated session (own mount namespace, /tmp and uid);
  - warm cell: p50/p95 of a cell that labels a 64x64 image with scipy.ndimage in a live session;
  - baseline: the same work as a one-shot program through `run_untrusted` (a new sandbox and
    interpreter per call, importing numpy and scipy each time) -- what a tool call cost before.
Ends with `RESULT cell_p50_ms=... session_start_s=... kernel_start_s=... program_p50_ms=... speedup=...`.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

CELL = "lab, n = ndimage.label(img[..., 0] > 128)\nint(n)"
PROGRAM = ("import numpy as np\nfrom scipy import ndimage\nimg = np.zeros((64, 64, 3), np.uint8)\n"
           "img[5:9, 5:9] = 255\nprint(int(ndimage.label(img[..., 0] > 128)[1]))\n")


def percentile(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(q * (len(xs) - 1))))]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cells", type=int, default=200)
    p.add_argument("--sessions", type=int, default=20)
    p.add_argument("--programs", type=int, default=10)
    p.add_argument("--quick", action="store_true", help="fewer repetitions (well under 3 minutes on 2 cores)")
    args = p.parse_args()
    if args.quick:
        args.cells, args.sessions, args.programs = 60, 8, 4
    from agents.kernel import Kernel
    from agents.sandbox import run_untrusted

    img = np.zeros((64, 64, 3), np.uint8)
    img[5:9, 5:9] = 255
    t0 = time.perf_counter()
    kernel = Kernel()
    kernel_start = time.perf_counter() - t0
    try:
        starts = []
        for _ in range(args.sessions):
            t = time.perf_counter()
            s = kernel.open_session()
            s.put("img", img)
            assert s.run("from scipy import ndimage").ok
            starts.append(time.perf_counter() - t)
            s.close()
        with kernel.open_session() as s:
            s.put("img", img)
            s.run("from scipy import ndimage")
            cells = []
            for _ in range(args.cells):
                t = time.perf_counter()
                r = s.run(CELL)
                cells.append(time.perf_counter() - t)
                assert r.output == "1\n", r
    finally:
        kernel.close()
    programs = []
    for _ in range(args.programs):
        t = time.perf_counter()
        r = run_untrusted(PROGRAM, 60, 1024, site_packages=True)
        programs.append(time.perf_counter() - t)
    program_ok = r.passed and r.detail.strip() == "1"
    cell_p50, cell_p95 = percentile(cells, 0.5) * 1000, percentile(cells, 0.95) * 1000
    session_p50 = statistics.median(starts)
    program_p50 = percentile(programs, 0.5) * 1000
    print(f"kernel start (zygote, imports): {kernel_start:.2f} s")
    print(f"session start (fork, isolate, put image, first import): p50 {session_p50 * 1000:.1f} ms, "
          f"max {max(starts) * 1000:.1f} ms over {len(starts)}")
    print(f"warm cell (ndimage.label on 64x64): p50 {cell_p50:.2f} ms, p95 {cell_p95:.2f} ms over {len(cells)}")
    print(f"one-shot sandboxed program: p50 {program_p50:.0f} ms over {len(programs)} (ran ok: {program_ok})")
    print(f"RESULT cell_p50_ms={cell_p50:.2f} session_start_s={session_p50 + kernel_start:.2f} "
          f"kernel_start_s={kernel_start:.2f} session_fork_ms={session_p50 * 1000:.1f} cell_p95_ms={cell_p95:.2f} "
          f"program_p50_ms={program_p50:.0f} speedup={program_p50 / cell_p50:.0f}")


if __name__ == "__main__":
    main()
