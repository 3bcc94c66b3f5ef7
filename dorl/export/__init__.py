"""Export: the export-only wrapper (tensor names fixed here), ONNX export with graph checks,
parity against PyTorch on real cells, the FP16 graph, and the TensorRT compatibility check every
graph for TensorRT passes. Torch and onnx are imported inside the functions that need them."""
