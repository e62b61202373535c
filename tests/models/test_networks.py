"""diffusers checkpoints and python:module:function models; training the built-in UNet."""
import json
import sys

import pytest
import torch

from bench.models import build_model
from bench.models.networks import betas_from_config
from bench.models.train import build_unet, train
from solvers import sample
from solvers.schedules import DiscreteVP
from solvers.spacing import timesteps


def _save_random_unet(path, prediction="epsilon", beta_schedule="linear"):
    unet = build_unet(8, 1, widths=(8, 16))
    unet.save_pretrained(path)
    (path / "scheduler_config.json").write_text(json.dumps(
        {"num_train_timesteps": 100, "beta_schedule": beta_schedule, "beta_start": 1e-4, "beta_end": 0.02,
         "prediction_type": prediction}))
    return unet


@pytest.mark.parametrize("prediction, expected", [("epsilon", "eps"), ("v_prediction", "v"), ("sample", "x0")])
def test_diffusers_checkpoint_round_trip(tmp_path, prediction, expected):
    unet = _save_random_unet(tmp_path, prediction)
    source = build_model(f"diffusers:{tmp_path}")
    model = source.model()
    assert source.event_shape == (1, 8, 8) and model.prediction == expected
    assert isinstance(model.schedule, DiscreteVP) and model.schedule.n_train == 100
    x = torch.randn(3, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    t = 0.37
    with torch.no_grad():
        direct = unet(x, torch.full((3,), 100 * t - 1)).sample
    torch.testing.assert_close(model.net(x, torch.full((3,), t)), direct)
    out = sample("dpmpp_2m", model, x, timesteps("logsnr", 4, model.schedule))
    assert out.shape == x.shape and model.nfe == 4


def test_pipeline_layout_and_missing_files(tmp_path):
    (tmp_path / "unet").mkdir()
    (tmp_path / "scheduler").mkdir()
    _save_random_unet(tmp_path / "unet")
    (tmp_path / "unet" / "scheduler_config.json").rename(tmp_path / "scheduler" / "scheduler_config.json")
    assert build_model(f"diffusers:{tmp_path}").event_shape == (1, 8, 8)
    with pytest.raises(FileNotFoundError, match="nothing: no such folder"):
        build_model(f"diffusers:{tmp_path / 'nothing'}")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="need a UNet2DModel folder"):
        build_model(f"diffusers:{tmp_path / 'empty'}")


@pytest.mark.parametrize("kind", ["linear", "scaled_linear", "squaredcos_cap_v2"])
def test_betas_match_diffusers_ddpm_scheduler(kind):
    from diffusers import DDPMScheduler

    config = {"num_train_timesteps": 50, "beta_schedule": kind, "beta_start": 1e-4, "beta_end": 0.02}
    torch.testing.assert_close(betas_from_config(config).float(), DDPMScheduler(**config).betas, rtol=1e-5, atol=1e-7)


