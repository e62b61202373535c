"""A sweep that never hangs, never loses or hides a row: time limits, adaptive solvers that end,
out of memory, retries, resumes across commits, concurrent shards, and what the cache keeps."""
import dataclasses
import json
import os
import subprocess
import sys
import time

import pandas as pd
import pytest
import torch

from bench import files
from bench.run import references, store
from bench.spec.config import expand, parse_spec, shard
from bench.run.policy import ExecutionPolicy
from bench.analysis.report import build_report
from bench.run.runner import SweepCache, partner_keys, run_config
from bench.run.sweep import run_sweep
from solvers import SolverDiverged, sample
from solvers.schedules import VPLinear
from solvers.spacing import timesteps
from support import bench_cli, prior_sample, single_gaussian


def _sweep(tmp_path, retry=(), **spec):
    parsed = parse_spec({"name": "t", "n_samples": 16, "timing_repeats": 1, **spec}, str(tmp_path / "t.toml"))
    run_dir = tmp_path / "run"
    meta = store.open_run(run_dir, parsed)
    counts = run_sweep(expand(parsed), run_dir, meta["run_id"], progress=False, retry=retry)
    return counts, store.load_rows(run_dir)


def test_a_config_that_hangs_is_stopped_and_the_sweep_goes_on(tmp_path):
    limit = 3.0
    started = time.monotonic()
    counts, table = _sweep(tmp_path, models=["python:support:sleeps_forever", "ring2d"], solvers=["euler", "heun"],
                           steps=[2], metrics=["err_reference"], time_limit_s=limit, reference_time_limit_s=limit)
    elapsed = time.monotonic() - started
    by_model = table.groupby("model").status.agg(set).to_dict()
    assert by_model == {"python:support:sleeps_forever": {"timeout"}, "ring2d": {"ok"}}
    hung = table[table.status == "timeout"]
    assert hung.message.str.fullmatch(r"stopped after \d+\.\d s: time_limit_s = 3").all()
    assert elapsed < 3 * (limit + 10), elapsed  # its reference and two configs, each stopped within limit + 10 s


def test_time_limit_is_checked_before_compute():
    from bench.spec.config import SpecError

    with pytest.raises(SpecError, match="key 'time_limit_s' must be a number of seconds >= 0, got -1"):
        parse_spec({"models": ["ring2d"], "solvers": ["heun"], "steps": [2], "n_samples": 4, "time_limit_s": -1})


@pytest.mark.parametrize("name", ["step_doubling_euler", "step_doubling_heun", "dopri5", "bosh3", "adaptive_heun",
                                  "dopri8"])
def test_adaptive_solvers_end_on_a_model_that_returns_nan(name):
    model = single_gaussian()
    diffusion = model.model(VPLinear())
    diffusion.net = lambda x, t: torch.full_like(x, float("nan"))
    with pytest.raises(SolverDiverged, match="at t = 1 .*NaN or inf|non-finite .* at t = 1"):
        sample(name, diffusion, prior_sample(VPLinear(), 4, 2), timesteps("uniform", 1, VPLinear()), rtol=1e-3,
               atol=1e-3)
    assert diffusion.nfe <= 6


@pytest.mark.parametrize("name", ["step_doubling_heun", "dopri5"])
def test_adaptive_solvers_stop_at_their_evaluation_budget(name):
    diffusion = single_gaussian().model(VPLinear())
    with pytest.raises(SolverDiverged, match="more than max_nfe = 50 evaluations"):
        sample(name, diffusion, prior_sample(VPLinear(), 4, 2), timesteps("uniform", 1, VPLinear()), rtol=1e-12,
               atol=1e-12, max_nfe=50)
    assert diffusion.nfe <= 50 + 14  # at most one more step's evaluations


def test_step_doubling_stops_below_its_minimum_step():
    diffusion = single_gaussian().model(VPLinear())
    with pytest.raises(SolverDiverged, match="step size .* below min_step"):
        sample("step_doubling_euler", diffusion, prior_sample(VPLinear(), 4, 2), timesteps("uniform", 1, VPLinear()),
               rtol=1e-14, atol=1e-14, min_step=1e-3)


