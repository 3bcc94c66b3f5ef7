#!/usr/bin/env python3
"""The device check, to run the day a Jetson (or any NVIDIA GPU with TensorRT) is at hand.

    python scripts/device_check.py dorl-demo/onnx -o device-check.json

Builds the FP16 and INT8 engines from the ONNX artifacts under the folder (`dorl demo`'s onnx/, or
what `dorl export` wrote), verifies each on real cells against its ONNX graph, times it, and writes
one JSON (engines beside it, in <output>-engines/). Exit code 0 when every engine passed, 1 when one
failed (the JSON says why), 2 when this machine has no TensorRT or GPU.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    from dorl.errors import DorlError, MissingDependencyError
    from dorl.tensorrt.device_check import DeviceCheckSettings, run_device_check

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folder", type=Path, help="folder holding the ONNX artifacts (e.g. dorl-demo/onnx)")
    parser.add_argument("-o", "--output", type=Path, default=Path("device-check.json"), help="the JSON to write")
    parser.add_argument("--max-batch", type=int, default=8)
    parser.add_argument("--workspace", type=int, default=1024, help="builder workspace in MB")
    parser.add_argument("--opt-level", type=int, default=3, help="builder optimization level 0-5")
    parser.add_argument("--verify", type=int, default=64, help="real cells each engine is verified on")
    parser.add_argument("--iterations", type=int, default=100, help="timed runs per configuration")
    args = parser.parse_args(argv)
    try:
        settings = DeviceCheckSettings(max_batch=args.max_batch, workspace_mb=args.workspace, opt_level=args.opt_level,
                                       verify_cells=args.verify, iterations=args.iterations)
        report = run_device_check(args.folder, args.output, settings, reporter=lambda m: print(m, file=sys.stderr))
    except MissingDependencyError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except DorlError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"wrote {args.output}: {'all engines passed' if report['passed'] else 'an engine failed'}")
    return 0 if report["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
