"""``ddpm-run``: sample an exported model (ONNX Runtime by default) into a PNG grid.

Thin by design: parse, validate everything (output paths, model file and contract, device,
steps, labels) before the first model call, then call :meth:`Sampler.run`. Only click and
the stdlib are imported at module level, so ``--help`` is instant; the heavy work imports
nothing but numpy + onnxruntime on the default path.
"""

from __future__ import annotations

import functools
import os
import re
import sys
from pathlib import Path

import click

from ddpm import defaults
from ddpm._cli import OneLineCommand, friendly_errors
from ddpm._io import check_writable_dir
from ddpm.errors import BackendError, DDPMError, OutputError

#: API argument (``DDPMError.field``) -> the ddpm-run flag that sets it.
FLAGS = {
    "n": "-n", "steps": "--steps", "sampler": "--sampler", "eta": "--eta", "seed": "--seed",
    "labels": "--label", "guidance": "--guidance", "batch_size": "--batch-size",
    "backend": "--backend", "device": "--device", "precision": "--precision", "path": "--model",
    "num_threads": "--threads", "scale": "--scale", "out": "--out",
    "trajectory_samples": "--trajectory-samples", "loop": "--loop", "tf32": "--tf32",
    "cuda_graph": "--cuda-graph", "tensorrt": "--tensorrt",
}


#: ``name='value'`` / ``name=True`` in an API message: an argument, shown as its flag here.
_ARGUMENT = re.compile(r"\b(" + "|".join(map(re.escape, FLAGS)) + r")=(True\b|'([^']*)')")


def as_flags(message: str) -> str:
    """An API message in ddpm-run's terms: ``loop='device'`` -> ``--loop device``,
    ``tf32=True`` -> ``--tf32`` (API messages name arguments, the CLI names its flags)."""
    def flag(m: re.Match) -> str:
        if (m.group(1), m.group(3)) == ("loop", "triton"):
            return "--update triton"  # the one loop chosen by another flag
        name = FLAGS[m.group(1)]
        return name if m.group(2) == "True" else f"{name} {m.group(3)}"

    return _ARGUMENT.sub(flag, message)


