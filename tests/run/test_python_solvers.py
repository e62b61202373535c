"""A solver of the user's own, named python:module:attribute: specs take it, the sweep runs it in its worker
processes on the runner's own noise, rows record its code's digest, a resume refuses changed code, compare names it,
and the reports draw it. tests/user_solvers.py restates euler in a user's words, so every figure must equal euler's."""
import pandas as pd
import pytest
import torch

from bench.analysis.compare import compare_runs, terminal_summary
from bench.analysis.frontier import order_table
from bench.analysis.plots import USER_COLOURS, solver_order, solver_styles
from bench.analysis.report import build_report
from bench.run import store
from bench.spec.config import SpecError, expand, parse_spec
from bench.run.sweep import run_sweep
from solvers import SOLVERS, DiffusionModel, sample
from solvers.schedules import VPLinear

MINE = "python:user_solvers:MY_EULER"
MINE_SDE = "python:user_solvers:MY_EULER_MARUYAMA"


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """euler and its two restatements on the ring mixture at eta 0 and 1, each config in a worker process (the
    default time limit), as a user's run would be."""
    tmp = tmp_path_factory.mktemp("python_solvers")
    spec = parse_spec({"name": "mine", "models": ["ring2d"], "solvers": ["euler", MINE, MINE_SDE], "steps": [4, 8],
                       "etas": [0.0, 1.0], "n_samples": 64, "timing_repeats": 1,
                       "metrics": ["err_reference", "err_stepdoubling", "frechet"]}, str(tmp / "mine.toml"))
    run_dir = tmp / "run"
    meta = store.open_run(run_dir, spec)
    counts = run_sweep(expand(spec), run_dir, meta["run_id"], progress=False)
    return spec, run_dir, counts, store.load_rows(run_dir)


def test_a_python_solver_runs_as_the_registered_solver_it_restates(run):
    _, _, counts, table = run
    assert counts == {"already_done": 0, "ok": 10, "skipped": 2}
    skipped = table[table.status == "skipped"]
    assert list(skipped.solver) == [MINE, MINE] and list(skipped.eta) == [1.0, 1.0]
    assert skipped.message.str.contains("my_euler is an ODE solver: eta must be 0").all()
    ok = table[table.status == "ok"].set_index(["solver", "steps", "eta"]).sort_index()
    figures = ["nfe", "err_reference", "err_stepdoubling", "frechet"]
    for steps in (4, 8):
        euler_ode, euler_sde = ok.loc[("euler", steps, 0.0), figures], ok.loc[("euler", steps, 1.0), figures]
        assert ok.loc[(MINE, steps, 0.0), figures].tolist() == euler_ode.tolist()  # bit for bit
        assert ok.loc[(MINE_SDE, steps, 0.0), figures].tolist() == euler_ode.tolist()
        # the same Brownian path: the runner's noise source hands the user's solver the draws it hands euler
        assert ok.loc[(MINE_SDE, steps, 1.0), ["nfe", "frechet"]].tolist() == euler_sde[["nfe", "frechet"]].tolist()
        assert ok.loc[(MINE_SDE, steps, 1.0), "err_stepdoubling"] == euler_sde.err_stepdoubling
    assert (ok.nominal_order == 1).all()  # the entry's order_for, recorded: euler's, and the strong order at eta 1
    digests = table.groupby("solver").solver_sha256.agg(lambda d: set(d.dropna()))
    assert digests["euler"] == set() and len(digests[MINE]) == 1 and digests[MINE] == digests[MINE_SDE]
    assert len(next(iter(digests[MINE]))) == 64


