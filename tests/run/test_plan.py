"""python -m bench plan: the counts of what a sweep computes, exact from the spec and the registry."""
import re
import subprocess
import sys

import pytest
import torch

from bench.run import store
from bench.run.plan import Plan, make_plan
from bench.spec.config import expand, parse_spec
from support import bench_cli


def _plan(measure=False, fan_out=None, **spec):
    return make_plan(expand(parse_spec({"name": "p", "n_samples": 10, "timing_repeats": 1, "time_limit_s": 0, **spec})),
                     measure=measure, fan_out=fan_out)


def test_solves_warm_ups_and_partners_are_counted_per_image_forward():
    plan = _plan(models=["ring2d"], solvers=["ddim", "heun", "ddpm"], steps=[4, 8], etas=[0.0],
                 metrics=["err_stepdoubling"])
    # ddim 4 + 8 steps, heun 2 NFE per step; ddpm is skipped (eta is fixed at 1)
    assert (plan.configs, plan.skipped) == (6, 2)
    assert plan.forwards["solves"] == 10 * (4 + 8 + 2 * 4 + 2 * 8)
    assert plan.forwards["warm-ups"] == 10 * (3 + 2 * 3)  # once per solver, WARM_UP_STEPS steps
    assert plan.forwards["step-doubling partners"] == 10 * 2 * (8 + 2 * 8)  # only the 8-step configs lack their 2n
    assert plan.reference_solves == 0 and plan.inception_images == 0


def test_guided_evaluations_count_two_passes_and_cfg_pp_always_does():
    plan = _plan(models=["gmm_classes"], solvers=["ddim", "euler_cfg_pp"], steps=[5], guidance_scales=[1, 3],
                 metrics=["err_reference"])
    # ddim: 5 NFE x (1 pass at scale 1 + 2 at scale 3); euler_cfg_pp: 2 passes at both scales
    assert plan.forwards["solves"] == 10 * 5 * (1 + 2 + 2 + 2)
    assert plan.reference_solves == 2  # one guided reference solve per scale


def test_the_estimate_is_the_measured_costs_times_the_counts():
    plan = _plan(measure=True, models=["ring2d"], solvers=["dpmpp_2m"], steps=[5, 10], metrics=["err_reference"])
    (measured,) = plan.measured.values()
    assert re.search(r"[0-9.]+ (us|ms) per image-forward", measured) and "reference solve" in measured
    assert plan.forwards["reference solves"] > 0 and plan.total_s > 0
    assert set(plan.seconds) >= {"network: solves", "network: reference solves", "harness per configuration"}


def test_the_one_off_costs_of_compile_and_cuda_graph_are_named_as_left_out():
    assert _plan(models=["ring2d"], solvers=["ddim"], steps=[4]).uncounted == []
    plan = _plan(models=["ring2d"], solvers=["ddim"], steps=[4], exec_modes=["eager", "compile"])
    assert plan.uncounted == ["torch.compile's compilation, once per model and batch shape (rows: warmup_s)"]
    plan.measured, plan.seconds = {"ring2d": "ring2d: 1 ms per image-forward"}, {"network: solves": 60.0}
    assert plan.lines()[-1] == "not in the estimate: " + plan.uncounted[0]


def test_the_plan_command_prints_n_and_refuses_a_bad_spec(tmp_path):
    spec = tmp_path / "s.toml"
    spec.write_text('name = "s"\nmodels = ["ring2d"]\nsolvers = ["ddim"]\nsteps = [4]\nn_samples = 8\n')
    out = subprocess.run([sys.executable, "-m", "bench", "plan", str(spec), "--no-measure"], capture_output=True,
                         text=True, check=True).stdout
    assert "N = 8 samples per configuration" in out and "1 configurations: 1 runnable" in out
    status, out, stderr = bench_cli("plan", str(spec))
    assert status == 0 and "estimate:" in out  # what it measures, and how long that took, said as it goes
    assert re.fullmatch(r"plan: ring2d: timing its forward at batch 8, a reference solve of 4 samples; then running "
                        r"configurations in full as the sweep does, the cheapest \(ddim, 4 steps, N = 8\) first \.\.\.\n"
                        r"plan: ring2d: measured in \d+ s\n", stderr), stderr
    spec.write_text('name = "s"\nmodels = ["ring2d"]\nsolvers = ["ddim"]\nsteps = [4]\nn_samples = 8\nguidance_scales = [2]\n')
    status, _, stderr = bench_cli("plan", str(spec))
    assert status == 2 and "'ring2d' is unconditional" in stderr
    status, _, stderr = bench_cli("plan", str(spec), "--threads", "0")
    assert status == 2 and "--threads must be at least 1, got 0" in stderr


