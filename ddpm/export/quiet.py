"""``quiet()``: silence torch's, onnx's and ORT's warnings, logging and progress output.

Exporters and optimizers print a great deal (tracer warnings for every Python int they see,
deprecation notices, progress bars); the export log says what matters instead, and parity
validation is the proof that the graphs are right.
"""

from __future__ import annotations

import contextlib
import io
import warnings


@contextlib.contextmanager
def quiet():
    """Silence tracer warnings (every Python int they see; the parity check is our proof),
    deprecation notices, and the ORT optimizer's logging and progress bars."""
    import logging

    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
                yield
    finally:
        root.setLevel(level)
