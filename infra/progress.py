"""Progress of long work, for both places people watch it: a tqdm bar in the terminal and, when a
`log` callback is given (an asset passes `context.log.info`), a line in the Dagster event log at
most every `every_s` seconds, with count, rate and ETA (when the total is known).

tqdm draws the bar (only on a terminal: it counts nothing when disabled, so the count and rate
for the log are ours); the rate limit on the log is ours too, because an event log line per item
would flood the Dagster database.
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
    # No bar when stderr is not a terminal (CI logs stay readable); the count is ours either way.
    bar = tqdm(total=total, desc=desc, unit=unit, file=sys.stderr, mininterval=1.0, dynamic_ncols=True, disable=None)
    start = last = time.monotonic()
    n = 0
    if log:
        log(f"{desc}: started" + (f" ({total} {unit})" if total else ""))
    try:
        for item in items:
            yield item
            n += 1
            bar.update()
            now = time.monotonic()
            if log and now - last >= every_s:
                last = now
                log(f"{desc}: {status(n, total, now - start, unit)}")
    finally:
        bar.close()
        if log:
            log(f"{desc}: done, {status(n, total, time.monotonic() - start, unit)}")


def status(n: int, total: int | None, elapsed: float, unit: str) -> str:
    """`120/400 doc (30%), 5.2 doc/s, ETA 00:54, 00:23 elapsed` (no share or ETA without a total)."""
    rate = n / elapsed if elapsed > 0 else 0.0
    text = f"{n}" + (f"/{total}" if total else "") + f" {unit}" + (f" ({100 * n / total:.0f}%)" if total else "")
    text += f", {rate:.3g} {unit}/s"
    if total and rate > 0:
        text += f", ETA {tqdm.format_interval((total - n) / rate)}"
    return text + f", {tqdm.format_interval(elapsed)} elapsed"