def test_each_model_is_timed_at_its_own_speed_and_only_image_models_count_their_image_metrics(monkeypatch):
    from bench.run import plan as plan_module

    speeds = {"ring2d": {"image_forward_s": 0.5, "reference_nfe": 0, "image_side": 0},
              "digits": {"image_forward_s": 0.0, "reference_nfe": 0, "image_side": 8,
                         "inception_image_s": 0.01},
              "fmnist_unet": {"image_forward_s": 0.0, "reference_nfe": 0, "image_side": 32,
                              "inception_image_s": 0.01}}
    fitted = {"ring2d": {"solve_forward_s": 1.0, "harness_s": 2.0, "setup_s": 0.5,
                         "calibrated_on": "1 configuration run in full"},
              "digits": {"solve_forward_s": 0.0, "harness_s": 3.0, "setup_s": 1.5,
                         "calibrated_on": "1 configuration run in full"},
              "fmnist_unet": {"solve_forward_s": 0.0, "harness_s": 4.0, "setup_s": 2.5,
                              "calibrated_on": "1 configuration run in full"}}
    monkeypatch.setattr(plan_module, "_measure", lambda cfg, cache, probe: dict(speeds[cfg.model]))
    monkeypatch.setattr(plan_module, "_calibrate", lambda group, cache, measured: fitted[group[0].model])
    plan = _plan(measure=True, models=["ring2d", "digits", "fmnist_unet"], solvers=["ddim"], steps=[4],
                 metrics=["fid", "lpips_diversity"], fid_reference="fashion_mnist")
    assert plan.seconds["network: solves"] == 10 * 4 * 1.0  # ring2d's forwards at its solve rate; the others' free
    assert plan.seconds["harness per configuration"] == 2.0 + 3.0 + 4.0  # each model's own
    assert plan.seconds["model set-up"] == 0.5 + 1.5 + 2.5 and plan.seconds["worker process start"] == 0  # no limit
    assert plan.inception_images == 2 * 10  # ring2d makes no images: the image metrics skip it
    assert plan.lpips_pairs == 10  # nor does AlexNet LPIPS take digits' 8 px
    assert "500 ms per image-forward at the spec's batch (1 s in a solve, harness 2 s per" in plan.measured["ring2d"]
    assert [plan_module._duration(s) for s in (4.74e-7, 0.0025, 86.8)] == ["0.474 us", "2.5 ms", "86.8 s"]


class _ClockPath:
    """A sweep path on which each configuration takes 0.05 s + 2 us per image-forward (its solve's NFE x samples x
    its timings), its warm-up and its CUDA-graph capture, and the model's first one 0.3 s of set-up more."""

    def __init__(self):
        self.ran = []

    def timed(self, cfg):
        self.ran.append(cfg)
        forwards, repeats = cfg.steps * cfg.n_samples * 3, 3
        seconds = 0.05 + 2e-6 * forwards + 0.25 + 0.5 + (0.3 if len(self.ran) == 1 else 0.0)
        return seconds, {"status": "ok", "nfe": cfg.steps, "timing_repeats": repeats, "warmup_s": 0.25,
                         "capture_s": 0.5}


