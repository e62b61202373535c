"""Compare two runs config by config, and model by model: what moved beyond noise, what was added or removed.

Rows are matched on what defines a config's result except the seed (``CONFIG_KEYS_WITHOUT_SEED``). When the runs
share seeds, rows are matched seed to seed ("paired": the same x_T, noise paths and exact reference
samples, so a deterministic metric only moves when the code does). When they do not (an A/A test,
or a rerun with new seeds), each side's seeds are averaged and matched ("unpaired": every metric
then carries sampling noise).

Every figure a metric fills with its standard error beside it is judged (bench.metrics), nfe and wall_s too; the
metric registry's ``BETTER`` says whether a move is a regression or an improvement (lower or higher is better), and
a figure without a direction (a diversity, a density that may exceed 1, a signed difference) is only "changed".
A model whose weights differ between the runs (``weights_sha256``: retrained, or another checkpoint) is judged all
the same, and named in a warning: its figures move with its weights as with the code. So is a python: solver whose
code differs (``solver_sha256``): the user's code, which the commits do not cover, is named beside them.
Per config, a figure counts as changed when:
- the figures measured against an image reference set (``REFERENCE_SET_FIGURES``: FID, KID, precision/recall,
  density/coverage) only between rows whose sets are the same (``fid_reference_sha256``); others are counted;
- nfe: any change of a fixed-step solver's, an adaptive one's beyond ``ADAPTIVE_NFE_NOISE`` (its steps turn on x_T
  and on float rounding); status: ok in the base and not in the head is a regression;
- a figure with standard errors in both rows (every sample-based one): the change exceeds both its threshold
  (``RELATIVE_THRESHOLDS``: 5% of the base for the solver's errors and the shares bounded by 1, 10% for the
  distances between sample sets; none for a figure that can be 0 or below, such as KID, an unbiased estimate, or
  whose standard error alone sets the scale) and ``Z`` = 3 times the combined standard error
  sqrt(se_base^2 + se_head^2) (as if the two were independent: conservative for paired rows);
- rows from before the standard errors: the thresholds above alone (paired), or the seed-to-seed noise
  measured on the default grid (``SEED_NOISE_128``, unpaired);
- wall_s: only between rows of the same device, host and batch (anything else is reported as not
  comparable). The median ratio over those rows is the run's own timing shift, reported once (a busy
  machine moves every config; it is a regression only beyond ``RUN_SHIFT_LIMIT``). Each config is judged by
  its ratio relative to that median, beyond ``time_ratio`` (default 1.5) either way and beyond ``Z`` times the
  combined standard error of the two medians of repeated timings, unless the run's own timing noise (the
  robust spread of those relative ratios) is so large that ``Z`` of it exceeds ``time_ratio``: then no config's
  wall time is judged alone, and the report says so once.
Per model and metric, a systematic shift counts when the median log ratio over its configs exceeds
``SHIFT_FLOOR`` (paired) or the measured run-to-run shift (``SEED_SHIFT``, unpaired) and the
Wilcoxon signed-rank test gives p < 0.001: the ratio and significance rule of asv. Per solver, its configs'
wall times relative to the run's shift count when their median exceeds ``time_ratio`` with p < 0.001: a
solver made slower is caught however noisy the single configs are. Per curve (bench.analysis.frontier.order_table:
a model, solver, spacing and eta over the same NFE), a measured convergence order moved when the change exceeds
``Z`` combined standard errors and ``ORDER_FLOOR``: reported, neither better nor worse by itself (the configs'
own errors say which).
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd

from bench.analysis.frontier import (CONFIG_KEYS_WITHOUT_SEED as MATCH_KEYS, ORDER_KEYS, describe_config, mean_se,
                                     order_table, seed_label, seed_std)
from bench.metrics import BETTER, COLUMNS as METRIC_COLUMNS, METRICS, needing
from bench.run.store import load_rows

FIGURES = tuple(column for column in METRIC_COLUMNS if f"{column}_se" in METRIC_COLUMNS)
# The figures measured against an image reference set (FID's and density/coverage's): judged only between rows whose
# sets are the same, by fid_reference_sha256 (a folder whose images changed, a subset drawn otherwise).
REFERENCE_SET_FIGURES = frozenset(column for name in needing("inception") & needing("dataset")
                                  for column in METRICS[name].columns if column in FIGURES)
DIRECTION = {**BETTER, "nfe": "lower", "wall_s": "lower"}
DETERMINISTIC_METRICS = ("err_reference", "err_stepdoubling")  # paired rows: the same x_T, no sampling noise
JUDGED = (*FIGURES, "nfe", "wall_s")
Z = 3.0  # standard errors a change must exceed
DEFAULT_RELATIVE_NOISE = 0.10  # distances between sample sets (fid, frechet, sliced_wasserstein), and the default
FINE_RELATIVE = 0.05  # the solver's errors against its own reference or partner, and the shares bounded by 1
RELATIVE_THRESHOLDS = {**{m: FINE_RELATIVE for m in (*DETERMINISTIC_METRICS, "err_stepdoubling_rms", "lpips_reference",
                                                     "drift_vs_eager", "precision", "recall", "coverage")},
                       **{m: 0.0 for m in ("kid", "nll", "nll_bpd", "sample_log_density", "fid_vs_eager",
                                           "clip_score")}}  # 0 or below possible, or their SE sets the scale
DEFAULT_TIME_RATIO = 1.5
MEDIAN_SE_FACTOR = 1.2533  # the standard error of a median of r normal timings is about sqrt(pi/2) sigma / sqrt(r)
# |log(head/base)| between seeds 0, 1 and 2 of the default grid (128 samples; 1,764 ok configs per pair):
# the 99th percentile, largest of the three pairs. fid and kid (not in that grid) take frechet's value.
SEED_NOISE_128 = {"err_reference": 0.38, "err_stepdoubling": 0.51, "frechet": 1.8, "sliced_wasserstein": 0.6,
                  "fid": 1.8, "kid": 1.8}
# An adaptive solver's NFE between seeds: the largest |log ratio| of 36 configs. Its accept/reject sequence also
# turns on float rounding: the default grid's rows at 26cfbc2 (results/example-default) against the same commit
# rerun on another CPU moved 2 of its 36 adaptive configs, dopri8 118 -> 157 and 131 -> 118 NFE (|log| <= 0.29),
# with no code changed; so paired rows are judged by this noise too, not by any change.
ADAPTIVE_NFE_NOISE = 0.51
# A busy machine moves a whole run's timings: the default grid beside one CPU-bound process on the 2-core machine,
# x2.03 (results/example-default/README.md). Beyond this the run's own shift counts as a regression.
RUN_SHIFT_LIMIT = 3.0
# The largest per-model median log ratio between those seeds, times 1.5: how far a whole model moves when
# only the seed changes (the configs of one run share x_T). The figures after wall_s were measured later, with one
# reference set for every seed: the default grid with seeds [0, 1, 2], `python benchmarks/seed_shift.py RUN`
# (0.054, 0.036, 0.021, 1.27; the earlier figures came out at or below their values here: 0.03, 0.02, 0.59, 0.29).
# A figure without a value is not judged for a shift between runs of different seeds.
SEED_SHIFT = {"err_reference": 0.05, "err_stepdoubling": 0.05, "frechet": 0.7, "sliced_wasserstein": 0.3,
              "fid": 0.7, "kid": 0.7, "wall_s": 0.15,
              "precision": 0.06, "recall": 0.04, "err_stepdoubling_rms": 0.03, "sample_log_density": 1.3}
SHIFT_FLOOR = 0.02
ORDER_FLOOR = 0.1  # a measured convergence order must move this much as well as Z standard errors to be reported
SHIFT_P_VALUE = 1e-3
_DESCRIBE = ["model", "solver", "steps", "spacing", "eta", "tolerance", "exec_mode", "guidance_scale", "seed"]
COMPARABLE_TIMING = ("device", "host", "batch_used")


def resolve_run(ref: str, root: Path = Path("results"), like: Path | None = None) -> Path:
    """A run folder given as a path, or the latest run under ``root`` whose commit starts with ``ref``: of those, the
    latest of the same spec as the run folder ``like`` where there is one (a commit's newest run may be of another
    grid, with nothing to compare)."""
    path = Path(ref)
    if (path / "run.json").exists():
        return path
    matches = []
    for meta_path in Path(root).rglob("run.json"):
        meta = json.loads(meta_path.read_text())
        if len(ref) >= 4 and meta.get("git_commit", "").startswith(ref):
            matches.append((meta["created_at"], meta.get("spec_name"), meta_path.parent))
    if not matches:
        raise ValueError(f"{ref!r} is neither a run folder (with run.json) nor the commit of a run under {root}/")
    spec = json.loads((Path(like) / "run.json").read_text()).get("spec_name") if like is not None else None
    return max(matches, key=lambda match: (match[1] == spec, match[0]))[2]


def seed_noise(df: pd.DataFrame, metric: str) -> dict:
    """Per model, the pooled (median) standard deviation of ``metric`` across seeds of otherwise equal configs."""
    return seed_std(df, metric).groupby(level="model")["std"].median().to_dict()


def unshared_keys(base: pd.DataFrame, head: pd.DataFrame) -> dict[str, tuple[list, list]]:
    """The match keys on which the two runs share no value at all, each with its values in base and in head: why no
    configuration of one is one of the other (n_samples, for runs whose N run --max-minutes picked)."""
    values = {key: [_distinct(table[key]) for table in (base, head)] for key in _keys(base, head)}
    return {key: (b, h) for key, (b, h) in values.items() if b and h and not set(b) & set(h)}


def _distinct(column: pd.Series) -> list[str]:
    """A column's distinct values as text, in order (numbers by size)."""
    values = column.unique()
    try:
        values = sorted(values)
    except TypeError:
        values = sorted(values, key=str)
    return list(dict.fromkeys(str(v) for v in values))


