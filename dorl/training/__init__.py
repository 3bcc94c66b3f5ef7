"""Training: LoRA-SAM segmentation, the token cache, the cross-domain autoencoder, the heads,
the per-cell features, and the pipeline that runs them with checkpoints (the cross-domain
evaluation is `dorl.evaluation`).

Import submodules directly; importing them imports torch (except `config` and `progress`).
"""
