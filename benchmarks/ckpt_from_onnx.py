"""Re-derive a fine-tunable ckpt.pt from an exported fp32 model.onnx (e.g. the bundled digits.onnx).

The bundled model's training checkpoint is not shipped (only its ONNX export is), yet
`ddpm-train --init-from` needs a ckpt.pt. An fp32 export without graph optimisation holds every
network weight as an initializer, so the EMA weights can be read back:

* initializers named ``inner.<key>`` are the state-dict entry ``<key>`` as they are;
* the rest (``onnx::Mul_892``: GroupNorm scales/shifts the legacy exporter reshaped to (C, 1, 1))
  are matched by exporting the same network, with a distinct random value in every weight, to the
  same exporter and opset, and finding which state-dict entry each such initializer holds.

Usage (TEMPLATE: a ckpt.pt of the same arch and model config, e.g. a 1-step ddpm-train run
with the bundled model's command):

    python benchmarks/ckpt_from_onnx.py ddpm/assets/digits.onnx runs/stub/ckpt.pt runs/bundled4_7250.pt

The result carries the template's schedule, data info and train_args, the recovered weights as
both ``ema`` and ``model`` and ``step`` 0 (the step count of the run that produced it is not in
the ONNX file). It then re-exports the result and checks that the export has the source's
initializers with the same values (same network, same exporter: the same graph).
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import numpy_helper


def _initializers(path: Path) -> dict[str, np.ndarray]:
    model = onnx.load(str(path))
    return {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}


def _export(ckpt: Path, out: Path, opset: int) -> Path:
    subprocess.run([sys.executable, "-m", "ddpm.export.cli", str(ckpt), "--out", str(out),
                    "--onnx-exporter", "legacy", "--opset", str(opset), "--format", "onnx",
                    "--no-optimize"], check=True, stdout=subprocess.DEVNULL)
    return out / "model.onnx"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("onnx", type=Path, help="fp32 model.onnx exported with --onnx-exporter legacy")
    p.add_argument("template", type=Path, help="ckpt.pt of the same arch and model config")
    p.add_argument("out", type=Path, help="ckpt.pt to write")
    p.add_argument("--opset", type=int, default=17)
    args = p.parse_args()

    source = _initializers(args.onnx)
    ckpt = torch.load(args.template, weights_only=True)
    state = {k: v.clone() for k, v in ckpt["ema"].items()}
    recovered: dict[str, np.ndarray] = {}
    for key in state:
        if "inner." + key in source:
            recovered[key] = source["inner." + key]

    # The template's weights with a small distinct random offset in each (its outputs stay finite):
    # each initializer of the probe export then names the one state-dict entry holding its values.
    gen = torch.Generator().manual_seed(0)
    probe = {k: v + 1e-3 * torch.randn(v.shape, generator=gen, dtype=v.dtype)
             if v.is_floating_point() else v for k, v in state.items()}
    with tempfile.TemporaryDirectory(dir=args.out.parent) as tmp:
        probe_ckpt = Path(tmp) / "probe.pt"
        torch.save({**ckpt, "ema": probe, "model": probe}, probe_ckpt)
        probe_inits = _initializers(_export(probe_ckpt, Path(tmp) / "probe", args.opset))
        for name, value in probe_inits.items():
            if name.startswith("inner.") or name not in source:
                continue
            hits = [k for k, v in probe.items() if k not in recovered and v.numel() == value.size
                    and np.array_equal(v.numpy().ravel(), value.ravel())]
            if len(hits) == 1:
                recovered[hits[0]] = source[name].reshape(state[hits[0]].shape)
        missing = sorted(set(state) - set(recovered))
        if missing:
            raise SystemExit(f"could not recover {len(missing)} weights from {args.onnx}: "
                             f"{missing[:5]} ...; was it exported fp32, legacy, --no-optimize?")
        weights = {k: torch.from_numpy(np.array(recovered[k])).to(state[k].dtype).reshape(state[k].shape)
                   for k in state}
        out = {**ckpt, "ema": weights, "model": weights, "step": 0, "losses": []}
        out.pop("optimizer", None)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        torch.save(out, args.out)

        check = _initializers(_export(args.out, Path(tmp) / "check", args.opset))
        if set(check) != set(source):
            raise SystemExit(f"re-export of {args.out} has different initializers from {args.onnx}")
        worst = max(float(np.max(np.abs(check[n] - source[n]))) for n in source)
    print(f"wrote {args.out}: {len(weights)} weights; re-export vs {args.onnx}: max |diff| {worst:g}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
