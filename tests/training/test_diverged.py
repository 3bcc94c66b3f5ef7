import pytest

from dorl.errors import TrainingError
from dorl.training.diverged import check_loss


def test_a_finite_loss_passes_and_a_nan_or_infinite_one_names_stage_step_and_rate() -> None:
    assert check_loss("seg", 0.25, 3, 10, 1e-3) == 0.25
    for bad in (float("nan"), float("inf")):
        with pytest.raises(TrainingError, match=r"the cae loss became (nan|inf) at step 7 of 152 \(learning rate 0.0005\)"):
            check_loss("cae", bad, 7, 152, 5e-4)
