"""What a GPU machine without network needs for `make gpu-check`, packed here into one git-ignored folder per device
call, and joined there.

The lent machine has torch and most of the project's dependencies but not the FID Inception weights (one 95.7 MB
file from `make fid-weights`) nor four wheels (diffusers, torch-fidelity, torchsde, trampoline, at pyproject.toml's
pins). A device call carries at most 64 MiB with the working tree (tracked files and untracked ones git does not
ignore: about 46 MB here), and a warm machine keeps what earlier calls carried (it goes back 30 s after a call). So
the payload travels in parts, one folder per call, in back-to-back calls:

    python benchmarks/gpu_lease.py prepare    # here: .carry/call-1 (wheels, manifest, part 0), .carry/call-2, ...
    python3 benchmarks/gpu_lease.py join      # there, in the last call: the weights joined and checked

``prepare`` prints each call's ``carry`` and command; the last one's sources benchmarks/gpu_lease_install.sh (join,
install the wheels, PYTHONPATH) before benchmarks/gpu_check.sh, and packs the results into one file under $OUT (a
call returns at most 8 files, two folders deep).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CARRY = Path(".carry")
WEIGHTS = Path(".cache/fid/inception-2015-12-05-fidhelper.pth")
LACKING = ("diffusers", "torch-fidelity", "torchsde")  # pinned in pyproject.toml; the machine has the rest
UNPINNED_WHEELS = ("trampoline==0.1.2",)  # torchsde's own dependency, which pyproject.toml does not name
CALL_LIMIT = 64 * 2**20  # bytes a device call carries, the working tree included
MARGIN = 2**20  # for files that change between preparing and calling
MANIFEST_BYTES = 4096  # room kept in the first call for the manifest
PART = "fid.part-{:03d}"


def tree_bytes(root: Path = ROOT) -> int:
    """Bytes of what every call sends: tracked files, and untracked ones git does not ignore."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=root,
                            check=True, capture_output=True).stdout.split(b"\0")
    return sum((root / name.decode()).stat().st_size for name in set(listed) if name and (root / name.decode()).is_file())


def part_sizes(payload: int, first_call_taken: int, room: int) -> list[int]:
    """The weight part of each call: the first call's room less ``first_call_taken`` (wheels, manifest), then
    ``room`` a call, until ``payload`` bytes are placed."""
    if room <= first_call_taken:
        raise ValueError(f"a call has room for {room:,} bytes beside the working tree, the wheels take "
                         f"{first_call_taken:,}: make the working tree smaller")
    sizes, left, free = [], payload, room - first_call_taken
    while left > 0:
        sizes.append(min(left, free))
        left, free = left - sizes[-1], room
    return sizes