def test_a_solver_entry_that_declares_the_wrong_nfe_is_named_in_its_rows(tmp_path):
    spec = parse_spec({"name": "n", "models": ["ring2d"], "solvers": [MINE, "python:user_solvers:MY_EULER_MISCOUNTED"],
                       "steps": [3], "final_step": "x0", "n_samples": 8, "metrics": ["frechet"], "time_limit_s": 0},
                      str(tmp_path / "n.toml"))
    meta = store.open_run(tmp_path / "run", spec)
    run_sweep(expand(spec), tmp_path / "run", meta["run_id"], progress=False)
    rows = store.load_rows(tmp_path / "run").set_index("solver")
    assert (rows.status == "ok").all() and (rows.nfe == 4).all()  # 3 steps and the final x0 step, as counted
    assert pd.isna(rows.loc[MINE, "message"])
    assert rows.loc["python:user_solvers:MY_EULER_MISCOUNTED", "message"] == (
        "counted 4 network evaluations per batch where python:user_solvers:MY_EULER_MISCOUNTED's entry declares 7 "
        "(nfe_per_step x steps + nfe_extra, + the final step's): the row's nfe is the counted one, and the plan and "
        "fit-schedule's step counts, which read the entry, are off")


def test_noise_a_solver_draws_off_its_entrys_noise_plan_is_named_in_its_rows(tmp_path):
    listed, unlisted = "python:user_solvers:MY_HALF_STEPS", "python:user_solvers:MY_HALF_STEPS_UNLISTED"
    spec = parse_spec({"name": "h", "models": ["ring2d"], "solvers": [listed, unlisted], "steps": [3], "etas": [1.0],
                       "n_samples": 8, "metrics": ["frechet"], "time_limit_s": 0}, str(tmp_path / "h.toml"))
    meta = store.open_run(tmp_path / "run", spec)
    run_sweep(expand(spec), tmp_path / "run", meta["run_id"], progress=False)
    rows = store.load_rows(tmp_path / "run").set_index("solver")
    assert (rows.status == "ok").all() and rows.loc[listed, "frechet"] == rows.loc[unlisted, "frechet"]  # same draws
    assert pd.isna(rows.loc[listed, "message"])
    assert rows.loc[unlisted, "message"] == (
        f"its solve drew 6 noise increments that {unlisted}'s entry does not list (NoisePlan streams and intervals): "
        "they came from the Brownian tree inside the timed solve, so wall_s counts their cost (the samples are the "
        "same)")


def test_the_library_samples_with_a_python_solver():
    model = DiffusionModel(lambda x, t: 0.1 * x, VPLinear(), "eps")
    x, ts = torch.randn(4, 2, generator=torch.Generator().manual_seed(0)), torch.linspace(1.0, 1e-3, 6)
    assert torch.equal(sample(MINE, model, x, ts), sample("euler", model, x, ts))
    assert MINE not in SOLVERS  # resolved by import, not registered


@pytest.mark.parametrize("name, said", [
    ("python:user_solvers", "solver 'python:user_solvers': expected python:module:attribute, the attribute a "
                            "solvers.Solver"),
    ("python:no_such_module:X", "solver 'python:no_such_module:X': no module 'no_such_module' on the python path "
                                "(put its folder on PYTHONPATH)"),
    ("python:user_solvers:MY_HEUN", "solver 'python:user_solvers:MY_HEUN': module 'user_solvers' has no attribute "
                                    "'MY_HEUN'"),
    ("python:user_solvers:euler_in_my_words", "solver 'python:user_solvers:euler_in_my_words': "
                                              "user_solvers.euler_in_my_words is a function, not a solvers.Solver; "
                                              "wrap the function in one: Solver(name, fn, order, stochastic, "
                                              "nfe_per_step, eta, reference)"),
])
def test_a_python_solver_that_names_no_solver_is_a_spec_error(name, said):
    with pytest.raises(SpecError) as refused:
        parse_spec({"models": ["ring2d"], "n_samples": 8, "solvers": ["euler", name], "steps": [4],
                    "options": {name: {"x": 1}}})
    assert str(refused.value).splitlines() == [f"<spec>: key 'solvers': {said}"]  # its options: not checked further