def unmatched_line(base: pd.DataFrame, head: pd.DataFrame) -> str:
    """What keeps every configuration of ``head`` from matching one of ``base``, and what would: for a line after
    "nothing was judged"."""
    unshared = unshared_keys(base, head)
    if not unshared:
        return f"compare runs of the same grid (a configuration is its {', '.join(MATCH_KEYS)})"
    listed = "; ".join(f"{key}: base {', '.join(b[:4])}{' ...' * (len(b) > 4)}, head {', '.join(h[:4])}"
                       f"{' ...' * (len(h) > 4)}" for key, (b, h) in unshared.items())
    line = f"the runs share no value of {', '.join(unshared)} ({listed})"
    if "n_samples" in unshared:
        line += (f"; run --max-minutes picks N from the machine's speed, so two such runs rarely share it: run the head "
                 f"with n_samples = {unshared['n_samples'][0][0]} in its spec (the base's N)")
    return line


def _keys(*tables: pd.DataFrame) -> list[str]:
    """The match keys the tables have (a table made by hand, not by the store, may lack the guidance columns)."""
    return [k for k in MATCH_KEYS if all(k in table for table in tables)]


def _average_seeds(df: pd.DataFrame) -> pd.DataFrame:
    """One row per config: metrics averaged over its seeds; ok only if every seed was ok."""
    numeric = [m for m in (*JUDGED, "forward_s") if m in df]
    errors = [f"{m}_se" for m in JUDGED if f"{m}_se" in df]
    grouped = df.groupby(_keys(df), dropna=False)
    out = grouped[numeric].mean()
    for column in errors:
        out[column] = grouped[column].agg(mean_se)
    out["wall_s_std"] = np.nan  # timings of different seeds are not repeats of one measurement
    out["status"] = grouped.status.agg(lambda s: "ok" if (s == "ok").all() else s[s != "ok"].iloc[0])
    out["seed"] = grouped.seed.agg(seed_label)
    for column in ("config_id", *COMPARABLE_TIMING, "fid_reference_sha256", "weights_sha256", "solver_sha256"):
        if column in df:
            out[column] = grouped[column].first()
    return out.reset_index()


