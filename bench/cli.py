"""Command line: python -m bench run | report | compare | conformance | train | list | docs | ..."""
from __future__ import annotations

import argparse
import contextlib
import json
import re
import shlex
import sys
import time
from pathlib import Path

DEFAULT_RESULTS = Path("results/scratch")


def _parse_shard(text: str) -> tuple[int, int]:
    try:
        index, count = (int(part) for part in text.split("/"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--shard takes i/n with integers, got {text!r}") from None
    if not 0 <= index < count:
        raise argparse.ArgumentTypeError(f"--shard i/n needs 0 <= i < n, got {text!r}")
    return index, count


def cmd_run(args) -> int:
    import dataclasses

    started = time.monotonic()  # --max-minutes: the command's time counts, its Ray's start for the plan included
    spec = _load_spec(args.spec)
    if spec is None:
        return 2
    problem = _run_options_problem(args) or _device_problem(spec, args, "run")
    if problem:
        print(problem, file=sys.stderr)
        return 2
    execution_policy = _sweep_policy(spec, args)
    if args.max_minutes is None:
        return _sweep(spec, args, execution_policy)
    from bench.spec import config

    flag = f"--max-minutes {args.max_minutes:g}"
    with _grid_ray(config.expand(spec, device=args.device), args, execution_policy, flag) as fan_out:
        if fan_out is NO_RAY:
            return 2
        # With --backend ray the sweep runs on the Ray the plans ran on: its start is paid, counted since `started`.
        sweep_ray = fan_out and dataclasses.replace(fan_out, start_s=0.0)
        spec = _cut_to_fit(spec, args.device, args.max_minutes, execution_policy, sweep_ray, started)
        if spec is None:
            return 2
        return _sweep(spec, args, execution_policy, ray_running=fan_out is not None)


def _sweep(spec, args, execution_policy, ray_running: bool = False) -> int:
    """run's sweep of ``spec`` into its run folder, serial or on Ray (``ray_running``: on the Ray this process is
    connected to, left up); its exit status."""
    from bench.spec import config
    from bench.run import store, sweep

    configs = config.expand(spec, device=args.device)
    if args.shard:
        configs = config.shard(configs, *args.shard)
    run_dir = Path(args.resume or args.out or store.new_run_dir(DEFAULT_RESULTS, spec.name))
    if args.resume and not (run_dir / "run.json").exists():
        print(f"--resume {run_dir}: not a run folder (no run.json)", file=sys.stderr)
        return 2
    try:
        meta = store.open_run(run_dir, spec)
    except ValueError as err:
        print(err, file=sys.stderr)
        return 2
    commit, _ = store.git_state()
    if meta.get("git_commit") not in (None, commit):
        print(f"warning: {run_dir} was started at commit {meta['git_commit'][:10]}, this checkout is at {commit[:10]}: "
              "its rows will mix commits (the report says so)", file=sys.stderr)
    retry = store.RETRYABLE if args.retry_failed else ()
    runnable = sum(1 for c in configs if c.skip_reason is None)
    print(f"{spec.name}: {len(configs)} configs ({runnable} runnable), N = {spec.values['n_samples']} samples each "
          f"in batches of {spec.values['batch_size']} -> {run_dir}", file=sys.stderr)
    if args.backend == "ray":
        from bench.run.distributed import run_sweep_on_ray

        try:
            counts = run_sweep_on_ray(configs, run_dir, meta["run_id"], address=args.address, workers=args.workers,
                                      progress=args.progress, retry=retry, execution_policy=execution_policy,
                                      ray_running=ray_running)
        except ValueError as err:  # no node of the Ray can run a task: said before any ran
            print(err, file=sys.stderr)
            return 2
    else:
        counts = sweep.run_sweep(configs, run_dir, meta["run_id"], progress=args.progress, retry=retry,
                                  execution_policy=execution_policy)
    table = store.load_rows(run_dir)
    summary = ", ".join(f"{k} {v}" for k, v in sorted(counts.items()))
    print(f"{len(configs)} configs ({summary}); {len(table)} rows in {run_dir / 'rows'}")
    print(f"load it with: bench.run.store.load_rows('{run_dir}')  (one row per config, the latest)")
    if any(counts.get(status) for status in store.RETRYABLE):
        longer = " (a timeout: raise time_limit_s in the spec first)" if counts.get("timeout") else ""
        print(f"run again what did not finish{longer}: python -m bench run {spec.path} --out {run_dir} --retry-failed")
    return 1 if counts.get("lost") else 0


FIT_PLANS = 3  # --max-minutes measures the plan at most this often: at the spec's N, then at each cut N
GROWTH_WORTH_A_PLAN = 1.1  # a cut N that fits is planned larger again only for this many times its samples or more


def _sweep_policy(spec, args):
    """The execution policy the sweep's configurations run under: the spec's, --threads over its threads; a Ray
    task's (one thread unless set) with --backend ray."""
    from bench.run.policy import ExecutionPolicy

    execution_policy = ExecutionPolicy.from_spec(spec.values, threads=args.threads)
    if args.backend == "ray":
        from bench.run.distributed import task_policy

        return task_policy(execution_policy)
    return execution_policy


NO_RAY = object()  # _grid_ray's answer where the Ray can run no task of the grid (after saying why)


@contextlib.contextmanager
def _grid_ray(configs, args, execution_policy, command: str):
    """With --backend ray, the Ray the grid will run on, up for the block (bench.run.distributed's ray_fan_out: its
    FanOut, for the grid's plans, and for run's sweep after them), or NO_RAY after one line saying why that Ray can
    run no task of the grid; None without."""
    if args.backend != "ray":
        yield None
        return
    from bench.run.distributed import ray_fan_out

    with contextlib.ExitStack() as stack:
        try:
            fan_out = stack.enter_context(ray_fan_out(configs, args.address, args.workers, execution_policy))
        except ValueError as err:
            print(f"{command}: {err}", file=sys.stderr)
            fan_out = NO_RAY
        yield fan_out


def _cut_to_fit(spec, device, minutes: float, execution_policy, fan_out, started: float):
    """--max-minutes: the spec with n_samples (and batch_size, if larger) cut so the plan's estimate (on Ray:
    ``fan_out``) fits ``minutes``, or the spec as it is when it fits; None after printing why nothing fits. A cut N is
    planned again, measured at that N: the harness's own work per configuration, which the first cut takes as fixed,
    is not (pre-drawn noise and the metrics' arithmetic grow with N; FID's jackknife is exact below 8,192 samples and
    expanded above). The next N comes from the plans measured so far: interpolated between the largest N that fits
    and the nearest above it that does not (the time is close to affine in N), leaving room for one more plan, where
    that is GROWTH_WORTH_A_PLAN times its N or more (standard errors 5% smaller); with none that fits, cut from the
    smallest's estimate (bench.run.plan.samples_to_fit). Up to FIT_PLANS plans; then the largest measured N that fits
    runs, or, with none, the last cut on its extrapolated estimate. The time since the command ``started``
    (time.monotonic()) counts against the budget, the plans' and their Ray's start included (the sweep runs on that
    Ray: ``fan_out``'s start_s is 0)."""
    from bench.metrics import fewest_samples
    from bench.run.plan import estimate_at, samples_to_fit
    from bench.spec import config

    flag, trial, first, plans = f"--max-minutes {minutes:g}", spec, None, {}  # plans: N -> its plan, measured there
    for count in range(1, FIT_PLANS + 1):
        plan_started = time.monotonic()
        plan = _plan_or_none(config.expand(trial, device=device), flag, execution_policy=execution_policy,
                             fan_out=fan_out)
        if plan is None:
            return None
        n, planning = trial.values["n_samples"], time.monotonic() - started
        if planning >= 60 * minutes:
            print(f"{flag}: planning took {planning:.0f} s, the whole budget: nothing left to run", file=sys.stderr)
            return None
        plans[n], left = plan, 60 * minutes - planning
        first = first or f"{flag}: estimated {plan.total_s / 60:.1f} min at N = {n}"
        if trial is spec and plan.total_s <= left:
            print(f"{first}: fits", file=sys.stderr)
            break
        fits = max((m for m in plans if plans[m].total_s <= left), default=None)
        if fits is None:  # cut from the smallest N measured
            smallest = min(plans)
            try:
                cut = samples_to_fit(plans[smallest], smallest, left, fewest_samples(spec.values["metrics"])[0])
            except ValueError as err:
                print(f"{flag}: {err}" + (f" ({planning:.0f} s of the budget spent planning)" if planning >= 1 else ""),
                      file=sys.stderr)
                return None
            estimate = estimate_at(plans[smallest], smallest, cut)
            source = f"extrapolated from the plan at N = {smallest}"
        else:  # between it and the nearest N above that does not fit, with room for one more plan like this one
            above = min((m for m in plans if m > fits), default=None)
            cut, estimate = (fits, None) if above is None else _between(
                fits, plans[fits].total_s, above, plans[above].total_s, left - (time.monotonic() - plan_started))
            source = f"interpolated between the plans at N = {fits} and {above}"
        if fits is not None and (cut < GROWTH_WORTH_A_PLAN * fits or count == FIT_PLANS):
            trial = _with_samples(spec, fits)
            print(f"{first}; running N = {fits} (estimated {plans[fits].total_s / 60:.1f} min, measured at that N; "
                  f"{SMALLER_N})", file=sys.stderr)
            break
        trial = _with_samples(spec, cut)
        if count == FIT_PLANS:
            print(f"{first}; running N = {cut} (estimated {estimate / 60:.1f} min, {source}; {SMALLER_N})",
                  file=sys.stderr)
            break
        print(f"{flag}: estimated {plan.total_s / 60:.1f} min at N = {n}; measuring the plan again at N = {cut} "
              f"({source}: {estimate / 60:.1f} min)", file=sys.stderr)
    print(f"{flag}: {planning:.0f} s spent planning, {(60 * minutes - planning) / 60:.1f} min left", file=sys.stderr)
    return trial


def _between(fits: int, fits_s: float, above: int, above_s: float, seconds: float) -> tuple[int, float]:
    """The largest N whose time, affine in N through (``fits``, ``fits_s``) and (``above``, ``above_s``), is within
    ``seconds``, between ``fits`` and ``above`` (``fits`` where the two do not grow with N); and that time."""
    if above_s <= fits_s:
        return fits, fits_s
    per_sample = (above_s - fits_s) / (above - fits)
    n = min(above - 1, max(fits, fits + int((seconds - fits_s) / per_sample)))
    return n, fits_s + (n - fits) * per_sample


SMALLER_N = "FID and the other sample statistics are noisier and FID is biased upwards at smaller N"


def _with_samples(spec, n: int):
    """``spec`` with n_samples = n (batch_size at most n) and a hash of its own."""
    import dataclasses
    import hashlib

    values = {**spec.values, "n_samples": n, "batch_size": min(spec.values["batch_size"], n)}
    return dataclasses.replace(spec, values=values, hash=hashlib.sha1(f"{spec.hash}:n_samples={n}".encode()).hexdigest()[:12])


def _load_spec(path):
    """The validated spec, or None after printing its problems (one line each) to stderr."""
    from bench.spec import config

    try:
        return config.load_spec(path)
    except config.SpecError as err:
        print(err, file=sys.stderr)
        return None


def _threads_problem(threads: int | None) -> str | None:
    return f"--threads must be at least 1, got {threads}" if threads is not None and threads < 1 else None


def _run_options_problem(args) -> str | None:
    """What is wrong with --threads, --max-minutes, --backend, --address and --workers together, before anything is
    computed."""
    if problem := _threads_problem(args.threads):
        return problem
    if args.max_minutes is not None and not args.max_minutes > 0:
        return f"--max-minutes must be a number of minutes > 0, got {args.max_minutes:g}"
    if args.max_minutes is not None and args.resume:
        return "--max-minutes sets the sample count of a new run; a resumed run keeps its own (drop one of them)"
    if args.max_minutes is not None and args.shard:
        return ("--max-minutes measures the sample count on each machine, so shards could each pick another N and "
                "run different configurations; cut n_samples in the spec for a sharded run")
    return _backend_problem(args)


def _device_problem(spec, args, command: str) -> str | None:
    """The grid's device (the spec's, or --device) where this machine would run the grid and lacks it: every
    configuration would fail. A Ray cluster joined with --address runs it on its own nodes."""
    from bench.run.runner import resolve_device

    if args.backend == "ray" and args.address is not None:
        return None
    try:
        resolve_device(args.device or spec.values["device"])
    except RuntimeError as err:
        return f"{command}: {err}: every configuration would fail (--device cpu runs the grid on this machine's CPU)"
    return None


def _backend_problem(args) -> str | None:
    """What is wrong with --backend, --address and --workers together (run's and plan's), before anything is
    computed."""
    if args.backend != "ray":
        given = [flag for flag, value in (("--address", args.address), ("--workers", args.workers)) if value is not None]
        return f"{' and '.join(given)} only apply to --backend ray" if given else None
    if args.address is not None and args.workers is not None:
        return "--workers sizes a local Ray; a cluster joined with --address has its own workers"
    if args.workers is not None and args.workers < 1:
        return f"--workers must be at least 1, got {args.workers}"
    try:
        import ray  # noqa: F401
    except ImportError:
        return "--backend ray needs Ray: make setup-ray (or pip install -e '.[ray]')"
    return None


def cmd_report(args) -> int:
    from bench.analysis.report import build_report

    for run in args.runs:
        if not (Path(run) / "run.json").exists():
            print(f"{run}: not a run folder (no run.json)", file=sys.stderr)
            return 2
    try:
        md_path, html_path = build_report(args.runs, Path(args.out) if args.out else None, budget=args.budget,
                                          facets=tuple(args.facet or ["eta"]))
    except ValueError as err:  # no rows yet
        print(f"report: {err}", file=sys.stderr)
        return 2
    print(f"report: {md_path} and {html_path}")
    return 0


def cmd_compare(args) -> int:
    from bench.analysis.compare import build_comparison, regressed, resolve_run, terminal_summary

    try:
        head = resolve_run(args.head, Path(args.results)) if args.head else _latest_run(Path(args.results))
        base = resolve_run(args.base, Path(args.results), like=head)  # a commit's run of head's spec
    except ValueError as err:
        print(err, file=sys.stderr)
        return 2
    out = Path(args.out) if args.out else DEFAULT_RESULTS / f"compare-{base.name}-vs-{head.name}"
    (md_path, html_path), result = build_comparison(base, head, out, time_ratio=args.time_ratio)
    shifted = int((result["shifts"].verdict == "regression").sum())
    print(f"{result['matched']} configs compared ({'paired' if result['paired'] else 'unpaired'} seeds): "
          f"{len(result['regressions'])} regressions, {len(result['improvements'])} improvements, {shifted} systematic "
          f"regressions per model; {md_path} and {html_path}")
    summary = terminal_summary(result)
    if summary:
        print(summary)
    if not result["matched"]:  # "0 regressions" of nothing compared must not pass a gate
        print(f"compare: no configuration of {head} is one of {base} ({len(result['added'])} only in head, "
              f"{len(result['removed'])} only in base): nothing was judged; {result['unmatched']}", file=sys.stderr)
        return 2
    return 1 if args.fail_on_regression and regressed(result) else 0


def _latest_run(root: Path) -> Path:
    runs = sorted(root.rglob("run.json"), key=lambda p: p.stat().st_mtime)
    if not runs:
        raise ValueError(f"no run under {root}/ to compare against; give HEAD explicitly")
    return runs[-1].parent


def cmd_train(args) -> int:
    from bench.models.data import FASHION_CLASSES, fashion_mnist, fashion_mnist_labels
    from bench.models.train import train

    try:
        data = fashion_mnist("train", data_dir=args.data_dir, size=args.size)
        labels = fashion_mnist_labels("train", data_dir=args.data_dir) if args.class_conditional else None
    except FileNotFoundError as err:
        print(err, file=sys.stderr)
        return 2
    started = time.perf_counter()
    train(data, Path(args.out), steps=args.steps, batch_size=args.batch_size, lr=args.lr, prediction=args.prediction,
          checkpoint_every=args.checkpoint_every, device=args.device, widths=tuple(args.widths),
          ema_decay=args.ema_decay, seed=args.seed, labels=labels, class_names=FASHION_CLASSES,
          label_dropout=args.label_dropout)
    from bench.run import store
    from bench.analysis.plots import plot_training_loss
    from bench.models.train import write_record

    plot_training_loss(Path(args.out) / "losses.csv", Path(args.out) / "loss.png")
    commit, dirty = store.git_state()
    write_record(Path(args.out), "python -m bench " + shlex.join(args.argv),
                 commit + ("-dirty" if dirty else ""), time.perf_counter() - started)
    print(f"trained UNet in {args.out}; benchmark it with models = [\"diffusers:{args.out}\"]")
    return 0


def cmd_fid_reference(args) -> int:
    """Compute a shipped FID reference (mean, covariance, subset features) once; see bench.metrics.fid."""
    import torch

    from bench.metrics import fid
    from bench.run import store
    from bench.models.data import fashion_mnist

    torch.set_num_threads(args.threads)
    try:
        images = fashion_mnist("test", data_dir=args.data_dir, size=fid.NATIVE_SIZE)
        extractor = fid.InceptionFeatures(args.fid_weights)
    except FileNotFoundError as err:
        print(err, file=sys.stderr)
        return 2
    commit, dirty = store.git_state()
    command = "python -m bench fid-reference " + args.name + (f" --threads {args.threads}" if args.threads != 2 else "")
    manifest = fid.write_shipped_reference(args.name, images, extractor, command, commit + ("-dirty" if dirty else ""),
                                           Path(args.out) if args.out else fid.REFERENCES_DIR)
    print(f"{args.name}: {manifest['count']} images, sha256 {manifest['sha256']}")
    return 0


def cmd_compact(args) -> int:
    from bench.run import store

    for run in args.runs:
        run_dir = Path(run)
        if not (run_dir / "run.json").is_file():
            print(f"{run_dir}: not a run folder (no run.json)", file=sys.stderr)
            return 2
        before = len([p for p in (run_dir / "rows").glob("*.parquet") if not p.name.startswith(".")])
        part = store.compact(run_dir)
        print(f"{run_dir}: {before} row files" + (f", loose ones merged into {part.name}" if part else ", none loose"))
    return 0


def cmd_conformance(args) -> int:
    from bench.conformance import report as conformance

    table = conformance.run_comparisons()
    path = conformance.write_report(Path(args.out), table)
    failed = table[~table.ok]
    print(f"{len(table)} comparisons: {int((table.verdict == 'agrees').sum())} agree, "
          f"{int((table.verdict == 'differs by design').sum())} differ by design, "
          f"{int((table.verdict == conformance.PEER_ERROR).sum())} differ by the peer's error, "
          f"{int(table.verdict.str.startswith('not run').sum())} not run (peer missing), {len(failed)} failed; {path}")
    for row in failed.itertuples():
        print(f"FAILED {row.ours} vs {row.library} {row.peer}: {row.verdict} "
              f"(max relative difference {row.max_relative_difference:.2e}, tolerance {row.tolerance:g})", file=sys.stderr)
    return 1 if len(failed) else 0


def cmd_plan(args) -> int:
    """What a spec will compute and about how long it takes here, before anything runs (bench.run.plan)."""
    from bench.spec import config

    if problem := _threads_problem(args.threads) or _backend_problem(args):
        print(problem, file=sys.stderr)
        return 2
    spec = _load_spec(args.spec)
    if spec is None:
        return 2
    if not args.no_measure and (problem := _device_problem(spec, args, "plan")):
        print(problem, file=sys.stderr)
        return 2
    configs = config.expand(spec, device=args.device)
    print(f"{spec.name}: N = {spec.values['n_samples']} samples per configuration, batch {spec.values['batch_size']}")
    execution_policy = _sweep_policy(spec, args)
    planning = contextlib.nullcontext() if args.no_measure else _grid_ray(configs, args, execution_policy, "plan")
    with planning as fan_out:
        if fan_out is NO_RAY:
            return 2
        plan = _plan_or_none(configs, "plan", measure=not args.no_measure, execution_policy=execution_policy,
                             fan_out=fan_out)
    if plan is None:
        return 2
    for line in plan.lines():
        print(line)
    return 0


def _plan_or_none(configs, command: str, measure: bool = True, execution_policy=None, fan_out=None):
    """The grid's plan, measured under the sweep's ``execution_policy`` (on Ray: ``fan_out``), or None after one line
    saying why it cannot be measured here (a model folder that is not there, a device this machine lacks)."""
    from bench.run.plan import make_plan

    try:
        return make_plan(configs, measure=measure, execution_policy=execution_policy, fan_out=fan_out,
                         say=lambda line: print(f"{command}: {line}", file=sys.stderr, flush=True))
    except (OSError, ValueError, RuntimeError) as err:
        print(f"{command}: cannot measure the grid here: {err} (python -m bench plan --no-measure counts it without "
              "building the models)", file=sys.stderr)
        return None


def cmd_fit_schedule(args) -> int:
    """Fit time grids to a model (bench.fit): check everything, print the sizes, fit, write one file per grid."""
    from bench.fit import FitRequest, Fitter, check, step_counts
    from bench.run.policy import ExecutionPolicy
    from bench.spec.fitted import DEFAULT_DIR

    out = Path(args.out) if args.out else DEFAULT_DIR
    request = FitRequest(model=args.model, solvers=args.solvers, steps=args.steps or [], nfe=args.nfe or [],
                         seeds=args.seeds, n_samples=args.n_samples, candidates=args.candidates,
                         teacher_tolerance=args.teacher_tolerance, refine_rounds=args.refine_rounds,
                         schedule=args.schedule, guidance_scale=args.guidance_scale, device=args.device,
                         dtype=args.dtype, threads=args.threads, **({"formulas": tuple(args.formulas)} if args.formulas
                                                                    else {}))
    problems = check(request)
    if problems:
        print("\n".join(problems), file=sys.stderr)
        return 2
    ExecutionPolicy(threads=args.threads).apply()
    plan = ", ".join(f"{s} at {step_counts(request, s)} steps" for s in request.solvers)
    print(f"fit-schedule {request.model}: {plan}; training seeds {request.seeds} x {request.n_samples} samples, "
          f"{request.candidates + 1} candidate times, {request.refine_rounds} refinement rounds, compared with "
          f"{', '.join(request.formulas)} -> {out}", file=sys.stderr)
    fitter = Fitter(request, log=lambda line: print(line, file=sys.stderr))
    started = time.perf_counter()
    for solver in request.solvers:
        for fitted in fitter.fit(solver):
            print(fitter.write(fitted, out))
    print(f"fit-schedule: {time.perf_counter() - started:.1f} s", file=sys.stderr)
    return 0


def cmd_check_solver(args) -> int:
    """A solver's grid on the analytic mixtures (bench.check) and its verdicts; exit 1 where one fails."""
    from bench.check import check_solver
    from bench.check.solver import check_spec
    from bench.run import store
    from bench.run.policy import ExecutionPolicy

    try:
        options = json.loads(args.options) if args.options else {}
        if not isinstance(options, dict):
            raise ValueError(f"check-solver: --options must be a JSON object of option: value, got {args.options!r}")
        raw = check_spec(args.solver, args.schedule, args.spacing, args.steps, args.n_samples, options,
                         args.guidance_scale)
    except json.JSONDecodeError as err:
        print(f"check-solver: --options is not JSON ({err}): {args.options!r}", file=sys.stderr)
        return 2
    except ValueError as err:
        print(err, file=sys.stderr)
        return 2
    run_dir = Path(args.out) if args.out else store.new_run_dir(DEFAULT_RESULTS, "check-" + re.sub(
        r"[^A-Za-z0-9_.-]+", "_", args.solver))
    ExecutionPolicy(threads=args.threads).apply()
    guided = f" guided at {args.guidance_scale:g}" if args.guidance_scale is not None else ""
    print(f"check-solver {args.solver} on {', '.join(raw['models'])}{guided} ({args.schedule}, {args.spacing} "
          f"spacing, steps {', '.join(map(str, args.steps))}, eta {', '.join(f'{e:g}' for e in raw['etas'])}, "
          f"{args.n_samples} samples) -> {run_dir}", file=sys.stderr)
    try:
        checks, _ = check_solver(raw, run_dir)
    except ValueError as err:  # the spec's own checks (a schedule, a spacing, an option) or a run folder refused
        print(err, file=sys.stderr)
        return 2
    print("\n".join(check.line() for check in checks))
    checked = [check for check in checks if check.passed is not None]
    passed, unchecked = sum(check.passed for check in checked), len(checks) - len(checked)
    print(f"{passed} of {len(checked)} checks passed" + (f" ({unchecked} not checked)" if unchecked else "")
          + f"; the rows: {run_dir} (python -m bench report {run_dir})")
    return 0 if passed == len(checked) else 1


def cmd_list(args) -> int:
    from bench.metrics import named_in_spec
    from bench.models import MODELS
    from solvers.__main__ import registry_table
    from solvers.schedules import SCHEDULES
    from solvers.spacing import SPACINGS

    print("Solvers:\n" + registry_table())
    print("  and your own: python:module:attribute, a solvers.Solver in your module (docs/guide.md, \"Your own "
          "solver\")")
    print("\nSpacings: " + ", ".join(SPACINGS))
    print("Schedules: " + ", ".join(SCHEDULES))
    print("Models: " + ", ".join(MODELS))
    print("Metrics:\n" + "\n".join(f"  {name}: {metric.description}" for name, metric in named_in_spec().items()))
    return 0


def cmd_docs(args) -> int:
    from bench import docs

    for path in docs.write(Path(args.out)):
        print(f"wrote {path}")
    return 0


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def _add_backend_arguments(parser) -> None:
    parser.add_argument("--backend", choices=["serial", "ray"], default="serial",
                        help="serial (this process) or ray: one Ray task per config group (model, seed, device, solver)")
    parser.add_argument("--address", help="--backend ray: a running Ray cluster to join (default: start a local Ray)")
    parser.add_argument("--workers", type=int, help="--backend ray without --address: CPUs of the local Ray "
                        "(default: all)")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description="Benchmark diffusion samplers.")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="sweep a grid spec into a run folder of parquet rows")
    run.add_argument("spec", help="grid spec (TOML), e.g. bench/configs/default.toml")
    where = run.add_mutually_exclusive_group()
    where.add_argument("--out", help="run folder (default: results/scratch/<time>-<commit>-<spec>); resumes if it exists")
    where.add_argument("--resume", metavar="RUN", help="an existing run folder to complete")
    run.add_argument("--shard", type=_parse_shard, metavar="i/n", help="run only shard i of n (0-based)")
    run.add_argument("--device", help="override the spec's device (cpu, cuda, cuda:1, auto)")
    run.add_argument("--max-minutes", type=float, metavar="M", help="plan the grid here first and, if its estimate "
                     "exceeds what is left of M minutes (the whole command's, its plans included), run it with "
                     "n_samples cut to fit, planned again at the cut (printed; the rows record it)")
    run.add_argument("--retry-failed", action="store_true",
                     help="also run again the configs whose rows are failed, diverged, timeout or oom")
    _add_backend_arguments(run)
    run.add_argument("--threads", type=int, help="torch threads in every process of the sweep, over the spec's "
                     "'threads' (default: torch's, one per core; a Ray task: 1, and as many CPUs reserved)")
    run.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                     help="progress bar (default: only on a terminal)")
    run.set_defaults(func=cmd_run)
    report = sub.add_parser("report", help="plots + report.md + report.html for one or more run folders")
    report.add_argument("runs", nargs="+", help="run folders")
    report.add_argument("--out", help="where to write (default: the first run folder)")
    report.add_argument("--budget", type=float, default=20, help="NFE budget of the heatmaps and precision/recall plot")
    report.add_argument("--facet", action="append", choices=["eta", "spacing", "seed", "schedule", "exec_mode"], default=None,
                        help="split a frontier plot by this column (repeatable; default: eta)")
    report.set_defaults(func=cmd_report)
    compare = sub.add_parser("compare", help="what changed between two runs (folders or commits)")
    compare.add_argument("base", help="run folder, or a commit (prefix) whose latest run under --results is used")
    compare.add_argument("head", nargs="?", help="run folder or commit (default: the newest run under --results)")
    compare.add_argument("--results", default="results", help="where to look for runs by commit (default: results)")
    compare.add_argument("--out", help="output folder (default: results/scratch/compare-<base>-vs-<head>)")
    compare.add_argument("--time-ratio", type=float, default=1.5, help="wall-time ratio counted as a change "
                         "(between rows of the same device, host and batch)")
    compare.add_argument("--fail-on-regression", action="store_true", help="exit 1 when anything regressed")
    compare.set_defaults(func=cmd_compare)
    train = sub.add_parser("train", help="train the built-in UNet on Fashion-MNIST (resumes from OUT)")
    train.add_argument("--out", default="results/scratch/unet-fashion", help="output folder (checkpoint, unet/, scheduler)")
    train.add_argument("--steps", type=int, default=20000)
    train.add_argument("--batch-size", type=int, default=128)
    train.add_argument("--lr", type=float, default=2e-4)
    train.add_argument("--prediction", choices=["eps", "v"], default="eps")
    train.add_argument("--checkpoint-every", type=int, default=500)
    train.add_argument("--widths", type=int, nargs="+", default=[32, 64, 64], help="channels per UNet level")
    train.add_argument("--ema-decay", type=float, default=0.999)
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--class-conditional", action="store_true",
                       help="condition on the class label (null class for classifier-free guidance)")
    train.add_argument("--label-dropout", type=float, default=0.1,
                       help="with --class-conditional: how often the label is replaced by the null class")
    train.add_argument("--size", type=int, default=32, help="pad the 28x28 images to this size")
    train.add_argument("--data-dir", help="folder with the Fashion-MNIST IDX files")
    train.add_argument("--device", default="cuda" if _cuda() else "cpu")
    train.set_defaults(func=cmd_train)
    compact = sub.add_parser("compact", help="merge a finished run's per-config row files into one part file")
    compact.add_argument("runs", nargs="+", help="run folders no sweep is writing to")
    compact.set_defaults(func=cmd_compact)
    reference = sub.add_parser("fid-reference", help="compute a shipped FID reference's statistics (once; they are committed)")
    reference.add_argument("name", choices=["fashion_mnist_test"])
    reference.add_argument("--out", help="folder (default: bench/metrics/references)")
    reference.add_argument("--data-dir", help="folder with the Fashion-MNIST IDX files")
    reference.add_argument("--fid-weights", help="converted Inception weights (default: those of make fid-weights)")
    reference.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    reference.set_defaults(func=cmd_fid_reference)
    conformance = sub.add_parser("conformance", help="our solvers and spacings against k-diffusion's and diffusers' "
                                 "on the same model, grid and x_T (float64): the table and why they differ")
    conformance.add_argument("--out", default="results/conformance", help="folder for conformance.md and .csv")
    conformance.set_defaults(func=cmd_conformance)
    plan = sub.add_parser("plan", help="configurations, network evaluations, metric passes and a time estimate, "
                                       "before anything runs")
    plan.add_argument("spec")
    plan.add_argument("--device", help="override the spec's device")
    plan.add_argument("--no-measure", action="store_true", help="counts only: no model is built, nothing timed")
    plan.add_argument("--threads", type=int, help="torch threads, as for run (default: the spec's, else torch's; a Ray "
                      "task's: 1)")
    _add_backend_arguments(plan)
    plan.set_defaults(func=cmd_plan)
    fit = sub.add_parser("fit-schedule", help="fit time grids to a model for solvers and step counts (GITS-style "
                         "dynamic programme + coordinate descent), one file each for spacings = [\"fitted:PATH\"]")
    fit.add_argument("model", help="a spec's model name (preset, diffusers:PATH, python:module:function)")
    fit.add_argument("--solvers", nargs="+", required=True, help="deterministic fixed-step solvers")
    fit.add_argument("--steps", type=int, nargs="+", help="step counts to fit")
    fit.add_argument("--nfe", type=int, nargs="+", help="NFE budgets to fit (each: the most steps within it)")
    fit.add_argument("--seeds", type=int, nargs="+", default=[1000], help="training seeds of x_T (default 1000; "
                     "evaluate on others)")
    fit.add_argument("--n-samples", type=int, default=32, help="training samples per seed (default 32)")
    fit.add_argument("--candidates", type=int, default=40, help="candidate steps: M + 1 times uniform in log-SNR "
                     "(default M = 40)")
    fit.add_argument("--teacher-tolerance", type=float, default=1e-5, help="rtol = atol of the teacher's dopri5 solve")
    fit.add_argument("--refine-rounds", type=int, default=2, help="coordinate-descent rounds on the whole-solve "
                     "error (0: the best of the DP grid and the formulas)")
    fit.add_argument("--formulas", nargs="+", help="spacings to compare with, and start from when one is better than "
                     "the DP grid (default: bench.fit.FORMULAS: uniform, logsnr, karras, time_quadratic, kl_optimal, "
                     "AYS where its range fits)")
    fit.add_argument("--schedule", default="VPLinear", help="the analytic models' schedule (networks bring theirs)")
    fit.add_argument("--guidance-scale", type=float, help="conditional models: the guidance scale to fit at")
    fit.add_argument("--device", default="cpu")
    fit.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    fit.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    fit.add_argument("--out", help="folder for the grid files (default: bench.spec.fitted.DEFAULT_DIR, "
                     "results/scratch/fitted-grids, where a spec's fitted:NAME looks)")
    fit.set_defaults(func=cmd_fit_schedule)
    check = sub.add_parser("check-solver", help="a solver (registered or python:module:attribute) on the analytic "
                           "mixtures: every configuration runs, NFE and noise draws as its entry says, and its "
                           "measured order reaches the entry's")
    check.add_argument("solver")
    check.add_argument("--schedule", default="VPLinear", help="the mixtures' noise schedule (default VPLinear)")
    check.add_argument("--spacing", default="logsnr", help="the time spacing (default logsnr)")
    check.add_argument("--steps", type=int, nargs="+", default=[16, 32, 64, 128],
                       help="step counts (default 16 32 64 128)")
    check.add_argument("--n-samples", type=int, default=256, help="samples per configuration (default 256)")
    check.add_argument("--guidance-scale", type=float, help="check it on gmm_classes, the class-conditional "
                       "mixture, guided at this scale (CFG++ samplers need one)")
    check.add_argument("--options", help="the solver's options as a JSON object, e.g. '{\"order\": 3}'")
    check.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    check.add_argument("--out", help="the run folder (default: results/scratch/<time>-<commit>-check-<solver>)")
    check.set_defaults(func=cmd_check_solver)
    sub.add_parser("list", help="solvers, spacings, schedules, models, metrics").set_defaults(func=cmd_list)
    docs = sub.add_parser("docs", help="write the reference tables of docs/ from the registries")
    docs.add_argument("--out", default="docs", help="folder (default: docs)")
    docs.set_defaults(func=cmd_docs)
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    return args.func(args)
