"""Reports embed every plot they list; compare flags a known regression and not a known improvement."""
import math
import re
import subprocess
import sys

import matplotlib
import numpy as np
import pandas as pd
import pytest

from bench.run import store
from bench.analysis.compare import compare_runs, regressed, resolve_run, terminal_summary, timing_lines
from bench.spec.config import expand, parse_spec
from bench.analysis.report import build_report
from bench.run.sweep import run_sweep
from support import bench_cli

SPEC = {"name": "r", "models": ["ring2d"], "solvers": ["euler", "heun", "dpmpp_2m", "ddpm"], "steps": [3, 6],
        "spacings": ["logsnr", "uniform"], "etas": [0.0, 1.0], "n_samples": 48, "seeds": [0, 1],
        "metrics": ["err_reference", "err_stepdoubling", "frechet", "precision_recall", "sliced_wasserstein"],
        "time_limit_s": 0, "reference_time_limit_s": 0}  # in-process: no worker process to start


pytestmark = pytest.mark.xdist_group("report_compare")  # one pytest-xdist worker computes the module fixtures once


@pytest.fixture(scope="module")
def base_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    spec = parse_spec(SPEC, str(root / "r.toml"))
    run_dir = root / "base"
    meta = store.open_run(run_dir, spec)
    run_sweep(expand(spec), run_dir, meta["run_id"], progress=False)
    return run_dir


def test_plotting_is_headless():
    import bench.analysis.plots  # noqa: F401

    assert matplotlib.get_backend().lower() == "agg"


def test_report_embeds_every_plot_it_lists(base_run):
    md_path, html_path = build_report([base_run])
    markdown, page = md_path.read_text(), html_path.read_text()
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", markdown)
    assert len(links) >= 6
    for link in links:
        assert (md_path.parent / link).is_file() and (md_path.parent / link).with_suffix(".svg").is_file()
    assert page.count("data:image/png;base64,") == len(links)
    assert "Best configuration per NFE budget" in markdown and "Configurations that did not finish" in markdown
    assert "Best configuration per time budget" in markdown and "| ms_per_sample budget |" in markdown
    assert "## Convergence orders" in markdown and "| ring2d | heun | {} | logsnr |" in markdown


def test_rows_without_a_quality_figure_still_get_a_report_and_a_comparison_saying_so(base_run, tmp_path):
    """A spec of err_stepdoubling and sample_log_density alone (or err_reference with every reference solve failed):
    nothing to rank by, which the report says, with every section that needs no quality (it raised before)."""
    rows = store.load_rows(base_run)
    bare = tmp_path / "bare"
    _write_run(bare, rows.assign(err_reference=np.nan, frechet=np.nan, sliced_wasserstein=np.nan))
    status, stdout, stderr = bench_cli("report", str(bare))
    markdown = (bare / "report.md").read_text()
    assert status == 0, stderr
    assert "No quality figure in these rows (fid, err_reference, frechet, sliced_wasserstein;" in markdown
    assert "## Environment" in markdown and "## Configurations that did not finish" in markdown
    assert "Best configuration per NFE budget" not in markdown
    status, _, stderr = bench_cli("compare", str(bare), str(bare), "--out", str(tmp_path / "c"))
    assert status == 0, stderr
    empty = tmp_path / "empty"  # a run folder before its first row: one line, not a traceback
    store.open_run(empty, parse_spec(SPEC, str(tmp_path / "r.toml")))
    status, _, stderr = bench_cli("report", str(empty))
    assert status == 2 and stderr.strip() == f"report: no rows in {empty}"


def test_each_model_is_ranked_by_its_own_quality(base_run, tmp_path):
    """A model with FID beside one with err_reference alone: the budget tables ranked every model by the run's first
    quality (FID), so the other vanished from them."""
    rows = store.load_rows(base_run)
    images = rows.assign(model="images", config_id="i" + rows.config_id, err_reference=np.nan,
                         fid=rows.frechet * 10, fid_se=rows.frechet_se * 10)
    mixed = tmp_path / "mixed"
    _write_run(mixed, pd.concat([rows, images], ignore_index=True))
    md_path, _ = build_report([mixed])
    markdown = md_path.read_text()
    assert "## Best configuration per NFE budget (fid, lower is better; images)" in markdown
    assert "## Best configuration per NFE budget (err_reference, lower is better; ring2d)" in markdown
    assert "## Best configuration per time budget (err_reference, lower is better; ring2d)" in markdown
    assert "| images | 5 |" in markdown and "| ring2d | 5 |" in markdown