def match(base: pd.DataFrame, head: pd.DataFrame) -> tuple[pd.DataFrame, bool]:
    """(matched rows with _base/_head suffixes, paired?)."""
    shared = set(base.seed) & set(head.seed)
    if shared:
        base, head = base[base.seed.isin(shared)], head[head.seed.isin(shared)]
        return base.merge(head, on=[*_keys(base, head), "seed"], suffixes=("_base", "_head")), True
    merged = _average_seeds(base).merge(_average_seeds(head), on=_keys(base, head), suffixes=("_base", "_head"))
    return merged.assign(seed=merged.seed_base + " vs " + merged.seed_head), False


def _timing_comparable(merged: pd.DataFrame) -> pd.DataFrame:
    """The ok rows matched in both runs whose wall times compare: the same device, host and batch, both timed."""
    ok = merged[(merged.status_base == "ok") & (merged.status_head == "ok")]
    same = np.ones(len(ok), dtype=bool)
    for key in COMPARABLE_TIMING:
        base, head = ok[f"{key}_base"], ok[f"{key}_head"]
        same &= ((base == head) | (base.isna() & head.isna())).to_numpy()
    ok = ok[same]
    return ok[(ok.wall_s_base > 0) & (ok.wall_s_head > 0)]


def timing_shift(merged: pd.DataFrame) -> pd.DataFrame:
    """Per device, host and batch, what moved for the run as a whole: the median ratio head/base of wall_s over its
    configs, the bare network forward's (forward_s) beside it, and the run's timing noise: the robust spread (1.4826
    x the median absolute deviation) of the configs' log ratios around that median, as a ratio."""
    ok = _timing_comparable(merged)
    rows = []
    for key, group in ok.groupby([f"{k}_base" for k in COMPARABLE_TIMING], dropna=False):
        wall = np.log(group.wall_s_head / group.wall_s_base)
        median = float(np.median(wall))
        noise = 1.4826 * float(np.median(np.abs(wall - median)))
        rows.append({**dict(zip(COMPARABLE_TIMING, key)), "configs": len(group), "wall_s ratio": math.exp(median),
                     "forward_s ratio": math.exp(float(np.nanmedian(np.log(group.forward_s_head / group.forward_s_base)))),
                     "timing noise": math.exp(noise), "log_wall_median": median, "log_noise": noise})
    return pd.DataFrame(rows, columns=[*COMPARABLE_TIMING, "configs", "wall_s ratio", "forward_s ratio",
                                       "timing noise", "log_wall_median", "log_noise"])


