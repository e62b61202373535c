"""Pareto frontiers and budget tables over result rows (pandas; which spacings are fitted grids: bench.spec.fitted).

Plots and reports build on this.

Cost and quality are both "lower is better" (NFE or seconds; FID, errors, distances). A row is on the
frontier when no other row is at least as good on both and strictly better on one. Rows with a
missing cost or quality are never on it. Exact ties are all kept: neither dominates the other.
"""
from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd

from bench.spec.fitted import is_fitted

# Quality columns in order of preference: the first one a table has values for is the default. Without
# images, err_reference (deterministic, ODE configs) comes before the sample-based distances, whose
# sampling noise floor hides differences between good configs at a few hundred samples.
QUALITY_PREFERENCE = ("fid", "err_reference", "frechet", "sliced_wasserstein")
LOWER_IS_BETTER = {"fid", "kid", "frechet", "sliced_wasserstein", "err_reference", "err_stepdoubling", "nfe", "wall_s"}


def default_quality(df: pd.DataFrame) -> str | None:
    """The first column of QUALITY_PREFERENCE with any value in ``df``; None where none has (a spec without those
    metrics, or err_reference alone with every reference solve failed)."""
    return next((column for column in QUALITY_PREFERENCE if column in df and df[column].notna().any()), None)


def pareto_mask(cost, quality) -> np.ndarray:
    """Boolean mask of the non-dominated points among (cost, quality), both minimised; NaN is never on it."""
    cost, quality = np.asarray(cost, dtype=float), np.asarray(quality, dtype=float)
    valid = np.isfinite(cost) & np.isfinite(quality)
    on = np.zeros(len(cost), dtype=bool)
    idx = np.flatnonzero(valid)
    # Sort by cost, then quality; sweep keeping the best quality seen at strictly lower cost.
    order = idx[np.lexsort((quality[idx], cost[idx]))]
    best = np.inf
    i = 0
    while i < len(order):
        j = i
        while j < len(order) and cost[order[j]] == cost[order[i]]:
            j += 1
        group = order[i:j]
        group_best = quality[group].min()
        if group_best < best:  # the points at this cost that reach its best quality, ties included
            on[group[quality[group] == group_best]] = True
            best = group_best
        i = j
    return on


def frontier(df: pd.DataFrame, cost: str, quality: str, by=("model",)) -> pd.DataFrame:
    """The rows of ``df`` with an ``on_frontier`` column, computed within each group of ``by``."""
    out = df.copy()
    out["on_frontier"] = False
    for _, group in out.groupby(list(by), dropna=False):
        out.loc[group.index, "on_frontier"] = pareto_mask(group[cost], group[quality])
    return out


def spacing_label(spacing) -> str:
    """A spacing as tables and plots name it: fitted:PATH is "fitted", an explicit grid "explicit"."""
    if is_fitted(spacing):
        return "fitted"
    return "explicit" if isinstance(spacing, str) and ":" in spacing else spacing


def describe_config(row) -> str:
    grid = f"{int(row.steps)} {spacing_label(row.spacing)}" if pd.notna(row.steps) else f"tol {row.tolerance:g}"
    mode = getattr(row, "exec_mode", "eager")
    scale = getattr(row, "guidance_scale", None)
    guidance = "" if scale is None or pd.isna(scale) else f", cfg {scale:g}"
    return f"{row.solver} ({grid}, eta {row.eta:g}{guidance}{'' if mode in ('eager', None) else ', ' + mode})"


TIE_Z = 1.96  # a configuration within this many combined standard errors of the best is not significantly worse


def mean_se(standard_errors: pd.Series) -> float:
    """The standard error of a mean of k independent figures from theirs: sqrt(sum se^2) / k."""
    return math.sqrt((standard_errors**2).sum()) / len(standard_errors)


def seed_label(seeds: pd.Series) -> str:
    """The seeds a per-config average was taken over, as one label ("0,1,2")."""
    return ",".join(map(str, sorted(set(seeds))))


