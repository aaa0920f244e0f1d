"""Colour data sets: the embedded ``colour_digits`` stand-in and the paper's CIFAR-10/100, SVHN, Tiny-ImageNet,
ImageNet-100 and ImageNet-1K, all as in-memory ``ImageData`` (float32 ``(N, 3, H, W)`` in [0, 1], 8-bit values).

Layouts under the data root (``data.root`` / ``$MID_DATA_ROOT``):

* ``cifar10`` / ``cifar100``: torchvision's ``cifar-10-batches-py/`` / ``cifar-100-python/`` (``data.download:
  true`` fetches them);
* ``svhn``: torchvision's ``svhn/{train,test}_32x32.mat`` (``data.download: true``; needs scipy);
* ``tinyimagenet``: ``tiny-imagenet-200/train/<wnid>/images/*.JPEG`` and ``tiny-imagenet-200/val/images/*.JPEG`` with
  ``val/val_annotations.txt`` (http://cs231n.stanford.edu/tiny-imagenet-200.zip, unzipped), 64x64;
* ``imagenet``: ``imagenet/{train,val}/<wnid>/*.JPEG`` (the ILSVRC-2012 images, val sorted into class folders), resized
  to 256 and centre-cropped to 224;
* ``imagenet100``: the same tree, restricted to the 100 classes listed one wnid per line in
  ``imagenet/imagenet100.txt`` (e.g. the class list of Tian et al.'s CMC).

ImageFolder sets are decoded into memory at 8 bits: 224x224x3 bytes a picture, so the full ImageNet-1K training set
needs ~193 GB; use ``data.train_limit`` (the first N images in class order, a stratified subset is yours to list)
on machines with less.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from mid_core.datasets import ImageData, _to_unit_range_u8

_FOLDER_SETS = {"tinyimagenet": ("tiny-imagenet-200", 64), "imagenet": ("imagenet", 224), "imagenet100": ("imagenet", 224)}
_TORCHVISION_SETS = {"cifar10": "cifar-10-batches-py", "cifar100": "cifar-100-python", "svhn": "svhn"}
_FETCH = {
    "tinyimagenet": "download http://cs231n.stanford.edu/tiny-imagenet-200.zip and unzip it there",
    "imagenet": "download ILSVRC-2012 from https://image-net.org (train and val, val sorted into <wnid> folders)",
    "imagenet100": "lay out ImageNet as for `imagenet` and list its 100 wnids, one per line, in imagenet/imagenet100.txt",
}


def check_colour_data(name: str, root: Path) -> None:
    """Fail early, naming the expected layout and how to fetch it, when ``name`` is not under ``root``."""
    if name in _TORCHVISION_SETS:
        folder = root / _TORCHVISION_SETS[name]
        if not folder.exists():
            raise FileNotFoundError(f"data set {name!r} not found: expected torchvision's {folder}/; set data.download: "
                                    f"true on a machine with network (torchvision fetches it) or point data.root at it")
        return
    folder = root / _FOLDER_SETS[name][0]
    if not (folder / "train").is_dir():
        raise FileNotFoundError(f"data set {name!r} not found: expected {folder}/train/<wnid>/... and {folder}/val/...; "
                                f"{_FETCH[name]}, or point data.root at the folder holding {folder.name}/")


def _render_colour_digits(split: str, copies: int) -> ImageData:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split
    import torch.nn.functional as F

    bunch = load_digits()
    idx = np.arange(len(bunch.target))
    train_idx, test_idx = train_test_split(idx, test_size=0.2, random_state=0, stratify=bunch.target)
    chosen = np.sort(train_idx if split == "train" else test_idx)
    rng = np.random.default_rng(1 if split == "train" else 2)
    glyphs = torch.from_numpy(bunch.images[chosen].astype(np.float32) / 16.0).unsqueeze(1)  # (n, 1, 8, 8)
    scaled = {size: F.interpolate(glyphs, size=(size, size), mode="bilinear", align_corners=False)[:, 0].numpy()
              for size in range(16, 27)}  # every glyph at every size, (n, size, size)
    images, labels = [], []
    for _ in range(copies):
        for i, label in enumerate(bunch.target[chosen]):
            size = int(rng.integers(16, 27))
            mask = scaled[size][i]
            top, left = rng.integers(0, 33 - size, size=2)
            background = rng.uniform(0, 1, 3)[:, None, None] * np.ones((3, 32, 32))
            texture = rng.normal(0, 0.08, (3, 8, 8)).repeat(4, 1).repeat(4, 2)  # blocky low-frequency noise
            foreground = rng.uniform(0, 1, 3)
            while np.abs(foreground - background[:, 0, 0]).max() < 0.4:  # keep the digit visible
                foreground = rng.uniform(0, 1, 3)
            image = np.clip(background + texture, 0, 1)
            alpha = np.zeros((32, 32)); alpha[top:top + size, left:left + size] = np.clip(mask, 0, 1)
            image = image * (1 - alpha) + foreground[:, None, None] * alpha
            images.append(np.round(image * 255).astype(np.uint8)); labels.append(int(label))
    return ImageData(_to_unit_range_u8(np.stack(images)), torch.tensor(labels, dtype=torch.int64), "colour_digits", split)


_CACHE: dict[str, ImageData] = {}


def load_colour_digits(split: str) -> ImageData:
    """The embedded colour stand-in: scikit-learn's digits drawn at a random size (16-26 px) and place on a 32x32
    canvas, in a random colour on a random, textured background. Train: the 1,437 training digits twice (2,874
    images); test: the 360 test digits once. Deterministic; a few seconds to build, then cached. A stand-in for
    running the colour path offline, NOT CIFAR: its numbers say nothing about CIFAR robustness."""
    if split not in _CACHE:
        _CACHE[split] = _render_colour_digits(split, copies=2 if split == "train" else 1)
    return _CACHE[split]


def load_colour_set(name: str, split: str, root: Path, download: bool = False) -> ImageData:
    """One of the paper's colour data sets from ``root`` (see the module docstring for layouts)."""
    if not download:
        check_colour_data(name, root)
    if name in _TORCHVISION_SETS:
        from torchvision import datasets

        if name == "svhn":
            ds = datasets.SVHN(str(root / "svhn"), split=split, download=download)
            images, labels = ds.data, np.asarray(ds.labels)  # (N, 3, 32, 32) uint8
        else:
            cls = datasets.CIFAR10 if name == "cifar10" else datasets.CIFAR100
            ds = cls(str(root), train=(split == "train"), download=download)
            images, labels = ds.data.transpose(0, 3, 1, 2), np.asarray(ds.targets)  # (N, 32, 32, 3) -> (N, 3, 32, 32)
        return ImageData(_to_unit_range_u8(images), torch.from_numpy(labels.astype(np.int64)), name, split)
    return _load_folder(name, split, root)


