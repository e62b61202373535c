"""The plan of a sweep, before it runs: what it will compute, and about how long that takes on this machine.

Counted from the spec and the registry (exact for fixed-step solvers): configurations (runnable, skipped by rule),
the network's image-forwards (one sample through the network once: a guided evaluation is 1 NFE and 2 passes) of
the solves, their repeated timings, the warm-ups, the step-doubling partners the grid does not hold, the eager twins
of other exec modes and the reference solves (dopri5: its NFE measured on a few samples), and the metric passes
(Inception images, LPIPS pairs). Adaptive solvers decide their NFE as they go: they are counted as configurations,
and their NFE is taken as the reference solve's (at their looser tolerance they take fewer: an upper bound).

Time: per model, a + b x per configuration, x its image-forwards: b, the solves' seconds per image-forward (the
network with the solver's arithmetic around it: 1.1-3x the bare forward on the analytic mixtures' cheap networks),
and a, the harness's own seconds per configuration (pre-drawn Brownian noise, metric arithmetic, the worker
process's round trip, writing the row), fitted to a few configurations of the grid run in full here the way the
sweep runs them (``SweepPath``: in a worker process where the spec has time limits, each row written; under the
sweep's execution policy), plus each model's set-up (building it, x_T, the metrics' reference sets: its cheapest
configuration run twice, the first less the second) and the worker's start (its fork server importing the
harness: 3-4 s on the 2-core CPU, once per process), the rows of the skipped configurations (made and written as
the sweep writes them: a few timed); plus the Inception network's seconds per image, measured at the spec's batch,
times the images. Up to cf549af b was the bare forward and a one configuration's (the cheapest,
deterministic) remainder: the default grid came out at 2.1 min where it ran 3.3; up to fa2e44f the configurations
were calibrated in the planning process, no row written, at torch's default threads whatever the spec's or
--threads (2.5-2.9 min where it ran 3.3).
On Ray (``fan_out``) the same costs are split into its tasks (bench.run.distributed's groups, and a task per
reference solve), each paying its model's set-up and what a task costs beyond its configurations (measured on the
cheapest task, run as a task runs it), and handed out to the Ray's slots as its driver hands them out
(``makespan``); the estimate is Ray's start plus the moment the last task ends.
Left out: the one-off compilation of ``compile`` and capture of ``cuda_graph`` (named in the plan's lines; their
forwards count at eager speed), a worker's restart after a configuration is stopped at its time limit, and the
merging of each 1,000 rows into a part file (bench.run.store.compact: 0.3 s per 1,000 on the 2-core CPU).
"""
from __future__ import annotations

import dataclasses
import heapq
import random
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from bench import metrics
from bench.run import references, sampling, store
from bench.run.distributed import FanOut, config_groups, group_key
from bench.run.policy import ExecutionPolicy
from bench.run.runner import WARM_UP_STEPS, SweepCache, resolve_device, run_config
from bench.run.worker import ConfigWorker
from bench.spec import REFERENCE_METRICS, RunConfig
from solvers import get_solver
from solvers.reference import reference_solve

REFERENCE_PROBE = 4  # samples whose reference solve is timed and counted
CALIBRATION_CONFIGS, CALIBRATION_BUDGET_S = 24, 10.0  # per model: configurations run in full, while within the budget
SKIPPED_ROWS_TIMED = 50  # rows of skipped configurations written to time one (4-6 ms each on the 2-core CPU)
UNCOUNTED = {  # exec mode -> its one-off cost, which the plan does not measure (its forwards count at eager speed)
    "compile": "torch.compile's compilation, once per model and batch shape (rows: warmup_s)",
    "cuda_graph": "each cuda_graph config's capture, once per batch shape (rows: capture_s)"}


@dataclass
class Task:
    """One Ray task's estimated work: ``fixed_s`` whatever N (its model's set-up, its configurations' harness),
    ``scaled_s`` in proportion to N; the reference solves it waits for (``needs``, their keys) or the one it makes
    (``makes``); ``worker``: its configurations run in a worker process (time limits)."""
    fixed_s: float = 0.0
    scaled_s: float = 0.0
    needs: set = field(default_factory=set)
    makes: tuple | None = None
    worker: bool = False


