"""model.onnx on ONNX Runtime's CUDA EP: the ORT engine plus the options only CUDA has.

:func:`ddpm.runtime.engines.open_engine` opens this class for backend ``ort`` on device
``cuda``. It adds ``tf32`` (TF32 tensor-core math in the CUDA EP: faster, but images then
differ from CPU ones beyond fp32 rounding, so it is off unless asked for) to the session
options every session of the engine is built with; the provider checks themselves live in
:mod:`ddpm.runtime.ort_session`.
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

from ddpm.runtime.engines.ort import OrtEngine


class OrtCudaEngine(OrtEngine):
    """:class:`OrtEngine` whose sessions carry the CUDA-only ``tf32`` option."""

    def __init__(self, path: Path, device: str = "cuda", *, tf32: bool = False, **options: Any) -> None:
        self.tf32 = bool(tf32)  # set first: the base __init__ opens the first session
        known = inspect.signature(OrtEngine).parameters  # open_engine passes every option here
        super().__init__(path, device, **{k: v for k, v in options.items() if k in known})

    def _open(self, key: tuple[int, int] | None) -> Any:
        self._session_kw["tf32"] = self.tf32
        return super()._open(key)

    @property
    def session_kw(self) -> dict[str, Any]:
        """The provider options every session of this engine is built with."""
        return dict(self._session_kw)
