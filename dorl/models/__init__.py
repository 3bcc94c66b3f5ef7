"""Plain nn.Modules of the DoRL model family; builders live in `dorl.models.registry`.

Importing this package imports torch.
"""