def makespan(tasks: list[Task], slots: int, scale: float = 1.0, slot_start_s: float = 0.0) -> float:
    """Seconds until the last of ``tasks`` ends, with N scaled by ``scale``, handed out as bench.run.distributed does:
    in order, each to the first slot free once the reference solves it needs are stored; a slot's first task with a
    worker process starts the Ray worker's fork server first (``slot_start_s``; later workers fork from it in
    0.03 s). The reference solves come first in the order, so each is handed out before any task that needs it."""
    free = [(0.0, slot) for slot in range(slots)]
    served, stored, waiting, end = set(), {}, list(tasks), 0.0
    while waiting:
        at, slot = heapq.heappop(free)
        task = next((t for t in waiting if all(stored.get(key, 0.0) <= at for key in t.needs)), None)
        if task is None:  # the slot idles until the next reference solve is stored
            heapq.heappush(free, (min(done for done in stored.values() if done > at), slot))
            continue
        waiting.remove(task)
        done = at + task.fixed_s + task.scaled_s * scale
        if task.worker and slot not in served:
            served.add(slot)
            done += slot_start_s
        if task.makes is not None:
            stored[task.makes] = done
        end = max(end, done)
        heapq.heappush(free, (done, slot))
    return end


@dataclass
class Plan:
    configs: int = 0
    skipped: int = 0
    adaptive: int = 0
    forwards: dict = field(default_factory=dict)  # what -> image-forwards
    inception_images: int = 0
    lpips_pairs: int = 0
    reference_solves: int = 0
    seconds: dict = field(default_factory=dict)  # what -> estimated seconds
    measured: dict = field(default_factory=dict)  # what was measured, per model
    uncounted: list = field(default_factory=list)  # costs the grid has that the estimate leaves out
    fan_out: FanOut | None = None  # --backend ray: the Ray its tasks share (None: one process runs the grid)
    tasks: list = field(default_factory=list)  # with fan_out: each Ray task's work (Task), in the order it is handed out
    slot_start_s: float = 0.0  # with fan_out: a Ray worker's fork server, started by its first task with time limits

    @property
    def work_s(self) -> float:
        """The estimated seconds of work, all processes together (``seconds``' sum)."""
        return sum(self.seconds.values())

    @property
    def total_s(self) -> float:
        """The estimated seconds the grid takes: its work, or on Ray its tasks side by side and Ray's start."""
        return self.work_s if self.fan_out is None else estimate_ray(self, 1, 1)

    def lines(self) -> list[str]:
        out = [f"{self.configs} configurations: {self.configs - self.skipped} runnable, {self.skipped} skipped by rule"
               + (f" ({self.adaptive} adaptive: NFE bounded by the reference solve's)" if self.adaptive else "")]
        out.append("network image-forwards: " + ", ".join(f"{k} {v:,.0f}" for k, v in self.forwards.items() if v))
        out.append(f"reference solves: {self.reference_solves}; metric passes: {self.inception_images:,} Inception "
                   f"images, {self.lpips_pairs:,} LPIPS pairs")
        if not self.measured:
            return out + ["estimate: not measured (the NFE of reference solves and adaptive solvers, the repeated "
                          "timings and the seconds need the measurement: drop --no-measure)"]
        out += [f"measured: {line}" for line in self.measured.values()]
        out.append(f"estimate: {self.total_s / 60:.1f} min")
        if self.fan_out is not None:
            longest = max((task.fixed_s + task.scaled_s for task in self.tasks), default=0.0)
            out[-1] += (f" on Ray, {self.fan_out.slots} task{'s' * (self.fan_out.slots != 1)} at once: "
                        f"{self.work_s / 60:.1f} min of work in {len(self.tasks)} tasks (the longest "
                        f"{longest / 60:.1f} min; each pays its model's set-up), Ray's start {self.fan_out.start_s:.0f} s")
        for what, seconds in sorted(self.seconds.items(), key=lambda item: -item[1]):
            if seconds > 0:
                out.append(f"  {what}: {seconds / 60:.1f} min ({100 * seconds / max(self.work_s, 1e-9):.0f}%)")
        return out + [f"not in the estimate: {what}" for what in self.uncounted]


