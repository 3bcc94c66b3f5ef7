"""Progress reporting: library code never prints; it tells a reporter, which the caller chooses.

A reporter follows `Reporter`: `start` a task with a number of steps, `advance` it (with the
latest metrics), `finish` it, and `note` one-off messages. The CLI passes `RichReporter`
(progress bars on stderr); tests pass `RecordingReporter`; `NullReporter` ignores everything.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:  # typing.Self is Python 3.11+; JetPack 6 runs 3.10, where this never imports
    from typing_extensions import Self


class Reporter(Protocol):
    def start(self, task: str, total: int) -> None:
        """A task of `total` steps begins (`total` 0 when unknown)."""

    def advance(self, task: str, steps: int = 1, **metrics: float) -> None:
        """`steps` more steps of `task` are done; `metrics` are the latest values (e.g. loss)."""

    def finish(self, task: str) -> None:
        """`task` is over."""

    def note(self, message: str) -> None:
        """A one-off message worth showing (a skipped stage, a measured score)."""


class NullReporter:
    """Ignores everything."""

    def start(self, task: str, total: int) -> None:
        pass

    def advance(self, task: str, steps: int = 1, **metrics: float) -> None:
        pass

    def finish(self, task: str) -> None:
        pass

    def note(self, message: str) -> None:
        pass


@dataclass
class RecordingReporter:
    """Keeps every call, for tests and for summaries."""

    events: list[tuple[str, str, Any]] = field(default_factory=list)

    def start(self, task: str, total: int) -> None:
        self.events.append(("start", task, total))

    def advance(self, task: str, steps: int = 1, **metrics: float) -> None:
        self.events.append(("advance", task, dict(metrics, steps=steps)))

    def finish(self, task: str) -> None:
        self.events.append(("finish", task, None))

    def note(self, message: str) -> None:
        self.events.append(("note", "", message))

    @property
    def notes(self) -> list[str]:
        return [str(e[2]) for e in self.events if e[0] == "note"]

    def tasks(self) -> list[str]:
        """Names of the tasks started, in order."""
        return [e[1] for e in self.events if e[0] == "start"]


class RichReporter:
    """Progress bars and notes on stderr with rich (the CLI's reporter); use as a context manager."""

    def __init__(self) -> None:
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self.console = Console(stderr=True)
        self.progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                 TimeElapsedColumn(), TextColumn("{task.fields[metrics]}"), console=self.console)
        self.ids: dict[str, tuple[Any, int]] = {}

    def __enter__(self) -> Self:
        self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.stop()

    def start(self, task: str, total: int) -> None:
        self.ids[task] = (self.progress.add_task(task, total=total or None, metrics=""), total)

    def advance(self, task: str, steps: int = 1, **metrics: float) -> None:
        text = "  ".join(f"{k} {v:.4g}" for k, v in metrics.items())
        self.progress.update(self.ids[task][0], advance=steps, metrics=text)

    def finish(self, task: str) -> None:
        entry = self.ids.pop(task, None)
        if entry is not None:
            task_id, total = entry
            if total:
                self.progress.update(task_id, completed=total)
            self.progress.stop_task(task_id)

    def note(self, message: str) -> None:
        self.progress.console.print(message)
