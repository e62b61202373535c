"""The grid runner: RunConfigs in, one parquet row per config out, resumable and shardable.

A sweep sets its execution policy (bench.policy) in every process that runs configs, makes the reference
solves its configs need as a stage of their own (bench.references), then runs each config: the model
(built once per sweep), x_T from the seed (the same x_T for every config with that seed, so comparisons
are paired), the samples (bench.sampling: seeded noise, batches, timing, OOM retry), then the metrics the
spec asks for. NaN/inf samples or an adaptive solver that cannot go on make the row ``diverged``, an
out-of-memory error at batch 1 ``oom``, any other exception ``failed``; a config past the spec's
``time_limit_s`` is stopped (bench.worker) and gets a ``timeout`` row. None of them stops the sweep.
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

from bench import execution, metrics, policy, references, sampling, store
from bench.analytic import GaussianMixture
from bench.config import RunConfig
from bench.models import build_model, weights_digest
from solvers import SOLVERS, SolverDiverged
from solvers.schedules import SCHEDULES
from solvers.spacing import timesteps

EXACT_SAMPLES_SEED, FID_REFERENCE_SEED, NLL_SEED = 10_000, 20_000, 30_000  # offsets from the config's seed


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(f"device {device!r} asked for, but torch sees no CUDA device")
    return torch.device(device)


@dataclass
class SweepCache:
    """What configs of one sweep share: models (per exec mode) and their weights' digests, x_T, exact samples,
    reference solves (read from the run folder ``run_dir`` where the reference stage stored them, or the failure
    it recorded), the final samples of the configs that are a later config's step-doubling partner
    (``needed_partners``; kept on the host and dropped once used) or another exec mode's eager twin
    (``eager``: samples and FID, kept for the sweep), and the held-out images of nll."""

    needed_partners: frozenset = frozenset()
    needed_eager: frozenset = frozenset()
    run_dir: Path | None = None
    models: dict = field(default_factory=dict)
    digests: dict = field(default_factory=dict)
    priors: dict = field(default_factory=dict)
    exact: dict = field(default_factory=dict)
    references: dict = field(default_factory=dict)
    finals: dict = field(default_factory=dict)
    eager: dict = field(default_factory=dict)
    warmed_up: set = field(default_factory=set)
    inception: dict = field(default_factory=dict)
    lpips: dict = field(default_factory=dict)
    fid_references: dict = field(default_factory=dict)
    held_out: dict = field(default_factory=dict)  # Fashion-MNIST test images for nll, per (folder, size, resize)

    def model(self, cfg: RunConfig, exec_mode: str | None = None):
        """(source, DiffusionModel) of a config, its network executed in the config's exec mode (or
        ``exec_mode``); a network's weights are moved to the config's device."""
        key = (cfg.model, cfg.schedule, cfg.image_resize, cfg.device)
        if key not in self.models:
            source = build_model(cfg.model, cfg.data_dir, cfg.image_resize)
            if callable(getattr(source, "to", None)):
                source.to(resolve_device(cfg.device))
            schedule = SCHEDULES[cfg.schedule]()
            self.models[key] = {"eager": (source, source.model(schedule))}
            self.digests[key[:3]] = weights_digest(source)
        modes, mode = self.models[key], exec_mode or cfg.exec_mode
        if mode not in modes:
            source, eager = modes["eager"]
            modes[mode] = (source, execution.in_mode(eager, mode, resolve_device(cfg.device)))
        return modes[mode]

    def prior(self, cfg: RunConfig, shape, device, dtype) -> torch.Tensor:
        """x_T ~ N(0, sigma_T^2 I) from the seed alone: paired across every config with that seed."""
        key = (cfg.model, cfg.schedule, cfg.seed, cfg.n_samples, str(device), dtype)
        if key not in self.priors:
            _, diffusion = self.model(cfg)
            g = torch.Generator().manual_seed(cfg.seed)
            scale = float(diffusion.schedule.sigma(diffusion.schedule.t_max))
            self.priors[key] = (scale * torch.randn((cfg.n_samples, *shape), generator=g, dtype=torch.float64)).to(device, dtype)
        return self.priors[key]


def _sampling_key(cfg: RunConfig, steps, exec_mode: str | None = None) -> tuple:
    return (cfg.model, cfg.schedule, cfg.solver, cfg.options, steps, cfg.spacing, cfg.eta, cfg.tolerance, cfg.seed,
            cfg.n_samples, cfg.batch_size, cfg.device, cfg.dtype, exec_mode or cfg.exec_mode)


def partner_keys(configs: list[RunConfig]) -> frozenset:
    """The sampling keys of the 2n-step solves that step-doubling estimates of ``configs`` will use (in the
    config's own exec mode)."""
    return frozenset(_sampling_key(c, 2 * c.steps) for c in configs
                     if c.steps is not None and ":" not in c.spacing and "err_stepdoubling" in c.metrics
                     and c.skip_reason is None)


def eager_keys(configs: list[RunConfig]) -> frozenset:
    """The sampling keys of the eager twins that the drift of ``configs`` in other exec modes is measured against."""
    return frozenset(_sampling_key(c, c.steps, "eager") for c in configs
                     if c.exec_mode != "eager" and c.skip_reason is None)


def config_row(cfg: RunConfig, env: dict, run_id: str) -> dict:
    """The columns of a row that the config alone defines (every status has them), with the execution policy in
    effect in the process that makes the row."""
    return {**env, **policy.in_effect(), "run_id": run_id, "config_id": cfg.config_id, "created_at": store.now(),
            "spec_name": cfg.spec_name,
            "spec_hash": cfg.spec_hash, "model": cfg.model, "schedule": cfg.schedule,
            "solver": cfg.solver, "options": json.dumps(dict(cfg.options), sort_keys=True), "steps": cfg.steps,
            "spacing": cfg.spacing, "eta": cfg.eta, "tolerance": cfg.tolerance, "seed": cfg.seed,
            "n_samples": cfg.n_samples, "batch_size": cfg.batch_size, "dtype": cfg.dtype, "exec_mode": cfg.exec_mode}


WARM_UP_STEPS = 3  # enough for every multistep solver to reach its full-order update


def _warm_up(cfg: RunConfig, cache: SweepCache, model, x_T, device) -> float | None:
    """One untimed short solve of one batch at the timed batch shape, once per (model, solver, device, batch)
    in a sweep, so first-call costs (imports, allocations, kernel selection, compilation) stay out of wall_s. A few
    steps run every kernel a long solve runs: on a network, warming up with all 50 steps would double the cost.
    Returns its seconds (None where this sweep had warmed the key up already)."""
    key = (cfg.model, cfg.solver, cfg.device, cfg.batch_size, cfg.exec_mode)
    if key not in cache.warmed_up:
        started = time.perf_counter()
        steps = None if cfg.steps is None else min(cfg.steps, WARM_UP_STEPS)
        if cfg.spacing is not None and ":" in cfg.spacing:  # an explicit grid has its own step count: warm up on a
            cfg = dataclasses.replace(cfg, spacing="uniform")  # short uniform grid, which runs the same kernels
        last = len(x_T) % cfg.batch_size  # a smaller last batch is another shape (compile: another graph)
        for shape in {cfg.batch_size, last} - {0}:
            sampling.solve(cfg, model, x_T[:shape], steps, device)
        cache.warmed_up.add(key)
        return time.perf_counter() - started
    return None


def run_config(cfg: RunConfig, cache: SweepCache, env: dict, run_id: str) -> dict:
    """Run one configuration and return its row (never raises for a config's own failure)."""
    row = config_row(cfg, env, run_id)
    if cfg.skip_reason:
        return {**row, "status": "skipped", "message": cfg.skip_reason}
    try:
        device, dtype = resolve_device(cfg.device), getattr(torch, cfg.dtype)
        source, model = cache.model(cfg)
        row["schedule"] = type(model.schedule).__name__  # network models bring their own schedule
        row["dataset"] = getattr(source, "dataset", None)
        row["weights_sha256"] = cache.digests[(cfg.model, cfg.schedule, cfg.image_resize)]
        x_T = cache.prior(cfg, source.event_shape, device, dtype)
        row["warmup_s"] = _warm_up(cfg, cache, model, x_T, device)
        result = sampling.solve(cfg, model, x_T, cfg.steps, device, repeats=cfg.timing_repeats)
        x, seconds = result.samples, result.seconds
        # the bare network at the same shape, right after the config's own solve: the conditions its wall_s saw
        # (one measurement per sweep measured 0.62 s per forward where the solves ran at 0.45 s per evaluation)
        forward_s = sampling.forward_seconds(model, x_T[:result.batch_used], float(model.schedule.t_max), device)
        row.update(nfe=result.nfe, wall_s=seconds, wall_s_std=result.seconds_std, timing_repeats=result.repeats,
                   capture_s=result.capture_s if cfg.exec_mode == "cuda_graph" else None,
                   samples_per_s=cfg.n_samples / seconds if seconds > 0 else math.nan,
                   batch_used=result.batch_used, forward_s=forward_s,
                   overhead_ratio=seconds / (result.nfe * forward_s * result.batches) if forward_s > 0 else math.nan)
        if SOLVERS[cfg.solver].adaptive:
            row.update(accepted_steps=result.accepted, rejected_steps=result.rejected)
        if not bool(torch.isfinite(x).all()):
            return {**row, "status": "diverged", "message": "non-finite values in the samples"}
        key = _sampling_key(cfg, cfg.steps)
        if key in cache.needed_partners:
            cache.finals[key] = x.cpu()
        if key in cache.needed_eager:
            cache.eager[key] = {"samples": x.cpu()}
        notes = []
        row.update(_metrics(cfg, cache, source, model, x_T, x, device, result.batch_used, notes))
        if result.batch_used != cfg.batch_size:
            noise_part = sampling.part_size(cfg, model.schedule, sampling.grid(cfg, model.schedule, cfg.steps), x_T)
            why = (f"its pre-drawn noise is held for {noise_part} samples at a time (sampling.NOISE_BUDGET_BYTES)"
                   if result.batch_used == noise_part else f"out of memory at batch {cfg.batch_size}")
            paired = ", each with its rows of its batch's noise" if SOLVERS[cfg.solver].draws_noise(
                cfg.eta, dict(cfg.options)) else ""
            notes.insert(0, f"{why}: ran in parts of {result.batch_used}{paired}")
        return {**row, "status": "ok", "message": "; ".join(notes) or None}
    except SolverDiverged as err:
        return {**row, "status": "diverged", "message": str(err)}
    except torch.cuda.OutOfMemoryError as err:
        return {**row, "status": "oom", "message": f"out of memory at batch 1: {err}"}
    except Exception as err:  # a failing config is a result, not the end of the sweep
        return {**row, "status": "failed", "message": f"{type(err).__name__}: {err}"}


def _metrics(cfg: RunConfig, cache: SweepCache, source, model, x_T, x, device, batch: int, notes: list) -> dict:
    """The metric columns the spec asks for; ``notes`` collects what the row's message should say."""
    out = {}
    wanted = set(cfg.metrics)
    solver, options = SOLVERS[cfg.solver], dict(cfg.options)
    stochastic = solver.draws_noise(cfg.eta, options)
    order = solver.order_for(cfg.eta, options)
    explicit = cfg.spacing is not None and ":" in cfg.spacing  # an explicit grid has no 2n-step refinement
    if "err_stepdoubling" in wanted and explicit:
        notes.append("no err_stepdoubling: an explicit grid has no 2n-step refinement")
    if "err_stepdoubling" in wanted and cfg.steps is not None and order is not None and not explicit:
        key = _sampling_key(cfg, 2 * cfg.steps)
        partner = cache.finals.pop(key, None)
        if partner is None:
            partner = sampling.solve(cfg, model, x_T, 2 * cfg.steps, device).samples
        median, rms = metrics.stepdoubling_error(x.cpu(), partner.cpu(), order)
        out.update(err_stepdoubling=median, err_stepdoubling_rms=rms)
    reference = None
    if references.needed(cfg):
        reference = reference_solution(cfg, cache)
        if isinstance(reference, references.Failure):
            notes.append(reference.note())
            reference = None
        else:
            out["reference_tolerance"] = cfg.reference_tolerance
            if "err_reference" in wanted:
                out["err_reference"] = metrics.per_sample_norms(x.double() - reference).median().item()
    if isinstance(source, GaussianMixture):
        exact_key = (cfg.model, cfg.image_resize, cfg.seed, cfg.n_samples)
        if exact_key not in cache.exact:
            cache.exact[exact_key] = source.sample(cfg.n_samples, torch.Generator().manual_seed(EXACT_SAMPLES_SEED + cfg.seed))
        exact, samples = cache.exact[exact_key], x.double().cpu()
        if "sample_log_density" in wanted:
            out["sample_log_density"] = source.log_prob(samples).mean().item()
        if "frechet" in wanted:
            out["frechet"] = metrics.frechet_distance(samples, exact)
        if "precision_recall" in wanted and "fid" not in wanted:
            out["precision"], out["recall"] = metrics.precision_recall(samples, exact)
        if "sliced_wasserstein" in wanted:
            out["sliced_wasserstein"] = metrics.sliced_wasserstein(samples, exact, seed=cfg.seed)
    if "nll" in wanted:
        out.update(_nll(cfg, cache, source, model, stochastic, device, notes))
    if "fid" in wanted and len(source.event_shape) == 3:
        out.update(_image_metrics(cfg, cache, source, x, device))
    if wanted & {"lpips_reference", "lpips_diversity"} and len(source.event_shape) == 3:
        out.update(_lpips_metrics(cfg, cache, x, reference, device, notes))
    key = _sampling_key(cfg, cfg.steps)
    if cfg.exec_mode != "eager":
        out.update(_drift_vs_eager(cfg, cache, x_T, x, device, out.get("fid")))
    elif key in cache.eager and "fid" in out:
        cache.eager[key]["fid"] = out["fid"]
    return out


def _drift_vs_eager(cfg: RunConfig, cache: SweepCache, x_T, x, device, fid_value) -> dict:
    """Median per-sample L2 distance to the eager samples of the same config and x_T (noise path included),
    and the FID difference where FID is measured; the eager twin is solved here if no row of this sweep
    left it in the cache (untimed)."""
    key = _sampling_key(cfg, cfg.steps, "eager")
    source, eager = cache.model(cfg, "eager")
    if key not in cache.eager:
        cache.eager[key] = {"samples": sampling.solve(cfg, eager, x_T, cfg.steps, device, "eager").samples.cpu()}
    twin = cache.eager[key]
    out = {"drift_vs_eager": metrics.per_sample_norms(x.cpu().double() - twin["samples"].double()).median().item()}
    if fid_value is not None:
        if "fid" not in twin:
            twin["fid"] = _image_metrics(cfg, cache, source, twin["samples"], device)["fid"]
        out["fid_vs_eager"] = fid_value - twin["fid"]
    return out


def _nll(cfg: RunConfig, cache: SweepCache, source, model, stochastic: bool, device, notes: list) -> dict:
    """NLL of held-out data under the model through the PF-ODE integrated by the config's solver (bench.likelihood):
    exact samples of p_0 for the analytic models, dequantised Fashion-MNIST test images for a network."""
    from bench import likelihood
    from bench.data import fashion_mnist

    if cfg.solver not in likelihood.INTEGRATORS:
        notes.append(f"no nll: {cfg.solver} does not integrate the augmented PF-ODE ({', '.join(likelihood.INTEGRATORS)} do)")
        return {}
    if stochastic:
        notes.append("no nll: it is the probability-flow ODE's, measured on the eta = 0 rows")
        return {}
    generator = torch.Generator().manual_seed(NLL_SEED + cfg.seed)
    if isinstance(source, GaussianMixture):
        data, real_images = source.sample(cfg.n_samples, generator), False
    else:
        key = (cfg.data_dir, source.event_shape[-1], cfg.image_resize)
        if key not in cache.held_out:  # read once per sweep, not once per config
            cache.held_out[key] = fashion_mnist("test", data_dir=cfg.data_dir, size=key[1], resize=cfg.image_resize)
        test = cache.held_out[key]
        chosen = test[torch.randperm(len(test), generator=generator)[:cfg.n_samples]]
        data, real_images = likelihood.dequantize(chosen, generator), True
    data = data.to(device=device, dtype=getattr(torch, cfg.dtype))
    ts = timesteps(cfg.spacing, cfg.steps, model.schedule) if cfg.steps is not None else None
    per_sample = torch.cat([likelihood.pf_ode_nll(model, chunk, cfg.solver, ts, cfg.tolerance, generator).cpu()
                            for chunk in data.split(cfg.batch_size)])
    dim = data[0].numel()
    out = {"nll": per_sample.mean().item() / dim, "nll_se": per_sample.std().item() / dim / math.sqrt(len(per_sample))}
    if real_images:
        out["nll_bpd"] = likelihood.bits_per_dim(per_sample, dim).mean().item()
    return out


LPIPS_MIN_SIZE = 32  # AlexNet's strides and pools need at least this many pixels a side


@torch.no_grad()
def _lpips_metrics(cfg: RunConfig, cache: SweepCache, x, reference, device, notes: list) -> dict:
    from bench import lpips

    if min(x.shape[-2:]) < LPIPS_MIN_SIZE:
        notes.append(f"no LPIPS: images of {x.shape[-1]} px, AlexNet LPIPS needs {LPIPS_MIN_SIZE} px and up")
        return {}
    if str(device) not in cache.lpips:
        cache.lpips[str(device)] = lpips.load("alexnet", device=str(device))
    model, out = cache.lpips[str(device)], {}
    images = x.float().clamp(-1, 1)
    if "lpips_reference" in cfg.metrics and reference is not None:
        target = reference.to(device=images.device, dtype=torch.float32).clamp(-1, 1)
        out["lpips_reference"] = torch.cat([model(a, b) for a, b in zip(images.split(256), target.split(256))]).median().item()
    if "lpips_diversity" in cfg.metrics:
        out["lpips_diversity"] = model.pairwise_mean(images)
    return out


def reference_solution(cfg: RunConfig, cache: SweepCache):
    """The config's reference solve (a tensor) or the Failure that ended it: as the sweep's reference stage stored
    it in ``cache.run_dir``, else (a config run outside a sweep) solved here. The eager network's, for every exec
    mode; kept in the cache for the configs after it."""
    key = references.key(cfg)
    if key not in cache.references:
        found = references.load(cache.run_dir, key) if cache.run_dir is not None else None
        if found is None:
            found = make_reference(cfg, cache)
            found = references.load(cache.run_dir, key) if cache.run_dir is not None else found
        cache.references[key] = found.to(resolve_device(cfg.device)) if isinstance(found, torch.Tensor) else found
    return cache.references[key]


def make_reference(cfg: RunConfig, cache: SweepCache):
    """Solve ``cfg``'s reference with the eager network from the config's x_T: stored in the run folder when the
    cache has one (the reference stage; returns its status), else returned (a tensor or a Failure)."""
    source, model = cache.model(cfg, "eager")
    x_T = cache.prior(cfg, source.event_shape, resolve_device(cfg.device), getattr(torch, cfg.dtype))
    if cache.run_dir is not None:
        return references.solve_and_store(cfg, cache.run_dir, model, x_T)
    try:
        return references.solve(model, x_T, cfg.batch_size, cfg.reference_tolerance).to(x_T.device)
    except Exception as err:  # noqa: BLE001 - recorded in the rows, not raised again
        return references.Failure("failed", f"{type(err).__name__}: {err}")


def _image_metrics(cfg: RunConfig, cache: SweepCache, source, samples, device) -> dict:
    """FID/KID/precision/recall against the spec's reference set, with the protocol that defines them."""
    from bench import fid

    key = (cfg.fid_weights, str(device))
    if key not in cache.inception:
        cache.inception[key] = fid.InceptionFeatures(cfg.fid_weights, str(device))
    extractor = cache.inception[key]
    if cfg.fid_reference in fid.SHIPPED:
        ref_key = (cfg.fid_reference, extractor.weights_digest)
        if ref_key not in cache.fid_references:
            cache.fid_references[ref_key] = fid.ShippedReference(cfg.fid_reference, extractor.weights_digest)
        shipped = cache.fid_references[ref_key]
        features = extractor(fid.crop_to_native(samples.float().cpu()))
        return {**shipped.metrics(features, seed=cfg.seed), **shipped.protocol()}
    seed = FID_REFERENCE_SEED + cfg.seed
    ref_key = (cfg.model, cfg.image_resize, cfg.fid_reference, cfg.reference_size, seed, cfg.fid_weights)
    if ref_key not in cache.fid_references:
        images, description = fid.reference_images(source, cfg.fid_reference, cfg.reference_size, seed, cfg.data_dir,
                                                   cfg.image_resize)
        features, digest = fid.cached_reference(images, extractor)
        cache.fid_references[ref_key] = features, fid.protocol(extractor, description, digest, len(images),
                                                               source.event_shape[-1])
    reference, protocol = cache.fid_references[ref_key]
    return {**fid.image_metrics(extractor(samples.float().cpu()), reference, seed=cfg.seed), **protocol}


def run_sweep(configs: list[RunConfig], run_dir: Path, run_id: str, progress: bool | None = None,
              retry: tuple[str, ...] = (), on_row=None, execution_policy: policy.ExecutionPolicy | None = None,
              reference_stage: bool = True) -> dict:
    """Run every config not yet in ``run_dir`` (and those whose status is in ``retry``); returns counts by
    status for this call. The execution policy (default: torch's defaults) is set here and in the worker first;
    then the reference solves the configs need and the run folder lacks are made (``reference_stage``; the Ray
    backend makes them itself), each within its ``reference_time_limit_s``; then each config runs in a worker
    process within its ``time_limit_s`` (0: in this process, without a limit). Each row is written as soon as its
    config ends; the rows this call wrote are compacted every ``store.COMPACT_EVERY`` rows and at the end.
    ``on_row(row)`` is called after each write."""
    from bench.worker import ConfigWorker

    execution_policy = execution_policy or policy.ExecutionPolicy()
    execution_policy.apply()
    done = store.done_ids(run_dir, retry)
    todo = [c for c in configs if c.config_id not in done]
    counts = {"already_done": len(configs) - len(todo)}
    shared = {"needed_partners": partner_keys(todo), "needed_eager": eager_keys(todo), "run_dir": Path(run_dir)}
    in_process, worker = SweepCache(**shared), ConfigWorker(execution_policy, **shared)
    envs = {device: _environment(device) for device in {c.device for c in todo}}
    written = []
    bar = progress_bar(len(configs), len(configs) - len(todo), progress)
    try:
        if reference_stage:
            for cfg in references.pending(todo, run_dir, retry=bool(retry)):
                bar.set_postfix_str(f"reference solve for {cfg.label}")
                _make_reference_within_limit(cfg, in_process, worker, Path(run_dir))
        for cfg in todo:
            bar.set_postfix_str(cfg.label)
            if cfg.skip_reason or not cfg.time_limit_s:
                row = run_config(cfg, in_process, envs[cfg.device], run_id)
            else:
                row = _run_in_worker(worker, cfg, envs[cfg.device], run_id)
            written.append(store.write_row(run_dir, row))
            counts[row["status"]] = counts.get(row["status"], 0) + 1
            bar.update(1)
            if on_row is not None:
                on_row(row)
            if len(written) >= store.COMPACT_EVERY:
                store.compact(run_dir, written)
                written = []
    finally:
        worker.stop()
        bar.close()
    store.compact(run_dir, written)
    return counts


def _make_reference_within_limit(cfg: RunConfig, cache: SweepCache, worker, run_dir: Path) -> None:
    """The reference stage for one key: in this process without a limit (reference_time_limit_s = 0), else in the
    worker, stopped at the limit; the outcome is recorded in the run folder either way."""
    if not cfg.reference_time_limit_s:
        make_reference(cfg, cache)
        return
    outcome, value = worker.run(("reference", cfg), cfg.reference_time_limit_s)
    if outcome == "timeout":
        references.record_timeout(cfg, run_dir, value)
    elif outcome == "died":
        references.record_death(cfg, run_dir, value)


def _run_in_worker(worker, cfg: RunConfig, env: dict, run_id: str) -> dict:
    outcome, value = worker.run(("config", cfg, env, run_id), cfg.time_limit_s)
    if outcome == "row":
        return value
    row = config_row(cfg, env, run_id)
    if outcome == "timeout":
        return {**row, "status": "timeout",
                "message": f"stopped after {value:.1f} s: time_limit_s = {cfg.time_limit_s:g}"}
    return {**row, "status": "failed", "message": f"the worker process died (exit code {value}): a crash or the "
                                                  "system's out-of-memory killer"}


def _environment(device: str) -> dict:
    try:
        return store.environment(str(resolve_device(device)))
    except RuntimeError:  # the configs on it will fail with the reason; the rows still say where they ran
        return {**store.environment("cpu"), "device": device}


def progress_bar(total: int, initial: int, enabled: bool | None):
    from tqdm import tqdm

    if enabled is None:
        enabled = sys.stderr.isatty()
    return tqdm(total=total, initial=initial, unit="config", disable=not enabled, dynamic_ncols=True)
