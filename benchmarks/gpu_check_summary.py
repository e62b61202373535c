"""summary.md of a `make gpu-check` folder: each stage's exit code and time, and each goal of the GPU baseline (issue
27) as met or missed, every number read from the folder's own files (named beside it, with the query).

    python benchmarks/gpu_check_summary.py results/scratch/gpu-check      (gpu_check.sh runs it as its last stage)

Goals: the FID grid (bench/configs/gpu-fid.toml) runs in at most 8 minutes on one H100/H200 and gives at least 60 rows
with FID at 10,000 samples; `python -m bench plan`'s estimate (or, with GRID_ARGS="--max-minutes M", run's own at the N
it ran plus the time it spent planning) is within 25% of the grid's real time; the SD-sized loop's samples agree
with diffusers' (the benchmark asserts it before timing), with the speed-up of each harness loop over diffusers'
pipeline; the gpu-marked tests, the eager-row order-independence test among them, pass. On a machine without CUDA
(the CPU-sized twin of the stages) the time goals do not apply and say so.
"""
from __future__ import annotations

import json
import re
import sys
from pathlib import Path

GRID_LIMIT_S = 8 * 60
MIN_FID_ROWS, FID_SAMPLES = 60, 10_000
PLAN_TOLERANCE = 0.25
ORDER_TEST = "test_an_eager_row_on_cuda_does_not_depend_on_the_modes_that_ran_before_it"


def stages(folder: Path) -> dict[str, tuple[int, int]]:
    """stages.txt: name -> (exit code, seconds)."""
    found = {}
    for line in (folder / "stages.txt").read_text().splitlines() if (folder / "stages.txt").is_file() else []:
        match = re.fullmatch(r"(\S+) rc=(-?\d+) (\d+)s", line.strip())
        if match:
            found[match[1]] = (int(match[2]), int(match[3]))
    return found


def _verdict(ok: bool | None) -> str:
    return "n/a" if ok is None else ("met" if ok else "missed")


def _gpu_verdict(ok: bool, on_gpu: bool) -> str:
    """A goal measured on the GPU: met or missed; on the CPU twin: n/a."""
    return _verdict(ok) if on_gpu else "n/a (CPU twin)"


def _fid_rows(run: Path):
    """A run folder's rows, those ok with FID, those of them at FID_SAMPLES or more, and their sample counts."""
    from bench.run import store

    rows = store.load_rows(run)
    with_fid = rows[(rows.status == "ok") & rows.fid.notna()]
    sizes = ", ".join(f"N = {n}" for n in sorted(with_fid.n_samples.unique()))
    return rows, with_fid, with_fid[with_fid.n_samples >= FID_SAMPLES], sizes or "none"


def grid_goals(folder: Path, ran: dict, on_gpu: bool) -> list[tuple[str, str, str, str]]:
    """(goal, measured, verdict, source) of the FID grid and the plan."""
    goals = []
    rows_file = folder / "run"
    grid_s = ran.get("grid", (None, None))[1]
    if grid_s is not None:
        goals.append((f"FID grid within {GRID_LIMIT_S // 60} min on one GPU", f"{grid_s} s",
                      _gpu_verdict(grid_s <= GRID_LIMIT_S, on_gpu), "stages.txt, line grid"))
    if rows_file.is_dir():
        rows, with_fid, at_size, sizes = _fid_rows(rows_file)
        goals.append((f"at least {MIN_FID_ROWS} rows with FID at {FID_SAMPLES:,} samples", f"{len(at_size)} rows "
                      f"({len(with_fid)} with FID, {sizes}; {(rows.status == 'ok').sum()} ok of {len(rows)})",
                      _gpu_verdict(len(at_size) >= MIN_FID_ROWS, on_gpu),
                      "run/ rows (bench.run.store.load_rows): status == 'ok' and fid not null, by n_samples"))
    estimated_s, source = planned_seconds(folder)
    if estimated_s is not None and grid_s:
        goals.append(plan_goal(estimated_s, grid_s, ran["grid"][0] == 0, source))
    if (folder / "run-guided").is_dir():
        goals.append(guided_goal(folder / "run-guided", ran.get("guided_grid", (None, None))[1], on_gpu))
    return goals


