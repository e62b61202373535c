"""The grid runner end to end on small analytic problems: rows, NFE, pairing, errors, resume, shards."""
import json
import os
import signal
import subprocess
import sys
import time

import pandas as pd
import pytest
import torch

from bench.run import store
from bench.spec.config import expand, parse_spec, shard
from bench.models import CHECKPOINTS_DIR as MODELS_DIR, MODELS
from bench.run.runner import SweepCache
from bench.run.sweep import run_sweep
from solvers import SOLVERS
from solvers.schedules import VPLinear
from support import bench_cli


def _sweep(tmp_path, **spec):
    parsed = parse_spec({"name": "t", "n_samples": 32, "timing_repeats": 1, **spec}, str(tmp_path / "t.toml"))
    run_dir = tmp_path / "run"
    meta = store.open_run(run_dir, parsed)
    configs = expand(parsed)
    counts = run_sweep(configs, run_dir, meta["run_id"], progress=False)
    return configs, counts, store.load_rows(run_dir)


def test_rows_have_every_column_and_nfe_matches_the_registry(tmp_path):
    solvers = ["euler", "heun", "rk4", "dpm_solver_3", "dpmpp_2m", "unipc_3", "ddpm", "pc", "lms"]
    started = time.perf_counter()
    configs, counts, table = _sweep(tmp_path, models=["ring2d"], solvers=solvers, steps=[3, 6], etas=[0.0, 1.0],
                                    metrics=["err_reference"])
    elapsed = time.perf_counter() - started
    assert list(table.columns) == store.COLUMNS and len(table) == len(configs)
    ok = table[table.status == "ok"]
    assert len(ok) == sum(1 for c in configs if c.skip_reason is None)
    for row in ok.itertuples():
        assert row.nfe == SOLVERS[row.solver].nfe(row.steps), (row.solver, row.steps, row.nfe)
        assert row.samples_per_s * row.wall_s == pytest.approx(row.n_samples, rel=1e-9)
        assert row.forward_s > 0 and row.overhead_ratio * row.nfe * row.forward_s == pytest.approx(row.wall_s, rel=1e-9)
        assert row.batch_used == row.batch_size == 32 and row.dataset.startswith("synthetic: 8 Gaussians")
    assert 0 < ok.wall_s.sum() < elapsed  # sampling time only: warm-up, metrics and writing are outside it
    assert table.git_commit.notna().all() and table.torch_version.eq(torch.__version__).all()
    skipped = table[table.status == "skipped"]
    assert set(skipped.solver) == set(solvers) - {"euler"}  # euler runs both etas; the rest reject one
    assert skipped.message.str.contains("eta").all()


def test_short_solves_are_timed_several_times_and_rows_carry_their_provenance(tmp_path, monkeypatch):
    import diffusers

    from bench.run import sampling

    training = json.loads((MODELS_DIR / "fmnist_unet" / "training.json").read_text())
    _, _, table = _sweep(tmp_path, models=["ring2d", "fmnist_unet"], solvers=["heun", "ddim"], steps=[2, 3],
                         n_samples=2, metrics=["err_stepdoubling"], timing_repeats=3, time_limit_s=0)
    assert (table.status == "ok").all()
    assert (table.timing_repeats == 3).all() and (table.wall_s_std >= 0).all()  # every solve here is well under 1 s
    first = table.groupby(["model", "solver"]).head(1)  # a sweep warms a (model, solver, batch) up once
    assert (first.warmup_s > 0).all() and table.drop(first.index).warmup_s.isna().all()
    digests = table.groupby("model").weights_sha256.agg(set).to_dict()
    assert digests["fmnist_unet"] == {training["weights_sha256"]} and len(next(iter(digests["ring2d"]))) == 64
    assert (table.diffusers_version == diffusers.__version__).all() and table.torch_fidelity_version.notna().all()
    assert table.cuda_version.isna().all() and table.capture_s.isna().all()  # CPU rows: no CUDA, no graph capture
    assert (~table.tf32_matmul).all() and table.tf32_cudnn.all() and (table.matmul_precision == "highest").all()
    assert (table.threads == torch.get_num_threads()).all()
    monkeypatch.setattr(sampling, "REPEAT_BELOW_S", 0.0)  # as if every solve took longer: timed once
    _, _, once = _sweep(tmp_path / "once", models=["ring2d"], solvers=["heun"], steps=[2], n_samples=2,
                        metrics=["err_stepdoubling"], timing_repeats=3, time_limit_s=0)
    assert (once.timing_repeats == 1).all() and once.wall_s_std.isna().all()


