"""The IDX loader: reads the shared MNIST files, rejects corrupted ones with a clear error."""

from __future__ import annotations

import gzip
import shutil
import struct
from pathlib import Path

import pytest
import torch

from models.flow.data import (
    MNIST_FILES,
    MNISTDataError,
    find_pairs,
    load_all,
    load_mnist_dir,
    md5sum,
    read_idx_images,
    read_idx_labels,
)

DATA = Path(__file__).resolve().parents[3] / "shared" / "data" / "mnist"
needs_data = pytest.mark.skipif(not DATA.is_dir(), reason=f"shared MNIST folder {DATA} not present")


def _write_pair(folder: Path, prefix: str, images: torch.Tensor, labels: torch.Tensor) -> None:
    n, _, r, c = images.shape
    img = struct.pack(">IIII", 0x803, n, r, c) + (images * 255).round().to(torch.uint8).numpy().tobytes()
    lab = struct.pack(">II", 0x801, n) + labels.to(torch.uint8).numpy().tobytes()
    (folder / f"{prefix}-images-idx3-ubyte.gz").write_bytes(gzip.compress(img))
    (folder / f"{prefix}-labels-idx1-ubyte.gz").write_bytes(gzip.compress(lab))


@needs_data
def test_reads_shared_files() -> None:
    splits = load_mnist_dir(DATA)
    assert set(splits) >= {"t10k", "train5k"}
    t10k, t5k = splits["t10k"], splits["train5k"]
    assert t10k.images.shape == (10000, 1, 28, 28) and t10k.labels.shape == (10000,)
    assert t5k.images.shape == (5000, 1, 28, 28)
    assert t10k.images.dtype == torch.float32 and t10k.images.min() >= 0 and t10k.images.max() == 1
    assert torch.equal(t5k.labels.bincount(), torch.full((10,), 500))
    assert torch.all(t5k.labels[:-1] <= t5k.labels[1:])  # the train5k file is sorted by class
    assert t10k.labels[:10].tolist() == [7, 2, 1, 0, 4, 1, 4, 9, 5, 9]  # the official test set
    assert md5sum(DATA / "t10k-labels-idx1-ubyte.gz") == MNIST_FILES["t10k-labels-idx1-ubyte.gz"]


def test_roundtrip_and_pairs(tmp_path: Path) -> None:
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (5, 1, 28, 28), generator=g).float() / 255
    labels = torch.tensor([3, 1, 4, 1, 5])
    _write_pair(tmp_path, "mine", images, labels)
    assert list(find_pairs(tmp_path)) == ["mine"]
    s = load_mnist_dir(tmp_path)["mine"]
    assert torch.equal(s.images, images) and torch.equal(s.labels, labels)


def test_rejects_truncated_file(tmp_path: Path) -> None:
    _write_pair(tmp_path, "bad", torch.zeros(4, 1, 28, 28), torch.zeros(4, dtype=torch.long))
    p = tmp_path / "bad-images-idx3-ubyte.gz"
    raw = gzip.decompress(p.read_bytes())
    p.write_bytes(gzip.compress(raw[:-100]))
    with pytest.raises(MNISTDataError, match=r"header says 4x28x28"):
        read_idx_images(p)


def test_rejects_bad_gzip_and_bad_magic(tmp_path: Path) -> None:
    p = tmp_path / "x-images-idx3-ubyte.gz"
    p.write_bytes(b"\x1f\x8b\x08garbage-not-gzip")
    with pytest.raises(MNISTDataError, match="cannot read MNIST file"):
        read_idx_images(p)
    q = tmp_path / "y-labels-idx1-ubyte"
    q.write_bytes(struct.pack(">II", 0x803, 1) + b"\x00")
    with pytest.raises(MNISTDataError, match="bad magic"):
        read_idx_labels(q)


def test_rejects_count_mismatch(tmp_path: Path) -> None:
    _write_pair(tmp_path, "a", torch.zeros(3, 1, 28, 28), torch.zeros(3, dtype=torch.long))
    lab = struct.pack(">II", 0x801, 2) + bytes(2)
    (tmp_path / "a-labels-idx1-ubyte.gz").write_bytes(gzip.compress(lab))
    with pytest.raises(MNISTDataError, match=r"3 images but .* 2 labels"):
        load_mnist_dir(tmp_path)


@needs_data
def test_rejects_official_file_with_wrong_md5(tmp_path: Path) -> None:
    # A corrupted copy of an official file: still valid gzip/IDX, but one pixel changed.
    name = "t10k-labels-idx1-ubyte.gz"
    raw = bytearray(gzip.decompress((DATA / name).read_bytes()))
    raw[100] = (raw[100] + 1) % 10
    (tmp_path / name).write_bytes(gzip.compress(bytes(raw)))
    shutil.copy(DATA / "t10k-images-idx3-ubyte.gz", tmp_path)
    with pytest.raises(MNISTDataError, match=r"md5 .* does not match the published"):
        load_mnist_dir(tmp_path)


def test_empty_folder_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(MNISTDataError, match=r"no MNIST IDX files .*--download"):
        load_all(tmp_path / "nowhere")
