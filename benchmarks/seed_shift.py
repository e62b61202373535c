"""How far a figure moves when only the seed changes: the measurements behind compare's unpaired thresholds
(bench/analysis/compare.py: SEED_SHIFT, how far a whole model moves; SEED_NOISE_128, how far one config moves).

    python benchmarks/seed_shift.py RUN

RUN is a run folder with two or more seeds of every config (the default grid with seeds = [0, 1, 2]: see
results/example-default/README.md). For every figure with a standard error, over every pair of seeds: the largest
per-model median |log(b / a)| over its configs, and times 1.5 (SEED_SHIFT's margin), and the 99th percentile of
the per-config |log(b / a)| (SEED_NOISE_128's measure, at the run's sample count). Pairs where a value is 0 or
below are left out (no ratio).
"""
from __future__ import annotations

import itertools
import sys
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.analysis.compare import FIGURES, MATCH_KEYS  # noqa: E402
from bench.run.store import load_rows  # noqa: E402

MARGIN = 1.5


def seed_shifts(rows: pd.DataFrame) -> pd.DataFrame:
    """Per figure: configs compared, the largest per-model median |log ratio| between seeds, it times MARGIN, and
    the 99th percentile of the per-config |log ratio|."""
    ok = rows[rows.status == "ok"]
    keys = [k for k in MATCH_KEYS if k in ok]
    table = []
    for figure in (f for f in FIGURES if f in ok and ok[f].notna().any()):
        by_seed = ok.groupby([*keys, "seed"], dropna=False)[figure].first().unstack("seed")
        per_model, per_config = [], []
        for a, b in itertools.combinations(by_seed.columns, 2):
            pair = by_seed[[a, b]].dropna()
            pair = pair[(pair[a] > 0) & (pair[b] > 0)]
            logs = np.log(pair[b] / pair[a])
            per_config.append(logs.abs())
            per_model += [abs(float(group.median())) for _, group in logs.groupby(level="model")]
        if not per_model:
            continue
        configs = pd.concat(per_config)
        table.append({"figure": figure, "config pairs": len(configs), "largest model median": max(per_model),
                      f"x{MARGIN:g} (SEED_SHIFT)": MARGIN * max(per_model),
                      "config p99 (SEED_NOISE_128)": float(configs.quantile(0.99))})
    return pd.DataFrame(table)


def main() -> int:
    if len(sys.argv) != 2:
        print(__doc__)
        return 2
    rows = load_rows(Path(sys.argv[1]))
    if rows.seed.nunique() < 2:
        print(f"{sys.argv[1]}: one seed only; run the grid with two or more")
        return 2
    print(seed_shifts(rows).to_string(index=False, float_format=lambda v: f"{v:.3g}"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