def passes_per_evaluation(cfg: RunConfig) -> int:
    """Network passes of one evaluation: 2 for a guided one (both halves; CFG++ at every scale), else 1."""
    if cfg.guidance_scale is None:
        return 1
    return 2 if get_solver(cfg.solver).needs_guidance or cfg.guidance_scale not in (0.0, 1.0) else 1


def solve_nfe(cfg: RunConfig, steps: int | None, reference_nfe: float) -> float:
    """A solve's NFE per sample, its final x0 step included (an adaptive solver's: as many as the reference solve's)."""
    declared = sampling.declared_nfe(cfg, steps)
    return declared if declared is not None else reference_nfe + sampling.FINAL_STEP_NFE[cfg.final_step]


def _measuring(cfg: RunConfig, same_model: list[RunConfig], probe_reference: bool) -> str:
    """What the plan is about to measure of ``cfg``'s model, in a line."""
    cheapest = min(same_model, key=_calibration_order)
    parts = [f"its forward at batch {min(cfg.batch_size, cfg.n_samples)}"]
    if probe_reference:
        parts.append(f"a reference solve of {REFERENCE_PROBE} samples")
    if metrics.needing("inception") & set(cfg.metrics):
        parts.append("the Inception pass")
    steps = f"{cheapest.steps} steps" if cheapest.steps is not None else f"tolerance {cheapest.tolerance:g}"
    return (f"{cfg.model}: timing {', '.join(parts)}; then running configurations in full as the sweep does, the "
            f"cheapest ({cheapest.solver}, {steps}, N = {cheapest.n_samples}) first ...")


def _calibration_order(cfg: RunConfig) -> tuple:
    """The order in which the calibration picks a model's configurations: the cheapest (fixed steps, fewest) first."""
    return get_solver(cfg.solver).adaptive, cfg.steps or 0


def _measure(cfg: RunConfig, cache: SweepCache, probe_reference: bool) -> dict:
    """Per model of the grid: seconds per image-forward at the spec's batch, the reference solve's NFE per sample
    (``probe_reference``: where a config needs a reference solve or runs an adaptive solver; else 0) and Inception
    seconds per image (when a metric needs it)."""
    device = resolve_device(cfg.device)
    one_pass = dataclasses.replace(cfg, guidance_scale=cfg.guidance_scale and 1.0, exec_mode="eager")
    source, model = cache.model(one_pass)
    x_T = cache.prior(cfg, source.event_shape, device, getattr(torch, cfg.dtype))
    conditions = cache.conditions(cfg, device)
    batch = min(cfg.batch_size, len(x_T))
    forward_s = sampling.forward_seconds(model, x_T[:batch], float(model.schedule.t_max), device,
                                         None if conditions is None else conditions[:batch])
    out = {"image_forward_s": forward_s / batch, "reference_nfe": 0}
    if probe_reference:
        probe = x_T[:REFERENCE_PROBE].double()
        if conditions is not None:
            model.condition_on(conditions[:REFERENCE_PROBE])
        model.reset_nfe()
        with torch.no_grad():
            reference_solve(model, probe, model.schedule.t_max, model.schedule.t_min, rtol=cfg.reference_tolerance,
                            atol=cfg.reference_tolerance)
        out["reference_nfe"] = model.nfe
    from bench.metrics.fid import InceptionFeatures, image_shape

    # the image metrics skip other models (a latent model decodes); 0: not images
    out["image_side"] = min(image_shape(source)[-2:]) if len(source.event_shape) == 3 else 0
    if metrics.needing("inception") & set(cfg.metrics) and out["image_side"]:
        extractor = InceptionFeatures(cfg.fid_weights, str(device))
        images = torch.rand((50, *image_shape(source))) * 2 - 1
        extractor(images[:5])
        started = time.perf_counter()
        extractor(images)
        out["inception_image_s"] = (time.perf_counter() - started) / len(images)
    return out


