"""Pareto dominance and budget tables on hand-made tables."""
import numpy as np
import pytest
import pandas as pd

from bench.analysis.frontier import (budget_table, default_quality, eta_gap, exec_mode_table, fitted_order,
                                     fitted_summary, fitted_vs_formulas, frontier, order_summary, order_table,
                                     pareto_mask, table1_shape, time_budget_table)


def test_dominated_points_are_off_the_frontier():
    cost = [1, 2, 3, 4, 2]
    quality = [5.0, 3.0, 3.5, 1.0, 4.0]
    # (3, 3.5) is dominated by (2, 3.0); (2, 4.0) by (2, 3.0) at equal cost.
    assert pareto_mask(cost, quality).tolist() == [True, True, False, True, False]


def test_exact_ties_are_all_kept_and_nan_is_never_on_it():
    cost = [1, 1, 2, np.nan, 3, 0.5]
    quality = [2.0, 2.0, 1.0, 0.1, np.nan, 9.0]
    assert pareto_mask(cost, quality).tolist() == [True, True, True, False, False, True]


def test_equal_quality_at_higher_cost_is_dominated():
    assert pareto_mask([1, 2], [1.0, 1.0]).tolist() == [True, False]


def test_frontier_is_computed_per_model():
    df = pd.DataFrame({"model": ["a", "a", "b", "b"], "nfe": [1, 2, 1, 2], "q": [1.0, 2.0, 3.0, 0.5]})
    assert frontier(df, "nfe", "q").on_frontier.tolist() == [True, False, True, True]


def _rows(**columns):
    """Result rows as the store gives them (one seed, eager), with ``columns``."""
    return pd.DataFrame({"model": "m", "seed": 0, "exec_mode": "eager", "spacing": "logsnr", "eta": 0.0,
                         "tolerance": np.nan, **columns})


def test_budget_table_takes_the_best_config_within_each_budget():
    df = _rows(status=["ok", "ok", "ok", "failed"], nfe=[5, 10, 20, 8], err_reference=[0.5, 0.1, 0.2, 0.0],
               solver=["euler", "heun", "rk4", "x"], steps=[5, 5, 5, 8])
    table = budget_table(df, "err_reference", budgets=(5, 10, 50))
    assert table["best config"].tolist() == ["euler (5 logsnr, eta 0)", "heun (5 logsnr, eta 0)", "heun (5 logsnr, eta 0)"]
    assert (table.ties == 0).all()  # without standard errors nothing ties with the best


def test_budget_table_shows_ties_and_ranks_exec_modes_apart():
    """rk4 is 0.03 worse than heun with SEs of 0.02 each: within 1.96 x 0.028, a tie; euler is 0.4 worse, no tie.
    A bf16 row that looks better than every eager one is ranked among the bf16 rows only."""
    df = _rows(status="ok", nfe=[10, 10, 10, 10], solver=["heun", "rk4", "euler", "heun"], steps=5,
               err_reference=[0.10, 0.13, 0.50, 0.09], err_reference_se=[0.02, 0.02, 0.02, 0.02],
               exec_mode=["eager", "eager", "eager", "bf16"])
    table = budget_table(df, "err_reference", budgets=(10,)).set_index("exec_mode")
    assert table.loc["eager", "best config"].startswith("heun") and table.loc["eager", "ties"] == 1
    assert table.loc["eager", "tied with (not significantly worse)"] == "rk4 (5 logsnr, eta 0)"
    assert table.loc["bf16", "err_reference"] == 0.09 and table.loc["bf16", "ties"] == 0


def test_an_exact_tie_goes_to_the_cheaper_configuration_at_every_budget():
    """Configurations of equal quality (euler at eta 1 and euler_maruyama give the same samples): the best was
    whichever an unstable sort put first, and flipped from budget to budget; now the cheaper, at every budget."""
    tied = 20
    df = _rows(status="ok", nfe=[8] * tied + [4], steps=[8] * tied + [4], solver=[f"s{i}" for i in range(tied)] + ["cheap"],
               eta=1.0, frechet=0.1, frechet_se=0.2, wall_s=[2.0] * tied + [1.0], n_samples=1000, device="cpu",
               host="h")
    for table in (budget_table(df, "frechet", budgets=(5, 10, 20)), time_budget_table(df, "frechet")):
        assert table["best solver"].tolist() == ["cheap"] * len(table) and len(table) >= 2, table


