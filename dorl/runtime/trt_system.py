"""What TensorRT and GPU this machine has, and whether an engine built elsewhere fits it.

An engine only runs on the TensorRT version and GPU it was built for; its manifest records
both, and `check_compatible` (a pure function, tested without TensorRT) compares them with the
running system and names the exact `dorl build` that re-creates the engine here.
TensorRT and pycuda are imported inside functions: this module imports without them.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from dorl.deps import is_available
from dorl.errors import ArtifactError, MissingDependencyError

TENSORRT_HINT = (
    "on a Jetson it comes with JetPack (python3-libnvinfer), on x86 install it from NVIDIA's index with "
    "`pip install --extra-index-url https://pypi.nvidia.com tensorrt` (and `pip install pycuda`)"
)


# -- what is installed and what GPU this is -----------------------------------------------
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


def require_pycuda(purpose: str) -> None:
    """Raise MissingDependencyError unless pycuda is installed."""
    if not is_available("pycuda"):
        raise MissingDependencyError(f"{purpose} needs pycuda, which is not installed: `pip install pycuda`.")


def tensorrt_usable() -> bool:
    """True when TensorRT and pycuda are both importable (what the engine tests need)."""
    try:
        require_tensorrt("this")
        require_pycuda("this")
    except MissingDependencyError:
        return False
    return True


def query_gpu(device: int = 0) -> tuple[str, str]:
    """Name and compute capability ("8.7") of a CUDA device, from pycuda."""
    require_pycuda("querying the GPU")
    import pycuda.driver as cuda

    cuda.init()
    dev = cuda.Device(device)
    major, minor = dev.compute_capability()
    return str(dev.name()), f"{major}.{minor}"


@contextlib.contextmanager
def cuda_context(device: int = 0) -> Iterator[None]:
    """Make the device's primary CUDA context (the one TensorRT uses) current for pycuda."""
    import pycuda.driver as cuda

    cuda.init()
    context = cuda.Device(device).retain_primary_context()
    context.push()
    try:
        yield
    finally:
        cuda.Context.pop()


# -- the engine's system description and the compatibility check (pure) --------------------
@dataclass(frozen=True)
class SystemDescription:
    """What an engine is tied to: the TensorRT version and the GPU."""

    tensorrt_version: str
    gpu_name: str
    compute_capability: str

    @classmethod
    def from_manifest(cls, manifest: Mapping[str, Any]) -> SystemDescription:
        try:
            return cls(str(manifest["tensorrt_version"]), str(manifest["gpu_name"]), str(manifest["compute_capability"]))
        except KeyError as exc:
            raise ArtifactError(
                f"the engine manifest in {manifest.get('folder')} lacks {exc.args[0]!r}: rebuild the engine with "
                "`dorl build`."
            ) from exc


def describe_system(device: int = 0) -> SystemDescription:
    """The running TensorRT version and GPU."""
    require_tensorrt("describing this machine's TensorRT")
    import tensorrt as trt

    name, capability = query_gpu(device)
    return SystemDescription(trt.__version__, name, capability)


def trt_major(version: str) -> int:
    """Major number of a TensorRT version string ("10.3.0.30" -> 10)."""
    return int(version.split(".")[0])


def engine_mismatches(recorded: SystemDescription, running: SystemDescription) -> list[str]:
    """Why an engine built on `recorded` cannot run on `running` (empty when it can).

    Versions are compared on major.minor.patch: the build number may differ between wheels.
    """
    problems = []
    if recorded.tensorrt_version.split(".")[:3] != running.tensorrt_version.split(".")[:3]:
        problems.append(f"it was built with TensorRT {recorded.tensorrt_version}, this machine has "
                        f"{running.tensorrt_version}")
    if recorded.compute_capability != running.compute_capability:
        problems.append(f"it was built for GPU {recorded.gpu_name!r} (compute capability {recorded.compute_capability}), "
                        f"this one is {running.gpu_name!r} (compute capability {running.compute_capability})")
    elif recorded.gpu_name != running.gpu_name:
        problems.append(f"it was built on GPU {recorded.gpu_name!r}, this one is {running.gpu_name!r}")
    return problems


def check_compatible(manifest: Mapping[str, Any], running: SystemDescription) -> None:
    """Raise ArtifactError, with the `dorl build` command to run, if the engine cannot run on `running`."""
    problems = engine_mismatches(SystemDescription.from_manifest(manifest), running)
    if problems:
        command = manifest.get("rebuild_command", "dorl build <onnx artifact> ...")
        raise ArtifactError(
            f"the TensorRT engine in {manifest.get('folder')} cannot run here: {'; '.join(problems)}. An engine is "
            f"tied to the TensorRT version and GPU it was built on: rebuild it on this machine with `{command}`."
        )


def check_engine_compatible(manifest: Mapping[str, Any], device: int = 0) -> None:
    """`check_compatible` against the TensorRT and GPU of this machine."""
    check_compatible(manifest, describe_system(device))