def test_the_calibration_recovers_the_harness_solve_and_set_up_seconds_from_configurations_run_in_full(monkeypatch):
    """The fit gives back 0.05 s and 2 us from the configurations the budget allows, and the set-up from the
    cheapest configuration run twice."""
    from bench.run import plan as plan_module

    configs = [c for c in expand(parse_spec({"name": "p", "models": ["ring2d"], "solvers": ["ddim", "euler"],
                                              "steps": [4, 8, 16, 32], "n_samples": 100,
                                              "metrics": ["err_reference", "frechet"]})) if c.skip_reason is None]
    path = _ClockPath()
    fitted = plan_module._calibrate(configs, path, {"image_forward_s": 1e-6})
    assert fitted["harness_s"] == pytest.approx(0.05) and fitted["solve_forward_s"] == pytest.approx(2e-6)
    assert fitted["setup_s"] == pytest.approx(0.3)
    assert path.ran[0] == path.ran[1] and path.ran[0].steps == 4  # the cheapest first, twice
    assert fitted["calibrated_on"] == f"{len(path.ran) - 1} configurations run in full"
    assert all(cfg.metrics == ("frechet",) for cfg in path.ran)  # the reference's solve is counted as forwards instead
    monkeypatch.setattr(plan_module, "CALIBRATION_BUDGET_S", 0.0)
    path = _ClockPath()
    alone = plan_module._calibrate(configs, path, {"image_forward_s": 1e-6})
    assert len(path.ran) == 2  # over the budget after one: its remainder is the harness, the bare forward the rate
    assert alone["solve_forward_s"] == 1e-6 and alone["setup_s"] == pytest.approx(0.3)
    assert alone["harness_s"] == pytest.approx(0.05 + 4 * 100 * 3 * (2e-6 - 1e-6))  # no set-up in it


def test_the_calibration_runs_the_sweeps_way_under_its_policy_and_times_the_worker_start():
    """With time limits the configurations run in a worker process, whose start the plan times; without, in this
    process, with no worker to start. The policy's threads are in force in the planning process after."""
    from bench.run.policy import ExecutionPolicy

    threads = torch.get_num_threads()
    try:
        spec = {"models": ["ring2d"], "solvers": ["ddim"], "steps": [4, 8], "metrics": ["frechet"]}
        in_worker = make_plan(expand(parse_spec({"name": "p", "n_samples": 10, "time_limit_s": 60, **spec})),
                              execution_policy=ExecutionPolicy(threads=3))
        assert torch.get_num_threads() == 3  # neither torch's default here (2 cores) nor the test workers' (1)
        assert in_worker.seconds["worker process start"] > 0 and in_worker.seconds["model set-up"] >= 0
        assert "2 configurations run in full" in in_worker.measured["ring2d"]
        in_process = make_plan(expand(parse_spec({"name": "p", "n_samples": 10, "time_limit_s": 0, **spec})))
        assert in_process.seconds["worker process start"] == 0
        assert "2 configurations run in full" in in_process.measured["ring2d"]
    finally:
        torch.set_num_threads(threads)


def test_the_line_is_fitted_with_the_harness_at_least_zero_and_the_rate_at_least_the_bare_forward():
    from bench.run.plan import _fit_line

    assert _fit_line([(10, 3.0), (20, 5.0), (40, 9.0)], 0.1) == pytest.approx((1.0, 0.2))
    assert _fit_line([(10, 3.0)], 0.1) == pytest.approx((2.0, 0.1))  # one point: the bare forward
    assert _fit_line([(10, 1.0), (20, 3.0)], 0.1) == pytest.approx((0.0, 0.14))  # through 0, not below it
    assert _fit_line([(10, 3.0), (20, 1.0)], 0.1) == pytest.approx((0.5, 0.1))  # timing noise: never below the bare
    assert _fit_line([(10, 3.0), (20, 3.5)], 0.1) == pytest.approx((1.75, 0.1))  # forward, which every solve runs
    assert _fit_line([], 0.1) == (0.0, 0.1)


