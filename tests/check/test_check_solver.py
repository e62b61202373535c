"""python -m bench check-solver: a solver's grid on the analytic mixtures, and verdicts that fail where its entry is
wrong about it (its NFE, its noise draws, its order), for a user's python: solver as for a registered one."""
import pytest

from bench.run.store import load_rows
from solvers import SOLVERS
from support import bench_cli

QUICK = ["--steps", "8", "16", "32", "--n-samples", "64"]


def _check(tmp_path, solver, *extra):
    return bench_cli("check-solver", solver, "--out", str(tmp_path / "run"), *QUICK, *extra)


def test_a_users_restated_euler_maruyama_passes_every_check(tmp_path):
    status, stdout, stderr = _check(tmp_path, "python:user_solvers:MY_EULER_MARUYAMA")
    assert status == 0, stdout + stderr
    lines = stdout.splitlines()
    assert [line.split(":")[0].strip() for line in lines[:3]] == [
        "ok    every configuration ran", "ok    network evaluations", "ok    noise draws"]
    orders = sorted(line for line in lines if "order:" in line)
    assert len(orders) == 4 and all(line.startswith("  ok") and line.endswith("the entry says 1") for line in orders)
    assert "gmm_hd, eta 1: strong order" in stdout and "against the 2n-step solve on the same x_T and Brownian path" \
        in stdout and "ring2d, eta 0: order" in stdout and "against the exact reference solve" in stdout
    assert lines[-1].startswith("7 of 7 checks passed; the rows: ")


@pytest.mark.parametrize("solver, failing", [
    ("python:user_solvers:MY_EULER_MISCOUNTED", "FAIL  network evaluations: counted 32 network evaluations per batch "
                                                "where python:user_solvers:MY_EULER_MISCOUNTED's entry declares 64"),
    ("python:user_solvers:MY_HALF_STEPS_UNLISTED", "FAIL  noise draws: its solve drew 64 noise increments that "
                                                   "python:user_solvers:MY_HALF_STEPS_UNLISTED's entry does not list"),
])
def test_an_entry_wrong_about_its_nfe_or_its_noise_fails_its_check(tmp_path, solver, failing):
    status, stdout, _ = _check(tmp_path, solver)
    assert status == 1 and failing in stdout


