"""The README's embedding example runs as written.

Executes the first ```python block under the heading "## Embedding" of README.md (until the
lead adds that section, the :data:`EXAMPLE` below, which is what the report hands over). It
samples the bundled digits model; where ddpm/assets/digits.onnx is not shipped yet it runs
the same code against a tiny conditional model, so the example's code is always exercised.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from ddpm.errors import ArtifactError

README = Path(__file__).resolve().parents[1] / "README.md"

EXAMPLE = '''\
from ddpm.images import save_grid
from ddpm.runtime import Sampler

sampler = Sampler.default()  # bundled digits model on ONNX Runtime, CPU; or Sampler.from_path("model.onnx")
result = sampler.sample(10, steps=50, sampler="ddim", seed=0, guidance=3.0)  # labels cycle 0..9; labels=7 -> all sevens
print(result.images.shape, result.images.dtype, result.labels)  # (10, 28, 28, 1) uint8 [0 1 2 ... 9]
save_grid("digits.png", result.images)  # PNG grid, written atomically
'''


def embedding_example(readme: Path = README) -> str:
    """First ```python block after '## Embedding' in the README, else :data:`EXAMPLE`."""
    text = readme.read_text(encoding="utf-8") if readme.is_file() else ""
    m = re.search(r"^## Embedding\s*$(.*?)(?=^## |\Z)", text, flags=re.M | re.S)
    if not m:
        return EXAMPLE
    block = re.search(r"```python\n(.*?)```", m.group(1), flags=re.S)
    assert block, "README's '## Embedding' section has no ```python block"
    return block.group(1)


def test_readme_embedding_example_runs(tmp_path, monkeypatch, exported, capsys):
    from ddpm.runtime import assets, sampler

    try:
        assets.default_model_path()
    except ArtifactError:  # not shipped yet: same code, tiny conditional model
        tiny = exported("cond", True)["onnx"]
        monkeypatch.setattr(sampler, "default_model_path", lambda backend="ort": tiny)
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(embedding_example(), "README.md:Embedding", "exec"), namespace)
    result = namespace["result"]
    assert result.images.dtype == np.uint8 and result.images.ndim == 4
    assert result.images.shape[0] == 10
    assert (tmp_path / "digits.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "uint8" in capsys.readouterr().out
