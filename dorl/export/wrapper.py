"""The export-only wrapper: uint8 NHWC cells in, the four named outputs out.

Like segment-anything's `SamOnnxModel`, it is kept apart from the model: the deployed graph
takes what a camera crop is after resizing (uint8 [B,S,S,3], RGB) and does the cast (first), the
NHWC→NCHW transpose and the normalisation in-graph (the model normalises in `forward`). The
graph's tensor names are those of `dorl.contract`; the runtime reads them from the manifest.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from dorl.contract import BATCH_DIM, INPUT_NAME, OUTPUT_NAMES
from dorl.models.dorl_model import DoRLModel


class ExportWrapper(nn.Module):
    """uint8 [B,S,S,3] → (logits [B,C], probs [B,C], feature [B,D], mask_logits [B,M,S/4,S/4])."""

    def __init__(self, model: DoRLModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        # Cast first: TensorRT's ONNX parser accepts UINT8 only as a network input consumed by a Cast,
        # so a Transpose of the uint8 images (a UINT8 intermediate) would be rejected at parse time.
        x = images.to(torch.float32).permute(0, 3, 1, 2)
        outputs = self.model(x)
        return tuple(outputs[name] for name in OUTPUT_NAMES)


def io_specs(model: DoRLModel) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The manifest's `inputs` and `outputs` (name, dtype, shape; "batch" is dynamic)."""
    config = model.config
    size = config.image_size
    mask = size // 4
    inputs = [{"name": INPUT_NAME, "dtype": "uint8", "shape": [BATCH_DIM, size, size, 3]}]
    shapes = {
        "logits": [BATCH_DIM, config.num_classes],
        "probs": [BATCH_DIM, config.num_classes],
        "feature": [BATCH_DIM, model.feature_dim],
        "mask_logits": [BATCH_DIM, config.num_mask_channels, mask, mask],
    }
    outputs = [{"name": name, "dtype": "float32", "shape": shapes[name]} for name in OUTPUT_NAMES]
    return inputs, outputs
