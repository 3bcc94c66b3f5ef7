"""Data: cell image decoding and preprocessing shared by training and the runtime, datasets.

Import submodules directly (`from dorl.data.images import load_rgb`): this package imports
nothing on its own, so the torch-free runtime can use `dorl.data.images` without pulling in
the training datasets.
"""
