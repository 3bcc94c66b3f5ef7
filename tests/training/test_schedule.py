import itertools

import pytest
import torch

from dorl.training.schedule import warmup_cosine, warmup_cosine_scheduler


def test_linear_warmup_then_cosine_to_zero() -> None:
    factors = [warmup_cosine(s, total_steps=110, warmup_steps=10) for s in range(110)]
    assert factors[0] == pytest.approx(0.1) and factors[9] == pytest.approx(1.0)
    assert factors[10] == pytest.approx(1.0) and factors[60] == pytest.approx(0.5)
    assert all(a >= b for a, b in itertools.pairwise(factors[10:]))
    assert warmup_cosine(110, 110, 10) == pytest.approx(0.0)
    assert warmup_cosine(0, 5, 0) == pytest.approx(1.0)


def test_scheduler_drives_the_optimiser() -> None:
    optimizer = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=1e-3)
    scheduler = warmup_cosine_scheduler(optimizer, total_steps=4, warmup_steps=2)
    lrs = []
    for _ in range(4):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert lrs == pytest.approx([5e-4, 1e-3, 1e-3, 5e-4])