def test_the_sample_count_that_fits_scales_everything_but_the_fixed_costs():
    """The harness's seconds per configuration, the skipped configurations' rows, the models' set-up and the worker's
    start stay whatever N."""
    from bench.run.plan import Plan, samples_to_fit

    plan = Plan(seconds={"network: solves": 500.0, "Inception": 400.0, "harness per configuration": 80.0,
                         "rows of skipped configurations": 10.0, "model set-up": 6.0, "worker process start": 4.0})
    assert samples_to_fit(plan, 1000, 1200.0) == 1000  # fits as it is
    assert samples_to_fit(plan, 1000, 550.0) == 500  # 100 fixed + 900 x 500 / 1000 = 550
    with pytest.raises(ValueError, match=r"no sample count fits 1.5 min: at N = 1000 the grid is estimated at 16.7 "
                                         r"min, 1.67 min of it fixed whatever N \(the harness's own per configuration, "
                                         r"the skipped configurations' rows, the models' set-up, the worker's start\)"):
        samples_to_fit(plan, 1000, 90.0)
    assert samples_to_fit(plan, 1000, 104.5) == 5  # 100 fixed + 900 x 5 / 1000
    with pytest.raises(ValueError, match="and its metrics need N >= 6; run fewer configurations"):
        samples_to_fit(plan, 1000, 104.5, fewest=6)  # cut below what the metrics need, every row would fail


def test_run_max_minutes_cuts_n_samples_to_fit_and_refuses_what_cannot_fit(tmp_path):
    spec = tmp_path / "s.toml"
    spec.write_text('name = "s"\nmodels = ["ring2d"]\nsolvers = ["ddim"]\nsteps = [4]\nn_samples = 4000\n'
                    'metrics = ["frechet"]\ntime_limit_s = 0\ntiming_repeats = 1\n')

    def run(*flags):
        return bench_cli("run", str(spec), "--out", str(tmp_path / "run"), "--no-progress", *flags)

    assert "--max-minutes must be a number of minutes > 0" in run("--max-minutes", "0")[2]
    status, _, stderr = run("--max-minutes", "1e-9")
    assert status == 2 and "--max-minutes 1e-09: planning took 0 s, the whole budget: nothing left to run" in stderr
    assert not (tmp_path / "run").exists()  # refused before anything ran
    status, _, stderr = run("--max-minutes", "600")
    assert status == 0 and "at N = 4000: fits" in stderr
    assert set(store.load_rows(tmp_path / "run").n_samples) == {4000}
    status, _, stderr = bench_cli("run", str(spec), "--resume", str(tmp_path / "run"), "--max-minutes", "5")
    assert status == 2 and "--max-minutes sets the sample count of a new run" in stderr
    status, _, stderr = run("--max-minutes", "5", "--shard", "0/2")
    assert status == 2 and "shards could each pick another N" in stderr


def test_a_grid_that_cannot_be_measured_here_gets_one_line(tmp_path):
    spec = tmp_path / "s.toml"
    spec.write_text(f'name = "s"\nmodels = ["diffusers:{tmp_path / "absent"}"]\nsolvers = ["ddim"]\nsteps = [4]\n'
                    'n_samples = 8\nmetrics = ["err_reference"]\n')
    for command in (["plan", str(spec)], ["run", str(spec), "--max-minutes", "5", "--out", str(tmp_path / "run")]):
        status, _, stderr = bench_cli(*command)  # an exception would end the test: one line, no traceback
        said, problem = stderr.strip().splitlines()  # what the plan began to measure, then why it cannot
        assert status == 2 and said.endswith("first ...")
        assert f"cannot measure the grid here: diffusers:{tmp_path / 'absent'}: no such folder" in problem


