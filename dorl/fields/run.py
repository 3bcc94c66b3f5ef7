"""A field-analysis run as a library call: frames in, records streamed out, a tally for the exit code.

`run_fields` is the one implementation behind `dorl fields` and `dorl predict --fields`: it checks
the options, opens the analyzer, streams each frame's JSON records to `emit` as soon as every cell of
the frame is classified, and counts what happened. A SIGINT or SIGTERM (a set `StopFlag`) stops
reading new frames; the frames already read are still classified and emitted before it returns, so
an interrupted run keeps every result it reached.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dorl.data.scan import ScanEntry
from dorl.fields.analysis import FieldConfig, analyze_fields
from dorl.fields.records import FrameResult, frame_records
from dorl.runtime.options import AnalyzerOptions
from dorl.runtime.records import EXIT_INTERRUPTED, EXIT_NOTHING, EXIT_OK, EXIT_PARTIAL


@dataclass(frozen=True)
class FieldRequest:
    """What a field run was asked to do."""

    analyzer: AnalyzerOptions
    frames: tuple[Path, ...]


@dataclass
class FieldTally:
    """What a field run produced, for its summary line and exit code."""

    frames: int = 0
    empty: int = 0  # frames read, no white cell found
    unreadable: int = 0
    cells: int = 0
    edge: int = 0  # cells cut by the frame's edge (reported, left out of a differential)
    labelled: int = 0  # cells with a label (uncertain ones included)
    uncertain: int = 0
    no_cell: int = 0  # the analyzer withheld the label: no analysable white cell in the crop
    failed: int = 0  # cells whose crop could not be analysed
    signal: int | None = None  # the signal that stopped the run early

    def add(self, frame: FrameResult) -> None:
        self.frames += 1
        self.unreadable += frame.error is not None
        self.empty += frame.error is None and not frame.cells
        for cell in frame.cells:
            status = cell.result.status  # ok, uncertain, no_cell or failed
            self.cells += 1
            self.edge += cell.edge
            self.labelled += status in ("ok", "uncertain")
            self.uncertain += status == "uncertain"
            self.no_cell += status == "no_cell"
            self.failed += status == "failed"

    def exit_code(self) -> int:
        """The exit codes of `dorl predict`: 0 every frame read and every cell found labelled; 3 some
        frames unreadable or some cells unlabelled; 4 nothing labelled (no frame read, or no cell found
        got a label); 128 + the signal when stopped early."""
        if self.signal is not None:
            return EXIT_INTERRUPTED + self.signal
        if self.frames == self.unreadable or (self.cells and not self.labelled):
            return EXIT_NOTHING
        if self.unreadable or self.labelled < self.cells:
            return EXIT_PARTIAL
        return EXIT_OK

    def summary(self) -> str:
        line = (f"{self.frames} frames ({self.empty} without a white cell, {self.unreadable} unreadable): "
                f"{self.cells} white cells ({self.edge} cut by the edge), {self.labelled} labelled "
                f"({self.uncertain} uncertain), {self.no_cell} no cell, {self.failed} failed")
        if self.signal is not None:
            line += f"; stopped early by signal {self.signal}, the frames after these were not analysed"
        return line + "."


def run_fields(request: FieldRequest, emit: Callable[[dict[str, Any]], None], stop: Any = None,
               progress: Callable[[FrameResult], None] | None = None, warn: Callable[[str], None] | None = None,
               config: FieldConfig | None = None) -> FieldTally:
    """Find and classify the white cells of every frame, emitting each frame's records as it is done.

    Args:
        request: the artifact, frame files or folders, and the analyzer's options.
        emit: called with each JSON record (one per cell, or one per empty or unreadable frame).
        stop: a `dorl.runtime.stream.StopFlag`; once set, no new frame is read.
        progress: called with each frame's result after its records were emitted.
        warn: receives the analyzer's warnings.
        config: the finder and crop settings.

    Raises:
        ConfigError: a bad option, a missing path, or no frame file found.
        ArtifactError: the artifact or site profile is missing, malformed or cannot be run.
    """
    from dorl.fields.report import collect_frames

    request.analyzer.check_values()
    files = collect_frames(request.frames)
    checked = request.analyzer.check_artifact()
    for note in checked.notes:
        if warn is not None:
            warn(note)
    tally = FieldTally()
    with request.analyzer.open(checked.batch_size, warn) as analyzer:
        for frame in analyze_fields(_until_stopped(files, stop), analyzer, config):
            for record in frame_records(frame):
                emit(record)
            tally.add(frame)
            if progress is not None:
                progress(frame)
    if stop is not None and stop.requested:
        tally.signal = stop.signal
    return tally


def _until_stopped(frames: Iterable[ScanEntry], stop: Any) -> Iterator[ScanEntry]:
    """The frames, ending early once `stop` is set (the frames already given still finish)."""
    for frame in frames:
        if stop is not None and stop.requested:
            return
        yield frame
