"""Engine identity: an engine fits only the TensorRT release (all four parts) and the GPU (name,
compute capability, SM count, memory) it was built on; the check is pure and names the rebuild."""

from __future__ import annotations

import pytest

from dorl.errors import ArtifactError
from dorl.tensorrt.plan import rebuild_command
from dorl.tensorrt.system import SystemDescription, check_compatible, engine_mismatches

GIB = 1 << 30
ORIN_AGX_64 = SystemDescription("10.3.0.30", "Orin", "8.7", 16, int(61.4 * GIB))
THOR = SystemDescription("11.0.0.114", "NVIDIA Thor", "11.0", 20, int(122.8 * GIB))


def test_same_system_is_compatible() -> None:
    assert engine_mismatches(ORIN_AGX_64, ORIN_AGX_64) == []
    # A JetPack update that moves a carve-out by a few MB is still the same module.
    assert engine_mismatches(ORIN_AGX_64, SystemDescription("10.3.0.30", "Orin", "8.7", 16, int(61.3 * GIB))) == []


def test_every_part_of_the_version_counts() -> None:
    other_build = SystemDescription("10.3.0.26", "Orin", "8.7", 16, int(61.4 * GIB))
    assert engine_mismatches(ORIN_AGX_64, other_build) == [
        ("it was built with TensorRT 10.3.0.30, this machine has 10.3.0.26 (an engine needs the same "
         "major.minor.patch.build)")]


def test_orin_modules_of_the_same_family_are_told_apart() -> None:
    orin_nx_8 = SystemDescription("10.3.0.30", "Orin", "8.7", 4, int(7.4 * GIB))  # same name, same capability
    assert engine_mismatches(ORIN_AGX_64, orin_nx_8) == [
        "it was built on a GPU with 16 SMs and 61 GiB, this one has 4 SMs and 7 GiB (another module of the same family)"]


def test_mismatches_name_version_and_gpu() -> None:
    assert engine_mismatches(ORIN_AGX_64, THOR) == [
        ("it was built with TensorRT 10.3.0.30, this machine has 11.0.0.114 (an engine needs the same "
         "major.minor.patch.build)"),
        "it was built for GPU 'Orin' (compute capability 8.7), this one is 'NVIDIA Thor' (compute capability 11.0)",
    ]
    a10 = SystemDescription("10.3.0.30", "NVIDIA A10", "8.6", 72, 22 * GIB)
    rtx = SystemDescription("10.3.0.30", "NVIDIA GeForce RTX 3090", "8.6", 82, 24 * GIB)
    assert engine_mismatches(a10, rtx)[0] == "it was built on GPU 'NVIDIA A10', this one is 'NVIDIA GeForce RTX 3090'"


def test_incompatible_engine_error_gives_the_exact_rebuild_command() -> None:
    command = rebuild_command("/data/dorl onnx", "/data/engine", "fp16", 8, None, 512)
    manifest = {"folder": "/data/engine", **ORIN_AGX_64.to_manifest(), "rebuild_command": command}
    check_compatible(manifest, ORIN_AGX_64)
    with pytest.raises(ArtifactError) as info:
        check_compatible(manifest, THOR)
    message = str(info.value)
    assert "`dorl build '/data/dorl onnx' --precision fp16 --max-batch 8 --workspace 512 -o /data/engine`" in message
    assert "TensorRT 10.3.0.30" in message and "11.0.0.114" in message


@pytest.mark.parametrize("missing", ["gpu_name", "gpu_sm_count", "gpu_total_memory_bytes"])
def test_engine_manifest_without_system_fields_is_refused(missing: str) -> None:
    manifest = {"folder": "/e", **ORIN_AGX_64.to_manifest()}
    del manifest[missing]
    with pytest.raises(ArtifactError, match=f"lacks '{missing}'.*dorl build"):
        check_compatible(manifest, ORIN_AGX_64)


def test_manifest_round_trip() -> None:
    assert SystemDescription.from_manifest(ORIN_AGX_64.to_manifest()) == ORIN_AGX_64
    assert ORIN_AGX_64.memory_gib == 61