def _run_with_known_plans(tmp_path, monkeypatch, harness_s, planning_s=0.0, ray_start_s=0.0):
    """`run --max-minutes 1` with the plan replaced by a known one at each N: 114 s at N = 4000 that scale with N, and
    ``harness_s(N)`` of the harness's own per configuration; each plan takes ``planning_s`` of the CLI's clock, and
    starting the Ray the plans run on (here none) ``ray_start_s``."""
    import contextlib
    import types

    import bench.cli
    import bench.run.plan
    from bench.run.policy import ExecutionPolicy

    clock = [0.0]
    monkeypatch.setattr(bench.cli, "time", types.SimpleNamespace(monotonic=lambda: clock[0]))

    @contextlib.contextmanager
    def grid_ray(*args):
        clock[0] += ray_start_s
        yield None

    monkeypatch.setattr(bench.cli, "_grid_ray", grid_ray)

    def known(configs, measure=True, execution_policy=None, fan_out=None, say=None):
        assert execution_policy == ExecutionPolicy(threads=1)  # measured under the sweep's policy: --threads's
        clock[0] += planning_s
        n = configs[0].n_samples
        return Plan(configs=1, seconds={"network: solves": 100.0 * n / 4000, "Inception": 14.0 * n / 4000,
                                        "harness per configuration": harness_s(n)})

    monkeypatch.setattr(bench.run.plan, "make_plan", known)
    spec = tmp_path / "s.toml"
    spec.write_text('name = "s"\nmodels = ["ring2d"]\nsolvers = ["ddim"]\nsteps = [4]\nn_samples = 4000\n'
                    'metrics = ["frechet"]\ntime_limit_s = 0\ntiming_repeats = 1\n')
    threads = torch.get_num_threads()
    try:
        status, _, stderr = bench_cli("run", str(spec), "--out", str(tmp_path / "run"), "--no-progress",
                                      "--max-minutes", "1", "--threads", "1")
    finally:
        torch.set_num_threads(threads)
    assert status == 0, stderr
    return stderr, set(store.load_rows(tmp_path / "run").n_samples)


def test_run_max_minutes_runs_the_cut_sample_count_and_says_so(tmp_path, monkeypatch):
    """6 s fixed per configuration: 1 minute fits N = 4000 x (60 - 6) / 114 = 1894, which the plan measured again
    there confirms; the run prints it, runs it and records it."""
    stderr, ran = _run_with_known_plans(tmp_path, monkeypatch, lambda n: 6.0)
    assert "--max-minutes 1: estimated 2.0 min at N = 4000; measuring the plan again at N = 1894 (extrapolated " \
           "from the plan at N = 4000: 1.0 min)" in stderr
    assert "--max-minutes 1: estimated 2.0 min at N = 4000; running N = 1894 (estimated 1.0 min, measured at that N;" \
           in stderr
    assert ran == {1894}


def test_run_max_minutes_counts_the_time_spent_planning(tmp_path, monkeypatch):
    """Plans of 10 s each: the first leaves 50 s, N = 4000 x (50 - 6) / 114 = 1543; the second (40 s left, where N =
    1543 is planned at 6 + 44.0 s) N = 1543 x 34 / 44.0 = 1192; the third (30 s left) N = 1192 x 24 / 34.0 = 842."""
    stderr, ran = _run_with_known_plans(tmp_path, monkeypatch, lambda n: 6.0, planning_s=10.0)
    assert ran == {842} and "--max-minutes 1: 30 s spent planning, 0.5 min left" in stderr


def test_run_max_minutes_counts_the_start_of_the_ray_it_plans_on(tmp_path, monkeypatch):
    """A Ray started for the plans in 7 s (the sweep then runs on it): 53 s left, N = 4000 x (53 - 6) / 114 = 1649
    (it used to fit 60 s, the Ray's start uncounted)."""
    stderr, ran = _run_with_known_plans(tmp_path, monkeypatch, lambda n: 6.0, ray_start_s=7.0)
    assert ran == {1649} and "--max-minutes 1: 7 s spent planning, 0.9 min left" in stderr


def test_run_max_minutes_cuts_again_when_the_plan_at_the_cut_n_says_more(tmp_path, monkeypatch):
    """The harness's own seconds per configuration grow below N = 3000 (as FID's jackknife turns exact below 8,192
    samples): the cut N = 1894 measures 30 + 54 = 84 s, so N is cut again from that plan, to 1894 x 30 / 54 = 1052,
    which measures 60 s and runs. With no plan fitting, the third plan's cut runs on its extrapolation."""
    stderr, ran = _run_with_known_plans(tmp_path, monkeypatch, lambda n: 6.0 if n >= 3000 else 30.0)
    assert "estimated 1.4 min at N = 1894; measuring the plan again at N = 1052" in stderr
    assert "running N = 1052 (estimated 1.0 min, measured at that N;" in stderr and ran == {1052}
    (tmp_path / "b").mkdir()  # 8.42 s more at N = 1052: 68 s, cut to 1052 x (60 - 38.42) / 29.98 = 757
    stderr, ran = _run_with_known_plans(tmp_path / "b", monkeypatch, lambda n: 6.0 if n >= 3000 else 30 + (1894 - n) / 100)
    assert "running N = 757 (estimated 1.0 min, extrapolated from the plan at N = 1052;" in stderr and ran == {757}


