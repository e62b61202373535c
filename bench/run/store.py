"""Results store: a run folder holding one parquet file per finished configuration.

    <run>/run.json           what made the run (spec name, hash, path, commit, start time; amendments: a resume
                             whose spec changed only the time limits, LIMIT_KEYS)
    <run>/spec.toml          the spec text (the latest amendment's)
    <run>/rows/<id>.parquet  one row per config, written to a hidden temp file and renamed into place,
                             so a killed sweep leaves only whole files; readers skip hidden files
    <run>/rows/part-*.parquet  compacted rows: every ``COMPACT_EVERY`` rows and at its end a sweep merges
                             the per-config files it wrote into one part file (written the same atomic
                             way, then the merged files are deleted)

``load_rows(run)`` gives the table; shards of one sweep write into the same folder and load as one
table. A config may have more than one row on disk (a retried config; a part written just before a
kill, whose merged files were not yet deleted): the row written last counts, in ``load_rows`` and
``done_ids`` alike. Any parquet reader (pandas, DuckDB: ``SELECT ... FROM 'RUN/rows/*.parquet'``) reads
the folder as it is.
"""
from __future__ import annotations

import datetime
import functools
import hashlib
import json
import os
import platform
import re
import socket
import subprocess
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from bench.files import atomic_write, remove_stale_temp_files