def solver_timing(merged: pd.DataFrame, timing: pd.DataFrame, time_ratio: float) -> pd.DataFrame:
    """Per solver (and device, host and batch): its configs' wall-time ratios relative to the run's shift, their
    median, the Wilcoxon signed-rank p-value and a verdict (beyond ``time_ratio`` with p < SHIFT_P_VALUE)."""
    from scipy.stats import wilcoxon

    ok = _timing_comparable(merged)
    shift = {tuple(row[k] for k in COMPARABLE_TIMING): row["log_wall_median"] for row in timing.to_dict("records")}
    rows = []
    for key, group in ok.groupby(["solver", *[f"{k}_base" for k in COMPARABLE_TIMING]], dropna=False):
        relative = np.log(group.wall_s_head / group.wall_s_base).to_numpy() - shift[tuple(key[1:])]
        median = float(np.median(relative))
        nonzero = relative[relative != 0]
        p_value = float(wilcoxon(nonzero).pvalue) if len(nonzero) >= 6 else 1.0
        significant = abs(median) > math.log(time_ratio) and p_value < SHIFT_P_VALUE
        rows.append({"solver": key[0], "configs": len(group), "median ratio vs the run": math.exp(median),
                     "p-value": p_value, "threshold": f"x{time_ratio:g}, p < {SHIFT_P_VALUE:g}",
                     "verdict": ("regression" if median > 0 else "improvement") if significant else None})
    return pd.DataFrame(rows, columns=["solver", "configs", "median ratio vs the run", "p-value", "threshold", "verdict"])