def make_plan(configs: list[RunConfig], measure: bool = True, execution_policy: ExecutionPolicy | None = None,
              fan_out: FanOut | None = None, say=None) -> Plan:
    """Count what ``configs`` will compute and (``measure``) estimate its time from short measurements here, under
    the sweep's ``execution_policy`` (threads, TF32; default torch's, as a sweep's), which this process keeps.
    ``fan_out`` (bench.run.distributed.ray_fan_out): the grid runs on that Ray, as one task per group of
    configurations (bench.run.distributed.group_key) and one per reference solve, each with a model of its own.
    ``say``: called with a line before each model's measurement and after it (at N = 1,000 on a CPU they take
    minutes, which the plan spent without a word)."""
    plan = Plan(configs=len(configs), fan_out=fan_out)
    runnable = [c for c in configs if c.skip_reason is None]
    plan.skipped = len(configs) - len(runnable)
    plan.adaptive = sum(get_solver(c.solver).adaptive for c in runnable)
    modes = {c.exec_mode for c in runnable}
    plan.uncounted = [what for mode, what in UNCOUNTED.items() if mode in modes]
    measured, worker_start_s, skipped_row_s = {}, 0.0, 0.0
    if measure and runnable:
        execution_policy = execution_policy or ExecutionPolicy()
        execution_policy.apply()
        with SweepPath(execution_policy, any(c.time_limit_s for c in runnable)) as path:
            for cfg in runnable:
                if cfg.model not in measured:
                    same_model = [c for c in runnable if c.model == cfg.model]
                    probe = any(references.needed(c) or get_solver(c.solver).adaptive for c in same_model)
                    started = time.perf_counter()
                    if say:
                        say(_measuring(cfg, same_model, probe))
                    measured[cfg.model] = _measure(cfg, SweepCache(), probe)  # its model freed before calibrating
                    _release_device_memory()  # for the worker's copy
                    measured[cfg.model].update(_calibrate(same_model, path, measured[cfg.model]))
                    if say:
                        say(f"{cfg.model}: measured in {time.perf_counter() - started:.0f} s")
            worker_start_s = path.worker_start_s
            skipped_row_s = path.skipped_row_s([c for c in configs if c.skip_reason][:SKIPPED_ROWS_TIMED])
        _release_device_memory()  # for the sweep's worker, where `run --max-minutes` planned
    inception_s = max((m.get("inception_image_s", 0.0) for m in measured.values()), default=0.0)
    keys = {(c.model, c.solver, c.options, c.steps, c.spacing, c.eta, c.seed, c.guidance_scale, c.exec_mode)
            for c in runnable}
    counts = {"solves": 0.0, "timing repeats": 0.0, "warm-ups": 0.0, "step-doubling partners": 0.0,
              "eager twins": 0.0, "reference solves": 0.0}
    seconds = dict.fromkeys(counts, 0.0)
    warmed, solved_references = set(), set()
    groups, reference_tasks = {}, {}  # with fan_out: the Ray tasks, by group and by reference key
    for cfg in runnable:
        m = measured.get(cfg.model, {"solve_forward_s": 0.0, "reference_nfe": 0, "harness_s": 0.0, "setup_s": 0.0})
        passes, n = passes_per_evaluation(cfg), cfg.n_samples
        forwards = solve_nfe(cfg, cfg.steps, m["reference_nfe"]) * passes * n
        before = dict(counts)
        counts["solves"] += forwards
        if measure and cfg.timing_repeats > 1 and forwards * m["solve_forward_s"] < sampling.REPEAT_BELOW_S:
            counts["timing repeats"] += (cfg.timing_repeats - 1) * forwards
        warm_key = (cfg.model, cfg.solver, cfg.device, cfg.batch_size, cfg.exec_mode) + (
            (group_key(cfg),) if fan_out else ())  # a Ray task warms up in a process of its own
        if warm_key not in warmed:
            warmed.add(warm_key)
            steps = None if cfg.steps is None else min(cfg.steps, WARM_UP_STEPS)
            counts["warm-ups"] += solve_nfe(cfg, steps, m["reference_nfe"]) * passes * min(cfg.batch_size, n)
        partner = (cfg.model, cfg.solver, cfg.options, None if cfg.steps is None else 2 * cfg.steps, cfg.spacing,
                   cfg.eta, cfg.seed, cfg.guidance_scale, cfg.exec_mode)
        if (metrics.needing("partner") & set(cfg.metrics) and cfg.steps is not None and partner not in keys
                and get_solver(cfg.solver).order_for(cfg.eta, dict(cfg.options)) is not None):
            counts["step-doubling partners"] += 2 * forwards
        if cfg.exec_mode != "eager" and (*partner[:3], cfg.steps, *partner[4:8], "eager") not in keys:
            counts["eager twins"] += forwards
        if references.needed(cfg) and references.key(cfg) not in solved_references:
            solved_references.add(references.key(cfg))
            plan.reference_solves += 1
            counts["reference solves"] += (m["reference_nfe"] + sampling.FINAL_STEP_NFE[cfg.final_step]) * (2 if passes == 2 else 1) * n
            if fan_out:
                reference_tasks[references.key(cfg)] = Task(fixed_s=m["setup_s"], makes=references.key(cfg))
        side = m.get("image_side", float("inf"))  # not measured: taken for images the metrics take
        images = bool(metrics.needing("inception") & set(cfg.metrics) and side)
        plan.inception_images += n * images
        plan.lpips_pairs += n * sum(side >= metrics.METRICS[name].min_image_side
                                    for name in ("lpips_reference", "lpips_diversity") if name in cfg.metrics)
        for what in counts:  # each model's forwards at its own speed
            seconds[what] += (counts[what] - before[what]) * m["solve_forward_s"]
        if fan_out:
            task = groups.setdefault(group_key(cfg), Task(fixed_s=m["setup_s"], worker=bool(cfg.time_limit_s)))
            task.fixed_s += m["harness_s"]
            task.scaled_s += n * images * inception_s + m["solve_forward_s"] * sum(
                counts[what] - before[what] for what in counts if what != "reference solves")
            if references.needed(cfg):
                task.needs |= {references.key(cfg)}
                reference_tasks[references.key(cfg)].scaled_s += (
                    (counts["reference solves"] - before["reference solves"]) * m["solve_forward_s"])
    plan.forwards = counts
    if fan_out:  # as bench.run.distributed hands them out: the reference solves, then the largest groups first
        members = {group_key(group[0]): group for group in config_groups(configs)}
        for key, group in members.items():  # a task writes its skipped configurations' rows too
            if skipped := sum(cfg.skip_reason is not None for cfg in group):
                groups.setdefault(key, Task()).fixed_s += skipped * skipped_row_s
        plan.tasks = [*reference_tasks.values(), *(groups[key] for key in members)]
    if measure:
        plan.seconds = {f"network: {what}": value for what, value in seconds.items()}
        plan.seconds["Inception"] = plan.inception_images * inception_s
        for model, m in measured.items():
            plan.measured[model] = (f"{model}: {_duration(m['image_forward_s'])} per image-forward at the spec's "
                                    f"batch ({_duration(m['solve_forward_s'])} in a solve, harness "
                                    f"{_duration(m['harness_s'])} per configuration: {m['calibrated_on']}; set-up "
                                    f"{m['setup_s']:.3g} s)"
                                    + (f", reference solve {m['reference_nfe']} NFE per sample" if m["reference_nfe"] else "")
                                    + (f", Inception {_duration(m['inception_image_s'])} per image"
                                       if "inception_image_s" in m else ""))
        plan.seconds["harness per configuration"] = sum(measured[cfg.model]["harness_s"] for cfg in runnable)
        plan.seconds["rows of skipped configurations"] = plan.skipped * skipped_row_s
        plan.seconds["model set-up"] = sum(m["setup_s"] for m in measured.values())
        plan.seconds["worker process start"] = worker_start_s
        if fan_out:  # every task sets its model up; each Ray worker starts a fork server
            rows = plan.seconds["harness per configuration"] + plan.seconds["rows of skipped configurations"]
            plan.seconds["model set-up"] = sum(task.fixed_s for task in plan.tasks) - rows
            plan.slot_start_s = worker_start_s
            plan.seconds["worker process start"] = worker_start_s * min(fan_out.slots, sum(t.worker for t in plan.tasks))
            if groups:
                plan.seconds["Ray tasks' own"] = _add_task_overhead(members, groups, fan_out, plan.measured)
    return plan