def test_configurations_err_reference_cannot_rank_are_ranked_by_a_distribution_figure_too(base_run, tmp_path):
    """err_reference exists for deterministic configurations only: the budget tables ranked by it left every
    stochastic one (ddpm, euler at eta 1, ...) out without a word, whatever eta did for the samples."""
    rows = store.load_rows(base_run)
    ok = rows[rows.status == "ok"]
    stochastic = sorted({f"{r.solver} at eta {r.eta:g}" for r in ok[ok.err_reference.isna()].itertuples()})
    markdown = build_report([base_run])[0].read_text()
    assert stochastic and f"{ok.err_reference.isna().sum()} of ring2d's {len(ok)} ok rows have no err_reference " \
                          f"(stochastic ones, which have no single solution to compare with: {', '.join(stochastic)}) " \
                          f"and are left out here; the tables by frechet rank them with the others." in markdown
    by_frechet = markdown.split("## Best configuration per NFE budget (frechet, lower is better)")[1].split("## ")[0]
    assert "eta 1)" in by_frechet and "eta 0)" in by_frechet  # every ok configuration competes
    alone = tmp_path / "alone"  # err_reference the only figure: nothing ranks them, and the report says so
    _write_run(alone, rows.assign(frechet=np.nan, sliced_wasserstein=np.nan, precision=np.nan, recall=np.nan))
    markdown = build_report([alone])[0].read_text()
    assert "and are left out here; no figure of this run ranks them (frechet or sliced_wasserstein in the spec's " \
           "metrics would, on an analytic mixture; FID on images)." in markdown
    assert "## Best configuration per NFE budget (frechet" not in markdown


def test_the_best_solver_at_each_guidance_scale_is_read_from_the_models_first_budget_table(tmp_path):
    """With a second budget table (frechet, for the stochastic configurations), the guidance bullets read both at
    once: the winners they named at a scale were another table's, garbled ("at scale 2, 1, 2, 4")."""
    spec = parse_spec({"name": "g", "models": ["gmm_classes"], "solvers": ["ddim", "dpmpp_2m", "euler_ancestral"],
                       "steps": [3, 6], "etas": [0.0, 1.0], "guidance_scales": [1.0, 4.0], "n_samples": 32,
                       "metrics": ["err_reference", "frechet", "precision_recall"], "time_limit_s": 0,
                       "reference_time_limit_s": 0},
                      str(tmp_path / "g.toml"))
    run_dir = tmp_path / "run"
    run_sweep(expand(spec), run_dir, store.open_run(run_dir, spec)["run_id"], progress=False)
    markdown = build_report([run_dir])[0].read_text()
    first = markdown.split("## Best configuration per NFE budget (err_reference")[1].split("## ")[0]
    winners = {(budget, scale): solver for scale, budget, solver in
               re.findall(r"^\| gmm_classes \| (\d+) \| (\d+) \| (\w+) \|", first, re.M)}
    bullets = re.findall(r"^- gmm_classes, NFE <= (\d+): (.*)$", markdown, re.M)
    assert winners and len(bullets) == len({budget for budget, _ in winners}) and "## Best configuration per NFE " \
           "budget (frechet" in markdown
    for budget, said in bullets:
        named = dict(re.findall(r"scale (\d+): (\w+)", said)) or {
            scale: re.search(r"\((\w+)\)", said).group(1) for b, scale in winners if b == budget}
        assert named == {scale: solver for (b, scale), solver in winners.items() if b == budget}, said


def _with_changes(rows, edits):
    """A copy of ``rows`` with {(solver, column): factor} applied to that solver's ok rows."""
    out = rows.copy()
    for (solver, column), factor in edits.items():
        pick = (out.solver == solver) & (out.status == "ok")
        out.loc[pick, column] = out.loc[pick, column] * factor
    return out


