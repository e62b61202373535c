"""Results store: a run folder holding one parquet file per finished configuration.

    <run>/run.json           what made the run (spec name, hash, path, commit, start time)
    <run>/spec.toml          the spec text
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

SCHEMA = pa.schema([
    ("run_id", pa.string()), ("config_id", pa.string()), ("spec_name", pa.string()), ("spec_hash", pa.string()),
    ("git_commit", pa.string()), ("git_dirty", pa.bool_()), ("created_at", pa.string()), ("host", pa.string()),
    ("device", pa.string()), ("torch_version", pa.string()), ("cuda_version", pa.string()),
    ("cudnn_version", pa.string()), ("driver_version", pa.string()), ("diffusers_version", pa.string()),
    ("torch_fidelity_version", pa.string()),
    ("tf32_matmul", pa.bool_()), ("tf32_cudnn", pa.bool_()), ("matmul_precision", pa.string()),
    ("cudnn_benchmark", pa.bool_()), ("deterministic", pa.bool_()), ("threads", pa.int64()),
    ("model", pa.string()), ("dataset", pa.string()), ("weights_sha256", pa.string()), ("schedule", pa.string()),
    ("solver", pa.string()),
    ("options", pa.string()), ("steps", pa.int64()), ("spacing", pa.string()), ("eta", pa.float64()),
    ("tolerance", pa.float64()), ("seed", pa.int64()), ("n_samples", pa.int64()), ("batch_size", pa.int64()),
    ("dtype", pa.string()), ("exec_mode", pa.string()), ("batch_used", pa.int64()),
    ("nfe", pa.float64()), ("wall_s", pa.float64()), ("wall_s_std", pa.float64()), ("timing_repeats", pa.int64()),
    ("samples_per_s", pa.float64()), ("warmup_s", pa.float64()), ("capture_s", pa.float64()),
    ("forward_s", pa.float64()), ("overhead_ratio", pa.float64()),
    ("accepted_steps", pa.float64()), ("rejected_steps", pa.float64()),
    ("fid", pa.float64()), ("kid", pa.float64()), ("precision", pa.float64()), ("recall", pa.float64()),
    ("fid_reference", pa.string()), ("fid_reference_sha256", pa.string()), ("reference_size", pa.int64()),
    ("fid_resize", pa.string()), ("fid_extractor", pa.string()), ("fid_weights_sha256", pa.string()),
    ("err_stepdoubling", pa.float64()), ("err_stepdoubling_rms", pa.float64()), ("err_reference", pa.float64()),
    ("reference_tolerance", pa.float64()),
    ("sample_log_density", pa.float64()), ("frechet", pa.float64()), ("sliced_wasserstein", pa.float64()),
    ("lpips_reference", pa.float64()), ("lpips_diversity", pa.float64()),
    ("drift_vs_eager", pa.float64()), ("fid_vs_eager", pa.float64()),
    ("nll", pa.float64()), ("nll_se", pa.float64()), ("nll_bpd", pa.float64()),
    ("status", pa.string()), ("message", pa.string()),
])
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
        device_name = f"cpu ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)"
    return {"git_commit": commit, "git_dirty": dirty, "host": socket.gethostname(), "device": device_name,
            "torch_version": torch.__version__, **cuda, "diffusers_version": _version("diffusers"),
            "torch_fidelity_version": _version("torch-fidelity")}


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
            raise ValueError(f"{run_dir} was made from spec {meta['spec_path']} (hash {meta['spec_hash']}); "
                             f"{spec.path} has hash {spec.hash}: resume it with the same spec or use a new --out")
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


def _temp_path(path: Path) -> Path:
    """A hidden sibling named after its writer (host and pid), so others can tell whether it is live."""
    return path.with_name(f".tmp-{socket.gethostname()}-{os.getpid()}-{path.name}")


def _writer_is_gone(temp: Path) -> bool:
    """True for a temp file written by a process of this host that no longer runs. Another host's
    (shards on a shared file system) cannot be checked and is kept; readers skip hidden files anyway."""
    prefix = f".tmp-{socket.gethostname()}-"
    pid = temp.name[len(prefix):].split("-")[0] if temp.name.startswith(prefix) else ""
    if not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # alive, another user's
        return False
    return False


def remove_stale_temp_files(run_dir: Path) -> list[Path]:
    """Delete the temp files that killed writers left behind; live writers' files (other shards) stay."""
    stale = [p for p in Path(run_dir).glob("**/.tmp-*") if _writer_is_gone(p)]
    for path in stale:
        path.unlink(missing_ok=True)
    return stale


def atomic_write(path: Path, write) -> None:
    """``write(file)`` into a temp file, fsync it, rename it over ``path`` and fsync the folder."""
    tmp = _temp_path(path)
    with open(tmp, "wb") as handle:
        write(handle)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)
    folder = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(folder)
    finally:
        os.close(folder)


def _atomic_write_bytes(path: Path, data: bytes) -> None:
    atomic_write(path, lambda handle: handle.write(data))


def write_row(run_dir: Path, row: dict) -> Path:
    """Write one config's row atomically; columns missing from ``row`` are null."""
    unknown = set(row) - set(COLUMNS)
    if unknown:
        raise ValueError(f"write_row: unknown columns {sorted(unknown)}")
    if row.get("status") not in STATUSES:
        raise ValueError(f"write_row: status must be one of {STATUSES}, got {row.get('status')!r}")
    path = Path(run_dir) / "rows" / f"{row['config_id']}.parquet"
    table = pa.Table.from_pylist([{c: row.get(c) for c in COLUMNS}], schema=SCHEMA)
    atomic_write(path, lambda handle: pq.write_table(table, handle))
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


def compact(run_dir: Path, files: list[Path] | None = None) -> Path | None:
    """Merge per-config row files (``files``, default: all of the run's) into one part file; returns it.

    The part is written atomically before any merged file is deleted, so a kill at any moment loses no
    row (at worst a row is on disk twice, identical; readers keep one). A sweep compacts only the files it
    wrote itself; compacting a whole run (``python -m bench compact RUN``) is for a run no sweep writes to.
    """
    run_dir = Path(run_dir)
    loose = [p for p in (files if files is not None else _row_files(run_dir)) if _CONFIG_FILE.fullmatch(p.name)]
    tables = []
    for path in loose:
        try:
            tables.append(_conform(pq.read_table(path)))
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
    table = table.rename_columns([RENAMED_COLUMNS.get(name, name) for name in table.column_names])
    schema = SCHEMA if columns is None else pa.schema([SCHEMA.field(name) for name in columns])
    arrays = [table[name] if name in table.column_names else _missing(name, len(table), field.type)
              for name, field in zip(schema.names, schema)]
    return pa.Table.from_arrays(arrays, schema=schema)


def _missing(name: str, length: int, kind: pa.DataType) -> pa.Array:
    """A column older rows lack: what it meant before it existed (rows before the exec_modes axis ran
    eager), else nulls."""
    if name == "exec_mode":
        return pa.array(["eager"] * length, kind)
    return pa.nulls(length, kind)
