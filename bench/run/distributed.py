"""The Ray backend: a sweep fanned out as one Ray task per config group, on a local Ray or a cluster.

A group is the configs of one model, schedule, seed, sample count, device and solver. A task runs its
group through ``run_sweep`` itself, so within a group it shares what the serial runner shares across a
sweep (the loaded model, x_T, the 2n-step partners of step doubling, the eager twins of other exec
modes) and keeps the serial runner's resume check, per-config time limit (a worker process inside the
task), OOM fallback, atomic row writes into the shared run folder and compaction of what it wrote.
Every task sets the sweep's execution policy first (bench.run.policy; one torch thread unless ``threads``
says more, and as many CPUs reserved).

The reference stage (bench.run.references) runs as tasks of its own, one per reference key the run folder
lacks, each stopped at its ``reference_time_limit_s`` (the timeout recorded in the run folder, as the
serial stage records it); a group that needs a reference starts when it is stored or recorded as failed,
the other groups start at once. Splitting groups by solver as well as by (model, seed, device) then costs
a model load and x_T per group and buys parallelism: the default grid has 3 models but 28 solvers.

A task whose Ray worker dies is retried (``MAX_RETRIES``); the retry resumes its group from the rows on
disk, so a killed worker loses only the config it was running and duplicates nothing. Rows land in the
run folder as they finish, so a serial ``--resume`` completes a Ray run and the other way round.
Workers must see the run folder at the same path (one machine, or a shared filesystem on a cluster).

A Ray on which no node can run a task (its threads in CPUs, and a GPU for a CUDA grid) is refused before any task
starts; Ray itself would leave them pending for ever. ``ray_fan_out`` gives the plan (bench.run.plan) what it
needs of the Ray: how many tasks run at once, its start, and the time of a task with every slot busy; ``run
--max-minutes`` then sweeps on that Ray rather than starting another.
"""
from __future__ import annotations

import contextlib
import shutil
import tempfile
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

from bench.run import references
from bench.spec.config import RunConfig
from bench.run.policy import ExecutionPolicy

MAX_RETRIES = 3  # a group's task is run again this often after its worker died
POLL_S = 0.5  # how often the driver refreshes its progress bar


@dataclass(frozen=True)
class FanOut:
    """The Ray a sweep fans out on, as its plan needs it (bench.run.plan): ``slots`` tasks at once, ``start_s``
    seconds to start it as the sweep does, and ``time_task(configs)``, the seconds one task of ``configs`` takes
    there with every slot busy (``ray_fan_out``)."""
    slots: int
    start_s: float
    time_task: Callable[[list[RunConfig]], float]


def group_key(cfg: RunConfig) -> tuple:
    """The task a config runs in: configs that share a loaded model, x_T and reference solve, and one solver."""
    return cfg.model, cfg.schedule, cfg.image_resize, cfg.seed, cfg.n_samples, cfg.device, cfg.solver


def config_groups(configs: list[RunConfig]) -> list[list[RunConfig]]:
    """Configs of one task each (``group_key``), in sweep order, largest group first (so the long tasks start
    first)."""
    groups: dict[tuple, list[RunConfig]] = defaultdict(list)
    for cfg in configs:
        groups[group_key(cfg)].append(cfg)
    return sorted(groups.values(), key=len, reverse=True)


def task_policy(execution_policy: ExecutionPolicy | None) -> ExecutionPolicy:
    """The execution policy every Ray task runs under: the sweep's, with one torch thread where it sets none (a task
    reserves as many CPUs as it has threads, so tasks do not share a core)."""
    execution_policy = execution_policy or ExecutionPolicy()
    return execution_policy if execution_policy.threads is not None else replace(execution_policy, threads=1)