def test_paired_x_T_same_seed_same_start_for_every_config():
    spec = parse_spec({"models": ["ring2d"], "solvers": ["heun", "rk4"], "steps": [2], "n_samples": 8, "seeds": [0, 1]})
    cache = SweepCache()
    starts = {(c.solver, c.seed): cache.prior(c, (2,), torch.device("cpu"), torch.float32) for c in expand(spec)}
    assert torch.equal(starts[("heun", 0)], starts[("rk4", 0)]) and not torch.equal(starts[("heun", 0)], starts[("heun", 1)])


def test_identical_maps_give_identical_errors(tmp_path):
    """ddim and dpm_solver_1 are the same map: paired x_T makes their error columns equal."""
    _, _, table = _sweep(tmp_path, models=["ring2d"], solvers=["ddim", "dpm_solver_1"], steps=[5], dtype="float64",
                         metrics=["err_reference", "sliced_wasserstein"])
    a, b = (table[table.solver == s].iloc[0] for s in ("ddim", "dpm_solver_1"))
    assert a.err_reference == pytest.approx(b.err_reference, rel=1e-9)
    assert a.sliced_wasserstein == pytest.approx(b.sliced_wasserstein, rel=1e-9)


@pytest.mark.parametrize("solver", ["euler", "heun"])
def test_stepdoubling_column_estimates_the_refined_solves_true_error(tmp_path, solver):
    """Single Gaussian (smooth, closed-form flow): the n-step row's estimate vs the 2n-step row's true error."""
    _, _, table = _sweep(tmp_path, models=["python:support:single_gaussian"], solvers=[solver], steps=[32, 64], dtype="float64",
                         metrics=["err_reference", "err_stepdoubling"], n_samples=64)
    by_steps = table.set_index("steps")
    ratio = by_steps.loc[32, "err_stepdoubling"] / by_steps.loc[64, "err_reference"]
    assert 0.67 < ratio < 1.5, ratio


def test_diverged_and_failed_rows_do_not_stop_the_sweep(tmp_path):
    models = ["python:support:broken_nan", "python:support:broken_raise", "ring2d"]
    _, counts, table = _sweep(tmp_path, models=models, solvers=["euler"], steps=[2], metrics=["sample_log_density"])
    status = dict(zip(table.model, table.status))
    assert status == dict(zip(models, ["diverged", "failed", "ok"]))
    assert table.set_index("model").loc[models[1], "message"] == "RuntimeError: network exploded"
    assert counts["ok"] == counts["diverged"] == counts["failed"] == 1


def test_analytic_metrics_are_filled_and_sensible(tmp_path):
    _, _, table = _sweep(tmp_path, models=["ring2d"], solvers=["heun"], steps=[2, 20], n_samples=200,
                         metrics=["sample_log_density", "frechet", "precision_recall", "sliced_wasserstein"])
    coarse, fine = table.sort_values("steps").itertuples()
    assert fine.sliced_wasserstein < coarse.sliced_wasserstein and fine.frechet < coarse.frechet
    # Mean exact log p_0 of the samples: E log p_0 under p_0 itself, up to sampling noise and solver error.
    ring = MODELS["ring2d"]()
    log_p = ring.log_prob(ring.sample(20_000, torch.Generator().manual_seed(1)))
    assert fine.sample_log_density == pytest.approx(log_p.mean().item(), abs=5 * log_p.std().item() / 200**0.5)
    # ... and why it is no quality measure: 2 Heun steps pull the samples onto the modes (under-dispersed),
    # which raises their mean log-density above that of exact samples.
    assert coarse.sample_log_density > fine.sample_log_density
    assert 0 <= fine.precision <= 1 and 0 <= fine.recall <= 1 and fine.precision > coarse.precision


