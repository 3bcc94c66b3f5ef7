"""Training configurations: one frozen dataclass per stage, and the whole run.

Defaults are DoRL's GPU schedule (DESIGN.md, read from the paper's code). `cpu_schedule()`
returns the schedule sized (from measured per-step costs) for a train + evaluate run on the
shared white-blood-cell data of about 45 minutes on 2 quiet CPU cores; each field it changes
says so in its help, and `CPU_DEVIATIONS` lists them for reports.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from dorl.config import ModelConfig, _check
from dorl.config import from_dict as model_from_dict
from dorl.contract import check_tta
from dorl.data.framing import FramingConfig
from dorl.errors import ConfigError

SSIM_MASKS = ("best", "segmenter")
HEAD_KINDS = ("svm", "logreg", "mlp")  # the names the evaluation protocol uses
HEAD_MODULES = {"svm": "linear", "logreg": "linear", "mlp": "mlp"}
PIXEL_STATS = ("train", "sam")
# What L_mmd aligns across domains: DoRL's z (a projection of the decoded tokens), or the CLS feature
# the head reads (its standardised domain means; with CORAL also its covariances).
ALIGNMENTS = ("z", "cls_mean", "cls_coral")
STAGES = ("seg", "cae", "head")


@dataclass(frozen=True)
class SegTrainConfig:
    """Stage 1: LoRA-SAM segmentation (LoRA on the encoder, prompt encoder + mask decoder)."""

    epochs: int = field(default=150, metadata={"help": "passes over the training images (CPU: 4)"})
    warmup_epochs: float = field(default=10, metadata={"help": "linear warm-up, in epochs (CPU: 1)"})
    batch_size: int = field(default=32, metadata={"help": "images per step (CPU: 8)"})
    lr: float = field(default=1e-4, metadata={"help": "AdamW peak learning rate (CPU: 1e-3)"})
    weight_decay: float = field(default=0.1, metadata={"help": "AdamW weight decay"})
    ce_weight: float = field(default=0.2, metadata={"help": "weight of cross-entropy on the 56x56 logits"})
    dice_weight: float = field(default=0.8, metadata={"help": "weight of the soft Dice loss"})
    dice_per_image: bool = field(default=False, metadata={
        "help": "Dice per image, then averaged (every cell weighs alike); False: over the whole batch (SAMed)"})
    max_train_images: int | None = field(default=None, metadata={
        "help": "train on at most this many images, spread over the domains (None: all; CPU: 64)"})
    holdout_fraction: float = field(default=0.2, metadata={"help": "images held out to measure mask IoU/Dice"})
    max_holdout_images: int | None = field(default=None, metadata={
        "help": "measure on at most this many held-out images (None: all; CPU: 40)"})
    use_expert_masks: bool = field(default=True, metadata={
        "help": "train on expert masks where a domain has them (else pseudo masks everywhere)"})
    pixel_stats: str = field(default="train", metadata={
        "help": "'train': pixel mean/std computed on the training images (DoRL); 'sam': SAM's, which the "
                "pretrained encoder was trained with (CPU: 'sam')"})
    flip: bool = field(default=True, metadata={"help": "random horizontal and vertical flips"})
    rotate: bool = field(default=True, metadata={"help": "random 90-degree rotations"})
    jitter: float = field(default=0.2, metadata={"help": "colour jitter strength (brightness, contrast, saturation)"})
    hue: float = field(default=0.05, metadata={"help": "colour jitter of the hue (fraction of the colour wheel)"})

    def __post_init__(self) -> None:
        _check(self.epochs >= 0 and self.batch_size >= 1, "seg epochs must be >= 0 and batch_size >= 1.")
        _check(0 <= self.warmup_epochs, f"seg warmup_epochs must be >= 0, got {self.warmup_epochs}.")
        _check(self.lr > 0 and self.weight_decay >= 0, "seg lr must be positive and weight_decay >= 0.")
        _check(self.ce_weight >= 0 and self.dice_weight >= 0 and self.ce_weight + self.dice_weight > 0,
               "seg ce_weight and dice_weight must be >= 0 and not both 0.")
        _check(0 < self.holdout_fraction < 1, f"holdout_fraction must be in (0, 1), got {self.holdout_fraction}.")
        _check(self.pixel_stats in PIXEL_STATS, f"pixel_stats must be one of {PIXEL_STATS}, got {self.pixel_stats!r}.")
        _check(0 <= self.jitter < 1 and 0 <= self.hue <= 0.5, "jitter must be in [0, 1) and hue in [0, 0.5].")
        for name in ("max_train_images", "max_holdout_images"):
            value = getattr(self, name)
            _check(value is None or value >= 2, f"seg {name} must be None or at least 2, got {value}.")


@dataclass(frozen=True)
class CaeTrainConfig:
    """Stage 2: the cross-domain autoencoder on cached pre-neck tokens of every domain."""

    epochs: int = field(default=300, metadata={"help": "passes over the pooled tokens (CPU: 4)"})
    warmup_iters: int = field(default=500, metadata={"help": "linear warm-up, in steps (CPU: 10)"})
    batch_size: int = field(default=64, metadata={"help": "token maps per step, all domains in each (CPU: 32)"})
    lr: float = field(default=1e-4, metadata={"help": "AdamW peak learning rate (CPU: 5e-4)"})
    weight_decay: float = field(default=0.05, metadata={"help": "AdamW weight decay"})
    ssim_weight: float = field(default=1.0, metadata={"help": "weight of L_ssim = 1 - SSIM(decoded, target)"})
    latent_weight: float = field(default=2.0, metadata={"help": "weight of (mmd_weight*L_mmd + rec_weight*L_rec)"})
    mmd_weight: float = field(default=1.0, metadata={"help": "mean-matching weight (0: the no-alignment baseline)"})
    alignment: str = field(default="z", metadata={
        "help": f"what L_mmd aligns, one of {ALIGNMENTS}: 'z' = Linear(GAP(decoded tokens)) (DoRL); 'cls_mean' / "
                "'cls_coral': the unmasked CLS feature the head reads (means; means and covariances)"})
    rec_weight: float = field(default=0.5, metadata={"help": "weight of the token reconstruction MSE"})
    ssim_fraction: float = field(default=1.0, metadata={
        "help": "share of each batch whose image is decoded for L_ssim (CPU: 0.25; the decoder is most of a step)"})
    min_per_domain: int = field(default=2, metadata={"help": "fewest token maps of each domain in a batch"})
    ssim_masks: str = field(default="best", metadata={
        "help": "masks the SSIM targets are cut from: 'best' = the expert's where given, else the pseudo mask, else "
                "the segmenter's on domains where its held-out IoU >= segmenter_min_iou, else none (whole image); "
                "'segmenter' = the segmenter's everywhere (DoRL's code)"})
    segmenter_min_iou: float = field(default=0.85, metadata={
        "help": "held-out IoU the segmenter must reach on a domain before its masks may cut that domain's targets"})
    encode_batch_size: int = field(default=32, metadata={"help": "images per encoder pass when caching tokens"})

    def __post_init__(self) -> None:
        _check(self.epochs >= 0 and self.batch_size >= 2, "cae epochs must be >= 0 and batch_size >= 2.")
        _check(self.warmup_iters >= 0 and self.encode_batch_size >= 1, "warmup_iters and encode_batch_size invalid.")
        _check(self.lr > 0 and self.weight_decay >= 0, "cae lr must be positive and weight_decay >= 0.")
        weights = (self.ssim_weight, self.latent_weight, self.mmd_weight, self.rec_weight)
        _check(all(w >= 0 for w in weights), f"CAE loss weights must be >= 0, got {weights}.")
        _check(self.min_per_domain >= 1, "min_per_domain must be at least 1.")
        _check(0 < self.ssim_fraction <= 1, f"ssim_fraction must be in (0, 1], got {self.ssim_fraction}.")
        _check(self.alignment in ALIGNMENTS, f"alignment must be one of {ALIGNMENTS}, got {self.alignment!r}.")
        _check(self.ssim_masks in SSIM_MASKS, f"ssim_masks must be one of {SSIM_MASKS}, got {self.ssim_masks!r}.")
        _check(0 <= self.segmenter_min_iou <= 1, f"segmenter_min_iou must be in [0, 1], got {self.segmenter_min_iou}.")


@dataclass(frozen=True)
class HeadTrainConfig:
    """Stage 3: the classifier on the anchor domain's CAE CLS features (scaler fit on it)."""

    kind: str = field(default="logreg", metadata={
        "help": f"one of {HEAD_KINDS} (the reference scores all of them); logreg, the default, is the best row of "
                "dorl evaluate's table; svm is LinearSVC (one-vs-rest)"})
    c: float = field(default=1.0, metadata={"help": "inverse regularisation (svm, logreg)"})
    max_iter: int = field(default=5000, metadata={"help": "solver iterations (MLP: epochs)"})
    hidden: int = field(default=100, metadata={"help": "MLP hidden units"})
    early_stopping: bool = field(default=True, metadata={"help": "MLP: stop on a 10 % validation split"})

    def __post_init__(self) -> None:
        _check(self.kind in HEAD_KINDS, f"unknown head {self.kind!r}; choose one of {', '.join(HEAD_KINDS)}.")
        _check(self.c > 0 and self.max_iter >= 1 and self.hidden >= 1, "head c, max_iter and hidden must be positive.")


