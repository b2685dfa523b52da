"""One exception family for the whole toolkit.

Every error a user can cause derives from :class:`DDPMError`. CLIs catch it, print its
message on one line and exit with its ``exit_code`` (2 for bad input, 1 for a failed
validation), so users never see a traceback from deep inside torch or onnxruntime.
Messages name the file or value found, what was expected, and the fix.
"""

from __future__ import annotations


class DDPMError(Exception):
    """Base class: a problem the user can fix. ``exit_code`` is what a CLI exits with.

    ``field`` names the argument at fault (e.g. ``"steps"``) when one is, so an API caller
    (a web service answering 400) can point at it without parsing the message.
    """

    exit_code = 2

    def __init__(self, *args: object, field: str | None = None) -> None:
        super().__init__(*args)
        self.field = field


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


class NonFiniteError(DDPMError):
    """NaN or Inf where finite numbers are required: a diverged training loss, model output."""

    exit_code = 1


class ValidationError(DDPMError):
    """Exported model outputs differ from PyTorch beyond tolerance."""

    exit_code = 1


class ShapeError(ValidationError):
    """An exported model returned an output of the wrong shape."""


class AtolError(ValidationError):
    """An exported model's output differs from the reference by more than ``atol``."""


class Cancelled(DDPMError):
    """A sampling request was stopped by its ``cancel`` event or its ``deadline``.

    ``reason`` is ``"cancelled"`` or ``"deadline"``.
    """

    exit_code = 1

    def __init__(self, *args: object, reason: str = "cancelled") -> None:
        super().__init__(*args)
        self.reason = reason


def first_line(exc: BaseException, limit: int = 300) -> str:
    """The first non-empty line of ``str(exc)`` (at most ``limit`` chars), else its type name.

    For quoting a foreign library's exception inside one of our one-line messages.
    """
    for line in str(exc).splitlines():
        if line.strip():
            return line.strip()[:limit]
    return type(exc).__name__
