"""Grid spec validation (every malformed spec gets its own one-line message, before any compute) and expansion."""
import json

import pytest

from bench.models import build_model, sample_kind
from bench.models.analytic import GaussianMixture
from bench.spec.config import SpecError, expand, load_spec, parse_spec, shard
from solvers import SOLVERS

GOOD = {"name": "t", "models": ["ring2d"], "solvers": ["heun", "ddpm", "dopri5"], "steps": [4, 8],
        "spacings": ["logsnr", "uniform"], "etas": [0.0, 1.0], "tolerances": [1e-3], "n_samples": 16}


def _with(**changes):
    spec = {**GOOD, **changes}
    return {k: v for k, v in spec.items() if v is not None}


MALFORMED = [
    (_with(solver=["heun"]), "unknown key 'solver' (did you mean 'solvers'?); allowed keys:"),
    (_with(models=None), "missing required key 'models'"),
    (_with(solvers=["heum"]), "key 'solvers': unknown solver 'heum' (did you mean 'heun'?); allowed: euler"),
    (_with(models=["ring3d"]), "key 'models': unknown model 'ring3d' (did you mean 'ring2d'?)"),
    (_with(spacings=["logsnrr"]), "key 'spacings': unknown spacing 'logsnrr' (did you mean 'logsnr'?)"),
    (_with(metrics=["fid_score"]), "key 'metrics': unknown metric 'fid_score'"),
    (_with(metrics=["kid"]), "key 'metrics': 'kid' is a row column, not a metric; it is filled by 'fid': name it in "
                             "'metrics'"),
    (_with(metrics=["recall"]), "key 'metrics': 'recall' is a row column, not a metric; it is filled by "
                                "'precision_recall' or 'fid': name one in 'metrics'"),
    (_with(steps=[4, -2]), "key 'steps' must hold integers >= 1, got -2"),
    (_with(steps=[4, 2.5]), "key 'steps' must hold integers >= 1, got 2.5"),
    (_with(steps=4), "key 'steps' must be a list of integers >= 1, got 4"),
    (_with(etas=[-0.5]), "key 'etas' must hold numbers >= 0, got -0.5"),
    (_with(etas=["high"]), "key 'etas' must hold numbers >= 0, got 'high'"),
    (_with(tolerances=[0.0]), "key 'tolerances' must hold numbers > 0, got 0.0"),
    (_with(n_samples=0), "key 'n_samples' must be an integer >= 1, got 0"),
    (_with(n_samples="many"), "key 'n_samples' must be an integer >= 1, and at least the metrics' fewest samples "
                             "(docs/metrics.md), got 'many'"),
    (_with(n_samples=4), "key 'n_samples': 4 is too few for metric 'precision_recall', whose figures and standard "
                         "errors need at least 5; allowed: integers >= 5"),
    (_with(models=["digits"], metrics=["fid"], reference_size=3), "key 'reference_size': 3 is too few for metric "
                                                                  "'fid', whose figures and standard errors need at least 5"),
    (_with(batch_size=-4), "key 'batch_size' must be an integer >= 1, got -4"),
    (_with(seeds=[-1]), "key 'seeds' must hold integers >= 0, got -1"),
    (_with(seeds=[True]), "key 'seeds' must hold integers >= 0, got True"),
    (_with(device="tpu"), "key 'device': unknown value 'tpu' (did you mean 'cpu'?); allowed: cpu, cuda, auto"),
    (_with(schedule="VPLinearr"), "key 'schedule': unknown value 'VPLinearr' (did you mean 'VPLinear'?)"),
    (_with(dtype="float16"), "key 'dtype': unknown value 'float16' (did you mean 'float64'?); allowed: float32, float64"),
    (_with(tolerances=None), "missing key 'tolerances' (needed by the adaptive solvers listed)"),
    (_with(steps=None), "missing key 'steps' (needed by the fixed-step solvers listed)"),
    (_with(steps=[]), "key 'steps' must not be empty when fixed-step solvers are listed"),
    (_with(solvers=[]), "key 'solvers' must not be empty"),
    (_with(steps=[4, 4]), "key 'steps' lists a value twice"),
    (_with(options={"lms": {"order": 3}}), "key 'options.lms': 'lms' is not in 'solvers'"),
    (_with(options={"heun": {"order": 3}}), "key 'options.heun.order': unknown option; allowed: none"),
    (_with(options={"ddpm": {"varience": "beta"}}), "key 'options.ddpm.varience': unknown option (did you mean 'variance'?)"),
    (_with(name=3), "key 'name' must be a string, got 3"),
    (_with(spacings=["trailing"]), "key 'spacings': 'trailing' steps on a model's discrete training timesteps; "
                                   "'ring2d' runs on the schedule 'VPLinear'"),
    (_with(spacings=[{"times": [0.5, 0.9]}]), "key 'spacings': spacing 'times:0.5,0.9': an explicit grid needs at "
                                              "least 2 strictly decreasing values"),
    (_with(spacings=[{"times": [1.5, 0.1]}]), "leave the range [0.001, 1.0] of VPLinear"),
    (_with(spacings=[{"steps": [0.5, 0.1]}]), "an explicit grid is {times = [...]} or {sigmas = [...]}"),
    (_with(reference_tolerance=0.0), "key 'reference_tolerance' must be a number in (0, 1), got 0.0"),
    (_with(steps_by_solver={"lms": [2]}), "key 'steps_by_solver.lms': 'lms' is not in 'solvers'"),
    (_with(steps_by_solver={"dopri5": [2]}), "key 'steps_by_solver.dopri5': 'dopri5' is adaptive and takes tolerances"),
    (_with(steps_by_solver={"heun": [0, 2]}), "key 'steps_by_solver.heun' must be a non-empty list of distinct "
                                              "integers >= 1, got [0, 2]"),
    (_with(steps_by_solver={"heun": 3}), "key 'steps_by_solver.heun' must be a non-empty list"),
]


