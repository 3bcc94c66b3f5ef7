"""Which ONNX operators and data types TensorRT's ONNX parser accepts, per TensorRT release (data).

Read from onnx-tensorrt's docs/operators.md ("Operator Support Matrix": supported operators and
their "Supported Types"); operators marked unsupported are simply absent:

- "10.3" (JetPack 6): the matrix at onnx-tensorrt branch release/10.1-GA (commit 96e7811,
  https://github.com/onnx/onnx-tensorrt/blob/96e781103cfc4adf4a6bb557e94bac8e693f6f4c/docs/operators.md).
  onnx-tensorrt's docs/Changelog.md lists no operator added or removed in 10.2 and 10.3 (10.3:
  "tensor axes inputs for Slice nodes", a new ScatterElements plugin), so this is 10.3's matrix.
  One typo of the source is corrected: ConstantOfShape's "INF64" is INT64.
- "11" (JetPack 7.2.2+, x86): the matrix of TensorRT 10.15 (docs/operators.md, "TensorRT 10.15
  supports operators in the inclusive range of opset 9 to opset 24") with the operators NVIDIA's
  TensorRT CHANGELOG.md adds up to 11.1 (11.0: "Added support for `Swish` operator"; 10.16 and 11.1
  add only TensorRT-specific custom operators). Swish's types are not documented: None (not checked).

Opsets: onnx-tensorrt documents 9-20 for 10.x up to 10.3 and 9-24 for 10.15; NVIDIA's ONNX Opset
Guide gives 25 as the maximum for 11.x. The parser itself only warns about an opset outside the
range, so dorl records the range but does not fail a graph on it.
"""

from __future__ import annotations

TARGETS = ("10.3", "11")
OPSETS = {"10.3": (9, 20), "11": (9, 25)}

