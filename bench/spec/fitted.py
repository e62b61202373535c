"""Fitted time grids as files, and the spacing ``fitted:PATH`` that puts them in a spec.

``python -m bench fit-schedule`` (bench.fit) writes one small TOML file per (model, solver, step count): the grid as
sigma~ = sigma/alpha values from t_max to t_min, and what it was fitted on and for (the model's name and weights
sha256, the solver and its options, the training seeds and sample count), how (candidates, teacher tolerance,
refinement rounds, the grid coordinate descent started from) and what it cost (network evaluations, seconds), with
the objective on the training seeds for the fitted grid and every formula it was compared with.

A spec names them in ``spacings`` as ``"fitted:PATH"``:

- PATH a file: that grid, for every solver of the spec (like an explicit grid, it sets its own step count);
- PATH a folder: for each model, solver and step count of the spec, the grid in the folder fitted for exactly
  those; a cell without one is a skipped row saying so;
- a NAME that is neither: the file NAME(.toml) in DEFAULT_DIR, where fit-schedule writes by default.

A config carries the grid's values (``RunConfig.fitted``), so its id and its samples follow the file's content,
not its name: a changed file is a new config.
"""
from __future__ import annotations

import hashlib
import json
import math
import re
import sys
from dataclasses import dataclass
from pathlib import Path

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

import torch

PREFIX = "fitted:"
DEFAULT_DIR = Path("results/scratch/fitted-grids")  # python -m bench fit-schedule's default --out
KIND = "fitted-grid"
END_SNAP = 1e-6  # |log sigma~| within which a grid's first and last values are the schedule's own ends


@dataclass(frozen=True)
class FittedGrid:
    """One fitted grid as a config holds it: its values and where they came from (the row's fitted_* columns)."""

    sigmas: tuple  # sigma~ from t_max to t_min, steps + 1 values
    model: str
    weights_sha256: str | None
    solver: str
    steps: int
    seeds: tuple
    cost_evaluations: int
    cost_s: float
    path: str
    sha256: str

    def times(self, schedule) -> torch.Tensor:
        """The grid's times on ``schedule`` (float64): its first and last sigma~ within END_SNAP of the schedule's
        ends are exactly t_max and t_min; a ValueError names a grid the schedule cannot run."""
        log_sigmas = torch.tensor(self.sigmas, dtype=torch.float64).log()
        times = schedule.t_of_lambda(-log_sigmas).to(torch.float64)
        for index, end in ((0, schedule.t_max), (-1, schedule.t_min)):
            if abs(float(log_sigmas[index]) + float(schedule.lambda_(end))) < END_SNAP:
                times[index] = end
        inside = schedule.t_min - 1e-12 <= float(times[-1]) and float(times[0]) <= schedule.t_max + 1e-12
        if not inside or not bool((torch.diff(times) < 0).all()):
            raise ValueError(f"fitted grid {self.path}: sigma~ {self.sigmas[0]:.6g}..{self.sigmas[-1]:.6g} does not "
                             f"map to strictly decreasing times within [{schedule.t_min}, {schedule.t_max}] of "
                             f"{schedule!r}")
        return times.clamp(schedule.t_min, schedule.t_max)

    def row(self) -> dict:
        return {"fitted_solver": self.solver, "fitted_model": self.model, "fitted_weights_sha256": self.weights_sha256,
                "fitted_seeds": json.dumps(list(self.seeds)), "fitted_cost_evaluations": self.cost_evaluations,
                "fitted_cost_s": self.cost_s, "fitted_file": self.path, "fitted_sha256": self.sha256,
                "grid_sigmas": json.dumps(list(self.sigmas))}


def is_fitted(spacing) -> bool:
    return isinstance(spacing, str) and spacing.startswith(PREFIX)


def toml_key(key) -> str:
    """``key`` as a TOML key: bare where it may be, else quoted (a python: solver's name)."""
    return key if re.fullmatch(r"[A-Za-z0-9_-]+", str(key)) else json.dumps(str(key))


