"""Configs per second of one spec: the serial runner against the Ray backend with 1, 2, ... local workers.

    python benchmarks/ray_scaling.py [--spec bench/configs/default.toml] [--workers 1 2]

Each run is a fresh run folder, started as a user starts it (``python -m bench run``), timed from the
command's start to its end (Ray's start and shutdown included), one after another on this machine.
The serial run uses as many torch threads as the machine has cores, as ``make bench`` does. Prints a
table; the README quotes it.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.run import store


def timed_run(spec: str, out: Path, *args: str) -> tuple[float, int]:
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "bench", "run", spec, "--out", str(out), "--no-progress", *args],
                   check=True, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    return seconds, len(store.load_rows(out))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spec", default="bench/configs/default.toml")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    args = parser.parse_args(argv)
    print(f"{args.spec} on {os.cpu_count()} cores")
    print("| backend | wall s | rows | configs/s | vs serial |\n| --- | ---: | ---: | ---: | ---: |")
    with tempfile.TemporaryDirectory() as folder:
        serial_s, rows = timed_run(args.spec, Path(folder) / "serial")
        print(f"| serial | {serial_s:.1f} | {rows} | {rows / serial_s:.1f} | 1.00 |", flush=True)
        for workers in args.workers:
            seconds, rows = timed_run(args.spec, Path(folder) / f"ray{workers}", "--backend", "ray",
                                      "--workers", str(workers))
            print(f"| ray, {workers} worker{'s' if workers > 1 else ''} | {seconds:.1f} | {rows} | "
                  f"{rows / seconds:.1f} | {serial_s / seconds:.2f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
