"""Node groups, the nodes every INT8 graph keeps float, and the per-node cost, on the small graph."""

from __future__ import annotations

from pathlib import Path

import pytest
from int8_graphs import mini_dorl, sample_cells

from dorl.errors import ConfigError
from dorl.export.int8_groups import (
    attention_matmuls,
    excluded_nodes,
    group_assignment,
    group_of,
    head_nodes,
    matching_nodes,
    module_path,
    node_groups,
    node_macs,
    output_producers,
)
from dorl.export.parity import prepare_images


def test_groups_are_blocks_and_top_level_modules() -> None:
    assert group_of("encoder.layers.2.blocks.3.attn.qkv") == "encoder.layers.2.blocks.3"
    assert group_of("encoder.layers.2.downsample.conv1") == "encoder.layers.2"
    assert group_of("encoder.blocks.7") == "encoder.blocks.7" and group_of("cae.blocks.0.mlp.0") == "cae.blocks.0"
    assert group_of("encoder.neck.0") == "encoder" and group_of("") == "other"
    model = mini_dorl()
    assert module_path(model.graph.node[5]) == "encoder.layers.0.blocks.0.mlp.fc1"
    assert node_groups(model) == {
        "encoder": ["node_patches"],
        "encoder.layers.0.blocks.0": ["node_hidden", "node_hidden2", "node_scores", "node_values", "node_attended"],
        "encoder.layers.0.blocks.1": ["node_wide", "node_narrow"],
        "cae": ["node_cae_mlp"],  # a block of one matmul joins its parent's group
        "head": ["node_logits"],
        "mask_decoder": ["node_mask_wide", "node_mask_hidden", "node_mask_tokens"],
    }
    assignment = group_assignment(model)
    assert assignment["node_cae_tokens"] == "cae" and assignment["node_normed"] == "encoder.layers.0.blocks.0"


def test_always_float_attention_head_and_output_matmuls() -> None:
    model = mini_dorl()
    assert attention_matmuls(model) == ["node_scores", "node_attended"]  # Q·Kᵀ and softmax·V: both inputs activations
    assert output_producers(model) == ["node_logits", "node_mask_tokens"]  # through the mask's bias Add
    assert head_nodes(model) == ["node_logits"]
    assert excluded_nodes(model) == ["node_scores", "node_attended", "node_logits", "node_mask_tokens"]
    assert matching_nodes(model, ["encoder.layers.*"]) == ["node_hidden", "node_hidden2", "node_scores", "node_values",
                                                            "node_attended", "node_wide", "node_narrow"]
    assert "node_patches" in excluded_nodes(model, ["node_patch*"])
    with pytest.raises(ConfigError, match="--exclude 'enocder.layers.\\*' matches no quantizable node"):
        excluded_nodes(model, ["node_patch*", "enocder.layers.*"])  # a typo would quantize what it meant to keep
    with pytest.raises(ConfigError, match="keeps every quantizable node in float"):
        excluded_nodes(model, ["*"])


def test_macs_come_from_one_real_run(tmp_path: Path) -> None:
    model = mini_dorl()
    image = prepare_images(sample_cells("pbc")[:1], 224)
    macs = node_macs(model, image, tmp_path / "exposed.onnx")
    assert macs["node_patches"] == 8 * 14 * 14 * 3 * 16 * 16  # Cout × H × W × (Cin × kernel)
    assert macs["node_hidden"] == 196 * 16 * 8  # tokens × N × K
    assert macs["node_scores"] == 196 * 196 * 16 and macs["node_logits"] == 5 * 16
    assert len(model.graph.output) == 4  # the exposed copy is a copy
