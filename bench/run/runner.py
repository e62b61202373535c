"""One config to one row: the model (built once per sweep), x_T from the seed, the samples, the metrics.

x_T comes from the seed alone (the same x_T for every config with that seed, so comparisons are paired); the
samples from bench.run.sampling (seeded noise, batches, timing, OOM retry); the metric columns from the
registry's metrics the spec names (bench.metrics), which get the reference solve (bench.run.references), the
2n-step partner and the eager twin from here. NaN/inf samples or an adaptive solver that cannot go on make the
row ``diverged``, an out-of-memory error at batch 1 ``oom``, any other exception ``failed``: a config's own
failure is a row, never an exception. The sweep over configs is bench.run.sweep.
"""
from __future__ import annotations

import dataclasses
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from bench import metrics
from bench.models import build_model, draw_labels, guided_model, weights_digest
from bench.run import execution, policy, references, sampling, store
from bench.spec import RunConfig
from solvers import SolverDiverged, get_solver
from solvers.schedules import SCHEDULES


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(f"device {device!r} asked for, but torch sees no CUDA device")
    return torch.device(device)


@dataclass
class SweepCache:
    """What configs of one sweep share: models (per exec mode) and their weights' digests, x_T, reference solves
    (read from the run folder ``run_dir`` where the reference stage stored them, or the failure it recorded), the
    final samples of the configs that are a later config's step-doubling partner (``needed_partners``; kept on the
    host and dropped once used) or another exec mode's eager twin (``eager``, kept for the sweep), which
    (model, solver, batch, mode) keys were warmed up, and what the metrics keep across configs (``metrics``:
    theirs to fill, bench.metrics.Inputs.sweep)."""

    needed_partners: frozenset = frozenset()
    needed_eager: frozenset = frozenset()
    run_dir: Path | None = None
    sources: dict = field(default_factory=dict)
    models: dict = field(default_factory=dict)
    digests: dict = field(default_factory=dict)
    priors: dict = field(default_factory=dict)
    labels: dict = field(default_factory=dict)
    references: dict = field(default_factory=dict)
    finals: dict = field(default_factory=dict)
    eager: dict = field(default_factory=dict)
    warmed_up: set = field(default_factory=set)
    metrics: dict = field(default_factory=dict)

    def model(self, cfg: RunConfig, exec_mode: str | None = None):
        """(source, DiffusionModel) of a config, its network executed in the config's exec mode (or
        ``exec_mode``); a network's weights are moved to the config's device. A conditional model's is its
        classifier-free guided model at the config's scale (solvers.guidance.GuidedModel)."""
        key = (cfg.model, cfg.schedule, cfg.image_resize, cfg.device)
        if key not in self.sources:
            source = build_model(cfg.model, cfg.data_dir, cfg.image_resize)
            if callable(getattr(source, "to", None)):
                source.to(resolve_device(cfg.device))
            self.sources[key] = source
            self.digests[key[:3]] = weights_digest(source)
        source = self.sources[key]
        guided_key = key + (cfg.guidance_scale, cfg.guidance_interval)
        if guided_key not in self.models:
            # the model's own schedule: the spec's for an analytic mixture, a network's from its checkpoint
            unconditional = source.model(SCHEDULES[cfg.schedule]())
            eager = (unconditional if cfg.guidance_scale is None
                     else guided_model(source, unconditional.schedule, cfg.guidance_scale, cfg.guidance_interval))
            self.models[guided_key] = {"eager": eager}
        modes, mode = self.models[guided_key], exec_mode or cfg.exec_mode
        if mode not in modes:
            modes[mode] = execution.in_mode(modes["eager"], mode, resolve_device(cfg.device))
        return source, modes[mode]

    def conditions(self, cfg: RunConfig, device) -> torch.Tensor | None:
        """The class labels of a conditional config's samples (None for an unconditional one), from its seed: the
        same sample index gets the same label in every config with that seed and conditions, like x_T."""
        if cfg.conditions is None:
            return None
        key = (cfg.model, cfg.conditions, cfg.seed, cfg.n_samples, str(device))
        if key not in self.labels:
            source, _ = self.model(cfg)
            self.labels[key] = draw_labels(cfg.conditions, source, cfg.seed, cfg.n_samples, cfg.prompts).to(device)
        return self.labels[key]

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
            cfg.n_samples, cfg.batch_size, cfg.device, cfg.dtype, exec_mode or cfg.exec_mode, cfg.guidance_scale,
            cfg.conditions, cfg.guidance_interval, cfg.final_step)