GUIDED = {"name": "g", "models": ["gmm_classes"], "solvers": ["ddim", "euler_cfg_pp"], "steps": [4], "n_samples": 8}
MALFORMED += [
    (_with(guidance_scales=[1, 4]), "key 'guidance_scales': model 'ring2d' is unconditional (no conditions to guide "
                                    "towards); drop the key or use a conditional model"),
    (_with(class_labels=[0, 1]), "key 'class_labels': model 'ring2d' is unconditional"),
    (_with(solvers=["euler_cfg_pp"]), "key 'solvers': 'euler_cfg_pp' is a CFG++ sampler and needs a classifier-free "
                                      "guided model, but 'ring2d' is unconditional"),
    ({**GUIDED, "prompts": ["a shirt"]}, "key 'prompts': model 'gmm_classes' is class-conditional (4 classes); give "
                                         "class_labels, not prompts"),
    ({**GUIDED, "class_labels": [0, 4]}, "key 'class_labels': label 4 is outside model 'gmm_classes''s classes 0..3"),
    ({**GUIDED, "class_labels": "balanced"}, "key 'class_labels' must be 'random' or a list of class labels, got 'balanced'"),
    ({**GUIDED, "guidance_scales": [1, -2]}, "key 'guidance_scales' must hold numbers >= 0, got -2"),
    ({**GUIDED, "guidance_interval": [3.0, 1.0]}, "key 'guidance_interval' must be [lo, hi] with 0 <= lo < hi"),
    (_with(etas_by_solver={"pc": [1.0]}), "key 'etas_by_solver.pc': 'pc' is not in 'solvers'"),
    (_with(etas_by_solver={"ddpm": [-1.0]}), "key 'etas_by_solver.ddpm' must be a non-empty list of distinct numbers >= 0"),
    ({**GUIDED, "metrics": ["nll"]}, "key 'metrics': 'nll' integrates held-out points through an unconditional"),
]