def toml_value(value) -> str:
    """``value`` (a number, string, list or table of them) in TOML's form; a TypeError for anything else."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return repr(value) if not isinstance(value, float) or math.isfinite(value) else ("nan" if value != value else
                                                                                          ("inf" if value > 0 else "-inf"))
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{toml_key(k)} = {toml_value(v)}" for k, v in value.items()) + "}"
    raise TypeError(f"no TOML form for {value!r}")


def write(path: Path, fields: dict, tables: dict, comment: str) -> None:
    """A fitted grid's file: ``fields`` (scalars and lists), then one [table] per entry of ``tables``."""
    lines = [f"# {line}" for line in comment.splitlines()] + [f"kind = {toml_value(KIND)}"]
    lines += [f"{key} = {toml_value(value)}" for key, value in fields.items() if value is not None]
    for name, table in tables.items():
        lines += ["", f"[{name}]"] + [f"{toml_key(k)} = {toml_value(v)}" for k, v in table.items()]
    Path(path).write_text("\n".join(lines) + "\n")


_REQUIRED = {"model": str, "solver": str, "steps": int, "sigmas": list, "seeds": list}


def read(path) -> FittedGrid:
    """The grid in a fitted-grid file; a ValueError names the file and what is wrong with it."""
    path = Path(path)
    data = path.read_bytes()
    try:
        raw = tomllib.loads(data.decode())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"fitted grid {path}: not valid TOML: {err}") from None
    if raw.get("kind") != KIND:
        raise ValueError(f"fitted grid {path}: kind is {raw.get('kind')!r}, expected {KIND!r} (a file written by "
                         f"python -m bench fit-schedule)")
    for key, kind in _REQUIRED.items():
        if not isinstance(raw.get(key), kind):
            raise ValueError(f"fitted grid {path}: key {key!r} must be a {kind.__name__}, got {raw.get(key)!r}")
    sigmas = raw["sigmas"]
    if (len(sigmas) != raw["steps"] + 1 or not all(isinstance(v, (int, float)) and v > 0 for v in sigmas)
            or any(b >= a for a, b in zip(sigmas, sigmas[1:]))):
        raise ValueError(f"fitted grid {path}: sigmas must be {raw['steps'] + 1} strictly decreasing numbers > 0 "
                         f"(steps = {raw['steps']}), got {sigmas!r}")
    cost = raw.get("fit_cost", {})
    return FittedGrid(tuple(float(v) for v in sigmas), raw["model"], raw.get("weights_sha256"), raw["solver"],
                      raw["steps"], tuple(raw["seeds"]), int(cost.get("network_evaluations", 0)),
                      float(cost.get("seconds", math.nan)), str(path), hashlib.sha256(data).hexdigest())


def location(spacing: str) -> Path:
    """The file or folder ``fitted:PATH`` names: PATH itself, else the grid NAME in DEFAULT_DIR."""
    path = Path(spacing[len(PREFIX):])
    named = DEFAULT_DIR / (path.name if path.suffix == ".toml" else f"{path.name}.toml")
    return named if not path.exists() and len(path.parts) == 1 and named.is_file() else path


def grids(spacing: str) -> list[FittedGrid]:
    """Every grid that ``fitted:PATH`` names (a file: one; a folder: its fitted-grid files), or a ValueError."""
    path = location(spacing)
    if path.is_file():
        return [read(path)]
    if path.is_dir():
        found = []
        for candidate in sorted(path.glob("*.toml")):
            try:
                found.append(read(candidate))
            except ValueError:
                continue  # another kind of TOML file in the folder
        if not found:
            raise ValueError(f"spacing {spacing!r}: the folder holds no fitted-grid files (python -m bench "
                             f"fit-schedule writes them)")
        return found
    raise ValueError(f"spacing {spacing!r}: no such file or folder (nor a grid of that name in {DEFAULT_DIR})")


def for_cell(spacing: str, model: str, solver: str, steps: int | None) -> tuple[FittedGrid | None, int | None, str | None]:
    """(grid, step count, skip reason) of one grid cell: a file's grid whatever the cell (its own steps); a folder's
    grid fitted for this model, solver and step count, or None with the reason there is none."""
    found = grids(spacing)
    if location(spacing).is_file():
        return found[0], found[0].steps, None
    for grid in found:
        if (grid.model, grid.solver, grid.steps) == (model, solver, steps):
            return grid, steps, None
    return None, steps, (f"no grid in {spacing[len(PREFIX):]} fitted for {model} with {solver} at {steps} steps "
                         f"(python -m bench fit-schedule writes one)")


def file_name(model: str, solver: str, steps: int) -> str:
    """The file fit-schedule writes a grid to: the model's and the solver's names made safe for a file name (a
    diffusers: folder, a python: function or solver), steps."""
    def safe(name):
        return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("_")

    return f"{safe(model)}-{safe(solver)}-{steps}steps.toml"
