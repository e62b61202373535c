"""FID, KID and precision/recall of image samples from one Inception feature pass (torch-fidelity).

Samples in [-1, 1] are turned into uint8 exactly as saving a PNG would (round((x + 1)/2 * 255),
clamped; grey images repeated to RGB) and fed as tensors; torch-fidelity's extractor resizes them
to 299x299 the way TensorFlow 1 did and returns pool3 (2048-d) features, which serve all three
metrics (FID: Heusel et al. 2017; KID: Binkowski et al. 2018; precision/recall k = 3: Kynkaanniemi
et al. 2019). Reference features are cached on disk, keyed by the sha256 of the reference pixels and
of the extractor weights, and every image row records that protocol (``protocol``).

The standard reference (``fid_reference = "fashion_mnist_test"``) is the one the field reports: the
whole Fashion-MNIST test split (10,000 images) at its native 28x28, samples of 32x32 models cropped of
their 2-pixel padding. Its statistics ship with the project (``bench/references/``, made once by
``python -m bench fid-reference``): mean and covariance of all 10,000 feature vectors for FID, the
features of a seeded 2,000-image subset for KID and precision/recall, sha256-checked on load.
"""
from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import numpy as np
import torch

from bench import files
from bench.metrics import fid_weights
from bench.metrics.distances import PRECISION_RECALL_COLUMNS
from bench.metrics.registry import F64, I64, STR, Inputs, Metric, register
from bench.metrics.uncertainty import (NEIGHBOUR_SAMPLES, FrechetReference, KernelReference, NeighbourReference,
                                       full_precision_matmul)

CACHE_DIR = Path(".cache/fid")
EXTRACTOR_ID = "inception-v3-compat-2015-12-05"
REFERENCES_DIR = Path(__file__).parent / "references"
SHIPPED = {"fashion_mnist_test": "the Fashion-MNIST test split"}  # fid_reference -> what it is
NATIVE_SIZE = 28  # Fashion-MNIST's own resolution, where the standard FID compares images
SUBSET_SIZE, SUBSET_SEED = 2000, 0  # shipped features for KID and precision/recall
KID_SUBSETS, KID_SUBSET_SIZE = 100, 1000  # torch-fidelity's defaults


def crop_to_native(images: torch.Tensor) -> torch.Tensor:
    """Samples of a Fashion-MNIST model at 28x28: 32x32 ones lose the 2-pixel padding the data was given."""
    size = images.shape[-1]
    if size == NATIVE_SIZE:
        return images
    if size != 32:
        raise ValueError(f"fid_reference 'fashion_mnist_test' compares 28x28 images; samples of {size}px are neither "
                         f"28px nor 28px padded to 32px (use fid_reference = 'fashion_mnist' for other sizes)")
    start = (size - NATIVE_SIZE) // 2
    return images[..., start:start + NATIVE_SIZE, start:start + NATIVE_SIZE]


def to_uint8_rgb(images: torch.Tensor) -> torch.Tensor:
    """[-1, 1] floats (N, C, H, W) -> uint8 RGB as a saved PNG holds them."""
    if images.ndim != 4 or images.shape[1] not in (1, 3):
        raise ValueError(f"image metrics need (N, 1 or 3, H, W) images, got shape {tuple(images.shape)}")
    pixels = ((images.float() + 1) * 127.5 + 0.5).floor().clamp(0, 255).to(torch.uint8)
    return pixels.expand(-1, 3, -1, -1) if pixels.shape[1] == 1 else pixels