@pytest.mark.parametrize("raw, message", MALFORMED, ids=[m for _, m in MALFORMED])
def test_malformed_spec_gives_its_specific_message(raw, message, tmp_path):
    path = tmp_path / "bad.toml"
    with pytest.raises(SpecError) as err:
        parse_spec(raw, str(path))
    lines = str(err.value).splitlines()
    assert any(message in line and line.startswith(str(path)) for line in lines), str(err.value)
    assert list(tmp_path.iterdir()) == []  # nothing written


def test_every_problem_is_reported_at_once():
    with pytest.raises(SpecError) as err:
        parse_spec(_with(n_samples=0, etas=[-1.0], device="tpu"), "x.toml")
    assert len(str(err.value).splitlines()) == 3


def test_a_reference_size_below_two_gets_one_message_not_also_the_metrics_minimum():
    with pytest.raises(SpecError) as err:
        parse_spec(_with(models=["digits"], metrics=["fid"], reference_size=1), "x.toml")
    assert str(err.value).splitlines() == ["x.toml: key 'reference_size' must be an integer >= 2, got 1"]


def test_bad_toml_and_missing_file(tmp_path):
    bad = tmp_path / "broken.toml"
    bad.write_text("models = [ring2d")
    with pytest.raises(SpecError, match="broken.toml: not valid TOML"):
        load_spec(bad)
    with pytest.raises(SpecError, match="nope.toml: no such spec file"):
        load_spec(tmp_path / "nope.toml")


def test_expansion_counts_and_skip_reasons():
    configs = expand(parse_spec(GOOD))
    # heun, ddpm: 2 steps x 2 spacings x 2 etas each; dopri5: 1 tolerance x 2 etas.
    assert len(configs) == 8 + 8 + 2
    by = {(c.solver, c.eta, c.steps, c.spacing): c for c in configs}
    assert "heun is an ODE solver: eta must be 0, got 1.0" in by[("heun", 1.0, 4, "logsnr")].skip_reason
    assert "ddpm: eta is fixed at 1.0" in by[("ddpm", 0.0, 8, "uniform")].skip_reason
    assert by[("ddpm", 1.0, 8, "uniform")].skip_reason is None
    assert by[("dopri5", 0.0, None, None)].tolerance == 1e-3 and by[("dopri5", 0.0, None, None)].skip_reason is None
    assert len({c.config_id for c in configs}) == len(configs)


def test_an_explicit_grid_is_a_spacing_with_its_own_steps():
    configs = expand(parse_spec({**GOOD, "spacings": ["logsnr", {"times": [1.0, 0.5, 0.1, 0.001]},
                                                      {"sigmas": [80.0, 5.0, 0.5, 0.02]}], "etas": [0.0]}))
    heun = {(c.spacing, c.steps) for c in configs if c.solver == "heun"}
    assert heun == {("logsnr", 4), ("logsnr", 8), ("times:1.0,0.5,0.1,0.001", 3), ("sigmas:80.0,5.0,0.5,0.02", 3)}


def test_steps_by_solver_replaces_the_steps_of_one_solver():
    """Equal NFE for solvers of different cost per step: heun (2 NFE per step) at half the steps."""
    configs = expand(parse_spec({**GOOD, "steps_by_solver": {"heun": [2, 4]}, "etas": [0.0]}))
    steps = {solver: sorted({c.steps for c in configs if c.solver == solver}) for solver in ("heun", "ddpm")}
    assert steps == {"heun": [2, 4], "ddpm": [4, 8]}