def test_run_max_minutes_grows_n_again_when_the_plan_at_the_cut_n_says_less(tmp_path, monkeypatch):
    """The harness's own seconds grow with N (6 + 30 N / 4000): the first cut takes the 36 s at N = 4000 as fixed,
    N = 4000 x 24 / 114 = 842, which measures 36.3 s. Between the two plans the time is affine in N, 60 s at N = 1500,
    which is measured there and runs (the first cut ran, 40% of the minute unused, before)."""
    stderr, ran = _run_with_known_plans(tmp_path, monkeypatch, lambda n: 6.0 + 30.0 * n / 4000)
    assert "estimated 0.6 min at N = 842; measuring the plan again at N = 1500 (interpolated between the plans at " \
           "N = 842 and 4000: 1.0 min)" in stderr
    assert "running N = 1500 (estimated 1.0 min, measured at that N;" in stderr and ran == {1500}
    (tmp_path / "b").mkdir()  # plans of 5 s: 55 s left, cut to 666 (30.0 s); 50 s left, less 5 s for the next plan
    stderr, ran = _run_with_known_plans(tmp_path / "b", monkeypatch, lambda n: 6.0 + 30.0 * n / 4000, planning_s=5.0)
    assert "measuring the plan again at N = 1083 (interpolated between the plans at N = 666 and 4000" in stderr
    assert ran == {1083} and "--max-minutes 1: 15 s spent planning, 0.8 min left" in stderr  # 6 + 0.036 x 1083 = 45 s
    (tmp_path / "c").mkdir()  # 6 + 3 N / 4000: cut to 1789 (58.3 s), 60 s at 1845, 3% more: not worth a plan
    stderr, ran = _run_with_known_plans(tmp_path / "c", monkeypatch, lambda n: 6.0 + 3.0 * n / 4000)
    assert "interpolated" not in stderr and ran == {1789}


def test_the_n_between_two_plans_is_the_largest_within_the_seconds_on_the_line_through_them():
    from bench.cli import _between

    assert _between(100, 30.0, 300, 70.0, 50.0) == (200, 50.0)  # 0.2 s per sample
    assert _between(100, 30.0, 300, 70.0, 90.0) == (299, pytest.approx(69.8))  # never the N that did not fit
    assert _between(100, 30.0, 300, 70.0, 20.0) == (100, 30.0)  # no room: the N that fits
    assert _between(100, 30.0, 300, 29.0, 50.0) == (100, 30.0)  # the plans' noise above their N's: no line to follow


def test_ray_tasks_are_handed_out_in_order_to_free_slots_after_the_reference_solves_they_need():
    """Two slots: the reference solve (2 s) and the group without it (5 s) start at once; the group that needs it
    starts when it is stored (2 s) on the slot it freed; the third group waits for a free slot (at 5 s). A slot's
    first task with a worker process starts the fork server first (1 s)."""
    from bench.run.plan import Task, makespan

    reference = Task(fixed_s=2.0, makes=("ref",))
    needing, free, last = Task(fixed_s=3.0, needs={("ref",)}), Task(fixed_s=5.0), Task(scaled_s=4.0)
    assert makespan([reference, needing, free, last], 2) == 9.0  # needing ends at 5, last runs 5 to 9
    assert makespan([reference, needing, free, last], 2, scale=0.5) == 7.0  # last's 4 s scale with N: 5 to 7
    assert makespan([reference, needing, free, last], 1) == 14.0  # one slot: one after another
    waiting = Task(fixed_s=1.0, needs={("ref",)})
    assert makespan([Task(fixed_s=6.0, makes=("ref",)), waiting, Task(fixed_s=1.0)], 2) == 7.0  # waiting waits until 6
    workers = [Task(fixed_s=1.0, worker=True) for _ in range(3)]
    assert makespan(workers, 2, slot_start_s=1.0) == 3.0  # 2 + 2 in parallel, then the third without a start: 3


