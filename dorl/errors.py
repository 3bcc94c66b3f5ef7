"""Exceptions a user can cause; each message says what was wrong and what to do."""


class DorlError(Exception):
    """Base class of every error `dorl` raises on purpose."""


class ArtifactError(DorlError):
    """A bundle, ONNX graph, engine or profile is missing, corrupt or does not match."""


class ImageError(DorlError):
    """An image cannot be decoded or has an unusable size or content."""


class MissingDependencyError(DorlError):
    """An optional package is needed for this operation and is not installed."""


class ConfigError(DorlError):
    """A configuration value is out of range or inconsistent."""


class TrainingError(DorlError):
    """Training cannot go on (its loss is no longer a number)."""
