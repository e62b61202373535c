"""The run folder's rows: compaction into part files, the last written row of a config counting, and the machine a
row names."""
import platform
import subprocess
import sys

import pandas as pd
import pytest
import pyarrow.parquet as pq

from bench.run import store
from bench.spec.config import expand, parse_spec
from bench.run.sweep import run_sweep


def _row(config_id: str, status: str = "ok", created_at: str = "2026-01-01T00:00:00+00:00", nfe: int = 4) -> dict:
    return {"run_id": "r", "config_id": config_id, "status": status, "created_at": created_at, "nfe": nfe}


def _rows_folder(tmp_path):
    (tmp_path / "rows").mkdir()
    return tmp_path


def _ids(n):
    return [f"{i:016x}" for i in range(n)]


def test_compaction_keeps_every_row_once_and_removes_the_merged_files(tmp_path):
    _rows_folder(tmp_path)
    for config_id in _ids(5):
        store.write_row(tmp_path, _row(config_id))
    before = store.load_rows(tmp_path)
    part = store.compact(tmp_path)
    assert [p.name for p in (tmp_path / "rows").iterdir()] == [part.name]
    after = store.load_rows(tmp_path)
    pd.testing.assert_frame_equal(before, after)
    assert store.done_ids(tmp_path) == set(_ids(5)) and store.compact(tmp_path) is None


def test_a_kill_between_writing_the_part_and_deleting_the_files_duplicates_nothing(tmp_path):
    _rows_folder(tmp_path)
    for config_id in _ids(3):
        store.write_row(tmp_path, _row(config_id))
    loose = {p.name: p.read_bytes() for p in (tmp_path / "rows").iterdir()}
    store.compact(tmp_path)
    for name, data in loose.items():  # as if the kill came before the deletes
        (tmp_path / "rows" / name).write_bytes(data)
    table = store.load_rows(tmp_path)
    assert len(table) == 3 and table.config_id.is_unique
    assert len(pd.read_parquet(tmp_path / "rows")) == 6  # what a plain reader sees: each row twice, identical


def test_a_retried_config_counts_with_its_latest_row(tmp_path):
    _rows_folder(tmp_path)
    first, second = _ids(2)
    store.write_row(tmp_path, _row(first, "failed"))
    store.write_row(tmp_path, _row(second, "ok"))
    store.compact(tmp_path)
    assert store.done_ids(tmp_path, retry=("failed",)) == {second}
    store.write_row(tmp_path, _row(first, "ok", nfe=8))  # the retry, within the same second
    assert store.done_ids(tmp_path, retry=("failed",)) == {first, second}
    store.compact(tmp_path)  # now in two parts; the later part wins
    table = store.load_rows(tmp_path).set_index("config_id")
    assert len(table) == 2 and table.loc[first, "status"] == "ok" and table.loc[first, "nfe"] == 8


def test_a_sweep_compacts_what_it_wrote(tmp_path, monkeypatch):
    monkeypatch.setattr(store, "COMPACT_EVERY", 4)
    spec = parse_spec({"models": ["ring2d"], "solvers": ["euler", "heun", "ddim"], "steps": [2, 4, 8], "n_samples": 4,
                       "metrics": ["err_reference"], "time_limit_s": 0,
                       "reference_time_limit_s": 0})
    meta = store.open_run(tmp_path, spec)
    foreign = store.write_row(tmp_path, _row("f" * 16))  # another writer's row: not this sweep's to merge
    run_sweep(expand(spec), tmp_path, meta["run_id"], progress=False)
    files = sorted(p.name for p in (tmp_path / "rows").iterdir())
    parts = [name for name in files if name.startswith("part-")]
    assert len(parts) == 3 and foreign.name in files and len(files) == 4  # 9 rows: 4 + 4 + 1
    assert sum(pq.read_metadata(tmp_path / "rows" / name).num_rows for name in parts) == 9
    assert len(store.load_rows(tmp_path)) == 10
    result = subprocess.run([sys.executable, "-m", "bench", "compact", str(tmp_path)], capture_output=True, text=True)
    assert result.returncode == 0 and "loose ones merged into part-" in result.stdout
    assert len(list((tmp_path / "rows").iterdir())) == 4 and len(store.load_rows(tmp_path)) == 10


def test_a_reader_whose_listing_another_shard_compacts_away_still_reads_every_row(tmp_path, monkeypatch):
    """The race CI caught: shard B lists the folder, shard A merges B's listed files into a part and
    deletes them, B opens a deleted file. B must list again and find the rows in the part."""
    _rows_folder(tmp_path)
    for config_id in _ids(4):
        store.write_row(tmp_path, _row(config_id))
    list_files = store._row_files
    compacted_once = []

    def listing_then_compaction(run_dir):
        files = list_files(run_dir)
        if not compacted_once:
            compacted_once.append(store.compact(run_dir, files))  # what the other shard does right after the listing
        return files

    monkeypatch.setattr(store, "_row_files", listing_then_compaction)
    assert store.done_ids(tmp_path) == set(_ids(4)) and compacted_once[0] is not None
    assert sorted(store.load_rows(tmp_path).config_id) == _ids(4)


def test_a_folder_that_never_stops_changing_under_the_reader_raises(tmp_path, monkeypatch):
    _rows_folder(tmp_path)
    monkeypatch.setattr(store, "_row_files", lambda run_dir: [tmp_path / "rows" / f"{'0' * 16}.parquet"])
    with pytest.raises(FileNotFoundError):
        store.load_rows(tmp_path)


def test_a_cpu_rows_device_names_the_cpu_model(tmp_path):
    """Rows from two CPUs of one architecture must not look like one machine (compare would read their timings as a
    busy machine's shift): the device names the model Linux reports, else the architecture."""
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nvendor_id\t: AuthenticAMD\nmodel name\t: AMD EPYC 9654 96-Core Processor\n")
    assert store._cpu_model(cpuinfo) == "AMD EPYC 9654 96-Core Processor"
    assert store._cpu_model(tmp_path / "missing") == (platform.processor() or platform.machine())
    assert store.environment("cpu")["device"].startswith(f"cpu ({store._cpu_model()}, ")
