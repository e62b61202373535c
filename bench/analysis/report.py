"""Reports: one or more run folders -> plots, report.md (plots linked) and report.html (plots inlined)."""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from bench.analysis import plots
from bench.analysis.document import Document
from bench.analysis.frontier import (QUALITY_PREFERENCE, TIE_Z, TIME_COST, best_solver_by_scale, budget_table,
                                     default_quality, eta_gap, exec_mode_table, fitted_summary, fitted_vs_formulas,
                                     guidance_table, guidance_trends, order_summary, order_table, quality_across,
                                     seed_std, table1_shape, time_budget_table)
from bench.metrics.uncertainty import BOOTSTRAP_REPLICATES, JACKKNIFE_GROUPS
from bench.run.store import STATUSES, load_rows

DEFAULT_BUDGET = 20


ENVIRONMENT = ["run_id", "git_commit", "git_dirty", "device", "host", "torch_version", "cuda_version", "cudnn_version",
               "driver_version", "diffusers_version", "torch_fidelity_version", "tf32_matmul", "tf32_cudnn",
               "matmul_precision", "cudnn_benchmark", "deterministic", "threads"]


def _environment_table(df: pd.DataFrame) -> pd.DataFrame:
    """Where, from which code and under which execution policy the rows ran (columns that are all empty dropped)."""
    env = df[[c for c in ENVIRONMENT if c in df]].drop_duplicates().copy()
    env["git_commit"] = env.git_commit.str[:10]
    return env.dropna(axis="columns", how="all")


SPREAD_METRICS = ("fid", "kid", "frechet", "sliced_wasserstein")
UNCERTAINTY = (f"Every sample-based figure has its standard error in the column `<metric>_se` (bench.metrics.uncertainty): "
               f"medians and means of per-sample values by the bootstrap over samples ({BOOTSTRAP_REPLICATES} "
               f"resamples), distances between the sample set and its reference set (FID, KID, recall, coverage, the "
               f"Frechet and sliced Wasserstein distances) by the delete-a-group jackknife ({JACKKNIFE_GROUPS} groups), "
               f"precision as a binomial share (Jeffreys' prior: not 0 when every sample is inside), the reference "
               f"held fixed. Frontier plots show them as error bars. wall_s is the median of "
               f"timing_repeats timings where a solve took under a second (wall_s_std their spread).")


def seed_spread(df: pd.DataFrame) -> pd.DataFrame:
    """Per model and metric: the median over configs of the std across seeds, and the number of seeds."""
    ok = df[df.status == "ok"]
    if ok.seed.nunique() < 2:
        return pd.DataFrame()
    rows = []
    for metric in (m for m in SPREAD_METRICS if ok[m].notna().any()):
        for model, group in seed_std(ok, metric).groupby(level="model"):
            rows.append({"model": model, "metric": metric, "seeds": int(group["count"].max()),
                         "median std over configs": group["std"].median(),
                         "median relative std": (group["std"] / group["mean"].abs()).median()})
    return pd.DataFrame(rows)


def _ranking_qualities(rows: pd.DataFrame) -> list[str]:
    """What a model's budget tables rank by: its default_quality, and where that leaves out some of its ok rows
    (err_reference: a stochastic configuration has no single solution to compare with) the figure of
    QUALITY_PREFERENCE that ranks the most of them too."""
    first = default_quality(rows)
    if first is None:
        return []
    ok = rows[rows.status == "ok"]
    counts = {q: int(ok[q].notna().sum()) for q in QUALITY_PREFERENCE if q in ok}
    fuller = max(counts, key=lambda q: (counts[q], -QUALITY_PREFERENCE.index(q)))
    return [first, fuller] if counts[fuller] > counts[first] else [first]