def _quiet(rows):
    """``rows`` with the spread of their repeated timings a quiet machine's (5% of wall_s): the base run's own, taken
    on a loaded machine, may be so wide that a 3x slower config is within it (seen once under a parallel build)."""
    return rows.assign(wall_s_std=0.05 * rows.wall_s)


def test_compare_flags_a_known_regression_and_not_a_known_improvement(base_run):
    base = _quiet(store.load_rows(base_run))
    head = _with_changes(base, {("heun", "err_reference"): 1.5, ("dpmpp_2m", "err_reference"): 0.5,
                                ("euler", "wall_s"): 3.0})
    result = compare_runs(base, head)
    regressions, improvements = result["regressions"], result["improvements"]
    assert set(regressions.solver) == {"heun", "euler"}
    assert set(regressions[regressions.solver == "heun"].metric) == {"err_reference"}
    assert set(regressions[regressions.solver == "euler"].metric) == {"wall_s"}
    assert set(improvements.solver) == {"dpmpp_2m"}
    assert result["matched"] == len(base) and result["added"].empty and result["removed"].empty


def test_compare_reports_a_convergence_order_that_moved_and_none_between_equal_runs(base_run):
    """heun's error at its 6 steps made 4x larger: its order over NFE 6-12 falls by log 4 / log 2 = 2 on every
    curve; the same run against itself moves none. Reported in compare.md and the terminal, not as a regression."""
    base = store.load_rows(base_run)
    assert compare_runs(base, base)["orders"].empty
    head = base.copy()
    head.loc[(head.solver == "heun") & (head.steps == 6), "err_reference"] *= 4.0
    result = compare_runs(base, head)
    moved = result["orders"]
    assert set(moved.solver) == {"heun"} and len(moved) == 2 * 1  # two spacings, eta 0 (ring2d)
    assert list(moved["order base"] - moved["order head"]) == pytest.approx([2.0, 2.0])
    assert (moved.nominal == 2).all() and (moved.nfe == "6-12").all()
    assert "order moved: ring2d heun (logsnr, eta 0, NFE 6-12): " in terminal_summary(result)


def test_compare_judges_sample_metrics_by_their_standard_errors(base_run):
    base = store.load_rows(base_run)
    tiny = _with_changes(base, {("ddpm", "frechet"): 1.0001})
    assert compare_runs(base, tiny)["changes"].query("metric == 'frechet'").empty
    result = compare_runs(base, _with_changes(base, {("ddpm", "frechet"): 50.0}))
    flagged = result["regressions"].query("metric == 'frechet'")
    assert set(flagged.solver) == {"ddpm"} and flagged.threshold.str.contains("max of 10% and 3 SE").all()
    # a change within 3 combined standard errors is no change, however large in percent
    noisy = _with_changes(base, {("ddpm", "frechet_se"): 1e6})
    assert compare_runs(base, _with_changes(noisy, {("ddpm", "frechet"): 50.0}))["changes"].query(
        "metric == 'frechet'").empty


def test_rows_without_standard_errors_fall_back_to_the_seed_spread(base_run):
    base = store.load_rows(base_run).drop(columns=["frechet_se"])
    result = compare_runs(base, _with_changes(base, {("ddpm", "frechet"): 50.0}))
    flagged = result["regressions"].query("metric == 'frechet'")
    assert set(flagged.solver) == {"ddpm"} and flagged.threshold.str.contains("seed spread").all()


def test_a_figure_better_higher_regresses_when_it_falls(base_run):
    """Precision and recall are better higher (the metric registry's BETTER): a solver's recall falling to a
    fifth is a regression, its precision rising by half an improvement, however the other figures stand."""
    base = store.load_rows(base_run)
    head = _with_changes(base, {("ddpm", "recall"): 0.2, ("ddpm", "recall_se"): 0.2, ("heun", "precision"): 1.5,
                                ("heun", "precision_se"): 1e-3})
    result = compare_runs(base, head)
    flagged = result["regressions"].query("metric == 'recall'")
    assert set(flagged.solver) == {"ddpm"} and (flagged["head"] < flagged["base"]).all() and regressed(result)
    risen = result["improvements"].query("metric == 'precision'")
    assert set(risen.solver) == {"heun"} and result["regressions"].query("metric == 'precision'").empty


