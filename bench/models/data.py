"""Datasets read from local files only: IDX files (MNIST format), Fashion-MNIST.

Fashion-MNIST is looked for, in order, in an explicit directory (spec key ``data_dir``), the
environment variable ``BENCH_FASHION_MNIST``, Debian's ``dataset-fashion-mnist`` package
(/usr/share/datasets/fashion-mnist) and a torchvision-style root (./data/FashionMNIST/raw). Files
may be gzipped or not.
"""
from __future__ import annotations

import gzip
import os
from pathlib import Path

import numpy as np
import torch

DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")
TORCHVISION_DIR = Path("data/FashionMNIST/raw")
ENV_VAR = "BENCH_FASHION_MNIST"
_FILES = {"train": "train-images-idx3-ubyte", "test": "t10k-images-idx3-ubyte"}
_LABEL_FILES = {"train": "train-labels-idx1-ubyte", "test": "t10k-labels-idx1-ubyte"}
# The ten classes, in label order (Xiao, Rasul & Vollgraf 2017, Table 1).
FASHION_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                   "Ankle boot")
_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: Path) -> np.ndarray:
    """An IDX file (optionally .gz) as a numpy array (LeCun et al.'s MNIST format)."""
    path = Path(path)
    raw = gzip.open(path, "rb").read() if path.suffix == ".gz" else path.read_bytes()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise ValueError(f"{path}: not an IDX file (bad magic number {raw[:4].hex()})")
    ndim = raw[3]
    shape = tuple(int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    data = np.frombuffer(raw, dtype=_IDX_DTYPES[raw[2]], offset=4 + 4 * ndim)
    if data.size != int(np.prod(shape)):
        raise ValueError(f"{path}: header says shape {shape} but holds {data.size} values")
    return data.reshape(shape)


def _candidates(data_dir) -> list[Path]:
    dirs = [Path(d) for d in (data_dir, os.environ.get(ENV_VAR)) if d]
    return dirs + [DEBIAN_DIR, TORCHVISION_DIR]


def fashion_mnist(split: str = "train", data_dir=None, size: int = 32, resize: str = "pad") -> torch.Tensor:
    """Fashion-MNIST images as float32 in [-1, 1], shape (N, 1, size, size).

    ``resize="pad"`` pads 28x28 with the background colour to ``size`` (centred); ``"bilinear"``
    resizes. Raises FileNotFoundError naming every place it looked and how to get the data.
    """
    if split not in _FILES:
        raise ValueError(f"fashion_mnist: split must be one of {tuple(_FILES)}, got {split!r}")
    if resize not in ("pad", "bilinear"):
        raise ValueError(f"fashion_mnist: resize must be 'pad' or 'bilinear', got {resize!r}")
    images = torch.from_numpy(_read_split(_FILES[split], data_dir).copy()).float()[:, None] / 127.5 - 1
    return _to_size(images, size, resize)


def fashion_mnist_labels(split: str = "train", data_dir=None) -> torch.Tensor:
    """The class labels (int64, 0-9, named by FASHION_CLASSES) of ``fashion_mnist(split)``, in the same order."""
    if split not in _LABEL_FILES:
        raise ValueError(f"fashion_mnist_labels: split must be one of {tuple(_LABEL_FILES)}, got {split!r}")
    return torch.from_numpy(_read_split(_LABEL_FILES[split], data_dir).astype(np.int64))


def _read_split(file_name: str, data_dir) -> np.ndarray:
    looked = []
    for directory in _candidates(data_dir):
        for name in (file_name + ".gz", file_name):
            looked.append(str(directory / name))
            if (directory / name).is_file():
                return read_idx(directory / name)
    raise FileNotFoundError(f"Fashion-MNIST file {file_name} not found; looked for {', '.join(looked)}. Install "
                            f"it with `apt-get install dataset-fashion-mnist`, or point {ENV_VAR} or the spec's "
                            f"data_dir at a folder holding {file_name}[.gz].")


def _to_size(images: torch.Tensor, size: int, resize: str) -> torch.Tensor:
    height = images.shape[-1]
    if size == height:
        return images
    if resize == "bilinear":
        return torch.nn.functional.interpolate(images, size=(size, size), mode="bilinear", align_corners=False)
    if size < height:
        raise ValueError(f"fashion_mnist: cannot pad {height}x{height} images to {size}x{size}; use resize='bilinear'")
    before = (size - height) // 2
    return torch.nn.functional.pad(images, (before, size - height - before) * 2, value=-1.0)