S, F, I, B = pa.string(), pa.float64(), pa.int64(), pa.bool_()
# The columns every row has (what ran, where, how, at what cost), then the metrics' (bench.metrics.COLUMNS), then
# the outcome: name -> (type, what it holds). docs/columns.md is generated from these.
RUN_COLUMNS = {
    "run_id": (S, "the run folder's name"), "config_id": (S, "hash of what defines the config's result"),
    "spec_name": (S, "the spec's name"), "spec_hash": (S, "hash of the spec's text"),
    "git_commit": (S, "the commit the row was made at"), "git_dirty": (B, "uncommitted changes in the checkout"),
    "created_at": (S, "when the row was written (UTC)"), "host": (S, "the machine"),
    "device": (S, "the device, by name"), "torch_version": (S, "torch"),
    "cuda_version": (S, "CUDA (CUDA devices)"), "cudnn_version": (S, "cuDNN (CUDA devices)"),
    "driver_version": (S, "the NVIDIA driver (CUDA devices, from nvidia-smi)"),
    "diffusers_version": (S, "diffusers"), "torch_fidelity_version": (S, "torch-fidelity"),
    "tf32_matmul": (B, "TF32 for float32 matmuls (execution policy, as in effect)"),
    "tf32_cudnn": (B, "TF32 for cuDNN convolutions"), "matmul_precision": (S, "torch's float32 matmul precision"),
    "cudnn_benchmark": (B, "cuDNN's autotuner"), "deterministic": (B, "deterministic algorithms"),
    "threads": (I, "torch threads in the process that ran the config"),
    "model": (S, "the spec's model entry"), "dataset": (S, "what the model is of"),
    "weights_sha256": (S, "sha256 of the network's weight files (a python: function's torch module: of its state "
                          "dict), or of a mixture's parameters"),
    "schedule": (S, "the noise schedule"), "solver": (S, "the solver's registry name, or python:module:attribute"),
    "options": (S, "the solver's options (JSON)"),
    "solver_sha256": (S, "a python: solver's code: sha256 of the files of its entry and its function (the user's, "
                         "which git_commit does not cover); empty for a registered solver"),
    "nominal_order": (I, "the order the solver's entry gives this config (order_for(eta, options)): its ODE order, or "
                         "the strong order of a run that draws noise; empty: none (CFG++)"),
    "steps": (I, "steps (fixed-step solvers)"),
    "spacing": (S, "the time spacing or explicit grid"), "eta": (F, "eta (DESIGN.md's eta family)"),
    "tolerance": (F, "rtol = atol (adaptive solvers)"), "seed": (I, "the seed of x_T and the noise"),
    "n_samples": (I, "samples"), "batch_size": (I, "the spec's batch (and noise batch)"),
    "dtype": (S, "the solver's dtype"), "exec_mode": (S, "how the network ran: eager, bf16, compile, cuda_graph"),
    "guidance_scale": (F, "classifier-free guidance scale (conditional models; 1: the conditional model, no guidance)"),
    "conditions": (S, "where a conditional model's conditions came from: labels:random (from the seed) or labels:0,1,..."),
    "guidance_interval": (S, "[lo, hi] in sigma/alpha where guidance applied (JSON); empty: everywhere"),
    "final_step": (S, "none: the sample is the state at the grid's last time; x0: the x0 prediction there (1 NFE more)"),
    "fitted_solver": (S, "spacing fitted:PATH: the solver the grid was fitted for"),
    "fitted_model": (S, "the model it was fitted on"),
    "fitted_weights_sha256": (S, "that model's weights_sha256"),
    "fitted_seeds": (S, "the seeds of x_T it was fitted on (JSON)"),
    "fitted_cost_evaluations": (I, "network evaluations the fit took (each on its training batch)"),
    "fitted_cost_s": (F, "seconds the fit took"),
    "fitted_file": (S, "the grid's file"), "fitted_sha256": (S, "sha256 of that file"),
    "grid_sigmas": (S, "the fitted grid's sigma/alpha values from t_max to t_min (JSON)"),
    "batch_used": (I, "the part size the samples were solved in (smaller after out-of-memory or the noise bound)"),
    "nfe": (F, "network evaluations per batch (a batched guided pair counts 1, as the papers count)"),
    "network_passes": (F, "network passes per batch (conditional models: 2 per guided evaluation, 1 at scale 0 or 1 "
                          "and outside the guidance interval)"),
    "wall_s": (F, "seconds of sampling, all batches (the median of timing_repeats timings)"),
    "wall_s_std": (F, "standard deviation of the repeated timings"), "timing_repeats": (I, "timings taken"),
    "samples_per_s": (F, "n_samples / wall_s"),
    "warmup_s": (F, "the untimed warm-up (compilation included), on the first config of its key"),
    "capture_s": (F, "the untimed CUDA graph capture (cuda_graph)"),
    "forward_s": (F, "the bare network forward at the row's batch, median of 5"),
    "overhead_ratio": (F, "wall_s / (nfe x forward_s x batches)"),
    "decode_s": (F, "seconds decoding latents to images for the image metrics (latent pipelines: the VAE decoder; "
                    "the samples', the reference solve's and eager twin's where used; never part of wall_s)"),
    "accepted_steps": (F, "accepted steps per batch (adaptive solvers)"),
    "rejected_steps": (F, "rejected steps per batch (adaptive solvers)"),
}
OUTCOME_COLUMNS = {"status": (S, "ok, diverged, skipped, failed, timeout or oom"),
                   "message": (S, "why a row is not ok, and what a row lacks and why")}


def _schema() -> pa.Schema:
    from bench.metrics import COLUMNS as METRIC_COLUMNS

    columns = {**RUN_COLUMNS, **{k: v for k, v in METRIC_COLUMNS.items() if k not in RUN_COLUMNS}, **OUTCOME_COLUMNS}
    return pa.schema([(name, kind) for name, (kind, _) in columns.items()])


SCHEMA = _schema()
COLUMNS = SCHEMA.names
STATUSES = ("ok", "diverged", "skipped", "failed", "timeout", "oom")
RETRYABLE = ("failed", "diverged", "timeout", "oom")  # what --retry-failed runs again
RENAMED_COLUMNS = {"loglik": "sample_log_density"}  # old name -> new, for row files written before the rename


def git_state(cwd=None) -> tuple[str, bool]:
    """(commit, dirty) of the checkout, or ("unknown", False) outside git. results/ does not count as dirty."""
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, check=True).stdout.strip()
        status = subprocess.run(["git", "status", "--porcelain", "--", ".", ":(exclude)results"], cwd=cwd,
                                capture_output=True, text=True, check=True).stdout
        return commit, bool(status.strip())
    except (OSError, subprocess.CalledProcessError):
        return "unknown", False


