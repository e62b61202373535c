"""Reports embed every plot they list; compare flags a known regression and not a known improvement."""
import re
import subprocess
import sys

import matplotlib
import numpy as np
import pandas as pd
import pytest

from bench import store
from bench.compare import compare_runs, resolve_run
from bench.config import expand, parse_spec
from bench.report import build_report
from bench.runner import run_sweep

SPEC = {"name": "r", "models": ["ring2d"], "solvers": ["euler", "heun", "dpmpp_2m", "ddpm"], "steps": [3, 6],
        "spacings": ["logsnr", "uniform"], "etas": [0.0, 1.0], "n_samples": 48, "seeds": [0, 1],
        "metrics": ["err_reference", "err_stepdoubling", "frechet", "precision_recall", "sliced_wasserstein"]}


@pytest.fixture(scope="module")
def base_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    spec = parse_spec(SPEC, str(root / "r.toml"))
    run_dir = root / "base"
    meta = store.open_run(run_dir, spec)
    run_sweep(expand(spec), run_dir, meta["run_id"], progress=False)
    return run_dir


def test_plotting_is_headless():
    import bench.plots  # noqa: F401

    assert matplotlib.get_backend().lower() == "agg"


def test_report_embeds_every_plot_it_lists(base_run):
    md_path, html_path = build_report([base_run])
    markdown, page = md_path.read_text(), html_path.read_text()
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", markdown)
    assert len(links) >= 6
    for link in links:
        assert (md_path.parent / link).is_file() and (md_path.parent / link).with_suffix(".svg").is_file()
    assert page.count("data:image/png;base64,") == len(links)
    assert "Best configuration per NFE budget" in markdown and "Failed and diverged" in markdown


def _with_changes(rows, edits):
    """A copy of ``rows`` with {(solver, column): factor} applied to that solver's ok rows."""
    out = rows.copy()
    for (solver, column), factor in edits.items():
        pick = (out.solver == solver) & (out.status == "ok")
        out.loc[pick, column] = out.loc[pick, column] * factor
    return out


def test_compare_flags_a_known_regression_and_not_a_known_improvement(base_run):
    base = store.load_rows(base_run)
    head = _with_changes(base, {("heun", "err_reference"): 1.5, ("dpmpp_2m", "err_reference"): 0.5,
                                ("euler", "wall_s"): 3.0})
    result = compare_runs(base, head)
    regressions, improvements = result["regressions"], result["improvements"]
    assert set(regressions.solver) == {"heun", "euler"}
    assert set(regressions[regressions.solver == "heun"].metric) == {"err_reference"}
    assert set(regressions[regressions.solver == "euler"].metric) == {"wall_s"}
    assert set(improvements.solver) == {"dpmpp_2m"}
    assert result["matched"] == len(base) and result["added"].empty and result["removed"].empty


def test_compare_uses_seed_spread_for_sample_metrics(base_run):
    base = store.load_rows(base_run)
    tiny = _with_changes(base, {("ddpm", "frechet"): 1.0001})
    assert compare_runs(base, tiny)["changes"].query("metric == 'frechet'").empty
    result = compare_runs(base, _with_changes(base, {("ddpm", "frechet"): 50.0}))
    flagged = result["regressions"].query("metric == 'frechet'")
    assert set(flagged.solver) == {"ddpm"} and flagged.threshold.str.contains("seed spread").all()


def test_compare_reports_status_regressions_and_added_configs(base_run):
    base = store.load_rows(base_run)
    head = base.copy()
    first_ok = head.index[head.status == "ok"][0]
    head.loc[first_ok, "status"] = "failed"
    extra = head.iloc[[0]].assign(config_id="new")
    result = compare_runs(base, pd.concat([head, extra], ignore_index=True))
    assert (result["regressions"].metric == "status").sum() == 1
    assert len(result["added"]) == 1


def test_cli_compare_exit_status_and_outputs(base_run, tmp_path):
    cmd = [sys.executable, "-m", "bench", "compare", str(base_run), str(base_run), "--out", str(tmp_path / "c")]
    same = subprocess.run(cmd + ["--fail-on-regression", "--time-ratio", "1e9"], capture_output=True, text=True)
    assert same.returncode == 0, same.stdout + same.stderr
    assert (tmp_path / "c" / "compare.md").is_file() and (tmp_path / "c" / "compare.html").is_file()
    slower = tmp_path / "slower"
    spec = parse_spec(SPEC, str(tmp_path / "r.toml"))
    store.open_run(slower, spec)
    rows = store.load_rows(base_run)
    rows["wall_s"] = rows.wall_s * 10
    for row in rows.to_dict("records"):
        store.write_row(slower, {k: (None if isinstance(v, float) and np.isnan(v) else v) for k, v in row.items()})
    failing = subprocess.run([sys.executable, "-m", "bench", "compare", str(base_run), str(slower), "--out",
                              str(tmp_path / "d"), "--fail-on-regression"], capture_output=True, text=True)
    assert failing.returncode == 1 and "regressions" in failing.stdout


def test_resolve_run_by_folder_and_by_commit(base_run):
    assert resolve_run(str(base_run)) == base_run
    commit = store.load_rows(base_run).git_commit.iloc[0]
    if commit != "unknown":
        assert resolve_run(commit[:8], base_run.parent) == base_run
    with pytest.raises(ValueError, match="neither a run folder"):
        resolve_run("zzzzzzz", base_run.parent)


def test_frontier_facets_by_spacing(base_run, tmp_path):
    from bench.plots import plot_frontier

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
    from bench.report import seed_spread

    spread = seed_spread(store.load_rows(base_run))
    assert set(spread.metric) == {"frechet", "sliced_wasserstein"} and (spread.seeds == 2).all()
    assert (spread["median std over configs"] > 0).all()
    assert "Seed-to-seed spread" in build_report([base_run])[0].read_text()