def per_config(df: pd.DataFrame, quality: str, cost: str | None = None, apart: tuple[str, ...] = ()) -> pd.DataFrame:
    """The ok rows with ``quality``, one per configuration (and value of the ``apart`` columns: the machine, for
    times): over several seeds its mean, with the standard error of that mean (from the rows' own SEs, sqrt(sum
    se^2) / k) in ``<quality>_se``, and the mean of ``cost`` (an adaptive solver's NFE and every wall time differ
    from seed to seed). Rows of one configuration and seed (one spec run on two machines, reported together) are
    one measurement of the same samples: their mean counts once, with their SE, not as two seeds."""
    se = f"{quality}_se"
    ok = df[(df.status == "ok") & df[quality].notna()].copy()
    if se not in ok:
        ok[se] = np.nan
    keys = [k for k in CONFIG_KEYS_WITHOUT_SEED if k in ok] + [k for k in apart if k not in CONFIG_KEYS_WITHOUT_SEED]
    averaged = [quality] + ([cost] if cost is not None else [])
    if ok.duplicated(keys + ["seed"]).any():
        repeated = ok.groupby(keys + ["seed"], dropna=False)
        ok = repeated.first().assign(**{column: repeated[column].mean() for column in (*averaged, se)}).reset_index()
    if ok.seed.nunique() <= 1:
        return ok
    grouped = ok.groupby(keys, dropna=False)
    merged = grouped.first().assign(**{column: grouped[column].mean() for column in averaged})
    merged[se] = grouped[se].agg(mean_se)
    if cost is not None and f"{cost}_std" in ok:  # the cost's spread: over the seeds' costs, where it has several
        spread = f"{cost}_std"
        merged[spread] = grouped[cost].std().where(grouped.seed.nunique() > 1, grouped[spread].first())
    merged["seed"] = grouped.seed.agg(seed_label)
    return merged.reset_index()


def budget_table(df: pd.DataFrame, quality: str, budgets=(5, 10, 20, 50, 100, 200), cost: str = "nfe",
                 tie_z: float = TIE_Z, listed: int = 6, apart: tuple[str, ...] = ("exec_mode",)) -> pd.DataFrame:
    """Best configuration per model, guidance scale, ``apart`` and cost budget: the lowest ``quality`` among
    configurations with cost <= budget (both averaged over seeds; a ``<cost>_std`` column, the cost's spread, goes
    beside it), its standard error, and every other configuration within ``tie_z`` combined standard errors of it: a
    tie, not significantly worse (the SEs combined as if independent, which for paired configurations of one x_T
    errs towards more ties). Guidance scales are ranked separately, where a run sweeps them (the best solver at a
    budget may change with the scale), and so is each value of the ``apart`` columns: by NFE the exec modes, so that
    a faster mode cannot win through its drift from eager; by time (``time_budget_table``) the machines instead.
    Budgets stop at the first that holds every configuration; an ``apart`` column of one value is left out of the
    table."""
    rows = []
    se = f"{quality}_se"
    ok = per_config(df, quality, cost, apart)
    ok = ok[ok[cost].notna()]
    guided = "guidance_scale" in ok and ok.guidance_scale.notna().any()
    if not guided:
        ok = ok.assign(guidance_scale=np.nan)
    for (model, *values, scale), group in ok.groupby(["model", *apart, "guidance_scale"], dropna=False):
        for budget in budgets:
            within = group[group[cost] <= budget].sort_values([quality, cost], kind="stable")  # equal: the cheaper
            if within.empty:
                continue
            best = within.iloc[0]
            combined = np.sqrt(within[se].fillna(0) ** 2 + (0 if pd.isna(best[se]) else best[se]) ** 2)
            tied = within.iloc[1:][(within[quality] - best[quality]).iloc[1:] <= tie_z * combined.iloc[1:]]
            names = [describe_config(row) for row in tied.itertuples()]
            rows.append({"model": model, **dict(zip(apart, values)), "guidance_scale": scale, f"{cost} budget": budget,
                         "best solver": best.solver, "best config": describe_config(best),
                         cost: best[cost], **({f"{cost}_std": best[f"{cost}_std"]} if f"{cost}_std" in best else {}),
                         quality: best[quality], se: best[se], "ties": len(tied),
                         "tied with (not significantly worse)": "; ".join(names[:listed])
                         + (f"; and {len(names) - listed} more" if len(names) > listed else "")})
            if budget >= group[cost].max():
                break  # larger budgets would repeat this row
    table = pd.DataFrame(rows)
    if not table.empty:
        table = table.drop(columns=[column for column in apart if table[column].nunique(dropna=False) == 1])
    if not guided and not table.empty:
        table = table.drop(columns="guidance_scale")
    return table