def compare_runs(base: pd.DataFrame, head: pd.DataFrame, time_ratio: float = DEFAULT_TIME_RATIO) -> dict:
    """Per-config and per-model verdicts. Returns a dict: changes, regressions, improvements, shifts, timing
    (the run-wide timing shift per device, host and batch), not_comparable (configs whose wall time was not
    judged), other_reference (configs whose reference-set figures were not judged: their image reference sets
    differ), other_weights (the models whose weights differ between the runs: every change of theirs may be the
    model's, not the code's), added, removed, matched, paired, unmatched (where nothing matched: why,
    ``unmatched_line``)."""
    merged, paired = match(base, head)
    noise = {m: seed_noise(base, m) for m in FIGURES if m in base} if paired else {}
    timing = timing_shift(merged)
    run_shift = {tuple(row[k] for k in COMPARABLE_TIMING): (row["log_wall_median"], row["log_noise"])
                 for row in timing.to_dict("records")}
    records, log_ratios, untimed, other_reference, other_weights, other_code = [], [], 0, 0, set(), set()
    for row in merged.itertuples(index=False):
        row = row._asdict()
        described = {k: row[k] if k in row else row.get(f"{k}_base") for k in _DESCRIBE}
        if _digests_differ(row, "weights_sha256"):
            other_weights.add(described["model"])
        if _digests_differ(row, "solver_sha256"):
            other_code.add(described["solver"])
        if row["status_base"] == "ok" and row["status_head"] != "ok":
            records.append({**described, "metric": "status", "base": math.nan, "head": math.nan,
                            "change": row["status_head"], "threshold": "", "verdict": "regression"})
            continue
        if row["status_base"] != "ok" or row["status_head"] != "ok":
            continue
        timing_comparable = all(_same(row[f"{k}_base"], row[f"{k}_head"]) for k in COMPARABLE_TIMING)
        untimed += not timing_comparable
        same_reference = _same(row.get("fid_reference_sha256_base"), row.get("fid_reference_sha256_head"))
        other_reference += not same_reference
        for metric in JUDGED:
            b, h = row.get(f"{metric}_base"), row.get(f"{metric}_head")
            if (b is None or h is None or pd.isna(b) or pd.isna(h) or (metric == "wall_s" and not timing_comparable)
                    or (metric in REFERENCE_SET_FIGURES and not same_reference)):
                continue
            if b > 0 and h > 0:
                log_ratios.append((described["model"], metric, math.log(h / b)))
            adaptive = pd.notna(described["tolerance"])
            if metric == "wall_s":
                shift, timing_noise = run_shift.get(tuple(row[f"{k}_base"] for k in COMPARABLE_TIMING), (0.0, 0.0))
                if Z * timing_noise > math.log(time_ratio):  # too noisy to judge one config: said once, per run
                    continue
                verdict, change, threshold = _judge_time(row, shift, time_ratio)
            else:
                errors = (row.get(f"{metric}_se_base"), row.get(f"{metric}_se_head"))
                verdict, change, threshold = _judge(metric, b, h, described["model"], row["n_samples"], paired, noise,
                                                    adaptive, errors)
            if verdict:
                records.append({**described, "metric": metric, "base": b, "head": h, "change": change,
                                "threshold": threshold, "verdict": verdict})
    changes = pd.DataFrame(records, columns=[*_DESCRIBE, "metric", "base", "head", "change", "threshold", "verdict"])
    keys = [*_keys(base, head), "seed"] if paired else _keys(base, head)
    added = head[~head.set_index(keys).index.isin(base.set_index(keys).index)]
    removed = base[~base.set_index(keys).index.isin(head.set_index(keys).index)]
    return {"changes": changes, "regressions": changes[changes.verdict == "regression"],
            "improvements": changes[changes.verdict == "improvement"],
            "changed": changes[changes.verdict == "changed"], "shifts": _shifts(log_ratios, paired),
            "timing": timing, "solver_timing": solver_timing(merged, timing, time_ratio), "time_ratio": time_ratio,
            "not_comparable": untimed, "other_reference": other_reference, "other_weights": sorted(other_weights),
            "other_code": sorted(other_code),
            "added": added.reindex(columns=_DESCRIBE),
            "removed": removed.reindex(columns=_DESCRIBE), "matched": len(merged), "paired": paired,
            "orders": order_moves(base, head), "unmatched": "" if len(merged) else unmatched_line(base, head)}


def _digests_differ(row: dict, column: str) -> bool:
    """Whether a matched row's base and head both carry the digest ``column`` (a model's weights, a python: solver's
    code) and it differs."""
    digests = (row.get(f"{column}_base"), row.get(f"{column}_head"))
    return all(isinstance(d, str) for d in digests) and digests[0] != digests[1]


def order_moves(base: pd.DataFrame, head: pd.DataFrame) -> pd.DataFrame:
    """The curves whose measured convergence order (frontier.order_table, over the same NFE in both runs) moved
    beyond ``Z`` combined standard errors and ``ORDER_FLOOR``: base and head order, their SEs and local orders."""
    orders = [order_table(df) for df in (base, head)]
    if any(table.empty for table in orders):
        return pd.DataFrame()
    keys = [key for key in ORDER_KEYS if key in orders[0] and key in orders[1]] + ["nfe", "nominal"]
    merged = orders[0].merge(orders[1], on=keys, suffixes=(" base", " head"))
    change = merged["order head"] - merged["order base"]
    spread = np.hypot(merged["order_se base"].fillna(0.0), merged["order_se head"].fillna(0.0))
    moved = merged[(change.abs() > Z * spread) & (change.abs() > ORDER_FLOOR)]
    return moved[[*keys, "order base", "order_se base", "order head", "order_se head", "local orders base",
                  "local orders head"]].reset_index(drop=True)


def _same(a, b) -> bool:
    return a == b or (pd.isna(a) and pd.isna(b))