def test_a_figure_without_a_direction_is_changed_never_a_regression(base_run):
    """LPIPS diversity (what eta buys) has no better side: a move beyond noise is reported as changed, in the report
    too, and a head that only changed it has not regressed."""
    base = store.load_rows(base_run).assign(lpips_diversity=0.3, lpips_diversity_se=0.01)
    result = compare_runs(base, _with_changes(base, {("ddpm", "lpips_diversity"): 2.0}))
    assert set(result["changed"].solver) == {"ddpm"} and set(result["changed"].metric) == {"lpips_diversity"}
    assert result["regressions"].empty and result["improvements"].empty and not regressed(result)


def test_a_new_figure_without_standard_errors_across_seeds_is_not_judged(base_run):
    """Unpaired rows without standard errors fall back to the seed noise measured for the old figures; one it was
    not measured for has nothing to be judged by, and is left out rather than failing the comparison."""
    base = store.load_rows(base_run).drop(columns=["recall_se"])
    head = _with_changes(base, {("ddpm", "recall"): 0.2}).assign(seed=lambda df: df.seed + 10)
    result = compare_runs(base, head)
    assert not result["paired"] and result["changes"].query("metric == 'recall'").empty


def test_a_shift_across_seeds_is_judged_only_where_the_seeds_own_move_was_measured(base_run):
    """Every config of a run moves with its seed's x_T, so a whole model's move between runs of different seeds
    is judged against the move measured between seeds (SEED_SHIFT); coverage has none: not judged, and said so.
    The same fall between runs of the same seeds is a systematic regression."""
    base = store.load_rows(base_run).assign(coverage=0.9, coverage_se=0.01)
    other_seeds = base.assign(seed=base.seed + 10, coverage=0.6)
    unpaired = compare_runs(base, other_seeds)["shifts"].set_index(["model", "metric"])
    assert unpaired.loc[("ring2d", "coverage"), "threshold"].startswith("not judged")
    assert pd.isna(unpaired.loc[("ring2d", "coverage"), "verdict"])
    paired = compare_runs(base, base.assign(coverage=0.6))["shifts"].set_index(["model", "metric"])
    assert paired.loc[("ring2d", "coverage"), "verdict"] == "regression"


def test_image_figures_against_another_reference_set_are_not_judged(base_run):
    """FID against other reference images (another digest) moves without any solver change: not judged, counted and
    said; against the same images, the same move is a regression."""
    base = store.load_rows(base_run).assign(fid=50.0, fid_se=1.0, fid_reference_sha256="aaaa")
    ok = int((base.status == "ok").sum())
    other = compare_runs(base, base.assign(fid=80.0, fid_reference_sha256="bbbb"))
    assert other["changes"].query("metric == 'fid'").empty and other["other_reference"] == ok
    assert f"{ok} configs' FID" in terminal_summary(other)
    same = compare_runs(base, base.assign(fid=80.0))
    assert len(same["regressions"].query("metric == 'fid'")) == ok and same["other_reference"] == 0
    unpaired = compare_runs(base, base.assign(seed=base.seed + 10, fid=80.0, fid_reference_sha256="bbbb"))
    assert not unpaired["paired"] and unpaired["changes"].query("metric == 'fid'").empty
    assert unpaired["other_reference"] == ok // 2  # each config's two seeds averaged into one row


def test_kid_is_judged_by_differences_not_ratios(base_run):
    """An unbiased KID can be 0 or below: a ratio would flag any change of sign."""
    from bench.analysis.compare import _judge

    assert _judge("kid", -1e-4, 2e-4, "m", 128, False, {}, errors=(1e-3, 1e-3))[0] is None
    assert _judge("kid", -1e-4, 2e-2, "m", 128, False, {}, errors=(1e-3, 1e-3))[0] == "regression"