class InceptionFeatures:
    """pool3 features of the 2015 FID Inception network from local weights, computed in batches.

    The network runs in channels-last memory format under inference mode: on the 2-core CPU that is
    1.52x the images per second of the plain extractor (14.5 vs 9.6 for 32x32 images; `make perf`
    measures both side by side), with features equal to 1.2e-6 of the largest (tested).
    ``channels_last=False`` gives the plain torch-fidelity extractor.
    """

    def __init__(self, weights: str | None = None, device: str = "cpu", batch_size: int = 50,
                 channels_last: bool = True):
        self.weights_path = fid_weights.resolve(weights)
        self.weights_digest = fid_weights.sha256(self.weights_path)
        self.device, self.batch_size = device, batch_size
        self.net = fid_weights.extractor(self.weights_path, device)
        if channels_last:
            self.net = self.net.to(memory_format=torch.channels_last)

    @torch.inference_mode()
    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        pixels = to_uint8_rgb(images)
        parts = [self.net(chunk.to(self.device))[0].double().cpu() for chunk in pixels.split(self.batch_size)]
        return torch.cat(parts)


class ReferenceSet:
    """A FID reference set as the image metrics use it, with what depends on it alone computed once: its mean and
    covariance (FID), the features KID compares with (and their kernel mean), the features precision/recall compare
    with (``equal_sizes``: the first n of them for n samples, as Kynkaanniemi et al. compare equal-size sets) and
    their radii."""

    def __init__(self, frechet: FrechetReference, features: torch.Tensor, equal_sizes: bool = False):
        self.frechet, self.features, self.equal_sizes = frechet, features.double(), equal_sizes
        self.kernel = KernelReference(self.features)
        self._neighbours: dict = {}
        self._placed: dict = {self.features.device: self}

    def on(self, device) -> "ReferenceSet":
        """This reference set with its tensors on ``device`` (made once per device), so that the metric math runs
        where the samples were made: at 10,000 samples and 2,048 dimensions it is about 1.5 TFLOP in float64 per
        row (KID's 100 subsets most of it), minutes on a host's cores, well under a second on a GPU."""
        device = torch.device(device)
        if device not in self._placed:
            frechet = FrechetReference(self.frechet.mu.to(device), self.frechet.factor.to(device), self.frechet.rank)
            self._placed[device] = ReferenceSet(frechet, self.features.to(device), self.equal_sizes)
        return self._placed[device]

    @classmethod
    def of_features(cls, features: torch.Tensor) -> "ReferenceSet":
        return cls(FrechetReference.of(features), features)

    def neighbours(self, n: int) -> NeighbourReference:
        size = min(n, len(self.features)) if self.equal_sizes else len(self.features)
        if size not in self._neighbours:
            self._neighbours[size] = NeighbourReference(self.features[:size])
        return self._neighbours[size]

    def metrics(self, features: torch.Tensor, seed: int = 0) -> dict:
        """fid, kid (torch-fidelity's mean over 100 subsets), precision and recall of ``features``, each with its
        standard error (bench.metrics.uncertainty), computed on this set's device in full precision (no TF32,
        whatever the sweep's policy)."""
        features = features.to(self.features.device)
        with full_precision_matmul():
            fid, fid_se = self.frechet.distance_and_se(features)
            return {"fid": fid, "fid_se": fid_se, "kid": _kid(features, self.features, seed),
                    "kid_se": self.kernel.kid_se(features),
                    **self.neighbours(len(features)).precision_recall_and_se(features)}


def image_metrics(features: torch.Tensor, reference: torch.Tensor, seed: int = 0) -> dict:
    """fid, kid, precision and recall of ``features`` against the reference features ``reference``, with SEs."""
    return ReferenceSet.of_features(reference).metrics(features, seed)


def _kid(features: torch.Tensor, reference: torch.Tensor, seed: int) -> float:
    """torch-fidelity's KID (metric_kid.kid_features_to_metric: the unbiased MMD^2 with the kernel (x.y / d + 1)^3,
    averaged over KID_SUBSETS pairs of random subsets of min(1000, n, m) drawn by numpy's RandomState(seed) in its
    order), computed in float64 on the features' device instead of in numpy on the host; equal to its value to
    rounding (tested)."""
    n, m, dim = len(features), len(reference), features.shape[1]
    size = min(KID_SUBSET_SIZE, n, m)
    rng = np.random.RandomState(seed)
    picks = [(rng.choice(n, size, replace=False), rng.choice(m, size, replace=False)) for _ in range(KID_SUBSETS)]
    x, y = features.double(), reference.double().to(features.device)

    def kernel(a, b):
        return (a @ b.T * (1.0 / dim) + 1) ** 3

    total = torch.zeros((), dtype=torch.float64, device=x.device)
    for rows, columns in picks:
        a, b = x[torch.as_tensor(rows, device=x.device)], y[torch.as_tensor(columns, device=x.device)]
        kxx, kyy = kernel(a, a), kernel(b, b)
        total += ((kxx.sum() - kxx.diagonal().sum() + kyy.sum() - kyy.diagonal().sum()) / (size * (size - 1))
                  - 2 * kernel(a, b).sum() / size**2)
    return float(total / KID_SUBSETS)