def flag_errors(fn):
    """An API error in flags: arguments named in its message become flags (:func:`as_flags`)
    and the message gets the flag of its ``field`` in front (``--steps: ...``)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except DDPMError as e:
            text = as_flags(str(e))
            flag = FLAGS.get(e.field or "")
            if flag is not None and not text.startswith(flag):
                text = f"{flag}: {text}"
            if text == str(e):
                raise
            try:
                err = type(e)(text, field=e.field)
            except TypeError:  # a subclass with its own constructor: keep the original
                raise e from None
            err.exit_code = e.exit_code
            raise err from None

    return wrapper


def check_output(path: str | None, what: str) -> Path | None:
    """Fail early (before sampling, creating nothing) if ``path`` could not be written."""
    if path is None:
        return None
    p = Path(path)
    if p.is_dir():
        raise OutputError(f"{what} {str(p)!r} is a folder; pass a file name such as {p / 'out.png'}")
    probe = p.parent if str(p.parent) else Path(".")
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent  # atomic_path creates missing folders later; check the first real one
    if not probe.is_dir():
        raise OutputError(f"cannot write {what} {str(p)!r}: {str(probe)!r} is not a folder; choose another path")
    check_writable_dir(probe, what=f"{what} {p.name}")  # a real probe: os.access lies for root
    return p


D = defaults


@click.command(cls=OneLineCommand, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--model", "model", default=None, help="model.onnx / model.ts / ckpt.pt, or its folder (ort on CPU then prefers model_optimized.onnx). Default: the bundled digits model.")
@click.option("--steps", default=D.STEPS, show_default=True, type=int, help="Inference steps (1..training T).")
@click.option("--sampler", default=D.SAMPLER, show_default=True, help="ddpm (ancestral) | ddim | dpm++2m (DPM-Solver++, 10-20 steps) | mix (models trained with --objective corrupt).")
@click.option("--eta", default=D.ETA, show_default=True, type=float, help="DDIM eta (0 = deterministic).")
@click.option("--backend", default="ort", show_default=True, help="ort | openvino | auto (ort or openvino, by a timed probe cached per model, CPU and batch) | torchscript | pt2 | torch.")
@click.option("--device", default="cpu", show_default=True, help="cpu | cuda.")
@click.option("-n", "n", default=D.N, show_default=True, type=int, help="Number of images.")
@click.option("--batch-size", default=None, type=int, help=f"Images per model call (default {D.BATCH_SIZE}); does not change the images.")
@click.option("--seed", default=D.SEED, show_default=True, type=int, help="Noise seed (0..2**32-1).")
@click.option("--label", default=None, type=int, help="Class for all images (conditional models; K = the null label gives unconditional samples). Default: labels 0..K-1 cycling.")
@click.option("--guidance", default=None, type=float, help=f"Classifier-free guidance scale (conditional models; default {D.GUIDANCE_CONDITIONAL}).")
@click.option("--out", default="samples.png", show_default=True, help="Grid image to write; the extension picks the format: .png, or .jpg/.jpeg/.webp with Pillow installed.")
@click.option("--scale", default=None, type=int, help=f"Enlarge the grid this many times, nearest neighbour (default: enough for {D.GRID_MIN_PIXELS} px).")
@click.option("--npz", default=None, help="Also write float samples (and labels) as .npz.")
@click.option("--trajectory", default=None, help="Also write the denoising strip (x_t and x0 every few steps, labelled) as an image.")
@click.option("--trajectory-samples", default=D.TRAJECTORY_SAMPLES, show_default=True, type=int, help="Samples shown in the --trajectory strip.")
@click.option("--precision", default="fp32", show_default=True, help="fp32 | int8 | fp16: the model_int8.onnx / model_fp16.onnx written by ddpm-export --int8 / --fp16 (int8: ort or openvino; fp16: ort); bf16: OpenVINO's bf16 arithmetic on the fp32 graph (CPUs with AMX / AVX512-BF16).")
@click.option("--spin", is_flag=True, help="ort CPU: let pool threads spin-wait inside a model call (faster for a single image on an idle machine, slower on a busy one).")
@click.option("--threads", default=None, type=int, help="CPU threads for ONNX Runtime / OpenVINO (default: physical cores).")
@click.option("--tensorrt", is_flag=True, help="ort + cuda: try the TensorRT EP first (opt-in).")
@click.option("--cuda-graph", is_flag=True, help="ort + cuda + --loop device: capture each step as a CUDA graph (fixed batch; same images).")
@click.option("--loop", "loop", default=None, type=click.Choice(["host", "device"]), help="host: numpy step between model calls (default on CPU); device: the model_step.onnx graph with IO binding, x_t kept on the device (default on CUDA; needs ddpm-export --with-step).")
@click.option("--update", default="onnx", show_default=True, type=click.Choice(["onnx", "triton"]), help="triton: ort + cuda, the model graph plus the fused Triton update kernel (needs torch + triton).")
@click.option("--tf32", is_flag=True, help="ort + cuda: allow TF32 math (faster; images differ from CPU ones beyond fp32 rounding).")
@click.option("--progress/--no-progress", default=True, help="Progress bar on stderr.")
@click.option("--info", "info", default=None, metavar="MODEL",
              help="Describe MODEL (.onnx, .ts, .pt2, ckpt.pt or a folder): preset, resolution, classes, schedule, sampler defaults, exporter, files; then exit.")
@friendly_errors
@flag_errors
def main(model, steps, sampler, eta, backend, device, n, batch_size, seed, label, guidance, out, scale,
         npz, trajectory, trajectory_samples, precision, spin, threads, tensorrt, cuda_graph, loop, update, tf32,
         progress, info) -> None:
    """Sample images from an exported DDPM model and write them as an image grid."""
    if info is not None:
        from ddpm.runtime.info import describe

        click.echo(describe(info))
        return
    from ddpm.images import image_format
    from ddpm.runtime.plan import check_int
    from ddpm.runtime.sampler import Sampler

    outputs = [(out, "--out"), (npz, "--npz"), (trajectory, "--trajectory")]
    for path, what in outputs:
        check_output(path, what)
    given = [str(Path(p).resolve()) for p, _ in outputs if p]
    if len(set(given)) != len(given):
        raise OutputError("--out, --npz and --trajectory must be different files")
    for path in (out, trajectory):
        if path:
            image_format(path)  # unknown extension, or JPEG/WebP without Pillow: refuse now
    if scale is not None:
        check_int("scale", scale, 1, D.MAX_SCALE)
    check_int("trajectory_samples", trajectory_samples, 1)

    if precision == "bf16" and backend != "openvino":  # a compute precision, not a file variant
        raise BackendError(f"--precision bf16 needs --backend openvino, got {backend!r}; add --backend openvino")
    if update == "triton":
        if loop == "host":
            raise BackendError("--update triton is its own device loop; drop --loop host", field="loop")
        loop = "triton"
    cuda_kw = {"tf32": True} if tf32 else {}
    s = Sampler.from_path(model, backend, device, num_threads=threads, tensorrt=tensorrt, cuda_graph=cuda_graph,
                          spin=spin, loop=loop, precision=precision, **cuda_kw)
    plan = s.plan(n, steps=steps, sampler=sampler, eta=eta, seed=seed, labels=label,
                  guidance=guidance, batch_size=batch_size)

    total = len(plan.batches()) * plan.steps
    show = progress and sys.stderr.isatty()
    with click.progressbar(length=total, label="sampling", file=sys.stderr, hidden=not show) as bar:
        result = s.run(plan, trajectory=trajectory is not None, progress=lambda d, t: bar.update(1))

    write_outputs(result, s.contract.value_range, out, npz=npz, trajectory=trajectory,
                  scale=scale, trajectory_samples=trajectory_samples)
    c, h, w = s.contract.image_shape
    extra = "".join(f", {p}" for p in (npz, trajectory) if p)
    click.echo(
        f"wrote {out}{extra}: {plan.n} images {h}x{w}x{c}, {plan.steps} {plan.table.sampler} steps, "
        f"{s.backend}/{s.device} ({s.loop} loop) from {s.engine.path}, {result.seconds:.2f}s "
        f"({plan.n / result.seconds:.1f} images/s)"
    )


def write_outputs(
    result, value_range: tuple[float, float], out: str, *, npz: str | None = None,
    trajectory: str | None = None, scale: int | None = None,
    trajectory_samples: int = D.TRAJECTORY_SAMPLES,
) -> None:
    """Write the grid, the .npz and the strip as a whole (:func:`ddpm._io.atomic_files`):
    on any failure none of them is written and files already there are left as they were."""
    from ddpm._io import STAGE_PREFIX, atomic_files, output_error
    from ddpm.images import make_grid, write_image
    from ddpm.runtime.trajectory import save_trajectory

    grid = make_grid(result.images)
    writers = [(out, lambda p: write_image(p, make_grid(result.images, scale=scale or D.grid_scale(*grid.shape[:2]))))]
    if npz:
        writers.append((npz, lambda p: _save_npz(p, result)))
    if trajectory:
        writers.append((trajectory, lambda p: save_trajectory(p, result, value_range, samples=trajectory_samples,
                                                              scale=scale)))
    finals = [Path(p).resolve() for p, _ in writers]
    root = Path(os.path.commonpath([p.parent for p in finals]))  # one staging folder for all
    current = [out]  # the file being written, for the message
    try:
        with atomic_files(root) as stage:
            for (name, write), final in zip(writers, finals, strict=True):
                current[0] = name
                staged = stage / final.relative_to(root)
                staged.parent.mkdir(parents=True, exist_ok=True)
                write(staged)
    except OSError as e:
        names = ", ".join(p for p, _ in writers)
        where = e.filename if e.filename and STAGE_PREFIX not in str(e.filename) else current[0]
        raise output_error(where, e, note=f"none of {names} was written; files already there are unchanged") from None


def _save_npz(path: str | Path, result) -> None:
    import numpy as np

    from ddpm._io import atomic_path

    arrays = {"samples": result.samples, "images": result.images, "timesteps": result.timesteps}
    if result.labels is not None:
        arrays["labels"] = result.labels
    with atomic_path(path) as tmp, open(tmp, "wb") as f:  # a file object: savez won't add .npz
        np.savez(f, **arrays)


if __name__ == "__main__":
    main()