def test_an_entry_that_claims_a_higher_order_than_its_solver_reaches_fails_its_check(tmp_path, monkeypatch):
    (tmp_path / "overclaimed.py").write_text(
        "from solvers import Solver\nfrom user_solvers import euler_in_my_words\n"
        "EULER_AS_HEUN = Solver('euler_as_heun', euler_in_my_words, order=2, stochastic='ode', nfe_per_step=1, "
        "eta='0 only', reference='tests: euler claiming order 2')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    status, stdout, _ = _check(tmp_path, "python:overclaimed:EULER_AS_HEUN")
    orders = [line for line in stdout.splitlines() if "order:" in line]
    assert status == 1 and len(orders) == 2 and all(line.startswith("  FAIL") for line in orders)
    assert all(line.endswith("; the entry says 2") for line in orders) and "3 of 5 checks passed" in stdout


def test_a_solver_without_a_pathwise_order_is_run_and_its_order_said_not_measured(tmp_path):
    status, stdout, _ = bench_cli("check-solver", "pc", "--out", str(tmp_path / "run"), "--steps", "4", "8",
                                  "--n-samples", "32")
    assert status == 0 and "--    ring2d, eta 1: strong order: not measured: no err_stepdoubling: the entry gives it " \
                           "no order (no pathwise convergence), so its rows have no step-doubling estimate" in stdout
    assert "3 of 3 checks passed (2 not checked)" in stdout


def test_a_guided_check_measures_the_order_under_guidance_and_runs_a_cfg_pp_sampler_without_an_order(tmp_path):
    status, stdout, stderr = _check(tmp_path, "dpmpp_2m", "--guidance-scale", "3")
    assert status == 0 and "on gmm_classes guided at 3 (" in stderr
    assert "ok    gmm_classes, eta 0: order: " in stdout and stdout.count("order:") == 1
    status, stdout, _ = bench_cli("check-solver", "euler_cfg_pp", "--guidance-scale", "2", *QUICK,
                                  "--out", str(tmp_path / "cfg_pp"))
    (line,) = [line for line in stdout.splitlines() if "order:" in line]
    assert status == 0 and line.startswith("  --    gmm_classes, eta 0: order: ")  # CFG++ leaves the guided ODE:
    assert "; not checked: the entry gives it no order (whether the error falls: " in line  # its error need not fall
    assert "3 of 3 checks passed (1 not checked)" in stdout


@pytest.mark.parametrize("args, said", [
    (["heum"], "unknown solver 'heum'. Did you mean 'heun'?"),
    (["dopri5"], "check-solver: dopri5 is adaptive: it chooses its own steps, so it has no order in the steps to "
                 "check (check a fixed-step solver)"),
    (["euler_cfg_pp"], "check-solver: euler_cfg_pp is a CFG++ sampler: it needs a classifier-free guided model; "
                       "--guidance-scale S checks it on gmm_classes, the class-conditional mixture, guided at S"),
    (["lms", "--options", "{order: 3}"], "check-solver: --options is not JSON (Expecting property name enclosed in "
                                          "double quotes: line 1 column 2 (char 1)): '{order: 3}'"),
    (["lms", "--options", "[3]"], "check-solver: --options must be a JSON object of option: value, got '[3]'"),
    (["lms", "--options", '{"ordr": 3}'], "key 'options.lms.ordr': unknown option (did you mean 'order'?)"),
    (["heun", "--schedule", "VPLinearr"], "key 'schedule': unknown value 'VPLinearr' (did you mean 'VPLinear'?)"),
])
def test_bad_input_is_refused_before_anything_runs(tmp_path, args, said):
    status, _, stderr = bench_cli("check-solver", *args, "--out", str(tmp_path / "run"))
    assert status == 2 and said in stderr and not (tmp_path / "run").exists()


CHECKABLE = [name for name, s in SOLVERS.items() if not s.adaptive and not s.needs_guidance]


@pytest.mark.slow
@pytest.mark.parametrize("solver", CHECKABLE)
def test_every_registered_solver_it_can_run_passes_with_the_defaults(tmp_path, solver):
    """The guide's claim (33 solvers, 3-39 s each on 2 cores): the defaults are where every entry's order shows."""
    status, stdout, _ = bench_cli("check-solver", solver, "--out", str(tmp_path / "run"))
    assert status == 0, stdout


def test_the_check_writes_its_spec_into_its_run_folder_and_never_runs_into_an_existing_one(tmp_path):
    status, _, _ = bench_cli("check-solver", "heun", "--out", str(tmp_path / "run"), "--steps", "4", "8",
                             "--n-samples", "16", "--options", "{}")
    assert status == 0
    rerun, _, _ = bench_cli("run", str(tmp_path / "run" / "spec.toml"), "--out", str(tmp_path / "again"),
                            "--no-progress")
    assert rerun == 0 and len(load_rows(tmp_path / "again")) == len(load_rows(tmp_path / "run")) == 4
    status, _, stderr = bench_cli("check-solver", "heun", "--out", str(tmp_path / "run"))
    assert status == 2 and f"check-solver: {tmp_path / 'run'} holds a run already; a check writes a new one " \
                           "(choose another --out)" in stderr


@pytest.mark.parametrize("solver", [name for name, s in SOLVERS.items() if s.needs_guidance])
def test_every_cfg_pp_sampler_runs_its_guided_check_with_nfe_and_noise_as_declared(tmp_path, solver):
    status, stdout, _ = bench_cli("check-solver", solver, "--guidance-scale", "2", "--out", str(tmp_path / "run"))
    assert status == 0, stdout