class ShippedReference:
    """A reference set's statistics as shipped in ``bench/references/NAME.npz`` with ``NAME.json``: FID from
    the full set's mean and covariance, KID and precision/recall from a fixed subset's features.

    Loading checks the file's sha256 against the manifest and that the features came from the same
    Inception weights as the extractor in use, so a row can never mix two protocols unnoticed.
    """

    def __init__(self, name: str, weights_digest: str, directory: Path = REFERENCES_DIR):
        if name not in SHIPPED:
            raise ValueError(f"no shipped FID reference {name!r}; shipped: {', '.join(SHIPPED)}")
        path, manifest_path = Path(directory) / f"{name}.npz", Path(directory) / f"{name}.json"
        if not path.is_file() or not manifest_path.is_file():
            raise FileNotFoundError(f"FID reference {name!r}: {path} or {manifest_path} is missing; they ship with "
                                    f"the project (remade by `python -m bench fid-reference {name}`)")
        self.manifest = json.loads(manifest_path.read_text())
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        if digest != self.manifest["sha256"]:
            raise ValueError(f"FID reference {path}: sha256 {digest[:16]}... does not match its manifest's "
                             f"{self.manifest['sha256'][:16]}...; the file is damaged or was changed by hand")
        if self.manifest["fid_weights_sha256"] != weights_digest:
            raise ValueError(f"FID reference {name!r} was computed with Inception weights "
                             f"{self.manifest['fid_weights_sha256'][:16]}..., the extractor in use has "
                             f"{weights_digest[:16]}...; use the weights of `make fid-weights`")
        with np.load(path) as data:
            self.mu = data["mu"]
            self.sigma = _symmetric_from_upper(data["sigma_upper"], len(self.mu))
            self.features = torch.from_numpy(data["subset_features"]).double()
        self.name, self.count = name, self.manifest["count"]
        self.reference_set = ReferenceSet(FrechetReference.of_statistics(self.mu, self.sigma),
                                          self.features, equal_sizes=True)

    def metrics(self, features: torch.Tensor, seed: int = 0) -> dict:
        """fid against the full set's statistics; kid against the subset features; precision/recall against the
        first min(n, subset) of them (equal set sizes, as Kynkaanniemi et al. compute them); each with its SE."""
        return self.reference_set.metrics(features, seed)

    def protocol(self) -> dict:
        m = self.manifest
        return {"fid_reference": f"{SHIPPED[self.name]}, all {m['count']} images at 28px (statistics shipped)",
                "fid_reference_sha256": m["pixels_sha256"][:16], "reference_size": m["count"],
                "fid_resize": "28px uint8 RGB (32px samples cropped of their padding), torch-fidelity TF1 bilinear "
                              "to 299px", "fid_extractor": EXTRACTOR_ID, "fid_weights_sha256": m["fid_weights_sha256"][:16]}


def _symmetric_from_upper(upper: np.ndarray, dim: int) -> np.ndarray:
    matrix = np.zeros((dim, dim), dtype=upper.dtype)
    rows, cols = np.triu_indices(dim)
    matrix[rows, cols] = upper
    matrix[cols, rows] = upper
    return matrix


