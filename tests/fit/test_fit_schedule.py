"""python -m bench fit-schedule: the dynamic programme against brute force on an exact teacher, the step costs, the
guarantee against the formulas, the grid file in a spec and on the runner's path, and bad input before compute."""
import itertools
import json
import subprocess
import sys
import tomllib

import pytest
import torch

from bench.fit import FitRequest, Fitter, cheapest_path, check, step_counts
from bench.run import sampling
from bench.run.runner import SweepCache, run_config
from bench.spec import fitted as fitted_grids
from bench.spec.config import SpecError, expand, parse_spec
from solvers import sample
from solvers.noise import NoNoise
from support import bench_cli


def _request(**changes):
    base = dict(model="gmm_hd", solvers=["ddim"], steps=[3], seeds=[1000], n_samples=16, candidates=8,
                teacher_tolerance=1e-10, refine_rounds=1, dtype="float64", threads=1)
    return FitRequest(**{**base, **changes})


@pytest.fixture(scope="module")
def fitter():
    fitter = Fitter(_request(), log=lambda line: None)
    fitter.prepare("ddim")
    return fitter


def _brute_force(costs, steps):
    last = costs.shape[0] - 1
    best = min(((0, *inner, last) for inner in itertools.combinations(range(1, last), steps - 1)),
               key=lambda path: sum(float(costs[a, b]) for a, b in zip(path, path[1:])))
    return list(best), sum(float(costs[a, b]) for a, b in zip(best, best[1:]))


@pytest.mark.parametrize("solver", ["ddim", "heun"])
def test_the_dynamic_programme_finds_the_brute_force_optimum_of_an_exact_teacher(fitter, solver):
    costs = fitter.step_costs(solver)  # the analytic mixture's exact score, teacher at rtol 1e-10, float64
    for steps in range(1, 6):
        path, cost = cheapest_path(costs, steps)
        expected_path, expected_cost = _brute_force(costs, steps)
        assert path == expected_path and cost == pytest.approx(expected_cost, rel=1e-12)


def test_the_programme_respects_inadmissible_steps_and_refuses_impossible_counts():
    generator = torch.Generator().manual_seed(0)
    costs = torch.rand(7, 7, generator=generator, dtype=torch.float64)
    costs[0, 6] = costs[1, 6] = float("inf")  # no step may end at the last candidate from 0 or 1
    for steps in range(2, 7):
        (path, cost), (expected_path, expected_cost) = cheapest_path(costs, steps), _brute_force(costs, steps)
        assert path == expected_path and cost == pytest.approx(expected_cost, rel=1e-12)
    with pytest.raises(ValueError, match="no path of 1 admissible steps"):
        cheapest_path(costs, 1)
    with pytest.raises(ValueError, match="7 steps cannot be taken through 7 candidates"):
        cheapest_path(costs, 7)


def test_step_costs_reuse_the_network_only_where_the_input_is_the_same(fitter):
    calls = fitter.network.calls
    costs = fitter.step_costs("ddim")
    assert fitter.network.calls - calls == len(fitter.candidates) - 1  # one evaluation per starting candidate
    calls = fitter.network.calls
    fitter.step_costs("heun")  # heun's second evaluation is at each step's own end: not reusable
    pairs = len(fitter.candidates) * (len(fitter.candidates) - 1) // 2
    assert fitter.network.calls - calls == len(fitter.candidates) - 1 + pairs
    # one entry recomputed on the bare model, without any remembered evaluation
    seed = fitter.seeds[0]
    _, bare = SweepCache().model(seed.cfg)
    j, k = 2, 6
    x = sample("ddim", bare, seed.teacher[j], fitter.candidates[[j, k]], eta=0.0, noise=NoNoise("test"))
    assert float(costs[j, k]) == (x - seed.teacher[k]).reshape(len(x), -1).norm(dim=1).mean().item()


def test_the_fitted_grid_is_never_worse_than_a_formula_on_the_training_seeds(fitter):
    for solver in ("ddim", "dpmpp_2m"):
        (result,) = fitter.fit(solver)
        errors = result["train_error"]
        formulas = {k: v for k, v in errors.items() if k not in ("fitted", "dp")}
        assert {"uniform", "logsnr", "karras", "time_quadratic", "kl_optimal"} <= set(formulas)  # AYS: not VPLinear's
        assert errors["fitted"] <= min(formulas.values()) and errors["fitted"] <= errors["dp"]
        assert result["best_formula"] == min(formulas, key=formulas.get)
        # the recorded error is the grid's: recomputed on the runner's solve path from the written times
        assert fitter.error(solver, torch.tensor(result["times"], dtype=torch.float64)) == errors["fitted"]
        assert result["network_evaluations"] > result["shared_evaluations"] > 0


@pytest.fixture(scope="module")
def grid_folder(tmp_path_factory, fitter):
    folder = tmp_path_factory.mktemp("grids")
    (result,) = fitter.fit("ddim")
    fitter.write(result, folder)
    (folder / "notes.toml").write_text('title = "not a grid"\n')  # other TOML files in the folder are ignored
    return folder


