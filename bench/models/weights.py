"""The sha256 of a model's weight files, as rows record it (``weights_sha256``): one definition for a diffusers
folder, each component of a pipeline and a CLIP folder; and of a torch module's own tensors, for a python: function's
network, which has no files."""
from __future__ import annotations

import hashlib
from pathlib import Path

import torch

WEIGHT_FILES = ("*.safetensors", "*.bin")


def files_digest(folder: Path) -> str | None:
    """sha256 over a folder's weight files (sorted by name, each name then its bytes): the file's own sha256
    where there is one file; None where there is none."""
    files = sorted(p for pattern in WEIGHT_FILES for p in Path(folder).glob(pattern))
    if not files:
        return None
    if len(files) == 1:
        return hashlib.sha256(files[0].read_bytes()).hexdigest()
    digest = hashlib.sha256()
    for path in files:
        digest.update(path.name.encode() + path.read_bytes())
    return digest.hexdigest()


def module_digest(module) -> str:
    """sha256 over a torch module's state dict (each entry's name, dtype, shape, then its bytes, in the dict's order):
    the same for the same weights wherever they came from."""
    digest = hashlib.sha256()
    for name, tensor in module.state_dict().items():
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
        digest.update(tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()
