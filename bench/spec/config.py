"""Grid specs: a TOML file validated in full, then expanded into frozen RunConfigs.

A spec (see bench/configs/*.toml) lists models, solvers, step counts, spacings, etas, tolerances
(adaptive solvers), seeds, sample counts, device and metrics. ``load_spec`` reads and validates it
before any compute and raises SpecError with one line per problem, each naming the file, the key,
the value and what is allowed. ``expand`` turns it into RunConfigs: fixed-step solvers over
steps x spacings x etas, adaptive ones over tolerances x etas; a combination a solver cannot run
(eta outside what it accepts) becomes a config with ``skip_reason`` set, recorded, not dropped.
"""
from __future__ import annotations

import dataclasses
import difflib
import hashlib
import itertools
import json
import re
import sys
from pathlib import Path

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

from bench.metrics import fewest_samples, named_in_spec, needing
from bench.metrics.fid import FOLDER_PREFIX, folder_files
import bench.spec.fitted as fitted_grids
from bench.models import (ANALYTIC_PRESETS, MODELS, TextConditioning, conditioning_label, is_model_name,
                          model_conditioning, model_problem, prompts_label, sample_kind)
from bench.models.networks import trained_on
from solvers import SOLVERS, get_solver
from solvers.registry import PLUGIN_PREFIX, solver_problem
from solvers.schedules import SCHEDULES
from solvers.spacing import AYS_LEVELS, DISCRETE as DISCRETE_SPACINGS, EXPLICIT as EXPLICIT_GRIDS, SPACINGS, explicit_grid, explicit_name, timesteps

DEVICES = ("cpu", "cuda", "auto")
# How the network runs, a grid axis: its names are the spec's, bench.run.execution implements each one.
EXEC_MODES = ("eager", "bf16", "compile", "cuda_graph")
METRICS = named_in_spec()
TIMING_REPEATS = 3  # the default of timing_repeats: the measurement behind it is in results/example-default/README.md
DTYPES = ("float32", "float64")
FID_REFERENCES = ("exact", "fashion_mnist_test", "fashion_mnist")
IMAGE_RESIZES = ("pad", "bilinear")
# What a solve returns: the state at the grid's last time, or then the x0 prediction there (one more evaluation)
FINAL_STEPS = ("none", "x0")


class SpecError(ValueError):
    """A grid spec that cannot run; the message has one line per problem."""


@dataclasses.dataclass(frozen=True)
class RunConfig:
    """One configuration of a sweep. ``config_id`` hashes everything that defines its result."""

    model: str
    schedule: str
    solver: str
    options: tuple  # sorted (name, value) pairs of solver options
    steps: int | None
    spacing: str | None
    eta: float
    tolerance: float | None
    seed: int
    n_samples: int
    batch_size: int
    device: str
    dtype: str
    metrics: tuple
    spec_name: str
    spec_hash: str
    reference_size: int
    fid_reference: str
    image_resize: str
    fid_weights: str | None
    data_dir: str | None
    time_limit_s: float
    reference_tolerance: float
    exec_mode: str = "eager"
    skip_reason: str | None = None
    reference_time_limit_s: float = 3600.0
    timing_repeats: int = 1
    guidance_scale: float | None = None  # conditional models: the classifier-free guidance scale (1: none)
    conditions: str | None = None  # conditional models: where the conditions come from (conditioning_label)
    guidance_interval: tuple | None = None  # (lo, hi] in sigma~ where guidance applies; None: everywhere
    fitted: fitted_grids.FittedGrid | None = None  # spacing fitted:PATH: the grid the file gave (its values, its origin)
    prompts: tuple | None = None  # text-conditional models: the prompts, cycled over the samples (conditions: their digest)
    clip_model: str | None = None  # metric clip_score: a local CLIP folder (its weights' digest is in the row)
    final_step: str = "none"  # "x0": after the grid's last step, the x0 prediction there is the sample (FINAL_STEPS)

    @property
    def config_id(self) -> str:
        """A hash of what defines the result. The batch size is part of it: each batch draws its own
        Brownian path, and adaptive step control and pc's step size use norms over the batch."""
        key = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
               if f.name not in ("spec_name", "spec_hash", "skip_reason", "metrics", "fid_weights", "data_dir",
                                 "reference_size", "time_limit_s", "reference_tolerance", "reference_time_limit_s",
                                 "timing_repeats", "prompts", "clip_model")}
        if "fid" in self.metrics:  # the reference set changes FID; it is part of the key only where used
            key["reference_size"], key["fid_reference"] = self.reference_size, self.fid_reference
        if self.image_resize != "pad":  # keeps the ids of specs that never set it
            key["image_resize"] = self.image_resize
        if self.exec_mode == "eager":  # keeps the ids of specs from before the exec_modes axis
            del key["exec_mode"]
        if self.final_step == "none":  # keeps the ids of specs from before final_step
            del key["final_step"]
        for name in ("guidance_scale", "conditions", "guidance_interval", "fitted"):  # older configs keep their ids
            if key[name] is None:
                del key[name]
        if self.fitted is not None:  # the grid's values define the result, not the file's name, folder or notes
            key["fitted"], key["spacing"] = list(self.fitted.sigmas), "fitted"
        if self.reference_tolerance != DEFAULTS["reference_tolerance"] and set(self.metrics) & REFERENCE_METRICS:
            key["reference_tolerance"] = self.reference_tolerance
        return hashlib.sha1(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:16]

    @property
    def label(self) -> str:
        grid = f"{self.steps} steps {self.spacing}" if self.tolerance is None else f"tol {self.tolerance:g}"
        mode = "" if self.exec_mode == "eager" else f" {self.exec_mode}"
        guidance = "" if self.guidance_scale is None else f" cfg={self.guidance_scale:g}"
        return f"{self.model} {self.solver} {grid} eta={self.eta:g}{guidance} seed={self.seed}{mode}"