def write_shipped_reference(name: str, images: torch.Tensor, extractor: "InceptionFeatures", command: str,
                            commit: str, directory: Path = REFERENCES_DIR) -> dict:
    """Compute and write ``NAME.npz`` (mu, upper triangle of sigma, subset features) and ``NAME.json``."""
    features = extractor(images)
    mu, sigma = features.mean(0).numpy(), np.cov(features.numpy(), rowvar=False)
    chosen = torch.randperm(len(images), generator=torch.Generator().manual_seed(SUBSET_SEED))[:SUBSET_SIZE]
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{name}.npz"
    files.atomic_write(path, lambda handle: np.savez_compressed(
        handle, mu=mu, sigma_upper=sigma[np.triu_indices(len(mu))], subset_features=features[chosen].float().numpy(),
        subset_indices=chosen.numpy()))
    manifest = {"name": name, "count": len(images), "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
                "pixels_sha256": images_digest(images), "subset_size": len(chosen), "subset_seed": SUBSET_SEED,
                "fid_extractor": EXTRACTOR_ID, "fid_weights_sha256": extractor.weights_digest,
                "command": command, "commit": commit}
    (directory / f"{name}.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def image_shape(source) -> tuple:
    """The shape of a source's images: its samples', or a latent model's decoded images' (``image_shape``)."""
    return tuple(getattr(source, "image_shape", source.event_shape))


def reference_images(source, fid_reference: str, count: int, seed: int, data_dir=None, resize: str = "pad"):
    """(images, description) of a FID reference set: ``count`` exact samples of an image mixture
    (``"exact"``) or a seeded subset of the Fashion-MNIST training images brought to the model's size."""
    from bench.models.analytic import GaussianMixture
    from bench.models.data import fashion_mnist

    size = image_shape(source)[-1]
    generator = torch.Generator().manual_seed(seed)
    if fid_reference == "fashion_mnist":
        resize = resize if size >= 28 else "bilinear"  # 28x28 cannot be padded down
        data = fashion_mnist("train", data_dir=data_dir, size=size, resize=resize)
        chosen = data[torch.randperm(len(data), generator=generator)[:count]]
        return chosen, f"fashion_mnist train, {len(chosen)} images (seed {seed}), {resize} to {size}px"
    if fid_reference == "exact" and isinstance(source, GaussianMixture):
        return source.sample(count, generator).float(), f"{count} exact samples of the mixture (seed {seed})"
    raise ValueError(f"fid_reference {fid_reference!r}: exact samples exist for image mixtures only; "
                     f"use fid_reference = 'fashion_mnist_test' for a network")


def images_digest(images: torch.Tensor) -> str:
    """sha256 of the uint8 RGB pixels the extractor sees, with their shape: what reference features depend on."""
    pixels = to_uint8_rgb(images).contiguous()
    return hashlib.sha256(str(tuple(pixels.shape)).encode() + pixels.numpy().tobytes()).hexdigest()


FOLDER_PREFIX = "folder:"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


def folder_files(path) -> list[Path]:
    """The image files of a user's reference folder (sorted; not recursive)."""
    return sorted(p for p in Path(path).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)


def folder_reference(path, shape: tuple, extractor: InceptionFeatures,
                     cache_dir: Path = CACHE_DIR) -> tuple[torch.Tensor, str, str]:
    """(features, digest, description) of every image in a user's folder, brought to ``shape`` (channels, size):
    converted to RGB or greyscale and resized (bilinear, antialiased) as the samples are sized. Its features are
    computed once and cached on disk by the sha256 of the files' names and bytes, the size and the extractor."""
    from PIL import Image

    files_in = folder_files(path)
    digest = hashlib.sha256()
    for file in files_in:
        digest.update(file.name.encode() + file.read_bytes())
    digest = digest.hexdigest()
    channels, size = shape[0], shape[-1]
    cache = Path(cache_dir) / f"folder-{digest[:16]}-{channels}x{size}-{extractor.weights_digest[:12]}.pt"
    description = f"folder {path}: {len(files_in)} images, resized to {size}px"
    if cache.is_file():
        return torch.load(cache), digest, description
    images = []
    for file in files_in:
        with Image.open(file) as image:
            pixels = np.asarray(image.convert("RGB" if channels == 3 else "L"), dtype=np.float32)
        tensor = torch.from_numpy(pixels).reshape(pixels.shape[0], pixels.shape[1], -1).permute(2, 0, 1)[None] / 127.5 - 1
        images.append(torch.nn.functional.interpolate(tensor, size=(size, size), mode="bilinear", antialias=True,
                                                      align_corners=False))
    features = extractor(torch.cat(images).clamp(-1, 1))
    cache.parent.mkdir(parents=True, exist_ok=True)
    files.atomic_write(cache, lambda handle: torch.save(features, handle))
    return features, digest, description


def cached_reference(images: torch.Tensor, extractor: InceptionFeatures, cache_dir: Path = CACHE_DIR) -> tuple[torch.Tensor, str]:
    """(features, images digest) of reference ``images``, computed once per (pixels, extractor weights)
    and kept on disk: two reference sets share features only when their pixels are identical."""
    digest = images_digest(images)
    path = Path(cache_dir) / f"ref-{digest[:16]}-{extractor.weights_digest[:12]}.pt"
    if path.is_file():
        return torch.load(path), digest
    features = extractor(images)
    path.parent.mkdir(parents=True, exist_ok=True)
    files.atomic_write(path, lambda handle: torch.save(features, handle))
    return features, digest


def protocol(extractor: InceptionFeatures, description: str, digest: str, count: int, image_size: int) -> dict:
    """The FID protocol columns of an image row: reference set, resize, size, extractor and weights."""
    return {"fid_reference": description, "fid_reference_sha256": digest[:16], "reference_size": count,
            "fid_resize": f"{image_size}px uint8 RGB, torch-fidelity TF1 bilinear to 299px",
            "fid_extractor": EXTRACTOR_ID, "fid_weights_sha256": extractor.weights_digest[:16]}


# A dataset subset or a mixture's exact samples as the reference set are drawn from this seed, whatever the config's:
# one set for every row, as the shipped test split is, so that rows of different seeds (and runs) are judged against
# the same set and their standard errors, which hold the reference fixed, hold for comparing them.
FID_REFERENCE_SEED = 20_000


def _extractor(inputs: Inputs) -> InceptionFeatures:
    cfg, cache = inputs.cfg, inputs.sweep.setdefault("inception", {})
    key = (cfg.fid_weights, str(inputs.device))
    if key not in cache:
        cache[key] = InceptionFeatures(cfg.fid_weights, str(inputs.device))
    return cache[key]


def _reference_set(inputs: Inputs) -> dict:
    """The config's FID reference set, once per sweep: the shipped statistics (``shipped``), the features KID,
    precision/recall and density/coverage compare with (``features``) and the protocol columns."""
    cfg, source, extractor = inputs.cfg, inputs.source, _extractor(inputs)
    references = inputs.sweep.setdefault("fid_references", {})
    if cfg.fid_reference in SHIPPED:
        key = (cfg.fid_reference, extractor.weights_digest)
        if key not in references:
            shipped = ShippedReference(cfg.fid_reference, extractor.weights_digest)
            references[key] = {"set": shipped.reference_set, "protocol": shipped.protocol()}
        return references[key]
    if cfg.fid_reference.startswith(FOLDER_PREFIX):
        shape = image_shape(source)
        key = (cfg.fid_reference, shape, extractor.weights_digest)
        if key not in references:
            features, digest, description = folder_reference(cfg.fid_reference[len(FOLDER_PREFIX):], shape, extractor)
            references[key] = {"set": ReferenceSet.of_features(features),
                               "protocol": protocol(extractor, description, digest, len(features), shape[-1])}
        return references[key]
    key = (cfg.model, cfg.image_resize, cfg.fid_reference, cfg.reference_size, cfg.fid_weights)
    if key not in references:
        images, description = reference_images(source, cfg.fid_reference, cfg.reference_size, FID_REFERENCE_SEED,
                                               cfg.data_dir, cfg.image_resize)
        features, digest = cached_reference(images, extractor)
        references[key] = {"set": ReferenceSet.of_features(features),
                           "protocol": protocol(extractor, description, digest, len(images), image_shape(source)[-1])}
    return references[key]


def sample_features(inputs: Inputs, samples: torch.Tensor) -> torch.Tensor:
    """Inception features of ``samples`` as the config's reference set is compared (the standard reference at
    28px); the row's own samples' are computed once and shared by every metric of the row that uses them."""
    own = samples is inputs.images(inputs.samples)
    if own and "inception" in inputs.row:
        return inputs.row["inception"]
    images = samples.float().cpu()
    if inputs.cfg.fid_reference in SHIPPED:
        images = crop_to_native(images)
    features = _extractor(inputs)(images)
    if own:
        inputs.row["inception"] = features
    return features


def reference_features(inputs: Inputs) -> torch.Tensor:
    """The reference set's Inception features (for the standard reference, its shipped subset's)."""
    return _reference_set(inputs)["set"].features


def image_metrics_of(inputs: Inputs, samples: torch.Tensor) -> dict:
    """FID, KID, precision/recall of ``samples`` (the row's, or its eager twin's) against the config's reference
    set, with the protocol columns that define them."""
    reference = _reference_set(inputs)
    placed = reference["set"].on(inputs.device)
    return {**placed.metrics(sample_features(inputs, samples), seed=inputs.seed), **reference["protocol"]}


def _fid(inputs: Inputs) -> dict:
    """The image metrics of the row, and for a non-eager exec mode the FID difference to its eager twin (whose FID
    an eager row of the sweep left in ``inputs.sweep``, or computed here)."""
    images = inputs.images(inputs.samples)
    if images.ndim != 4:
        return {}
    out = image_metrics_of(inputs, images)
    fids = inputs.sweep.setdefault("fid_of", {})
    if inputs.cfg.exec_mode == "eager":
        fids[inputs.row["key"]] = out["fid"], out["fid_se"]
    else:
        twin = inputs.row["eager_key"]
        if twin not in fids:
            twin_metrics = image_metrics_of(inputs, inputs.images(inputs.eager_twin()))
            fids[twin] = twin_metrics["fid"], twin_metrics["fid_se"]
        out["fid_vs_eager"] = out["fid"] - fids[twin][0]
        out["fid_vs_eager_se"] = math.hypot(out["fid_se"], fids[twin][1])  # as if independent: they share x_T
    return out


register(Metric(
    "fid", "FID, KID, precision/recall (k = 3) on Inception pool3 features (image models) against exact samples "
    "of p_0 (image mixtures) or the dataset; fills precision/recall instead of the data-space ones",
    {"fid": (F64, "Frechet Inception distance to the reference set"),
     "fid_se": (F64, "its standard error (jackknife over samples, the reference held fixed)"),
     "kid": (F64, "kernel Inception distance (mean over 100 subsets of up to 1,000)"),
     "kid_se": (F64, "its standard error (jackknife over samples, of the all-pairs estimate)"),
     **PRECISION_RECALL_COLUMNS,
     "fid_vs_eager": (F64, "a non-eager exec mode's FID minus its eager twin's"),
     "fid_vs_eager_se": (F64, "its standard error, the two FIDs' combined as if independent (conservative)"),
     "fid_reference": (STR, "the FID reference set"), "fid_reference_sha256": (STR, "sha256 of its pixels (16 hex)"),
     "reference_size": (I64, "images in the reference set"),
     "fid_resize": (STR, "how images reach the extractor"), "fid_extractor": (STR, "the feature extractor"),
     "fid_weights_sha256": (STR, "sha256 of the extractor's weights (16 hex)")},
    ("images", "inception", "dataset", "eager_twin"), _fid,
    better={"fid": "lower", "kid": "lower", "precision": "higher", "recall": "higher"}, min_samples=NEIGHBOUR_SAMPLES))
