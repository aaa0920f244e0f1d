"""Data sets load offline as 8-bit-representable tensors in [0, 1]."""
from __future__ import annotations

import pytest
import torch

from mid_core.datasets import check_data_available, load_dataset


@pytest.mark.parametrize("split,n", [("train", 1437), ("test", 360)])
def test_digits_shapes_and_range(split, n):
    data = load_dataset("digits", split)
    assert data.images.shape == (n, 1, 28, 28) and data.labels.shape == (n,)
    assert float(data.images.min()) >= 0 and float(data.images.max()) <= 1
    assert torch.equal(torch.round(data.images * 255) / 255, data.images), "clean images must be exactly 8-bit"
    assert set(data.labels.tolist()) == set(range(10))



def _mnist_available() -> bool:
    try:
        check_data_available("mnist")
        return True
    except FileNotFoundError:
        return False


@pytest.mark.skipif(not _mnist_available(), reason="MNIST not under $MID_DATA_ROOT (../shared/data in this repo's CI)")
def test_mnist_reads_offline_from_data_root():
    test = load_dataset("mnist", "test")
    assert test.images.shape == (10000, 1, 28, 28)
    assert test.labels[0].item() == 7


@pytest.mark.skipif(not _mnist_available(), reason="MNIST not under $MID_DATA_ROOT (../shared/data in this repo's CI)")
def test_a_raw_folder_with_only_the_gz_files_loads_the_same_images(tmp_path):
    import shutil

    from mid_core.datasets import resolve_data_root

    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for f in (resolve_data_root() / "MNIST" / "raw").glob("*.gz"):
        shutil.copyfile(f, raw / f.name)
    from_gz, from_torchvision = load_dataset("mnist", "test", tmp_path), load_dataset("mnist", "test")
    assert torch.equal(from_gz.images, from_torchvision.images)
    assert torch.equal(from_gz.labels, from_torchvision.labels)


def test_a_truncated_idx_file_is_refused_with_a_fix(tmp_path):
    import gzip

    from mid_core.datasets import read_idx

    bad = tmp_path / "t10k-labels-idx1-ubyte.gz"
    bad.write_bytes(gzip.compress(bytes([0, 0, 8, 1, 0, 0, 0, 10, 7, 2])))  # header says 10 labels, 2 present
    with pytest.raises(ValueError, match="truncated.*re-download"):
        read_idx(bad)


def test_missing_data_root_error_says_what_to_do(tmp_path):
    with pytest.raises(FileNotFoundError, match="MID_DATA_ROOT"):
        check_data_available("fmnist", tmp_path)


def test_unknown_split_rejected():
    with pytest.raises(ValueError, match="unknown split"):
        load_dataset("digits", "validation")


def test_digits_split_is_fixed():
    assert torch.equal(load_dataset("digits", "train").images, load_dataset("digits", "train").images)
