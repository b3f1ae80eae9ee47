"""Progress of long work, for both places people watch it: a tqdm bar in the terminal and, when a
`log` callback is given (an asset passes `context.log.info`), a line in the Dagster event log at
most every `every_s` seconds, with count, rate and ETA (when the total is known).

tqdm does the counting, rates and formatting; the rate limit on the log is ours because an event
log line per item would flood the Dagster database.
"""

from __future__ import annotations

import sys
import time
from typing import Callable, Iterable, Iterator, TypeVar

from tqdm import tqdm

T = TypeVar("T")
Log = Callable[[str], None]


def track(items: Iterable[T], desc: str, total: int | None = None, log: Log | None = None, every_s: float = 15.0,
          unit: str = "it") -> Iterator[T]:
    """Yield `items`, showing progress; the last line says how many and how long."""
    bar = tqdm(items, desc=desc, total=total, unit=unit, file=sys.stderr, mininterval=1.0, dynamic_ncols=True,
               disable=None)  # None: no bar when stderr is not a terminal (CI logs stay readable)
    last = time.monotonic()
    if log:
        log(f"{desc}: started" + (f" ({total} {unit})" if total else ""))
    try:
        for item in bar:
            yield item
            now = time.monotonic()
            if log and now - last >= every_s:
                last = now
                log(f"{desc}: {status(bar)}")
    finally:
        bar.close()
        if log:
            log(f"{desc}: done, {status(bar)}")


def status(bar: tqdm) -> str:
    """`120/400 (30%), 5.2 it/s, ETA 0:00:54` (no share or ETA without a total)."""
    d = bar.format_dict
    n, total, elapsed = d["n"], d["total"], d["elapsed"]
    rate = n / elapsed if elapsed > 0 else 0.0
    text = f"{n}" + (f"/{total} ({100 * n / total:.0f}%)" if total else "") + f" {d['unit']}, {rate:.3g} {d['unit']}/s"
    if total and rate > 0:
        text += f", ETA {tqdm.format_interval((total - n) / rate)}"
    return text + f", {tqdm.format_interval(elapsed)} elapsed"
