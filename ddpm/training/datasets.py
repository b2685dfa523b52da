"""Training datasets held in memory as tensors, and a resumable data order.

``digits`` (default) is scikit-learn's bundled copy of the UCI optical digits (1,797 8x8
images, 10 classes), so training works offline. ``mnist``, ``fashion-mnist`` and ``cifar10``
come through torchvision from ``--data-root`` (downloaded only with ``--download``);
``folder:PATH`` reads any folder of images, with class labels from sub-folders if present.
Images are scaled to [-1, 1] as in Ho et al. 2020 (DDPM, section 3.3).

The data order is a pure function of (seed, step), so a resumed run draws exactly the
batches an uninterrupted one would, and every DDP rank can compute the same global batch.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from ddpm.errors import DatasetError

TORCHVISION = {"mnist": "MNIST", "fashion-mnist": "FashionMNIST", "cifar10": "CIFAR10"}
DATASETS = ("digits", *TORCHVISION, "folder:PATH")
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")


@dataclass
class ImageDataset:
    """Images (N, C, H, W) plus int64 labels (N,); ``num_classes`` 0 means unlabeled.

    ``images`` is either float32 already in [-1, 1] at ``image_size`` or uint8 at native
    resolution (large sets: 4x less memory), converted and resized per batch.
    """

    name: str
    images: torch.Tensor
    labels: torch.Tensor
    num_classes: int
    class_names: list[str] | None
    image_size: int

    def __len__(self) -> int:
        return int(self.images.shape[0])

    @property
    def channels(self) -> int:
        return int(self.images.shape[1])

    def batch(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(x float32 (B, C, S, S) in [-1, 1], y int64 (B,)) for dataset indices ``idx``."""
        x = self.images[idx]
        if x.dtype == torch.uint8:
            x = x.float() / 127.5 - 1.0
        return _resize(x, self.image_size), self.labels[idx]

    def data_info(self) -> dict:
        """The checkpoint's ``data`` entry (num_classes filled in by the trainer)."""
        return {
            "dataset": self.name,
            "image_size": self.image_size,
            "channels": self.channels,
            "num_classes": self.num_classes,
            "class_names": list(self.class_names) if self.class_names else None,
            "value_range": [-1.0, 1.0],
        }


def _resize(x: torch.Tensor, size: int) -> torch.Tensor:
    if x.shape[-2:] == (size, size):
        return x
    # Bilinear without antialiasing: cheap, and the same op on every platform.
    return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=False)


def load_dataset(
    name: str, *, image_size: int, data_root: str | os.PathLike = "data", download: bool = False
) -> ImageDataset:
    """Load dataset ``name`` (see :data:`DATASETS`) resized to ``image_size``."""
    if image_size < 1:
        raise DatasetError(f"image size must be >= 1, got {image_size}; pass --image-size 16")
    if name == "digits":
        return _digits(image_size)
    if name in TORCHVISION:
        return _torchvision(name, image_size, Path(data_root), download)
    if name.startswith("folder:"):
        return _folder(Path(name[len("folder:") :]).expanduser(), image_size)
    raise DatasetError(
        f"unknown dataset {name!r}; expected one of {', '.join(DATASETS)} "
        "(e.g. --dataset digits or --dataset folder:path/to/images)"
    )


def _digits(image_size: int) -> ImageDataset:
    from sklearn.datasets import load_digits

    d = load_digits()  # bundled with scikit-learn: no network
    x = torch.from_numpy(d.images).float().unsqueeze(1)  # (N, 1, 8, 8), values 0..16
    x = _resize(x / 8.0 - 1.0, image_size).contiguous()
    y = torch.from_numpy(d.target).long()
    names = [str(c) for c in d.target_names]
    return ImageDataset("digits", x, y, len(names), names, image_size)


def _torchvision(name: str, image_size: int, root: Path, download: bool) -> ImageDataset:
    from torchvision import datasets

    cls = getattr(datasets, TORCHVISION[name])
    try:
        ds = cls(str(root), train=True, download=download)
    except RuntimeError as e:
        if not download and "not found" in str(e).lower():
            raise DatasetError(
                f"{name} not found in {str(root)!r}; pass --download or point --data-root at it"
            ) from None
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        if download:
            raise DatasetError(
                f"downloading {name} into {str(root)!r} failed ({first}); check the network or "
                "put the files there yourself and drop --download"
            ) from None
        raise DatasetError(
            f"cannot read {name} from {str(root)!r} ({first}); pass --download to fetch a fresh "
            "copy or point --data-root at an intact one"
        ) from None
    except OSError as e:  # network failures surface as URLError / OSError subclasses
        raise DatasetError(
            f"downloading {name} into {str(root)!r} failed ({e}); check the network or put "
            f"the files there yourself and drop --download"
        ) from None
    data = torch.as_tensor(ds.data)
    if data.ndim == 3:  # (N, H, W) grayscale
        data = data.unsqueeze(1)
    else:  # (N, H, W, C) from CIFAR's numpy arrays
        data = data.permute(0, 3, 1, 2)
    labels = torch.as_tensor(ds.targets).long()
    names = [str(c) for c in ds.classes]
    return ImageDataset(name, data.contiguous(), labels, len(names), names, image_size)


