"""Benchmarks: latency, throughput, memory, FLOPs and accuracy of every deployable configuration.

`harness.bench` runs the PyTorch eager FP32 baseline, the ONNX Runtime artifacts (FP32, FP16,
INT8) and TensorRT engines (where TensorRT exists) on the same real cells; `timing` holds the
trtexec percentile definitions, `memory` the peak-RSS probes, `flops` the ONNX FLOP count and
this machine's matrix-multiply peak, and `report` writes the table, JSON, markdown and plots.
Nothing here imports torch at module level.
"""