def _spec(**changes):
    base = {"name": "f", "models": ["gmm_hd"], "solvers": ["ddim", "dpmpp_2m"], "steps": [3, 5], "n_samples": 16,
            "seeds": [0], "metrics": ["err_reference"], "timing_repeats": 1, "time_limit_s": 0}
    return parse_spec({**base, **changes})


def test_a_folder_gives_each_cell_the_grid_fitted_for_it_and_a_file_gives_its_grid_to_every_solver(grid_folder):
    (path,) = grid_folder.glob("gmm_hd-*.toml")
    by_folder = [c for c in expand(_spec(spacings=[f"fitted:{grid_folder}"]))]
    cells = {(c.solver, c.steps): c for c in by_folder}
    assert set(cells) == {("ddim", 3), ("ddim", 5), ("dpmpp_2m", 3), ("dpmpp_2m", 5)}
    assert cells["ddim", 3].skip_reason is None and cells["ddim", 3].fitted.path == str(path)
    assert "no grid in" in cells["ddim", 5].skip_reason and "with ddim at 5 steps" in cells["ddim", 5].skip_reason
    assert cells["dpmpp_2m", 3].fitted is None and cells["dpmpp_2m", 3].skip_reason
    by_file = expand(_spec(spacings=[f"fitted:{path}"]))
    assert [(c.solver, c.steps, c.skip_reason) for c in by_file] == [("ddim", 3, None), ("dpmpp_2m", 3, None)]
    assert by_file[0].config_id == cells["ddim", 3].config_id  # the grid's values define the config, not its path


def test_a_row_on_a_fitted_grid_is_solved_on_the_files_times_and_says_what_the_grid_was_fitted_for(grid_folder):
    (path,) = grid_folder.glob("gmm_hd-*.toml")
    grid = fitted_grids.read(path)
    cache = SweepCache()
    rows = {c.solver: run_config(c, cache, {}, "test") for c in expand(_spec(spacings=[f"fitted:{path}"], seeds=[1000]))}
    assert all(row["status"] == "ok" for row in rows.values()), rows
    assert rows["ddim"]["fitted_solver"] == rows["dpmpp_2m"]["fitted_solver"] == "ddim"
    assert json.loads(rows["ddim"]["grid_sigmas"]) == list(grid.sigmas)
    assert "grid fitted for ddim, not dpmpp_2m" in rows["dpmpp_2m"]["message"]
    assert "seed 1000, one the grid was fitted on (not held out)" in rows["ddim"]["message"]
    # the samples are those of the solver on the file's times (its ends snapped to the schedule's)
    cfg = expand(_spec(spacings=[f"fitted:{path}"], seeds=[1000]))[0]
    source, model = cache.model(cfg)
    times = torch.tensor(tomllib.loads(path.read_text())["times"], dtype=torch.float64)
    assert torch.allclose(grid.times(model.schedule), times, rtol=1e-9, atol=0)
    x_T = cache.prior(cfg, source.event_shape, torch.device("cpu"), torch.float32)
    expected = sample("ddim", model, x_T, grid.times(model.schedule), eta=0.0, noise=NoNoise("test"))
    solved = sampling.solve(cfg, model, x_T, cfg.steps, torch.device("cpu"))
    assert torch.equal(solved.samples, expected)


def test_a_changed_grid_is_a_new_config(grid_folder, tmp_path):
    (path,) = grid_folder.glob("gmm_hd-*.toml")
    content = tomllib.loads(path.read_text())
    tables = {name: content.pop(name) for name in ("fit_cost", "train_error")}
    content.pop("kind")
    content["sigmas"][1] *= 0.9
    changed = tmp_path / "changed.toml"
    fitted_grids.write(changed, content, tables, "the same grid with its second point moved")
    assert fitted_grids.read(changed).sigmas[1] == 0.9 * fitted_grids.read(path).sigmas[1]
    ids = [expand(_spec(solvers=["ddim"], spacings=[f"fitted:{p}"]))[0].config_id for p in (path, changed)]
    assert ids[0] != ids[1]


@pytest.mark.parametrize("changes, message", [
    (dict(solvers=["dopri5"]), "dopri5 is adaptive: it chooses its own steps"),
    (dict(solvers=["ddpm"]), "ddpm draws noise"),
    (dict(solvers=["euler_cfg_pp"]), "euler_cfg_pp does not converge to the probability-flow ODE's solution"),
    (dict(solvers=["dpm_solver_3"], steps=[], nfe=[2]), "NFE budget 2 is below dpm_solver_3's minimum of 3"),
    (dict(steps=[8]), "8 steps of ddim need more than 8 candidates"),
    (dict(steps=[], nfe=[]), "give --steps or --nfe"),
    (dict(solvers=["dddim"]), "unknown solver 'dddim'"),
    (dict(model="ring3d"), "unknown model 'ring3d'"),
    (dict(guidance_scale=2.0), "'gmm_hd' is unconditional"),
    (dict(candidates=1), "--candidates must be >= 2, got 1"),
    (dict(refine_rounds=-1), "--refine-rounds must be >= 0, got -1"),
    (dict(formulas=("logsnr", "karas")), "--formulas: unknown spacing 'karas'"),
])
def test_bad_requests_get_one_line_each_before_any_compute(changes, message):
    problems = check(_request(**changes))
    assert any(message in line for line in problems), problems