@dataclass(frozen=True)
class TrainConfig:
    """A whole training run: the model and the three stages."""

    model: ModelConfig = field(default_factory=ModelConfig)
    seg: SegTrainConfig = field(default_factory=SegTrainConfig)
    cae: CaeTrainConfig = field(default_factory=CaeTrainConfig)
    head: HeadTrainConfig = field(default_factory=HeadTrainConfig)
    framing: FramingConfig = field(default_factory=lambda: FramingConfig(input="cell"), metadata={
        "help": "the encoder's input: the cell cut out with its pseudo mask (default), or the whole image"})
    tta: str = field(default="flips", metadata={
        "help": "test-time augmentation the deployed analyzer applies by default (recorded in the bundle): flips "
                "(the best row of `dorl evaluate`'s table) or none"})
    seed: int = field(default=1234, metadata={"help": "seed of splits, sampling and initialisation"})
    schedule: str = field(default="paper", metadata={"help": "name of the schedule, for reports"})

    def __post_init__(self) -> None:
        check_tta(self.tta)
        want = HEAD_MODULES[self.head.kind]
        _check(self.model.head == want, f"head {self.head.kind!r} needs ModelConfig(head={want!r}), got "
                                        f"{self.model.head!r}: build the config with `with_head`.")

    def with_head(self, kind: str) -> TrainConfig:
        """This config with head `kind` (and the model's head module to match)."""
        head = dataclasses.replace(self.head, kind=kind)
        model = dataclasses.replace(self.model, head=HEAD_MODULES[head.kind], head_hidden=head.hidden)
        return dataclasses.replace(self, head=head, model=model)