def _duration(seconds: float) -> str:
    """Seconds as a plan line says them: in us below a millisecond, in ms below a second, else in s (not
    "8.68e+03 ms", nor "0.000474 ms")."""
    if seconds < 1e-3:
        return f"{seconds * 1e6:.3g} us"
    return f"{seconds * 1e3:.3g} ms" if seconds < 1 else f"{seconds:.3g} s"


def _add_task_overhead(members: dict, groups: dict, fan_out: FanOut, measured: dict) -> float:
    """What a Ray task costs beyond its configurations' estimate and its skipped rows' (its reading of the run
    folder, its worker's fresh caches, its compaction; the other tasks beside it and Ray's own processes): the
    estimated cheapest task run on the Ray as its tasks run, a copy on every slot at once (``fan_out.time_task``;
    without its reference metrics, whose solves are tasks of their own), its overshoot spread over its configurations
    and added to every task in proportion to its own; the seconds added. The cheapest task that runs a configuration
    (not one of skipped rows alone, whose estimate is the rows') and whose estimate is not an upper bound: an
    adaptive solver's NFE is counted as its reference solve's, above what it takes, so a task of one (6
    configurations of ring2d / step_doubling_euler, estimated 1.16 s, ran 0.65 s) would measure nothing beyond.
    ``members``: each task's configurations, ``groups`` their estimates (Task), by bench.run.distributed.group_key."""
    running = [key for key in groups if any(cfg.skip_reason is None for cfg in members[key])]  # not rows alone
    exact = [key for key in running if not any(get_solver(cfg.solver).adaptive for cfg in members[key])] or running
    probe = min(exact, key=lambda key: groups[key].fixed_s + groups[key].scaled_s)
    ran_s = fan_out.time_task([dataclasses.replace(cfg, metrics=tuple(m for m in cfg.metrics
                                                                      if m not in REFERENCE_METRICS))
                               for cfg in members[probe]])
    _release_device_memory()
    estimated_s, count = groups[probe].fixed_s + groups[probe].scaled_s, len(members[probe])
    per_config = max(0.0, ran_s - estimated_s) / count
    for key, task in groups.items():
        task.fixed_s += per_config * len(members[key])
    measured["Ray task"] = (f"a Ray task: {count} configuration{'s' * (count != 1)} of {probe[0]} / {probe[-1]}, "
                            f"{fan_out.slots} at once, ran in {ran_s:.3g} s against {estimated_s:.3g} s estimated: "
                            f"{per_config * 1e3:.3g} ms more per configuration in every task")
    return per_config * sum(len(members[key]) for key in groups)


