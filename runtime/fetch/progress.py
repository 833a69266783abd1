"""A pull's progress on stderr, `Fetching: DONE of TOTAL bytes` every few seconds (`infleet.api.models`): the
operator reads the init container's last log line into the ModelReady condition while the model downloads.

DONE is what the download directory holds (whatever each store's client writes there, temporary files included);
TOTAL is what the store listed, once the store's download function knows it (`expect`)."""

from __future__ import annotations

import os
import sys
import threading
from pathlib import Path

from infleet.api.models import progress_line

INTERVAL = float(os.environ.get("INFLEET_FETCH_PROGRESS_SECONDS", "5"))


def size_of(directory: Path) -> int:
    total = 0
    for path in directory.rglob("*"):
        try:
            if path.is_file():
                total += path.stat().st_size
        except OSError:  # renamed or removed under us by the store's client
            continue
    return total


class Progress(threading.Thread):
    def __init__(self, directory: Path, interval: float | None = None) -> None:
        super().__init__(daemon=True, name="fetch-progress")
        self.directory, self.interval = directory, INTERVAL if interval is None else interval
        self.total: int | None = None
        self.done = threading.Event()

    def expect(self, total: int) -> None:
        self.total = total

    def run(self) -> None:
        while not self.done.wait(self.interval):
            print(progress_line(size_of(self.directory), self.total), file=sys.stderr, flush=True)

    def stop(self) -> None:
        """No progress line after this returns: a failure's `REASON: message` stays the last line."""
        self.done.set()
        if self.is_alive():
            self.join(timeout=10)
