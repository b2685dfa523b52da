"""Images: nearest-neighbour scaling, the default grid size, format by extension (PNG
always, JPEG/WebP through Pillow, a one-line refusal otherwise) and the labelled strip."""

from __future__ import annotations

import sys

import numpy as np
import pytest
from click.testing import CliRunner

from ddpm import defaults
from ddpm.errors import ConfigError, OutputError
from ddpm.images import encode_png, make_grid, upscale, write_image
from ddpm.runtime.cli import main
from ddpm.runtime.trajectory import text_mask, trajectory_grid


def _png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


def test_upscale_repeats_pixels():
    a = np.arange(6, dtype=np.uint8).reshape(2, 3, 1)
    b = upscale(a, 3)
    assert b.shape == (6, 9, 1)
    np.testing.assert_array_equal(b[::3, ::3], a)
    np.testing.assert_array_equal(b[2, 8], a[0, 2])
    with pytest.raises(ConfigError, match="scale must be an integer >= 1"):
        upscale(a, 0)


def test_default_scale_makes_the_long_side_about_512_px():
    assert defaults.grid_scale(22, 32) == 16  # 5 images of 8 px
    assert defaults.grid_scale(182, 182) == 3  # 100 digits of 16 px: 546 px
    assert defaults.grid_scale(2000, 100) == 1
    assert defaults.grid_scale(1, 1) == defaults.MAX_SCALE


def test_bad_images_raise_project_errors():
    with pytest.raises(ConfigError, match="uint8"):
        encode_png(np.zeros((2, 2), np.float32))
    with pytest.raises(ConfigError, match="shape"):
        make_grid(np.zeros((2, 2, 2), np.uint8))


def test_extension_picks_the_format(tmp_path):
    img = (np.arange(64, dtype=np.uint8).reshape(8, 8, 1) * 4)
    write_image(tmp_path / "a.png", img)
    assert _png_size((tmp_path / "a.png").read_bytes()) == (8, 8)
    pytest.importorskip("PIL")
    write_image(tmp_path / "a.jpg", img)
    write_image(tmp_path / "a.webp", np.repeat(img, 3, axis=2))
    assert (tmp_path / "a.jpg").read_bytes()[:3] == b"\xff\xd8\xff"
    assert (tmp_path / "a.webp").read_bytes()[8:12] == b"WEBP"


def test_unknown_extension_and_missing_pillow_are_one_line_refusals(tmp_path, monkeypatch):
    img = np.zeros((4, 4), np.uint8)
    with pytest.raises(OutputError, match="cannot tell the image format") as e:
        write_image(tmp_path / "a.gif", img)
    assert e.value.field == "out"
    monkeypatch.setitem(sys.modules, "PIL", None)  # as if Pillow were not installed
    monkeypatch.setitem(sys.modules, "PIL.Image", None)
    with pytest.raises(OutputError, match="pip install pillow"):
        write_image(tmp_path / "a.jpg", img)
    assert list(tmp_path.iterdir()) == []


def test_strip_has_labels_and_k_samples():
    steps, n = 5, 6
    xt = np.zeros((steps, n, 1, 8, 8), np.float32) - 1  # black tiles: any white is a label
    x0 = xt.copy()
    final = xt[0]
    kw = dict(timesteps=np.arange(steps)[::-1] * 100, value_range=(-1.0, 1.0), scale=2)
    two = trajectory_grid(xt, x0, final, max_samples=2, **kw)
    five = trajectory_grid(xt, x0, final, max_samples=5, **kw)
    assert five.shape[0] - two.shape[0] == 3 * 2 * (8 + 2) * 2  # 3 more samples, 2 rows each
    assert five.shape[1] == two.shape[1]
    assert two.max() == 255  # labels drawn (tiles are all black)
    # the tiles (5 strip columns + the final image, 4 rows, 8 px + 2 px pad, x2) sit bottom-right
    top, left = two.shape[0] - (4 * 10 + 2) * 2, two.shape[1] - (6 * 10 + 2) * 2
    assert top >= 5 and left >= 5
    assert two[:top].max() == 255 and two[top:, :left].max() == 255  # header row, row labels
    assert two[top:, left:].max() == 0  # labels stay out of the tiles
    assert text_mask("t=400").shape == (5, 19)


def test_cli_scale_format_and_refusals(tmp_path):
    run = CliRunner().invoke
    base = ["-n", "2", "--steps", "1", "--threads", "1"]
    r = run(main, [*base, "--out", str(tmp_path / "s.png"), "--scale", "1"])
    assert r.exit_code == 0, r.output
    assert _png_size((tmp_path / "s.png").read_bytes()) == (2 * 18 + 2, 18 + 2)  # 2 digits, 1 row
    r = run(main, [*base, "--out", str(tmp_path / "s.gif")])
    assert r.exit_code == 2 and "cannot tell the image format" in r.output
    r = run(main, [*base, "--out", str(tmp_path / "s.png"), "--scale", "0"])
    assert r.exit_code == 2 and "--scale: scale must be an integer in 1..16" in r.output
    r = run(main, [*base, "--out", str(tmp_path / "t.png"), "--trajectory", str(tmp_path / "t.png")])
    assert r.exit_code == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.png"]
