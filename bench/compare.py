"""Compare two runs config by config: what moved, what regressed beyond noise, what was added or removed.

Rows are joined on ``config_id`` (the hash of everything that defines a config's result). Thresholds:
- sample-based quality (fid, kid, frechet, sliced_wasserstein): a change counts when it exceeds
  2 sqrt(2) times the seed-to-seed standard deviation of that metric (pooled median over the configs
  that differ only in their seed, per model) when the base run has several seeds; otherwise when it
  exceeds ``DEFAULT_RELATIVE_NOISE`` (10%) of the base value;
- deterministic errors (err_reference, err_stepdoubling): a relative change above 5%;
- nfe: any change; wall time: a ratio above ``time_ratio`` (default 1.25) or below its inverse;
- status: ok in the base and failed/diverged in the head is a regression.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd

from bench.frontier import seed_std
from bench.store import load_rows

SAMPLE_METRICS = ("fid", "kid", "frechet", "sliced_wasserstein")
DETERMINISTIC_METRICS = ("err_reference", "err_stepdoubling")
DEFAULT_RELATIVE_NOISE = 0.10
DETERMINISTIC_RELATIVE = 0.05
DEFAULT_TIME_RATIO = 1.25
_DESCRIBE = ["model", "solver", "steps", "spacing", "eta", "tolerance", "seed"]


def resolve_run(ref: str, root: Path = Path("results")) -> Path:
    """A run folder given as a path, or the latest run under ``root`` whose commit starts with ``ref``."""
    path = Path(ref)
    if (path / "run.json").exists():
        return path
    matches = []
    for meta_path in Path(root).rglob("run.json"):
        meta = json.loads(meta_path.read_text())
        if len(ref) >= 4 and meta.get("git_commit", "").startswith(ref):
            matches.append((meta["created_at"], meta_path.parent))
    if not matches:
        raise ValueError(f"{ref!r} is neither a run folder (with run.json) nor the commit of a run under {root}/")
    return max(matches)[1]


def seed_noise(df: pd.DataFrame, metric: str) -> dict:
    """Per model, the pooled (median) standard deviation of ``metric`` across seeds of otherwise equal configs."""
    return seed_std(df, metric).groupby(level="model")["std"].median().to_dict()


def compare_runs(base: pd.DataFrame, head: pd.DataFrame, time_ratio: float = DEFAULT_TIME_RATIO) -> dict:
    """Per-config deltas and flags. Returns a dict of DataFrames: changes, regressions, improvements, added, removed."""
    merged = base.merge(head, on="config_id", suffixes=("_base", "_head"))
    records = []
    noise = {m: seed_noise(base, m) for m in SAMPLE_METRICS if m in base}
    for row in merged.itertuples(index=False):
        row = row._asdict()
        described = {k: row[f"{k}_base"] for k in _DESCRIBE}
        if row["status_base"] == "ok" and row["status_head"] in ("failed", "diverged"):
            records.append({**described, "metric": "status", "base": math.nan, "head": math.nan, "change": row["status_head"],
                            "threshold": "", "verdict": "regression"})
            continue
        if row["status_base"] != "ok" or row["status_head"] != "ok":
            continue
        for metric in (*SAMPLE_METRICS, *DETERMINISTIC_METRICS, "nfe", "wall_s"):
            b, h = row.get(f"{metric}_base"), row.get(f"{metric}_head")
            if b is None or h is None or pd.isna(b) or pd.isna(h):
                continue
            verdict, change, threshold = _judge(metric, b, h, described["model"], noise, time_ratio)
            if verdict:
                records.append({**described, "metric": metric, "base": b, "head": h, "change": change,
                                "threshold": threshold, "verdict": verdict})
    changes = pd.DataFrame(records, columns=[*_DESCRIBE, "metric", "base", "head", "change", "threshold", "verdict"])
    added = head[~head.config_id.isin(base.config_id)]
    removed = base[~base.config_id.isin(head.config_id)]
    return {"changes": changes, "regressions": changes[changes.verdict == "regression"],
            "improvements": changes[changes.verdict == "improvement"], "added": added[_DESCRIBE],
            "removed": removed[_DESCRIBE], "matched": len(merged)}


def _judge(metric, base, head, model, noise, time_ratio):
    """(verdict or None, change as text, threshold as text). Lower is better for every judged metric."""
    if metric == "wall_s":
        ratio = head / base if base > 0 else math.inf
        verdict = "regression" if ratio > time_ratio else "improvement" if ratio < 1 / time_ratio else None
        return verdict, f"x{ratio:.2f}", f"x{time_ratio:g}"
    delta = head - base
    if metric == "nfe":
        return ("regression" if delta > 0 else "improvement" if delta < 0 else None), f"{delta:+g}", "any"
    if metric in DETERMINISTIC_METRICS:
        limit, text = DETERMINISTIC_RELATIVE * abs(base), f"{DETERMINISTIC_RELATIVE:.0%}"
    elif model in noise.get(metric, {}) and np.isfinite(noise[metric][model]):
        limit = 2 * math.sqrt(2) * noise[metric][model]
        text = f"{limit:.3g} (seed spread)"
    else:
        limit, text = DEFAULT_RELATIVE_NOISE * abs(base), f"{DEFAULT_RELATIVE_NOISE:.0%} (default)"
    verdict = "regression" if delta > limit else "improvement" if delta < -limit else None
    return verdict, f"{delta:+.3g}", text


def build_comparison(base_dir: Path, head_dir: Path, out_dir: Path, time_ratio: float = DEFAULT_TIME_RATIO):
    """Write compare.md / compare.html (with both frontiers in one plot) and return (paths, result)."""
    from bench.document import Document
    from bench.frontier import default_quality
    from bench.plots import plot_frontier_overlay

    base, head = load_rows(base_dir), load_rows(head_dir)
    result = compare_runs(base, head, time_ratio)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    doc = Document(f"Compare {Path(base_dir).name} (base) -> {Path(head_dir).name} (head)")
    commits = [df.git_commit.iloc[0][:10] if len(df) else "?" for df in (base, head)]
    doc.paragraph(f"Base commit {commits[0]}, head commit {commits[1]}. {result['matched']} configurations in both, "
                  f"{len(result['added'])} added, {len(result['removed'])} removed; "
                  f"{len(result['regressions'])} regressions and {len(result['improvements'])} improvements beyond noise.")
    doc.heading("Regressions")
    doc.table(result["regressions"])
    doc.heading("Improvements")
    doc.table(result["improvements"])
    quality = default_quality(pd.concat([base, head]))
    png = plot_frontier_overlay(base, head, out_dir / "plots", quality)
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