def test_budget_table_averages_seeds_and_their_standard_errors():
    df = _rows(status="ok", nfe=10, solver="heun", steps=5, seed=[0, 1], err_reference=[0.1, 0.3],
               err_reference_se=[0.03, 0.04], schedule="VPLinear", options="{}", n_samples=8, batch_size=8,
               dtype="float32", reference_size=np.nan, fid_reference=None)
    row = budget_table(df, "err_reference", budgets=(10,)).iloc[0]
    assert row.err_reference == pytest.approx(0.2) and row.err_reference_se == pytest.approx(0.025)


def test_one_configuration_and_seed_from_two_runs_is_one_measurement_not_two_seeds():
    """The same spec run on two machines and reported together: each seed's two rows are the same samples, so the
    mean over seeds 0 and 1 has the SE of two seeds (0.025), not of four (0.0125 before), and one row in the table,
    not a configuration tied with itself."""
    keys = dict(status="ok", nfe=10, solver="heun", steps=5, schedule="VPLinear", options="{}", n_samples=8,
                batch_size=8, dtype="float32", reference_size=np.nan, fid_reference=None, guidance_scale=np.nan,
                conditions=None, guidance_interval=None)
    df = _rows(**keys, seed=[0, 1, 0, 1], host=["a", "a", "b", "b"], err_reference=[0.1, 0.3, 0.1, 0.3],
               err_reference_se=[0.03, 0.04, 0.03, 0.04])
    table = budget_table(df, "err_reference", budgets=(10,))
    assert len(table) == 1 and table.ties[0] == 0
    assert table.err_reference[0] == pytest.approx(0.2) and table.err_reference_se[0] == pytest.approx(0.025)
    one_seed = budget_table(df[df.seed == 0], "err_reference", budgets=(10,))
    assert len(one_seed) == 1 and one_seed.ties[0] == 0 and one_seed.err_reference_se[0] == pytest.approx(0.03)
    from bench.analysis.frontier import seed_std

    assert seed_std(df, "err_reference")["count"].tolist() == [2]  # the seed-to-seed spread: two seeds, not four
    rows = _eta_rows({(5, 0.0): 100.0, (5, 1.0): 103.0, (20, 0.0): 90.0, (20, 1.0): 91.0}).assign(fid_se=3.0)
    twice = pd.concat([rows.assign(host="a"), rows.assign(host="b")])
    assert eta_gap(twice, "fid").gap_se.tolist() == pytest.approx(eta_gap(rows, "fid").gap_se.tolist())


def test_time_budgets_are_1_2_5_steps_spanning_the_costs():
    from bench.analysis.frontier import time_budgets

    assert time_budgets([0.013, 0.4, np.nan, 0.0]) == (0.02, 0.05, 0.1, 0.2, 0.5)
    assert time_budgets([7.0, 30.0]) == (10.0, 20.0, 50.0) and time_budgets([2.0]) == (2.0,)
    assert time_budgets([np.nan]) == ()


def test_by_time_exec_modes_compete_machines_are_ranked_apart_and_seeds_times_averaged():
    """heun's eager and compile rows are equally good, compile twice as fast: by NFE each mode is ranked on its own,
    by time compile wins the budget eager does not fit. A second host's rows, slower, are ranked on their own; two
    seeds' timings (0.8 and 1.2 ms per sample) give their mean."""
    from bench.analysis.frontier import time_budget_table

    df = _rows(status="ok", solver=["heun", "heun", "euler", "heun", "heun"], steps=5, nfe=[10, 10, 5, 10, 10],
               exec_mode=["eager", "compile", "eager", "eager", "eager"], seed=[0, 0, 0, 0, 1],
               host=["a", "a", "a", "b", "b"], device="cpu", n_samples=100, wall_s=[0.2, 0.1, 0.05, 0.08, 0.12],
               err_reference=[0.1, 0.1, 0.5, 0.1, 0.1], err_reference_se=0.01, schedule="VPLinear", options="{}",
               batch_size=100, dtype="float32", reference_size=np.nan, fid_reference=None)
    table = time_budget_table(df, "err_reference")
    assert "device" not in table and table.groupby("host")["ms_per_sample budget"].apply(list).to_dict() == {
        "a": [0.5, 1.0, 2.0], "b": [1.0]}
    best = table.set_index(["host", "ms_per_sample budget"])["best config"]
    assert best["a", 0.5] == "euler (5 logsnr, eta 0)" and best["a", 1.0] == "heun (5 logsnr, eta 0, compile)"
    assert table.set_index("host").loc["b", "ms_per_sample"] == pytest.approx(1.0)
    assert table.set_index("host").loc["b", "ms_per_sample_std"] == pytest.approx(0.4 / 2**0.5)  # over the seeds
    assert table.set_index("host").loc["a", "ms_per_sample_std"].isna().all()  # timed once: no spread
    repeated = time_budget_table(df.assign(wall_s_std=0.01), "err_reference").set_index("host").loc["a"]
    assert repeated.ms_per_sample_std.tolist() == pytest.approx([0.1] * 3)  # 1000 x 0.01 s / 100 samples
    assert set(budget_table(df[df.host == "a"], "err_reference", budgets=(10,)).exec_mode) == {"eager", "compile"}