def test_nan_model_rows_are_diverged_with_where_it_happened(tmp_path):
    _, table = _sweep(tmp_path, models=["python:support:broken_nan"], solvers=["step_doubling_heun", "dopri5"],
                      tolerances=[1e-3], metrics=["err_reference"])
    assert set(table.status) == {"diverged"} and table.message.str.contains("at t = 1").all()


def test_retry_failed_runs_only_the_unfinished_configs_again(tmp_path):
    spec = {"models": ["python:support:broken_raise", "ring2d"], "solvers": ["heun"], "steps": [2],
            "metrics": ["err_reference"]}
    _sweep(tmp_path, **spec)
    counts, table = _sweep(tmp_path, **spec)
    assert counts == {"already_done": 2}
    counts, table = _sweep(tmp_path, retry=store.RETRYABLE, **spec)
    assert counts == {"already_done": 1, "failed": 1} and len(table) == 2


def test_a_timed_out_config_runs_again_under_the_longer_limit_the_resumed_spec_gives_it(tmp_path):
    """The run said how to rerun what timed out, and then refused the spec with the longer limit (another hash);
    the time limits define no result, so they may change on resume, the change in run.json and the report. Any
    other change is refused, naming the key."""
    spec, run_dir = tmp_path / "s.toml", tmp_path / "run"
    text = ('models = ["python:support:sleeps_forever", "ring2d"]\nsolvers = ["euler"]\nsteps = [2]\n'
            'n_samples = 4\nmetrics = []\ntime_limit_s = {}\n')
    spec.write_text(text.format(1))
    status, out, _ = bench_cli("run", str(spec), "--out", str(run_dir))
    assert status == 0 and (f"run again what did not finish (a timeout: raise time_limit_s in the spec first): "
                            f"python -m bench run {spec} --out {run_dir} --retry-failed") in out
    spec.write_text("# longer\n" + text.format(2))
    status, out, _ = bench_cli("run", str(spec), "--out", str(run_dir), "--retry-failed")
    assert status == 0 and "(already_done 1, timeout 1)" in out
    assert store.load_rows(run_dir).set_index("model").message["python:support:sleeps_forever"].endswith(
        "time_limit_s = 2")
    amendment, = json.loads((run_dir / "run.json").read_text())["amendments"]
    assert amendment["changed"] == {"time_limit_s": [1, 2]} and (run_dir / "spec.toml").read_text() == spec.read_text()
    spec.write_text(text.format(2) + "# a comment\n")  # the text alone: resumed, nothing to say but that
    status, out, _ = bench_cli("run", str(spec), "--out", str(run_dir))
    assert status == 0 and "(already_done 2)" in out
    report = build_report([run_dir])[0].read_text()
    assert "with time_limit_s 1 -> 2 (the rows before it: spec hash" in report
    assert "with no value changed (the spec's layout or comments) (the rows before it" in report
    spec.write_text(text.format(2).replace("[2]", "[3]"))
    status, _, err = bench_cli("run", str(spec), "--out", str(run_dir))
    assert status == 2 and err.strip().endswith("which changes 'steps': [2] -> [3]: resume it with the same spec (only "
                                                "time_limit_s and reference_time_limit_s may change) or use a new --out")


def test_resume_on_another_commit_warns_and_the_report_says_rows_mix_commits(tmp_path):
    spec_path = tmp_path / "t.toml"
    spec_path.write_text('models = ["ring2d"]\nsolvers = ["heun", "euler"]\nsteps = [2]\nn_samples = 8\n'
                         'metrics = ["err_reference"]\ntime_limit_s = 0\nreference_time_limit_s = 0\n')  # in-process
    run_dir = tmp_path / "run"
    command = [sys.executable, "-m", "bench", "run", str(spec_path), "--out", str(run_dir), "--no-progress"]
    subprocess.run(command, check=True, capture_output=True)
    meta = json.loads((run_dir / "run.json").read_text())
    (run_dir / "run.json").write_text(json.dumps({**meta, "git_commit": "0123456789abcdef"}))
    first = next((run_dir / "rows").glob("*.parquet"))
    first.unlink()
    resumed = subprocess.run(command, check=True, capture_output=True, text=True)
    assert "was started at commit 0123456789, this checkout is at" in resumed.stderr
    older = store.load_rows(run_dir).iloc[:1].assign(git_commit="0123456789abcdef")
    store.write_row(run_dir, {k: (None if v != v else v) for k, v in older.iloc[0].to_dict().items()})
    markdown = build_report([run_dir])[0].read_text()
    assert "these rows come from more than one commit" in markdown and "0123456789: 1 rows" in markdown