def guided_goal(run: Path, seconds: int | None, on_gpu: bool) -> tuple[str, str, str, str]:
    """The class-conditional grid (gpu-fid-guided.toml): met when every row is ok with FID at 10,000 samples and
    there are two guidance scales or more."""
    rows, with_fid, at_size, sizes = _fid_rows(run)
    per_scale = at_size.groupby("guidance_scale").size()
    scales = ", ".join(f"scale {scale:g}: {count}" for scale, count in per_scale.items())
    complete = len(at_size) == len(rows) and len(per_scale) >= 2
    return ("the class-conditional model at two guidance scales, FID at 10,000 samples",
            f"{len(at_size)} of {len(rows)} rows ({scales or 'none'}; {len(with_fid)} with FID, {sizes}); {seconds} s",
            _gpu_verdict(complete, on_gpu),
            "run-guided/ rows: status == 'ok', fid not null and n_samples >= 10000, by guidance_scale; stages.txt "
            "line guided_grid")


def planned_seconds(folder: Path) -> tuple[float | None, str]:
    """The estimate of the grid that ran, and where it was read: with GRID_ARGS="--max-minutes M", run's own plan
    (its line in grid.log: the estimate at the N it ran, cut or not, plus the seconds it spent planning, which the
    grid stage's time holds too), else the plan stage's."""
    grid_log, plan = folder / "grid.log", folder / "plan.log"
    text = grid_log.read_text() if grid_log.is_file() else ""
    cut = re.search(r"^--max-minutes \S+: .*; running N = (\d+) \(estimated ([\d.]+) min", text, re.M)
    fits = re.search(r"^--max-minutes \S+: estimated ([\d.]+) min at N = (\d+): fits", text, re.M)
    planning = re.search(r"^--max-minutes \S+: (\d+) s spent planning", text, re.M)
    if cut or fits:
        n, minutes = (cut[1], cut[2]) if cut else (fits[2], fits[1])
        source = f"grid.log line '--max-minutes' (its estimate at N = {n})"
        if planning:
            return (60 * float(minutes) + int(planning[1]),
                    f"{source} plus its line '... s spent planning', stages.txt line grid")
        return 60 * float(minutes), f"{source}, stages.txt line grid"
    estimate = re.search(r"^estimate: ([\d.]+) min", plan.read_text(), re.M) if plan.is_file() else None
    return (60 * float(estimate[1]) if estimate else None), "plan.log line 'estimate:', stages.txt line grid"


def plan_goal(estimated_s: float, grid_s: int, finished: bool, source: str) -> tuple[str, str, str, str]:
    """The estimate against the grid's time. A grid stopped at its limit ran at least that long: the estimate is
    missed if it is too low even against that, and otherwise cannot be judged."""
    goal = f"plan's estimate within {PLAN_TOLERANCE:.0%} of the real grid"
    error = estimated_s / grid_s - 1
    if finished:
        return goal, f"{estimated_s:.0f} s estimated, {grid_s} s ran ({error:+.0%})", \
            _verdict(abs(error) <= PLAN_TOLERANCE), source
    measured = f"{estimated_s:.0f} s estimated; the grid stopped at {grid_s} s, unfinished"
    return goal, measured, _verdict(False) if error < -PLAN_TOLERANCE else "n/a (the real time is unknown)", source


