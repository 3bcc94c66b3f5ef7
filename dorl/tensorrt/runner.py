"""TensorRT backend: runs an "engine" artifact written by `dorl build` (TensorRT 10 or 11).

The engine's manifest is checked (file hashes, then TensorRT release and GPU) before the engine
is deserialized. I/O uses the name-based API (`num_io_tensors`, `set_input_shape`,
`set_tensor_address`, `execute_async_v3`, each return value checked) with pinned host and device
buffers sized once for the engine's max batch; larger feeds run in chunks. With
`cuda_graph_batch`, batches of exactly that size replay a CUDA graph (copies in, the engine,
copies out) captured at activation on a second execution context, so other batch sizes never
disturb it. CUDA goes through cuda-python's runtime API (`dorl.tensorrt.cuda`), like NVIDIA's samples.

Threads: a runner owns one set of buffers and one stream, so `infer` holds a lock; calls from
several threads are safe and run one at a time (make a runner per thread to run them side by
side). Each call makes the runner's device current for the calling thread.

TensorRT and cuda-python are imported in `activate()`: importing this module needs neither (and
it never imports torch).
"""

from __future__ import annotations

import ctypes
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from dorl.artifacts import read_manifest
from dorl.errors import ArtifactError, ConfigError
from dorl.runtime.base import BaseRunner, RunnerError, TensorSpec
from dorl.tensorrt.plan import ENGINE_FILE
from dorl.tensorrt.system import check_engine_compatible, require_cuda, require_tensorrt

if TYPE_CHECKING:
    import tensorrt as trt


@dataclass
class _Binding:
    """One I/O tensor: a pinned host array and a device allocation, both for max_batch items."""

    name: str
    is_input: bool
    host: np.ndarray
    host_pointer: int
    device: int


