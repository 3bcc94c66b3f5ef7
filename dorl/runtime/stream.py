"""Streaming analysis of many images: one batch in memory, each record out as its batch ends.

`analyze_scan` walks the entries of an `ImageScan` in order, batch by batch: the analyzer runs
one batch, each image's mask is written (if asked), its record is handed to `emit` at once, and
the batch is dropped. A SIGINT or SIGTERM (`stop_on_signals`) lets the current batch finish and
be emitted, then stops; a second signal stops at once. Memory therefore does not grow with the
number of images, and an interrupted run keeps every result it reached.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from dorl.data.scan import ImageScan, ScanEntry
from dorl.runtime.analyzer import Analyzer
from dorl.runtime.cell_result import CellResult
from dorl.runtime.mask_files import MaskWriter
from dorl.runtime.records import Tally, cell_record


@dataclass
class StopFlag:
    """Set by a signal handler; read between batches."""

    signal: int | None = None

    @property
    def requested(self) -> bool:
        return self.signal is not None


@contextlib.contextmanager
def stop_on_signals(signals: tuple[int, ...] = (signal.SIGINT, signal.SIGTERM)) -> Iterator[StopFlag]:
    """Turn the first SIGINT/SIGTERM into a request to stop after the current batch.

    A second signal restores the default handlers and interrupts at once. Outside the main
    thread (where handlers cannot be set) the flag is never set.
    """
    flag = StopFlag()
    if threading.current_thread() is not threading.main_thread():
        yield flag
        return
    previous: dict[int, Any] = {}

    def handler(signum: int, frame: Any) -> None:
        if flag.signal is not None:
            for number, old in previous.items():
                signal.signal(number, old)
            raise KeyboardInterrupt
        flag.signal = signum

    for number in signals:
        previous[number] = signal.signal(number, handler)
    try:
        yield flag
    finally:
        for number, old in previous.items():
            signal.signal(number, old)


def analyze_scan(
    analyzer: Analyzer,
    scan: ImageScan,
    emit: Callable[[dict[str, Any]], None],
    masks: MaskWriter | None = None,
    stop: StopFlag | None = None,
    progress: Callable[[int], None] | None = None,
) -> Tally:
    """Analyse every entry of `scan`, emitting one record per entry in scan order.

    Args:
        analyzer: an active analyzer.
        scan: the entries to analyse; entries with a problem become failed records.
        emit: called with each record as soon as its batch is done.
        masks: writes each cell's mask (None: masks are not written).
        stop: when set between batches, the run stops after the batch in progress.
        progress: called with the number of entries each batch finished.

    Returns:
        The tally (counts per status, mask errors, ignored files, the stopping signal).
    """
    tally = Tally(ignored=len(scan.ignored))
    for batch in _batches(scan.entries, analyzer.batch_size):
        files = [e for e in batch if e.problem is None]
        results = iter(analyzer.analyze_batch([e.path for e in files]) if files else [])
        for entry in batch:
            result = CellResult.failed(str(entry.path), entry.problem) if entry.problem else next(results)
            mask_file, mask_error = masks.write(result, entry) if masks is not None else (None, None)
            record = cell_record(result, mask_file, mask_error)
            tally.add(record)
            emit(record)
        if progress is not None:
            progress(len(batch))
        if stop is not None and stop.requested:
            tally.signal = stop.signal
            break
    return tally


def _batches(entries: list[ScanEntry], size: int) -> Iterator[list[ScanEntry]]:
    """Runs of entries holding `size` image files each (problem entries ride along in order)."""
    batch: list[ScanEntry] = []
    files = 0
    for entry in entries:
        batch.append(entry)
        files += entry.problem is None
        if files == size:
            yield batch
            batch, files = [], 0
    if batch:
        yield batch
