"""Training: LoRA-SAM segmentation, the token cache, the cross-domain autoencoder, the heads,
the pipeline that runs them with checkpoints, and the cross-domain evaluation protocol.

Import submodules directly; importing them imports torch (except `config` and `progress`).
"""