# Every change of the CPU schedule from the paper's, for the config's help and for reports.
CPU_DEVIATIONS = (
    ("seg: 4 epochs over 64 images (spread over the domains), batch 8, 1 warm-up epoch, peak lr 1e-3; IoU/Dice "
     "on 40 held-out images (paper: 150 epochs, batch 32, 10 warm-up epochs, lr 1e-4)"),
    ("cae: 4 epochs (152 steps on the 1,201 cells of pbc+bccd+jtsc; the token reconstruction loss still falls "
     "~9 % in the last epoch there), batch 32, 10 warm-up steps, peak lr 5e-4 (paper: 300 epochs, batch 64, "
     "500 steps, 1e-4)"),
    "cae: 4 encoder blocks and 1 feature-decoder block (paper: 12 and 4)",
    "cae: the image (and L_ssim) is decoded for a random quarter of each batch (paper: all of it)",
    ("seg: SAM's pixel mean/std kept (paper: computed on the training set); after a 4-epoch fine-tune the "
     "encoder is still the pretrained one, and new statistics cost it (pooled tokens, per-domain standardised, "
     "pbc->jtsc 51.6 % with SAM's vs 19.8 % with the training set's)"),
)


def cpu_schedule(model: ModelConfig | None = None) -> TrainConfig:
    """The schedule sized for a train + evaluate run of about 45 minutes on 2 CPU cores (see CPU_DEVIATIONS).

    Args:
        model: the model config to start from (default: DoRL's with TinyViT); its CAE depths are
            reduced to those of the CPU schedule.

    Returns:
        The CPU training config.
    """
    model = dataclasses.replace(model or ModelConfig(), cae_depth=4, cae_decoder_depth=1)
    return TrainConfig(
        model=model,
        seg=SegTrainConfig(epochs=4, warmup_epochs=1, batch_size=8, lr=1e-3, max_train_images=64,
                           max_holdout_images=40, pixel_stats="sam"),
        cae=CaeTrainConfig(epochs=4, warmup_iters=10, batch_size=32, lr=5e-4, ssim_fraction=0.25),
        schedule="cpu",
    )


def paper_schedule(model: ModelConfig | None = None) -> TrainConfig:
    """DoRL's schedule (for a GPU)."""
    return TrainConfig(model=model or ModelConfig(), schedule="paper")


def train_config_to_dict(config: TrainConfig) -> dict[str, Any]:
    """A TrainConfig as JSON-ready data."""
    return dataclasses.asdict(config)


def train_config_from_dict(data: dict[str, Any]) -> TrainConfig:
    """Rebuild a TrainConfig from `train_config_to_dict` output.

    A record without `framing` comes from a version that always encoded the whole image, so it reads as whole;
    one without `tta`, from a version whose analyzer ran one view, so it reads as none."""
    if not isinstance(data, dict):
        raise ConfigError(f"expected a mapping for TrainConfig, got {type(data).__name__}.")
    parts = {"model": ModelConfig, "seg": SegTrainConfig, "cae": CaeTrainConfig, "head": HeadTrainConfig,
             "framing": FramingConfig}
    unknown = set(data) - {f.name for f in dataclasses.fields(TrainConfig)}
    if unknown:
        raise ConfigError(f"unknown TrainConfig fields {sorted(unknown)}: the file was written by another dorl version.")
    kwargs = {k: model_from_dict(parts[k], v) if k in parts else v for k, v in data.items()}
    kwargs.setdefault("framing", FramingConfig(input="whole"))
    kwargs.setdefault("tta", "none")
    return TrainConfig(**kwargs)