@functools.lru_cache(maxsize=None)
def solver_sha256(name: str) -> str | None:
    """sha256 of the code a python: solver runs (solvers.registry.plugin_source_files: the file of the module that holds
    its Solver entry and, where another, the file of its function); None for a registered solver (git_commit covers
    it). Read once per process, near its import."""
    from solvers import SOLVERS
    from solvers.registry import plugin_source_files

    if name in SOLVERS:
        return None
    digest = hashlib.sha256()
    for file in plugin_source_files(name):
        digest.update(Path(file).read_bytes())
    return digest.hexdigest()


def changed_solver_code(run_dir: Path, solvers) -> list[str]:
    """The python: solvers among ``solvers`` whose code differs from the code the run's rows were made with
    (solver_sha256), one line each: a resume would mix two versions of a solver in one run."""
    rows = _read_run(run_dir, ["config_id", "created_at", "solver", "solver_sha256"]).dropna(subset=["solver_sha256"])
    changed = []
    for solver in [s for s in solvers if s in set(rows.solver)]:
        before = sorted(set(rows.solver_sha256[rows.solver == solver]))
        if (now := solver_sha256(solver)) not in before or len(before) > 1:
            changed.append(f"{solver}: its rows ran code {', '.join(d[:12] for d in before)}, its files now hash "
                           f"{now[:12]}")
    return changed


def environment(device: str) -> dict:
    """The columns every row of this process shares: where, from which code, with which library versions (the
    CUDA ones on a CUDA device only)."""
    import torch

    commit, dirty = git_state()
    cuda = {}
    if device.startswith("cuda"):
        device_name = torch.cuda.get_device_name(torch.device(device))
        cudnn = torch.backends.cudnn.version()
        cuda = {"cuda_version": torch.version.cuda, "cudnn_version": str(cudnn) if cudnn else None,
                "driver_version": _nvidia_driver()}
    else:
        device_name = f"cpu ({_cpu_model()}, {os.cpu_count()} cores)"
    return {"git_commit": commit, "git_dirty": dirty, "host": socket.gethostname(), "device": device_name,
            "torch_version": torch.__version__, **cuda, "diffusers_version": _version("diffusers"),
            "torch_fidelity_version": _version("torch-fidelity")}


def _cpu_model(cpuinfo: Path = Path("/proc/cpuinfo")) -> str:
    """The CPU's model name where Linux says it (two machines of one architecture time differently: rows on an Intel
    and an AMD host are not a busy machine's shift), else the architecture."""
    try:
        for line in cpuinfo.read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and value.strip():
                return value.strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _version(distribution: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(distribution)
    except PackageNotFoundError:
        return None


def _nvidia_driver() -> str | None:
    """The NVIDIA driver's version as nvidia-smi reports it (torch does not expose it), None without it."""
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=30, check=True).stdout
        return out.strip().splitlines()[0] if out.strip() else None
    except (OSError, subprocess.SubprocessError):
        return None


def now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def new_run_dir(root: Path, spec_name: str) -> Path:
    commit, dirty = git_state()
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%d-%H%M%S")
    return Path(root) / f"{stamp}-{commit[:7]}{'-dirty' if dirty else ''}-{spec_name}"


