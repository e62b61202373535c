"""Reference solves as a stage of the sweep: made before the configurations that need them, stored in the run folder.

``err_reference`` and ``lpips_reference`` compare a config's samples with a high-accuracy solve of the same
model from the same x_T (dopri5 at rtol = atol = ``reference_tolerance``, float64, the eager network). Many
configs share one such solve, and it can cost more than all of them together. So the sweep makes every
reference its configs need first, each under its own time limit (``reference_time_limit_s``; 0: in the sweep's
process, without a limit), and stores it in the run folder by its key:

    <run>/references/<key digest>.pt     the solution (a tensor), written atomically
    <run>/references/<key digest>.json   what it is (the key), and how it ended: ok with its seconds, or
                                         failed / timeout with the message every row that needed it carries

A resumed or sharded run finds them there and does not solve them again; a reference that failed or timed out
is recorded once and tried again only with ``--retry-failed``. The serial runner and the Ray backend run the
same stage (``pending``, ``solve_and_store``, ``record_timeout``); concurrent shards may both solve a missing
reference, and the identical result is written twice.
"""
from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from bench import files
from bench.run import sampling, store
from bench.spec.config import REFERENCE_METRICS, RunConfig
from solvers import get_solver
from solvers.reference import reference_solve

FOLDER = "references"


def key(cfg: RunConfig) -> tuple:
    """What a config's reference solve depends on: the eager network, x_T (model, seed, sample count, dtype), the
    batch it is solved in (adaptive step control takes norms over a batch; the spec has one), the tolerance and, for
    a conditional model, its conditions and guidance, and a final x0 step (keys without these are as before them)."""
    base = (cfg.model, cfg.schedule, cfg.image_resize, cfg.seed, cfg.n_samples, cfg.batch_size, cfg.device, cfg.dtype,
            cfg.reference_tolerance)
    if cfg.final_step != "none":
        base += (f"final_step={cfg.final_step}",)
    if cfg.guidance_scale is None:
        return base
    return base + (cfg.guidance_scale, cfg.conditions, cfg.guidance_interval)


def needed(cfg: RunConfig) -> bool:
    """Whether a config's metrics compare its samples with the reference solve (deterministic runs only)."""
    solver = get_solver(cfg.solver)
    return (cfg.skip_reason is None and bool(set(cfg.metrics) & REFERENCE_METRICS)
            and not solver.draws_noise(cfg.eta, dict(cfg.options)))


def _digest(reference_key: tuple) -> str:
    return hashlib.sha1(json.dumps(reference_key, default=str).encode()).hexdigest()[:16]


def paths(run_dir: Path, reference_key: tuple) -> tuple[Path, Path]:
    """(solution .pt, record .json) of a reference in a run folder."""
    stem = Path(run_dir) / FOLDER / _digest(reference_key)
    return stem.with_suffix(".pt"), stem.with_suffix(".json")


@dataclass(frozen=True)
class Failure:
    """A reference solve that did not finish: what the rows that needed it say instead of err_reference."""

    status: str  # failed | timeout
    message: str

    def note(self) -> str:
        return f"no err_reference: the reference solve {'timed out' if self.status == 'timeout' else 'failed'} " \
               f"({self.message})"


def load(run_dir: Path, reference_key: tuple) -> torch.Tensor | Failure | None:
    """The stored solution, the recorded failure, or None when the stage has not made it."""
    solution, record = paths(run_dir, reference_key)
    if not record.is_file():
        return None
    meta = json.loads(record.read_text())
    if meta["status"] != "ok":
        return Failure(meta["status"], meta["message"])
    return torch.load(solution) if solution.is_file() else None


def pending(configs: list[RunConfig], run_dir: Path, retry: bool = False) -> list[RunConfig]:
    """One config per reference key that ``configs`` need and the run folder lacks (or, with ``retry``, recorded as
    failed or timed out), in sweep order."""
    chosen = {}
    for cfg in filter(needed, configs):
        reference_key = key(cfg)
        if reference_key in chosen:
            continue
        found = load(run_dir, reference_key)
        if found is None or (retry and isinstance(found, Failure)):
            chosen[reference_key] = cfg
    return list(chosen.values())


def _write_record(run_dir: Path, reference_key: tuple, status: str, **fields) -> None:
    _, record = paths(run_dir, reference_key)
    record.parent.mkdir(parents=True, exist_ok=True)
    meta = {"key": [str(k) for k in reference_key], "status": status, **fields, "created_at": store.now()}
    files.atomic_write(record, lambda handle: handle.write(json.dumps(meta, indent=2).encode()))


def solve(cfg: RunConfig, model, x_T: torch.Tensor, conditions: torch.Tensor | None = None) -> torch.Tensor:
    """The high-accuracy solve of ``cfg``'s reference from x_T (dopri5, rtol = atol = reference_tolerance, float64,
    then the config's final step) in batches of its batch size, halved on a CUDA out-of-memory error; a guided model
    gets each batch's ``conditions``."""
    s, tolerance, batch = model.schedule, cfg.reference_tolerance, cfg.batch_size

    def solve_chunk(rows: slice):
        if conditions is not None:
            model.condition_on(conditions[rows])
        x = reference_solve(model, x_T[rows].double(), s.t_max, s.t_min, rtol=tolerance, atol=tolerance)
        return sampling.final_step(cfg, model, x, s.t_min)

    while True:
        try:
            return torch.cat([solve_chunk(slice(start, start + batch)) for start in range(0, len(x_T), batch)])
        except torch.cuda.OutOfMemoryError:
            if batch == 1:
                raise
            batch = max(1, batch // 2)
            torch.cuda.empty_cache()


def solve_and_store(cfg: RunConfig, run_dir: Path, model, x_T: torch.Tensor, conditions=None) -> str:
    """Solve ``cfg``'s reference (``model``: the eager network, ``x_T`` and ``conditions``: the config's) and store
    it, or record the exception that ended it; returns the status written (ok or failed)."""
    reference_key = key(cfg)
    started = time.perf_counter()
    try:
        solution = solve(cfg, model, x_T, conditions).cpu()
    except Exception as err:  # noqa: BLE001 - any failure is recorded for the rows, not raised
        record_failure(cfg, run_dir, f"{type(err).__name__}: {err}")
        return "failed"
    path, _ = paths(run_dir, reference_key)
    path.parent.mkdir(parents=True, exist_ok=True)
    files.atomic_write(path, lambda handle: torch.save(solution, handle))
    _write_record(run_dir, reference_key, "ok", seconds=time.perf_counter() - started)
    return "ok"


def record_failure(cfg: RunConfig, run_dir: Path, message: str) -> None:
    _write_record(run_dir, key(cfg), "failed", message=message)


def record_timeout(cfg: RunConfig, run_dir: Path, seconds: float) -> None:
    _write_record(run_dir, key(cfg), "timeout", message=f"stopped after {seconds:.1f} s: reference_time_limit_s = "
                                                         f"{cfg.reference_time_limit_s:g}")


def record_death(cfg: RunConfig, run_dir: Path, exit_code) -> None:
    _write_record(run_dir, key(cfg), "failed", message=f"the worker process died (exit code {exit_code}): a crash or "
                                                       "the system's out-of-memory killer")
