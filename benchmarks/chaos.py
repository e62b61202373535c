"""Chaos test of resumable sweeps: SIGKILL a sweep at random moments, resume after each kill, check the table.

    python benchmarks/chaos.py [--spec bench/configs/default.toml] [--kills 10] [--seed 0] [--out DIR]

Each round starts `python -m bench run SPEC --out DIR`, waits a random 1-20 s and kills it with SIGKILL
(its worker process goes within a second of it); a last run completes the sweep. Then: every config
has exactly one row, every parquet file reads, no temp file is left, and no row failed, timed out or
died because of a kill (a killed config leaves no row and runs again on resume). Prints the figures.
"""
from __future__ import annotations

import argparse
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench import store  # noqa: E402
from bench.spec.config import expand, load_spec  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spec", default="bench/configs/default.toml")
    parser.add_argument("--kills", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", help="run folder (default: a new temporary folder)")
    args = parser.parse_args(argv)
    rng = random.Random(args.seed)
    run_dir = Path(args.out or tempfile.mkdtemp(prefix="chaos-")) / "run"
    command = [sys.executable, "-m", "bench", "run", args.spec, "--out", str(run_dir), "--no-progress"]
    started, rows_at_kill = time.monotonic(), []
    for _ in range(args.kills):
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(rng.uniform(1, 20))
        if process.poll() is not None:
            break
        os.kill(process.pid, signal.SIGKILL)
        process.wait()
        rows_at_kill.append(len(store.done_ids(run_dir)))
    final = subprocess.run(command, capture_output=True, text=True)
    elapsed = time.monotonic() - started
    expected = {c.config_id for c in expand(load_spec(args.spec))}
    files = [p for p in (run_dir / "rows").glob("*.parquet") if not p.name.startswith(".")]
    unreadable = []
    for path in files:
        try:
            pq.read_table(path)
        except Exception as err:  # noqa: BLE001 - reported, not raised
            unreadable.append(f"{path.name}: {err}")
    table = store.load_rows(run_dir)
    temp_left = list(run_dir.glob("**/.tmp-*"))
    bad = table[table.status.isin(["failed", "timeout", "oom"])]
    print(f"{len(rows_at_kill)} kills (rows at each: {rows_at_kill}); final run exit {final.returncode}; "
          f"{elapsed:.0f} s in all")
    print(f"configs expected {len(expected)}, rows {len(table)}, unique {table.config_id.nunique()}, "
          f"missing {len(expected - set(table.config_id))}, unreadable files {len(unreadable)}, temp files left "
          f"{len(temp_left)}, failed/timeout/oom rows {len(bad)}; statuses {table.status.value_counts().to_dict()}")
    ok = (final.returncode == 0 and set(table.config_id) == expected and table.config_id.is_unique
          and not unreadable and not temp_left and bad.empty)
    print("chaos: PASS" if ok else "chaos: FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
