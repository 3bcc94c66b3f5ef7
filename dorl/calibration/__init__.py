"""INT8 calibration: calibration sets, the Q/DQ quantization of the ONNX graph, and TensorRT's
legacy entropy calibrator with its cache (TensorRT 10 only; TensorRT 11 builds the Q/DQ graph).
"""
