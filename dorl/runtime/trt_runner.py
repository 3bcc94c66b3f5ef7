"""TensorRT backend: runs an "engine" artifact written by `dorl build` (TensorRT 10 or 11).

The engine's manifest is checked (file hashes, then TensorRT version and GPU) before the engine
is deserialized. I/O uses the name-based API (`num_io_tensors`, `set_input_shape`,
`set_tensor_address`, `execute_async_v3`) with pinned host and device buffers sized once for
the engine's max batch; larger feeds run in chunks. With `cuda_graph_batch`, batches of exactly
that size replay a CUDA graph (copies in, the engine, copies out) captured at activation on a
second execution context, so other batch sizes never disturb it.

TensorRT and pycuda are imported in `activate()`: importing this module needs neither (and it
never imports torch). A runner must be used from the thread that activated it (the CUDA context
is pushed there).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from dorl.artifacts import read_manifest
from dorl.errors import ArtifactError, ConfigError
from dorl.runtime.base import BaseRunner, RunnerError, TensorSpec
from dorl.runtime.engine import (
    ENGINE_FILE,
    check_engine_compatible,
    cuda_context,
    require_pycuda,
    require_tensorrt,
)

if TYPE_CHECKING:
    import tensorrt as trt


@dataclass
class _Binding:
    """One I/O tensor: pinned host array and device allocation, both for max_batch items."""

    name: str
    is_input: bool
    host: np.ndarray
    device: Any


class TensorRTRunner(BaseRunner):
    """Runs a TensorRT engine artifact on `dict[name, ndarray]` feeds."""

    def __init__(self, path: str | Path, cuda_graph_batch: int | None = None, device: int = 0,
                 verify: bool = True) -> None:
        """Read and check the engine artifact's manifest; nothing is loaded until `activate()`.

        Args:
            path: the "engine" artifact folder (or a file in it).
            cuda_graph_batch: replay a CUDA graph for batches of exactly this size (1..max_batch);
                None runs every batch with `execute_async_v3`.
            device: CUDA device ordinal.
            verify: check the files' sha256 against the manifest.
        """
        self.manifest = read_manifest(path, kinds="engine", verify=verify)
        try:
            inputs = [TensorSpec.from_dict(entry) for entry in self.manifest["inputs"]]
            outputs = [TensorSpec.from_dict(entry) for entry in self.manifest["outputs"]]
            self.max_batch = int(self.manifest["max_batch"])
        except (KeyError, TypeError, ValueError) as exc:
            raise ArtifactError(f"the engine manifest in {self.manifest['folder']} is incomplete ({exc}): rebuild the "
                                "engine with `dorl build`.") from exc
        super().__init__(inputs, outputs, name=f"tensorrt:{Path(self.manifest['folder']).name}")
        if cuda_graph_batch is not None and not 1 <= cuda_graph_batch <= self.max_batch:
            raise ConfigError(f"cuda_graph_batch must be between 1 and the engine's max batch {self.max_batch}, "
                              f"got {cuda_graph_batch}.")
        self.cuda_graph_batch = cuda_graph_batch
        self.device = device
        self._stack = contextlib.ExitStack()
        self._state: dict[str, Any] = {}

    # -- lifecycle ---------------------------------------------------------------------------
    def activate_impl(self) -> None:
        require_tensorrt("running a TensorRT engine")
        require_pycuda("running a TensorRT engine")
        check_engine_compatible(self.manifest, self.device)
        import pycuda.driver as cuda
        import tensorrt as trt

        self._stack.enter_context(cuda_context(self.device))
        try:
            runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))  # must outlive the engine
            engine = runtime.deserialize_cuda_engine((Path(self.manifest["folder"]) / ENGINE_FILE).read_bytes())
            if engine is None:
                raise ArtifactError(f"TensorRT could not deserialize the engine in {self.manifest['folder']} (see its "
                                    f"log): rebuild it with `{self.manifest.get('rebuild_command', 'dorl build ...')}`.")
            self._state = {"runtime": runtime, "engine": engine, "stream": cuda.Stream(),
                           "context": engine.create_execution_context()}
            self._state["bindings"] = self._allocate(engine, self._state["context"])
            self._state["batch"] = self.max_batch
            if self.cuda_graph_batch is not None:
                self._capture_graph(engine, self.cuda_graph_batch)
        except BaseException:
            self.deactivate_impl()
            raise

    def deactivate_impl(self) -> None:
        # Dependants first (graph, contexts, engine, runtime), then memory, then the CUDA context.
        for key in ("graph", "graph_template", "graph_context", "context", "engine", "runtime"):
            self._state.pop(key, None)
        for binding in self._state.pop("bindings", {}).values():
            binding.device.free()
        self._state.clear()
        self._stack.close()

    # -- inference ---------------------------------------------------------------------------
    def infer_impl(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        total = len(next(iter(feed.values())))
        if any(len(array) != total for array in feed.values()):
            raise RunnerError(f"{self.name}: all inputs must have the same batch size.")
        chunks = [self._run({k: v[i:i + self.max_batch] for k, v in feed.items()}, min(self.max_batch, total - i))
                  for i in range(0, total, self.max_batch)]
        if len(chunks) == 1:
            return chunks[0]
        return {name: np.concatenate([chunk[name] for chunk in chunks]) for name in self.output_specs}

    def _run(self, feed: dict[str, np.ndarray], n: int) -> dict[str, np.ndarray]:
        """One chunk of at most max_batch items: by CUDA graph replay when its size matches."""
        state, bindings = self._state, self._state["bindings"]
        for name, array in feed.items():
            np.copyto(bindings[name].host[:n], array)
        stream = state["stream"]
        if n == self.cuda_graph_batch:
            state["graph"].launch(stream)
        else:
            context = state["context"]
            if state["batch"] != n:
                for name in self.input_specs:
                    context.set_input_shape(name, (n, *bindings[name].host.shape[1:]))
                state["batch"] = n
            self._enqueue(context, list(bindings.values()), n)
        stream.synchronize()
        return {name: bindings[name].host[:n].astype(spec.dtype) for name, spec in self.output_specs.items()}

    def _enqueue(self, context: trt.IExecutionContext, bindings: list[_Binding], n: int) -> None:
        """Copy inputs in, run the engine, copy outputs out, all queued on the stream."""
        import pycuda.driver as cuda

        stream = self._state["stream"]
        for b in bindings:
            if b.is_input:
                cuda.memcpy_htod_async(b.device, b.host[:n], stream)
        if not context.execute_async_v3(stream.handle):
            raise RunnerError(f"{self.name}: TensorRT failed to run the engine (see its log).")
        for b in bindings:
            if not b.is_input:
                cuda.memcpy_dtoh_async(b.host[:n], b.device, stream)

    # -- buffers and the CUDA graph -----------------------------------------------------------
    def _allocate(self, engine: trt.ICudaEngine, context: trt.IExecutionContext) -> dict[str, _Binding]:
        """Pinned host + device buffers for every I/O tensor at max_batch, bound to `context`."""
        import pycuda.driver as cuda
        import tensorrt as trt

        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        expected = set(self.input_specs) | set(self.output_specs)
        if set(names) != expected:
            raise ArtifactError(f"the engine's tensors {sorted(names)} differ from its manifest's {sorted(expected)}: "
                                "rebuild the engine from its ONNX artifact.")
        inputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        if sorted(inputs) != sorted(self.input_specs):
            raise ArtifactError(f"the engine's inputs {sorted(inputs)} differ from its manifest's "
                                f"{sorted(self.input_specs)}: rebuild the engine from its ONNX artifact.")
        for name in inputs:
            item = tuple(int(d) for d in self.input_specs[name].shape[1:])
            context.set_input_shape(name, (self.max_batch, *item))
        bindings = {}
        for name in names:
            dims = context.get_tensor_shape(name)
            shape = tuple(int(dims[i]) for i in range(len(dims)))
            if any(d < 0 for d in shape):
                raise ArtifactError(f"the engine's tensor {name!r} has unresolved shape {shape}: rebuild the engine.")
            dtype = np.dtype(trt.nptype(engine.get_tensor_dtype(name)))
            if name in inputs and dtype != np.dtype(self.input_specs[name].dtype):
                raise ArtifactError(f"the engine takes {name!r} as {dtype}, its manifest says "
                                    f"{self.input_specs[name].dtype}: rebuild the engine from its ONNX artifact.")
            host = cuda.pagelocked_empty(shape, dtype)
            bindings[name] = _Binding(name, name in inputs, host, cuda.mem_alloc(max(host.nbytes, 1)))
            context.set_tensor_address(name, int(bindings[name].device))
        return bindings

    def _capture_graph(self, engine: trt.ICudaEngine, batch: int) -> None:
        """Capture copies-in, the engine and copies-out for `batch` on a dedicated context."""
        context = engine.create_execution_context()
        bindings: dict[str, _Binding] = self._state["bindings"]
        for name, binding in bindings.items():
            if binding.is_input:
                context.set_input_shape(name, (batch, *binding.host.shape[1:]))
            context.set_tensor_address(name, int(binding.device))
        stream = self._state["stream"]
        self._enqueue(context, list(bindings.values()), batch)  # TensorRT finishes deferred set-up here
        stream.synchronize()
        stream.begin_capture()
        try:
            self._enqueue(context, list(bindings.values()), batch)
        except Exception as exc:
            with contextlib.suppress(Exception):
                stream.end_capture()
            raise RunnerError(f"{self.name}: this engine cannot be captured in a CUDA graph ({exc}): run it with "
                              "cuda_graph_batch=None.") from exc
        graph = stream.end_capture()
        self._state.update(graph_context=context, graph_template=graph, graph=graph.instantiate())
