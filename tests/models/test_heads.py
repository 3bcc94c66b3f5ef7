import pytest
import torch

from dorl.models.heads import LinearHead, MLPHead, build_head, fold_scaler


@pytest.mark.parametrize("kind", ["linear", "mlp"])
def test_folded_scaler_equals_scaling_first(kind):
    torch.manual_seed(0)
    head = build_head(kind, 16, 5, hidden=7)
    x = torch.randn(10, 16) * 3 + 2
    mean, scale = x.mean(0), x.std(0)
    with torch.no_grad():
        expected = head((x - mean) / scale)
        fold_scaler(head.first, mean, scale)
        assert torch.allclose(head(x), expected, atol=1e-5)


def test_head_kinds():
    assert isinstance(build_head("linear", 4, 2), LinearHead)
    assert isinstance(build_head("mlp", 4, 2), MLPHead)
    with pytest.raises(ValueError):
        build_head("tree", 4, 2)
