"""``python -m bench check-solver SOLVER``: a solver's grid on the analytic mixtures and what its rows say of it."""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from bench.analysis.frontier import ORDER_SLACK, order_table
from bench.run import store
from bench.run.runner import NFE_NOT_DECLARED, NOISE_NOT_DECLARED
from bench.run.sweep import run_sweep
from bench.spec.config import expand, parse_spec
from bench.spec.fitted import toml_key, toml_value
from solvers import get_solver

CHECK_MODELS = ("ring2d", "gmm_hd")  # exact scores and samples: a 2-D ring of 8 Gaussians, a 16-D mixture
GUIDED_MODEL = "gmm_classes"  # a 16-D mixture of 4 classes: its guided score is exact too, at any guidance scale
ERRORS = {False: ("err_reference", "the exact reference solve from the same x_T"),
          True: ("err_stepdoubling", "the 2n-step solve on the same x_T and Brownian path")}


@dataclass(frozen=True)
class SolverCheck:
    """One verdict: what was checked, whether it held, and the numbers behind it."""

    what: str
    passed: bool | None  # None: nothing to check it on (said in the detail)
    detail: str

    def line(self) -> str:
        mark = "--  " if self.passed is None else "ok  " if self.passed else "FAIL"
        return f"  {mark}  {self.what}: {self.detail}"


def check_spec(solver: str, schedule: str, spacing: str, steps: list[int], n_samples: int, options: dict,
               guidance_scale: float | None = None) -> dict:
    """The grid of a check: ``solver`` on CHECK_MODELS (or, with a ``guidance_scale``, on GUIDED_MODEL guided at that
    scale) at ``steps``, at eta 0 where it takes it and at its default eta where it draws noise, with the two errors
    the orders are measured from; in float64 (float32's rounding floors a high-order solver's error at the step
    counts where its order shows), in this process (no time limit)."""
    entry = get_solver(solver)
    if entry.adaptive:
        raise ValueError(f"check-solver: {solver} is adaptive: it chooses its own steps, so it has no order in the "
                         "steps to check (check a fixed-step solver)")
    if entry.needs_guidance and guidance_scale is None:
        raise ValueError(f"check-solver: {solver} is a CFG++ sampler: it needs a classifier-free guided model; "
                         f"--guidance-scale S checks it on {GUIDED_MODEL}, the class-conditional mixture, guided at S")
    etas = [0.0, 1.0] if entry.stochastic == "both" else [entry.default_eta]
    guided = {"guidance_scales": [guidance_scale]} if guidance_scale is not None else {}
    return {"name": "check-solver", "models": [GUIDED_MODEL] if guided else list(CHECK_MODELS), "solvers": [solver],
            "schedule": schedule, "spacings": [spacing], "steps": steps, "etas": etas, "n_samples": n_samples,
            "seeds": [0], "dtype": "float64", "metrics": ["err_reference", "err_stepdoubling"],
            "options": {solver: options} if options else {}, **guided,
            "time_limit_s": 0, "reference_time_limit_s": 0, "timing_repeats": 1}


def check_solver(raw: dict, run_dir: Path) -> tuple[list[SolverCheck], pd.DataFrame]:
    """Run the check's grid ``raw`` (check_spec) into a new run folder ``run_dir``, its spec written there as
    spec.toml (``python -m bench run`` reruns it), and read the verdicts from its rows."""
    run_dir = Path(run_dir)
    if (run_dir / "run.json").exists():
        raise ValueError(f"check-solver: {run_dir} holds a run already; a check writes a new one (choose another --out)")
    spec_path = run_dir / "spec.toml"
    text = "".join(f"{toml_key(key)} = {toml_value(value)}\n" for key, value in raw.items())
    spec = parse_spec(raw, str(spec_path), text)  # every problem said before the folder is made
    run_dir.mkdir(parents=True, exist_ok=True)
    spec_path.write_text(text)
    meta = store.open_run(run_dir, spec)
    run_sweep(expand(spec), run_dir, meta["run_id"], progress=False)
    rows = store.load_rows(run_dir)
    return verdicts(rows), rows


def verdicts(rows: pd.DataFrame) -> list[SolverCheck]:
    """What a check's rows say: every configuration ran; network evaluations and noise draws as the entry says;
    per model and eta, the order measured against ERRORS[draws noise] reaches the entry's (nominal_order)."""
    failed = rows[rows.status != "ok"]
    messages = rows.message.fillna("")
    miscounted = rows[messages.str.contains(NFE_NOT_DECLARED, regex=False)]  # the runner's notes
    undeclared = rows[messages.str.contains(NOISE_NOT_DECLARED, regex=False)]
    checks = [
        SolverCheck("every configuration ran", failed.empty,
                    f"{len(rows) - len(failed)} of {len(rows)} rows ok" + "".join(
                        f"; {r.model} {r.steps} steps eta {r.eta:g}: {r.status} ({r.message})"
                        for r in failed.head(3).itertuples())),
        SolverCheck("network evaluations", miscounted.empty,
                    "counted = the entry's nfe(steps) in every row" if miscounted.empty else miscounted.message.iloc[0]),
        SolverCheck("noise draws", undeclared.empty,
                    "every draw was in the entry's NoisePlan" if undeclared.empty else undeclared.message.iloc[0])]
    ok = rows[rows.status == "ok"]
    for draws in (False, True):
        error, against = ERRORS[draws]
        curves = order_table(ok[(ok.eta > 0) == draws], error)
        checks += [_order_check(curve, draws, against) for curve in curves.to_dict("records")]
        measured = set(zip(curves.model, curves.eta)) if len(curves) else set()
        for (model, eta), group in ok[(ok.eta > 0) == draws].groupby(["model", "eta"]):
            if (model, eta) not in measured:
                why = (": the entry gives it no order (no pathwise convergence), so its rows have no step-doubling "
                       "estimate" if group.nominal_order.isna().all() else
                       " at two or more NFE (see the rows' messages)")
                checks.append(SolverCheck(f"{model}, eta {eta:g}: {'strong order' if draws else 'order'}", None,
                                          f"not measured: no {error}{why}"))
    return checks


def _order_check(curve: dict, draws: bool, against: str) -> SolverCheck:
    """A curve of order_table: its measured order against the entry's (``ORDER_SLACK`` below it still reaches it);
    without an entry's order, the measurement alone."""
    what = f"{curve['model']}, eta {curve['eta']:g}: {'strong order' if draws else 'order'}"
    measured = (f"{curve['order']:.2f} ± {curve['order_se']:.2g} over NFE {curve['nfe']} (local orders "
                f"{curve['local orders']}) against {against}")
    if pd.isna(curve["nominal"]):  # a CFG++ sampler's: no ODE limit, so its error need not fall
        return SolverCheck(what, None, f"{measured}; not checked: the entry gives it no order (whether the error "
                                       f"falls: {curve['error falls']})")
    reached = math.isfinite(curve["order"]) and curve["order"] >= curve["nominal"] - ORDER_SLACK
    return SolverCheck(what, reached, f"{measured}; the entry says {int(curve['nominal'])}")