def test_nfe_any_change_of_fixed_steps_and_beyond_rounding_noise_of_adaptive_steps():
    """A fixed-step solver's NFE is exact; an adaptive one's turns on float rounding, paired or not (118 -> 157 NFE
    of dopri8, the same commit on another CPU), so only a move beyond ADAPTIVE_NFE_NOISE counts."""
    from bench.analysis.compare import _judge

    assert _judge("nfe", 10, 11, "m", 128, True, {})[0] == "regression"
    assert _judge("nfe", 118, 157, "m", 128, True, {}, adaptive=True)[0] is None
    assert _judge("nfe", 118, 236, "m", 128, True, {}, adaptive=True)[0] == "regression"
    assert _judge("nfe", 118, 59, "m", 128, False, {}, adaptive=True)[0] == "improvement"


def test_compare_reports_status_regressions_and_added_configs(base_run):
    base = store.load_rows(base_run)
    head = base.copy()
    first_ok = head.index[head.status == "ok"][0]
    head.loc[first_ok, "status"] = "failed"
    extra = head.iloc[[0]].assign(config_id="new", steps=999)  # a config the base does not have
    result = compare_runs(base, pd.concat([head, extra], ignore_index=True))
    assert (result["regressions"].metric == "status").sum() == 1
    assert len(result["added"]) == 1


def _write_run(run_dir, rows: pd.DataFrame) -> None:
    """A run folder of the test grid holding ``rows`` (an edited copy of a real run's), written as the sweep does."""
    store.open_run(run_dir, parse_spec(SPEC, str(run_dir.parent / "r.toml")))
    for row in rows.to_dict("records"):
        store.write_row(run_dir, {k: (None if isinstance(v, float) and np.isnan(v) else v) for k, v in row.items()})


def test_cli_compare_exit_status_and_outputs(base_run, tmp_path):
    cmd = [sys.executable, "-m", "bench", "compare", str(base_run), str(base_run), "--out", str(tmp_path / "c")]
    same = subprocess.run(cmd + ["--fail-on-regression", "--time-ratio", "1e9"], capture_output=True, text=True)
    assert same.returncode == 0, same.stdout + same.stderr
    assert (tmp_path / "c" / "compare.md").is_file() and (tmp_path / "c" / "compare.html").is_file()
    slower = tmp_path / "slower"
    rows = store.load_rows(base_run)
    _write_run(slower, rows.assign(wall_s=rows.wall_s * 10))
    status, stdout, _ = bench_cli("compare", str(base_run), str(slower), "--out", str(tmp_path / "d"),
                                  "--fail-on-regression")
    assert status == 1 and "regressions" in stdout
    other = tmp_path / "other"  # another grid: nothing in common, so nothing judged, which no gate may pass
    _write_run(other, rows.assign(n_samples=rows.n_samples * 2))
    status, stdout, stderr = bench_cli("compare", str(base_run), str(other), "--out", str(tmp_path / "e"))
    assert status == 2 and "0 configs compared" in stdout
    n = rows.n_samples.iloc[0]
    assert f"compare: no configuration of {other} is one of {base_run} ({len(rows)} only in head, {len(rows)} only in " \
           f"base): nothing was judged; the runs share no value of n_samples (n_samples: base {n}, head {2 * n}); run " \
           f"--max-minutes picks N from the machine's speed, so two such runs rarely share it: run the head with " \
           f"n_samples = {n} in its spec (the base's N)" in stderr
    assert "**Nothing was judged**: the runs share no value of n_samples" in (tmp_path / "e" / "compare.md").read_text()


def test_a_model_of_other_weights_is_named_in_a_warning(base_run, tmp_path):
    """Retrained weights move every figure as a code change would: compare says which models ran other weights."""
    rows = store.load_rows(base_run)
    assert rows[rows.status == "ok"].weights_sha256.notna().all()
    assert compare_runs(rows, rows)["other_weights"] == []
    retrained = tmp_path / "retrained"
    _write_run(retrained, rows.assign(weights_sha256="0" * 64))
    status, stdout, _ = bench_cli("compare", str(base_run), str(retrained), "--out", str(tmp_path / "c"))
    line = "warning: ring2d ran other weights in head than in base (weights_sha256): their changes may be the " \
           "model's, not the code's"
    assert status == 0 and line in stdout and line.capitalize() in (tmp_path / "c" / "compare.md").read_text()