_MATRIX_10_3 = """
Abs: FP32 FP16 BF16 INT32 INT64
Acos: FP32 FP16 BF16
Acosh: FP32 FP16 BF16
Add: FP32 FP16 BF16 INT32 INT64
And: BOOL
ArgMax: FP32 FP16 BF16 INT32 INT64
ArgMin: FP32 FP16 BF16 INT32 INT64
Asin: FP32 FP16 BF16
Asinh: FP32 FP16 BF16
Atan: FP32 FP16 BF16
Atanh: FP32 FP16 BF16
AveragePool: FP32 FP16 BF16
BatchNormalization: FP32 FP16 BF16
Cast: FP32 FP16 BF16 INT32 INT64 UINT8 BOOL
CastLike: FP32 FP16 BF16 INT32 INT64 UINT8 BOOL
Ceil: FP32 FP16 BF16
Celu: FP32 FP16 BF16
Clip: FP32 FP16 BF16
Concat: FP32 FP16 BF16 INT32 INT64 BOOL
Constant: FP32 FP16 BF16 INT32 INT64 BOOL
ConstantOfShape: FP32 FP16 BF16 INT32 INT64 BOOL
Conv: FP32 FP16 BF16
ConvTranspose: FP32 FP16 BF16
Cos: FP32 FP16 BF16
Cosh: FP32 FP16 BF16
CumSum: FP32 FP16 BF16
DeformConv: FP32 FP16
DepthToSpace: FP32 FP16 BF16 INT32 INT64
DequantizeLinear: INT8 FP8 INT4
Div: FP32 FP16 BF16 INT32 INT64
Dropout: FP32 FP16 BF16
Einsum: FP32 FP16 BF16
Elu: FP32 FP16 BF16
Equal: FP32 FP16 BF16 INT32 INT64
Erf: FP32 FP16 BF16
Exp: FP32 FP16 BF16
Expand: FP32 FP16 BF16 INT32 INT64 BOOL
EyeLike: FP32 FP16 BF16 INT32 INT64 BOOL
Flatten: FP32 FP16 BF16 INT32 INT64 BOOL
Floor: FP32 FP16 BF16
Gather: FP32 FP16 BF16 INT32 INT64 BOOL
GatherElements: FP32 FP16 BF16 INT32 INT64 BOOL
GatherND: FP32 FP16 BF16 INT32 INT64 BOOL
Gelu: FP32 FP16 BF16 INT8 INT32 INT64
Gemm: FP32 FP16 BF16
GlobalAveragePool: FP32 FP16 BF16
GlobalLpPool: FP32 FP16 BF16
GlobalMaxPool: FP32 FP16 BF16
Greater: FP32 FP16 BF16 INT32 INT64
GreaterOrEqual: FP32 FP16 BF16 INT32 INT64
GridSample: FP32 FP16
GroupNormalization: FP32 FP16 BF16
GRU: FP32 FP16 BF16
HardSigmoid: FP32 FP16 BF16
HardSwish: FP32 FP16 BF16
Hardmax: FP32 FP16 BF16
Identity: FP32 FP16 BF16 INT32 INT64 BOOL
If: FP32 FP16 BF16 INT32 INT64 BOOL
ImageScaler: FP32 FP16 BF16
InstanceNormalization: FP32 FP16 BF16
IsInf: FP32 FP16 BF16
IsNaN: FP32 FP16 BF16 INT32 INT64
LayerNormalization: FP32 FP16 BF16
LeakyRelu: FP32 FP16 BF16
Less: FP32 FP16 BF16 INT32 INT64
LessOrEqual: FP32 FP16 BF16 INT32 INT64
Log: FP32 FP16 BF16
LogSoftmax: FP32 FP16 BF16
Loop: FP32 FP16 BF16 INT32 INT64 BOOL
LRN: FP32 FP16 BF16
LSTM: FP32 FP16 BF16
LpNormalization: FP32 FP16 BF16
LpPool: FP32 FP16 BF16
MatMul: FP32 FP16 BF16
Max: FP32 FP16 BF16 INT32 INT64
MaxPool: FP32 FP16 BF16
Mean: FP32 FP16 BF16 FP8 INT32 INT64
MeanVarianceNormalization: FP32 FP16 BF16
Min: FP32 FP16 BF16 INT32 INT64
Mish: FP32 FP16
Mod: FP32 FP16 BF16 INT32 INT64
Mul: FP32 FP16 BF16 INT32 INT64
Neg: FP32 FP16 BF16 INT32 INT64
NonMaxSuppression: FP32 FP16
NonZero: FP32 FP16
Not: BOOL
OneHot: FP32 FP16 BF16 INT32 INT64 BOOL
Or: BOOL
Pad: FP32 FP16 BF16 INT32 INT64
ParametricSoftplus: FP32 FP16 BF16
Pow: FP32 FP16 BF16
PRelu: FP32 FP16 BF16
QuantizeLinear: FP32 FP16 BF16
RandomNormal: FP32 FP16 BF16
RandomNormalLike: FP32 FP16 BF16
RandomUniform: FP32 FP16 BF16
RandomUniformLike: FP32 FP16 BF16
Range: FP32 FP16 BF16 INT32 INT64
Reciprocal: FP32 FP16 BF16
ReduceL1: FP32 FP16 BF16 INT32 INT64
ReduceL2: FP32 FP16 BF16 INT32 INT64
ReduceLogSum: FP32 FP16 BF16 INT32 INT64
ReduceLogSumExp: FP32 FP16 BF16 INT32 INT64
ReduceMax: FP32 FP16 BF16 INT32 INT64
ReduceMean: FP32 FP16 BF16 INT32 INT64
ReduceMin: FP32 FP16 BF16 INT32 INT64
ReduceProd: FP32 FP16 BF16 INT32 INT64
ReduceSum: FP32 FP16 BF16 INT32 INT64
ReduceSumSquare: FP32 FP16 BF16 INT32 INT64
Relu: FP32 FP16 BF16 INT32 INT64
Reshape: FP32 FP16 BF16 INT32 INT64 BOOL
Resize: FP32 FP16 BF16
ReverseSequence: FP32 FP16 BF16 INT32 INT64 BOOL
RNN: FP32 FP16 BF16
RoiAlign: FP32 FP16
Round: FP32 FP16 BF16
ScaledTanh: FP32 FP16 BF16
Scan: FP32 FP16 BF16
Scatter: FP32 FP16 BF16 INT32 INT64
ScatterElements: FP32 FP16 BF16 INT32 INT64
ScatterND: FP32 FP16 BF16 INT32 INT64
Selu: FP32 FP16 BF16
Shape: FP32 FP16 BF16 INT32 INT64 BOOL
Shrink: FP32 FP16 BF16 INT32 INT64
Sigmoid: FP32 FP16 BF16
Sign: FP32 FP16 BF16 INT32 INT64
Sin: FP32 FP16 BF16
Sinh: FP32 FP16 BF16
Size: FP32 FP16 BF16 INT32 INT64 BOOL
Slice: FP32 FP16 BF16 INT32 INT64 BOOL
Softmax: FP32 FP16 BF16
Softplus: FP32 FP16 BF16
Softsign: FP32 FP16 BF16
SpaceToDepth: FP32 FP16 BF16 INT32 INT64
Split: FP32 FP16 BF16 INT32 INT64 BOOL
Sqrt: FP32 FP16 BF16
Squeeze: FP32 FP16 BF16 INT32 INT64 BOOL
Sub: FP32 FP16 BF16 INT32 INT64
Sum: FP32 FP16 BF16 INT32 INT64
Tan: FP32 FP16 BF16
Tanh: FP32 FP16 BF16
ThresholdedRelu: FP32 FP16 BF16
Tile: FP32 FP16 BF16 INT32 INT64 BOOL
TopK: FP32 FP16 BF16 INT32 INT64
Transpose: FP32 FP16 BF16 INT32 INT64 BOOL
Trilu: FP32 FP16 BF16 INT32 INT64 BOOL
Unsqueeze: FP32 FP16 BF16 INT32 INT64 BOOL
Upsample: FP32 FP16 BF16
Where: FP32 FP16 BF16 INT32 INT64 BOOL
Xor: BOOL
"""

# What TensorRT 10.15's matrix (and 11.0's changelog) changes against 10.3's.
_CHANGES_11 = """
Attention: FP32 FP16 BF16 INT8 FP8
BlackmanWindow: FP32 FP16
Constant: FP32 FP16 BF16 FP8 FP4 INT4 INT32 INT64 BOOL
ConstantOfShape: FP32 FP16 BF16 FP8 FP4 INT4 INT32 INT64 BOOL
DequantizeLinear: INT8 FP8 FP4 INT4
HammingWindow: FP32 FP16
HannWindow: FP32 FP16
Pow: FP32 FP16 BF16 INT32 INT64
RMSNormalization: FP32 FP16 BF16
RotaryEmbedding: FP32 FP16 BF16
STFT: FP32
Swish: ?
TensorScatter: FP32 FP16 BF16 INT32
"""


def _parse(text: str) -> dict[str, frozenset[str] | None]:
    table: dict[str, frozenset[str] | None] = {}
    for line in text.strip().splitlines():
        op, types = (part.strip() for part in line.split(":", 1))
        table[op] = None if types == "?" else frozenset(types.split())
    return table


# target -> operator -> the data types its main input may have (None: supported, types undocumented)
MATRIX: dict[str, dict[str, frozenset[str] | None]] = {"10.3": _parse(_MATRIX_10_3)}
MATRIX["11"] = {**MATRIX["10.3"], **_parse(_CHANGES_11)}
