"""One exception family: the CLI prints these as one line and exits 2."""


class DbunetError(Exception):
    """Base of every error a user can cause (bad input, bad artifact, bad config)."""


class ConfigError(DbunetError):
    """A configuration value is out of range or inconsistent."""


class InputError(DbunetError):
    """A call-time input (prompt, box, steps, size) is invalid."""


class WeightsError(DbunetError):
    """A weights file or checkpoint folder is missing, unsafe or does not fit the config."""


class ExportError(DbunetError):
    """Tracing or converting a component failed."""


class BuildError(DbunetError):
    """Building an engine failed."""


class ArtifactError(DbunetError):
    """An artifact is missing, corrupted or from another version."""


class AccuracyError(DbunetError):
    """A compiled component does not match its reference within tolerance."""


class CudaError(DbunetError):
    """A CUDA runtime call failed, or cuda-python is missing or does not fit the driver."""


class NonFiniteError(DbunetError):
    """A stage produced NaN or infinity: the run ends without writing an image."""


class ClosedError(DbunetError):
    """A pipeline was called after close()."""