def _image_files(folder: Path) -> list[Path]:
    return sorted(
        p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS
    )


def _folder(root: Path, image_size: int) -> ImageDataset:
    from PIL import Image

    if not root.is_dir():
        raise DatasetError(
            f"image folder {str(root)!r} not found; pass --dataset folder:PATH with an existing folder"
        )
    subdirs = sorted(d for d in root.iterdir() if d.is_dir() and _image_files(d))
    if subdirs:  # labels from sub-folders; images loose in the root are ignored
        files = [(f, k) for k, d in enumerate(subdirs) for f in _image_files(d)]
        names: list[str] | None = [d.name for d in subdirs]
    else:
        files = [(f, 0) for f in _image_files(root)]
        names = None
    if not files:
        raise DatasetError(
            f"no images ({', '.join(IMAGE_EXTENSIONS)}) in {str(root)!r}; point folder:PATH "
            "at a folder of images"
        )
    pictures = []
    for f, _ in files:
        try:
            with Image.open(f) as im:
                im.load()
                pictures.append(im.copy())
        except OSError as e:
            raise DatasetError(f"cannot read image {str(f)!r}: {e}; remove or fix it") from None
    gray = all(im.mode in ("1", "L", "LA", "I", "I;16", "F") for im in pictures)
    mode, channels = ("L", 1) if gray else ("RGB", 3)
    arrays = [_square(im.convert(mode), image_size) for im in pictures]
    x = torch.stack([torch.frombuffer(bytearray(a), dtype=torch.uint8) for a in arrays])
    x = x.view(len(arrays), image_size, image_size, channels).permute(0, 3, 1, 2).contiguous()
    labels = torch.tensor([k for _, k in files], dtype=torch.long)
    return ImageDataset(f"folder:{root}", x, labels, len(names or []), names, image_size)


def _square(im, size: int) -> bytes:
    """Center-crop to a square, then resize; PIL's bilinear antialiases when shrinking photos."""
    from PIL import Image

    w, h = im.size
    s = min(w, h)
    im = im.crop(((w - s) // 2, (h - s) // 2, (w - s) // 2 + s, (h - s) // 2 + s))
    return im.resize((size, size), Image.BILINEAR).tobytes()


def _mix(*xs: int) -> int:
    """A 63-bit seed from integers (splitmix-style), so nearby (seed, k) give unrelated streams."""
    h = 0x9E3779B97F4A7C15
    for v in xs:
        h = (h ^ (int(v) & 0xFFFFFFFFFFFFFFFF)) * 0xBF58476D1CE4E5B9 & 0xFFFFFFFFFFFFFFFF
        h ^= h >> 31
    return h & 0x7FFFFFFFFFFFFFFF


def step_generator(seed: int, step: int, stream: int, device: str | torch.device = "cpu"):
    """A fresh torch.Generator for (seed, step, stream): randomness that resumes exactly."""
    g = torch.Generator(device=device)
    g.manual_seed(_mix(seed, step, stream))
    return g


class DataOrder:
    """Global batch indices for each step: epoch-wise random permutations of (seed, epoch).

    ``indices(step)`` depends only on (seed, step), so resuming at step k replays the same
    order, and all DDP ranks agree on the global batch before taking their shard.
    """

    def __init__(self, n: int, batch_size: int, seed: int) -> None:
        if n < 1:
            raise DatasetError("the dataset is empty; point --dataset at some images")
        self.n, self.batch_size, self.seed = n, batch_size, seed
        self._perms: dict[int, torch.Tensor] = {}

    def _perm(self, epoch: int) -> torch.Tensor:
        if epoch not in self._perms:
            if len(self._perms) > 2:
                self._perms.clear()
            g = torch.Generator().manual_seed(_mix(self.seed, epoch, 0xDA7A))
            self._perms[epoch] = torch.randperm(self.n, generator=g)
        return self._perms[epoch]

    def indices(self, step: int) -> torch.Tensor:
        pos = torch.arange(step * self.batch_size, (step + 1) * self.batch_size)
        epochs, offsets = pos // self.n, pos % self.n
        out = torch.empty_like(pos)
        for e in epochs.unique().tolist():
            m = epochs == e
            out[m] = self._perm(e)[offsets[m]]
        return out