def task_slots(nodes: list[dict], threads: int, gpu: bool) -> int:
    """How many tasks Ray runs at once on ``nodes`` (ray.nodes()): on each live node, its CPUs over a task's
    ``threads``, and no more than its GPUs where each task asks one (``gpu``)."""
    slots = 0
    for node in nodes:
        if node.get("Alive", True):
            resources = node.get("Resources", {})
            fits = int(resources.get("CPU", 0) // threads)
            slots += min(fits, int(resources.get("GPU", 0))) if gpu else fits
    return slots


def _slots_or_raise(configs: list[RunConfig], execution_policy: ExecutionPolicy, address: str | None) -> int:
    """``task_slots`` of the Ray this process is connected to (joined at ``address``, or None: started here);
    ValueError, naming what a task asks, what the nodes have and what would give a task room, where no node can run
    one (Ray would leave the tasks pending for ever)."""
    import ray

    gpu = any(cfg.device.startswith("cuda") for cfg in configs)
    nodes = [node for node in ray.nodes() if node.get("Alive", True)]
    slots = task_slots(nodes, execution_policy.threads, gpu)
    if not slots:
        have = "; ".join(", ".join(_amount(node["Resources"].get(what, 0), what) for what in ("CPU", "GPU")[:1 + gpu])
                         for node in nodes)
        raise ValueError(f"--backend ray: a task asks {_amount(execution_policy.threads, 'CPU')} (its torch threads)"
                         + (" and 1 GPU" if gpu else "") + f", and no node of this Ray has that ({have or 'no node'}): "
                         + no_room_remedy(nodes, execution_policy.threads, gpu, address))
    return slots


def no_room_remedy(nodes: list[dict], threads: int, gpu: bool, address: str | None) -> str:
    """What gives a task of ``threads`` CPUs (and a GPU where ``gpu``) room on a Ray of ``nodes`` that has none for
    it: fewer threads, a local Ray of more CPUs or on a machine with a GPU, a node added to the cluster at
    ``address``, or the CPU."""
    cpu_short = not any(node["Resources"].get("CPU", 0) >= threads for node in nodes)
    gpu_short = gpu and not any(node["Resources"].get("GPU", 0) >= 1 for node in nodes)
    remedies = ["lower --threads"] if cpu_short else []
    if address is not None:
        remedies.append(f"add a node with {_amount(threads, 'CPU')}" + (" and a GPU" if gpu else "")
                        + f" to the cluster at {address}")
    elif cpu_short:
        remedies.append("start the local Ray with more CPUs (--workers)")
    if gpu_short and address is None:
        remedies.append("run where the local Ray sees a GPU")
    if gpu:
        remedies.append('run the grid on the CPU (device = "cpu")')
    return ", or ".join(remedies)


def _amount(count: float, what: str) -> str:
    return f"{count:g} {what}" + "s" * (count != 1)


@contextlib.contextmanager
def ray_fan_out(configs: list[RunConfig], address: str | None = None, workers: int | None = None,
                execution_policy: ExecutionPolicy | None = None):
    """The Ray a sweep of ``configs`` will run on, started (or joined) for the block and stopped after: a FanOut for
    the grid's plans, its start timed as a sweep on a Ray of its own pays it (``ray.init``, then on every slot a
    first task importing the harness); ``run --max-minutes`` sweeps on it after them (``run_sweep_on_ray``'s
    ``ray_running``). ValueError, before anything runs, where no node can run a task."""
    import ray

    execution_policy = task_policy(execution_policy)
    started = time.perf_counter()
    with _ray_up(address, workers):
        slots = _slots_or_raise(configs, execution_policy, address)
        ray.get([ray.remote(num_cpus=0)(_import_the_harness).remote() for _ in range(slots)])
        yield FanOut(slots, time.perf_counter() - started,
                     lambda group: _time_side_by_side(group, slots, execution_policy))


def _time_side_by_side(group: list[RunConfig], slots: int, execution_policy: ExecutionPolicy) -> float:
    """The mean seconds of ``slots`` copies of a task of ``group`` run at once on the Ray, each as a sweep's task runs
    its group (``_timed_task``)."""
    import ray

    task = ray.remote(_timed_task).options(**_resources(group[0], execution_policy))
    times = ray.get([task.remote(group, execution_policy) for _ in range(slots)])
    return sum(times) / len(times)


def _timed_task(group: list[RunConfig], execution_policy: ExecutionPolicy) -> float:
    """A Ray task: the seconds of ``group`` run through the serial sweep as ``_run_group`` runs it, into a scratch
    folder of its own; the Ray worker's fork server started first, untimed (the plan counts it once per slot)."""
    from bench.run.sweep import run_sweep
    from bench.run.worker import ConfigWorker

    if any(cfg.time_limit_s for cfg in group):
        worker = ConfigWorker(execution_policy)
        worker.start()
        worker.stop()
    folder = Path(tempfile.mkdtemp(prefix="bench-plan-task-"))
    try:
        (folder / "rows").mkdir()
        started = time.perf_counter()
        run_sweep(group, folder, "plan", progress=False, execution_policy=execution_policy, reference_stage=False)
        return time.perf_counter() - started
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@contextlib.contextmanager
def _ray_up(address: str | None, workers: int | None):
    """Joined to the cluster at ``address``, or to a local Ray started with ``workers`` CPUs (default: all), for the
    block; disconnected (a local Ray stopped) after."""
    import ray

    ray.init(address=address, num_cpus=None if address else workers, include_dashboard=False, log_to_driver=False,
             configure_logging=False)
    try:
        yield
    finally:
        ray.shutdown()


def _import_the_harness() -> None:
    import bench.run.sweep  # noqa: F401


def run_sweep_on_ray(configs: list[RunConfig], run_dir: Path, run_id: str, address: str | None = None,
                     workers: int | None = None, progress: bool | None = None, retry: tuple[str, ...] = (),
                     execution_policy: ExecutionPolicy | None = None, ray_running: bool = False) -> dict:
    """``run_sweep`` of ``configs`` on Ray; returns counts by status, plus ``lost`` (configs of groups whose
    task failed for good: their rows are missing, a rerun of the same command runs them).

    ``address``: a running cluster to join (None: start a local Ray with ``workers`` CPUs, default all), stopped
    after; ``ray_running``: the Ray this process is connected to instead (``ray_fan_out``'s, the grid's plans run
    on it), left up. A task asks for one GPU when its configs run on CUDA, and for the policy's threads (default 1)
    in CPUs."""
    import ray

    from bench.run import store
    from bench.run.sweep import progress_bar

    execution_policy = task_policy(execution_policy)
    run_dir = Path(run_dir).resolve()
    done = store.done_ids(run_dir, retry)
    todo = [c for c in configs if c.config_id not in done]
    counts = Counter({"already_done": len(configs) - len(todo)})
    groups = config_groups(todo)
    if not groups:
        return dict(counts)
    with contextlib.nullcontext() if ray_running else _ray_up(address, workers):
        _slots_or_raise(todo, execution_policy, address)
        board = ray.remote(num_cpus=0)(Board).remote()
        solving = _start_reference_solves(references.pending(todo, run_dir, retry=bool(retry)), run_dir, board,
                                          execution_policy)
        task = ray.remote(max_retries=MAX_RETRIES)(_run_group)
        waiting = [(group, {references.key(c) for c in group if references.needed(c)}) for group in groups]
        pending = {}
        bar = progress_bar(len(configs), counts["already_done"], progress)
        while waiting or pending or solving:
            rows, started = ray.get(board.state.remote())
            _finish_references(solving, started, run_dir)
            ready_groups = [group for group, keys in waiting if not keys & set(solving)]
            waiting = [(group, keys) for group, keys in waiting if keys & set(solving)]
            for group in ready_groups:
                resources = _resources(group[0], execution_policy)
                ref = task.options(**resources).remote(group, run_dir, run_id, retry, board, execution_policy)
                pending[ref] = group
            ready, _ = ray.wait(list(pending), num_returns=len(pending), timeout=POLL_S) if pending else ([], [])
            if not pending:
                time.sleep(POLL_S)
            for ref in ready:
                group = pending.pop(ref)
                try:
                    counts.update(ray.get(ref))
                except ray.exceptions.RayError as err:
                    counts["lost"] += len(group) - _rows_of(run_dir, group, retry)
                    print(f"ray: the task of {_label(group)} failed after {MAX_RETRIES} retries ({type(err).__name__}); "
                          "its finished rows are kept, a rerun runs the rest", flush=True)
            bar.update(rows - (bar.n - counts["already_done"]))
        bar.close()
    store.remove_stale_temp_files(run_dir)  # a killed task's half-written row; live writers' (other shards) stay
    store.compact(run_dir)  # what killed tasks left loose; no task writes any more
    return {k: v for k, v in counts.items() if v}


def _start_reference_solves(pending_configs: list[RunConfig], run_dir: Path, board, execution_policy) -> dict:
    """One task per reference the run folder lacks: reference key -> (ObjectRef, its config)."""
    import ray

    solve = ray.remote(max_retries=MAX_RETRIES)(_reference_solve)
    return {references.key(cfg): (solve.options(**_resources(cfg, execution_policy)).remote(cfg, run_dir, board,
                                                                                          execution_policy), cfg)
            for cfg in pending_configs}


def _finish_references(solving: dict, started: dict, run_dir: Path) -> None:
    """Drop the reference solves that ended (they stored their outcome) and stop those past their
    reference_time_limit_s, recording the timeout; a task lost for good is recorded as failed."""
    import ray

    for key, (ref, cfg) in list(solving.items()):
        if ray.wait([ref], timeout=0)[0]:
            try:
                ray.get(ref)
            except ray.exceptions.RayError as err:
                references.record_death(cfg, run_dir, type(err).__name__)
            del solving[key]
        elif cfg.reference_time_limit_s and key in started and time.time() - started[key] > cfg.reference_time_limit_s:
            ray.cancel(ref, force=True)
            references.record_timeout(cfg, run_dir, time.time() - started[key])
            del solving[key]


def _run_group(group: list[RunConfig], run_dir: Path, run_id: str, retry: tuple[str, ...], board,
               execution_policy) -> dict:
    """A Ray task: one group through the serial runner under the sweep's policy, each row counted on the board;
    the reference stage has stored what it needs in the run folder."""
    from bench.run.sweep import run_sweep

    return run_sweep(group, run_dir, run_id, progress=False, retry=retry, on_row=lambda row: board.row_written.remote(),
                     execution_policy=execution_policy, reference_stage=False)


def _reference_solve(cfg: RunConfig, run_dir: Path, board, execution_policy) -> str:
    """A Ray task: the reference solve of ``cfg``'s key, stored in the run folder (or its failure recorded)."""
    from bench.run.runner import SweepCache, make_reference

    execution_policy.apply()
    board.solve_started.remote(references.key(cfg), time.time())
    return make_reference(cfg, SweepCache(run_dir=Path(run_dir)))


def _resources(cfg: RunConfig, execution_policy) -> dict:
    cpus = {"num_cpus": execution_policy.threads}
    return {"num_gpus": 1, **cpus} if cfg.device.startswith("cuda") else cpus


def _rows_of(run_dir: Path, group: list[RunConfig], retry: tuple[str, ...]) -> int:
    from bench.run import store

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