def partner_keys(configs: list[RunConfig]) -> frozenset:
    """The sampling keys of the 2n-step solves that step-doubling estimates of ``configs`` will use (in the
    config's own exec mode)."""
    return frozenset(_sampling_key(c, 2 * c.steps) for c in configs
                     if c.steps is not None and ":" not in c.spacing and metrics.needing("partner") & set(c.metrics)
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
            "solver": cfg.solver, "options": json.dumps(dict(cfg.options), sort_keys=True),
            "solver_sha256": store.solver_sha256(cfg.solver),
            "nominal_order": get_solver(cfg.solver).order_for(cfg.eta, dict(cfg.options)), "steps": cfg.steps,
            "spacing": cfg.spacing, "eta": cfg.eta, "tolerance": cfg.tolerance, "seed": cfg.seed,
            "n_samples": cfg.n_samples, "batch_size": cfg.batch_size, "dtype": cfg.dtype, "exec_mode": cfg.exec_mode,
            "guidance_scale": cfg.guidance_scale, "conditions": cfg.conditions,
            "guidance_interval": None if cfg.guidance_interval is None else json.dumps(list(cfg.guidance_interval)),
            "final_step": cfg.final_step, **(cfg.fitted.row() if cfg.fitted is not None else {})}


def _fitted_notes(cfg: RunConfig, weights_sha256: str | None) -> list[str]:
    """What a row on a fitted grid says when the grid was fitted for another solver or model, or on its seed."""
    grid, notes = cfg.fitted, []
    if grid is None:
        return notes
    if grid.solver != cfg.solver:
        notes.append(f"grid fitted for {grid.solver}, not {cfg.solver}")
    if grid.weights_sha256 is not None and weights_sha256 is not None and grid.weights_sha256 != weights_sha256:
        notes.append(f"grid fitted for model {grid.model} (other weights)")
    if cfg.seed in grid.seeds:
        notes.append(f"evaluated on seed {cfg.seed}, one the grid was fitted on (not held out)")
    return notes


WARM_UP_STEPS = 3  # enough for every multistep solver to reach its full-order update
# The words of a row's message that say its solve was not what its solver's entry declares (check-solver reads them).
NFE_NOT_DECLARED = "network evaluations per batch where"
NOISE_NOT_DECLARED = "noise increments that"


def _warm_up(cfg: RunConfig, cache: SweepCache, model, x_T, conditions, device) -> float | None:
    """One untimed short solve of one batch at the timed batch shape, once per (model, solver, device, batch)
    in a sweep, so first-call costs (imports, allocations, kernel selection, compilation) stay out of wall_s. A few
    steps run every kernel a long solve runs: on a network, warming up with all 50 steps would double the cost.
    Returns its seconds (None where this sweep had warmed the key up already)."""
    key = (cfg.model, cfg.solver, cfg.device, cfg.batch_size, cfg.exec_mode)
    if key not in cache.warmed_up:
        started = time.perf_counter()
        steps = None if cfg.steps is None else min(cfg.steps, WARM_UP_STEPS)
        if cfg.spacing is not None and ":" in cfg.spacing:  # an explicit or fitted grid has its own step count: warm
            cfg = dataclasses.replace(cfg, spacing="uniform", fitted=None)  # up on a short uniform grid (same kernels)
        last = len(x_T) % cfg.batch_size  # a smaller last batch is another shape (compile: another graph)
        for shape in {cfg.batch_size, last} - {0}:
            sampling.solve(cfg, model, x_T[:shape], steps, device,
                           conditions=None if conditions is None else conditions[:shape])
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
        conditions = cache.conditions(cfg, device)
        row["warmup_s"] = _warm_up(cfg, cache, model, x_T, conditions, device)
        result = sampling.solve(cfg, model, x_T, cfg.steps, device, repeats=cfg.timing_repeats, conditions=conditions)
        x, seconds = result.samples, result.seconds
        # the bare network at the same shape, right after the config's own solve: the conditions its wall_s saw
        # (one measurement per sweep measured 0.62 s per forward where the solves ran at 0.45 s per evaluation);
        # a guided model's forward is its guided evaluation (both halves), which nfe counts once
        forward_s = sampling.forward_seconds(model, x_T[:result.batch_used], float(model.schedule.t_max), device,
                                             None if conditions is None else conditions[:result.batch_used])
        row.update(nfe=result.nfe, network_passes=result.passes, wall_s=seconds, wall_s_std=result.seconds_std, timing_repeats=result.repeats,
                   capture_s=result.capture_s if cfg.exec_mode == "cuda_graph" else None,
                   samples_per_s=cfg.n_samples / seconds if seconds > 0 else math.nan,
                   batch_used=result.batch_used, forward_s=forward_s,
                   overhead_ratio=seconds / (result.nfe * forward_s * result.batches) if forward_s > 0 else math.nan)
        if get_solver(cfg.solver).adaptive:
            row.update(accepted_steps=result.accepted, rejected_steps=result.rejected)
        if not bool(torch.isfinite(x).all()):
            return {**row, "status": "diverged", "message": "non-finite values in the samples"}
        key = _sampling_key(cfg, cfg.steps)
        if key in cache.needed_partners:
            cache.finals[key] = x.cpu()
        if key in cache.needed_eager:
            cache.eager[key] = x.cpu()
        notes = _fitted_notes(cfg, row["weights_sha256"])
        if (declared := sampling.declared_nfe(cfg, cfg.steps)) is not None and result.nfe != declared:
            notes.append(f"counted {result.nfe:g} {NFE_NOT_DECLARED} {cfg.solver}'s entry declares "
                         f"{declared} (nfe_per_step x steps + nfe_extra, + the final step's): the row's nfe is the "
                         f"counted one, and the plan and fit-schedule's step counts, which read the entry, are off")
        if result.noise_misses:
            notes.append(f"its solve drew {result.noise_misses} {NOISE_NOT_DECLARED} {cfg.solver}'s entry does not "
                         f"list (NoisePlan streams and intervals): they came from the Brownian tree inside the timed "
                         f"solve, so wall_s counts their cost (the samples are the same)")
        _metrics(cfg, cache, source, model, x_T, x, device, notes, into=row)
        if result.batch_used != cfg.batch_size:
            noise_part = sampling.part_size(cfg, model.schedule, sampling.grid(cfg, model.schedule, cfg.steps), x_T)
            why = (f"its pre-drawn noise is held for {noise_part} samples at a time (sampling.NOISE_BUDGET_BYTES)"
                   if result.batch_used == noise_part else f"out of memory at batch {cfg.batch_size}")
            paired = ", each with its rows of its batch's noise" if get_solver(cfg.solver).draws_noise(
                cfg.eta, dict(cfg.options)) else ""
            notes.insert(0, f"{why}: ran in parts of {result.batch_used}{paired}")
        return {**row, "status": "ok", "message": "; ".join(notes) or None}
    except SolverDiverged as err:
        return {**row, "status": "diverged", "message": str(err)}
    except torch.cuda.OutOfMemoryError as err:
        return {**row, "status": "oom", "message": f"out of memory at batch 1: {err}"}
    except MetricFailed as err:  # the row keeps its timing and the figures of the metrics before
        return {**row, "status": "failed", "message": str(err)}
    except Exception as err:  # a failing config is a result, not the end of the sweep
        return {**row, "status": "failed", "message": f"{type(err).__name__}: {err}"}