def test_two_shards_started_together_finish_and_equal_the_serial_run(tmp_path):
    spec_path = tmp_path / "s.toml"
    spec_path.write_text('name = "s"\nmodels = ["ring2d", "gmm_hd"]\nsolvers = ["heun", "euler", "ddim", "dpmpp_2m"]\n'
                         'steps = [2, 4, 8]\nn_samples = 16\nmetrics = ["err_reference"]\ntime_limit_s = 0\n'
                         'reference_time_limit_s = 0\n')  # in-process: the shards' concurrency is the point
    shared, serial = tmp_path / "shared", tmp_path / "serial"
    base = [sys.executable, "-m", "bench", "run", str(spec_path), "--no-progress"]
    shards = [subprocess.Popen([*base, "--out", str(shared), "--shard", f"{i}/2"], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True) for i in range(2)]
    outputs = [p.communicate(timeout=300) for p in shards]
    assert [p.returncode for p in shards] == [0, 0], outputs
    subprocess.run([*base, "--out", str(serial)], check=True, capture_output=True)
    together, alone = (store.load_rows(d).set_index("config_id").sort_index() for d in (shared, serial))
    assert list(together.index) == list(alone.index) and len(together) == 24
    assert (together.err_reference == alone.err_reference).all()  # deterministic solvers: same numbers
    assert not list(shared.glob("**/.tmp-*"))


def test_opening_a_run_keeps_live_writers_temp_files_and_removes_dead_ones(tmp_path):
    spec = parse_spec({"models": ["ring2d"], "solvers": ["heun"], "steps": [2], "n_samples": 8})
    store.open_run(tmp_path, spec)
    live = files._temp_path(tmp_path / "rows" / "a.parquet")  # this process: alive
    dead_process = subprocess.Popen([sys.executable, "-c", "pass"])
    dead_process.wait()
    dead = live.with_name(live.name.replace(f"-{os.getpid()}-", f"-{dead_process.pid}-"))
    for path in (live, dead):
        path.write_bytes(b"partial")
    store.open_run(tmp_path, spec)
    assert live.exists() and not dead.exists()


def test_the_cache_keeps_only_step_doubling_partners_and_drops_them_once_used():
    spec = parse_spec({"models": ["ring2d"], "solvers": ["heun", "euler"], "steps": [2, 4, 8], "n_samples": 8,
                       "metrics": ["err_stepdoubling"], "time_limit_s": 0,
                       "reference_time_limit_s": 0})
    configs = expand(spec)
    cache = SweepCache(needed_partners=partner_keys(configs))
    assert len(cache.needed_partners) == 6  # every config's 2n solve; 8 -> 16 is never run as a config
    for cfg in configs:  # larger step counts first, as expand orders them
        assert run_config(cfg, cache, {}, "r")["status"] == "ok"
        assert all(key in cache.needed_partners for key in cache.finals)
        assert all(value.device.type == "cpu" for value in cache.finals.values())
    assert cache.finals == {}  # 4 and 2 took the 8 and 4 solves; nothing is left behind


def test_a_failed_reference_solve_is_remembered_and_the_rows_keep_their_other_numbers(tmp_path):
    spec = parse_spec({"models": ["python:support:fails_in_float64"], "solvers": ["heun", "euler"], "steps": [4],
                       "n_samples": 8, "metrics": ["err_reference", "sliced_wasserstein"], "time_limit_s": 0})
    cache = SweepCache()
    rows = [run_config(cfg, cache, {}, "r") for cfg in expand(spec)]
    assert [r["status"] for r in rows] == ["ok", "ok"] and all(r["sliced_wasserstein"] >= 0 for r in rows)
    assert all("no err_reference: the reference solve failed (RuntimeError: float64" in r["message"] for r in rows)
    assert all(isinstance(v, references.Failure) for v in cache.references.values()) and len(cache.references) == 1


