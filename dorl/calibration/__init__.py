"""INT8 calibration: calibration sets and the Q/DQ quantization of the ONNX graph (TensorRT's legacy
entropy calibrator, TensorRT 10 only, lives with the rest of TensorRT in dorl.tensorrt.calibrator).
"""