def _load_folder(name: str, split: str, root: Path) -> ImageData:
    from PIL import Image
    from torchvision import transforms

    folder_name, size = _FOLDER_SETS[name]
    folder = root / folder_name
    classes = sorted(p.name for p in (folder / "train").iterdir() if p.is_dir())
    if name == "imagenet100":
        class_list = folder / "imagenet100.txt"
        if not class_list.is_file():
            raise FileNotFoundError(f"imagenet100 needs {class_list}: its 100 ImageNet class ids (wnids), one per line")
        wanted = [w.strip() for w in Path(class_list).read_text().split() if w.strip()]
        missing = [w for w in wanted if w not in classes]
        if missing:
            raise FileNotFoundError(f"{len(missing)} classes of {class_list} are not under {folder}/train (first: "
                                    f"{missing[0]})")
        classes = wanted
    index = {c: i for i, c in enumerate(classes)}
    files: list[tuple[Path, int]] = []
    if split == "train":
        for c in classes:
            sub = folder / "train" / c
            sub = sub / "images" if (sub / "images").is_dir() else sub
            files += [(f, index[c]) for f in sorted(sub.iterdir()) if f.is_file()]
    elif (folder / "val" / "val_annotations.txt").exists():  # Tiny-ImageNet: one flat folder plus an annotation file
        for line in (folder / "val" / "val_annotations.txt").read_text().splitlines():
            parts = line.split("\t")
            if len(parts) > 1 and parts[1] in index:
                files.append((folder / "val" / "images" / parts[0], index[parts[1]]))
    else:
        for c in classes:
            files += [(f, index[c]) for f in sorted((folder / "val" / c).iterdir()) if f.is_file()]
    resize = transforms.Compose([transforms.Resize(size if size == 64 else 256), transforms.CenterCrop(size)])
    images = np.stack([np.asarray(resize(Image.open(f).convert("RGB"))).transpose(2, 0, 1) for f, _ in files])
    labels = torch.tensor([label for _, label in files], dtype=torch.int64)
    return ImageData(_to_unit_range_u8(images), labels, name, split)