def test_a_report_of_two_runs_tells_their_folders_apart_and_warns_of_two_versions_of_a_python_solver(base_run,
                                                                                                    tmp_path):
    rows = store.load_rows(base_run)
    mine = "python:user_solvers:MY_EULER"
    for side in ("a", "b"):  # two folders named run, as two machines' copies of one spec's run would be
        _write_run(tmp_path / side / "run", rows.assign(
            solver=rows.solver.replace({"euler": mine}),
            solver_sha256=np.where(rows.solver == "euler", side * 64, None)))
    markdown = build_report([tmp_path / "a" / "run", tmp_path / "b" / "run"], tmp_path / "report")[0].read_text()
    assert markdown.startswith("# Sampler benchmark: a/run, b/run\n")
    n = int((rows.solver == "euler").sum())
    assert (f"**Warning: {mine}'s rows come from 2 versions of its code** (aaaaaaaaaaaa: {n} rows, bbbbbbbbbbbb: {n} "
            f"rows, solver_sha256); a difference between its configs may be a difference between them.") in markdown


def test_where_nothing_matches_the_line_names_the_keys_without_a_shared_value_else_the_match_keys():
    from bench.analysis.compare import unmatched_line

    base = pd.DataFrame({"model": "m", "solver": ["a", "b"], "eta": [0.0, 1.0], "n_samples": 64})
    swapped = base.assign(eta=[1.0, 0.0])  # every key shares its values, no configuration is the same
    assert unmatched_line(base, swapped).startswith("compare runs of the same grid (a configuration is its model, ")
    other = base.assign(model="q", n_samples=[8, 9])
    assert unmatched_line(base, other) == (
        "the runs share no value of model, n_samples (model: base m, head q; n_samples: base 64, head 8, 9); run "
        "--max-minutes picks N from the machine's speed, so two such runs rarely share it: run the head with "
        "n_samples = 64 in its spec (the base's N)")


def test_resolve_run_by_folder_and_by_commit(base_run):
    assert resolve_run(str(base_run)) == base_run
    commit = store.load_rows(base_run).git_commit.iloc[0]
    if commit != "unknown":
        assert resolve_run(commit[:8], base_run.parent) == base_run
    with pytest.raises(ValueError, match="neither a run folder"):
        resolve_run("zzzzzzz", base_run.parent)


def test_a_commit_resolves_to_its_latest_run_of_the_spec_compared_with(tmp_path):
    """Two runs of one commit, the newer of another grid: compare BASE=<commit> against a run of the first spec takes
    the run of that spec, not the newest."""
    import json

    for name, spec, created in (("a", "default", "2026-12-01T10:00:00"), ("b", "images", "2026-12-01T11:00:00"),
                                ("head", "default", "2026-12-02T09:00:00")):
        (tmp_path / name).mkdir()
        (tmp_path / name / "run.json").write_text(json.dumps(
            {"spec_name": spec, "git_commit": "abcdef1234" if name != "head" else "9999999", "created_at": created}))
    assert resolve_run("abcdef12", tmp_path) == tmp_path / "b"  # the newest, no spec asked
    assert resolve_run("abcdef12", tmp_path, like=tmp_path / "head") == tmp_path / "a"


def test_frontier_facets_by_spacing(base_run, tmp_path):
    from bench.analysis.plots import plot_frontier

    from PIL import Image

    rows = store.load_rows(base_run)
    path = plot_frontier(rows, tmp_path, "frechet", "nfe", facet="spacing")
    plain = plot_frontier(rows, tmp_path, "frechet", "nfe")
    assert path.name == "frontier_frechet_vs_nfe_by_spacing.png"
    n_spacings = rows[rows.status == "ok"].spacing.nunique()
    (width, height), (plain_width, plain_height) = Image.open(path).size, Image.open(plain).size
    assert n_spacings >= 2 and width == pytest.approx(plain_width, rel=0.1)  # one row of panels per spacing
    assert height > 0.75 * n_spacings * plain_height