def test_python_function_model(tmp_path, monkeypatch):
    (tmp_path / "my_models.py").write_text(
        "from bench.models import ring2d\nfrom solvers.schedules import VE\n"
        "def make():\n    return ring2d().model(VE()), (2,)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    source = build_model("python:my_models:make")
    assert source.event_shape == (2,) and source.model().schedule.sigma_max == 50.0
    with pytest.raises(ValueError, match="expected python:module:function"):
        build_model("python:my_models")
    sys.modules.pop("my_models", None)


MY_NET = """
import torch
from solvers import DiffusionModel
from solvers.schedules import VPLinear

class Net(torch.nn.Module):  # float32 weights, as a user's network has
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(1, 1, 3, padding=1)

    def forward(self, x, t):
        return 0.1 * torch.tanh(self.conv(x)) * (1 + t.view(-1, 1, 1, 1))

def make():
    return DiffusionModel(Net(), VPLinear(), prediction="eps"), (1, 8, 8)
"""


def test_a_python_function_network_in_float32_gets_its_reference_solve_and_a_float64_grid(tmp_path, monkeypatch):
    """The README's python:module:function with a torch module of float32 weights: the reference solve (float64)
    and a float64 spec call it in its weights' dtype, the output back in theirs (they raised "Input type (double) and
    bias type (float) should be the same", every err_reference empty); its weights move with the grid's device, and
    it samples in eval mode, its weights frozen (every forward built a graph of them)."""
    from bench.run import store
    from bench.run.sweep import run_sweep
    from bench.spec.config import expand, parse_spec

    (tmp_path / "my_net.py").write_text(MY_NET)
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        source = build_model("python:my_net:make")
        assert source.module is not None and source.to("cpu") is source
        assert not source.module.training and not any(p.requires_grad for p in source.module.parameters())
        assert source.weights_sha256 == build_model("python:my_net:make").weights_sha256  # of the tensors: rows say
        source.module.conv.bias.data += 1.0                                                 # when weights change
        from bench.models.weights import module_digest

        assert module_digest(source.module) != source.weights_sha256
        x = torch.randn(2, 1, 8, 8, dtype=torch.float64)
        assert source.model().eps(x, 0.5).dtype == torch.float64
        for dtype, limit in (("float32", 0), ("float64", 120)):  # in this process, then in the sweep's workers
            spec = parse_spec({"name": "mine", "models": ["python:my_net:make"], "solvers": ["ddim", "heun"],
                               "steps": [4], "n_samples": 8, "dtype": dtype, "metrics": ["err_reference"],
                               "time_limit_s": limit, "reference_time_limit_s": limit}, str(tmp_path / "s.toml"))
            run_dir = tmp_path / dtype
            meta = store.open_run(run_dir, spec)
            run_sweep(expand(spec), run_dir, meta["run_id"], progress=False)
            rows = store.load_rows(run_dir)
            assert set(rows.status) == {"ok"} and rows.err_reference.notna().all() and rows.message.isna().all()
    finally:
        sys.modules.pop("my_net", None)


def test_training_reduces_the_loss_and_resumes(tmp_path):
    g = torch.Generator().manual_seed(0)
    data = (torch.rand(64, 1, 8, 8, generator=g) > 0.5).float() * 2 - 1
    losses = train(data, tmp_path, steps=60, batch_size=16, lr=2e-3, checkpoint_every=30, widths=(8, 16),
                   log=lambda _: None)
    assert sum(losses[-10:]) / 10 < 0.7 * sum(losses[:10]) / 10
    resumed = train(data, tmp_path, steps=70, batch_size=16, lr=2e-3, checkpoint_every=30, widths=(8, 16),
                    log=lambda _: None)
    assert len(resumed) == 10  # picked up at step 60
    source = build_model(f"diffusers:{tmp_path}")
    assert source.event_shape == (1, 8, 8) and source.model().prediction == "eps"


def test_training_rejects_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="prediction must be 'eps' or 'v'"):
        train(torch.zeros(4, 1, 8, 8), tmp_path, steps=1, prediction="x0")


def test_a_diffusers_checkpoint_runs_in_a_sweep(tmp_path):
    from bench.run import store
    from bench.spec.config import expand, parse_spec
    from bench.run.sweep import run_sweep

    _save_random_unet(tmp_path / "ckpt")
    checkpoint = f"diffusers:{tmp_path / 'ckpt'}"
    spec = parse_spec({"models": [checkpoint, "ring2d"], "solvers": ["ddim", "dpmpp_2m"], "steps": [2],
                       "n_samples": 4, "metrics": ["err_stepdoubling", "sample_log_density"]}, str(tmp_path / "s.toml"))
    meta = store.open_run(tmp_path / "run", spec)
    run_sweep(expand(spec), tmp_path / "run", meta["run_id"], progress=False)
    table = store.load_rows(tmp_path / "run")
    assert (table.status == "ok").all() and (table.nfe == 2).all() and table.err_stepdoubling.notna().all()
    network, analytic = table[table.model == checkpoint], table[table.model == "ring2d"]
    assert len(network) == len(analytic) == 2 and (network.schedule == "DiscreteVP").all()
    # exact densities exist for analytic models only
    assert network.sample_log_density.isna().all() and analytic.sample_log_density.notna().all()