def _ok(done: bool, what: str) -> None:
    """TensorRT's bool-returning calls report failure only by returning False (details in its log)."""
    if not done:
        raise RunnerError(f"TensorRT refused {what} (its log above says why): rebuild the engine with `dorl build`.")


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
        self._lock = threading.Lock()
        self._state: dict[str, Any] = {}

    # -- lifecycle ---------------------------------------------------------------------------
    def activate_impl(self) -> None:
        require_tensorrt("running a TensorRT engine")
        require_cuda("running a TensorRT engine")
        check_engine_compatible(self.manifest, self.device)
        import tensorrt as trt

        from dorl.tensorrt.cuda import check, runtime, set_device

        cudart = runtime()
        set_device(self.device)
        try:
            self._state["stream"] = check(cudart.cudaStreamCreate(), "cudaStreamCreate")
            self._state["runtime"] = trt.Runtime(trt.Logger(trt.Logger.WARNING))  # must outlive the engine
            engine = self._state["runtime"].deserialize_cuda_engine(
                (Path(self.manifest["folder"]) / ENGINE_FILE).read_bytes())
            if engine is None:
                raise ArtifactError(f"TensorRT could not deserialize the engine in {self.manifest['folder']} (see its "
                                    f"log): rebuild it with `{self.manifest.get('rebuild_command', 'dorl build ...')}`.")
            self._state["engine"] = engine
            self._state["context"] = engine.create_execution_context()
            self._state["bindings"] = self._allocate(engine, self._state["context"])
            self._state["batch"] = self.max_batch
            if self.cuda_graph_batch is not None:
                self._capture_graph(engine, self.cuda_graph_batch)
        except BaseException:
            self.deactivate_impl()
            raise

    def deactivate_impl(self) -> None:
        from dorl.tensorrt.cuda import check, runtime

        cudart = runtime()
        # Dependants first (graph, contexts, engine, runtime), then memory, then the stream.
        if (graph_exec := self._state.pop("graph_exec", None)) is not None:
            check(cudart.cudaGraphExecDestroy(graph_exec), "cudaGraphExecDestroy")
        if (graph := self._state.pop("graph", None)) is not None:
            check(cudart.cudaGraphDestroy(graph), "cudaGraphDestroy")
        for key in ("graph_context", "context", "engine", "runtime"):
            self._state.pop(key, None)
        for binding in self._state.pop("bindings", {}).values():
            check(cudart.cudaFreeHost(binding.host_pointer), "cudaFreeHost")
            check(cudart.cudaFree(binding.device), "cudaFree")
        if (stream := self._state.pop("stream", None)) is not None:
            check(cudart.cudaStreamDestroy(stream), "cudaStreamDestroy")
        self._state.clear()

    # -- inference ---------------------------------------------------------------------------
    def infer_impl(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        from dorl.tensorrt.cuda import set_device

        total = len(next(iter(feed.values())))
        if any(len(array) != total for array in feed.values()):
            raise RunnerError(f"{self.name}: all inputs must have the same batch size.")
        with self._lock:
            set_device(self.device)
            chunks = [self._run({k: v[i:i + self.max_batch] for k, v in feed.items()}, min(self.max_batch, total - i))
                      for i in range(0, total, self.max_batch)]
        if len(chunks) == 1:
            return chunks[0]
        return {name: np.concatenate([chunk[name] for chunk in chunks]) for name in self.output_specs}

    def _run(self, feed: dict[str, np.ndarray], n: int) -> dict[str, np.ndarray]:
        """One chunk of at most max_batch items: by CUDA graph replay when its size matches."""
        from dorl.tensorrt.cuda import check, runtime

        cudart = runtime()
        state, bindings = self._state, self._state["bindings"]
        for name, array in feed.items():
            np.copyto(bindings[name].host[:n], array)
        if n == self.cuda_graph_batch:
            check(cudart.cudaGraphLaunch(state["graph_exec"], state["stream"]), "cudaGraphLaunch")
        else:
            context = state["context"]
            if state["batch"] != n:
                for name in self.input_specs:
                    _ok(context.set_input_shape(name, (n, *bindings[name].host.shape[1:])),
                        f"input shape {(n, *bindings[name].host.shape[1:])} for {name!r}")
                state["batch"] = n
            self._enqueue(context, list(bindings.values()), n)
        check(cudart.cudaStreamSynchronize(state["stream"]), "cudaStreamSynchronize")
        return {name: bindings[name].host[:n].astype(spec.dtype) for name, spec in self.output_specs.items()}

    def _enqueue(self, context: trt.IExecutionContext, bindings: list[_Binding], n: int) -> None:
        """Copy inputs in, run the engine, copy outputs out, all queued on the stream."""
        from dorl.tensorrt.cuda import check, runtime

        cudart = runtime()
        stream = self._state["stream"]
        to_device, to_host = cudart.cudaMemcpyKind.cudaMemcpyHostToDevice, cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost
        for b in bindings:
            if b.is_input:
                size = b.host[:n].nbytes
                check(cudart.cudaMemcpyAsync(b.device, b.host_pointer, size, to_device, stream), "cudaMemcpyAsync (in)")
        _ok(context.execute_async_v3(int(stream)), "to run the engine (execute_async_v3)")
        for b in bindings:
            if not b.is_input:
                size = b.host[:n].nbytes
                check(cudart.cudaMemcpyAsync(b.host_pointer, b.device, size, to_host, stream), "cudaMemcpyAsync (out)")

    # -- buffers and the CUDA graph -----------------------------------------------------------
    def _allocate(self, engine: trt.ICudaEngine, context: trt.IExecutionContext) -> dict[str, _Binding]:
        """Pinned host + device buffers for every I/O tensor at max_batch, bound to `context`."""
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
            _ok(context.set_input_shape(name, (self.max_batch, *item)), f"input shape {(self.max_batch, *item)} "
                f"for {name!r}")
        bindings: dict[str, _Binding] = {}
        self._state["bindings"] = bindings  # filled as allocated, so a failure frees what exists
        for name in names:
            dims = context.get_tensor_shape(name)
            shape = tuple(int(dims[i]) for i in range(len(dims)))
            if any(d < 0 for d in shape):
                raise ArtifactError(f"the engine's tensor {name!r} has unresolved shape {shape}: rebuild the engine.")
            dtype = np.dtype(trt.nptype(engine.get_tensor_dtype(name)))
            if name in inputs and dtype != np.dtype(self.input_specs[name].dtype):
                raise ArtifactError(f"the engine takes {name!r} as {dtype}, its manifest says "
                                    f"{self.input_specs[name].dtype}: rebuild the engine from its ONNX artifact.")
            bindings[name] = _new_binding(name, name in inputs, shape, dtype)
            _ok(context.set_tensor_address(name, bindings[name].device), f"the device address of {name!r}")
        return bindings

    def _capture_graph(self, engine: trt.ICudaEngine, batch: int) -> None:
        """Capture copies-in, the engine and copies-out for `batch` on a dedicated context."""
        from dorl.tensorrt.cuda import CudaError, check, runtime

        cudart = runtime()
        context = engine.create_execution_context()
        self._state["graph_context"] = context
        bindings: dict[str, _Binding] = self._state["bindings"]
        for name, binding in bindings.items():
            if binding.is_input:
                _ok(context.set_input_shape(name, (batch, *binding.host.shape[1:])), f"input shape for {name!r}")
            _ok(context.set_tensor_address(name, binding.device), f"the device address of {name!r}")
        stream = self._state["stream"]
        self._enqueue(context, list(bindings.values()), batch)  # TensorRT finishes deferred set-up here
        check(cudart.cudaStreamSynchronize(stream), "cudaStreamSynchronize")
        mode = cudart.cudaStreamCaptureMode.cudaStreamCaptureModeGlobal
        check(cudart.cudaStreamBeginCapture(stream, mode), "cudaStreamBeginCapture")
        try:
            self._enqueue(context, list(bindings.values()), batch)
        except (RunnerError, CudaError) as exc:
            cudart.cudaStreamEndCapture(stream)  # ends the failed capture; its own error is the one above
            raise RunnerError(f"{self.name}: this engine cannot be captured in a CUDA graph ({exc}): run it with "
                              "cuda_graph_batch=None.") from exc
        self._state["graph"] = check(cudart.cudaStreamEndCapture(stream), "cudaStreamEndCapture")
        self._state["graph_exec"] = check(cudart.cudaGraphInstantiate(self._state["graph"], 0), "cudaGraphInstantiate")


def _new_binding(name: str, is_input: bool, shape: tuple[int, ...], dtype: np.dtype) -> _Binding:
    """Pinned host memory (viewed as a numpy array) and device memory for one tensor."""
    from dorl.tensorrt.cuda import check, runtime

    cudart = runtime()
    nbytes = max(int(np.prod(shape)) * dtype.itemsize, 1)
    host_pointer = int(check(cudart.cudaMallocHost(nbytes), f"cudaMallocHost ({name})"))
    raw = np.ctypeslib.as_array(ctypes.cast(ctypes.c_void_p(host_pointer), ctypes.POINTER(ctypes.c_ubyte)), (nbytes,))
    host = raw[: int(np.prod(shape)) * dtype.itemsize].view(dtype).reshape(shape)  # a byte view: any dtype
    try:
        device = int(check(cudart.cudaMalloc(nbytes), f"cudaMalloc ({name})"))
    except BaseException:
        check(cudart.cudaFreeHost(host_pointer), "cudaFreeHost")
        raise
    return _Binding(name, is_input, host, host_pointer, device)