def open_run(run_dir: Path, spec) -> dict:
    """Create the run folder or check that an existing one was made from the same spec; returns run.json."""
    run_dir = Path(run_dir)
    meta_path = run_dir / "run.json"
    if meta_path.exists():
        meta = json.loads(meta_path.read_text())
        if meta["spec_hash"] != spec.hash:
            meta = _amended(run_dir, meta, spec)
        if changed := changed_solver_code(run_dir, spec.values["solvers"]):
            raise ValueError(f"{run_dir}: the code of its python: solvers changed since its rows were made "
                             f"({'; '.join(changed)}): use a new --out, or restore the code")
        remove_stale_temp_files(run_dir)
        return meta
    (run_dir / "rows").mkdir(parents=True, exist_ok=True)
    commit, _ = git_state()
    meta = {"run_id": run_dir.name, "spec_name": spec.name, "spec_path": spec.path, "spec_hash": spec.hash,
            "git_commit": commit, "created_at": now()}
    if Path(spec.path).is_file():
        (run_dir / "spec.toml").write_text(Path(spec.path).read_text())
    _atomic_write_bytes(meta_path, json.dumps(meta, indent=2).encode())
    return meta


def _amended(run_dir: Path, meta: dict, spec) -> dict:
    """run.json of a run resumed with a spec that differs from the one that made it in LIMIT_KEYS alone: the new spec
    text in spec.toml, the change in run.json's ``amendments`` (when, the spec's hash before, each key's values).
    Any other difference is refused, naming the keys."""
    from bench.spec import LIMIT_KEYS, spec_changes

    stored = run_dir / "spec.toml"
    refusal = (f"{run_dir} was made from spec {meta['spec_path']} (hash {meta['spec_hash']}); {spec.path} has hash "
               f"{spec.hash}")
    if not (stored.is_file() and Path(spec.path).is_file()):
        raise ValueError(f"{refusal}: resume it with the same spec or use a new --out")
    text = Path(spec.path).read_text()
    changed = spec_changes(stored.read_text(), text)
    if other := [key for key in changed if key not in LIMIT_KEYS]:
        shown = "; ".join(f"{key!r}: {changed[key][0]!r} -> {changed[key][1]!r}" for key in other)
        raise ValueError(f"{refusal}, which changes {shown}: resume it with the same spec (only "
                         f"{' and '.join(LIMIT_KEYS)} may change) or use a new --out")
    amendment = {"at": now(), "spec_hash_before": meta["spec_hash"],
                 "changed": {key: list(values) for key, values in changed.items()}}
    meta = {**meta, "spec_hash": spec.hash, "amendments": [*meta.get("amendments", []), amendment]}
    _atomic_write_bytes(stored, text.encode())
    _atomic_write_bytes(run_dir / "run.json", json.dumps(meta, indent=2).encode())
    return meta


def _atomic_write_bytes(path: Path, data: bytes) -> None:
    atomic_write(path, lambda handle: handle.write(data))


def write_row(run_dir: Path, row: dict, written: dict | None = None) -> Path:
    """Write one config's row atomically; columns missing from ``row`` are null. ``written``, where given, keeps
    the row's table by its path, so that compacting it need not read it back."""
    unknown = set(row) - set(COLUMNS)
    if unknown:
        raise ValueError(f"write_row: unknown columns {sorted(unknown)}")
    if row.get("status") not in STATUSES:
        raise ValueError(f"write_row: status must be one of {STATUSES}, got {row.get('status')!r}")
    path = Path(run_dir) / "rows" / f"{row['config_id']}.parquet"
    table = pa.Table.from_pylist([{c: row.get(c) for c in COLUMNS}], schema=SCHEMA)
    atomic_write(path, lambda handle: pq.write_table(table, handle))
    if written is not None:
        written[path] = table
    return path


COMPACT_EVERY = 1000  # rows a sweep writes before it merges its per-config files into a part file
_CONFIG_FILE = re.compile(r"[0-9a-f]{16}\.parquet")


def _row_files(run_dir: Path) -> list[Path]:
    """The row files of a run in the order in which a later row replaces an earlier one of the same config:
    multi-row files by name (part names sort by time), then the per-config files."""
    files = [p for p in (Path(run_dir) / "rows").glob("*.parquet") if not p.name.startswith(".")]
    loose = sorted(p for p in files if _CONFIG_FILE.fullmatch(p.name))
    return sorted(p for p in files if not _CONFIG_FILE.fullmatch(p.name)) + loose


