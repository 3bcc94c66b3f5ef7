"""What TensorRT and GPU this machine has, and whether an engine built elsewhere fits it.

An engine runs only on the TensorRT release (all four version parts) and the GPU it was built
for. Its manifest records the version, the GPU's name, compute capability, streaming-
multiprocessor count and memory; `check_compatible` (a pure function, tested without TensorRT)
compares them with the running system and names the exact `dorl build` that re-creates the
engine here. Orin modules share a compute capability and may share a name, so the SM count and
the memory tell them apart. TensorRT and cuda-python are imported inside functions.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from dorl.deps import is_available
from dorl.errors import ArtifactError, MissingDependencyError
from dorl.tensorrt.versions import TensorRTVersion

TENSORRT_HINT = (
    "on a Jetson it comes with JetPack (python3-libnvinfer), on x86 install it from NVIDIA's index with "
    "`pip install --extra-index-url https://pypi.nvidia.com tensorrt` (and `pip install cuda-python`)"
)
GIB = 1 << 30


# -- what is installed ----------------------------------------------------------------------
def require_tensorrt(purpose: str) -> None:
    """Raise MissingDependencyError unless the real TensorRT (not only its type stubs) imports."""
    reason = "it is not installed"
    if is_available("tensorrt"):
        try:
            import tensorrt

            if hasattr(tensorrt, "Builder"):  # tensorrt-stubs alone leaves an empty namespace package
                return
        except (ImportError, OSError) as exc:
            reason = f"it does not import ({exc})"
    raise MissingDependencyError(f"{purpose} needs TensorRT, but {reason}: {TENSORRT_HINT}.")


def require_cuda(purpose: str) -> None:
    """Raise MissingDependencyError unless cuda-python's runtime bindings import."""
    from dorl.tensorrt.cuda import CUDA_HINT

    try:
        from cuda.bindings import runtime  # noqa: F401
    except ImportError as exc:
        raise MissingDependencyError(f"{purpose} needs cuda-python, which is not installed: {CUDA_HINT}.") from exc


def tensorrt_usable() -> bool:
    """True when TensorRT and cuda-python both import (what the engine tests need besides a GPU)."""
    try:
        require_tensorrt("this")
        require_cuda("this")
    except MissingDependencyError:
        return False
    return True


# -- the engine's system description and the compatibility check (pure) ----------------------
@dataclass(frozen=True)
class SystemDescription:
    """What an engine is tied to: the TensorRT release and the GPU."""

    tensorrt_version: str
    gpu_name: str
    compute_capability: str
    sm_count: int
    total_memory_bytes: int

    @classmethod
    def from_manifest(cls, manifest: Mapping[str, Any]) -> SystemDescription:
        try:
            return cls(str(manifest["tensorrt_version"]), str(manifest["gpu_name"]), str(manifest["compute_capability"]),
                       int(manifest["gpu_sm_count"]), int(manifest["gpu_total_memory_bytes"]))
        except KeyError as exc:
            raise ArtifactError(
                f"the engine manifest in {manifest.get('folder')} lacks {exc.args[0]!r}: rebuild the engine with "
                "`dorl build`."
            ) from exc

    def to_manifest(self) -> dict[str, Any]:
        return {"tensorrt_version": self.tensorrt_version, "gpu_name": self.gpu_name,
                "compute_capability": self.compute_capability, "gpu_sm_count": self.sm_count,
                "gpu_total_memory_bytes": self.total_memory_bytes}

    @property
    def memory_gib(self) -> int:
        """Total memory rounded to whole GiB: the module size, stable across JetPack carve-out changes."""
        return round(self.total_memory_bytes / GIB)


def describe_system(device: int = 0) -> SystemDescription:
    """The running TensorRT release and GPU (from cuda-python's device properties)."""
    require_tensorrt("describing this machine's TensorRT")
    require_cuda("describing this machine's GPU")
    import tensorrt as trt

    from dorl.tensorrt.cuda import device_description

    name, capability, sm_count, memory = device_description(device)
    return SystemDescription(trt.__version__, name, capability, sm_count, memory)


def engine_mismatches(recorded: SystemDescription, running: SystemDescription) -> list[str]:
    """Why an engine built on `recorded` cannot run on `running` (empty when it can)."""
    problems = []
    if TensorRTVersion.parse(recorded.tensorrt_version) != TensorRTVersion.parse(running.tensorrt_version):
        problems.append(f"it was built with TensorRT {recorded.tensorrt_version}, this machine has "
                        f"{running.tensorrt_version} (an engine needs the same major.minor.patch.build)")
    if recorded.compute_capability != running.compute_capability:
        problems.append(f"it was built for GPU {recorded.gpu_name!r} (compute capability {recorded.compute_capability}), "
                        f"this one is {running.gpu_name!r} (compute capability {running.compute_capability})")
        return problems
    if recorded.gpu_name != running.gpu_name:
        problems.append(f"it was built on GPU {recorded.gpu_name!r}, this one is {running.gpu_name!r}")
    if (recorded.sm_count, recorded.memory_gib) != (running.sm_count, running.memory_gib):
        problems.append(f"it was built on a GPU with {recorded.sm_count} SMs and {recorded.memory_gib} GiB, this one "
                        f"has {running.sm_count} SMs and {running.memory_gib} GiB (another module of the same family)")
    return problems


def check_compatible(manifest: Mapping[str, Any], running: SystemDescription) -> None:
    """Raise ArtifactError, with the `dorl build` command to run, if the engine cannot run on `running`."""
    problems = engine_mismatches(SystemDescription.from_manifest(manifest), running)
    if problems:
        command = manifest.get("rebuild_command", "dorl build <onnx artifact> ...")
        raise ArtifactError(
            f"the TensorRT engine in {manifest.get('folder')} cannot run here: {'; '.join(problems)}. An engine is "
            f"tied to the TensorRT release and GPU it was built on: rebuild it on this machine with `{command}`."
        )


def check_engine_compatible(manifest: Mapping[str, Any], device: int = 0) -> None:
    """`check_compatible` against the TensorRT and GPU of this machine."""
    check_compatible(manifest, describe_system(device))
