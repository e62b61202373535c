"""The grid runner: RunConfigs in, one parquet row per config out, resumable and shardable.

For each config: the model (built once per sweep), x_T from the seed (the same x_T for every config
with that seed, so comparisons are paired), sampling in batches with the NFE counted by the model
wrapper and the wall time of sampling only (after a warm-up; CUDA events on a GPU), then metrics.
NaN/inf samples make the row ``diverged``, an exception ``failed``; neither stops the sweep. On a GPU
an out-of-memory error halves the batch and retries.
"""
from __future__ import annotations

import dataclasses
import json
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from bench import metrics, store
from bench.analytic import GaussianMixture
from bench.config import RunConfig
from bench.models import build_model
from solvers import SOLVERS, sample
from solvers.noise import BrownianNoise, GaussianNoise
from solvers.reference import reference_solve
from solvers.schedules import SCHEDULES
from solvers.spacing import timesteps

REFERENCE_TOLERANCE = 1e-8
WARMUP_SAMPLES = 2


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(f"device {device!r} asked for, but torch sees no CUDA device")
    return torch.device(device)


@dataclass
class SweepCache:
    """What configs of one sweep share: models, x_T, exact samples, reference solves, final samples."""

    models: dict = field(default_factory=dict)
    priors: dict = field(default_factory=dict)
    exact: dict = field(default_factory=dict)
    references: dict = field(default_factory=dict)
    finals: dict = field(default_factory=dict)
    warmed_up: set = field(default_factory=set)
    inception: dict = field(default_factory=dict)

    def model(self, cfg: RunConfig):
        key = (cfg.model, cfg.schedule, cfg.image_resize)
        if key not in self.models:
            source = build_model(cfg.model, cfg.data_dir, cfg.image_resize)
            schedule = SCHEDULES[cfg.schedule]()
            self.models[key] = (source, source.model(schedule))
        return self.models[key]

    def prior(self, cfg: RunConfig, shape, device, dtype) -> torch.Tensor:
        """x_T ~ N(0, sigma_T^2 I) from the seed alone: paired across every config with that seed."""
        key = (cfg.model, cfg.schedule, cfg.seed, cfg.n_samples, str(device), dtype)
        if key not in self.priors:
            _, diffusion = self.model(cfg)
            g = torch.Generator().manual_seed(cfg.seed)
            scale = float(diffusion.schedule.sigma(diffusion.schedule.t_max))
            self.priors[key] = (scale * torch.randn((cfg.n_samples, *shape), generator=g, dtype=torch.float64)).to(device, dtype)
        return self.priors[key]


def _sampling_key(cfg: RunConfig, steps) -> tuple:
    return (cfg.model, cfg.schedule, cfg.solver, cfg.options, steps, cfg.spacing, cfg.eta, cfg.tolerance, cfg.seed,
            cfg.n_samples, cfg.batch_size, cfg.device, cfg.dtype)