def test_ray_slots_are_each_live_nodes_cpus_over_a_tasks_threads_and_at_most_its_gpus():
    from bench.run.distributed import task_slots

    nodes = [{"Alive": True, "Resources": {"CPU": 16.0, "GPU": 2.0}}, {"Alive": True, "Resources": {"CPU": 3.0}},
             {"Alive": False, "Resources": {"CPU": 64.0}}]
    assert task_slots(nodes, threads=1, gpu=False) == 19
    assert task_slots(nodes, threads=2, gpu=False) == 8 + 1
    assert task_slots(nodes, threads=1, gpu=True) == 2  # a CUDA task asks a GPU too
    assert task_slots(nodes, threads=4, gpu=False) == 4 and task_slots(nodes, threads=32, gpu=False) == 0


def test_a_ray_without_room_for_a_task_is_told_what_would_give_it_room():
    """The remedy the refusal names fits the Ray: --workers only where the Ray is started here, the cluster's
    address where one was joined, and the CPU for a CUDA grid on nodes without a GPU."""
    from bench.run.distributed import no_room_remedy

    cpus = [{"Resources": {"CPU": 1.0}}]
    assert no_room_remedy(cpus, 2, False, None) == "lower --threads, or start the local Ray with more CPUs (--workers)"
    assert no_room_remedy(cpus, 2, False, "ray://head:10001") == (
        "lower --threads, or add a node with 2 CPUs to the cluster at ray://head:10001")
    assert no_room_remedy(cpus, 1, True, None) == (
        'run where the local Ray sees a GPU, or run the grid on the CPU (device = "cpu")')
    split = [{"Resources": {"CPU": 8.0}}, {"Resources": {"CPU": 1.0, "GPU": 1.0}}]  # CPUs and the GPU on other nodes
    assert no_room_remedy(split, 2, True, "head:6379") == (
        'add a node with 2 CPUs and a GPU to the cluster at head:6379, or run the grid on the CPU (device = "cpu")')


def test_on_ray_each_group_is_a_task_that_sets_its_model_up_and_warms_up_in_its_own_process():
    """Two seeds of one solver: one process warms it up once; on Ray they are two tasks (bench.run.distributed's
    groups), each warming up and setting the model up, and one more for each seed's reference solve."""
    from bench.run.distributed import FanOut

    spec = dict(models=["ring2d"], solvers=["ddim"], steps=[4, 8], seeds=[0, 1], metrics=["err_reference"])
    serial, on_ray = _plan(**spec), _plan(**spec, fan_out=FanOut(slots=2, start_s=5.0, time_task=None))
    assert serial.forwards["warm-ups"] == 10 * 3 and on_ray.forwards["warm-ups"] == 2 * 10 * 3
    assert [task.makes is not None for task in on_ray.tasks] == [True, True, False, False]
    assert [len(task.needs) for task in on_ray.tasks] == [0, 0, 1, 1]


def test_on_ray_the_estimate_is_the_tasks_side_by_side_and_the_sample_count_that_fits_is_bisected():
    """Four tasks of 10 s fixed and 20 s at N = 1000 on two slots, Ray's start 6 s: 6 + 2 x 30 = 66 s; 46 s fits
    6 + 2 x (10 + 20 N / 1000), N = 500."""
    from bench.run.distributed import FanOut
    from bench.run.plan import Task, estimate_at, samples_to_fit

    plan = Plan(seconds={"network: solves": 80.0, "harness per configuration": 40.0}, fan_out=FanOut(2, 6.0, None),
                tasks=[Task(fixed_s=10.0, scaled_s=20.0) for _ in range(4)])
    assert plan.total_s == 66.0 and plan.work_s == 120.0
    assert estimate_at(plan, 1000, 500) == 46.0 and samples_to_fit(plan, 1000, 46.0) == 500
    assert samples_to_fit(plan, 1000, 45.9) == 497  # the largest N within: 6 + 2 x (10 + 0.02 x 497) = 45.88
    with pytest.raises(ValueError, match=r"0.433 min of it fixed whatever N \(.*, Ray's start\)"):
        samples_to_fit(plan, 1000, 26.0)  # 6 + 2 x 10 fixed


