"""Files written so that a killed process never leaves a half-written one: a temp file, fsynced, renamed into place.

Every stage that writes results or caches uses it (the run folder's rows and reference solves, the FID reference
features); it imports nothing of the harness.
"""
from __future__ import annotations

import os
import socket
from pathlib import Path


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
