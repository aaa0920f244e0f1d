"""Image-classification data sets as in-memory tensors.

Every loader returns an ``ImageData``: ``images`` float32 ``(N, C, H, W)`` in [0, 1] whose values are exact
multiples of 1/255 (the store keeps 8-bit images, so clean images are 8-bit too), and ``labels`` int64 ``(N,)``.

* ``digits``: scikit-learn's bundled 8x8 handwritten digits (1,797 images, offline), resized to 1x28x28;
  a fixed stratified split (seed 0) gives 1,437 train / 360 test images.
* ``colour_digits``: an embedded colour stand-in (3x32x32, 10 classes; ``mid_core.colour_datasets``), NOT CIFAR: it
  lets the colour / ResNet path run end to end offline.
* ``cifar10``, ``cifar100``, ``svhn``, ``tinyimagenet``, ``imagenet100``, ``imagenet``: the paper's colour data sets
  (``mid_core.colour_datasets``; torchvision downloads or ImageFolder trees under the data root).
* ``mnist`` / ``fmnist``: torchvision's MNIST / FashionMNIST read from ``data_root`` with ``download=False``
  (set ``download=True`` on a machine with network). A raw folder holding only the official ``.gz`` files (as
  downloaded, e.g. carried to a machine with little disk) is read directly, without torchvision.

The data root comes from the argument, else the ``MID_DATA_ROOT`` environment variable, else ``./data``.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

DATA_ROOT_ENV = "MID_DATA_ROOT"
DATASETS = ("digits", "mnist", "fmnist", "colour_digits", "cifar10", "cifar100", "svhn", "tinyimagenet", "imagenet100",
            "imagenet")
NUM_CLASSES = {"digits": 10, "mnist": 10, "fmnist": 10, "colour_digits": 10, "cifar10": 10, "cifar100": 100,
               "svhn": 10, "tinyimagenet": 200, "imagenet100": 100, "imagenet": 1000}
IMAGE_SHAPES = {"digits": (1, 28, 28), "mnist": (1, 28, 28), "fmnist": (1, 28, 28), "colour_digits": (3, 32, 32),
                "cifar10": (3, 32, 32), "cifar100": (3, 32, 32), "svhn": (3, 32, 32), "tinyimagenet": (3, 64, 64),
                "imagenet100": (3, 224, 224), "imagenet": (3, 224, 224)}
# L-inf budget per data set (images in [0, 1]): the paper's value (it writes eps = 0.3 for every data set) and the
# community convention (RobustBench: 8/255 for CIFAR-scale images, 4/255 for ImageNet). Numbers under the two are
# not comparable: the paper's CIFAR-10 figures are not RobustBench's.
EPS = {
    "paper": {name: 0.3 for name in DATASETS},
    "standard": {"digits": 0.3, "mnist": 0.3, "fmnist": 0.3, "colour_digits": 8 / 255, "cifar10": 8 / 255,
                 "cifar100": 8 / 255, "svhn": 8 / 255, "tinyimagenet": 8 / 255, "imagenet100": 4 / 255,
                 "imagenet": 4 / 255},
}
_TORCHVISION_FOLDERS = {"mnist": "MNIST", "fmnist": "FashionMNIST"}


@dataclass
class ImageData:
    """An in-memory split: ``images`` float32 (N, C, H, W) in [0, 1], ``labels`` int64 (N,)."""

    images: torch.Tensor
    labels: torch.Tensor
    name: str
    split: str

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def subset(self, limit: int | None) -> "ImageData":
        """The first ``limit`` rows (all rows when ``limit`` is None)."""
        if limit is None or limit >= len(self):
            return self
        return ImageData(self.images[:limit], self.labels[:limit], self.name, self.split)


def resolve_data_root(data_root: str | os.PathLike | None = None) -> Path:
    """The data root: the argument, else ``$MID_DATA_ROOT``, else ``./data``."""
    return Path(data_root or os.environ.get(DATA_ROOT_ENV) or "data")


def check_data_available(name: str, data_root: str | os.PathLike | None = None) -> None:
    """Fail early, with a fix, when ``name`` cannot be read offline from the data root."""
    if name not in DATASETS:
        raise ValueError(f"unknown data set {name!r}; choose one of {list(DATASETS)}")
    if name in ("digits", "colour_digits"):
        return
    if name in COLOUR_SETS:
        from mid_core.colour_datasets import check_colour_data

        return check_colour_data(name, resolve_data_root(data_root))
    root = resolve_data_root(data_root)
    raw = root / _TORCHVISION_FOLDERS[name] / "raw"
    missing = [f for f in _IDX_FILES if not (raw / f).exists() and not (raw / f"{f}.gz").exists()]
    if missing:
        raise FileNotFoundError(
            f"data set {name!r} not found under {root} (missing {raw / missing[0]}). Point data.root in the "
            f"config or ${DATA_ROOT_ENV} at a folder laid out for torchvision "
            f"(<root>/{_TORCHVISION_FOLDERS[name]}/raw/...), or set data.download: true on a machine with network."
        )


COLOUR_SETS = ("cifar10", "cifar100", "svhn", "tinyimagenet", "imagenet100", "imagenet")
_IDX_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """An IDX file (the MNIST format: big-endian header, then uint8 data) as a uint8 array; ``.gz`` is decompressed.

    Images come out ``(N, H, W)``, labels ``(N,)``. Raises ``ValueError`` for a file that is not uint8 IDX.
    """
    import gzip

    path = Path(path)
    data = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise ValueError(f"{path} is not a uint8 IDX file (MNIST format); re-download it")
    ndim = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    body = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if body.size != int(np.prod(shape)):
        raise ValueError(f"{path} is truncated: header says {shape}, found {body.size} values; re-download it")
    return body.reshape(shape)


def _load_raw_gz(name: str, split: str, data_root: str | os.PathLike | None) -> ImageData:
    """MNIST / FashionMNIST read from the official ``.gz`` IDX files alone (no uncompressed copies needed)."""
    raw = resolve_data_root(data_root) / _TORCHVISION_FOLDERS[name] / "raw"
    prefix = "train" if split == "train" else "t10k"
    images = read_idx(raw / f"{prefix}-images-idx3-ubyte.gz")[:, None, :, :]
    labels = read_idx(raw / f"{prefix}-labels-idx1-ubyte.gz").astype(np.int64)
    return ImageData(_to_unit_range_u8(images), torch.from_numpy(labels), name, split)


def _to_unit_range_u8(images_u8: np.ndarray) -> torch.Tensor:
    # np.array copies: the IDX reader's array is a read-only view of the file buffer, which torch warns about
    return torch.from_numpy(np.array(images_u8, order="C")).float().div_(255.0)


def load_digits(split: str) -> ImageData:
    """scikit-learn digits, bilinearly resized to 28x28 and quantised to 8 bits."""
    from sklearn.datasets import load_digits as sk_load_digits
    from sklearn.model_selection import train_test_split

    bunch = sk_load_digits()
    images = torch.from_numpy(bunch.images.astype(np.float32) / 16.0).unsqueeze(1)  # (1797, 1, 8, 8)
    images = F.interpolate(images, size=(28, 28), mode="bilinear", align_corners=False).clamp_(0, 1)
    images_u8 = torch.round(images * 255).to(torch.uint8).numpy()
    idx = np.arange(len(bunch.target))
    train_idx, test_idx = train_test_split(idx, test_size=0.2, random_state=0, stratify=bunch.target)
    chosen = np.sort(train_idx if split == "train" else test_idx)
    return ImageData(_to_unit_range_u8(images_u8[chosen]), torch.from_numpy(bunch.target[chosen].astype(np.int64)), "digits", split)


def load_torchvision(name: str, split: str, data_root: str | os.PathLike | None, download: bool = False) -> ImageData:
    """MNIST / FashionMNIST through torchvision (``download=False`` unless asked)."""
    from torchvision.datasets import MNIST, FashionMNIST

    if not download:
        check_data_available(name, data_root)
        raw = resolve_data_root(data_root) / _TORCHVISION_FOLDERS[name] / "raw"
        if not all((raw / f).exists() for f in _IDX_FILES):  # only the .gz files: torchvision would not read them
            return _load_raw_gz(name, split, data_root)
    cls = MNIST if name == "mnist" else FashionMNIST
    ds = cls(str(resolve_data_root(data_root)), train=(split == "train"), download=download)
    images = ds.data.numpy()[:, None, :, :]  # (N, 1, 28, 28) uint8
    return ImageData(_to_unit_range_u8(images), ds.targets.clone().long(), name, split)


def load_dataset(name: str, split: str, data_root: str | os.PathLike | None = None, download: bool = False) -> ImageData:
    """Load ``split`` ('train' or 'test') of data set ``name`` as in-memory tensors."""
    if split not in ("train", "test"):
        raise ValueError(f"unknown split {split!r}; use 'train' or 'test'")
    if name == "digits":
        return load_digits(split)
    if name == "colour_digits":
        from mid_core.colour_datasets import load_colour_digits

        return load_colour_digits(split)
    if name in COLOUR_SETS:
        from mid_core.colour_datasets import load_colour_set

        return load_colour_set(name, split, resolve_data_root(data_root), download)
    if name in _TORCHVISION_FOLDERS:
        return load_torchvision(name, split, data_root, download)
    raise ValueError(f"unknown data set {name!r}; choose one of {list(DATASETS)}")
