"""The README's embedding example runs as written.

Executes the first ```python block under the heading "## Embedding" of README.md, as written,
on the bundled digits model (ddpm/assets/digits.onnx).
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

README = Path(__file__).resolve().parents[1] / "README.md"


def embedding_example(readme: Path = README) -> str:
    """First ```python block after '## Embedding' in the README."""
    text = readme.read_text(encoding="utf-8")
    m = re.search(r"^## Embedding\s*$(.*?)(?=^## |\Z)", text, flags=re.M | re.S)
    assert m, "README.md has no '## Embedding' section"
    block = re.search(r"```python\n(.*?)```", m.group(1), flags=re.S)
    assert block, "README's '## Embedding' section has no ```python block"
    return block.group(1)


def test_readme_embedding_example_runs(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(embedding_example(), "README.md:Embedding", "exec"), namespace)
    result = namespace["result"]
    assert result.images.dtype == np.uint8 and result.images.ndim == 4
    assert result.images.shape[0] == 10
    assert (tmp_path / "digits.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "uint8" in capsys.readouterr().out