def test_a_model_that_cannot_be_built_fails_its_reference_and_rows_saying_why_and_the_worker_lives_on(tmp_path):
    """The reference stage in a worker process: building the model raised there, which ended the worker, and the
    death was taken for a timeout (the record said "stopped after 0.0 s: reference_time_limit_s = 3600")."""
    spec = parse_spec({"models": ["python:support:fails_to_build", "ring2d"], "solvers": ["euler"], "steps": [4],
                       "n_samples": 8, "metrics": ["err_reference"], "time_limit_s": 30, "reference_time_limit_s": 30},
                      str(tmp_path / "s.toml"))
    run_dir = tmp_path / "run"
    run_sweep(expand(spec), run_dir, store.open_run(run_dir, spec)["run_id"], progress=False)
    records = sorted(_reference_records(run_dir).values(), key=lambda r: r["key"][0])
    assert [(r["key"][0], r["status"]) for r in records] == [("python:support:fails_to_build", "failed"),
                                                              ("ring2d", "ok")]
    assert records[0]["message"] == "RuntimeError: weights not found"
    rows = store.load_rows(run_dir).set_index("model")
    assert rows.loc["python:support:fails_to_build", "status"] == "failed"
    assert "RuntimeError: weights not found" in rows.loc["python:support:fails_to_build", "message"]
    assert rows.loc["ring2d", "status"] == "ok" and rows.loc["ring2d", "err_reference"] > 0


def test_a_metric_that_raises_fails_its_row_naming_it_and_keeps_what_was_measured_before(tmp_path):
    """FID's weights unreadable: the row fails, as it did, but says which metric raised and keeps its timing and the
    figures before it (err_reference was lost with it)."""
    (tmp_path / "garbage.pth").write_bytes(b"not a model" * 100)
    spec = parse_spec({"models": ["digits"], "solvers": ["ddim"], "steps": [4], "n_samples": 16, "reference_size": 16,
                       "fid_weights": str(tmp_path / "garbage.pth"), "metrics": ["err_reference", "fid"],
                       "time_limit_s": 0, "reference_time_limit_s": 0})
    (row,) = [run_config(cfg, SweepCache(), {}, "r") for cfg in expand(spec)]
    assert row["status"] == "failed" and row["message"].startswith("metric fid: UnpicklingError: ")
    assert row["err_reference"] > 0 and row["wall_s"] > 0 and row.get("fid") is None


def test_a_worker_that_dies_is_reported_dead_not_timed_out():
    """A job that raises in the worker ends it; its closed pipe is seen before it has exited, which was taken for
    a timeout after 0.0 s about as often as not."""
    from bench.run.worker import ConfigWorker

    worker = ConfigWorker(ExecutionPolicy())
    try:
        outcomes = [worker.run(("config", None, {}, "r"), 30) for _ in range(4)]
    finally:
        worker.stop()
    assert outcomes == [("died", 1)] * 4


def _reference_records(run_dir):
    return {p.name: json.loads(p.read_text()) for p in (run_dir / "references").glob("*.json")}


def test_a_slow_reference_times_out_once_in_its_own_stage_and_every_row_that_needed_it_says_so(tmp_path):
    """Before the stage, each config that needed the slow reference solved it inside its own time limit, was
    killed, and the next one did the same: every row timed out, blaming itself."""
    spec = parse_spec({"models": ["python:support:sleeps_in_float64"], "solvers": ["heun", "euler", "ddim"],
                       "steps": [4], "n_samples": 8, "metrics": ["err_reference", "sliced_wasserstein"],
                       "time_limit_s": 30, "reference_time_limit_s": 2}, str(tmp_path / "s.toml"))
    run_dir = tmp_path / "run"
    started = time.monotonic()
    run_sweep(expand(spec), run_dir, store.open_run(run_dir, spec)["run_id"], progress=False)
    rows = store.load_rows(run_dir)
    assert time.monotonic() - started < 25  # one 2 s stop, not one per config
    assert (rows.status == "ok").all() and rows.err_reference.isna().all() and (rows.sliced_wasserstein > 0).all()
    assert rows.message.str.contains(r"no err_reference: the reference solve timed out \(stopped after 2\.\d s: "
                                     r"reference_time_limit_s = 2\)").all(), rows.message.tolist()
    records = _reference_records(run_dir)
    assert [r["status"] for r in records.values()] == ["timeout"]