def _release_device_memory() -> None:
    """Hand what this process's CUDA allocator caches back to the device: the models the plan built are gone, and a
    worker process (another CUDA context) cannot use what this one keeps."""
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


FIXED = ("harness per configuration", "rows of skipped configurations", "model set-up",
         "worker process start")  # the estimate's parts taken as fixed whatever N


def _fixed_and_scaled(plan: Plan) -> tuple[float, float]:
    """The plan's estimate split into what is taken as fixed whatever N (``FIXED``: the harness's per-configuration
    seconds, the skipped configurations' rows, the models' set-up, the worker's start) and the rest, which scales
    with N: the model behind samples_to_fit and estimate_at."""
    fixed = sum(plan.seconds.get(what, 0.0) for what in FIXED)
    return fixed, plan.total_s - fixed


def estimate_ray(plan: Plan, n_samples: int, n: int) -> float:
    """The estimated seconds of the planned grid on its Ray (``plan.fan_out``), planned at ``n_samples`` and run with
    ``n`` samples: Ray's start, then the tasks side by side (``makespan``)."""
    return plan.fan_out.start_s + makespan(plan.tasks, plan.fan_out.slots, n / n_samples, plan.slot_start_s)


def estimate_at(plan: Plan, n_samples: int, n: int) -> float:
    """The estimated seconds of the planned grid (planned at ``n_samples``) run with ``n`` samples instead."""
    if plan.fan_out is not None:
        return estimate_ray(plan, n_samples, n)
    fixed, scaled = _fixed_and_scaled(plan)
    return fixed + scaled * n / n_samples