TIME_COST = "ms_per_sample"  # the time budget table's cost: milliseconds of sampling per sample, wall_s / n_samples


def time_budget_table(df: pd.DataFrame, quality: str, tie_z: float = TIE_Z) -> pd.DataFrame:
    """``budget_table`` by the measured sampling time per sample (``TIME_COST``) instead of NFE, for budgets 1, 2,
    5 x 10^k ms (``time_budgets``): the question of a user with a time to spend. Beside the best configuration's
    time, its spread (``<TIME_COST>_std``): of its repeated timings (wall_s_std), or over its seeds' times. Exec
    modes compete (a faster mode wins where its quality holds: its drift is in its quality figure); times compare
    only on one machine, so each device and host is ranked apart."""
    timed = df.assign(**{TIME_COST: 1000.0 * df.wall_s / df.n_samples,
                         f"{TIME_COST}_std": 1000.0 * df.get("wall_s_std", np.nan) / df.n_samples})
    ranked = timed[(timed.status == "ok") & timed[quality].notna()]  # the seeds' means lie within their span
    return budget_table(timed, quality, time_budgets(ranked[TIME_COST]), TIME_COST, tie_z, apart=("device", "host"))


def time_budgets(costs) -> tuple[float, ...]:
    """The budgets 1, 2, 5 x 10^k that span ``costs`` (positive ones): from the first at or above the least to the
    first at or above the largest."""
    costs = np.asarray(costs, dtype=float)
    costs = costs[np.isfinite(costs) & (costs > 0)]
    if not len(costs):
        return ()
    budgets, decade = [], 10.0 ** math.floor(math.log10(costs.min()))
    while not budgets or budgets[-1] < costs.max():
        budgets += [float(f"{m * decade:.12g}") for m in (1, 2, 5) if m * decade >= costs.min()]
        decade *= 10
    return tuple(b for i, b in enumerate(budgets) if i == 0 or budgets[i - 1] < costs.max())


def best_solver_by_scale(table: pd.DataFrame, cost: str = "nfe") -> list[str]:
    """From a budget_table over guidance scales: per model and budget, whether the best solver is the same at every
    scale, and where it is not, whether the winner at one scale is tied with (not significantly better than) the
    other scales' winners there."""
    lines = []
    if table.empty or "guidance_scale" not in table:
        return lines
    for (model, budget), group in table.groupby(["model", f"{cost} budget"]):
        if group.guidance_scale.nunique() < 2:
            continue
        winners = {f"{scale:g}": solver for scale, solver in zip(group.guidance_scale, group["best solver"])}
        listing = ", ".join(f"scale {scale}: {solver}" for scale, solver in winners.items())
        if len(set(winners.values())) == 1:
            lines.append(f"{model}, NFE <= {budget:g}: the same best solver at every scale ({next(iter(winners.values()))}).")
            continue
        contested = []
        for scale, solver, tied in zip(group.guidance_scale, group["best solver"],
                                       group["tied with (not significantly worse)"]):
            others = set(winners.values()) - {solver}
            if any(other in tied for other in others):
                contested.append(f"{scale:g}")
        note = (f"; at scale {', '.join(contested)} the other scales' winners are within the standard errors (a tie)"
                if contested else "; each winner beats the other scales' winners there beyond the standard errors")
        lines.append(f"{model}, NFE <= {budget:g}: the best solver changes with the scale ({listing}){note}.")
    return lines


GUIDANCE_METRICS = ("fid", "kid", "precision", "recall")