def test_resumed_and_sharded_runs_reuse_the_stored_reference(tmp_path):
    spec = parse_spec({"models": ["ring2d"], "solvers": ["heun", "euler", "ddim", "dpmpp_2m"], "steps": [4],
                       "n_samples": 8, "metrics": ["err_reference"], "time_limit_s": 0}, str(tmp_path / "s.toml"))
    run_dir = tmp_path / "run"
    run_id = store.open_run(run_dir, spec)["run_id"]
    configs = expand(spec)
    run_sweep(shard(configs, 0, 2), run_dir, run_id, progress=False)
    first = _reference_records(run_dir)
    assert [r["status"] for r in first.values()] == ["ok"]
    run_sweep(shard(configs, 1, 2), run_dir, run_id, progress=False)  # the other shard: the reference is there
    run_sweep(configs, run_dir, run_id, progress=False, retry=("ok",))  # a rerun of every config
    assert _reference_records(run_dir) == first  # never solved again (its record keeps its time)
    rows = store.load_rows(run_dir)
    assert len(rows) == 4 and (rows.err_reference > 0).all()


def test_threads_reach_the_worker_processes_and_eager_rows_do_not_depend_on_the_order_configs_run_in(tmp_path):
    """The sweep's policy is set in the worker processes too (time-limited configs run there): every row records one
    thread, and the same configs run in the reverse order give the same numbers to the last bit."""
    base = {"models": ["gmm_hd"], "solvers": ["heun", "ddim", "dpmpp_2m", "euler"], "steps": [4, 8],
            "etas": [0.0, 1.0], "n_samples": 32, "metrics": ["err_reference", "frechet", "sliced_wasserstein"],
            "time_limit_s": 30, "threads": 1}
    tables = []
    for name, order in (("forward", 1), ("reverse", -1)):
        spec = parse_spec({**base, "name": name}, str(tmp_path / f"{name}.toml"))
        configs = expand(spec)[::order]
        in_process = [c for c in configs if c.solver == "euler"]  # a 0 s limit runs these in the sweep's process
        configs = [dataclasses.replace(c, time_limit_s=0.0) if c in in_process else c for c in configs]
        run_dir = tmp_path / name
        run_sweep(configs, run_dir, store.open_run(run_dir, spec)["run_id"], progress=False,
                  execution_policy=ExecutionPolicy.from_spec(spec.values))
        tables.append(store.load_rows(run_dir).sort_values("config_id").reset_index(drop=True))
    forward, reverse = tables
    ok = forward.status == "ok"
    assert ok.sum() == 12 and (forward.threads == 1).all() and (reverse.threads == 1).all()
    for column in ("err_reference", "frechet", "sliced_wasserstein", "nfe"):
        pd.testing.assert_series_equal(forward[column], reverse[column])


def test_a_script_without_a_main_guard_can_run_a_sweep(tmp_path):
    """Worker processes must not re-run the user's script (multiprocessing would, as __mp_main__)."""
    script = tmp_path / "sweep.py"
    script.write_text(
        "from bench.run import store\n"
        "from bench.spec.config import expand, parse_spec\n"
        "from bench.run.sweep import run_sweep\n"
        f"spec = parse_spec({{'models': ['ring2d'], 'solvers': ['heun', 'ddim'], 'steps': [2], 'n_samples': 4, "
        f"'metrics': ['err_reference']}}, {str(tmp_path / 's.toml')!r})\n"
        f"run_dir = {str(tmp_path / 'run')!r}\n"
        "print(run_sweep(expand(spec), run_dir, store.open_run(run_dir, spec)['run_id'], progress=False))\n")
    result = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120,
                            cwd=os.getcwd(), env={**os.environ, "PYTHONPATH": os.getcwd()})
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "{'already_done': 0, 'ok': 2}"