# key: (type check, description of what is allowed)
_LIST_KEYS = {
    "models": (str, "model names (" + ", ".join(MODELS) + "), diffusers:PATH or python:module:function"),
    "solvers": (str, "solver names (python -m solvers lists them), or python:module:attribute, a solvers.Solver of "
                     "your own"),
    "steps": (int, "integers >= 1"),
    "spacings": ((str, dict), "spacings (" + ", ".join(SPACINGS) + "), explicit grids {times = [...]} / "
                              "{sigmas = [...]}, or fitted:PATH (a grid file or a folder of them written by "
                              "python -m bench fit-schedule)"),
    "etas": ((int, float), "numbers >= 0"),
    "tolerances": ((int, float), "numbers > 0"),
    "seeds": (int, "integers >= 0"),
    "metrics": (str, "metrics: " + ", ".join(METRICS) + " (each fills the rows of the models it measures: images, "
                "an analytic mixture's exact samples, ...; one that measures none of the spec's models is refused)"),
    "exec_modes": (str, "how the network runs: " + ", ".join(EXEC_MODES)),
    "guidance_scales": ((int, float), "classifier-free guidance scales >= 0 (1: the conditional model, no guidance; "
                                      "0: the unconditional one), for class-conditional models"),
    "guidance_interval": ((int, float), "[lo, hi] with 0 <= lo < hi: guide only where lo < sigma/alpha <= hi "
                                        "(Kynkaanniemi et al. 2024), the conditional model elsewhere"),
    "prompts": (str, "text prompts, for text-conditional models"),
}
_SCALAR_KEYS = {
    "name": (str, "a string"),
    "schedule": (str, "schedules: " + ", ".join(SCHEDULES)),
    "n_samples": (int, "an integer >= 1, and at least the metrics' fewest samples (docs/metrics.md)"),
    "batch_size": (int, "an integer >= 1"),
    "device": (str, "one of " + ", ".join(DEVICES) + " or cuda:N"),
    "dtype": (str, "one of " + ", ".join(DTYPES)),
    "options": (dict, "a table of per-solver option tables, e.g. [options.lms] order = 3"),
    "steps_by_solver": (dict, "a table of per-solver step lists replacing 'steps', e.g. [steps_by_solver] heun = [3, 5]"),
    "etas_by_solver": (dict, "a table of per-solver eta lists replacing 'etas', e.g. [etas_by_solver] "
                             "euler_ancestral = [1.0]"),
    "reference_size": (int, "an integer >= 2 (images in the FID reference set), and at least the metrics' fewest "
                       "samples"),
    "fid_reference": (str, "'folder:PATH' (every image of your folder, resized to the samples' size; features cached "
                           "by the files' hash), 'exact' (an image mixture's exact samples), 'fashion_mnist_test' (the standard: the test "
                           "split at 28px, shipped statistics) or 'fashion_mnist' (a subset of the training images)"),
    "fid_weights": (str, "a path to converted FID Inception weights (see make fid-weights)"),
    "data_dir": (str, "a folder with the dataset's IDX files"),
    "image_resize": (str, "'pad' (28x28 Fashion-MNIST padded to 32x32) or 'bilinear'"),
    "time_limit_s": ((int, float), "seconds >= 0 a config may take before it is stopped (0: no limit, run in-process)"),
    "reference_tolerance": (float, "a number in (0, 1): rtol = atol of the dopri5 reference solve behind err_reference"),
    "reference_time_limit_s": ((int, float), "seconds >= 0 a reference solve may take before it is stopped (0: no "
                                             "limit, solved in the sweep's process)"),
    "timing_repeats": (int, "an integer >= 1: how often a solve shorter than a second is timed (wall_s: the median)"),
    "tf32_matmul": (bool, "true or false: TF32 for float32 matmuls on CUDA (torch's default: false)"),
    "tf32_cudnn": (bool, "true or false: TF32 for cuDNN convolutions (torch's default: true)"),
    "cudnn_benchmark": (bool, "true or false: cuDNN's autotuner (torch's default: false)"),
    "deterministic": (bool, "true or false: torch.use_deterministic_algorithms and deterministic cuDNN"),
    "threads": (int, "an integer >= 1: torch threads in every process of the sweep (--threads overrides it)"),
    "class_labels": ((str, list), "'random' (one label per sample, uniform, from the seed) or a list of class labels "
                                  "cycled over the samples"),
    "prompts_file": (str, "a text file with one prompt per line, for text-conditional models"),
    "clip_model": (str, "a local folder with a transformers CLIPModel and its CLIPProcessor, for the clip_score metric"),
    "final_step": (str, "'none' (the sample is the state at the grid's last time) or 'x0' (then one more network "
                        "evaluation there, and the sample is its x0 prediction: the last step to sigma 0 of "
                        "k-diffusion's and ComfyUI's schedules and of diffusers' FlowMatchEulerDiscreteScheduler)"),
}
_REQUIRED = ("models", "solvers", "n_samples")
# Every optional key's default, in one place (batch_size None means n_samples).
DEFAULTS = {"schedule": "VPLinear", "steps": [], "spacings": ["logsnr"], "etas": [0.0], "tolerances": [],
            "seeds": [0], "batch_size": None, "device": "cpu", "dtype": "float32", "options": {}, "steps_by_solver": {}, "etas_by_solver": {},
            "exec_modes": ["eager"],
            "metrics": ["err_reference", "err_stepdoubling", "sample_log_density", "frechet", "precision_recall",
                        "sliced_wasserstein"],
            "reference_size": 500, "fid_reference": "exact", "image_resize": "pad", "fid_weights": None,
            "data_dir": None, "time_limit_s": 900, "reference_tolerance": 1e-8, "reference_time_limit_s": 3600,
            "timing_repeats": TIMING_REPEATS, "tf32_matmul": None, "tf32_cudnn": None, "cudnn_benchmark": None,
            "deterministic": None, "threads": None, "guidance_scales": None, "guidance_interval": None,
            "class_labels": "random", "prompts": None, "prompts_file": None, "clip_model": None,
            "final_step": "none"}
