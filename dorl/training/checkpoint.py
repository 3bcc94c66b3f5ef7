"""Stage checkpoints: the weights a stage trained (safetensors) and its state (JSON), never pickle.

`<out>/checkpoints/<stage>/` holds `weights.safetensors` (only the parts of the model the stage
changed, e.g. `encoder.*` and `mask_decoder.*` for seg) and `state.json`: the stage, the model
config after it, the stage's config, its metrics, the sha256 of the weights, and the sha256
of the previous stage's weights it was built on, so that a later stage trained on an earlier
stage that has since changed is not reused.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from dorl.artifacts import sha256_file
from dorl.errors import ArtifactError

WEIGHTS = "weights.safetensors"
STATE = "state.json"
FORMAT = 1


@dataclass
class StageCheckpoint:
    """A finished stage read back from disk."""

    stage: str
    folder: Path
    state: dict[str, Any]
    weights: dict[str, torch.Tensor]

    @property
    def sha256(self) -> str:
        return str(self.state["weights_sha256"])


def stage_folder(out_dir: str | Path, stage: str) -> Path:
    return Path(out_dir) / "checkpoints" / stage


def save_stage(out_dir: str | Path, stage: str, parts: dict[str, nn.Module], state: dict[str, Any]) -> StageCheckpoint:
    """Write a stage checkpoint.

    Args:
        out_dir: the run's output folder.
        stage: "seg", "cae" or "head".
        parts: prefix -> module whose weights to keep (e.g. {"cae": model.cae}).
        state: JSON-ready description (model_config, stage_config, metrics, parent).

    Returns:
        The checkpoint as written.
    """
    from safetensors.torch import save_file

    folder = stage_folder(out_dir, stage)
    folder.mkdir(parents=True, exist_ok=True)
    weights = {f"{prefix}.{k}": v.detach().to("cpu").contiguous().clone()
               for prefix, module in parts.items() for k, v in module.state_dict().items()}
    (folder / STATE).unlink(missing_ok=True)  # a half-written checkpoint then reads as absent, not as valid
    save_file(weights, str(folder / WEIGHTS), metadata={"dorl_kind": "stage-checkpoint", "stage": stage})
    full = {"format": FORMAT, "stage": stage, **state, "weights_sha256": sha256_file(folder / WEIGHTS)}
    (folder / STATE).write_text(json.dumps(full, indent=2) + "\n")
    return StageCheckpoint(stage, folder, full, weights)


def _corrupt(folder: Path, reason: str) -> ArtifactError:
    return ArtifactError(f"the {folder.name} checkpoint in {folder} is unusable ({reason}): delete that folder, "
                         "or run again with --no-resume to train the stage afresh.")


def load_stage(out_dir: str | Path, stage: str) -> StageCheckpoint | None:
    """Read a stage checkpoint; None when the stage has none.

    Raises:
        ArtifactError: the state or weights are unreadable, or the weights' sha256 differs.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    folder = stage_folder(out_dir, stage)
    if not (folder / STATE).is_file():
        return None
    try:
        state = json.loads((folder / STATE).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise _corrupt(folder, f"state.json is not valid JSON: {exc}") from exc
    if not isinstance(state, dict) or state.get("format") != FORMAT or state.get("stage") != stage:
        raise _corrupt(folder, "state.json was not written by this version of dorl for this stage")
    if not (folder / WEIGHTS).is_file():
        raise _corrupt(folder, f"{WEIGHTS} is missing")
    if sha256_file(folder / WEIGHTS) != state.get("weights_sha256"):
        raise _corrupt(folder, f"{WEIGHTS} changed after it was written (sha256 differs)")
    try:
        weights = load_file(str(folder / WEIGHTS))
    except (SafetensorError, OSError, ValueError) as exc:
        raise _corrupt(folder, f"{WEIGHTS} cannot be read: {exc}") from exc
    return StageCheckpoint(stage, folder, state, weights)


def restore(model: nn.Module, checkpoint: StageCheckpoint) -> None:
    """Load a checkpoint's weights into the parts of `model` they came from (e.g. `model.cae`).

    Raises:
        ArtifactError: the weights do not fit the model (another config or dorl version).
    """
    parts: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in checkpoint.weights.items():
        prefix, _, rest = key.partition(".")
        parts.setdefault(prefix, {})[rest] = value
    for prefix, state in parts.items():
        module = getattr(model, prefix, None)
        if not isinstance(module, nn.Module):
            raise _corrupt(checkpoint.folder, f"it holds weights of {prefix!r}, which the model lacks")
        try:
            module.load_state_dict(state, strict=True)
        except RuntimeError as exc:
            raise _corrupt(checkpoint.folder, f"its {prefix} weights do not fit the model: {str(exc)[:200]}") from exc
