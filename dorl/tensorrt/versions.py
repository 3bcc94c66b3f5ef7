"""What differs between TensorRT releases, decided from the version string alone.

JetPack 6 ships TensorRT 10.3, JetPack 7.0/7.1 ship TensorRT 10.x (10.13 and later), JetPack
7.2.2 and later ship TensorRT 11; x86 wheels exist for both lines. What matters to dorl:

- TensorRT 10.0-10.11 builds weakly typed networks with precision builder flags (FP16, INT8,
  OBEY_PRECISION_CONSTRAINTS) or strongly typed ones on request.
- TensorRT 10.12 deprecated weak typing: from there on dorl builds strongly typed networks only,
  with the precision in the ONNX graph (the FP16 graph, the Q/DQ graph).
- TensorRT 11 removed the precision flags and the INT8 calibrators; every network is strongly
  typed (the STRONGLY_TYPED creation flag is accepted and ignored).
- The ONNX parser's operator support grows with the release; `onnx_matrix` names the
  onnx-tensorrt support matrix a graph is checked against (see `dorl.export.trt_operators`).

`tensorrt_features` is that decision, a pure function tested for 10.3, 10.13, 11.0 and 11.4.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from dorl.errors import ConfigError

WEAK_TYPING_DEPRECATED = (10, 12)  # TensorRT 10.12 release notes: "Weak typing APIs deprecated"


@dataclass(frozen=True, order=True)
class TensorRTVersion:
    """major.minor.patch.build: an engine runs only on the exact release it was built with."""

    major: int
    minor: int
    patch: int
    build: int

    @classmethod
    def parse(cls, text: str) -> TensorRTVersion:
        """"10.3.0.30" -> (10, 3, 0, 30); missing trailing parts are 0 ("11.0" -> 11.0.0.0)."""
        match = re.fullmatch(r"(\d+)\.(\d+)(?:\.(\d+))?(?:\.(\d+))?(?:[.+-].*)?", text.strip())
        if match is None:
            raise ConfigError(f"{text!r} is not a TensorRT version (major.minor.patch.build, e.g. 10.3.0.30).")
        return cls(*(int(part or 0) for part in match.groups()))

    def __str__(self) -> str:
        return f"{self.major}.{self.minor}.{self.patch}.{self.build}"


@dataclass(frozen=True)
class TensorRTFeatures:
    """What a TensorRT release offers the engine builder."""

    version: TensorRTVersion
    precision_flags: bool  # BuilderFlag.FP16/INT8/OBEY_PRECISION_CONSTRAINTS exist (10.x)
    weak_typing: bool  # ... and are not deprecated (10.0-10.11): dorl may build weakly typed networks
    calibrators: bool  # IInt8EntropyCalibrator2 exists (10.x; deprecated since 10.1)
    strongly_typed_flag: bool  # STRONGLY_TYPED must be requested when the network is created (10.x)
    onnx_matrix: str  # the onnx-tensorrt support matrix its parser follows: "10.3" or "11"

    @property
    def strongly_typed_only(self) -> bool:
        """Every engine is built from a graph that already holds its precision."""
        return not self.weak_typing


def tensorrt_features(version: str) -> TensorRTFeatures:
    """What the TensorRT release `version` (`tensorrt.__version__`) offers.

    Raises:
        ConfigError: the version is not TensorRT 10 or 11 (or later).
    """
    parsed = TensorRTVersion.parse(version)
    if parsed.major < 10:
        raise ConfigError(f"TensorRT {version} is too old: dorl builds with TensorRT 10 (JetPack 6 ships 10.3) or 11.")
    ten = parsed.major == 10
    return TensorRTFeatures(
        version=parsed,
        precision_flags=ten,
        weak_typing=ten and (parsed.major, parsed.minor) < WEAK_TYPING_DEPRECATED,
        calibrators=ten,
        strongly_typed_flag=ten,
        # Releases after 10.3 only added operators, so a graph that passes 10.3's matrix parses on
        # every 10.x; 11 is checked against its own.
        onnx_matrix="10.3" if ten else "11",
    )


def trt_major(version: str) -> int:
    """Major number of a TensorRT version string ("10.3.0.30" -> 10)."""
    return TensorRTVersion.parse(version).major