def test_an_nfe_budget_gives_the_most_steps_within_it():
    assert step_counts(_request(solvers=["heun"], steps=[], nfe=[5, 6, 8]), "heun") == [2, 3, 4]
    assert step_counts(_request(steps=[4], nfe=[5]), "ddim") == [4, 5]


def test_a_spec_names_a_missing_or_empty_fitted_path_before_any_compute(tmp_path):
    with pytest.raises(SpecError, match="key 'spacings': spacing 'fitted:nowhere': no such file or folder"):
        _spec(spacings=["fitted:nowhere"])
    with pytest.raises(SpecError, match="the folder holds no fitted-grid files"):
        _spec(spacings=[f"fitted:{tmp_path}"])
    bad = tmp_path / "bad.toml"
    bad.write_text('kind = "fitted-grid"\nmodel = "gmm_hd"\nsolver = "ddim"\nsteps = 2\nsigmas = [3.0, 1.0]\nseeds = [1]\n')
    with pytest.raises(SpecError, match="sigmas must be 3 strictly decreasing numbers > 0"):
        _spec(spacings=[f"fitted:{bad}"])
    other = tmp_path / "other.toml"
    other.write_text('kind = "spec"\n')
    with pytest.raises(SpecError, match="kind is 'spec', expected 'fitted-grid'"):
        _spec(spacings=[f"fitted:{other}"])


def test_the_command_fits_writes_and_refuses(tmp_path):
    command = [sys.executable, "-m", "bench", "fit-schedule", "ring2d", "--solvers", "ddim", "--steps", "3",
               "--n-samples", "8", "--candidates", "6", "--refine-rounds", "0", "--threads", "1", "--out", str(tmp_path)]
    done = subprocess.run(command, capture_output=True, text=True, check=True)
    (path,) = tmp_path.glob("*.toml")
    assert done.stdout.strip() == str(path) and path.name == "ring2d-ddim-3steps.toml"
    grid = fitted_grids.read(path)
    assert (grid.model, grid.solver, grid.steps, grid.seeds) == ("ring2d", "ddim", 3, (1000,))
    assert grid.cost_evaluations > 0 and "training seeds [1000] x 8 samples" in done.stderr
    status, _, stderr = bench_cli(*command[3:6], "dopri5", *command[7:])
    assert status == 2 and "dopri5 is adaptive" in stderr and not list(tmp_path.glob("*dopri5*"))


def test_the_request_reaches_the_spec_validation_of_a_guided_model():
    fitter = Fitter(_request(model="gmm_classes", guidance_scale=2.0, solvers=["ddim"]), log=lambda line: None)
    assert not check(fitter.request)
    fitter.prepare("ddim")
    assert fitter.seeds[0].conditions is not None and fitter.model.scale == 2.0
    assert fitter.seeds[0].cfg.guidance_scale == 2.0


def test_a_grid_is_found_by_name_in_the_default_folder(grid_folder, tmp_path, monkeypatch):
    (path,) = grid_folder.glob("gmm_hd-*.toml")
    monkeypatch.setattr(fitted_grids, "DEFAULT_DIR", grid_folder)
    by_name = expand(_spec(solvers=["ddim"], spacings=[f"fitted:{path.stem}"]))
    assert by_name[0].fitted.path == str(path) and by_name[0].steps == 3
    with pytest.raises(SpecError, match="no such file or folder \\(nor a grid of that name in"):
        _spec(spacings=["fitted:no-such-grid"])


def test_a_users_python_solver_is_fitted_to_a_safe_file_name_and_its_grid_found_in_the_folder(tmp_path):
    mine = "python:user_solvers:MY_EULER"
    status, stdout, _ = bench_cli("fit-schedule", "ring2d", "--solvers", mine, "--steps", "3", "--n-samples", "8",
                                  "--candidates", "6", "--refine-rounds", "0", "--threads", "1", "--out", str(tmp_path))
    (path,) = tmp_path.glob("*.toml")
    assert status == 0 and path.name == "ring2d-python_user_solvers_MY_EULER-3steps.toml"
    assert fitted_grids.read(path).solver == mine
    (cfg,) = expand(parse_spec({"models": ["ring2d"], "solvers": [mine], "steps": [3], "n_samples": 8,
                                "spacings": [f"fitted:{tmp_path}"]}))
    assert cfg.fitted is not None and cfg.fitted.path == str(path) and cfg.skip_reason is None