def _budget_sections(doc, df: pd.DataFrame) -> pd.DataFrame:
    """The best configuration per NFE budget and per time budget, each model by its own quality (default_quality of
    its rows: a model with FID by FID, one beside it with err_reference alone by that; and by a second figure where
    the first leaves out configurations, _ranking_qualities), and which models have none and what would give them
    one; the NFE budgets' tables by each model's first figure, concatenated (one table per model)."""
    qualities_of = {model: _ranking_qualities(df[df.model == model]) for model in sorted(df.model.unique())}
    if unranked := [model for model, qualities in qualities_of.items() if not qualities]:
        doc.heading("Best configuration per budget")
        which = "these rows" if len(unranked) == len(qualities_of) else f"the rows of {', '.join(unranked)}"
        doc.paragraph(f"No quality figure in {which} ({', '.join(QUALITY_PREFERENCE)}; err_reference is empty where "
                      "the reference solve failed, and the rows' message says why): nothing to rank the "
                      "configurations by. Add err_reference, or frechet for a stochastic grid, to the spec's metrics.")
    tables = []
    for quality in dict.fromkeys(q for qualities in qualities_of.values() for q in qualities):
        models = [model for model, qualities in qualities_of.items() if quality in qualities]
        first_by_it = [model for model in models if qualities_of[model][0] == quality]
        rows = df[df.model.isin(models)]
        scope = "" if len(models) == len(qualities_of) else f"; {', '.join(models)}"
        doc.heading(f"Best configuration per NFE budget ({quality}, lower is better{scope})")
        doc.paragraph(f"Per model (and exec mode, each ranked on its own), the configuration with the lowest "
                      f"{quality} among those within the budget, its standard error, and every configuration within "
                      f"{TIE_Z:g} combined standard errors of it: ties, not significantly worse."
                      + _left_out(rows, quality, {model: qualities_of[model][1:] for model in first_by_it}))
        table = budget_table(rows, quality)
        doc.table(table)
        tables.append(table[table.model.isin(first_by_it)])
        by_time = time_budget_table(rows, quality)
        if not by_time.empty:
            doc.heading(f"Best configuration per time budget ({quality}, lower is better{scope})")
            doc.paragraph(f"The same by the time spent: {TIME_COST} is the sampling time per sample in milliseconds "
                          f"(wall_s / n_samples at the row's batch, wall_s the median of timing_repeats timings), "
                          f"{TIME_COST}_std its spread (of those timings, or over the seeds' times where seeds are "
                          "averaged; empty: timed once): a configuration that close to a budget may fall on its other "
                          "side in another run. Exec modes compete here, a faster mode winning where its quality holds; "
                          "times compare only on one machine, so each device and host is ranked on its own.")
            doc.table(by_time)
    return pd.concat(tables, ignore_index=True) if tables else pd.DataFrame()


def _left_out(rows: pd.DataFrame, quality: str, ranked_also_by: dict) -> str:
    """A sentence per model on the ok rows these tables cannot rank (no ``quality``), and what ranks them:
    ``ranked_also_by`` (model -> the figures after ``quality`` it is ranked by, none or one)."""
    sentences = []
    for model, fuller in ranked_also_by.items():
        ok = rows[(rows.model == model) & (rows.status == "ok")]
        missing = ok[ok[quality].isna()]
        if missing.empty:
            continue
        why = "stochastic ones, which have no single solution to compare with: " if quality == "err_reference" else ""
        which = ", ".join(sorted({f"{r.solver} at eta {r.eta:g}" for r in missing.itertuples()}))
        then = (f"the tables by {fuller[0]} rank them with the others" if fuller else
                "no figure of this run ranks them (frechet or sliced_wasserstein in the spec's metrics would, on an "
                "analytic mixture; FID on images)")
        sentences.append(f" {len(missing)} of {model}'s {len(ok)} ok rows have no {quality} ({why}{which}) and are "
                         f"left out here; {then}.")
    return "".join(sentences)


def run_labels(run_dirs) -> list[str]:
    """A name per run folder that tells it from the others: its folder name, with as many parent folders before it
    as it takes (``a/run`` and ``b/run`` for two folders named run)."""
    parts = [Path(d).resolve().parts for d in run_dirs]
    for depth in range(1, max(map(len, parts))):
        labels = ["/".join(p[-depth:]) for p in parts]
        if len(set(labels)) == len(set(parts)):
            return labels
    return [str(Path(*p)) for p in parts]