def guidance_table(df: pd.DataFrame, metrics=GUIDANCE_METRICS) -> pd.DataFrame:
    """The guidance trade-off: per model, solver and NFE, each sample metric (with its standard error) at every
    guidance scale of the run, averaged over seeds; empty where the run has fewer than two scales."""
    if "guidance_scale" not in df or df.guidance_scale.nunique() < 2:
        return pd.DataFrame()
    present = [m for m in metrics if m in df and df[m].notna().any()]
    if not present:
        return pd.DataFrame()
    merged = None
    for metric in present:
        table = per_config(df, metric)[["model", "solver", "eta", "nfe", "guidance_scale", metric, f"{metric}_se"]]
        merged = table if merged is None else merged.merge(table, on=["model", "solver", "eta", "nfe", "guidance_scale"],
                                                           how="outer")
    return merged.sort_values(["model", "solver", "eta", "nfe", "guidance_scale"]).reset_index(drop=True)


def guidance_trends(table: pd.DataFrame) -> list[str]:
    """What the trade-off shows, per model, for each solver curve at its largest NFE, against the curve's lowest
    scale (the least guided), each change judged beyond 1.96 combined standard errors: how many curves reach a higher
    precision at some larger scale (and where precision peaks), how many lose recall at the largest scale, and the
    scale with the lowest FID."""
    lines = []
    if table.empty:
        return lines
    for model, group in table.groupby("model"):
        top = group[group.nfe == group.groupby(["solver", "eta"]).nfe.transform("max")]
        curves = [curve.sort_values("guidance_scale") for _, curve in top.groupby(["solver", "eta"])]
        low, high = top.guidance_scale.min(), top.guidance_scale.max()

        def beyond(first, other, metric):
            return (other[metric] - first[metric]) / math.hypot(first[f"{metric}_se"], other[f"{metric}_se"])

        if "precision" in top:
            risen = [c for c in curves if any(beyond(c.iloc[0], row, "precision") > TIE_Z for _, row in c.iloc[1:].iterrows())]
            peaks = pd.Series([c.loc[c.precision.idxmax(), "guidance_scale"] for c in curves]).value_counts().sort_index()
            lines.append(f"{model}: precision rises above its scale-{low:g} value beyond the standard errors at some "
                         f"larger scale for {len(risen)} of {len(curves)} solver curves (each at its largest NFE); it "
                         f"peaks at scale " + ", ".join(f"{scale:g} for {n}" for scale, n in peaks.items()) + ".")
        if "recall" in top:
            fallen = [c for c in curves if beyond(c.iloc[0], c.iloc[-1], "recall") < -TIE_Z]
            lines.append(f"{model}: recall at scale {high:g} is below its scale-{low:g} value beyond the standard "
                         f"errors for {len(fallen)} of {len(curves)} solver curves.")
        if "fid" in top:
            best = top.loc[top.groupby(["solver", "eta"]).fid.idxmin()]
            counts = best.guidance_scale.value_counts().sort_index()
            lines.append(f"{model}: the scale with the lowest FID, per solver curve: "
                         + ", ".join(f"{scale:g} for {n}" for scale, n in counts.items()) + ".")
    return lines


def fitted_order(nfe, error, error_se=None) -> tuple[float, float]:
    """Empirical order and its standard error: minus the slope of log error against log NFE, weighted by the errors'
    standard errors where ``error_se`` gives them all (the SE of log error is error_se / error), its SE propagated
    from them as if independent; unweighted and SE NaN without them. (NaN, NaN) with fewer than 2 usable points."""
    nfe, error = np.asarray(nfe, dtype=float), np.asarray(error, dtype=float)
    se = np.full_like(error, np.nan) if error_se is None else np.asarray(error_se, dtype=float)
    keep = np.isfinite(nfe) & np.isfinite(error) & (nfe > 0) & (error > 0)
    if keep.sum() < 2 or len(np.unique(nfe[keep])) < 2:
        return float("nan"), float("nan")
    x, y, se = np.log(nfe[keep]), np.log(error[keep]), se[keep] / error[keep]
    weighted = bool(np.all(np.isfinite(se) & (se > 0)))
    weights = 1 / se**2 if weighted else np.ones_like(x)
    centred = x - np.sum(weights * x) / np.sum(weights)
    slope = np.sum(weights * centred * y) / np.sum(weights * centred**2)
    return float(-slope), float(np.sqrt(1 / np.sum(weights * centred**2))) if weighted else float("nan")