def _read(files: list[Path], columns=None) -> pd.DataFrame:
    """The rows of ``files``, the last written row of each config only, in file order."""
    tables = [_conform(pq.read_table(p), columns) for p in files]
    if not tables:
        return _conform(SCHEMA.empty_table(), columns).to_pandas()
    df = pa.concat_tables(tables).to_pandas()
    latest = df.sort_values("created_at", kind="stable").drop_duplicates("config_id", keep="last")
    return df.loc[sorted(latest.index)].reset_index(drop=True)


_READ_ATTEMPTS = 20  # listings of a run folder a reader tries before giving up on it


def _read_run(run_dir: Path, columns=None) -> pd.DataFrame:
    """The rows of one run folder while other processes may be writing and compacting it.

    A shard's compaction deletes per-config files another shard may have just listed; it writes their
    part file first, so listing the folder again finds every row. Only a folder that keeps changing
    under the reader for every attempt raises."""
    for attempt in range(_READ_ATTEMPTS):
        try:
            return _read(_row_files(run_dir), columns)
        except FileNotFoundError:
            if attempt == _READ_ATTEMPTS - 1:
                raise


def done_ids(run_dir: Path, retry: tuple[str, ...] = ()) -> set[str]:
    """Config ids with a row in ``run_dir``, less those whose latest status is in ``retry``."""
    rows = _read_run(run_dir, ["config_id", "status", "created_at"])
    return set(rows.config_id[~rows.status.isin(retry)])


def load_rows(*run_dirs) -> pd.DataFrame:
    """All rows of one or more run folders as one DataFrame (empty, with the columns, if none)."""
    return pd.concat([_read_run(d) for d in run_dirs], ignore_index=True) if run_dirs else _read([])


def compact(run_dir: Path, files=None) -> Path | None:
    """Merge per-config row files (``files``, default: all of the run's) into one part file; returns it.
    ``files`` may be a mapping of paths to the tables written to them (write_row's ``written``): those are not
    read back.

    The part is written atomically before any merged file is deleted, so a kill at any moment loses no
    row (at worst a row is on disk twice, identical; readers keep one). A sweep compacts only the files it
    wrote itself; compacting a whole run (``python -m bench compact RUN``) is for a run no sweep writes to.
    """
    run_dir = Path(run_dir)
    known = files if isinstance(files, dict) else {}
    loose = [p for p in (files if files is not None else _row_files(run_dir)) if _CONFIG_FILE.fullmatch(p.name)]
    tables = []
    for path in loose:
        try:
            tables.append(known[path] if path in known else _conform(pq.read_table(path)))
        except FileNotFoundError:  # merged by another compaction meanwhile
            continue
    if not tables:
        return None
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%S%f")
    part = run_dir / "rows" / f"part-{stamp}-{socket.gethostname()}-{os.getpid()}.parquet"
    merged = pa.concat_tables(tables)
    atomic_write(part, lambda handle: pq.write_table(merged, handle))
    for path in loose:
        path.unlink(missing_ok=True)
    return part


def _conform(table: pa.Table, columns=None) -> pa.Table:
    """A table written by an older version: renamed columns under their new names, columns added since
    then as nulls (``columns``: only these). (Older rows' ``dataset`` held the model name.)"""
    schema = SCHEMA if columns is None else pa.schema([SCHEMA.field(name) for name in columns])
    if table.schema == schema:  # written by this version
        return table
    table = table.rename_columns([RENAMED_COLUMNS.get(name, name) for name in table.column_names])
    present = set(table.column_names)
    arrays = [table[name] if name in present else _missing(name, len(table), field.type)
              for name, field in zip(schema.names, schema)]
    return pa.Table.from_arrays(arrays, schema=schema)


def _missing(name: str, length: int, kind: pa.DataType) -> pa.Array:
    """A column older rows lack: what it meant before it existed (rows before the exec_modes axis ran
    eager), else nulls."""
    if name == "exec_mode":
        return pa.array(["eager"] * length, kind)
    return pa.nulls(length, kind)