@pytest.mark.gpu
def test_a_diffusers_checkpoint_samples_on_cuda_as_on_the_cpu(tmp_path):
    """The UNet goes to the config's device; samples there match the CPU's to float32 tolerance."""
    from bench.run import sampling
    from bench.spec.config import expand, parse_spec
    from bench.run.runner import SweepCache

    if not torch.cuda.is_available():
        pytest.fail("the gpu mark needs a CUDA device")
    _save_random_unet(tmp_path / "ckpt")
    samples = {}
    for device in ("cpu", "cuda"):
        spec = parse_spec({"models": [f"diffusers:{tmp_path / 'ckpt'}"], "solvers": ["dpmpp_2m"], "steps": [10],
                           "n_samples": 16, "device": device, "metrics": []})
        cfg = expand(spec)[0]
        cache = SweepCache()
        source, model = cache.model(cfg)
        x_T = cache.prior(cfg, source.event_shape, torch.device(device), torch.float32)
        samples[device] = sampling.solve(cfg, model, x_T, cfg.steps, torch.device(device)).samples.cpu()
    torch.testing.assert_close(samples["cuda"], samples["cpu"], rtol=1e-3, atol=1e-3)


def test_a_flow_matching_checkpoint_loads_with_its_shift(tmp_path):
    from solvers.schedules import FlowMatching

    build_unet(8, 1, widths=(8, 16)).save_pretrained(tmp_path)
    (tmp_path / "scheduler_config.json").write_text(json.dumps(
        {"_class_name": "FlowMatchEulerDiscreteScheduler", "num_train_timesteps": 1000, "shift": 3.0}))
    model = build_model(f"diffusers:{tmp_path}").model()
    assert isinstance(model.schedule, FlowMatching) and model.schedule.shift == 3.0 and model.prediction == "flow"
    assert float(model.schedule.network_time(torch.tensor(0.5, dtype=torch.float64))) == pytest.approx(750.0)
    x = torch.randn(2, 1, 8, 8)
    assert sample("ddim", model, x, timesteps("uniform", 3, model.schedule)).shape == x.shape
    (tmp_path / "scheduler_config.json").write_text(json.dumps(
        {"_class_name": "FlowMatchEulerDiscreteScheduler", "use_dynamic_shifting": True}))
    with pytest.raises(ValueError, match="use_dynamic_shifting sets the shift from the image's token count"):
        build_model(f"diffusers:{tmp_path}")


def _save_class_conditional_unet(path):
    """A tiny class-conditional UNet (3 classes and the null class) trained for 2 steps, saved as train() saves it."""
    data = torch.randn(48, 1, 8, 8, generator=torch.Generator().manual_seed(1)).clamp(-1, 1)
    labels = torch.arange(48) % 3
    train(data, path, steps=2, batch_size=16, widths=(8, 16), labels=labels, class_names=["a", "b", "c"], log=lambda *a: None)


def test_a_class_conditional_checkpoint_loads_its_classes_and_guides_in_one_batched_call(tmp_path):
    from bench.models import guided_model, model_conditioning

    _save_class_conditional_unet(tmp_path)
    source = build_model(f"diffusers:{tmp_path}")
    assert source.conditioning.n_classes == 3 and source.conditioning.null_class == 3
    assert source.conditioning.names == ("a", "b", "c") and model_conditioning(f"diffusers:{tmp_path}") == source.conditioning
    unet = source.module
    x = torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    labels = torch.tensor([0, 1, 2, 0])
    guided = guided_model(source, source.model().schedule, 4.0)
    guided.condition_on(labels)
    t = torch.full((4,), 0.4)
    with torch.no_grad():
        conditional = unet(x, torch.full((4,), 1000 * 0.4 - 1), class_labels=labels).sample
        unconditional = unet(x, torch.full((4,), 1000 * 0.4 - 1), class_labels=torch.full((4,), 3)).sample
        torch.testing.assert_close(guided.net(x, t), unconditional + 4 * (conditional - unconditional), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(source.model().net(x, t), unconditional, rtol=1e-5, atol=1e-5)  # the null class


def test_classes_that_do_not_fit_the_unet_are_refused(tmp_path):
    from bench.models.networks import read_conditioning

    build_unet(8, 1, widths=(8, 16), n_classes=3).save_pretrained(tmp_path)
    (tmp_path / "classes.json").write_text(json.dumps({"names": ["a", "b"], "null_class": 2}))
    with pytest.raises(ValueError, match="null_class 2 with 2 names does not fit the UNet's 4 class embeddings"):
        read_conditioning(tmp_path)
    (tmp_path / "classes.json").unlink()  # without classes.json: every embedding a class, no null, no guidance
    conditioning = read_conditioning(tmp_path)
    assert conditioning.n_classes == 4 and not conditioning.guidable
