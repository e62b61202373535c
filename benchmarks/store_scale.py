"""Load time and disk size of a run folder at scale: per-config files against compacted part files.

    python benchmarks/store_scale.py [--rows 10000 100000] [--loose-up-to 10000]

Synthetic rows with every column of the schema filled the way a sweep fills them are written as a
sweep would leave them: one file per config (only up to --loose-up-to rows: 100,000 files take long to
make) and compacted into parts of store.COMPACT_EVERY rows. Each layout is loaded with
store.load_rows; the figures go into the README.
"""
from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from bench.run import store


def synthetic_rows(count: int) -> pa.Table:
    solvers = ["ddim", "dpmpp_2m", "heun", "unipc_2", "euler_maruyama"]
    columns = {}
    for name, field in zip(store.SCHEMA.names, store.SCHEMA):
        if name == "config_id":
            columns[name] = [f"{i:016x}" for i in range(count)]
        elif name == "created_at":
            columns[name] = ["2026-11-25T20:00:00+00:00"] * count
        elif name == "status":
            columns[name] = ["ok"] * count
        elif name == "solver":
            columns[name] = [solvers[i % len(solvers)] for i in range(count)]
        elif pa.types.is_string(field.type):
            columns[name] = [f"{name}-{i % 7}" for i in range(count)]
        elif pa.types.is_boolean(field.type):
            columns[name] = [False] * count
        elif pa.types.is_integer(field.type):
            columns[name] = [i % 50 + 1 for i in range(count)]
        else:
            columns[name] = [0.001 * (i % 997) + 0.5 for i in range(count)]
    return pa.table(columns, schema=store.SCHEMA)


def folder_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def measure(run_dir: Path) -> tuple[float, int, int]:
    started = time.perf_counter()
    rows = store.load_rows(run_dir)
    return time.perf_counter() - started, len(rows), folder_bytes(run_dir / "rows")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--loose-up-to", type=int, default=10_000)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="store-scale-"))
    try:
        for count in args.rows:
            table = synthetic_rows(count)
            layouts = {"compacted": store.COMPACT_EVERY}
            if count <= args.loose_up_to:
                layouts["one file per config"] = 1
            for layout, per_file in layouts.items():
                run_dir = root / f"{count}-{per_file}"
                (run_dir / "rows").mkdir(parents=True)
                for start in range(0, count, per_file):
                    chunk = table.slice(start, per_file)
                    name = chunk["config_id"][0].as_py() if per_file == 1 else f"part-{start:09d}"
                    pq.write_table(chunk, run_dir / "rows" / f"{name}.parquet")
                seconds, loaded, size = measure(run_dir)
                print(f"{count:>7} rows, {layout:>20}: load {seconds:6.2f} s, {size / 2**20:7.1f} MiB on disk "
                      f"({loaded} rows loaded)", flush=True)
                shutil.rmtree(run_dir)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