def error_per_nfe(configs: pd.DataFrame, error: str) -> pd.DataFrame:
    """``error`` per NFE over ``configs`` (one row per configuration: ``per_config``'s, so that a configuration and
    seed count once), sorted by NFE: its mean and that mean's standard error (mean_se of the ``<error>_se`` column;
    NaN without it), the columns ``error`` and ``se``."""
    return configs.groupby("nfe").agg(error=(error, "mean"), se=(f"{error}_se", mean_se))


ORDER_KEYS = ["model", "solver", "options", "spacing", "eta", "exec_mode", "guidance_scale"]


def order_table(df: pd.DataFrame, error: str = "err_reference") -> pd.DataFrame:
    """Measured convergence orders: per model, solver (and options), spacing, eta, exec mode and guidance scale with
    ``error`` at two or more NFE of fixed-step configurations (averaged over seeds), ``order`` and ``order_se`` from
    fitted_order (the rows share x_T, so the SE, which takes them as independent, errs large), the ``local orders``
    between consecutive NFE (the last is the nearest to the asymptotic regime), the ``nominal`` order the rows were
    made with (nominal_order: the solver entry's order_for) and ``error falls``: whether the error at the largest
    NFE is below the smallest's beyond TIE_Z combined standard errors (no: unstable on this spacing, or far from the
    asymptotic regime)."""
    ok = per_config(df[df.steps.notna()], error) if error in df else df.iloc[:0]
    if ok.empty:
        return pd.DataFrame()
    rows = []
    keys = [key for key in ORDER_KEYS if key in ok]  # rows from before a key column existed lack it
    for key, group in ok.groupby(keys, dropna=False):
        per_nfe = error_per_nfe(group, error)
        if len(per_nfe) < 2:
            continue
        order, order_se = fitted_order(per_nfe.index, per_nfe.error, per_nfe.se)
        local = -np.diff(np.log(per_nfe.error.to_numpy())) / np.diff(np.log(per_nfe.index.to_numpy(dtype=float)))
        first, last = per_nfe.iloc[0], per_nfe.iloc[-1]
        spread = math.hypot(*(0.0 if math.isnan(v) else v for v in (first.se, last.se)))
        falls = ("yes" if first.error - last.error > TIE_Z * spread else
                 "no" if last.error - first.error > TIE_Z * spread else "within the SE")
        config = dict(zip(keys, key))
        rows.append({**config, "nfe": f"{int(per_nfe.index[0])}-{int(per_nfe.index[-1])}",
                     "nominal": _nominal_order(group, config), "order": order, "order_se": order_se,
                     "local orders": ", ".join(f"{v:.2g}" for v in local), "error falls": falls})
    return pd.DataFrame(rows)


def _nominal_order(group: pd.DataFrame, config: dict) -> int | None:
    """The order a curve's rows say their solver's entry gave them (nominal_order), else (rows made before that
    column, or a solver without an order) the registry's here: None where it has none, or for a python: solver whose
    module does not import here."""
    from solvers.registry import get_solver, solver_problem

    if "nominal_order" in group and group.nominal_order.notna().any():
        return int(group.nominal_order.dropna().iloc[0])
    if solver_problem(config["solver"]):
        return None
    options = json.loads(config["options"]) if isinstance(config["options"], str) else {}
    return get_solver(config["solver"]).order_for(config["eta"], options)


ORDER_SLACK = 0.5  # a fitted order this far below the nominal one still counts as reaching it


def order_summary(orders: pd.DataFrame) -> list[str]:
    """Per model: how many curves of ``orders`` (order_table) reach their nominal order (fitted order within
    ``ORDER_SLACK`` of it, or above), and which do not get better with more NFE (the error at their largest NFE not
    below their smallest's beyond the standard errors)."""
    sentences = []
    for model, group in orders.groupby("model"):
        rated = group[group.nominal.notna()]
        reached = int((rated.order >= rated.nominal - ORDER_SLACK).sum())
        sentences.append(f"{model}: {reached} of {len(rated)} curves reach their nominal order (fitted order within "
                         f"{ORDER_SLACK:g} of it or above) over the NFE measured.")
        stuck = group[group["error falls"] != "yes"]
        if not stuck.empty:
            sentences.append(f"{model}: the error does not fall with NFE beyond the standard errors for "
                             + "; ".join(f"{row.solver} ({row.spacing}{'' if row.eta == 0 else f', eta {row.eta:g}'}: "
                                         f"{'rises' if row['error falls'] == 'no' else 'flat'}, NFE {row.nfe})"
                                         for _, row in stuck.iterrows())
                             + ": unstable on that spacing, or far from the asymptotic regime at these steps.")
    return sentences