def test_the_reference_tolerance_is_part_of_the_id_only_where_a_metric_uses_it():
    default, explicit = (expand(parse_spec({**GOOD, **extra})) for extra in ({}, {"reference_tolerance": 1e-8}))
    assert [c.config_id for c in default] == [c.config_id for c in explicit]
    looser = expand(parse_spec({**GOOD, "reference_tolerance": 1e-6}))
    assert not {c.config_id for c in looser} & {c.config_id for c in default}  # err_reference is a default metric
    no_reference = {**GOOD, "metrics": ["frechet"]}
    assert ([c.config_id for c in expand(parse_spec(no_reference))]
            == [c.config_id for c in expand(parse_spec({**no_reference, "reference_tolerance": 1e-6}))])


def test_config_ids_are_stable_and_ignore_the_spec_name():
    a = expand(parse_spec(GOOD))
    b = expand(parse_spec({**GOOD, "name": "other"}))
    assert [c.config_id for c in a] == [c.config_id for c in b]


def test_shards_partition_the_grid():
    configs = expand(parse_spec(GOOD))
    parts = [shard(configs, i, 3) for i in range(3)]
    ids = [c.config_id for part in parts for c in part]
    assert sorted(ids) == sorted(c.config_id for c in configs) and len(ids) == len(set(ids))
    with pytest.raises(SpecError, match="need 0 <= i < n, got 3/3"):
        shard(configs, 3, 3)


# shipped specs that name what a make target makes (the fitted grids) or the user brings (their images)
NEEDS_FILES = {"fitted.toml": "results/scratch/fitted-grids", "sd15.toml": "data/my-reference-images",
              "sd3.toml": "data/my-reference-images"}


def test_shipped_specs_are_valid():
    from pathlib import Path

    for path in sorted(Path("bench/configs").glob("*.toml")):
        if path.name in NEEDS_FILES and not Path(NEEDS_FILES[path.name]).exists():
            with pytest.raises(SpecError) as err:
                load_spec(path)
            assert all(NEEDS_FILES[path.name] in line for line in str(err.value).splitlines()), err.value
            continue
        spec = load_spec(path)
        assert set(spec.values["solvers"]) <= set(SOLVERS)


def test_the_zoo_spec_runs_every_registered_solver():
    """Every solver that runs on an unconditional model (the CFG++ samplers need a guided one)."""
    assert load_spec("bench/configs/zoo.toml").values["solvers"] == [n for n, s in SOLVERS.items() if not s.needs_guidance]


def test_network_model_entries_pass_validation():
    spec = parse_spec({**GOOD, "models": ["diffusers:/some/unet", "python:support:smooth_ring", "ring2d"]})
    assert {c.model for c in expand(spec)} == {"diffusers:/some/unet", "python:support:smooth_ring", "ring2d"}
    with pytest.raises(SpecError, match="unknown model 'torch:/x'"):
        parse_spec({**GOOD, "models": ["torch:/x"]})


def test_a_python_model_that_cannot_load_is_a_spec_error_before_anything_runs():
    """Its rows all failed with ModuleNotFoundError (and its reference solve was recorded as a timeout), after the
    sweep had started."""
    with pytest.raises(SpecError) as caught:
        parse_spec({**GOOD, "models": ["python:pkg.mod:make", "python:support", "ring2d"]})
    assert str(caught.value).splitlines() == [
        "<spec>: key 'models': 'python:pkg.mod:make': no module 'pkg.mod' on the python path (put its folder on "
        "PYTHONPATH)", "<spec>: key 'models': 'python:support': expected python:module:function"]


def test_fid_on_a_network_needs_a_dataset_reference():
    raw = {**GOOD, "models": ["diffusers:/x"], "metrics": ["fid"]}
    with pytest.raises(SpecError, match="key 'fid_reference': 'exact' needs an image mixture"):
        parse_spec(raw)
    assert expand(parse_spec({**raw, "fid_reference": "fashion_mnist"}))[0].fid_reference == "fashion_mnist"
    with pytest.raises(SpecError, match="key 'fid_reference': unknown value 'cifar'"):
        parse_spec({**raw, "fid_reference": "cifar"})