class _Timer:
    """Wall time of a block: CUDA events around it on a GPU, perf_counter on the CPU."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"

    def __enter__(self):
        if self.cuda:
            self.start, self.end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            self.start.record()
        else:
            self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc):
        if self.cuda:
            self.end.record()
            torch.cuda.synchronize()
            self.seconds = self.start.elapsed_time(self.end) / 1000
        else:
            self.seconds = time.perf_counter() - self.t0


def _solve(cfg: RunConfig, model, x_T: torch.Tensor, steps, device: torch.device):
    """All samples of one config (or of its step-doubling partner with ``steps``), batch by batch.

    Returns (samples, seconds, nfe per batch, accepted, rejected). Stochastic configs draw their
    noise from one Brownian path per batch, fixed by the seed and the batch index, so a 2n-step
    partner sees the same path.
    """
    options = dict(cfg.options)
    if cfg.tolerance is not None:
        options.update(rtol=cfg.tolerance, atol=cfg.tolerance)
    schedule = model.schedule
    ts = timesteps(cfg.spacing, steps, schedule) if steps is not None else timesteps("uniform", 1, schedule)
    batch = cfg.batch_size
    while True:
        try:
            outputs, seconds, nfe, accepted, rejected = [], 0.0, 0, 0, 0
            for index, chunk in enumerate(x_T.split(batch)):
                noise = (BrownianNoise(chunk, schedule.t_min, schedule.t_max, seed=cfg.seed * 100_003 + index)
                         if cfg.eta > 0 else GaussianNoise())
                extra = {"stats": {}} if SOLVERS[cfg.solver].adaptive else {}  # adaptive solvers fill it
                model.reset_nfe()
                with _Timer(device) as timer:
                    out = sample(cfg.solver, model, chunk, ts, eta=cfg.eta, noise=noise, **options, **extra)
                outputs.append(out)
                seconds += timer.seconds
                nfe += model.nfe
                if extra:
                    accepted, rejected = accepted + extra["stats"]["accepted"], rejected + extra["stats"]["rejected"]
            n_batches = len(outputs)
            return torch.cat(outputs), seconds, nfe / n_batches, accepted / n_batches, rejected / n_batches
        except torch.cuda.OutOfMemoryError:
            if batch == 1:
                raise
            batch = max(1, batch // 2)
            torch.cuda.empty_cache()


def _warm_up(cfg: RunConfig, cache: SweepCache, model, x_T, device) -> None:
    """One untimed solve on a couple of samples, once per (model, solver, device) in a sweep, so
    first-call costs (imports, allocations, kernel selection) stay out of wall_s."""
    key = (cfg.model, cfg.solver, cfg.device)
    if key not in cache.warmed_up:
        _solve(dataclasses.replace(cfg, batch_size=WARMUP_SAMPLES), model, x_T[:WARMUP_SAMPLES], cfg.steps, device)
        cache.warmed_up.add(key)


def run_config(cfg: RunConfig, cache: SweepCache, env: dict, run_id: str) -> dict:
    """Run one configuration and return its row (never raises for a config's own failure)."""
    row = {**env, "run_id": run_id, "config_id": cfg.config_id, "created_at": store.now(), "spec_name": cfg.spec_name,
           "spec_hash": cfg.spec_hash, "model": cfg.model, "dataset": cfg.model, "schedule": cfg.schedule,
           "solver": cfg.solver, "options": json.dumps(dict(cfg.options), sort_keys=True), "steps": cfg.steps,
           "spacing": cfg.spacing, "eta": cfg.eta, "tolerance": cfg.tolerance, "seed": cfg.seed,
           "n_samples": cfg.n_samples, "batch_size": cfg.batch_size, "dtype": cfg.dtype,
           "reference_size": cfg.reference_size if "fid" in cfg.metrics else None}
    if cfg.skip_reason:
        return {**row, "status": "skipped", "message": cfg.skip_reason}
    try:
        device, dtype = resolve_device(cfg.device), getattr(torch, cfg.dtype)
        source, model = cache.model(cfg)
        row["schedule"] = type(model.schedule).__name__  # network models bring their own schedule
        x_T = cache.prior(cfg, source.event_shape, device, dtype)
        _warm_up(cfg, cache, model, x_T, device)
        x, seconds, nfe, accepted, rejected = _solve(cfg, model, x_T, cfg.steps, device)
        row.update(nfe=nfe, wall_s=seconds, samples_per_s=cfg.n_samples / seconds if seconds > 0 else math.nan)
        if SOLVERS[cfg.solver].adaptive:
            row.update(accepted_steps=accepted, rejected_steps=rejected)
        if not bool(torch.isfinite(x).all()):
            return {**row, "status": "diverged", "message": "non-finite values in the samples"}
        cache.finals[_sampling_key(cfg, cfg.steps)] = x
        row.update(_metrics(cfg, cache, source, model, x_T, x, device))
        return {**row, "status": "ok", "message": None}
    except Exception as err:  # a failing config is a result, not the end of the sweep
        return {**row, "status": "failed", "message": f"{type(err).__name__}: {err}"}


def _metrics(cfg: RunConfig, cache: SweepCache, source, model, x_T, x, device) -> dict:
    out = {}
    wanted = set(cfg.metrics)
    solver = SOLVERS[cfg.solver]
    if "err_stepdoubling" in wanted and cfg.steps is not None:
        key = _sampling_key(cfg, 2 * cfg.steps)
        if key not in cache.finals:
            cache.finals[key] = _solve(cfg, model, x_T, 2 * cfg.steps, device)[0]
        median, rms = metrics.stepdoubling_error(x, cache.finals[key], solver.effective_order(dict(cfg.options)))
        out.update(err_stepdoubling=median, err_stepdoubling_rms=rms)
    if "err_reference" in wanted and cfg.eta == 0:
        key = (cfg.model, cfg.schedule, cfg.seed, cfg.n_samples, str(device))
        if key not in cache.references:
            s = model.schedule
            cache.references[key] = reference_solve(model, x_T.double(), s.t_max, s.t_min, rtol=REFERENCE_TOLERANCE,
                                                    atol=REFERENCE_TOLERANCE)
        out["err_reference"] = metrics.per_sample_norms(x.double() - cache.references[key]).median().item()
    if isinstance(source, GaussianMixture):
        exact_key = (cfg.model, cfg.seed, cfg.n_samples)
        if exact_key not in cache.exact:
            cache.exact[exact_key] = source.sample(cfg.n_samples, torch.Generator().manual_seed(10_000 + cfg.seed))
        exact, samples = cache.exact[exact_key], x.double().cpu()
        if "loglik" in wanted:
            out["loglik"] = source.log_prob(samples).mean().item()
        if "frechet" in wanted:
            out["frechet"] = metrics.frechet_distance(samples, exact)
        if "precision_recall" in wanted and "fid" not in wanted:
            out["precision"], out["recall"] = metrics.precision_recall(samples, exact)
        if "sliced_wasserstein" in wanted:
            out["sliced_wasserstein"] = metrics.sliced_wasserstein(samples, exact, seed=cfg.seed)
    if "fid" in wanted and len(source.event_shape) == 3:
        out.update(_image_metrics(cfg, cache, source, x, device))
    return out


def _image_metrics(cfg: RunConfig, cache: SweepCache, source, samples, device) -> dict:
    """FID/KID/precision/recall against the spec's reference (reference features cached on disk):
    an image mixture's exact samples (``fid_reference = "exact"``) or Fashion-MNIST training images."""
    from bench.data import fashion_mnist
    from bench.fid import InceptionFeatures, cached_reference, image_metrics

    key = (cfg.fid_weights, str(device))
    if key not in cache.inception:
        cache.inception[key] = InceptionFeatures(cfg.fid_weights, str(device))
    extractor = cache.inception[key]
    seed, size = 20_000 + cfg.seed, source.event_shape[-1]
    if cfg.fid_reference == "fashion_mnist":
        resize = cfg.image_resize if size >= 28 else "bilinear"  # 28x28 cannot be padded down

        def images():
            data = fashion_mnist("train", data_dir=cfg.data_dir, size=size, resize=resize)
            return data[torch.randperm(len(data), generator=torch.Generator().manual_seed(seed))[:cfg.reference_size]]
        key = f"fashion_mnist-train-{size}px-{resize}-n{cfg.reference_size}-seed{seed}"
    elif isinstance(source, GaussianMixture):
        def images():
            return source.sample(cfg.reference_size, torch.Generator().manual_seed(seed)).float()
        key = f"{cfg.model}-exact-n{cfg.reference_size}-seed{seed}"
    else:
        raise ValueError(f"fid for {cfg.model}: set fid_reference = 'fashion_mnist' (exact samples exist for mixtures only)")
    reference = cached_reference(key, images, extractor)
    return image_metrics(extractor(samples.float().cpu()), reference, seed=cfg.seed)


def run_sweep(configs: list[RunConfig], run_dir: Path, run_id: str, progress: bool | None = None) -> dict:
    """Run every config not yet in ``run_dir``; returns counts by status for this call."""
    done = store.done_ids(run_dir)
    todo = [c for c in configs if c.config_id not in done]
    counts = {"already_done": len(configs) - len(todo)}
    cache = SweepCache()
    envs = {device: _environment(device) for device in {c.device for c in todo}}
    bar = _progress(len(configs), len(configs) - len(todo), progress)
    for cfg in todo:
        bar.set_postfix_str(cfg.label)
        row = run_config(cfg, cache, envs[cfg.device], run_id)
        store.write_row(run_dir, row)
        counts[row["status"]] = counts.get(row["status"], 0) + 1
        bar.update(1)
    bar.close()
    return counts


def _environment(device: str) -> dict:
    try:
        return store.environment(str(resolve_device(device)))
    except RuntimeError:  # the configs on it will fail with the reason; the rows still say where they ran
        return {**store.environment("cpu"), "device": device}


def _progress(total: int, initial: int, enabled: bool | None):
    from tqdm import tqdm

    if enabled is None:
        enabled = sys.stderr.isatty()
    return tqdm(total=total, initial=initial, unit="config", disable=not enabled, dynamic_ncols=True)