# Everything that defines a config's result except its seed (the FID reference set included): rows equal on
# these differ only in sampling noise. Compare matches runs on them; the seed spread groups by them.
CONFIG_KEYS_WITHOUT_SEED = ["model", "schedule", "solver", "options", "steps", "spacing", "eta", "tolerance",
                            "n_samples", "batch_size", "dtype", "exec_mode", "reference_size", "fid_reference",
                            "guidance_scale", "conditions", "guidance_interval"]
SAMPLE_DISTANCES = ("fid", "frechet", "sliced_wasserstein")


def calibration_pairs(df: pd.DataFrame) -> pd.DataFrame:
    """Each n-step row's step-doubling estimate next to the true error (err_reference) of its 2n-step partner."""
    ok = df[df.status == "ok"]
    keys = [k for k in CONFIG_KEYS_WITHOUT_SEED if k != "steps"] + ["seed"]
    estimates = ok[ok.err_stepdoubling.notna() & ok.steps.notna()][keys + ["steps", "err_stepdoubling"]]
    truth = ok[ok.err_reference.notna() & ok.steps.notna()][keys + ["steps", "err_reference"]]
    partner = truth.assign(steps=truth.steps.astype(float) / 2)
    return estimates.assign(steps=estimates.steps.astype(float)).merge(partner, on=keys + ["steps"])


def quality_across(df: pd.DataFrame, quality: str, column: str) -> str:
    """``quality`` when it was measured at two or more values of ``column``, else the first sample-based
    distance that was (err_reference exists for deterministic configs only, so not across eta)."""
    def spread(metric):
        return metric in df and df[df[metric].notna()][column].nunique() >= 2

    return quality if spread(quality) else next((q for q in SAMPLE_DISTANCES if spread(q)), quality)


def seed_std(df: pd.DataFrame, metric: str) -> pd.DataFrame:
    """Mean, std and count of ``metric`` across seeds for every config run with at least two seeds (rows of one seed,
    from several runs, counted once: their mean)."""
    ok = df[(df.status == "ok") & df[metric].notna()]
    per_seed = ok.groupby([*CONFIG_KEYS_WITHOUT_SEED, "seed"], dropna=False)[metric].mean()
    across = per_seed.groupby(CONFIG_KEYS_WITHOUT_SEED, dropna=False).agg(["mean", "std", "count"])
    return across[across["count"] >= 2]


def eta_gap(df: pd.DataFrame, quality: str, low: float = 0.0, high: float = 1.0) -> pd.DataFrame:
    """``quality`` at eta ``low`` and ``high`` side by side, per model, solver, spacing and NFE, for the solvers
    run at both (the comparison of DDIM's Table 1, Song et al. 2021): columns low, high and gap = high - low,
    averaged over seeds, and the gap's standard error (the two SEs combined) where the rows have them."""
    ok = per_config(df[df.eta.isin([low, high])], quality)  # a configuration and seed counted once
    keys = ["model", "solver", "options", "spacing", "exec_mode", "nfe"]
    table = ok.pivot_table(index=keys, columns="eta", values=quality, aggfunc="mean")
    if low not in table or high not in table:
        return pd.DataFrame()
    table = table[[low, high]].dropna().rename(columns={low: f"eta {low:g}", high: f"eta {high:g}"})
    table.columns.name = None
    table["gap"] = table[f"eta {high:g}"] - table[f"eta {low:g}"]
    se = f"{quality}_se"
    if se in ok and ok[se].notna().any():
        errors = ok.pivot_table(index=keys, columns="eta", values=se,
                                aggfunc=mean_se).reindex(table.index)
        table["gap_se"] = np.sqrt(errors[low] ** 2 + errors[high] ** 2)
    return table.reset_index()


