"""Everything TensorRT, in one package: what each release offers (`versions`), build plans and
commands (`plan`), the engine builder (`builder`), its check against the ONNX graph (`verify`), the
runner (`runner`), machine checks and engine identity (`system`), the CUDA calls (`cuda`) and the
legacy INT8 calibrator (`calibrator`).

Importing any of these needs neither TensorRT nor cuda-python (nor torch): both are imported by the
functions that use them, so the package's pure parts are tested anywhere.
"""
