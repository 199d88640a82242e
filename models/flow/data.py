"""MNIST in the original IDX format (gzip or raw), read from a directory given by the caller.

File format (http://yann.lecun.com/exdb/mnist/): big-endian header, magic ``0x00000803`` for images
(``n, rows, cols`` follow) and ``0x00000801`` for labels (``n`` follows), then uint8 payload.

The loader knows the four official file names with their published md5 sums, can download them from
a mirror (``download_mnist``), and also reads any other ``<prefix>-images-idx3-ubyte[.gz]`` /
``<prefix>-labels-idx1-ubyte[.gz]`` pair in the directory (for example the ``train5k`` pair of the
shared data folder). Images come back as float32 ``(N, 1, 28, 28)`` in [0, 1], labels as int64 ``(N,)``.
"""

from __future__ import annotations

import gzip
import hashlib
import logging
import os
import re
import struct
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import torch

logger = logging.getLogger(__name__)

#: The four official files and their published md5 sums.
MNIST_FILES: dict[str, str] = {
    "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
    "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
    "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
    "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
}
#: Default mirror (the torchvision one); any URL prefix serving the four files works.
DEFAULT_MIRROR = "https://ossci-datasets.s3.amazonaws.com/mnist/"

_IMAGES_MAGIC = 0x00000803
_LABELS_MAGIC = 0x00000801
_PAIR_RE = re.compile(r"^(?P<prefix>.+)-images-idx3-ubyte(?P<gz>\.gz)?$")


class MNISTDataError(ValueError):
    """A missing, corrupted or inconsistent MNIST file."""


@dataclass(frozen=True)
class MNISTSplit:
    """One IDX image/label pair.

    Attributes:
        name: the file prefix, e.g. ``"train"``, ``"t10k"`` or ``"train5k"``.
        images: (N, 1, 28, 28) float32 in [0, 1].
        labels: (N,) int64 in 0..9.
    """

    name: str
    images: torch.Tensor
    labels: torch.Tensor


