"""The Ray backend: a sweep fanned out as one Ray task per config group, on a local Ray or a cluster.

A group is the configs of one model, schedule, seed, sample count, device and solver. A task runs its
group through ``run_sweep`` itself, so within a group it shares what the serial runner shares across a
sweep (the loaded model, x_T, the 2n-step partners of step doubling, the eager twins of other exec
modes) and keeps the serial runner's resume check, per-config time limit (a worker process inside the
task), OOM fallback, atomic row writes into the shared run folder and compaction of what it wrote.
The reference solve (dopri5 at ``reference_tolerance``, float64), the costliest thing configs share,
is made once per ``runner.reference_key`` by a task of its own and handed to every group task that
needs it through Ray's object store: the same tensor the serial runner would compute. Splitting groups
by solver as well as by (model, seed, device) then costs a model load and x_T per group and buys
parallelism: the default grid has 3 models but 28 solvers.

A task whose Ray worker dies is retried (``MAX_RETRIES``); the retry resumes its group from the rows on
disk, so a killed worker loses only the config it was running and duplicates nothing. Rows land in the
run folder as they finish, so a serial ``--resume`` completes a Ray run and the other way round.
Workers must see the run folder at the same path (one machine, or a shared filesystem on a cluster).
"""
from __future__ import annotations

import time
from collections import Counter, defaultdict
from pathlib import Path

from bench.config import RunConfig

MAX_RETRIES = 3  # a group's task is run again this often after its worker died
POLL_S = 0.5  # how often the driver refreshes its progress bar


def config_groups(configs: list[RunConfig]) -> list[list[RunConfig]]:
    """Configs that share a loaded model, x_T and reference solve, in sweep order, largest group first
    (so the long tasks start first)."""
    groups: dict[tuple, list[RunConfig]] = defaultdict(list)
    for cfg in configs:
        groups[(cfg.model, cfg.schedule, cfg.image_resize, cfg.seed, cfg.n_samples, cfg.device, cfg.solver)].append(cfg)
    return sorted(groups.values(), key=len, reverse=True)


def run_sweep_on_ray(configs: list[RunConfig], run_dir: Path, run_id: str, address: str | None = None,
                     workers: int | None = None, progress: bool | None = None, retry: tuple[str, ...] = ()) -> dict:
    """``run_sweep`` of ``configs`` on Ray; returns counts by status, plus ``lost`` (configs of groups whose
    task failed for good: their rows are missing, a rerun of the same command runs them).

    ``address``: a running cluster to join (None: start a local Ray with ``workers`` CPUs, default all).
    A task asks for one GPU when its configs run on CUDA, else one CPU, and runs torch on one thread."""
    import ray

    from bench import runner, store

    run_dir = Path(run_dir).resolve()
    done = store.done_ids(run_dir, retry)
    todo = [c for c in configs if c.config_id not in done]
    counts = Counter({"already_done": len(configs) - len(todo)})
    groups = config_groups(todo)
    if not groups:
        return dict(counts)
    ray.init(address=address, num_cpus=None if address else workers, include_dashboard=False,
             log_to_driver=False, configure_logging=False)
    try:
        board = ray.remote(num_cpus=0)(Board).remote()
        references = _start_reference_solves(todo, board)
        task = ray.remote(max_retries=MAX_RETRIES)(_run_group)
        pending = {}
        for group in groups:
            needed = {runner.reference_key(c) for c in group if runner.needs_reference(c)}
            inputs = {key: references[key][0] for key in needed}
            pending[task.options(**_resources(group[0])).remote(group, run_dir, run_id, retry, board, inputs)] = group
        bar = runner.progress_bar(len(configs), counts["already_done"], progress)
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=len(pending), timeout=POLL_S)
            for ref in ready:
                group = pending.pop(ref)
                try:
                    counts.update(ray.get(ref))
                except ray.exceptions.RayError as err:
                    counts["lost"] += len(group) - _rows_of(run_dir, group, retry)
                    print(f"ray: the task of {_label(group)} failed after {MAX_RETRIES} retries ({type(err).__name__}); "
                          "its finished rows are kept, a rerun runs the rest", flush=True)
            rows, started = ray.get(board.state.remote())
            _cancel_overdue(references, started)
            bar.update(rows - (bar.n - counts["already_done"]))
        bar.close()
    finally:
        ray.shutdown()
    store.compact(run_dir)  # what killed tasks left loose; no task writes any more
    return {k: v for k, v in counts.items() if v}