def test_default_quality_prefers_fid_then_err_reference():
    assert default_quality(pd.DataFrame({"fid": [1.0], "err_reference": [0.1]})) == "fid"
    assert default_quality(pd.DataFrame({"fid": [np.nan], "err_reference": [0.1], "frechet": [2.0]})) == "err_reference"


def test_fitted_order_of_an_exact_power_law():
    nfe = np.array([10, 20, 40])
    order, se = fitted_order(nfe, 3.0 * nfe**-2.0)
    assert abs(order - 2.0) < 1e-12 and np.isnan(se)  # no standard errors given: none propagated
    assert np.isnan(fitted_order([10], [1.0])).all()


def test_the_fitted_orders_standard_error_is_the_spread_of_orders_fitted_to_noisy_errors():
    """Errors 3 NFE^-2 with independent noise of known SE (5%, 10%, 20% on log error): the orders fitted to 4,000
    draws spread as fitted_order's SE says, and their mean is the true order."""
    nfe, relative = np.array([4.0, 8.0, 16.0]), np.array([0.05, 0.1, 0.2])
    noise = np.random.default_rng(0).standard_normal((4000, 3)) * relative
    errors = 3.0 * nfe**-2.0 * np.exp(noise)
    fitted = np.array([fitted_order(nfe, e, relative * e) for e in errors])
    assert fitted[:, 0].mean() == pytest.approx(2.0, abs=0.01)
    assert fitted[:, 0].std() == pytest.approx(fitted[0, 1], rel=0.05)  # the SE depends on the relative SEs alone


def test_the_order_table_gives_each_curves_order_against_its_nominal_and_says_where_the_error_does_not_fall():
    nfe = [4, 8, 16]
    heun = [3.0 * n**-2.0 for n in nfe]  # heun: order 2 exactly
    unstable = [0.46, 0.50, 0.52]  # dpmpp_2m on a grid of very uneven steps: the error rises
    df = _rows(status="ok", solver=["heun"] * 3 + ["dpmpp_2m"] * 3, options="{}", nfe=nfe * 2, steps=nfe * 2,
               err_reference=heun + unstable, err_reference_se=[e / 100 for e in heun + unstable],
               guidance_scale=np.nan)
    orders = order_table(df).set_index("solver")
    assert orders.loc["heun", "nominal"] == 2 and orders.loc["heun", "order"] == pytest.approx(2.0)
    assert orders.loc["heun", "local orders"] == "2, 2" and orders.loc["heun", "error falls"] == "yes"
    assert orders.loc["dpmpp_2m", "error falls"] == "no" and orders.loc["dpmpp_2m", "order"] < 0
    assert orders.loc["heun", "order_se"] == pytest.approx(0.01 / np.sqrt(2 * np.log(2) ** 2))
    (reached, stuck) = order_summary(orders.reset_index())
    assert reached.startswith("m: 1 of 2 curves reach their nominal order (fitted order within 0.5 of it or above)")
    assert "dpmpp_2m (logsnr: rises, NFE 4-16)" in stuck
    twice = order_table(pd.concat([df.assign(host="a"), df.assign(host="b")])).set_index("solver")  # two machines
    assert twice.loc["heun", "order_se"] == pytest.approx(orders.loc["heun", "order_se"])  # not 1/sqrt(2) of it


def _eta_rows(values):
    """Rows of one solver and seed: {(nfe, eta): fid}."""
    return pd.DataFrame([{"model": "m", "solver": "ddim", "options": "{}", "spacing": "uniform", "exec_mode": "eager",
                          "nfe": nfe, "steps": nfe, "eta": eta, "seed": 0,
                          "fid": fid, "status": "ok"} for (nfe, eta), fid in values.items()])


