import dataclasses

import pytest

from dorl.config import ModelConfig
from dorl.errors import ConfigError
from dorl.training.config import (
    CPU_DEVIATIONS,
    CaeTrainConfig,
    HeadTrainConfig,
    SegTrainConfig,
    TrainConfig,
    cpu_schedule,
    paper_schedule,
    train_config_from_dict,
    train_config_to_dict,
)


def test_defaults_are_the_papers() -> None:
    config = paper_schedule()
    assert (config.seg.epochs, config.seg.warmup_epochs, config.seg.batch_size) == (150, 10, 32)
    assert (config.seg.lr, config.seg.weight_decay, config.seg.ce_weight, config.seg.dice_weight) == (1e-4, 0.1, 0.2, 0.8)
    assert (config.cae.epochs, config.cae.warmup_iters, config.cae.batch_size) == (300, 500, 64)
    assert (config.cae.lr, config.cae.weight_decay, config.cae.ssim_fraction) == (1e-4, 0.05, 1.0)
    assert (config.cae.ssim_weight, config.cae.latent_weight, config.cae.mmd_weight, config.cae.rec_weight) == (1, 2, 1, 0.5)
    assert (config.model.cae_depth, config.model.cae_decoder_depth) == (12, 4)
    # the reference scores SVM, logistic regression and MLP heads; logreg is the best measured (README)
    assert config.head.kind == "logreg" and config.model.head == "linear" and config.seed == 1234


def test_cpu_schedule_is_valid_and_names_its_deviations() -> None:
    config = cpu_schedule()
    assert config.schedule == "cpu" and config.model.encoder == "tinyvit_5m"
    assert config.seg.epochs < 150 and config.cae.epochs < 300 and config.cae.ssim_fraction < 1
    assert any("cae" in d for d in CPU_DEVIATIONS) and any("seg" in d for d in CPU_DEVIATIONS)
    helps = {f.name: f.metadata["help"] for f in dataclasses.fields(SegTrainConfig)}
    assert all("CPU" in helps[name] for name in ("epochs", "batch_size", "max_train_images", "max_holdout_images"))
    assert cpu_schedule(ModelConfig(encoder="sam_vit_b")).model.encoder == "sam_vit_b"


@pytest.mark.parametrize("make", [
    lambda: SegTrainConfig(epochs=-1),
    lambda: SegTrainConfig(holdout_fraction=1.0),
    lambda: SegTrainConfig(pixel_stats="imagenet"),
    lambda: SegTrainConfig(ce_weight=0, dice_weight=0),
    lambda: SegTrainConfig(max_train_images=1),
    lambda: CaeTrainConfig(batch_size=1),
    lambda: CaeTrainConfig(mmd_weight=-1),
    lambda: CaeTrainConfig(ssim_fraction=0),
    lambda: HeadTrainConfig(kind="forest"),
    lambda: TrainConfig(head=HeadTrainConfig(kind="mlp")),  # the model's head module would be linear
])
def test_invalid_values_raise_a_config_error(make) -> None:
    with pytest.raises(ConfigError):
        make()


def test_with_head_keeps_the_model_head_in_step() -> None:
    config = TrainConfig().with_head("mlp")
    assert config.model.head == "mlp" and config.model.head_hidden == config.head.hidden == 100
    assert TrainConfig().with_head("logreg").model.head == "linear"


def test_round_trip_through_a_dict() -> None:
    config = cpu_schedule().with_head("logreg")
    assert train_config_from_dict(train_config_to_dict(config)) == config
    with pytest.raises(ConfigError, match="unknown TrainConfig fields"):
        train_config_from_dict({**train_config_to_dict(config), "extra": 1})


def test_cell_framing_is_the_default_and_old_records_read_as_whole() -> None:
    assert cpu_schedule().framing.input == "cell" and paper_schedule().framing.input == "cell"
    assert cpu_schedule().framing.mask == "pseudo"
    old = train_config_to_dict(cpu_schedule())
    del old["framing"]  # written before framing was recorded: those runs always encoded the whole image
    assert train_config_from_dict(old).framing.input == "whole"


def test_flips_are_the_recorded_default_and_old_records_read_as_none() -> None:
    assert cpu_schedule().tta == paper_schedule().tta == "flips"
    old = train_config_to_dict(cpu_schedule())
    del old["tta"]  # written before the analyzer averaged views: those models ran one view
    assert train_config_from_dict(old).tta == "none"
    with pytest.raises(ConfigError, match="unknown test-time augmentation 'rotations'"):
        dataclasses.replace(cpu_schedule(), tta="rotations")