def _unet_folder(folder, sample_size):
    """A diffusers UNet folder's configs (no weights: the spec reads configs alone)."""
    (folder / "unet").mkdir(parents=True)
    (folder / "unet" / "config.json").write_text(json.dumps({"_class_name": "UNet2DModel", "sample_size": sample_size}))
    return f"diffusers:{folder}"


def test_a_metric_that_applies_to_none_of_the_models_is_refused_before_compute(tmp_path):
    """Its rows all came out empty, without a word: fid of points, data-space distances of a network's images, LPIPS
    of images too small for AlexNet."""
    small = _unet_folder(tmp_path / "small", 16)
    with pytest.raises(SpecError) as caught:
        parse_spec({**GOOD, "metrics": ["fid", "lpips_diversity", "frechet"]})
    assert str(caught.value).splitlines() == [
        "<spec>: key 'metrics': 'fid' measures images, and none of the models makes images (ring2d)",
        "<spec>: key 'metrics': 'lpips_diversity' measures images, and none of the models makes images (ring2d)"]
    with pytest.raises(SpecError) as caught:
        parse_spec({**GOOD, "models": [small, "fmnist_unet"], "metrics": ["precision_recall", "lpips_reference"],
                    "fid_reference": "fashion_mnist"})
    assert str(caught.value).splitlines() == [
        f"<spec>: key 'metrics': 'precision_recall' compares with exact samples of an analytic mixture, and none of "
        f"the models is one ({small}, fmnist_unet); on images 'fid' fills its columns"]
    with pytest.raises(SpecError) as caught:
        parse_spec({**GOOD, "models": [small, "digits"], "metrics": ["lpips_reference"]})
    assert str(caught.value).splitlines() == [
        f"<spec>: key 'metrics': 'lpips_reference' needs images of 32 px a side and up, and the models make smaller "
        f"ones ({small}: 16 px, digits: 8 px)"]


def test_a_metric_that_applies_to_some_of_the_models_or_may_apply_is_accepted(tmp_path):
    """Each row computes the metrics its model takes; the default metrics apply wherever they can; a python:
    function's model is known only once built."""
    large = _unet_folder(tmp_path / "large", [32, 48])
    for models, metrics in [(["ring2d", large], ["fid", "lpips_diversity", "frechet"]),
                            ([large], None), (["python:support:smooth_ring"], ["fid"])]:
        spec = parse_spec(_with(models=models, metrics=metrics, fid_reference="fashion_mnist" if metrics else None))
        assert {c.model for c in expand(spec)} == set(models)


def test_what_the_spec_reads_of_a_model_matches_the_model_built():
    """The sample kinds the spec checks metrics against, from names and configs, against the models themselves."""
    for name in ["ring2d", "gmm_hd", "gmm_classes", "digits", "fashion_gmm", "fmnist_unet", "fmnist_cond_unet"]:
        source, kind = build_model(name), sample_kind(name)
        side = min(source.event_shape[-2:]) if len(source.event_shape) == 3 else None
        assert (kind.exact, kind.image_side) == (isinstance(source, GaussianMixture), side), name
    assert sample_kind("python:support:smooth_ring") is None and sample_kind("diffusers:/no/such/folder") is None


def test_image_resize_is_a_checked_spec_option():
    assert expand(parse_spec({**GOOD, "image_resize": "bilinear"}))[0].image_resize == "bilinear"
    with pytest.raises(SpecError, match="key 'image_resize': unknown value 'nearest'; allowed: pad, bilinear"):
        parse_spec({**GOOD, "image_resize": "nearest"})


def test_align_your_steps_on_a_schedule_it_was_not_published_for_is_refused_before_compute():
    with pytest.raises(SpecError, match="key 'spacings': spacing 'ays_sd1' was published for sigma~ from 14.6146 to "
                                        "0.0291672; VPLinear.* spans 152.2 to 0.01049 .*the analytic models run on it"):
        parse_spec({**GOOD, "spacings": ["ays_sd1"]})