def test_the_ddim_table1_shape_is_judged_from_the_gaps():
    holds = _eta_rows({(10, 0.0): 13.0, (10, 1.0): 41.0, (100, 0.0): 4.2, (100, 1.0): 6.0, (50, 0.0): 6.0})
    gaps = eta_gap(holds, "fid")
    assert list(gaps.nfe) == [10, 100] and list(gaps.gap) == [28.0, pytest.approx(1.8)]
    [sentence] = table1_shape(gaps)
    assert "ddim (uniform): the shape of DDIM's Table 1 holds: at NFE 10 eta 0 is better" in sentence
    widening = _eta_rows({(10, 0.0): 13.0, (10, 1.0): 20.0, (100, 0.0): 4.0, (100, 1.0): 30.0})
    assert "does not hold" in table1_shape(eta_gap(widening, "fid"))[0]
    noise_wins = _eta_rows({(10, 0.0): 30.0, (10, 1.0): 20.0, (100, 0.0): 4.0, (100, 1.0): 4.5})
    assert "does not hold: at NFE 10 eta 0 is worse" in table1_shape(eta_gap(noise_wins, "fid"))[0]
    assert eta_gap(_eta_rows({(10, 0.0): 1.0}), "fid").empty


def test_the_table1_shape_is_not_judged_within_the_standard_errors():
    """Gaps of -22.4 and -22.2 with SEs of about 5.5 (the image example's ddim): neither closing nor widening."""
    rows = _eta_rows({(5, 0.0): 129.2, (5, 1.0): 106.8, (20, 0.0): 110.9, (20, 1.0): 88.7}).assign(fid_se=3.9)
    [sentence] = table1_shape(eta_gap(rows, "fid"))
    assert "at NFE 5 eta 0 is worse" in sentence and "(unchanged within 1.96 standard errors)" in sentence
    close = _eta_rows({(5, 0.0): 100.0, (5, 1.0): 103.0, (20, 0.0): 90.0, (20, 1.0): 91.0}).assign(fid_se=3.0)
    [sentence] = table1_shape(eta_gap(close, "fid"))
    assert "cannot be told here: at NFE 5 eta 0 is not distinguishable from eta 1" in sentence


def _mode_rows(wall_s: dict) -> pd.DataFrame:
    """Rows of one model at batch 64: (solver, exec_mode) -> wall_s, NFE 10, forward 0.01 s."""
    rows = [{"model": "m", "schedule": "DiscreteVP", "solver": solver, "options": "{}", "steps": 10, "spacing": "logsnr",
             "eta": 0.0, "reference_size": np.nan, "fid_reference": None,
             "tolerance": np.nan, "seed": 0, "n_samples": 64, "batch_size": 64, "dtype": "float32", "device": "gpu",
             "batch_used": 64, "exec_mode": mode, "status": "ok", "nfe": 10.0, "wall_s": wall, "forward_s": 0.01,
             "overhead_ratio": wall / (10 * 0.01), "drift_vs_eager": np.nan if mode == "eager" else 0.5,
             "fid_vs_eager": np.nan} for (solver, mode), wall in wall_s.items()]
    return pd.DataFrame(rows)


def test_the_exec_mode_table_compares_each_config_with_its_own_eager_twin():
    rows = _mode_rows({("ddim", "eager"): 0.2, ("ddim", "compile"): 0.1, ("heun", "eager"): 0.4,
                       ("heun", "compile"): 0.1, ("euler", "compile"): 0.3})  # euler: no eager twin
    table = exec_mode_table(rows).set_index("exec_mode")
    assert table.loc["compile", "configs"] == 3 and table.loc["eager", "configs"] == 2
    assert table.loc["compile", "speedup vs eager (median)"] == pytest.approx(3.0)  # median of 2 and 4
    assert table.loc["eager", "speedup vs eager (median)"] == pytest.approx(1.0)
    assert table.loc["compile", "speedup vs eager (quartiles)"] == "2.5-3.5"  # of 2 and 4; euler has no twin
    assert table.loc["compile", "overhead_ratio (max)"] == pytest.approx(3.0)
    assert table.loc["compile", "drift_vs_eager (median)"] == 0.5 and np.isnan(table.loc["eager", "drift_vs_eager (median)"])
    assert "fid_vs_eager (median)" not in table  # no FID in these rows
    assert exec_mode_table(rows[rows.exec_mode == "eager"]).empty


def _guided_rows():
    """Two solvers at NFE 10 and 20 over guidance scales 1, 3, 6: precision rises and recall falls with the scale for
    'a' (beyond the SEs), FID is lowest at 3; 'b' wins at scale 1, 'a' at 3 and 6."""
    rows = []
    for solver, fids in (("a", {1: 30.0, 3: 20.0, 6: 25.0}), ("b", {1: 22.0, 3: 26.0, 6: 40.0})):
        for scale, fid in fids.items():
            for nfe in (10, 20):
                rows.append({"solver": solver, "guidance_scale": float(scale), "nfe": nfe, "steps": nfe,
                             "fid": fid + (5 if nfe == 10 else 0), "fid_se": 0.5, "precision": 0.5 + 0.05 * scale,
                             "precision_se": 0.01, "recall": 0.8 - 0.05 * scale, "recall_se": 0.01, "status": "ok"})
    return _rows(**{key: [row[key] for row in rows] for key in rows[0]})


