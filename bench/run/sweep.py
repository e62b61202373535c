"""The sweep: RunConfigs in, one parquet row per config out, resumable and shardable.

A sweep sets its execution policy (bench.run.policy) in its own process and in every worker it starts, makes
the reference solves its configs need as a stage of their own (bench.run.references), then runs each config
(bench.run.runner) in a worker process that it stops at the spec's ``time_limit_s`` (a ``timeout`` row) or in
its own process (a limit of 0). Rows are written as configs end, atomically, and compacted as it goes, so a
killed sweep loses only the config in flight and a rerun into the same folder skips what is done.
"""
from __future__ import annotations

import sys
from pathlib import Path

from bench.run import policy, references, store
from bench.run.runner import SweepCache, config_row, eager_keys, make_reference, partner_keys, resolve_device, run_config
from bench.run.worker import ConfigWorker
from bench.spec import RunConfig


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
    execution_policy = execution_policy or policy.ExecutionPolicy()
    execution_policy.apply()
    done = store.done_ids(run_dir, retry)
    todo = [c for c in configs if c.config_id not in done]
    counts = {"already_done": len(configs) - len(todo)}
    shared = {"needed_partners": partner_keys(todo), "needed_eager": eager_keys(todo), "run_dir": Path(run_dir)}
    in_process, worker = SweepCache(**shared), ConfigWorker(execution_policy, **shared)
    envs = {device: _environment(device) for device in {c.device for c in todo}}
    written = {}  # row files this call wrote -> their tables, for compaction
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
            store.write_row(run_dir, row, written)
            counts[row["status"]] = counts.get(row["status"], 0) + 1
            bar.update(1)
            if on_row is not None:
                on_row(row)
            if len(written) >= store.COMPACT_EVERY:
                store.compact(run_dir, written)
                written = {}
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