def test_report_gives_the_seed_spread(base_run):
    from bench.analysis.report import seed_spread

    spread = seed_spread(store.load_rows(base_run))
    assert set(spread.metric) == {"frechet", "sliced_wasserstein"} and (spread.seeds == 2).all()
    assert (spread["median std over configs"] > 0).all()
    assert "Seed-to-seed spread" in build_report([base_run])[0].read_text()


AA_SPEC = {"models": ["ring2d", "gmm_hd"], "solvers": ["euler", "heun", "ddim", "dpmpp_2m", "unipc_2", "ddpm"],
           "steps": [4, 8, 16], "spacings": ["logsnr", "karras"], "etas": [0.0, 1.0], "n_samples": 128,
           "metrics": ["err_reference", "err_stepdoubling", "frechet", "sliced_wasserstein", "precision_recall",
                       "sample_log_density"]}


@pytest.fixture(scope="module")
def two_seeds(tmp_path_factory):
    """The same grid run with seeds 1 and 2: an A/A pair, differing only in sampling noise."""
    runs = []
    for seed in (1, 2):
        root = tmp_path_factory.mktemp(f"seed{seed}")
        spec = parse_spec({**AA_SPEC, "seeds": [seed]}, str(root / "aa.toml"))
        meta = store.open_run(root / "run", spec)
        run_sweep(expand(spec), root / "run", meta["run_id"], progress=False)
        runs.append(store.load_rows(root / "run"))
    return runs


@pytest.mark.slow
def test_an_aa_pair_raises_few_false_alarms_and_a_10_percent_shift_is_caught(two_seeds):
    """Quality thresholds only: wall time in a test run depends on what else the machine does (its
    false-alarm rate is measured on full default runs, see results/example-default/README.md)."""
    base, head = two_seeds
    result = compare_runs(base, head, time_ratio=math.inf)
    ok = int((base.status == "ok").sum())
    flagged = result["regressions"].groupby(["model", "solver", "steps", "spacing", "eta"]).ngroups
    assert not result["paired"] and ok == 96 and flagged <= 0.05 * ok, result["regressions"]
    assert result["shifts"].verdict.isna().all(), result["shifts"]
    shifted = head.copy()
    pick = (shifted.model == "gmm_hd") & (shifted.status == "ok")
    shifted.loc[pick, "err_reference"] *= 1.10
    shifts = compare_runs(base, shifted)["shifts"].set_index(["model", "metric"])
    assert shifts.loc[("gmm_hd", "err_reference"), "verdict"] == "regression"
    assert pd.isna(shifts.loc[("ring2d", "err_reference"), "verdict"])


def _timed_runs(solvers: int = 12, configs: int = 20, seed: int = 0) -> pd.DataFrame:
    """A synthetic run of ``solvers`` x ``configs`` ok rows with wall times (for compare's timing rules)."""
    rng = np.random.default_rng(seed)
    rows = [{"model": "m", "schedule": "VPLinear", "solver": f"s{i}", "options": "{}", "steps": j + 1,
             "spacing": "logsnr", "eta": 0.0, "tolerance": np.nan, "n_samples": 8, "batch_size": 8, "dtype": "float32", "exec_mode": "eager",
             "reference_size": np.nan, "fid_reference": None, "seed": 0, "status": "ok", "config_id": f"{i}-{j}",
             "device": "cpu", "host": "h", "batch_used": 8, "nfe": j + 1.0, "wall_s": float(rng.uniform(0.005, 0.05)),
             "wall_s_std": 0.0, "timing_repeats": 5, "forward_s": 0.001}
            for i in range(solvers) for j in range(configs)]
    return pd.DataFrame(rows)