def build_report(run_dirs, out_dir: Path | None = None, budget: float = DEFAULT_BUDGET,
                 facets: tuple[str, ...] = ("eta",)) -> tuple[Path, Path]:
    """Write plots and report.{md,html} for the rows of ``run_dirs`` into ``out_dir`` (default: the first run).

    ``facets``: columns (eta, spacing, ...) to split the sample-quality frontier by, one plot each.
    """
    run_dirs = [Path(d) for d in run_dirs]
    out_dir = Path(out_dir) if out_dir else run_dirs[0]
    df = load_rows(*run_dirs)
    if df.empty:
        raise ValueError(f"no rows in {', '.join(map(str, run_dirs))}")
    plot_dir = out_dir / "plots"
    labels = run_labels(run_dirs)
    doc = Document(f"Sampler benchmark: {', '.join(labels)}")

    counts = df.status.value_counts().to_dict()
    doc.paragraph(f"{len(df)} configurations: " + ", ".join(f"{counts.get(s, 0)} {s}" for s in STATUSES)
                  + f". Models: {', '.join(sorted(df.model.unique()))}.")
    measured = df[df.fid.notna()]
    for (n, reference, size), _ in measured.groupby(["n_samples", "fid_reference", "reference_size"]):
        doc.paragraph(f"FID, KID and precision/recall on {int(n)} samples per configuration against {reference} "
                      f"({int(size)} images). FID is biased upwards at few samples: compare configurations at "
                      f"equal sample counts, as here.")
    dirty = int(df.git_dirty.fillna(False).astype(bool).sum())
    if dirty:
        doc.paragraph(f"**Warning: {dirty} of {len(df)} rows were run from a checkout with uncommitted changes** "
                      "(git_dirty): the commit they name is not all the code that made them.")
    commits = df.git_commit.dropna().value_counts()
    if len(commits) > 1:
        doc.paragraph("**Warning: these rows come from more than one commit** ("
                      + ", ".join(f"{commit[:10]}: {n} rows" for commit, n in commits.items())
                      + "); a difference between configs may be a difference between commits.")
    for solver, versions in df.dropna(subset=["solver_sha256"]).groupby("solver").solver_sha256:
        if versions.nunique() > 1:
            doc.paragraph(f"**Warning: {solver}'s rows come from {versions.nunique()} versions of its code** ("
                          + ", ".join(f"{digest[:12]}: {n} rows" for digest, n in versions.value_counts().items())
                          + ", solver_sha256); a difference between its configs may be a difference between them.")
    doc.heading("Environment")
    doc.table(_environment_table(df))
    for run_dir, label in zip(run_dirs, labels):
        spec_path = run_dir / "spec.toml"
        if spec_path.exists():
            meta = json.loads((run_dir / "run.json").read_text())
            doc.heading(f"Spec of {label} ({meta['spec_path']}, hash {meta['spec_hash']})")
            for amendment in meta.get("amendments", []):
                changed = (", ".join(f"{key} {before!r} -> {after!r}"
                                     for key, (before, after) in amendment["changed"].items())
                           or "no value changed (the spec's layout or comments)")
                doc.paragraph(f"Resumed at {amendment['at']} with {changed} (the rows before it: spec hash "
                              f"{amendment['spec_hash_before']}).")
            doc.code(spec_path.read_text())

    quality = default_quality(df)
    qualities = [q for q in QUALITY_PREFERENCE if q in df and df[q].notna().any()]
    doc.heading("Uncertainty")
    doc.paragraph(UNCERTAINTY)
    budgets = _budget_sections(doc, df)

    orders = order_table(df)
    if not orders.empty:
        doc.heading("Convergence orders (err_reference against NFE, fixed-step configurations)")
        doc.paragraph("Per curve (model, solver, spacing, eta, exec mode, guidance scale; seeds averaged): the order "
                      "fitted to log error against log NFE, weighted by the errors' standard errors, and its SE "
                      "propagated from them as if independent (the rows share x_T, so it errs large; it is the "
                      "sampling noise alone, not how far the curve is from a power law, which the local orders "
                      "between consecutive NFE show: the last is the nearest to the asymptotic regime); the "
                      "nominal order the solver's entry gave the rows (nominal_order; rows made before that "
                      "column: the registry's here); and whether the error at the largest NFE is below the smallest's "
                      f"beyond {TIE_Z:g} combined standard errors.")
        doc.bullets(order_summary(orders))
        doc.table(orders)

    trade_off = guidance_table(df)
    if not trade_off.empty:
        doc.heading("Guidance: the trade-off, and the best solver at each scale")
        doc.paragraph("Classifier-free guidance (Ho & Salimans 2022) trades diversity for fidelity: as the scale grows, "
                      "precision should rise and recall fall, with FID lowest at a moderate scale. Per solver at its "
                      "largest NFE (standard errors as everywhere; scale 1 is the conditional model, unguided):")
        doc.bullets(guidance_trends(trade_off))
        doc.paragraph("Does the best solver at a budget change with the guidance scale? (DPM-Solver++, Lu et al. "
                      "2022b, Sec. 1 and 6: high-order singlestep solvers degrade at large scales, multistep ones "
                      "hold.) From the NFE budget table above by each model's first figure (FID, else "
                      "err_reference, ...), which ranks each scale on its own:")
        doc.bullets(best_solver_by_scale(budgets))
        doc.table(trade_off)

    fitted = fitted_vs_formulas(df)
    if not fitted.empty:
        doc.heading("Fitted grids against the formulas")
        doc.paragraph("Each fitted grid (spacing fitted:PATH, python -m bench fit-schedule) against the best formula "
                      "spacing of the same solver at the same NFE, per metric: change = (fitted - formula) / formula, "
                      f"significant where it exceeds {TIE_Z:g} combined standard errors (combined as if independent, "
                      "which for configurations sharing x_T errs towards ties). fit evaluations: network calls of the "
                      "fit, each on its training batch, with its seconds. A grid is evaluated honestly only on seeds "
                      "it was not fitted on: the notes say where that does not hold, and where a grid was fitted for "
                      "another solver.")
        doc.bullets(fitted_summary(fitted))
        doc.table(fitted)

    across_eta = quality and quality_across(df, quality, "eta")
    gaps = eta_gap(df, across_eta) if quality else pd.DataFrame()
    if not gaps.empty:
        doc.heading(f"Does noise pay? {across_eta} at eta 0 and eta 1, equal NFE")
        doc.paragraph("DDIM's Table 1 (Song et al. 2021): with few steps the deterministic sampler (eta 0) is far "
                      "better, and the gap closes as the number of steps grows. Per solver on this run:")
        doc.bullets(table1_shape(gaps))
        doc.table(gaps)

    modes = exec_mode_table(df)
    if not modes.empty:
        doc.heading("Execution modes: speed against eager, overhead against the network, drift")
        doc.paragraph("The same configs with the network run eager, under bf16 autocast, compiled, or the whole solve "
                      "replayed as a CUDA graph. speedup vs eager: each config against its own eager twin, the "
                      "median and quartiles over the configs. forward_s: the bare network forward at the row's batch, "
                      "measured in the run; overhead_ratio: wall_s / (NFE x forward_s x batches); drift_vs_eager: "
                      "median per-sample L2 distance to the eager samples of the same config and x_T.")
        doc.table(modes)

    spread = seed_spread(df)
    if not spread.empty:
        doc.heading("Seed-to-seed spread (sampling noise of the sample-based metrics)")
        doc.table(spread)

    doc.heading("Plots")
    figures = []
    for q in qualities[:2]:
        figures.append((f"Pareto frontier: {q} vs NFE", plots.plot_frontier(df, plot_dir, q, "nfe")))
    if quality:
        figures.append((f"Pareto frontier: {quality} vs wall time",
                        plots.plot_frontier(df, plot_dir, quality, "wall_s")))
    sample_quality = next((q for q in qualities if q != "err_reference"), quality)
    if "guidance_scale" in df and df.guidance_scale.nunique() > 1:
        facets = (*facets, "guidance_scale")
    for facet in facets if quality else ():
        if df[facet].nunique() > 1:
            figures.append((f"Pareto frontier by {facet}: {sample_quality} vs NFE",
                            plots.plot_frontier(df, plot_dir, sample_quality, "nfe", facet=facet)))
    figures += [
        ("Guidance trade-off: FID, KID, precision and recall vs guidance scale", plots.plot_guidance(df, plot_dir)),
        ("Convergence: error vs NFE with fitted orders", plots.plot_convergence(df, plot_dir)),
        ("Step-doubling estimate vs true error", plots.plot_calibration(df, plot_dir)),
        (f"Precision vs recall at NFE <= {budget:g}", plots.plot_precision_recall(df, plot_dir, budget)),
    ]
    if quality:
        figures.insert(-1, (f"Best {quality} per solver and spacing / eta at NFE <= {budget:g}",
                            plots.plot_heatmaps(df, plot_dir, quality, budget)))
    for caption, path in figures:
        if path is not None:
            doc.image(caption, path)
    if all(path is None for _, path in figures):
        doc.paragraph("(none: no figure in these rows to plot)")

    doc.heading("Configurations that did not finish (failed, diverged, timeout, oom)")
    bad = df[df.status.isin(["failed", "diverged", "timeout", "oom"])]
    doc.table(bad[["model", "solver", "steps", "spacing", "eta", "tolerance", "status", "message"]])

    md_path, html_path = out_dir / "report.md", out_dir / "report.html"
    doc.write(md_path, html_path)
    return md_path, html_path