def test_a_python_solver_whose_module_fails_to_import_is_a_spec_error(tmp_path, monkeypatch):
    runs = tmp_path / "runs.txt"
    (tmp_path / "half_written.py").write_text(f"open({str(runs)!r}, 'a').write('x')\n"
                                              "raise RuntimeError('not finished')\n")
    (tmp_path / "needs_more.py").write_text("import not_installed_anywhere\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(SpecError) as refused:
        parse_spec({"models": ["ring2d"], "n_samples": 8, "solvers": ["python:half_written:S", "python:needs_more:S"],
                    "steps": [4]})
    assert str(refused.value).splitlines() == [
        "<spec>: key 'solvers': solver 'python:half_written:S': importing it raised RuntimeError: not finished",
        "<spec>: key 'solvers': solver 'python:needs_more:S': importing it raised ModuleNotFoundError: No module "
        "named 'not_installed_anywhere'"]
    assert runs.read_text() == "x"  # the failing module ran once, not once per check that reads the solvers


def test_a_python_solvers_options_eta_and_steps_are_checked_as_a_registered_ones():
    with pytest.raises(SpecError) as refused:
        parse_spec({"models": ["ring2d"], "n_samples": 8, "solvers": [MINE], "options": {MINE: {"order": 2}},
                    "steps_by_solver": {MINE: [0]}})
    assert str(refused.value).splitlines() == [
        "<spec>: missing key 'steps' (needed by the fixed-step solvers listed)",
        f"<spec>: key 'steps_by_solver.{MINE}' must be a non-empty list of distinct integers >= 1, got [0]",
        f"<spec>: key 'options.{MINE}.order': unknown option; allowed: none"]


def test_a_resume_refuses_a_python_solver_whose_code_changed(run, tmp_path):
    spec, run_dir, _, table = run
    assert store.open_run(run_dir, spec)["run_id"] == "run"  # the same code: resumes
    copy = tmp_path / "run"
    (copy / "rows").mkdir(parents=True)
    (copy / "run.json").write_text((run_dir / "run.json").read_text())
    row = {k: v for k, v in table[table.solver == MINE].iloc[0].items() if not pd.isna(v)}
    store.write_row(copy, {**row, "solver_sha256": "0" * 64})
    now = store.solver_sha256(MINE)
    with pytest.raises(ValueError) as refused:
        store.open_run(copy, spec)
    assert str(refused.value) == (f"{copy}: the code of its python: solvers changed since its rows were made "
                                  f"({MINE}: its rows ran code 000000000000, its files now hash {now[:12]}): use a "
                                  f"new --out, or restore the code")


def test_compare_names_a_python_solver_whose_code_differs(run):
    _, _, _, base = run
    head = base.assign(solver_sha256=base.solver_sha256.where(base.solver != MINE, "f" * 64))
    result = compare_runs(base, head)
    assert result["other_code"] == [MINE] and result["regressions"].empty
    assert (f"{MINE} ran other code in head than in base (solver_sha256): the changes below are those of your "
            "solver's code as well as of the commits") in terminal_summary(result)
    unpaired = compare_runs(base, head.assign(seed=1))  # seeds averaged: the digests go along
    assert unpaired["other_code"] == [MINE]


def test_reports_draw_python_solvers_apart_and_give_their_nominal_order(run, tmp_path):
    _, run_dir, _, table = run
    styles = solver_styles([MINE, MINE_SDE, "euler"])
    assert styles[MINE] == (USER_COLOURS[0], "o") and styles[MINE_SDE] == (USER_COLOURS[0], "s")
    assert solver_order([MINE_SDE, "heun", MINE, "euler"]) == ["euler", "heun", MINE, MINE_SDE]
    orders = order_table(table).set_index(["solver", "eta"])
    assert orders.loc[(MINE, 0.0), "nominal"] == 1 and orders.loc[(MINE, 0.0), "order"] == pytest.approx(
        orders.loc[("euler", 0.0), "order"], abs=0)
    # a report where the module does not import: the rows say the order; rows from before that column cannot
    elsewhere = table.replace({"solver": {MINE: "python:not_here:X"}})
    assert order_table(elsewhere).set_index(["solver", "eta"]).loc[("python:not_here:X", 0.0), "nominal"] == 1
    older = order_table(elsewhere.assign(nominal_order=None)).set_index(["solver", "eta"])
    assert pd.isna(older.loc[("python:not_here:X", 0.0), "nominal"]) and older.loc[("euler", 0.0), "nominal"] == 1
    md, _ = build_report([run_dir], tmp_path / "report")
    text = md.read_text()
    assert MINE in text and "![" in text
