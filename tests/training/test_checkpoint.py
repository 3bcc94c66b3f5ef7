import json
from pathlib import Path

import pytest
import torch
from torch import nn

from dorl.errors import ArtifactError
from dorl.training.checkpoint import STATE, WEIGHTS, load_stage, restore, save_stage


class Pair(nn.Module):
    def __init__(self, width: int = 4) -> None:
        super().__init__()
        self.cae = nn.Linear(width, 3)
        self.head = nn.Linear(3, 2)


def test_round_trip_restores_only_the_saved_parts(tmp_path: Path) -> None:
    torch.manual_seed(0)
    trained = Pair()
    saved = save_stage(tmp_path, "cae", {"cae": trained.cae}, {"metrics": {"loss": [1.0, 0.5]}, "parent": None})
    assert (tmp_path / "checkpoints" / "cae" / WEIGHTS).is_file() and len(saved.sha256) == 64
    loaded = load_stage(tmp_path, "cae")
    assert loaded is not None and loaded.state["metrics"] == {"loss": [1.0, 0.5]} and loaded.sha256 == saved.sha256
    fresh = Pair()
    head_before = fresh.head.weight.clone()
    restore(fresh, loaded)
    assert torch.equal(fresh.cae.weight, trained.cae.weight) and torch.equal(fresh.head.weight, head_before)
    assert load_stage(tmp_path, "head") is None


def test_changed_truncated_or_foreign_checkpoints_raise_a_clear_error(tmp_path: Path) -> None:
    save_stage(tmp_path, "seg", {"cae": Pair().cae}, {})
    folder = tmp_path / "checkpoints" / "seg"
    weights = (folder / WEIGHTS).read_bytes()
    (folder / WEIGHTS).write_bytes(weights[:-8] + b"\x00" * 8)
    with pytest.raises(ArtifactError, match="sha256 differs.*--no-resume"):
        load_stage(tmp_path, "seg")
    (folder / WEIGHTS).unlink()
    with pytest.raises(ArtifactError, match="is missing"):
        load_stage(tmp_path, "seg")
    (folder / STATE).write_text("{not json")
    with pytest.raises(ArtifactError, match="not valid JSON"):
        load_stage(tmp_path, "seg")
    (folder / STATE).write_text(json.dumps({"format": 1, "stage": "cae"}))
    with pytest.raises(ArtifactError, match="not written by this version"):
        load_stage(tmp_path, "seg")


def test_weights_that_do_not_fit_the_model_are_refused(tmp_path: Path) -> None:
    save_stage(tmp_path, "cae", {"cae": Pair(width=4).cae}, {})
    loaded = load_stage(tmp_path, "cae")
    with pytest.raises(ArtifactError, match="do not fit"):
        restore(Pair(width=5), loaded)
    save_stage(tmp_path, "head", {"decoder": nn.Linear(2, 2)}, {})
    with pytest.raises(ArtifactError, match="lacks"):
        restore(Pair(), load_stage(tmp_path, "head"))