def table1_shape(gaps: pd.DataFrame) -> list[str]:
    """One sentence per (model, solver, spacing) with at least two NFE values: does DDIM's Table 1 shape hold,
    i.e. is eta 0 better than eta 1 at the lowest NFE, and is the gap at the highest NFE smaller? Each judgement
    counts only beyond TIE_Z combined standard errors (where the rows have them); within them the sentence says so."""
    sentences = []
    for (model, solver, options, spacing, mode), group in gaps.groupby(["model", "solver", "options", "spacing",
                                                                       "exec_mode"]):
        if group.nfe.nunique() < 2:
            continue
        first, last = group.loc[group.nfe.idxmin()], group.loc[group.nfe.idxmax()]
        se_first, se_last = (float(row.get("gap_se", 0.0)) for row in (first, last))
        se_first, se_last = (0.0 if math.isnan(se) else se for se in (se_first, se_last))
        se_both = math.hypot(se_first, se_last)
        low = ("better" if first.gap > TIE_Z * se_first else "worse" if first.gap < -TIE_Z * se_first
               else "not distinguishable from eta 1")
        shrink = abs(first.gap) - abs(last.gap)
        closing = "closing" if shrink > TIE_Z * se_both else "widening" if shrink < -TIE_Z * se_both else "unchanged"
        undecided = low.startswith("not distinguishable") and closing != "widening"
        verdict = ("holds" if low == "better" and closing == "closing" else "cannot be told here" if undecided
                   else "does not hold")
        name = solver + ("" if options in ("{}", None) else f" {options}") + ("" if mode == "eager" else f", {mode}")
        within = f" within {TIE_Z} standard errors" if se_both > 0 else ""
        sentences.append(
            f"{model}, {name} ({spacing}): the shape of DDIM's Table 1 {verdict}: at NFE {int(first.nfe)} eta 0 is "
            f"{low} (gap eta 1 - eta 0 = {first.gap:.3g} +- {se_first:.2g}), at NFE {int(last.nfe)} the gap is "
            f"{last.gap:.3g} ({closing}{within if closing == 'unchanged' else ''}).")
    return sentences


# The columns that make a non-eager row the same config as its eager twin: the config, its seed and its device.
TWIN_KEYS = [key for key in CONFIG_KEYS_WITHOUT_SEED if key != "exec_mode"] + ["seed", "device"]


def exec_mode_table(df: pd.DataFrame) -> pd.DataFrame:
    """Per model, device, batch and exec mode: how fast the network and the whole solve run, and how far the
    samples move. ``speedup vs eager`` is the median over configs of eager wall_s / this mode's wall_s, each
    config against its own eager twin (rows without one are left out of it), with its quartiles over the configs
    (how much it varies across them: a median over unlike configurations has no standard error); ``overhead_ratio`` is wall_s over
    NFE x the bare forward time (1 = the solve costs its network calls and nothing else). Empty with one mode."""
    ok = df[(df.status == "ok") & df.wall_s.notna()].copy()
    if ok.exec_mode.nunique() < 2:
        return pd.DataFrame()
    keys = [key for key in TWIN_KEYS if key in ok]  # rows from before a key column existed lack it
    ok[keys] = ok[keys].astype(str)  # NaN steps/tolerance compare equal as text
    eager = ok[ok.exec_mode == "eager"].drop_duplicates(keys).set_index(keys).wall_s
    ok["speedup"] = eager.reindex(pd.MultiIndex.from_frame(ok[keys])).to_numpy() / ok.wall_s.to_numpy()
    rows = []
    for (model, device, batch, mode), group in ok.groupby(["model", "device", "batch_used", "exec_mode"]):
        drift = group.drift_vs_eager.dropna()
        rows.append({"model": model, "device": device, "batch": int(batch), "exec_mode": mode, "configs": len(group),
                     "forward_s (median)": group.forward_s.median(),
                     "speedup vs eager (median)": group.speedup.median(),
                     "speedup vs eager (quartiles)": _quartiles(group.speedup),
                     "overhead_ratio (median)": group.overhead_ratio.median(),
                     "overhead_ratio (max)": group.overhead_ratio.max(),
                     "drift_vs_eager (median)": drift.median() if len(drift) else np.nan,
                     "fid_vs_eager (median)": group.fid_vs_eager.median()})
    table = pd.DataFrame(rows)
    return table.dropna(axis="columns", how="all")