def _log_se(row: dict, side: str) -> float:
    """The standard error of log(wall_s) of one row: its repeated timings' spread (0 when it was timed once)."""
    std, repeats, wall = row.get(f"wall_s_std_{side}"), row.get(f"timing_repeats_{side}"), row[f"wall_s_{side}"]
    if std is None or pd.isna(std) or not repeats or pd.isna(repeats) or wall <= 0:
        return 0.0
    return MEDIAN_SE_FACTOR * std / wall / math.sqrt(repeats)


def _judge_time(row: dict, shift: float, time_ratio: float):
    """wall_s relative to the run's own timing shift: beyond ``time_ratio`` and Z combined standard errors."""
    base, head = row["wall_s_base"], row["wall_s_head"]
    if base <= 0 or head <= 0:
        return None, "", ""
    relative = math.log(head / base) - shift
    combined = math.hypot(_log_se(row, "base"), _log_se(row, "head"))
    limit = max(math.log(time_ratio), Z * combined)
    verdict = "regression" if relative > limit else "improvement" if relative < -limit else None
    return verdict, f"x{math.exp(relative):.2f} vs the run's x{math.exp(shift):.2f}", f"x{math.exp(limit):.2f}"


def _verdict(metric: str, change: float, limit: float) -> str | None:
    """A change (head - base, or log(head / base)) beyond ``limit`` either way: a regression or an improvement by the
    figure's direction (``DIRECTION``), "changed" for a figure without one, None within the limit."""
    if not abs(change) > limit:
        return None
    if metric not in DIRECTION:
        return "changed"
    worse = change > 0 if DIRECTION[metric] == "lower" else change < 0
    return "regression" if worse else "improvement"


def _judge(metric, base, head, model, n_samples, paired, noise, adaptive=False, errors=(None, None)):
    """(verdict or None, change as text, threshold as text)."""
    delta = head - base
    if metric == "nfe" and not adaptive:  # fixed-step NFE is exact
        return _verdict(metric, delta, 0.0), f"{delta:+g}", "any"
    if metric == "nfe":  # adaptive NFE follows x_T and the float rounding of each step's error estimate
        ratio = head / base
        return (_verdict(metric, math.log(ratio), ADAPTIVE_NFE_NOISE), f"x{ratio:.2f}",
                f"x{math.exp(ADAPTIVE_NFE_NOISE):.2f} (seed and rounding noise)")
    if all(e is not None and pd.notna(e) for e in errors):
        combined = math.hypot(*errors)
        relative = RELATIVE_THRESHOLDS.get(metric, DEFAULT_RELATIVE_NOISE)
        limit = max(relative * abs(base), Z * combined)
        text = f"{limit:.3g} (max of {relative:.0%} and {Z:g} SE)" if relative else f"{limit:.3g} ({Z:g} SE)"
    elif not paired:
        if metric not in SEED_NOISE_128:  # no standard errors and no measured seed noise: nothing to judge it by
            return None, "", ""
        limit = SEED_NOISE_128[metric] * math.sqrt(128 / n_samples)
        log_ratio = math.log(head / base) if base > 0 and head > 0 else math.copysign(math.inf, delta)
        return (_verdict(metric, log_ratio, limit),
                f"x{math.exp(log_ratio):.2f}" if math.isfinite(log_ratio) else f"{delta:+.3g}",
                f"x{math.exp(limit):.2f} (seed noise)")
    elif metric in DETERMINISTIC_METRICS:
        limit, text = FINE_RELATIVE * abs(base), f"{FINE_RELATIVE:.0%}"
    elif model in noise.get(metric, {}) and np.isfinite(noise[metric][model]):
        limit = 2 * math.sqrt(2) * noise[metric][model]
        text = f"{limit:.3g} (seed spread)"
    else:
        limit, text = DEFAULT_RELATIVE_NOISE * abs(base), f"{DEFAULT_RELATIVE_NOISE:.0%} (default)"
    return _verdict(metric, delta, limit), f"{delta:+.3g}", text


