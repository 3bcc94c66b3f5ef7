"""The runner interface every backend implements (after Polygraphy's BaseRunner).

A runner owns one artifact's lifecycle: `activate()` loads it (session, engine, buffers),
`infer(feed)` runs it on `dict[name, ndarray]` and returns `dict[name, ndarray]`, and
`deactivate()` frees it. It is a context manager. The base class checks every feed against
the input specs of the artifact's manifest, so backends implement only what differs.
"""

from __future__ import annotations

import abc
from typing import TYPE_CHECKING

import numpy as np

from dorl.contract import TensorSpec
from dorl.errors import DorlError

if TYPE_CHECKING:  # typing.Self is Python 3.11+; JetPack 6 runs 3.10, where this never imports
    from typing_extensions import Self


class RunnerError(DorlError):
    """A runner was used wrongly or fed data that does not match its artifact."""


class BaseRunner(abc.ABC):
    """Lifecycle and input validation shared by all backends."""

    def __init__(self, input_specs: list[TensorSpec], output_specs: list[TensorSpec], name: str) -> None:
        self.input_specs = {s.name: s for s in input_specs}
        self.output_specs = {s.name: s for s in output_specs}
        self.name = name
        self.is_active = False

    # -- lifecycle -------------------------------------------------------------------------
    def activate(self) -> None:
        if self.is_active:
            return
        self.activate_impl()
        self.is_active = True

    def deactivate(self) -> None:
        if not self.is_active:
            return
        self.deactivate_impl()
        self.is_active = False

    def __enter__(self) -> Self:
        self.activate()
        return self

    def __exit__(self, *exc: object) -> None:
        self.deactivate()

    # -- inference -------------------------------------------------------------------------
    def infer(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run the artifact on `feed` (validated first) and return its outputs by name."""
        if not self.is_active:
            raise RunnerError(f"runner {self.name} is not active: use it as `with runner:` or call activate() first "
                              "(and close it only once no other thread is still running it).")
        self.validate(feed)
        return self.infer_impl(feed)

    def validate(self, feed: dict[str, np.ndarray]) -> None:
        missing = set(self.input_specs) - set(feed)
        extra = set(feed) - set(self.input_specs)
        if missing or extra:
            raise RunnerError(
                f"{self.name} expects inputs {sorted(self.input_specs)}, got {sorted(feed)}: "
                "feed exactly the inputs named in the artifact's manifest."
            )
        for name, spec in self.input_specs.items():
            array = feed[name]
            if not isinstance(array, np.ndarray):
                raise RunnerError(f"input {name!r} must be a numpy array, got {type(array).__name__}.")
            if array.dtype != np.dtype(spec.dtype):
                raise RunnerError(f"input {name!r} must be {spec.dtype}, got {array.dtype}: convert it before infer().")
            if array.ndim != len(spec.shape) or any(
                isinstance(d, int) and d != a for d, a in zip(spec.shape, array.shape)
            ):
                raise RunnerError(
                    f"input {name!r} has shape {tuple(array.shape)}, the artifact expects {spec.shape} "
                    "(strings are dynamic dimensions)."
                )
            if array.shape[0] == 0:
                raise RunnerError(f"input {name!r} is an empty batch: feed at least one item.")

    # -- what backends implement ----------------------------------------------------------
    @abc.abstractmethod
    def activate_impl(self) -> None: ...

    @abc.abstractmethod
    def infer_impl(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]: ...

    @abc.abstractmethod
    def deactivate_impl(self) -> None: ...