def samples_to_fit(plan: Plan, n_samples: int, seconds: float, fewest: int = 2) -> int:
    """The largest sample count whose estimate (``estimate_at``) fits ``seconds``: every estimated cost scales with N
    except the ``FIXED`` ones (the harness's per-configuration seconds, the skipped configurations' rows, the models'
    set-up, the worker's start; on Ray, Ray's start too); ``n_samples`` itself when the plan already fits. Raises
    ValueError when no N >= ``fewest`` (what the spec's metrics need, bench.metrics.fewest_samples) fits."""
    if plan.total_s <= seconds:
        return n_samples
    least = max(fewest, 2)
    if estimate_at(plan, n_samples, least) > seconds:
        fixed = estimate_at(plan, n_samples, 0)
        raise ValueError(f"no sample count fits {seconds / 60:.3g} min: at N = {n_samples} the grid is estimated at "
                         f"{plan.total_s / 60:.3g} min, {fixed / 60:.3g} min of it fixed whatever N (the harness's own "
                         f"per configuration, the skipped configurations' rows, the models' set-up, the worker's start"
                         + (", Ray's start" if plan.fan_out else "") + f"), and its metrics need N >= {least}; run "
                         "fewer configurations (solvers, steps, spacings, exec modes)")
    fits, too_many = least, n_samples  # the estimate grows with N: bisect
    while too_many - fits > 1:
        middle = (fits + too_many) // 2
        fits, too_many = (middle, too_many) if estimate_at(plan, n_samples, middle) <= seconds else (fits, middle)
    return fits


class SweepPath:
    """Runs the calibration's configurations as the sweep runs its own: in a worker process (bench.run.worker, one,
    started once and its start timed: ``worker_start_s``) where a configuration's time_limit_s is above 0, else in
    this process; from a cache of their own, so that a model's set-up (building or loading it, x_T, the metrics'
    reference sets) is paid as the sweep's first configuration of the model pays it; each row written to a scratch
    run folder (store.write_row), as the sweep writes each. A context manager: the worker stopped, the folder
    removed after."""

    def __init__(self, execution_policy: ExecutionPolicy, worker: bool):
        self.folder = Path(tempfile.mkdtemp(prefix="bench-plan-"))
        (self.folder / "rows").mkdir()
        self.cache = SweepCache()
        self.worker = ConfigWorker(execution_policy) if worker else None
        self.worker_start_s = 0.0

    def __enter__(self) -> "SweepPath":
        if self.worker is not None:
            self.worker_start_s = self.worker.start()
        return self

    def __exit__(self, *exc) -> None:
        if self.worker is not None:
            self.worker.stop()
        self.cache = None  # its models
        shutil.rmtree(self.folder, ignore_errors=True)

    def timed(self, cfg: RunConfig) -> tuple[float, dict]:
        """(seconds, row) of one configuration, its row written; a configuration the worker did not finish (stopped
        at its limit, or dead) gives a row of that status, and the worker is started again untimed."""
        started = time.perf_counter()
        if self.worker is not None and cfg.time_limit_s:
            outcome, row = self.worker.run(("config", cfg, {"device": cfg.device}, "plan"), cfg.time_limit_s)
            if outcome != "row":
                elapsed = time.perf_counter() - started
                self.worker.start()
                return elapsed, {"status": outcome}
        else:
            row = run_config(cfg, self.cache, {"device": cfg.device}, "plan")
        store.write_row(self.folder, row)
        return time.perf_counter() - started, row

    def skipped_row_s(self, skipped: list[RunConfig]) -> float:
        """The mean seconds of a row of the ``skipped`` configurations, made and written as the sweep does (0 for
        none): 1,908 rows of the default grid, 4.3 ms each on the 2-core CPU, which no configuration's time holds."""
        started = time.perf_counter()
        for cfg in skipped:
            store.write_row(self.folder, run_config(cfg, self.cache, {"device": cfg.device}, "plan"))
        return (time.perf_counter() - started) / max(len(skipped), 1)