REFERENCE_METRICS = needing("reference")  # the metrics measured against the reference solve
RENAMED_METRICS = {"loglik": "sample_log_density"}


def _suggest(value, allowed) -> str:
    close = difflib.get_close_matches(str(value), list(allowed), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _metrics_filling(column: str) -> list[str]:
    """The metrics a spec may name whose rows fill ``column`` (``kid``: fid; ``precision``: precision_recall, fid)."""
    return [metric.name for metric in METRICS.values() if metric.in_spec and column in metric.columns]


def _is_type(value, types) -> bool:
    return isinstance(value, types) and (types is bool or not isinstance(value, bool))


def _explicit_grid_errors(grid: dict, raw: dict, where: str) -> list[str]:
    """An explicit grid {times = [...]} or {sigmas = [...]}: its form, and for analytic models (whose schedule the
    spec names) the range of the spec's schedule. Networks' schedules are known once loaded."""
    if len(grid) != 1 or next(iter(grid)) not in EXPLICIT_GRIDS:
        return [f"{where}: key 'spacings': an explicit grid is {{times = [...]}} or {{sigmas = [...]}}, got {grid!r}"]
    unit, values = next(iter(grid.items()))
    if not isinstance(values, list) or not all(_is_type(v, (int, float)) for v in values):
        return [f"{where}: key 'spacings': {unit} must be a list of numbers, got {values!r}"]
    name = explicit_name(values, unit)
    if any(m in ANALYTIC_PRESETS for m in raw.get("models", [])) and raw.get("schedule", DEFAULTS["schedule"]) in SCHEDULES:
        try:
            explicit_grid(name, SCHEDULES[raw.get("schedule", DEFAULTS["schedule"])]())
        except ValueError as err:
            return [f"{where}: key 'spacings': {err}"]
    return []


def _validate(raw: dict, where: str) -> list[str]:
    errors = []
    for key in raw:
        if key not in _LIST_KEYS and key not in _SCALAR_KEYS:
            allowed = ", ".join([*_SCALAR_KEYS, *_LIST_KEYS])
            errors.append(f"{where}: unknown key {key!r}{_suggest(key, [*_SCALAR_KEYS, *_LIST_KEYS])}; allowed keys: {allowed}")
    for key in _REQUIRED:
        if key not in raw:
            errors.append(f"{where}: missing required key {key!r}")
    for key, (types, allowed) in _SCALAR_KEYS.items():
        if key in raw and not _is_type(raw[key], types):
            errors.append(f"{where}: key {key!r} must be {allowed}, got {raw[key]!r}")
    for key, (types, allowed) in _LIST_KEYS.items():
        if key not in raw:
            continue
        value = raw[key]
        if not isinstance(value, list):
            errors.append(f"{where}: key {key!r} must be a list of {allowed}, got {value!r}")
        elif bad := [v for v in value if not _is_type(v, types)]:
            errors.append(f"{where}: key {key!r} must hold {allowed}, got {bad[0]!r}")
        elif len(set(map(str, value))) != len(value):
            errors.append(f"{where}: key {key!r} lists a value twice: {value!r}")
    if errors:  # the checks below assume the types are right
        return errors
    for grid in (g for g in raw.get("spacings", []) if isinstance(g, dict)):
        errors += _explicit_grid_errors(grid, raw, where)
    for spacing in (g for g in raw.get("spacings", []) if fitted_grids.is_fitted(g)):
        try:
            fitted_grids.grids(spacing)
        except (OSError, ValueError) as err:
            errors.append(f"{where}: key 'spacings': {err}")
    plugin_problems = _plugin_problems(raw)
    for key, allowed in (("models", MODELS), ("solvers", SOLVERS), ("spacings", SPACINGS), ("metrics", METRICS),
                         ("exec_modes", EXEC_MODES)):
        for name in (n for n in raw.get(key, []) if not isinstance(n, dict) and not fitted_grids.is_fitted(n)):
            if key == "models" and is_model_name(name):
                if problem := model_problem(name):
                    errors.append(f"{where}: key 'models': {name!r}: {problem}")
                continue
            if key == "solvers" and name in plugin_problems:
                if problem := plugin_problems[name]:
                    errors.append(f"{where}: key 'solvers': {problem}")
                continue
            if key == "metrics" and name in RENAMED_METRICS:
                errors.append(f"{where}: key 'metrics': {name!r} was renamed {RENAMED_METRICS[name]!r} (the mean "
                              f"exact log p_0 of the samples, not a likelihood of data)")
                continue
            if key == "metrics" and name not in allowed and (fillers := _metrics_filling(name)):
                errors.append(f"{where}: key 'metrics': {name!r} is a row column, not a metric; it is filled by "
                              + " or ".join(repr(m) for m in fillers) + f": name {'one' if fillers[1:] else 'it'} "
                              "in 'metrics'")
                continue
            if name not in allowed:
                errors.append(f"{where}: key {key!r}: unknown {key[:-1]} {name!r}{_suggest(name, allowed)}; "
                              f"allowed: {', '.join(allowed)}")
    checks = [("steps", lambda v: v >= 1, "integers >= 1"), ("etas", lambda v: v >= 0, "numbers >= 0"),
              ("tolerances", lambda v: v > 0, "numbers > 0"), ("seeds", lambda v: v >= 0, "integers >= 0")]
    for key, ok, allowed in checks:
        if bad := [v for v in raw.get(key, []) if not ok(v)]:
            errors.append(f"{where}: key {key!r} must hold {allowed}, got {bad[0]!r}")
    for key in ("n_samples", "batch_size"):
        if key in raw and raw[key] < 1:
            errors.append(f"{where}: key {key!r} must be an integer >= 1, got {raw[key]!r}")
    for key in ("time_limit_s", "reference_time_limit_s"):
        if key in raw and not raw[key] >= 0:
            errors.append(f"{where}: key {key!r} must be a number of seconds >= 0, got {raw[key]!r}")
    for key in ("timing_repeats", "threads"):
        if key in raw and raw[key] < 1:
            errors.append(f"{where}: key {key!r} must be an integer >= 1, got {raw[key]!r}")
    if "reference_tolerance" in raw and not 0 < raw["reference_tolerance"] < 1:
        errors.append(f"{where}: key 'reference_tolerance' must be a number in (0, 1), got {raw['reference_tolerance']!r}")
    if "reference_size" in raw and raw["reference_size"] < 2:
        errors.append(f"{where}: key 'reference_size' must be an integer >= 2, got {raw['reference_size']!r}")
    errors += _sample_count_errors(raw, where)
    for key, allowed in (("schedule", SCHEDULES), ("device", DEVICES), ("dtype", DTYPES),
                         ("fid_reference", FID_REFERENCES), ("image_resize", IMAGE_RESIZES),
                         ("final_step", FINAL_STEPS)):
        if key == "device" and re.fullmatch(r"cuda:\d+", str(raw.get(key, ""))):
            continue
        if key == "fid_reference" and str(raw.get(key, "")).startswith(FOLDER_PREFIX):
            errors += _folder_reference_errors(raw[key], where)
            continue
        if key in raw and raw[key] not in allowed:
            errors.append(f"{where}: key {key!r}: unknown value {raw[key]!r}{_suggest(raw[key], allowed)}; "
                          f"allowed: {', '.join(allowed)}")
    for key in ("models", "solvers"):
        if key in raw and not raw[key]:
            errors.append(f"{where}: key {key!r} must not be empty")
    listed = raw.get("solvers", [])
    solvers = [s for s in listed if s in SOLVERS or (s in plugin_problems and not plugin_problems[s])]
    if any(not get_solver(s).adaptive for s in solvers) and "steps" in raw and not raw["steps"]:
        errors.append(f"{where}: key 'steps' must not be empty when fixed-step solvers are listed")
    if any(not get_solver(s).adaptive for s in solvers) and "steps" not in raw:
        errors.append(f"{where}: missing key 'steps' (needed by the fixed-step solvers listed)")
    if any(get_solver(s).adaptive for s in solvers) and not raw.get("tolerances"):
        errors.append(f"{where}: missing key 'tolerances' (needed by the adaptive solvers listed)")
    networks = [m for m in raw.get("models", []) if m not in ANALYTIC_PRESETS]
    discrete = [sp for sp in raw.get("spacings", []) if isinstance(sp, str) and sp in DISCRETE_SPACINGS]
    analytic = [m for m in raw.get("models", []) if m in ANALYTIC_PRESETS]
    schedule_name = raw.get("schedule", DEFAULTS["schedule"])
    if discrete and analytic and schedule_name != "DiscreteVP":
        errors.append(f"{where}: key 'spacings': {discrete[0]!r} steps on a model's discrete training timesteps; "
                      f"{analytic[0]!r} runs on the schedule {schedule_name!r} (set "
                      f"schedule = \"DiscreteVP\", or use a continuous spacing)")
    if "cuda_graph" in raw.get("exec_modes", []) and raw.get("device", DEFAULTS["device"]) == "cpu":
        errors.append(f"{where}: key 'exec_modes': 'cuda_graph' captures the solve in a CUDA graph and needs a CUDA "
                      f"device, but device is 'cpu' (set device = \"cuda\" or drop the mode)")
    # what must fit the spec's schedule is checked on it for the analytic models (networks bring their own)
    schedule = SCHEDULES[schedule_name]() if analytic and schedule_name in SCHEDULES else None
    for spacing in [sp for sp in raw.get("spacings", []) if isinstance(sp, str) and sp in AYS_LEVELS and schedule]:
        try:
            timesteps(spacing, 1, schedule)
        except ValueError as err:
            errors.append(f"{where}: key 'spacings': {err} (the analytic models run on it)")
    for solver in solvers:
        options = raw.get("options", {}).get(solver, {})
        if not isinstance(options, dict) or set(options) - set(get_solver(solver).options):
            continue  # reported below
        try:
            get_solver(solver).validate_options(options)
        except (ValueError, TypeError) as err:
            errors.append(f"{where}: key 'options.{solver}': {err}")
            continue
        try:  # what must fit the time range, where the spec's schedule is the models'
            if schedule is not None:
                get_solver(solver).validate_options(options, schedule)
        except (ValueError, TypeError) as err:
            errors.append(f"{where}: key 'options.{solver}': {err} (the analytic models run on {schedule_name})")
    if "fid" in raw.get("metrics", []) and networks and raw.get("fid_reference", "exact") == "exact":
        errors.append(f"{where}: key 'fid_reference': 'exact' needs an image mixture, but {networks[0]!r} is a "
                      f"network; set fid_reference = \"fashion_mnist_test\" (Fashion-MNIST models) or \"folder:PATH\" (your images)")
    if ("fid" in raw.get("metrics", []) and raw.get("fid_reference") == "fashion_mnist_test"
            and raw.get("image_resize") == "bilinear" and "fashion_gmm" in raw.get("models", [])):
        errors.append(f"{where}: key 'fid_reference': 'fashion_mnist_test' compares at 28px by cropping the padding "
                      f"of 32px images, but image_resize = 'bilinear' stretches them; use image_resize = 'pad'")
    errors += _conditioning_errors(raw, where, solvers)
    errors += _metric_model_errors(raw, where)
    if "clip_score" in raw.get("metrics", []) and "clip_model" not in raw:
        errors.append(f"{where}: key 'clip_model': metric 'clip_score' needs a local CLIP folder (a transformers "
                      f"CLIPModel and its CLIPProcessor); nothing is downloaded")
    if "clip_model" in raw and not (Path(raw["clip_model"]) / "config.json").is_file():
        errors.append(f"{where}: key 'clip_model': {raw['clip_model']!r} is not a CLIP folder (no config.json)")
    for solver, steps in raw.get("steps_by_solver", {}).items():
        if solver not in listed:
            errors.append(f"{where}: key 'steps_by_solver.{solver}': {solver!r} is not in 'solvers' ({', '.join(listed)})")
        elif solver not in solvers:
            continue  # reported above
        elif get_solver(solver).adaptive:
            errors.append(f"{where}: key 'steps_by_solver.{solver}': {solver!r} is adaptive and takes tolerances")
        elif (not isinstance(steps, list) or not steps or not all(_is_type(n, int) and n >= 1 for n in steps)
              or len(set(steps)) != len(steps)):
            errors.append(f"{where}: key 'steps_by_solver.{solver}' must be a non-empty list of distinct integers "
                          f">= 1, got {steps!r}")
    for solver, etas in raw.get("etas_by_solver", {}).items():
        if solver not in listed:
            errors.append(f"{where}: key 'etas_by_solver.{solver}': {solver!r} is not in 'solvers' ({', '.join(listed)})")
        elif (not isinstance(etas, list) or not etas or not all(_is_type(e, (int, float)) and e >= 0 for e in etas)
              or len(set(etas)) != len(etas)):
            errors.append(f"{where}: key 'etas_by_solver.{solver}' must be a non-empty list of distinct numbers >= 0, "
                          f"got {etas!r}")
    for solver, options in raw.get("options", {}).items():
        if solver not in listed:
            errors.append(f"{where}: key 'options.{solver}': {solver!r} is not in 'solvers' ({', '.join(listed)})")
        elif solver not in solvers:
            continue  # reported above
        elif not isinstance(options, dict):
            errors.append(f"{where}: key 'options.{solver}' must be a table of option = value, got {options!r}")
        else:
            known = get_solver(solver).options
            for option in [o for o in options if o not in known]:
                errors.append(f"{where}: key 'options.{solver}.{option}': unknown option{_suggest(option, known)}; "
                              f"allowed: {', '.join(known) or 'none'}")
    return errors


def _plugin_problems(raw: dict) -> dict:
    """The spec's python: solvers -> why each names no Solver (None where it does): each module imported once, so a
    module that fails to import runs once, and its failure is reported once; such a solver is checked no further."""
    return {name: solver_problem(name) for name in raw.get("solvers", []) if name.startswith(PLUGIN_PREFIX)}


def _sample_count_errors(raw: dict, where: str) -> list[str]:
    """n_samples (and reference_size, the images of a drawn FID reference set) below what the spec's metrics need
    for their figures and standard errors: every row would fail or lack an SE after its solves."""
    metrics = [name for name in raw.get("metrics", DEFAULTS["metrics"]) if name in METRICS]
    drawn_reference = raw.get("fid_reference", DEFAULTS["fid_reference"]) in ("exact", "fashion_mnist")
    compared_with_images = [name for name in metrics if name in needing("dataset")] if drawn_reference else []
    errors = []
    for key, names, least in (("n_samples", metrics, 1), ("reference_size", compared_with_images, 2)):
        fewest, metric = fewest_samples(names)
        if metric and key in raw and least <= raw[key] < fewest:  # below least: _validate's own bound says so
            errors.append(f"{where}: key {key!r}: {raw[key]} is too few for metric {metric!r}, whose figures and "
                          f"standard errors need at least {fewest}; allowed: integers >= {fewest}")
    return errors


def _folder_reference_errors(reference: str, where: str) -> list[str]:
    folder = Path(reference[len(FOLDER_PREFIX):])
    if not folder.is_dir():
        return [f"{where}: key 'fid_reference': {reference!r}: no such folder"]
    if len(folder_files(folder)) < 2:
        return [f"{where}: key 'fid_reference': {reference!r} holds fewer than 2 images (.png, .jpg, .jpeg, .webp, "
                f".bmp)"]
    return []


def _read_prompts(path) -> list[str]:
    """The prompts of a prompts file: one per line, blank lines skipped."""
    return [line.strip() for line in Path(path).read_text().splitlines() if line.strip()]


def _conditioning_errors(raw: dict, where: str, solvers: list[str]) -> list[str]:
    """Conditions and guidance against what each model takes, read from its configs (no weights loaded);
    ``solvers``: the spec's solvers that name a registry entry."""
    errors = []
    scales, interval = raw.get("guidance_scales"), raw.get("guidance_interval")
    labels = raw.get("class_labels")
    if scales is not None:
        if not scales:
            errors.append(f"{where}: key 'guidance_scales' must not be empty")
        elif bad := [v for v in scales if not v >= 0]:
            errors.append(f"{where}: key 'guidance_scales' must hold numbers >= 0, got {bad[0]!r}")
    if interval is not None and (len(interval) != 2 or not 0 <= interval[0] < interval[1]):
        errors.append(f"{where}: key 'guidance_interval' must be [lo, hi] with 0 <= lo < hi (sigma/alpha), got {interval!r}")
    if isinstance(labels, str) and labels != "random":
        errors.append(f"{where}: key 'class_labels' must be 'random' or a list of class labels, got {labels!r}")
    if isinstance(labels, list) and (not labels or not all(_is_type(v, int) for v in labels)):
        errors.append(f"{where}: key 'class_labels' must be a non-empty list of integer class labels, got {labels!r}")
    prompts = "prompts" if "prompts" in raw else "prompts_file" if "prompts_file" in raw else None
    if "prompts" in raw and "prompts_file" in raw:
        errors.append(f"{where}: keys 'prompts' and 'prompts_file': give one of them")
    if "prompts" in raw and (not raw["prompts"] or not all(p.strip() for p in raw["prompts"])):
        errors.append(f"{where}: key 'prompts' must be a non-empty list of non-empty prompts, got {raw['prompts']!r}")
    if "prompts_file" in raw:
        try:
            if not _read_prompts(raw["prompts_file"]):
                errors.append(f"{where}: key 'prompts_file': {raw['prompts_file']!r} holds no prompts (one per line)")
        except OSError as err:
            errors.append(f"{where}: key 'prompts_file': cannot read {raw['prompts_file']!r}: {err.strerror}")
    cfg_pp = [s for s in solvers if get_solver(s).needs_guidance]
    for model in [m for m in raw.get("models", []) if is_model_name(m)]:
        folder = model.partition(":")[2] if model.startswith("diffusers:") else None
        if "nll" in raw.get("metrics", []) and folder and Path(folder).is_dir() and trained_on(folder) is None:
            errors.append(f"{where}: key 'metrics': 'nll' of a network is of Fashion-MNIST test images, and {model!r} "
                          f"does not say it models Fashion-MNIST (a folder written by python -m bench train does, in "
                          f"its training.json)")
        try:
            conditioning = model_conditioning(model)
        except (OSError, ValueError) as err:
            errors.append(f"{where}: key 'models': {model!r}: {err}")
            continue
        if conditioning == "unknown":  # a python: function's model says what it takes once built
            continue
        if conditioning is None:
            for key in ("guidance_scales", "guidance_interval", "class_labels"):
                if key in raw:
                    errors.append(f"{where}: key {key!r}: model {model!r} is unconditional (no conditions to guide "
                                  f"towards); drop the key or use a conditional model (gmm_classes, fmnist_cond_unet)")
            if prompts:
                errors.append(f"{where}: key {prompts!r}: model {model!r} is unconditional and takes no prompts")
            if cfg_pp:
                errors.append(f"{where}: key 'solvers': {cfg_pp[0]!r} is a CFG++ sampler and needs a classifier-free "
                              f"guided model, but {model!r} is unconditional")
            continue
        if isinstance(conditioning, TextConditioning):
            if not prompts:
                errors.append(f"{where}: key 'prompts': model {model!r} is text-conditional; give prompts (or "
                              f"prompts_file)")
            if "class_labels" in raw:
                errors.append(f"{where}: key 'class_labels': model {model!r} is text-conditional; give prompts, not "
                              f"class_labels")
            if "nll" in raw.get("metrics", []):
                errors.append(f"{where}: key 'metrics': 'nll' integrates held-out points through an unconditional "
                              f"model's ODE; {model!r} is text-conditional")
            continue
        if prompts:
            errors.append(f"{where}: key {prompts!r}: model {model!r} is class-conditional ({conditioning.n_classes} "
                          f"classes); give class_labels, not prompts")
        if "nll" in raw.get("metrics", []):
            errors.append(f"{where}: key 'metrics': 'nll' integrates held-out points through an unconditional model's "
                          f"ODE; {model!r} is class-conditional (a guided model has no likelihood of its own)")
        if isinstance(labels, list) and (bad := [v for v in labels if _is_type(v, int) and not 0 <= v < conditioning.n_classes]):
            errors.append(f"{where}: key 'class_labels': label {bad[0]} is outside model {model!r}'s classes "
                          f"0..{conditioning.n_classes - 1}")
        if not conditioning.guidable:
            if scales and any(v != 1 for v in scales):
                errors.append(f"{where}: key 'guidance_scales': model {model!r} has no null class (no unconditional "
                              f"prediction), so only scale 1 applies")
            if cfg_pp:
                errors.append(f"{where}: key 'solvers': {cfg_pp[0]!r} needs the unconditional prediction, which "
                              f"model {model!r} lacks (no null class)")
    return errors


def _metric_model_errors(raw: dict, where: str) -> list[str]:
    """The metrics a spec names that apply to none of its models, read from the models' configs (no weights
    loaded): every row would lack them. A metric that applies to some of the models is left to their rows; the
    default metrics apply wherever they can; a python: function's model may be anything."""
    models = [m for m in raw.get("models", []) if is_model_name(m)]
    try:
        kinds = {model: sample_kind(model) for model in models}
    except (OSError, ValueError, KeyError, TypeError):  # a folder's broken config: the model checks say what
        return []
    if "metrics" not in raw or not kinds or None in kinds.values():
        return []
    sides = {model: kind.image_side for model, kind in kinds.items() if kind.image_side}
    errors = []
    for metric in [METRICS[name] for name in raw["metrics"] if name in METRICS]:
        if "exact" in metric.needs and not any(kind.exact for kind in kinds.values()):
            instead = [other.name for other in METRICS.values() if "exact" not in other.needs
                       and set(other.columns) & set(metric.columns)] if sides else []
            errors.append(f"{where}: key 'metrics': {metric.name!r} compares with exact samples of an analytic "
                          f"mixture, and none of the models is one ({', '.join(kinds)})"
                          + (f"; on images {instead[0]!r} fills its columns" if instead else ""))
        elif "images" in metric.needs and not sides:
            errors.append(f"{where}: key 'metrics': {metric.name!r} measures images, and none of the models makes "
                          f"images ({', '.join(kinds)})")
        elif sides and max(sides.values()) < metric.min_image_side:
            made = ", ".join(f"{model}: {side} px" for model, side in sides.items())
            errors.append(f"{where}: key 'metrics': {metric.name!r} needs images of {metric.min_image_side} px a side "
                          f"and up, and the models make smaller ones ({made})")
    return errors


@dataclasses.dataclass(frozen=True)
class Spec:
    name: str
    path: str
    hash: str
    values: dict


# The keys that bound how long a config or a reference solve may run, and define none of the results: a run folder may
# be resumed with them changed (say, to give the configs that timed out longer), its run.json recording the change.
LIMIT_KEYS = ("time_limit_s", "reference_time_limit_s")


def spec_changes(before: str, after: str) -> dict:
    """key -> (before, after) for every key whose value differs between two spec texts, a key left out counting as
    its default: what a resume with another spec would change (layout and comments change nothing)."""
    old, new = ({**DEFAULTS, **tomllib.loads(text)} for text in (before, after))
    return {key: (old.get(key), new.get(key)) for key in sorted(set(old) | set(new)) if old.get(key) != new.get(key)}


def load_spec(path) -> Spec:
    """Read and validate a grid spec; raises SpecError listing every problem."""
    path = Path(path)
    if not path.is_file():
        raise SpecError(f"{path}: no such spec file")
    text = path.read_text()
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise SpecError(f"{path}: not valid TOML: {err}") from None
    return parse_spec(raw, str(path), text)


def parse_spec(raw: dict, where: str = "<spec>", text: str | None = None) -> Spec:
    errors = _validate(raw, where)
    if errors:
        raise SpecError("\n".join(errors))
    values = {**DEFAULTS, **raw}
    if values["prompts_file"] is not None:
        values["prompts"] = _read_prompts(values["prompts_file"])
    if values["batch_size"] is None:
        values["batch_size"] = values["n_samples"]
    canonical = text if text is not None else json.dumps(raw, sort_keys=True)
    return Spec(values.get("name", Path(where).stem), where, hashlib.sha1(canonical.encode()).hexdigest()[:12], values)


def expand(spec: Spec, device: str | None = None) -> list[RunConfig]:
    """The cartesian product of the spec, one RunConfig each, in a deterministic order."""
    v = spec.values
    configs = []
    for model in v["models"]:
        conditioning = model_conditioning(model)
        conditional = conditioning not in (None, "unknown")
        text = isinstance(conditioning, TextConditioning)
        guidance = [float(g) for g in (v["guidance_scales"] or [1.0])] if conditional else [None]
        conditions = (prompts_label(v["prompts"]) if text else conditioning_label(v["class_labels"])) if conditional else None
        prompts = tuple(v["prompts"]) if text else None
        interval = tuple(float(b) for b in v["guidance_interval"]) if conditional and v["guidance_interval"] else None
        for solver_name in v["solvers"]:
            solver = get_solver(solver_name)
            options = tuple(sorted(v["options"].get(solver_name, {}).items()))
            if solver.adaptive:
                grid = [(None, None, tol, None, None) for tol in v["tolerances"]]
            else:  # larger step counts first, so a step-doubling partner (2n) is run before n
                steps = v["steps_by_solver"].get(solver_name, v["steps"])
                named = [sp for sp in v["spacings"] if isinstance(sp, str)]
                grid = [(n, sp, None, None, None) for sp in named if not fitted_grids.is_fitted(sp)
                        for n in sorted(steps, reverse=True)]
                grid += [(len(values) - 1, explicit_name(values, unit), None, None, None)  # sets its own steps
                         for sp in v["spacings"] if isinstance(sp, dict) for unit, values in sp.items()]
                grid += _fitted_cells([sp for sp in named if fitted_grids.is_fitted(sp)], model, solver_name, steps)
            for seed in v["seeds"]:
                for steps, spacing, tolerance, fitted, fitted_reason in grid:
                    etas = v["etas_by_solver"].get(solver_name, v["etas"])
                    for scale, eta, exec_mode in itertools.product(guidance, etas, v["exec_modes"]):
                        try:
                            solver.check_eta(float(eta))
                            reason = None
                        except ValueError as err:
                            reason = str(err)
                        reason = reason or fitted_reason
                        if reason is None and steps is not None and steps < solver.min_steps:
                            reason = f"{solver_name} needs at least {solver.min_steps} steps, got {steps}"
                        if reason is None and exec_mode == "cuda_graph":
                            reason = _cuda_graph_skip(solver, device or v["device"])
                        configs.append(RunConfig(
                            model=model, schedule=v["schedule"], solver=solver_name, options=options, steps=steps,
                            spacing=spacing, eta=float(eta), tolerance=tolerance, seed=seed,
                            n_samples=v["n_samples"], batch_size=v["batch_size"], device=device or v["device"],
                            dtype=v["dtype"], metrics=tuple(v["metrics"]), spec_name=spec.name, spec_hash=spec.hash,
                            reference_size=v["reference_size"], fid_reference=v["fid_reference"], image_resize=v["image_resize"], fid_weights=v["fid_weights"], data_dir=v["data_dir"],
                            time_limit_s=float(v["time_limit_s"]), reference_tolerance=v["reference_tolerance"],
                            exec_mode=exec_mode, skip_reason=reason,
                            reference_time_limit_s=float(v["reference_time_limit_s"]),
                            timing_repeats=v["timing_repeats"], guidance_scale=scale, conditions=conditions,
                            guidance_interval=interval, fitted=fitted, prompts=prompts,
                            clip_model=v["clip_model"], final_step=v["final_step"]))
    return configs


def _fitted_cells(spacings: list[str], model: str, solver: str, steps: list[int]) -> list[tuple]:
    """(steps, spacing, tolerance, grid, skip reason) of a solver's fitted spacings: a file's grid once at its own
    step count, a folder's per step count of the spec (skipped with the reason where it has none)."""
    cells = {}
    for spacing in spacings:
        for n in sorted(steps, reverse=True):
            grid, n, reason = fitted_grids.for_cell(spacing, model, solver, n)
            cells[(n, spacing)] = (n, spacing, None, grid, reason)
    return list(cells.values())


def _cuda_graph_skip(solver, device: str) -> str | None:
    """Why a cuda_graph config cannot run (None if it can): an adaptive solver, or no CUDA device."""
    if solver.adaptive:
        return f"{solver.name} is adaptive: it decides its steps on the host, so its solve cannot be a CUDA graph"
    if device == "cpu" or (device == "auto" and not _cuda_available()):
        return f"exec mode cuda_graph needs a CUDA device, the config runs on {device!r}"
    return None


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def shard(configs: list[RunConfig], index: int, count: int) -> list[RunConfig]:
    """The configs of shard ``index`` of ``count`` (0-based): a stable hash split on config_id."""
    if not 0 <= index < count:
        raise SpecError(f"--shard: need 0 <= i < n, got {index}/{count}")
    return [c for c in configs if int(c.config_id, 16) % count == index]
