import json
import subprocess
import sys

import torch

from dorl.config import ModelConfig
from dorl.models.registry import build_model

SMALL = ModelConfig(encoder="sam_vit_test", cae_depth=2, cae_decoder_depth=1)


def test_outputs_have_documented_shapes(cell_batch):
    model = build_model(SMALL).eval()
    images = torch.from_numpy(cell_batch[:2]).permute(0, 3, 1, 2).float()
    with torch.no_grad():
        out = model(images)
    assert out["logits"].shape == (2, 5) and out["probs"].shape == (2, 5)
    assert out["feature"].shape == (2, 96) and out["mask_logits"].shape == (2, 2, 56, 56)
    assert torch.allclose(out["probs"].sum(-1), torch.ones(2))
    assert torch.allclose(out["probs"], out["logits"].softmax(-1))


def test_normalisation_uses_config_mean_and_std():
    model = build_model(ModelConfig(encoder="sam_vit_test", cae_depth=1, cae_decoder_depth=1,
                                    pixel_mean=(10.0, 20.0, 30.0), pixel_std=(2.0, 4.0, 5.0)))
    x = torch.full((1, 3, 2, 2), 40.0)
    assert model.normalise(x)[0, :, 0, 0].tolist() == [15.0, 5.0, 2.0]


def test_vit_b_batch_of_2_fits_in_4_gb():
    code = (
        "import resource, torch, json\n"
        "from dorl.config import ModelConfig\n"
        "from dorl.models.registry import build_model\n"
        "m = build_model(ModelConfig(encoder='sam_vit_b')).eval()\n"
        "with torch.no_grad(): out = m(torch.rand(2, 3, 224, 224) * 255)\n"
        "print(json.dumps({'rss_mb': resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,"
        " 'shapes': {k: list(v.shape) for k, v in out.items()}}))\n"
    )
    result = json.loads(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                                       check=True).stdout.strip().splitlines()[-1])
    assert result["shapes"]["feature"] == [2, 768] and result["shapes"]["mask_logits"] == [2, 2, 56, 56]
    assert result["rss_mb"] < 4096, result