def test_restart_needs_two_steps_and_an_interval_inside_the_schedule():
    restart = {**GOOD, "models": ["ring2d"], "solvers": ["restart"], "steps": [1, 4], "etas": [1.0]}
    reasons = {c.steps: c.skip_reason for c in expand(parse_spec(restart))}
    assert reasons == {4: None, 1: "restart needs at least 2 steps, got 1"}
    with pytest.raises(SpecError, match=r"key 'options.restart': restart: options sigma_restart_min, "
                                        r"sigma_restart_max = 0.001, 0.3 \(in sigma/alpha\) must lie in the solve's "
                                        r"\(0.01049, 152.2\] \(the analytic models run on VPLinear\)"):
        parse_spec({**restart, "options": {"restart": {"sigma_restart_min": 0.001}}})
    with pytest.raises(SpecError, match=r"sigma_restart_max = 0.06, 100 \(in sigma/alpha\) must lie in the solve's "
                                        r"\(0.002, 80\] \(the analytic models run on EDM\)"):  # reaching above it
        parse_spec({**restart, "schedule": "EDM", "options": {"restart": {"sigma_restart_max": 100}}})


@pytest.mark.parametrize("solver, options, message", [
    ("seeds_2", {"r": 1.0}, r"seeds_2: r must be in \(0, 1\), got 1.0"),
    ("seeds_3", {"r2": 1.0}, r"seeds_3: r2 must be in \(0, 1\), got 1.0"),
    ("sa_solver", {"noise_sigma_min": 2.0, "noise_sigma_max": 1.0},
     r"sa_solver: need 0 <= noise_sigma_min <= noise_sigma_max \(sigma~ = sigma/alpha\), got 2.0, 1.0"),
    # up to this commit the next ones passed the spec and failed every row after the reference solves
    ("dpmpp_3m", {"second_order": "heun"}, r"dpmpp_3m: second_order must be one of \('midpoint', 'taylor'\), got 'heun'"),
    ("lms", {"warmup": "euler"}, r"lms: warmup must be one of \('rk4', 'lower_order'\), got 'euler'"),
    ("pc", {"corrector_steps": -1}, "pc: corrector_steps must be >= 0, got -1"),
    ("dpm_solver_3", {"r1": 0.8}, "dpm_solver_3: need 0 < r1 < r2 < 1, got r1=0.8, r2=0.666.*"),
    # and this one ran as lower_order_final = true: a non-empty string is truthy
    ("unipc_3", {"lower_order_final": "false"}, "unipc_3: lower_order_final must be true or false, got 'false'"),
])
def test_solver_options_out_of_range_are_spec_errors_for_networks_too(solver, options, message):
    """Checked on the spec, before compute, also where the schedule is not known yet (a network's)."""
    spec = {**GOOD, "models": ["fmnist_unet"], "solvers": [solver], "etas": [1.0], "options": {solver: options}}
    with pytest.raises(SpecError, match=f"key 'options.{solver}': {message}$"):
        parse_spec(spec)
    with pytest.raises(SpecError, match=f"key 'options.{solver}': {message}$"):  # the schedule is beside the point
        parse_spec({**spec, "models": ["ring2d"]})


def test_guidance_scales_are_an_axis_of_conditional_models_only():
    spec = parse_spec({**GUIDED, "models": ["gmm_classes"], "guidance_scales": [1, 2, 4], "class_labels": [3, 1],
                       "guidance_interval": [0.3, 5.0]})
    configs = expand(spec)
    assert sorted({c.guidance_scale for c in configs}) == [1.0, 2.0, 4.0] and len(configs) == 2 * 3
    assert {c.conditions for c in configs} == {"labels:3,1"} and {c.guidance_interval for c in configs} == {(0.3, 5.0)}
    assert len({c.config_id for c in configs}) == len(configs)
    assert "cfg=4" in next(c for c in configs if c.guidance_scale == 4).label
    default = expand(parse_spec(GUIDED))  # a conditional model without guidance_scales: scale 1, random labels
    assert {(c.guidance_scale, c.conditions, c.guidance_interval) for c in default} == {(1.0, "labels:random", None)}


