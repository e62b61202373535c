"""The guidance axis on the runner's own path: a class-conditional model's configs sample with the labels of their
seed (paired across configs like x_T, aligned with x_T through batches and parts), guided at the config's scale, with
both NFE conventions in the row and a reference solve of the same guided model."""
import pytest
import torch

from bench.models import draw_labels, gmm_classes, guided_model
from bench.run import store
from bench.run.runner import SweepCache, reference_solution, run_config
from bench.spec.config import expand, parse_spec
from bench.run.sweep import run_sweep
from solvers import sample
from solvers.schedules import VPLinear
from solvers.spacing import timesteps

SPEC = {"name": "guided", "models": ["gmm_classes"], "solvers": ["ddim", "dpmpp_2m", "euler_cfg_pp"], "steps": [6],
        "guidance_scales": [1, 3], "n_samples": 40, "batch_size": 16, "timing_repeats": 1, "time_limit_s": 0,
        "reference_time_limit_s": 0, "metrics": ["err_reference", "sample_log_density", "precision_recall"],
        "reference_size": 200}


def test_guided_rows_carry_scale_conditions_and_both_nfe_conventions(tmp_path):
    spec = parse_spec({**SPEC, "metrics": ["sample_log_density"]}, str(tmp_path / "g.toml"))
    run_dir = tmp_path / "run"
    meta = store.open_run(run_dir, spec)
    configs = expand(spec)
    run_sweep(configs, run_dir, meta["run_id"], progress=False)
    rows = store.load_rows(run_dir).set_index(["solver", "guidance_scale"])
    assert (rows.status == "ok").all() and len(rows) == 6, rows[["status", "message"]]
    assert set(rows.conditions) == {"labels:random"}
    for (solver, scale), row in rows.iterrows():
        one_pass = scale == 1 and solver != "euler_cfg_pp"  # CFG++ reads the unconditional prediction at every scale
        assert row.nfe == 6 and row.network_passes == (6 if one_pass else 12), (solver, scale)


def test_a_guided_config_samples_what_the_guided_model_gives_on_its_x_T_and_labels(tmp_path):
    """The runner's samples, solved in parts of 16 with each part's labels, equal one solve of the guided model on the
    config's x_T and its seed's labels; the reference solve is of the same guided model, so dopri5 at 1e-8 agrees."""
    configs = {(c.solver, c.guidance_scale): c for c in expand(parse_spec(SPEC))}
    cfg = configs[("dpmpp_2m", 3.0)]
    cache = SweepCache()
    row = run_config(cfg, cache, store.environment("cpu"), "test")
    assert row["status"] == "ok", row["message"]
    mixture = gmm_classes()
    x_T = cache.prior(cfg, mixture.event_shape, torch.device("cpu"), torch.float32)
    labels = draw_labels("labels:random", mixture, cfg.seed, cfg.n_samples)
    assert torch.equal(cache.conditions(cfg, torch.device("cpu")), labels) and len(set(labels.tolist())) == 4
    model = guided_model(mixture, VPLinear(), 3.0)
    model.condition_on(labels)
    ts = timesteps(cfg.spacing, cfg.steps, model.schedule)
    expected = sample("dpmpp_2m", model, x_T, ts)
    reference = reference_solution(cfg, cache)
    errors = (expected.double() - reference).norm(dim=1)
    assert row["err_reference"] == pytest.approx(errors.median().item(), rel=1e-4)
    model.condition_on(labels)
    dopri = sample("dopri5", model, x_T.double(), ts, rtol=1e-8, atol=1e-8)
    assert (dopri - reference).norm(dim=1).max() < 1e-5


def test_labels_are_paired_across_configs_and_drawn_apart_from_x_T():
    mixture = gmm_classes()
    first = draw_labels("labels:random", mixture, 0, 64)
    assert torch.equal(first, draw_labels("labels:random", mixture, 0, 64))
    assert not torch.equal(first, draw_labels("labels:random", mixture, 1, 64))
    assert torch.equal(draw_labels("labels:random", mixture, 0, 40), first[:40])  # a prefix, like x_T
    assert draw_labels("labels:2,0", mixture, 0, 5).tolist() == [2, 0, 2, 0, 2]


def test_a_guided_network_steps_on_its_own_schedule_not_the_specs():
    """A checkpoint brings its schedule (DiscreteVP from its betas); the spec's `schedule` is the analytic models'.
    Guided configs once took the spec's VPLinear for the solver's alpha and sigma (sigma/alpha up to 4.9% off)."""
    from bench.run.runner import SweepCache
    from bench.spec.config import expand, parse_spec
    from solvers.schedules import DiscreteVP

    (cfg,) = expand(parse_spec({"name": "g", "models": ["fmnist_cond_unet"], "solvers": ["ddim"], "steps": [2],
                                "n_samples": 2, "guidance_scales": [2.0], "metrics": []}))
    source, model = SweepCache().model(cfg)
    assert isinstance(model.schedule, DiscreteVP) and model.schedule is source.model().schedule
