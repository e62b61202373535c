"""benchmarks/gpu_lease.py: the FID weights and wheels split into one folder per device call, each call within what
it may carry beside the working tree, and joined back to the same bytes on the machine, or refused naming what is
missing or damaged."""
import hashlib
import importlib.util
import json
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[2]
_spec = importlib.util.spec_from_file_location("gpu_lease", ROOT / "benchmarks" / "gpu_lease.py")
lease = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(lease)

TREE = 3_000  # bytes the working tree is made to take in these tests
LIMIT = TREE + lease.MARGIN + 6_000  # so each call has 6,000 bytes of room


def _payload(tmp_path, size=20_000):
    weights = tmp_path / "weights.pth"
    weights.write_bytes(bytes(range(256)) * (size // 256) + b"x" * (size % 256))
    wheel = tmp_path / "wheels" / "tiny-1.0-py3-none-any.whl"
    wheel.parent.mkdir()
    wheel.write_bytes(b"w" * 700)
    return weights, [wheel]


def _prepared(tmp_path):
    weights, wheels = _payload(tmp_path)
    folders = lease.prepare(weights, wheels, TREE, tmp_path / ".carry", LIMIT, target=Path("fid/weights.pth"))
    return weights, folders


def test_each_call_carries_no_more_than_its_room_and_every_byte_once(tmp_path):
    weights, folders = _prepared(tmp_path)
    sizes = [sum(f.stat().st_size for f in folder.rglob("*") if f.is_file()) for folder in folders]
    assert all(TREE + size <= LIMIT - lease.MARGIN for size in sizes)
    assert len(folders) == 5  # 20,000 bytes: 6,000 less the wheel and manifest's 4,796, then 6,000 a call
    parts = sorted(p for folder in folders for p in folder.glob("fid.part-*"))
    assert b"".join(p.read_bytes() for p in parts) == weights.read_bytes()
    manifest = json.loads((folders[0] / "manifest.json").read_text())
    assert manifest["parts"] == len(parts) and manifest["wheels"] == ["tiny-1.0-py3-none-any.whl"]
    assert manifest["sha256"] == hashlib.sha256(weights.read_bytes()).hexdigest()
    assert lease.prepare(weights, [], TREE, tmp_path / ".carry", LIMIT + 6_000)[-1].name == "call-3"
    assert sorted(p.name for p in (tmp_path / ".carry").iterdir()) == ["call-1", "call-2", "call-3"]  # none left over


def test_the_parts_join_to_the_weights_where_the_manifest_says(tmp_path, monkeypatch):
    weights, _ = _prepared(tmp_path)
    monkeypatch.chdir(tmp_path)
    assert lease.join(Path(".carry")) == Path("fid/weights.pth")
    assert (tmp_path / "fid" / "weights.pth").read_bytes() == weights.read_bytes()


def test_a_missing_or_damaged_part_is_named_and_nothing_is_written(tmp_path, monkeypatch):
    _, folders = _prepared(tmp_path)
    monkeypatch.chdir(tmp_path)
    damaged = folders[2] / "fid.part-002"
    damaged.write_bytes(b"y" + damaged.read_bytes()[1:])
    with pytest.raises(SystemExit, match="a part is damaged"):
        lease.join(Path(".carry"))
    damaged.unlink()
    with pytest.raises(SystemExit, match=r"weight parts missing: fid\.part-002 of 5"):
        lease.join(Path(".carry"))
    for file in folders[0].rglob("*"):
        if file.is_file():
            file.unlink()
    with pytest.raises(SystemExit, match="call-1/manifest.json is missing"):
        lease.join(Path(".carry"))
    assert not (tmp_path / "fid").exists()


def test_a_call_without_room_for_the_wheels_is_refused(tmp_path):
    weights, wheels = _payload(tmp_path)
    with pytest.raises(ValueError, match="make the working tree smaller"):
        lease.prepare(weights, wheels, TREE, tmp_path / ".carry", TREE + lease.MARGIN + 4_000)


def test_the_wheels_are_pyprojects_pins_of_what_the_machine_lacks():
    from bench.spec.config import tomllib

    pinned = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    specs = lease.wheel_specs()
    assert [s.split("==")[0] for s in specs] == [*lease.LACKING, "trampoline"]
    assert all(s in pinned for s in specs[:-1]) and all("==" in s for s in specs)


def test_the_tree_is_tracked_files_and_untracked_ones_git_does_not_ignore(tmp_path):
    def git(*args):
        subprocess.run(["git", *args], cwd=tmp_path, check=True, capture_output=True)

    git("init", "-q")
    (tmp_path / ".gitignore").write_text("ignored/\n")  # 9 bytes, untracked
    (tmp_path / "tracked.txt").write_bytes(b"t" * 100)
    (tmp_path / "new.txt").write_bytes(b"n" * 30)
    (tmp_path / "ignored").mkdir()
    (tmp_path / "ignored" / "big.bin").write_bytes(b"b" * 5000)
    git("add", "tracked.txt")
    assert lease.tree_bytes(tmp_path) == 100 + 30 + 9


def test_the_install_script_stops_when_the_first_call_did_not_arrive(tmp_path):
    (tmp_path / "benchmarks").mkdir()
    for name in ("gpu_lease.py", "gpu_lease_install.sh"):
        (tmp_path / "benchmarks" / name).symlink_to(ROOT / "benchmarks" / name)
    done = subprocess.run(["bash", "-c", ". benchmarks/gpu_lease_install.sh; echo rc=$?"], cwd=tmp_path,
                          capture_output=True, text=True)
    assert "rc=1" in done.stdout and "call-1/manifest.json is missing" in done.stderr
