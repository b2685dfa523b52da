"""The ONNX Runtime path never imports torch (nor other non-runtime dependencies).

Runs ``import ddpm.runtime`` plus a full sampling run -- through the API and through the
ddpm-run command -- in a fresh interpreter and checks ``sys.modules`` afterwards. The
``[cpu]`` extra installs only numpy, click and onnxruntime, so anything else imported here
would crash a user's install.
"""

from __future__ import annotations

import subprocess
import sys

FORBIDDEN = ("torch", "triton", "onnx", "tqdm", "PIL", "scipy", "diffusers", "matplotlib", "ddpm.training", "ddpm.export", "ddpm.models")

SCRIPT = """
import sys
from ddpm.runtime import Sampler
from ddpm.runtime.cli import main

s = Sampler.from_path(sys.argv[1], backend="ort", device="cpu", num_threads=1)
for sampler in ("ddpm", "ddim"):
    r = s.sample(3, steps=4, sampler=sampler, seed=1, guidance=2.0, batch_size=2, trajectory=True)
    assert r.images.shape == (3, 8, 8, 1), r.images.shape
code = main(["--model", sys.argv[1], "-n", "2", "--steps", "3", "--out", sys.argv[2],
             "--trajectory", sys.argv[3], "--threads", "1"])
assert not code, code
forbidden = {forbidden!r}
leaked = [m for m in sys.modules if m in forbidden or m.split(".")[0] in forbidden]
print("LEAKED", leaked)
"""


def test_ort_sampling_run_imports_no_torch(exported, tmp_path):
    model = exported("cond", True)["onnx"]
    out, traj = tmp_path / "s.png", tmp_path / "t.png"
    p = subprocess.run(
        [sys.executable, "-c", SCRIPT.format(forbidden=FORBIDDEN), str(model), str(out), str(traj)],
        capture_output=True, text=True, timeout=120,
    )
    assert p.returncode == 0, p.stderr
    assert "LEAKED []" in p.stdout, p.stdout
    assert out.stat().st_size > 0 and traj.stat().st_size > 0


def test_runtime_sources_have_no_module_level_torch_import():
    """Belt and braces for the lazy imports: no top-level torch/triton import in ddpm/runtime."""
    from pathlib import Path

    import ddpm.runtime

    offenders = []
    for f in Path(ddpm.runtime.__file__).parent.rglob("*.py"):
        for n, line in enumerate(f.read_text().splitlines(), 1):
            if line.startswith(("import torch", "from torch", "import triton", "from triton")):
                offenders.append(f"{f.name}:{n}")
    assert offenders == []