def _shifts(log_ratios: list, paired: bool) -> pd.DataFrame:
    """Per model and metric: the median ratio over configs, the Wilcoxon signed-rank p-value and a verdict (wall time
    is judged relative to the run's own shift, per config and per solver, instead)."""
    from scipy.stats import wilcoxon

    columns = ["model", "metric", "configs", "median ratio", "p-value", "threshold", "verdict"]
    table = pd.DataFrame(log_ratios, columns=["model", "metric", "log_ratio"])
    rows = []
    for (model, metric), group in table[~table.metric.isin(["nfe", "wall_s"])].groupby(["model", "metric"]):
        values = group.log_ratio.to_numpy()
        median = float(np.median(values))
        nonzero = values[values != 0]
        p_value = float(wilcoxon(nonzero).pvalue) if len(nonzero) >= 10 else 1.0
        # Every config of a run moves with its seed's x_T; by how much, for this figure, may be unmeasured.
        if not paired and metric not in SEED_SHIFT:
            rows.append([model, metric, len(values), math.exp(median), p_value,
                         "not judged: its move between seeds is not measured (benchmarks/seed_shift.py)", None])
            continue
        floor = SHIFT_FLOOR if paired else SEED_SHIFT[metric]
        verdict = _verdict(metric, median, floor) if p_value < SHIFT_P_VALUE else None
        rows.append([model, metric, len(values), math.exp(median), p_value, f"x{math.exp(floor):.2f}, p < {SHIFT_P_VALUE:g}",
                     verdict])
    return pd.DataFrame(rows, columns=columns)


def timing_lines(result: dict) -> list[str]:
    """One sentence per device, host and batch on how the run's timings moved as a whole and whether single configs'
    wall times could be judged."""
    lines = []
    limit = math.log(result["time_ratio"]) / Z
    for row in result["timing"].to_dict("records"):
        verdict = (f"a regression: beyond x{RUN_SHIFT_LIMIT:g}, more than a busy machine moves a run"
                   if row["wall_s ratio"] > RUN_SHIFT_LIMIT else "not counted as a regression: a busy machine moves "
                   f"a run so (up to x{RUN_SHIFT_LIMIT:g})")
        judged = (f"single configs' wall times not judged: the run's timing noise (x{row['timing noise']:.2f}, robust "
                  f"spread) is above x{math.exp(limit):.2f}, where {Z:g} of it would pass the x{result['time_ratio']:g} "
                  "threshold; solvers are still judged as a whole" if row["log_noise"] > limit else
                  f"each config judged against this median (timing noise x{row['timing noise']:.2f})")
        lines.append(f"timings moved as a whole on {row['device']} ({row['host']}, batch {row['batch_used']:g}): wall_s "
                     f"x{row['wall_s ratio']:.2f} over {row['configs']} configs (the bare network forward "
                     f"x{row['forward_s ratio']:.2f}), {verdict}; {judged}")
    return lines


def other_reference_line(result: dict) -> str:
    """What was not judged because the image reference sets differ (said in the terminal and in compare.md)."""
    return (f"{result['other_reference']} configs' FID, KID, precision/recall and density/coverage not judged: "
            "their image reference sets differ (fid_reference_sha256)")


def other_weights_line(result: dict) -> str:
    """The models that ran other weights in head than in base (said in the terminal and in compare.md)."""
    return (f"warning: {', '.join(result['other_weights'])} ran other weights in head than in base (weights_sha256): "
            "their changes may be the model's, not the code's")


def other_code_line(result: dict) -> str:
    """The python: solvers whose code differs between the runs (said in the terminal and in compare.md): their changes
    are those of the user's solver, which the commits do not show."""
    return (f"{', '.join(result['other_code'])} ran other code in head than in base (solver_sha256): the changes "
            "below are those of your solver's code as well as of the commits")


def terminal_summary(result: dict, limit: int = 20) -> str:
    """What CI's log should show: how the run's timings moved as a whole (once), the regressed configs and shifts
    themselves, not only their count."""
    lines = [f"  {line}" for line in timing_lines(result)]
    if result["other_weights"]:
        lines.append(f"  {other_weights_line(result)}")
    if result["other_code"]:
        lines.append(f"  {other_code_line(result)}")
    if result["other_reference"]:
        lines.append(f"  {other_reference_line(result)}")
    for row in result["solver_timing"].query("verdict == 'regression'").to_dict("records"):
        lines.append(f"  solver {row['solver']}: wall_s x{row['median ratio vs the run']:.2f} of the run's shift over "
                     f"{row['configs']} configs (p = {row['p-value']:.1e})")
    shifts = result["shifts"]
    for row in shifts[shifts.verdict == "regression"].to_dict("records"):
        lines.append(f"  shift: {row['model']} {row['metric']} x{row['median ratio']:.3f} over {row['configs']} "
                     f"configs (p = {row['p-value']:.1e})")
    regressions = result["regressions"]
    for row in regressions.head(limit).itertuples():
        lines.append(f"  {row.model} {describe_config(row)} seed={row.seed}: {row.metric} "
                     f"{row.base:.4g} -> {row.head:.4g} ({row.change}; threshold {row.threshold})")
    if len(regressions) > limit:
        lines.append(f"  ... and {len(regressions) - limit} more regressions (see compare.md)")
    for row in result["orders"].head(limit).to_dict("records"):
        lines.append(f"  order moved: {row['model']} {row['solver']} ({row['spacing']}, eta {row['eta']:g}, NFE "
                     f"{row['nfe']}): {row['order base']:.2f} -> {row['order head']:.2f} (nominal {row['nominal']})")
    return "\n".join(lines)


