"""The Ray backend on a local Ray with 2 workers: the same table as a serial run, a killed worker losing
and duplicating nothing, time limits and OOM handling inside tasks. Skipped where Ray is not installed
(make setup-ray; CI installs it)."""
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from bench.run import store
from bench.spec.config import expand, load_spec
from bench.run.distributed import config_groups
from support import bench_cli

pytest.importorskip("ray", reason="the Ray backend's tests need Ray: make setup-ray")
pytestmark = pytest.mark.xdist_group("ray")  # one pytest-xdist worker: the serial twin runs once, one Ray at a time

TESTS = Path(__file__).parents[1]  # where support.py is
# The default grid's CPU-sized twin: its three models, ODE, SDE, multistep and adaptive solvers, one step count, two
# spacings, eta 0 and 1, its metrics; and a user's own solver, which each Ray task imports by name.
TWIN = ('name = "twin"\nmodels = ["ring2d", "gmm_hd", "digits"]\n'
        'solvers = ["euler", "heun", "ddim", "ddpm", "dpmpp_2m", "dpmpp_2m_sde", "unipc_2", "dopri5", '
        '"python:user_solvers:MY_EULER_MARUYAMA"]\n'
        'steps = [6]\nspacings = ["uniform", "logsnr"]\netas = [0.0, 1.0]\ntolerances = [1e-2]\n'
        'n_samples = 32\nbatch_size = 32\ndevice = "cpu"\ntiming_repeats = 1\n'
        'metrics = ["err_reference", "err_stepdoubling", "sample_log_density", "frechet", "precision_recall", '
        '"sliced_wasserstein"]\n')
# What differs between two runs of the same configs by nature: where, when and how fast.
CIRCUMSTANTIAL = ["run_id", "created_at", "host", "wall_s", "wall_s_std", "timing_repeats", "warmup_s",
                  "samples_per_s", "forward_s", "overhead_ratio"]


def _bench_run(spec_path, out, *args, wait=True):
    # Ray starts its workers with OMP_NUM_THREADS=1, and a process started so picks other float32 kernels than
    # one that calls torch.set_num_threads(1) later (the digits model's err_reference moved by 2.4e-4 relative):
    # the serial run is started the same way, so that the two tables can be equal to the last bit.
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")])}
    command = [sys.executable, "-m", "bench", "run", str(spec_path), "--out", str(out), "--no-progress", *args]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    if not wait:
        return process
    stdout, stderr = process.communicate(timeout=300)
    assert process.returncode == 0, (stdout, stderr)
    return stdout


def _comparable(run_dir):
    table = store.load_rows(run_dir).drop(columns=CIRCUMSTANTIAL)
    return table.sort_values("config_id").reset_index(drop=True)


@pytest.fixture(scope="module")
def serial_twin(tmp_path_factory):
    folder = tmp_path_factory.mktemp("twin")
    spec_path = folder / "twin.toml"
    spec_path.write_text(TWIN)
    _bench_run(spec_path, folder / "serial", "--threads", "1")
    return spec_path, folder / "serial"


def test_two_ray_workers_one_of_them_killed_mid_sweep_give_the_serial_table(serial_twin, tmp_path):
    """One Ray run (a cluster's start is most of its time): a group task's process is killed once rows exist, and
    the table still has every config once, with every value equal to the serial run's."""
    spec_path, serial = serial_twin
    process = _bench_run(spec_path, tmp_path / "ray", "--backend", "ray", "--workers", "2", wait=False)
    killed = _kill_a_group_task_once_rows_exist(tmp_path / "ray" / "rows", process)
    stdout, stderr = process.communicate(timeout=300)
    assert process.returncode == 0, (stdout, stderr)
    assert killed is not None, "no Ray task was running while rows were being written"
    ray_table, serial_table = _comparable(tmp_path / "ray"), _comparable(serial)
    assert len(ray_table) == len(expand(load_spec(spec_path))) and ray_table.config_id.is_unique
    assert (ray_table.status != "failed").all(), ray_table[ray_table.status == "failed"].message.tolist()
    pd.testing.assert_frame_equal(ray_table, serial_table)  # every value, stochastic solvers' included
    assert "rows in" in stdout
    assert [p.name for p in (tmp_path / "ray" / "rows").iterdir() if not p.name.startswith("part-")] == []


def _kill_a_group_task_once_rows_exist(rows: Path, process) -> int | None:
    """SIGKILL the process of a running group task once the sweep has written some rows; its pid."""
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and process.poll() is None:
        written = list(rows.glob("*.parquet")) if rows.exists() else []
        tasks = subprocess.run(["pgrep", "-f", "ray::_run_group"], capture_output=True, text=True).stdout.split()
        if len(written) >= 20 and tasks:
            os.kill(int(tasks[0]), signal.SIGKILL)
            return int(tasks[0])
        time.sleep(0.2)
    return None