def _quartiles(values: pd.Series) -> str:
    """"q1-q3" of ``values`` (NaN left out), "" where none."""
    values = values.dropna()
    return f"{values.quantile(0.25):.3g}-{values.quantile(0.75):.3g}" if len(values) else ""


FITTED_METRICS = ("err_reference", "fid", "kid")


def fitted_vs_formulas(df: pd.DataFrame, metrics=FITTED_METRICS, tie_z: float = TIE_Z) -> pd.DataFrame:
    """Per model, solver and NFE (and eta, exec mode, guidance scale) with a row on a fitted grid: for each metric,
    the fitted grid's value against the best formula spacing's at the same NFE (seeds averaged as per_config does),
    the change, and whether it is significant (|change| > ``tie_z`` combined standard errors, combined as if
    independent: conservative for these paired configurations of one x_T), with what the fit cost and what the row
    says about the grid (fitted for another solver; evaluated on a training seed)."""
    if "fitted_solver" not in df or df.fitted_solver.isna().all():
        return pd.DataFrame()
    keys = ["model", "solver", "nfe", "eta", "exec_mode", "guidance_scale"]
    rows = []
    for metric in (m for m in metrics if m in df and df[m].notna().any()):
        se = f"{metric}_se"
        ok = per_config(df, metric)
        ok = ok.assign(guidance_scale=ok.guidance_scale if "guidance_scale" in ok else np.nan)
        on_fitted = ok.spacing.map(is_fitted)
        for key, group in ok.groupby(keys, dropna=False):
            fitted, formulas = group[on_fitted[group.index]], group[~on_fitted[group.index]]
            if fitted.empty or formulas.empty:
                continue
            best = formulas.sort_values(metric, kind="stable").iloc[0]
            for grid in fitted.itertuples():
                value, error = getattr(grid, metric), getattr(grid, se)
                combined = math.hypot(0 if pd.isna(error) else error, 0 if pd.isna(best[se]) else best[se])
                change = value - best[metric]
                z = change / combined if combined > 0 else math.nan
                verdict = ("fitted better" if z < -tie_z else "formula better" if z > tie_z else
                           "tie" if math.isfinite(z) else "no standard error")
                notes = []
                if grid.fitted_solver != grid.solver:
                    notes.append(f"fitted for {grid.fitted_solver}")
                seeds = set(json.loads(grid.fitted_seeds)) if isinstance(grid.fitted_seeds, str) else set()
                if seeds & {int(s) for s in str(grid.seed).split(",")}:
                    notes.append("evaluated on a training seed")
                rows.append({**dict(zip(keys, key)), "metric": metric, "fitted": value, "fitted se": error,
                             "best formula": spacing_label(best.spacing), "formula": best[metric],
                             "formula se": best[se], "change": change / best[metric] if best[metric] else math.nan,
                             "z": z, "verdict": verdict, "fit evaluations": grid.fitted_cost_evaluations,
                             "fit s": grid.fitted_cost_s, "notes": "; ".join(notes)})
    table = pd.DataFrame(rows)
    if table.empty:
        return table
    for column, default in (("exec_mode", "eager"), ("guidance_scale", None), ("eta", 0.0)):
        if table[column].isna().all() or (table[column] == default).all():
            table = table.drop(columns=column)
    return table.sort_values(["model", "metric", "solver", "nfe"]).reset_index(drop=True)


def fitted_summary(table: pd.DataFrame) -> list[str]:
    """One sentence per model and metric: in how many (solver, NFE) cells the fitted grid wins, ties and loses."""
    lines = []
    for (model, metric), group in table.groupby(["model", "metric"]):
        counts = group.verdict.value_counts()
        wins = group[group.verdict == "fitted better"]
        gain = f", by {-wins.change.median():.0%} (median)" if len(wins) else ""
        lines.append(f"{model}, {metric}: the fitted grid beats the best formula significantly in "
                     f"{counts.get('fitted better', 0)} of {len(group)} solver/NFE cells{gain}, ties in "
                     f"{counts.get('tie', 0)}, loses in {counts.get('formula better', 0)}.")
    return lines