def regressed(result: dict) -> bool:
    """Any regressed config, systematic shift, slower solver, or a run slower as a whole than a busy machine makes it."""
    return bool(len(result["regressions"]) or (result["shifts"].verdict == "regression").any()
                or (result["solver_timing"].verdict == "regression").any()
                or (result["timing"]["wall_s ratio"] > RUN_SHIFT_LIMIT).any())


def build_comparison(base_dir: Path, head_dir: Path, out_dir: Path, time_ratio: float = DEFAULT_TIME_RATIO):
    """Write compare.md / compare.html (with both frontiers in one plot) and return (paths, result)."""
    from bench.analysis.document import Document
    from bench.analysis.frontier import default_quality
    from bench.analysis.plots import plot_frontier_overlay

    base, head = load_rows(base_dir), load_rows(head_dir)
    result = compare_runs(base, head, time_ratio)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    doc = Document(f"Compare {Path(base_dir).name} (base) -> {Path(head_dir).name} (head)")
    commits = [df.git_commit.iloc[0][:10] if len(df) else "?" for df in (base, head)]
    mode = ("paired: the runs share seeds, rows are matched seed to seed" if result["paired"] else
            "unpaired: the runs have different seeds, so every metric carries sampling noise")
    doc.paragraph(f"Base commit {commits[0]}, head commit {commits[1]}. {result['matched']} configurations in both "
                  f"({mode}), {len(result['added'])} added, {len(result['removed'])} removed; "
                  f"{len(result['regressions'])} regressions and {len(result['improvements'])} improvements beyond "
                  f"noise. Wall time not comparable (other device, host or batch) for {result['not_comparable']}."
                  + (f" {other_reference_line(result)}." if result["other_reference"] else "")
                  + (f" **{other_weights_line(result).capitalize()}.**" if result["other_weights"] else "")
                  + (f" {other_code_line(result)}." if result["other_code"] else "")
                  + (f" **Nothing was judged**: {result['unmatched']}." if result["unmatched"] else ""))
    doc.heading("Timings of the run as a whole")
    doc.bullets(timing_lines(result) or ["no wall times to compare (another device, host or batch)"])
    doc.heading("Systematic shifts per model (median ratio over configs, Wilcoxon signed-rank)")
    doc.table(result["shifts"])
    doc.heading("Wall time per solver, relative to the run's shift (Wilcoxon signed-rank)")
    doc.table(result["solver_timing"])
    doc.heading("Regressions")
    doc.table(result["regressions"])
    doc.heading("Improvements")
    doc.table(result["improvements"])
    if not result["changed"].empty:
        doc.heading("Changed beyond noise, neither better nor worse (figures without a direction)")
        doc.table(result["changed"])
    if not result["orders"].empty:
        doc.heading("Convergence orders that moved")
        doc.paragraph(f"Per curve (model, solver, spacing, eta over the same NFE), the order fitted to err_reference "
                      f"against NFE, where base and head differ by more than {Z:g} combined standard errors and "
                      f"{ORDER_FLOOR:g}: a solver's convergence changed. Neither better nor worse by itself; the "
                      "configurations' own errors above say which.")
        doc.table(result["orders"])
    quality = default_quality(pd.concat([base, head]))
    png = quality and plot_frontier_overlay(base, head, out_dir / "plots", quality)
    if png is not None:
        doc.heading("Frontiers")
        doc.image(f"Pareto frontier of {quality} vs NFE, base and head", png)
    doc.heading("Configurations added")
    doc.table(result["added"])
    doc.heading("Configurations removed")
    doc.table(result["removed"])
    md_path, html_path = out_dir / "compare.md", out_dir / "compare.html"
    doc.write(md_path, html_path)
    return (md_path, html_path), result