@pytest.mark.slow  # a second local Ray start, about 35 s; the same limits in the serial worker: test_reliability.py
def test_time_limits_and_out_of_memory_hold_inside_ray_tasks(tmp_path):
    spec_path = tmp_path / "s.toml"
    spec_path.write_text('name = "s"\nmodels = ["python:support:sleeps_forever", "python:support:oom_above_8", '
                         '"python:support:oom_always", "ring2d"]\nsolvers = ["euler"]\nsteps = [2]\nn_samples = 16\n'
                         'batch_size = 16\nmetrics = ["err_reference"]\ntime_limit_s = 3\nreference_time_limit_s = 3\n'
                         'timing_repeats = 1\n')
    _bench_run(spec_path, tmp_path / "ray", "--backend", "ray", "--workers", "2")
    table = store.load_rows(tmp_path / "ray").set_index("model")
    assert table.loc["python:support:sleeps_forever", "status"] == "timeout"
    assert table.loc["python:support:oom_above_8", "status"] == "ok"
    assert table.loc["python:support:oom_above_8", "batch_used"] == 8
    assert table.loc["python:support:oom_always", "status"] == "oom"
    assert table.loc["ring2d", "status"] == "ok"


def test_groups_keep_what_configs_share_together(tmp_path):
    (tmp_path / "twin.toml").write_text(TWIN)
    configs = expand(load_spec(tmp_path / "twin.toml"))
    groups = config_groups(configs)
    assert sorted(c.config_id for g in groups for c in g) == sorted(c.config_id for c in configs)
    for group in groups:
        shared = {(c.model, c.schedule, c.seed, c.n_samples, c.device, c.solver) for c in group}
        assert len(shared) == 1
    assert len(groups) == 3 * 9 and [len(g) for g in groups] == sorted((len(g) for g in groups), reverse=True)


def test_a_ray_that_can_run_no_task_is_refused_before_anything_runs_and_plan_costs_the_tasks_side_by_side(tmp_path):
    """--threads 2 on a Ray of 1 CPU: every task would wait for ever (it did, before this check); run and plan say so
    and stop. With room, the plan starts that Ray, counts its slots and costs the tasks on them."""
    spec_path = tmp_path / "s.toml"
    spec_path.write_text('name = "s"\nmodels = ["ring2d"]\nsolvers = ["ddim", "heun"]\nsteps = [4]\nn_samples = 16\n'
                         'metrics = ["err_reference"]\ntiming_repeats = 1\n')
    for command in (["run", str(spec_path), "--out", str(tmp_path / "run"), "--no-progress"], ["plan", str(spec_path)]):
        status, _, stderr = bench_cli(*command, "--backend", "ray", "--workers", "1", "--threads", "2")
        assert status == 2 and "a task asks 2 CPUs (its torch threads), and no node of this Ray has that (1 CPU): " \
                               "lower --threads, or start the local Ray with more CPUs (--workers)" in stderr
    assert not (tmp_path / "run" / "rows").exists() or not list((tmp_path / "run" / "rows").iterdir())
    status, stdout, _ = bench_cli("plan", str(spec_path), "--backend", "ray", "--workers", "2")
    assert status == 0 and "on Ray, 2 tasks at once" in stdout and "in 3 tasks" in stdout  # 2 groups, 1 reference
    assert "measured: a Ray task: 1 configuration of ring2d" in stdout


def test_run_max_minutes_on_ray_plans_on_that_ray_and_runs_what_fits(tmp_path, monkeypatch):
    """The whole path of `run --backend ray --max-minutes`: the Ray started for the plans, the plan on it (which fits
    two minutes), its time counted, then the sweep on that same Ray (one start, 7 s, not two), every row written at
    the spec's N."""
    import bench.run.distributed as distributed

    starts, ray_up = [], distributed._ray_up
    monkeypatch.setattr(distributed, "_ray_up", lambda *args: starts.append(args) or ray_up(*args))
    spec_path = tmp_path / "s.toml"
    spec_path.write_text('name = "s"\nmodels = ["ring2d"]\nsolvers = ["ddim", "heun"]\nsteps = [4]\nn_samples = 16\n'
                         'metrics = ["err_reference"]\ntiming_repeats = 1\n')
    status, _, stderr = bench_cli("run", str(spec_path), "--out", str(tmp_path / "run"), "--no-progress",
                                  "--backend", "ray", "--workers", "2", "--max-minutes", "2")
    assert status == 0, stderr
    assert "--max-minutes 2: estimated" in stderr and "at N = 16: fits" in stderr
    planning = int(re.search(r"--max-minutes 2: (\d+) s spent planning", stderr).group(1))
    assert planning >= 1  # the Ray's start and the plan on it, counted from the command's start
    rows = store.load_rows(tmp_path / "run")
    assert len(rows) == 2 and set(rows.status) == {"ok"} and set(rows.n_samples) == {16}
    assert starts == [(None, 2)]