def _calibrate(group: list[RunConfig], path: SweepPath, measured: dict) -> dict:
    """A model's solve seconds per image-forward, harness seconds per configuration and set-up seconds
    (``solve_forward_s``, ``harness_s``, ``setup_s``): y = a + b x fitted by least squares to configurations of
    ``group`` run in full along the sweep's ``path``, the cheapest first, then others drawn with a fixed seed, up to
    CALIBRATION_CONFIGS while their time stays within CALIBRATION_BUDGET_S; x is a configuration's image-forwards
    (its solve times its timings), y its seconds less its warm-up (compilation included), CUDA-graph capture and
    Inception pass. The cheapest runs twice: the model's set-up (building it, x_T, the metrics' reference sets), which
    the first run pays as the sweep's first configuration of the model does, is the first less the second; left in
    the harness, it would be counted once per configuration (30 x 5.8 s for bench/configs/images.toml). The metrics
    that solve again (reference, partner) are left out: their solves are counted as forwards. b is at least the bare
    forward (a solve runs the network; compile and cuda_graph forwards count at eager speed), a at least 0; one
    configuration, or no spread in x, gives the bare forward."""
    solving_again = metrics.needing("reference") | metrics.needing("partner")
    ordered = sorted(group, key=_calibration_order)
    picks = [ordered[0]] + random.Random(0).sample(ordered[1:], min(len(ordered) - 1, CALIBRATION_CONFIGS - 1))
    picks = [dataclasses.replace(cfg, metrics=tuple(m for m in cfg.metrics if m not in solving_again)) for cfg in picks]
    first_s, first_row = path.timed(picks[0])
    points, spent, setup = [], first_s, 0.0
    for index, cfg in enumerate(picks):
        if index and spent > CALIBRATION_BUDGET_S:
            break
        elapsed, row = path.timed(cfg)
        spent += elapsed
        if row["status"] != "ok":
            continue
        images = metrics.needing("inception") & set(cfg.metrics) and measured.get("image_side")
        inception = cfg.n_samples * measured.get("inception_image_s", 0.0) if images else 0.0
        forwards = row["nfe"] * passes_per_evaluation(cfg) * cfg.n_samples * row["timing_repeats"]
        points.append((forwards, elapsed - _one_off(row) - inception))
        if index == 0 and first_row["status"] == "ok":
            setup = max(0.0, first_s - _one_off(first_row) - (elapsed - _one_off(row)))
    bare = measured["image_forward_s"]
    harness, rate = _fit_line(points, bare)
    return {"solve_forward_s": rate, "harness_s": harness, "setup_s": setup,
            "calibrated_on": f"{len(points)} configuration{'s' * (len(points) != 1)} run in full"}


def _one_off(row: dict) -> float:
    """A row's seconds that the estimate names as left out, not fitted: its warm-up and capture."""
    return (row.get("warmup_s") or 0.0) + (row.get("capture_s") or 0.0)


def _fit_line(points: list[tuple[float, float]], least_slope: float) -> tuple[float, float]:
    """(intercept, slope) of y = a + b x by least squares over ``points`` with a >= 0 and b >= ``least_slope`` (a
    bound is held where the free fit crosses it); with fewer than two distinct x, b = ``least_slope``."""
    if not points:
        return 0.0, least_slope
    xs, ys = zip(*points)
    mean_x, mean_y = sum(xs) / len(xs), sum(ys) / len(ys)
    spread = sum((x - mean_x) ** 2 for x in xs)
    slope = sum((x - mean_x) * (y - mean_y) for x, y in points) / spread if spread else least_slope
    if slope < least_slope:
        return max(0.0, mean_y - least_slope * mean_x), least_slope
    if mean_y - slope * mean_x < 0:
        return 0.0, max(least_slope, sum(x * y for x, y in points) / sum(x * x for x in xs))
    return mean_y - slope * mean_x, slope
