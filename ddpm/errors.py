"""One exception family for the whole toolkit.

Every error a user can cause derives from :class:`DDPMError`. CLIs catch it, print its
message on one line and exit with its ``exit_code`` (2 for bad input, 1 for a failed
validation), so users never see a traceback from deep inside torch or onnxruntime.
Messages name the file or value found, what was expected, and the fix.
"""

from __future__ import annotations


class DDPMError(Exception):
    """Base class: a problem the user can fix. ``exit_code`` is what a CLI exits with."""

    exit_code = 2


class ConfigError(DDPMError, ValueError):
    """A configuration value (arch, schedule, image size, ...) is invalid."""


class DatasetError(DDPMError):
    """A dataset cannot be found or read."""


class CheckpointError(DDPMError):
    """A checkpoint file is missing, truncated, unsafe or not one of ours."""


class ArtifactError(DDPMError):
    """An exported model lacks the artifact contract, or the contract is inconsistent."""


class OutputError(DDPMError):
    """An output path cannot be written."""


class BackendError(DDPMError):
    """A runtime backend or execution provider is unavailable or misconfigured."""


class ValidationError(DDPMError):
    """Exported model outputs differ from PyTorch beyond tolerance."""

    exit_code = 1


class ShapeError(ValidationError):
    """An exported model returned an output of the wrong shape."""


class AtolError(ValidationError):
    """An exported model's output differs from the reference by more than ``atol``."""