def test_the_plan_on_ray_adds_what_its_cheapest_task_took_beyond_its_estimate_to_every_task():
    """The cheapest task (one configuration) is timed on the Ray, here at a known 5 s, without its reference metric
    (the reference solve is a task of its own): the 5 s less its estimate is added per configuration to every task."""
    from bench.run.distributed import FanOut

    timed = []
    fan_out = FanOut(slots=2, start_s=5.0, time_task=lambda group: timed.append(group) or 5.0)
    plan = _plan(measure=True, models=["ring2d"], solvers=["ddim", "heun"], steps=[4], metrics=["err_reference"],
                 fan_out=fan_out)
    ((probe,),) = timed
    assert probe.metrics == () and probe.solver in {"ddim", "heun"}
    reference, *groups = plan.tasks
    assert reference.makes is not None and min(t.fixed_s + t.scaled_s for t in groups) == pytest.approx(5.0)
    estimated = float(re.search(r"ran in 5 s against (\S+) s estimated", plan.measured["Ray task"]).group(1))
    assert plan.measured["Ray task"].startswith(f"a Ray task: 1 configuration of ring2d / {probe.solver}, 2 at once")
    assert plan.seconds["Ray tasks' own"] == pytest.approx(2 * (5.0 - estimated), abs=2e-3)  # one each, two tasks
    line = next(line for line in plan.lines() if line.startswith("estimate:"))
    assert "on Ray, 2 tasks at once" in line and "in 3 tasks" in line and "Ray's start 5 s" in line


def test_the_rows_of_skipped_configurations_are_timed_and_counted_in_the_tasks_that_write_them():
    """ddpm takes no eta but 1: at eta 0 its two configurations are skipped rows, which the sweep still makes and
    writes (4-6 ms each on the 2-core CPU; 1,908 of them in the default grid). On Ray its task writes only those."""
    from bench.run.distributed import FanOut

    spec = dict(models=["ring2d"], solvers=["ddim", "ddpm"], steps=[4, 8], etas=[0.0], metrics=["frechet"])
    plan = _plan(measure=True, **spec)
    assert plan.skipped == 2 and 0 < plan.seconds["rows of skipped configurations"] < 2 * 0.5
    assert "rows of skipped configurations" in "\n".join(plan.lines())
    timed = []
    fan_out = FanOut(slots=2, start_s=5.0, time_task=lambda group: timed.append(group) or 1.0)
    on_ray = _plan(measure=True, fan_out=fan_out, **spec)
    assert {cfg.solver for cfg in timed[0]} == {"ddim"}  # the task timed runs configurations, not skipped rows alone
    ddim, ddpm = on_ray.tasks  # no reference solve: frechet compares with exact samples
    assert ddpm.scaled_s == 0 and ddpm.fixed_s == pytest.approx(
        on_ray.seconds["rows of skipped configurations"] + on_ray.seconds["Ray tasks' own"] / 4 * 2)


def test_the_task_timed_on_ray_is_the_cheapest_whose_estimate_is_not_an_upper_bound():
    """An adaptive solver's task is estimated at its reference solve's NFE, above what it takes: timed, it would come
    out under its estimate and measure nothing beyond. The cheapest task of fixed-step solvers is timed instead."""
    from bench.run.distributed import FanOut, group_key
    from bench.run.plan import Task, _add_task_overhead

    configs = expand(parse_spec({"name": "p", "models": ["ring2d"], "solvers": ["dopri5", "ddim", "heun"],
                                 "steps": [4], "tolerances": [1e-3], "n_samples": 10}))
    members = {group_key(cfg): [cfg] for cfg in configs}
    groups = {key: Task(fixed_s={"dopri5": 0.5, "ddim": 1.0, "heun": 2.0}[key[-1]]) for key in members}
    timed = []
    fan_out = FanOut(slots=2, start_s=5.0, time_task=lambda group: timed.append(group) or 1.5)
    added = _add_task_overhead(members, groups, fan_out, {})
    assert [cfg.solver for cfg in timed[0]] == ["ddim"] and added == pytest.approx(3 * 0.5)