def prepare(weights: Path, wheels: list[Path], tree: int, out: Path = CARRY, limit: int = CALL_LIMIT,
            target: Path = WEIGHTS) -> list[Path]:
    """Write the call folders under ``out`` (replacing earlier ones) and return them, in call order: ``weights`` in
    parts, to be joined at ``target`` (relative to the checkout there), and ``wheels`` with the manifest in the
    first."""
    data = weights.read_bytes()
    sizes = part_sizes(len(data), sum(w.stat().st_size for w in wheels) + MANIFEST_BYTES, limit - tree - MARGIN)
    for old in out.glob("call-*"):
        shutil.rmtree(old)
    folders, offset = [], 0
    for index, size in enumerate(sizes):
        folders.append(out / f"call-{index + 1}")
        folders[-1].mkdir(parents=True)
        (folders[-1] / PART.format(index)).write_bytes(data[offset:offset + size])
        offset += size
    (folders[0] / "wheels").mkdir()
    for wheel in wheels:
        (folders[0] / "wheels" / wheel.name).write_bytes(wheel.read_bytes())
    manifest = {"weights": str(target), "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest(),
                "parts": len(sizes), "wheels": sorted(w.name for w in wheels)}
    (folders[0] / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return folders


def join(carry: Path = CARRY) -> Path:
    """Join the carried parts into the weights file the manifest names, checking that every part arrived and the
    sha256; the path written. Raises SystemExit naming what is missing or wrong."""
    manifest_path = carry / "call-1" / "manifest.json"
    if not manifest_path.is_file():
        raise SystemExit(f"{manifest_path} is missing: the first call's folder did not arrive (the machine was "
                         f"given back between calls?); start again from call 1")
    manifest = json.loads(manifest_path.read_text())
    parts = {p.name: p for p in carry.glob("call-*/fid.part-*")}
    names = [PART.format(i) for i in range(manifest["parts"])]
    missing = [name for name in names if name not in parts]
    if missing:
        raise SystemExit(f"weight parts missing: {', '.join(missing)} of {manifest['parts']} (calls 1-"
                         f"{manifest['parts']}, one part each, must each have carried their folder while the machine "
                         f"stayed warm)")
    data = b"".join(parts[name].read_bytes() for name in names)
    digest = hashlib.sha256(data).hexdigest()
    if len(data) != manifest["bytes"] or digest != manifest["sha256"]:
        raise SystemExit(f"joined weights: {len(data):,} bytes, sha256 {digest[:16]}...; expected "
                         f"{manifest['bytes']:,} bytes, {manifest['sha256'][:16]}...: a part is damaged")
    target = Path(manifest["weights"])
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(data)
    return target


def wheel_specs(pyproject: Path = ROOT / "pyproject.toml") -> list[str]:
    """``name==version`` of each wheel the machine lacks: pyproject.toml's pins of LACKING, and UNPINNED_WHEELS."""
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib

    pins = {dep.split("==")[0]: dep for dep in tomllib.loads(pyproject.read_text())["project"]["dependencies"]}
    return [pins[name] for name in LACKING] + list(UNPINNED_WHEELS)


def download_wheels(folder: Path) -> list[Path]:
    """The wheels the machine lacks, for its Python 3.12 (all pure Python), from PyPI or this machine's cache."""
    specs = wheel_specs()
    folder.mkdir(parents=True, exist_ok=True)
    subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:",
                    "--python-version", "3.12", "--implementation", "cp", "--platform", "manylinux2014_x86_64",
                    "-d", str(folder), *specs], check=True)
    wanted = {spec.split("==")[0].replace("-", "_") + "-" + spec.split("==")[1] for spec in specs}
    return sorted(w for w in folder.glob("*.whl") if "-".join(w.name.split("-")[:2]) in wanted)


LEASE_COMMAND = ('. benchmarks/gpu_lease_install.sh && PYTHON=python3 OUT_DIR=results/scratch/gpu-check {settings} '
                 'benchmarks/gpu_check.sh; cp results/scratch/gpu-check.tgz results/scratch/gpu-check/summary.md "$OUT/"')
GRID_FIRST = 'GRID_ARGS="--max-minutes 6" GRID_S=480 STAGES="grid report summary"'  # the grid sized to the lease
THEN = ('STAGES="sd_loop gpu_tests summary"',  # while device time is left, in this order
        'GUIDED_ARGS="--max-minutes 3" STAGES="guided_grid guided_report summary"')


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("action", choices=["prepare", "join"])
    args = parser.parse_args(argv)
    if args.action == "join":
        print(f"joined {join()}")
        return 0
    weights = ROOT / WEIGHTS
    if not weights.is_file():
        raise SystemExit(f"{WEIGHTS} is missing: run `make fid-weights` first")
    wheels = download_wheels(ROOT / "build" / "gpu-lease-wheels")
    folders = prepare(weights, wheels, tree_bytes(), ROOT / CARRY)
    print(f"{len(folders)} calls, back to back (the machine goes back 30 s after a call; .carry/ is git-ignored):")
    for folder in folders[:-1]:
        print(f'  run(carry=["{folder.relative_to(ROOT)}"], timeout_s=60, command="ls .carry/*")')
    print(f"  run(carry=[\"{folders[-1].relative_to(ROOT)}\"], timeout_s=600, command='"
          f"{LEASE_COMMAND.format(settings=GRID_FIRST)}')")
    print("then, while the machine is warm and device time is left, each into the same OUT_DIR:")
    for settings in THEN:
        print(f"  run(timeout_s=600, command='{LEASE_COMMAND.format(settings=settings)}')")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