def loop_table(folder: Path) -> list[str]:
    """The SD-sized loop (sd_loop.json, pytest-benchmark): medians per case and the speed-up over diffusers."""
    path = folder / "sd_loop.json"
    if not path.is_file():
        return ["(no sd_loop.json: the sd_loop stage did not run)"]
    cases: dict[str, dict] = {}
    for bench in json.loads(path.read_text())["benchmarks"]:
        loop = bench["params"]["loop"]
        cases.setdefault(bench["group"], {})[loop] = (bench["stats"]["median"],
                                                     bench["extra_info"]["relative_difference_to_diffusers"])
    out = ["| case | diffusers | harness eager | harness cuda_graph | eager speed-up | cuda_graph speed-up | "
           "agreement |", "| --- | --- | --- | --- | --- | --- | --- |"]
    for group, loops in cases.items():
        base = loops.get("diffusers", (None,))[0]

        def cell(loop):
            return f"{1000 * loops[loop][0]:.1f} ms" if loop in loops else "-"

        def ratio(loop):
            return f"{base / loops[loop][0]:.2f}x" if loop in loops and base else "-"
        agreement = max(value[1] for value in loops.values())
        out.append(f"| {group} | {cell('diffusers')} | {cell('harness')} | {cell('harness_cuda_graph')} | "
                   f"{ratio('harness')} | {ratio('harness_cuda_graph')} | {agreement:.1e} |")
    return out


def tests_line(folder: Path) -> tuple[str, str]:
    log = folder / "gpu_tests.log"
    if not log.is_file():
        return "(the gpu_tests stage did not run)", "n/a"
    text = log.read_text()
    summary = (re.findall(r"^=*\s*(\d+ passed.*|.*failed.*|.*no tests ran.*|.*skipped.*) in [\d.]+s", text, re.M)
               or ["(no pytest summary line)"])[-1]
    order = re.search(rf"(PASSED|FAILED|SKIPPED|ERROR)\S* .*{ORDER_TEST}|{ORDER_TEST}\S* (PASSED|FAILED|SKIPPED|ERROR)",
                      text)
    return summary.strip(" ="), (order[1] or order[2]) if order else "not listed"


def summary(folder: Path) -> str:
    ran = stages(folder)
    env = (folder / "env.txt").read_text() if (folder / "env.txt").is_file() else ""
    on_gpu = bool(env) and "no CUDA device" not in env
    lines = [f"# gpu-check: {folder}", "", "Written by benchmarks/gpu_check_summary.py from this folder's files.", "",
             "| stage | exit code | seconds |", "| --- | --- | --- |"]
    lines += [f"| {name} | {rc} | {seconds} |" for name, (rc, seconds) in ran.items()]
    lines += ["", "## Goals", "", "| goal | measured | verdict | from |", "| --- | --- | --- | --- |"]
    lines += [f"| {goal} | {measured} | {verdict} | {source} |" for goal, measured, verdict, source in
              grid_goals(folder, ran, on_gpu)]
    tests, order = tests_line(folder)
    passed = ("failed" not in tests and "passed" in tests) if on_gpu else None
    lines.append(f"| gpu-marked tests pass | {tests} | {_verdict(passed)} | gpu_tests.log, pytest's summary line |")
    lines.append(f"| eager rows do not depend on the order exec modes ran in (CUDA) | {order} | "
                 f"{_verdict(order == 'PASSED' if on_gpu else None)} | gpu_tests.log, {ORDER_TEST} |")
    lines += ["", "## The SD-sized loop against diffusers' StableDiffusionPipeline", "",
              "Medians of 3 rounds (sd_loop.json: benchmarks[].stats.median per group and params.loop); speed-up = "
              "diffusers' median / the loop's; agreement = the largest relative difference of the latents to "
              "diffusers' (extra_info), checked before timing.", ""]
    lines += loop_table(folder)
    if not on_gpu:
        lines += ["", "No CUDA device in env.txt: this is the CPU-sized twin of the stages (tiny UNet, small grid); "
                  "the time goals apply on one H100/H200."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    out = Path(sys.argv[1] if len(sys.argv) > 1 else "results/scratch/gpu-check")
    (out / "summary.md").write_text(summary(out))
    print((out / "summary.md").read_text())
