"""The quarantine list: every rejected sample, with its source, key and reason.

Curation never stops on bad input. A sample that cannot be used (corrupt tar, undecodable image,
broken or zero-length video, empty or non-UTF-8 text, missing caption, filtered, duplicate) is
skipped, counted by reason and written as one JSON line to `<out>/quarantine.jsonl`:

    {"source": "webdata", "key": "shard-000.tar", "reason": "corrupt_tar", "detail": "..."}

Lines go to a local temporary file as they come (bounded memory on a long run) and the file is
uploaded once at the end, so the list works the same for a local folder and an s3:// prefix.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections import Counter
from dataclasses import dataclass

from infra import storage

QUARANTINE_NAME = "quarantine.jsonl"
DETAIL_LIMIT = 300  # characters of the error message kept per line


@dataclass(frozen=True)
class Reject:
    """A sample a source reader could not turn into a record (yielded in place of the record)."""

    source: str
    key: str
    reason: str
    detail: str = ""


class Quarantine:
    def __init__(self) -> None:
        self.counts: Counter = Counter()
        fd, self._path = tempfile.mkstemp(prefix="quarantine-", suffix=".jsonl")
        self._file = os.fdopen(fd, "w", encoding="utf-8")

    def add(self, source: str, key: str, reason: str, detail: str = "") -> None:
        self.counts[reason] += 1
        line = {"source": source, "key": str(key), "reason": reason, "detail": str(detail)[:DETAIL_LIMIT]}
        self._file.write(json.dumps(line, sort_keys=True, ensure_ascii=False) + "\n")

    def add_reject(self, reject: Reject) -> None:
        self.add(reject.source, reject.key, reject.reason, reject.detail)

    def save(self, out_uri: str) -> str:
        """Upload the list to `out_uri/quarantine.jsonl` (written even when empty) and return its URI."""
        self._file.close()
        uri = storage.join(out_uri, QUARANTINE_NAME)
        try:
            storage.upload_file(self._path, uri)
        finally:
            os.unlink(self._path)
        return uri

    def discard(self) -> None:
        if not self._file.closed:
            self._file.close()
        if os.path.exists(self._path):
            os.unlink(self._path)


def read_quarantine(uri: str) -> list[dict]:
    return [json.loads(line) for line in storage.read_text(uri).splitlines() if line.strip()]
