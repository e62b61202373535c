"""Command line: python -m bench run | list."""
from __future__ import annotations

import argparse
import sys
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
    from bench import config, runner, store

    try:
        spec = config.load_spec(args.spec)
    except config.SpecError as err:
        print(err, file=sys.stderr)
        return 2
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
    counts = runner.run_sweep(configs, run_dir, meta["run_id"], progress=None if args.progress is None else args.progress)
    table = store.load_rows(run_dir)
    summary = ", ".join(f"{k} {v}" for k, v in sorted(counts.items()))
    print(f"{len(configs)} configs ({summary}); {len(table)} rows in {run_dir / 'rows'}")
    print(f"load it with: pandas.read_parquet('{run_dir / 'rows'}')")
    return 0


def cmd_list(args) -> int:
    from bench.metrics import METRICS
    from bench.models import MODELS
    from solvers.__main__ import registry_table
    from solvers.schedules import SCHEDULES
    from solvers.spacing import SPACINGS

    print("Solvers:\n" + registry_table())
    print("\nSpacings: " + ", ".join(SPACINGS))
    print("Schedules: " + ", ".join(SCHEDULES))
    print("Models: " + ", ".join(MODELS))
    print("Metrics:\n" + "\n".join(f"  {name}: {text}" for name, text in METRICS.items()))
    return 0


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
    run.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                     help="progress bar (default: only on a terminal)")
    run.set_defaults(func=cmd_run)
    sub.add_parser("list", help="solvers, spacings, schedules, models, metrics").set_defaults(func=cmd_list)
    args = parser.parse_args(argv)
    return args.func(args)