def _start_reference_solves(todo: list[RunConfig], board) -> dict:
    """One task per reference solve the configs need: reference_key -> (ObjectRef, time limit in seconds)."""
    import ray

    from bench import runner

    solve = ray.remote(max_retries=MAX_RETRIES)(_reference_solve)
    references = {}
    for cfg in filter(runner.needs_reference, todo):
        key = runner.reference_key(cfg)
        if key not in references:
            references[key] = solve.options(**_resources(cfg)).remote(cfg, board), cfg.time_limit_s
    return references


def _cancel_overdue(references: dict, started: dict) -> None:
    """Stop the reference solves that have run longer than their configs' time limit (none for a limit of 0):
    the group tasks waiting for one then solve it themselves, inside each config's limit, as a serial sweep
    does (a hung model gives timeout rows, not a hung sweep)."""
    import ray

    for key, (ref, limit) in list(references.items()):
        if limit and key in started and time.time() - started[key] > limit and not ray.wait([ref], timeout=0)[0]:
            ray.cancel(ref, force=True)
            del references[key]


def _run_group(group: list[RunConfig], run_dir: Path, run_id: str, retry: tuple[str, ...], board,
               references: dict) -> dict:
    """A Ray task: one group through the serial runner, on one torch thread, each row counted on the board.
    ``references``: ObjectRefs of the reference solves its configs use; one that was stopped or lost is
    solved here instead."""
    import ray
    import torch

    from bench.runner import run_sweep

    torch.set_num_threads(1)
    solved = {}
    for key, ref in references.items():
        try:
            solved[key] = ray.get(ref)
        except ray.exceptions.RayError:  # cancelled for its time limit, or its worker died for good
            pass
    return run_sweep(group, run_dir, run_id, progress=False, retry=retry, on_row=lambda row: board.row_written.remote(),
                     references=solved)


def _reference_solve(cfg: RunConfig, board):
    """A Ray task: the reference solve of ``cfg``'s key, at the spec's batch size (as the serial runner makes
    it unless the config's own solve ran out of memory), or the error that ended it."""
    import torch

    from bench.runner import SweepCache, reference_key, reference_solution

    torch.set_num_threads(1)
    board.solve_started.remote(reference_key(cfg), time.time())
    return reference_solution(cfg, SweepCache(), cfg.batch_size)


def _resources(cfg: RunConfig) -> dict:
    return {"num_gpus": 1, "num_cpus": 1} if cfg.device.startswith("cuda") else {"num_cpus": 1}


def _rows_of(run_dir: Path, group: list[RunConfig], retry: tuple[str, ...]) -> int:
    from bench import store

    return len({c.config_id for c in group} & store.done_ids(run_dir, retry))


def _label(group: list[RunConfig]) -> str:
    cfg = group[0]
    return f"{len(group)} configs of {cfg.model} / {cfg.solver} / seed {cfg.seed} on {cfg.device}"


class Board:
    """A Ray actor's state: rows written by every task (the driver's progress bar) and when each reference
    solve started running (the driver stops those past their time limit)."""

    def __init__(self):
        self.rows, self.started = 0, {}

    def row_written(self) -> None:
        self.rows += 1

    def solve_started(self, key: tuple, at: float) -> None:
        self.started[key] = at

    def state(self) -> tuple[int, dict]:
        return self.rows, dict(self.started)