def test_a_busy_machine_is_reported_once_and_a_slower_solver_still_stands_out():
    base = _timed_runs()
    rng = np.random.default_rng(1)
    busy = base.assign(wall_s=base.wall_s * 2.0 * np.exp(rng.normal(0, 0.4, len(base))))  # slower, and noisy
    result = compare_runs(base, busy)
    assert result["regressions"].empty and result["solver_timing"].verdict.isna().all() and not regressed(result)
    [line] = timing_lines(result)
    assert "wall_s x1.9" in line and "not counted as a regression" in line
    assert "single configs' wall times not judged" in line
    slower = busy.assign(wall_s=np.where(busy.solver == "s3", busy.wall_s * 2, busy.wall_s))  # one solver 2x slower
    result = compare_runs(base, slower)
    flagged = result["solver_timing"].query("verdict == 'regression'")
    assert list(flagged.solver) == ["s3"] and regressed(result)


def test_on_a_quiet_machine_single_configs_are_judged_and_a_whole_run_10x_slower_regressed():
    base = _timed_runs()
    quiet = base.assign(wall_s=base.wall_s * np.exp(np.random.default_rng(2).normal(0, 0.02, len(base))))
    one = quiet.assign(wall_s=np.where(quiet.config_id == "3-4", quiet.wall_s * 2, quiet.wall_s))
    result = compare_runs(base, one)
    assert list(result["regressions"].query("metric == 'wall_s'").solver) == ["s3"]
    assert "each config judged against this median" in timing_lines(result)[0]
    ten = compare_runs(base, base.assign(wall_s=base.wall_s * 10))
    assert regressed(ten) and "a regression: beyond x3" in timing_lines(ten)[0] and ten["regressions"].empty


def test_wall_time_across_devices_is_not_comparable_never_a_regression(base_run):
    base = store.load_rows(base_run)
    head = base.assign(wall_s=base.wall_s * 10, device="NVIDIA H100")
    result = compare_runs(base, head)
    assert result["regressions"].query("metric == 'wall_s'").empty
    assert result["not_comparable"] == int((base.status == "ok").sum())


def test_cli_prints_the_regressed_configs_themselves(base_run, tmp_path):
    worse = tmp_path / "worse"
    rows = store.load_rows(base_run)
    rows.loc[rows.solver == "heun", "err_reference"] *= 2
    _write_run(worse, rows)
    status, stdout, _ = bench_cli("compare", str(base_run), str(worse), "--out", str(tmp_path / "c"),
                                  "--fail-on-regression")
    heun_rows = rows[(rows.solver == "heun") & rows.err_reference.notna()]
    assert status == 1 and len(heun_rows) >= 8
    lines = [line for line in stdout.splitlines() if " heun " in line and "err_reference" in line]
    assert len(lines) >= len(heun_rows) - 2 and "(max of 5% and 3 SE)" in lines[0]  # doubled: beyond 3 SE in most


def test_seed_shift_measures_the_largest_model_median_and_the_configs_99th_percentile():
    """benchmarks/seed_shift.py, behind compare's SEED_SHIFT: two seeds of 20 configs per model, one model's recall
    x1.10 at every config of seed 1 and one config x3; the other model unmoved."""
    import importlib.util
    from pathlib import Path

    script = Path(__file__).parents[2] / "benchmarks" / "seed_shift.py"
    spec = importlib.util.spec_from_file_location("seed_shift", script)
    seed_shift = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(seed_shift)
    def recall(model, step, seed):
        if seed == 0:
            return 0.5
        return 0.55 if model == "a" else 1.5 if step == 0 else 0.5

    rows = [{"model": model, "solver": "s", "steps": step, "seed": seed, "status": "ok",
             "recall": recall(model, step, seed)} for model in ("a", "b") for step in range(20) for seed in (0, 1)]
    table = seed_shift.seed_shifts(pd.DataFrame(rows)).set_index("figure")
    assert table.loc["recall", "config pairs"] == 40
    assert table.loc["recall", "largest model median"] == pytest.approx(math.log(1.1))
    assert table.loc["recall", "x1.5 (SEED_SHIFT)"] == pytest.approx(1.5 * math.log(1.1))
    assert math.log(1.1) < table.loc["recall", "config p99 (SEED_NOISE_128)"] <= math.log(3.0)