SPEC_FOR_KILL = """
name = "kill"
models = ["digits"]
solvers = ["euler", "heun", "rk4", "dpmpp_2m", "ddim", "dpm_solver_2", "deis_3", "unipc_2"]
steps = [5, 10]
spacings = ["logsnr", "uniform"]
n_samples = 32
metrics = ["err_stepdoubling"]
timing_repeats = 1
time_limit_s = 0
"""


def test_resume_after_sigkill_runs_every_config_exactly_once(tmp_path):
    spec = tmp_path / "kill.toml"
    spec.write_text(SPEC_FOR_KILL)
    run_dir = tmp_path / "run"
    cmd = [sys.executable, "-m", "bench", "run", str(spec), "--out", str(run_dir), "--no-progress"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while time.time() < deadline and len(store.done_ids(run_dir) if (run_dir / "rows").exists() else ()) < 5:
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    partial = store.done_ids(run_dir)
    assert 5 <= len(partial) < 32, "the sweep should have been killed mid-way"
    finished = subprocess.run(cmd, capture_output=True, text=True, check=True)
    assert f"already_done {len(partial)}" in finished.stdout
    table = store.load_rows(run_dir)
    assert len(table) == 32 and table.config_id.is_unique
    assert not list((run_dir / "rows").glob(".tmp-*"))
    assert pd.read_parquet(run_dir / "rows").shape[0] == 32  # plain pandas reads the folder too


def test_shards_union_is_the_whole_run(tmp_path):
    raw = {"name": "s", "models": ["ring2d"], "solvers": ["euler", "heun", "ddpm"], "steps": [2, 4],
           "etas": [0.0, 1.0], "n_samples": 8, "metrics": ["sample_log_density"]}
    spec = parse_spec(raw, str(tmp_path / "s.toml"))
    configs = expand(spec)
    run_dir = tmp_path / "run"
    meta = store.open_run(run_dir, spec)
    for i in range(3):
        run_sweep(shard(configs, i, 3), run_dir, meta["run_id"], progress=False)
    table = store.load_rows(run_dir)
    assert sorted(table.config_id) == sorted(c.config_id for c in configs)


def test_resuming_with_another_spec_is_refused(tmp_path):
    run_dir = tmp_path / "run"
    store.open_run(run_dir, parse_spec({"models": ["ring2d"], "solvers": ["heun"], "steps": [2], "n_samples": 8}))
    with pytest.raises(ValueError, match="resume it with the same spec or use a new --out"):
        store.open_run(run_dir, parse_spec({"models": ["ring2d"], "solvers": ["rk4"], "steps": [2], "n_samples": 8}))


def test_cli_reports_spec_errors_without_writing(tmp_path):
    spec = tmp_path / "bad.toml"
    spec.write_text('models = ["ring2d"]\nsolvers = ["heum"]\nsteps = [2]\nn_samples = 4\n')
    result = subprocess.run([sys.executable, "-m", "bench", "run", str(spec), "--out", str(tmp_path / "run")],
                            capture_output=True, text=True)
    assert result.returncode == 2 and "unknown solver 'heum' (did you mean 'heun'?)" in result.stderr
    assert not (tmp_path / "run").exists()


def test_cli_list_names_everything():
    out = subprocess.run([sys.executable, "-m", "bench", "list"], capture_output=True, text=True, check=True).stdout
    for word in ("dpmpp_2m", "logsnr", "VPLinear", "digits", "sliced_wasserstein"):
        assert word in out


def test_run_json_records_the_spec(tmp_path):
    _sweep(tmp_path, models=["ring2d"], solvers=["heun"], steps=[2], metrics=["sample_log_density"])
    meta = json.loads((tmp_path / "run" / "run.json").read_text())
    assert meta["spec_name"] == "t" and len(meta["spec_hash"]) == 12 and meta["run_id"] == "run"


def test_schedules_used_are_the_registered_ones():
    assert isinstance(SweepCache().model(expand(parse_spec({"models": ["ring2d"], "solvers": ["heun"], "steps": [2],
                                                            "n_samples": 8}))[0])[1].schedule, VPLinear)


def test_rows_written_before_a_column_was_added_still_load(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    (tmp_path / "rows").mkdir()
    old = pa.table({"run_id": ["r"], "config_id": ["c"], "status": ["ok"], "nfe": [4.0], "loglik": [-1.5]})
    pq.write_table(old, tmp_path / "rows" / "c.parquet")
    table = store.load_rows(tmp_path)
    assert list(table.columns) == store.COLUMNS and table.reference_size.isna().all() and table.nfe.iloc[0] == 4.0
    assert table.sample_log_density.iloc[0] == -1.5  # renamed column, value kept


@pytest.mark.parametrize("args, message", [
    (["run", "bench/configs/default.toml", "--shard", "3/2"], "--shard i/n needs 0 <= i < n, got '3/2'"),
    (["run", "bench/configs/default.toml", "--shard", "a/b"], "--shard takes i/n with integers"),
    (["run", "bench/configs/default.toml", "--resume", "/nonexistent/run"], "not a run folder (no run.json)"),
    (["run", "bench/configs/default.toml", "--workers", "2"], "--workers only apply to --backend ray"),
    (["run", "bench/configs/default.toml", "--backend", "ray", "--workers", "0"], "--workers must be at least 1, got 0"),
    (["run", "bench/configs/default.toml", "--backend", "ray", "--address", "auto", "--workers", "2"],
     "--workers sizes a local Ray; a cluster joined with --address has its own workers"),
    (["run", "bench/configs/default.toml", "--threads", "0"], "--threads must be at least 1, got 0"),
    (["report", "/nonexistent/run"], "not a run folder (no run.json)"),
    (["compact", "/nonexistent/run"], "/nonexistent/run: not a run folder (no run.json)"),
    (["compare", "/nonexistent/base", "/nonexistent/head"], "neither a run folder"),
])
def test_cli_rejects_bad_arguments_with_a_clear_message(args, message):
    status, _, stderr = bench_cli(*args)
    assert status == 2 and message in stderr, stderr


@pytest.mark.skipif(torch.cuda.is_available(), reason="the machine has the CUDA device the spec asks for")
def test_a_grid_on_a_cuda_device_this_machine_lacks_is_refused_before_the_run_folder_exists(tmp_path):
    """Every row of it failed, after the run folder and its reference stage; then the run offered --retry-failed."""
    spec = tmp_path / "s.toml"
    spec.write_text('name = "s"\nmodels = ["ring2d"]\nsolvers = ["ddim"]\nsteps = [4]\nn_samples = 8\ndevice = "cuda"\n')
    for command in ("run", "plan"):
        status, _, stderr = bench_cli(command, str(spec), *(["--out", str(tmp_path / "run")] if command == "run" else []))
        assert status == 2 and stderr == (f"{command}: device 'cuda' asked for, but torch sees no CUDA device: every "
                                          f"configuration would fail (--device cpu runs the grid on this machine's CPU)\n")
    assert not (tmp_path / "run").exists()
    status, out, _ = bench_cli("run", str(spec), "--out", str(tmp_path / "run"), "--device", "cpu")
    assert status == 0 and "(already_done 0, ok 1)" in out
    status, out, _ = bench_cli("plan", str(spec), "--no-measure")  # counting needs no device
    assert status == 0 and "1 configurations: 1 runnable" in out


def test_batch_size_is_part_of_a_configs_identity():
    """Each batch draws its own Brownian path and adaptive step control takes norms over the batch."""
    base = {"models": ["ring2d"], "solvers": ["dopri5"], "tolerances": [1e-3], "n_samples": 32}
    ids = {b: expand(parse_spec({**base, "batch_size": b}))[0].config_id for b in (8, 32)}
    assert ids[8] != ids[32]


def test_out_of_memory_halves_the_batch_and_the_row_says_so(tmp_path):
    """A model that raises CUDA's OOM error above batch 8 (simulated on the CPU); at batch 1: status oom."""
    _, _, table = _sweep(tmp_path, models=["python:support:oom_above_8", "python:support:oom_always"],
                         solvers=["heun"], steps=[4], metrics=["err_reference"], batch_size=32)
    row, hopeless = table.set_index("model").loc[["python:support:oom_above_8", "python:support:oom_always"]].itertuples()
    assert row.status == "ok" and row.batch_size == 32 and row.batch_used == 8 and row.err_reference >= 0
    assert row.message == "out of memory at batch 32: ran in parts of 8"
    assert hopeless.status == "oom" and hopeless.message.startswith("out of memory at batch 1")


def test_spec_naming_the_old_loglik_metric_is_told_its_new_name():
    from bench.spec.config import SpecError

    with pytest.raises(SpecError, match="'loglik' was renamed 'sample_log_density'"):
        parse_spec({"models": ["ring2d"], "solvers": ["heun"], "steps": [2], "n_samples": 4, "metrics": ["loglik"]})


def test_the_reference_tolerance_reaches_the_reference_solve(tmp_path):
    """A loose reference is a worse reference: the rows say which one they were measured against."""
    tables = {tol: _sweep(tmp_path / str(tol), models=["ring2d"], solvers=["dpmpp_3m"], steps=[64], n_samples=32,
                          metrics=["err_reference"], reference_tolerance=tol, time_limit_s=0,
                          reference_time_limit_s=0)[2]
              for tol in (1e-8, 1e-3)}
    tight, loose = (tables[tol].iloc[0] for tol in (1e-8, 1e-3))
    assert tight.reference_tolerance == 1e-8 and loose.reference_tolerance == 1e-3
    assert loose.err_reference > 10 * tight.err_reference  # measured 4.3e-3 against 1.2e-4


@pytest.mark.parametrize("sigmas", [[80.0, 5.0, 0.5, 0.02], [80.0, 20.0, 5.0, 1.0, 0.5, 0.1, 0.02]],
                         ids=["3 steps", "6 steps"])  # more steps than the warm-up's short solve takes
def test_an_explicit_grid_runs_and_says_why_it_has_no_step_doubling_estimate(tmp_path, sigmas):
    _, _, table = _sweep(tmp_path, models=["ring2d"], solvers=["heun"], steps=[4], time_limit_s=0,
                         reference_time_limit_s=0, spacings=[{"sigmas": sigmas}],
                         metrics=["err_reference", "err_stepdoubling"])
    row = table.iloc[0]
    steps = len(sigmas) - 1
    assert row.status == "ok" and row.steps == steps and row.nfe == 2 * steps and row.err_reference > 0, row.message
    assert pd.isna(row.err_stepdoubling) and "an explicit grid has no 2n-step refinement" in row.message


def test_ray_backend_without_ray_says_how_to_install_it():
    hide_ray = ("import sys; sys.modules['ray'] = None; from bench.cli import main; "
                "sys.exit(main(['run', 'bench/configs/default.toml', '--backend', 'ray']))")
    result = subprocess.run([sys.executable, "-c", hide_ray], capture_output=True, text=True)
    assert result.returncode == 2 and "--backend ray needs Ray: make setup-ray" in result.stderr, result.stderr
