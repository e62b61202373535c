"""compare's false alarms and its power, measured on a real grid: the same spec run twice on one commit, the
second time sharing the machine with a CPU-bound process (as on a CI runner), then compared; then the second run
with a 10% err_reference shift on one model, and with one solver's wall time doubled, compared again.

    python benchmarks/compare_aa.py [--spec bench/configs/default.toml] [--repeats R] [--out results/scratch/aa]
                                    [--reuse]

Prints (and writes to OUT/summary.json) the share of configurations compare flags in the A/A pair, whether the
shift is caught, and compare's verdict on the slowed solver. --reuse judges the two run folders OUT already holds
instead of running them again.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.analysis.compare import compare_runs, regressed, timing_lines  # noqa: E402
from bench.run import store  # noqa: E402

HOG = "while True: pass"  # one busy core of the two


def _run(spec: Path, out: Path, busy: bool) -> float:
    hog = subprocess.Popen([sys.executable, "-c", HOG]) if busy else None
    started = time.perf_counter()
    try:
        subprocess.run([sys.executable, "-m", "bench", "run", str(spec), "--out", str(out), "--no-progress"],
                       check=True, stdout=subprocess.DEVNULL)
    finally:
        if hog is not None:
            hog.kill()
    return time.perf_counter() - started


def _flagged(result: dict) -> int:
    changes = result["changes"]
    return changes.groupby(["model", "solver", "steps", "spacing", "eta", "tolerance", "seed"], dropna=False).ngroups


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--spec", default="bench/configs/default.toml")
    parser.add_argument("--repeats", type=int, help="timing_repeats for both runs (default: the spec's)")
    parser.add_argument("--out", default="results/scratch/aa")
    parser.add_argument("--shift-model", default="gmm_hd")
    parser.add_argument("--slow-solver", default="heun")
    parser.add_argument("--reuse", action="store_true", help="judge OUT/quiet and OUT/busy as they are")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    spec = Path(args.spec)
    if args.repeats is not None:
        text = spec.read_text() + f"\ntiming_repeats = {args.repeats}\n"
        spec = out / "spec.toml"
        spec.write_text(text)
    seconds = None if args.reuse else {"quiet": _run(spec, out / "quiet", busy=False),
                                       "busy": _run(spec, out / "busy", busy=True)}
    base, head = store.load_rows(out / "quiet"), store.load_rows(out / "busy")
    ok = int((base.status == "ok").sum())
    aa = compare_runs(base, head)
    shifted = head.copy()
    shifted.loc[(shifted.model == args.shift_model) & (shifted.status == "ok"), "err_reference"] *= 1.10
    shifts = compare_runs(base, shifted)["shifts"].set_index(["model", "metric"])
    slowed = head.copy()
    slow_rows = (slowed.solver == args.slow_solver) & (slowed.status == "ok")
    slowed.loc[slow_rows, "wall_s"] *= 2
    slow_verdict = compare_runs(base, slowed)["solver_timing"].set_index("solver").loc[args.slow_solver]
    summary = {"spec": str(args.spec), "repeats": args.repeats, "seconds": seconds, "ok_configs": ok,
               "aa_flagged_configs": _flagged(aa), "aa_flagged_share": _flagged(aa) / ok,
               "aa_flagged_by_metric": aa["changes"].metric.value_counts().to_dict(),
               "aa_regressed": regressed(aa), "aa_timing": timing_lines(aa),
               "shift_caught": shifts.loc[(args.shift_model, "err_reference"), "verdict"] == "regression",
               "slow_solver_configs": int(slow_rows.sum()), "slow_solver_verdict": slow_verdict["verdict"],
               "slow_solver_ratio_vs_run": float(slow_verdict["median ratio vs the run"]),
               "slow_solver_p": float(slow_verdict["p-value"])}
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