def test_guidance_table_and_trends_read_the_trade_off():
    from bench.analysis.frontier import guidance_table, guidance_trends

    table = guidance_table(_guided_rows())
    assert len(table) == 12 and {"fid", "fid_se", "precision", "recall_se"} <= set(table.columns)
    lines = guidance_trends(table)
    assert "precision rises above its scale-1 value beyond the standard errors at some larger scale for 2 of 2" in lines[0]
    assert lines[0].endswith("it peaks at scale 6 for 2.")
    assert "recall at scale 6 is below its scale-1 value beyond the standard errors for 2 of 2 solver curves" in lines[1]
    assert lines[2].endswith("1 for 1, 3 for 1.")  # the scale with the lowest FID: b at 1, a at 3
    assert guidance_table(_guided_rows().assign(guidance_scale=2.0)).empty  # one scale: no trade-off to show


def test_budget_table_ranks_each_guidance_scale_and_says_when_the_best_solver_changes():
    from bench.analysis.frontier import best_solver_by_scale

    table = budget_table(_guided_rows(), "fid", budgets=(20,))
    assert table.set_index("guidance_scale")["best solver"].to_dict() == {1.0: "b", 3.0: "a", 6.0: "a"}
    assert "cfg 3" in table.set_index("guidance_scale").loc[3.0, "best config"]
    (line,) = best_solver_by_scale(table)
    assert line.startswith("m, NFE <= 20: the best solver changes with the scale (scale 1: b, scale 3: a, scale 6: a)")
    assert "beyond the standard errors" in line


def _grid_rows(solver, nfe, values, fitted_solver=None, fitted_seeds="[1000]", seed=0):
    """Rows of one solver and NFE: (spacing, err_reference, its se) each; a fitted: spacing gets the fit's columns."""
    rows = []
    for spacing, value, se in values:
        fitted = spacing.startswith("fitted:")
        rows.append({"model": "m", "solver": solver, "nfe": nfe, "eta": 0.0, "exec_mode": "eager", "steps": nfe,
                     "spacing": spacing, "seed": seed, "status": "ok", "err_reference": value, "err_reference_se": se,
                     "fitted_solver": (fitted_solver or solver) if fitted else None,
                     "fitted_seeds": fitted_seeds if fitted else None, "fitted_cost_evaluations": 500 if fitted else None,
                     "fitted_cost_s": 9.0 if fitted else None})
    return rows


def test_a_fitted_grid_is_judged_against_the_best_formula_at_its_nfe_with_the_combined_error():
    df = pd.DataFrame(
        _grid_rows("ddim", 5, [("logsnr", 1.0, 0.05), ("karras", 0.8, 0.05), ("fitted:g", 0.5, 0.05)])
        + _grid_rows("ddim", 10, [("logsnr", 0.30, 0.02), ("fitted:g", 0.28, 0.02)])
        + _grid_rows("unipc_2", 5, [("logsnr", 0.4, 0.01), ("fitted:g", 0.6, 0.01)], fitted_solver="ddim", seed=1000))
    table = fitted_vs_formulas(df).set_index(["solver", "nfe"])
    assert table.loc[("ddim", 5), "best formula"] == "karras"
    assert table.loc[("ddim", 5), "verdict"] == "fitted better"  # 0.3 below, 4.2 combined SEs
    assert table.loc[("ddim", 5), "change"] == pytest.approx(-0.375)
    assert table.loc[("ddim", 10), "verdict"] == "tie"  # 0.02 below at a combined SE of 0.028
    assert table.loc[("unipc_2", 5), "verdict"] == "formula better"
    assert table.loc[("unipc_2", 5), "notes"] == "fitted for ddim; evaluated on a training seed"
    assert table.loc[("ddim", 5), "fit evaluations"] == 500
    (line,) = fitted_summary(fitted_vs_formulas(df))
    assert line.startswith("m, err_reference: the fitted grid beats the best formula significantly in 1 of 3 "
                           "solver/NFE cells, by 38% (median), ties in 1, loses in 1")


def test_runs_without_fitted_grids_have_no_fitted_table():
    df = pd.DataFrame(_grid_rows("ddim", 5, [("logsnr", 1.0, 0.05)]))
    assert fitted_vs_formulas(df.drop(columns="fitted_solver")).empty and fitted_vs_formulas(df).empty