def test_unconditional_configs_keep_their_ids():
    """The guidance fields are left out of an unconditional config's id, so runs from before the axis still match."""
    import dataclasses
    import hashlib
    import json

    cfg = expand(parse_spec(GOOD))[0]
    key = {f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg)
           if f.name not in ("spec_name", "spec_hash", "skip_reason", "metrics", "fid_weights", "data_dir", "reference_size",
                             "time_limit_s", "reference_tolerance", "reference_time_limit_s", "timing_repeats",
                             "exec_mode", "guidance_scale", "conditions", "guidance_interval", "fitted", "prompts",
                             "clip_model", "final_step")}
    assert cfg.guidance_scale is None and cfg.config_id == hashlib.sha1(
        json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:16]


def test_etas_by_solver_replaces_etas_for_that_solver():
    configs = expand(parse_spec({**GOOD, "etas": [0.0], "etas_by_solver": {"ddpm": [1.0]}}))
    assert {c.eta for c in configs if c.solver == "ddpm"} == {1.0} and {c.eta for c in configs if c.solver == "heun"} == {0.0}
    assert all(c.skip_reason is None for c in configs)


def test_the_gpu_fid_specs_hold_what_the_gpu_baseline_asks():
    """gpu-fid.toml: the shipped UNet, at least 10 solvers at NFE 5, 10 and 20 (two-evaluation solvers within one),
    two spacings, eta 0 and 1 where a solver takes both, eager and compile, FID on 10,000 samples in at least 60 rows,
    err_reference; gpu-fid-guided.toml: the class-conditional UNet at two guidance scales, FID on 10,000 samples.
    Their twins: the same axes on the CPU at 64 samples (eager only)."""
    runnable = [c for c in expand(load_spec("bench/configs/gpu-fid.toml")) if c.skip_reason is None]
    assert {c.model for c in runnable} == {"fmnist_unet"} and len({c.solver for c in runnable}) >= 10
    for solver in {c.solver for c in runnable}:
        nfe = sorted({SOLVERS[solver].nfe(c.steps) for c in runnable if c.solver == solver})
        assert len(nfe) == 3 and all(abs(n - goal) <= 1 for n, goal in zip(nfe, (5, 10, 20))), (solver, nfe)
    assert {c.spacing for c in runnable} == {"logsnr", "karras"} and {c.exec_mode for c in runnable} == {"eager", "compile"}
    both = {c.solver for c in runnable if c.eta == 1.0}
    assert both == {s for s in both if SOLVERS[s].stochastic == "both"} and len(both) >= 2
    assert all(c.n_samples == 10000 and {"fid", "err_reference"} <= set(c.metrics) for c in runnable)
    assert len(runnable) >= 60
    guided = [c for c in expand(load_spec("bench/configs/gpu-fid-guided.toml")) if c.skip_reason is None]
    assert {c.model for c in guided} == {"fmnist_cond_unet"} and len({c.guidance_scale for c in guided}) == 2
    assert all(c.n_samples == 10000 and "fid" in c.metrics for c in guided)
    for spec, twin in (("gpu-fid", "gpu-fid-twin"), ("gpu-fid-guided", "gpu-fid-guided-twin")):
        axes = [{(c.solver, c.steps, c.spacing, c.eta, c.guidance_scale, c.skip_reason is None)
                 for c in expand(load_spec(f"bench/configs/{name}.toml"))} for name in (spec, twin)]
        assert axes[0] == axes[1], spec