def md5sum(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """Hex md5 of a file."""
    h = hashlib.md5()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def _read_bytes(path: Path) -> bytes:
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as f:
                return f.read()
        return path.read_bytes()
    except (OSError, EOFError, gzip.BadGzipFile) as e:
        raise MNISTDataError(f"cannot read MNIST file {path}: {e}") from e


def read_idx_images(path: str | os.PathLike) -> torch.Tensor:
    """Read an IDX3 image file: returns (N, 1, rows, cols) float32 in [0, 1]."""
    path = Path(path)
    raw = _read_bytes(path)
    if len(raw) < 16:
        raise MNISTDataError(f"{path}: too short for an IDX image header ({len(raw)} bytes)")
    magic, n, rows, cols = struct.unpack(">IIII", raw[:16])
    if magic != _IMAGES_MAGIC:
        raise MNISTDataError(f"{path}: bad magic {magic:#010x}, expected {_IMAGES_MAGIC:#010x} (IDX images)")
    expected = 16 + n * rows * cols
    if len(raw) != expected:
        raise MNISTDataError(f"{path}: header says {n}x{rows}x{cols} ({expected} bytes), file has {len(raw)}")
    data = torch.frombuffer(bytearray(raw[16:]), dtype=torch.uint8).reshape(n, 1, rows, cols)
    return data.float() / 255.0


def read_idx_labels(path: str | os.PathLike) -> torch.Tensor:
    """Read an IDX1 label file: returns (N,) int64."""
    path = Path(path)
    raw = _read_bytes(path)
    if len(raw) < 8:
        raise MNISTDataError(f"{path}: too short for an IDX label header ({len(raw)} bytes)")
    magic, n = struct.unpack(">II", raw[:8])
    if magic != _LABELS_MAGIC:
        raise MNISTDataError(f"{path}: bad magic {magic:#010x}, expected {_LABELS_MAGIC:#010x} (IDX labels)")
    if len(raw) != 8 + n:
        raise MNISTDataError(f"{path}: header says {n} labels, file has {len(raw) - 8}")
    labels = torch.frombuffer(bytearray(raw[8:]), dtype=torch.uint8).long()
    if labels.numel() and int(labels.max()) > 9:
        raise MNISTDataError(f"{path}: label {int(labels.max())} out of range 0..9")
    return labels


def download_mnist(root: str | os.PathLike, mirror: str = DEFAULT_MIRROR) -> None:
    """Download the four official files into ``root`` (skipping good existing ones); verify md5.

    Raises :class:`MNISTDataError` when a download fails or a checksum does not match.
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    for name, md5 in MNIST_FILES.items():
        dest = root / name
        if dest.exists() and md5sum(dest) == md5:
            continue
        url = mirror.rstrip("/") + "/" + name
        logger.info("downloading %s", url)
        tmp = dest.with_suffix(dest.suffix + ".part")
        try:
            urllib.request.urlretrieve(url, tmp)
        except OSError as e:
            tmp.unlink(missing_ok=True)
            raise MNISTDataError(f"cannot download {url}: {e}") from e
        got = md5sum(tmp)
        if got != md5:
            tmp.unlink(missing_ok=True)
            raise MNISTDataError(f"{url}: md5 {got} does not match the published {md5}")
        tmp.replace(dest)


def verify_official_files(root: str | os.PathLike) -> None:
    """Check the md5 of every official file present in ``root``; raise on a mismatch."""
    for name, md5 in MNIST_FILES.items():
        p = Path(root) / name
        if p.exists():
            got = md5sum(p)
            if got != md5:
                raise MNISTDataError(f"{p}: md5 {got} does not match the published {md5} (corrupted?)")


def find_pairs(root: str | os.PathLike) -> dict[str, tuple[Path, Path]]:
    """All ``<prefix>-images-idx3-ubyte[.gz]`` files in ``root`` with their label file, by prefix."""
    root = Path(root)
    pairs: dict[str, tuple[Path, Path]] = {}
    if not root.is_dir():
        return pairs
    for p in sorted(root.iterdir()):
        m = _PAIR_RE.match(p.name)
        if not m:
            continue
        prefix, gz = m["prefix"], m["gz"] or ""
        lab = root / f"{prefix}-labels-idx1-ubyte{gz}"
        if not lab.exists():
            raise MNISTDataError(f"{p} has no matching label file {lab.name}")
        pairs[prefix] = (p, lab)
    return pairs


def load_split(images_path: str | os.PathLike, labels_path: str | os.PathLike, name: str = "") -> MNISTSplit:
    """Read one image/label pair and check that they agree."""
    images = read_idx_images(images_path)
    labels = read_idx_labels(labels_path)
    if images.shape[0] != labels.shape[0]:
        raise MNISTDataError(
            f"{images_path} has {images.shape[0]} images but {labels_path} has {labels.shape[0]} labels"
        )
    return MNISTSplit(name or Path(images_path).name.split("-")[0], images, labels)


def load_mnist_dir(
    root: str | os.PathLike, *, download: bool = False, mirror: str = DEFAULT_MIRROR
) -> dict[str, MNISTSplit]:
    """Every IDX pair in ``root`` keyed by prefix (``train``, ``t10k``, ``train5k``, ...).

    Official files present are md5-verified. With ``download=True`` the four official files are
    fetched first when missing. Raises :class:`MNISTDataError` with a clear message when the folder
    holds no pair (and downloading is off or impossible).
    """
    root = Path(root)
    if download:
        download_mnist(root, mirror)
    pairs = find_pairs(root)
    if not pairs:
        raise MNISTDataError(
            f"no MNIST IDX files (<prefix>-images-idx3-ubyte[.gz] + labels) in {root.resolve()}; "
            "point --data (or MNIST_DATA_DIR) at the folder that holds them, or add --download (needs internet) "
            "to fetch the official "
            f"four files: {', '.join(MNIST_FILES)}"
        )
    verify_official_files(root)
    return {name: load_split(images, labels, name) for name, (images, labels) in pairs.items()}


def load_all(root: str | os.PathLike, *, download: bool = False, mirror: str = DEFAULT_MIRROR) -> MNISTSplit:
    """All pairs in ``root`` concatenated (sorted by prefix; NOT shuffled -- shuffle before use)."""
    splits = load_mnist_dir(root, download=download, mirror=mirror)
    names = sorted(splits)
    return MNISTSplit(
        "+".join(names),
        torch.cat([splits[n].images for n in names]),
        torch.cat([splits[n].labels for n in names]),
    )
