"""A DoRL model with pretrained encoder and decoder weights where they are available."""

from __future__ import annotations

from pathlib import Path

from dorl.checkpoints import LoadReport, load_decoder, load_sam_encoder, load_tinyvit_weights
from dorl.config import ModelConfig
from dorl.errors import ArtifactError
from dorl.models.dorl_model import DoRLModel
from dorl.models.registry import build_model
from dorl.paths import DECODER_WEIGHTS, TINYVIT_WEIGHTS, find_weights


def build_pretrained(
    config: ModelConfig,
    checkpoint: str | Path | None = None,
    decoder: str | Path | None = None,
    require_weights: bool = False,
) -> tuple[DoRLModel, dict[str, str]]:
    """Build the model and load what pretrained weights exist.

    Args:
        config: the model configuration.
        checkpoint: an official SAM checkpoint for sam_vit_b/l/h (encoder, and decoder where
            `decoder` is not given); for tinyvit_5m a safetensors file (default: the shared one).
        decoder: prompt-encoder/mask-decoder weights (default: the checkpoint for SAM, else the
            shared safetensors file).
        require_weights: raise instead of keeping random weights when none are found.

    Returns:
        The model (train mode) and a short description of what was loaded per part.
    """
    model = build_model(config)
    loaded: dict[str, str] = {}
    if config.encoder == "tinyvit_5m":
        path = checkpoint or find_weights(TINYVIT_WEIGHTS)
        if path is not None:
            load_tinyvit_weights(model.encoder, path)
            loaded["encoder"] = str(path)
    elif checkpoint is not None:
        load_sam_encoder(model.encoder, checkpoint)
        loaded["encoder"] = str(checkpoint)
    decoder_path = decoder or (checkpoint if config.encoder.startswith("sam_vit") else None) \
        or find_weights(DECODER_WEIGHTS)
    if decoder_path is not None:
        report: LoadReport = load_decoder(model.mask_decoder, decoder_path)
        loaded["decoder"] = f"{decoder_path}: {report.summary()}"
    if require_weights and "encoder" not in loaded:
        raise ArtifactError(f"no pretrained weights found for encoder {config.encoder}: pass --checkpoint PATH.")
    return model, loaded
