"""benchmarks/gpu_check_summary.py: the verdicts a GPU baseline's README is built from, on made-up stage files and on
the committed CPU-sized twin."""
import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[2]
_spec = importlib.util.spec_from_file_location("gpu_check_summary", ROOT / "benchmarks" / "gpu_check_summary.py")
summary_script = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(summary_script)

PLAN_GOAL = "plan's estimate within 25% of the real grid"


def _folder(tmp_path, grid_line, plan_minutes, grid_log=""):
    (tmp_path / "stages.txt").write_text(f"plan rc=0 40s\n{grid_line}\n")
    (tmp_path / "plan.log").write_text(f"measured: fmnist_unet: ...\nestimate: {plan_minutes} min\n  Inception: ...\n")
    (tmp_path / "grid.log").write_text(grid_log)
    return tmp_path


def _plan_verdict(folder):
    goals = summary_script.grid_goals(folder, summary_script.stages(folder), on_gpu=True)
    (goal,) = [g for g in goals if g[0] == PLAN_GOAL]
    return goal


@pytest.mark.parametrize("grid_line, plan_minutes, measured, verdict", [
    ("grid rc=0 400s", 6.0, "360 s estimated, 400 s ran (-10%)", "met"),
    ("grid rc=0 400s", 4.0, "240 s estimated, 400 s ran (-40%)", "missed"),
    # stopped at its limit: it would have run longer than 600 s, so an estimate of 300 s is more than 25% low ...
    ("grid rc=124 600s", 5.0, "300 s estimated; the grid stopped at 600 s, unfinished", "missed"),
    # ... but one of 540 s may or may not be: no verdict
    ("grid rc=124 600s", 9.0, "540 s estimated; the grid stopped at 600 s, unfinished",
     "n/a (the real time is unknown)"),
])
def test_the_plan_is_judged_against_the_grid_that_ran(tmp_path, grid_line, plan_minutes, measured, verdict):
    goal = _plan_verdict(_folder(tmp_path, grid_line, plan_minutes))
    assert (goal[1], goal[2]) == (measured, verdict)
    assert goal[3].startswith("plan.log line 'estimate:'")


@pytest.mark.parametrize("log, measured, n", [
    ("--max-minutes 7: estimated 9.5 min at N = 10000; running N = 7300 (estimated 6.9 min; FID and the other "
     "sample statistics are noisier and FID is biased upwards at smaller N)\n", "414 s estimated, 420 s ran (-1%)", 7300),
    ("--max-minutes 7: estimated 6.5 min at N = 10000: fits\n", "390 s estimated, 420 s ran (-7%)", 10000),
    ("--max-minutes 7: estimated 9.5 min at N = 10000; running N = 7300 (estimated 6.4 min, measured at that N)\n"
     "--max-minutes 7: 30 s spent planning, 6.5 min left\n", "414 s estimated, 420 s ran (-1%)", 7300),  # 384 + 30
])
def test_with_max_minutes_the_grid_is_judged_against_runs_own_estimate_at_the_n_it_ran(tmp_path, log, measured, n):
    goal = _plan_verdict(_folder(tmp_path, "grid rc=0 420s", 9.5, grid_log=log))
    assert (goal[1], goal[2]) == (measured, "met")
    assert goal[3].startswith(f"grid.log line '--max-minutes' (its estimate at N = {n})")


def test_the_committed_cpu_twin_summary_is_what_the_script_writes_from_its_files(monkeypatch):
    monkeypatch.chdir(ROOT)  # the summary names the folder as it was given: relative to the checkout
    folder = Path("results/baseline/cpu-twin")
    assert (folder / "summary.md").read_text() == summary_script.summary(folder)


def _guided_rows(run, scales_and_sizes):
    from bench.run import store
    from bench.spec.config import expand, parse_spec

    spec = parse_spec({"name": "g", "models": ["fmnist_cond_unet"], "solvers": ["ddim"], "steps": [5],
                       "guidance_scales": [1.0, 3.0], "n_samples": 8, "metrics": ["fid"],
                       "fid_reference": "fashion_mnist_test"})
    store.open_run(run, spec)
    for cfg, (status, n) in zip(expand(spec), scales_and_sizes):
        store.write_row(run, {"config_id": cfg.config_id, "run_id": "r", "status": status, "n_samples": n,
                              "guidance_scale": cfg.guidance_scale, "fid": 50.0 if status == "ok" else None})


@pytest.mark.parametrize("rows, measured, verdict", [
    ([("ok", 10000), ("ok", 10000)], "2 of 2 rows (scale 1: 1, scale 3: 1; 2 with FID, N = 10000); 150 s", "met"),
    ([("ok", 10000), ("failed", 10000)], "1 of 2 rows (scale 1: 1; 1 with FID, N = 10000); 150 s", "missed"),
    ([("ok", 10000), ("ok", 4000)], "1 of 2 rows (scale 1: 1; 2 with FID, N = 4000, N = 10000); 150 s", "missed"),
])
def test_the_class_conditional_grid_is_met_with_every_row_at_10000_and_two_scales(tmp_path, rows, measured, verdict):
    _guided_rows(tmp_path / "run-guided", rows)
    (tmp_path / "stages.txt").write_text("guided_grid rc=0 150s\n")
    goals = summary_script.grid_goals(tmp_path, summary_script.stages(tmp_path), on_gpu=True)
    (goal,) = [g for g in goals if g[0].startswith("the class-conditional model")]
    assert (goal[1], goal[2]) == (measured, verdict)