class MetricFailed(Exception):
    """A metric raised on a config's samples: its row fails, naming the metric (``str``: "metric NAME: Error:
    message")."""


def _metrics(cfg: RunConfig, cache: SweepCache, source, model, x_T, x, device, notes: list, into: dict) -> None:
    """The metric columns of a row, written ``into`` it as each metric ends: every metric of the registry the spec
    names (and those computed wherever they apply), in registry order; ``notes`` collects what the row's message
    should say. A metric that raises ends it with MetricFailed, the figures before it kept (CUDA's out-of-memory
    error and a diverged solve pass through as they are)."""
    def reference():
        if not references.needed(cfg):  # a stochastic run has no single solution to compare with
            return None
        found = reference_solution(cfg, cache)
        if isinstance(found, references.Failure):
            if found.note() not in notes:
                notes.append(found.note())
            return None
        return found

    conditions = cache.conditions(cfg, device)

    def partner():
        finals_key = _sampling_key(cfg, 2 * cfg.steps)
        kept = cache.finals.pop(finals_key, None)
        return kept if kept is not None else sampling.solve(cfg, model, x_T, 2 * cfg.steps, device,
                                                            conditions=conditions).samples

    def eager_twin():
        key = _sampling_key(cfg, cfg.steps, "eager")
        if key not in cache.eager:  # no row of this sweep left it: solved here, untimed
            _, eager = cache.model(cfg, "eager")
            cache.eager[key] = sampling.solve(cfg, eager, x_T, cfg.steps, device, "eager",
                                              conditions=conditions).samples.cpu()
        return cache.eager[key]

    decoding = []  # a latent model's decoder calls, timed apart from the solve (the row's decode_s)

    def decode(latents):
        with sampling.Timer(device) as timer:
            images = source.decode(latents)
        decoding.append(timer.seconds)
        return images

    inputs = metrics.Inputs(cfg, source, model, x_T, x, device, reference, partner, eager_twin, cache.metrics,
                            row={"key": _sampling_key(cfg, cfg.steps), "eager_key": _sampling_key(cfg, cfg.steps, "eager")},
                            notes=notes, decode=decode if callable(getattr(source, "decode", None)) else None)
    try:
        for metric in metrics.for_config(cfg.metrics):
            try:
                into.update(metric.compute(inputs))
            except (SolverDiverged, torch.cuda.OutOfMemoryError):
                raise
            except Exception as err:
                raise MetricFailed(f"metric {metric.name}: {type(err).__name__}: {err}") from err
    finally:
        if decoding:
            into["decode_s"] = sum(decoding)


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
    cache has one (the reference stage; returns its status), else returned (a tensor or a Failure). A model that
    cannot be built fails it as a failed solve does (in a worker process it used to end the worker)."""
    try:
        source, model = cache.model(cfg, "eager")
        device = resolve_device(cfg.device)
        x_T = cache.prior(cfg, source.event_shape, device, getattr(torch, cfg.dtype))
        conditions = cache.conditions(cfg, device)
        if cache.run_dir is not None:
            return references.solve_and_store(cfg, cache.run_dir, model, x_T, conditions)
        return references.solve(cfg, model, x_T, conditions).to(x_T.device)
    except Exception as err:  # noqa: BLE001 - recorded for the rows, not raised again
        message = f"{type(err).__name__}: {err}"
        if cache.run_dir is not None:
            references.record_failure(cfg, cache.run_dir, message)
            return "failed"
        return references.Failure("failed", message)
