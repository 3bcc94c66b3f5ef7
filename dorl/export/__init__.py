"""Export: the export-only wrapper (tensor names fixed here), ONNX export with graph checks,
parity against PyTorch on real cells, and the FP16 graph. Torch and onnx are imported inside
the functions that need them."""
