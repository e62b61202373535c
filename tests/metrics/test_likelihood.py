"""The PF-ODE likelihood against the analytic mixtures' exact log-density, its Hutchinson estimate, the
bits/dim convention, and the nll metric on the runner's path."""
import math
import sys

import pytest
import torch

from bench.run import store
from bench.models.analytic import GaussianMixture
from bench.spec.config import expand, parse_spec
from bench.metrics.likelihood import bits_per_dim, dequantize, pf_ode_nll
from bench.models import build_model
from bench.run.sweep import run_sweep
from solvers.model import DiffusionModel
from solvers.schedules import VPLinear
from solvers.spacing import timesteps
from support import needs_fashion

SCHEDULE = VPLinear()


def _data_at_t_min(mixture, n, seed=0):
    """Exact samples of the model's own p_{t_min}, where the PF-ODE likelihood is exact."""
    g = torch.Generator().manual_seed(seed)
    alpha, sigma = SCHEDULE.alpha_sigma(SCHEDULE.t_min)
    x0 = mixture.sample(n, g).double()
    return alpha * x0 + sigma * torch.randn(x0.shape, generator=g, dtype=torch.float64)


@pytest.mark.parametrize("name, n", [("ring2d", 128), ("gmm_hd", 32)])
def test_exact_divergence_nll_equals_the_exact_log_density(name, n):
    mixture = build_model(name)
    x = _data_at_t_min(mixture, n)
    nll = pf_ode_nll(mixture.model(SCHEDULE), x, "dopri5", tolerance=1e-6)
    per_dim = (nll + mixture.log_prob(x, SCHEDULE, SCHEDULE.t_min)).abs() / x.shape[1]
    assert per_dim.max() < 0.02, f"{name}: up to {per_dim.max():.4f} nats/dim off the exact log-density"


def test_hutchinson_nll_is_unbiased_within_its_standard_error():
    g = torch.Generator().manual_seed(1)
    dim = 100  # above the exact-divergence limit: Rademacher probes
    mixture = GaussianMixture(torch.randn(2, dim, generator=g, dtype=torch.float64), torch.tensor([0.3, 0.6]) ** 2)
    x = _data_at_t_min(mixture, 256)
    nll = pf_ode_nll(mixture.model(SCHEDULE), x, "dopri5", tolerance=1e-5, generator=torch.Generator().manual_seed(2))
    error = nll + mixture.log_prob(x, SCHEDULE, SCHEDULE.t_min)
    standard_error = error.std() / math.sqrt(len(error))
    assert standard_error > 0  # the probes add spread; the exact divergence would leave almost none
    assert abs(error.mean()) < 4 * standard_error and abs(error.mean()) / dim < 0.02, (error.mean(), standard_error)


def test_the_likelihood_depends_on_the_solver_and_converges_with_steps():
    mixture = build_model("ring2d")
    model, x = mixture.model(SCHEDULE), _data_at_t_min(mixture, 128)
    exact = -mixture.log_prob(x, SCHEDULE, SCHEDULE.t_min)
    errors = {steps: (pf_ode_nll(model, x, "heun", timesteps("logsnr", steps, SCHEDULE)) - exact).abs().mean().item()
              for steps in (8, 32)}
    assert errors[32] < errors[8] / 4, errors  # second order: 16x in theory
    euler = (pf_ode_nll(model, x, "euler", timesteps("logsnr", 16, SCHEDULE)) - exact).mean().item() / 2
    assert abs(euler) > 0.1  # a coarse first-order solve misstates the likelihood (measured -0.35 nats/dim)


@pytest.mark.parametrize("schedule_name", ["VPCosine", "DiscreteVP", "FlowMatching", "EDM"])
def test_the_adaptive_integration_never_evaluates_the_model_past_t_max(schedule_name):
    """dopri5 integrates from t_min up to t_max; its end is pinned as on the sampling path, so the network is never
    asked for a time outside the range it was trained on (VPCosine would fail an assertion there)."""
    from conftest import ALL_SCHEDULES

    schedule = ALL_SCHEDULES[schedule_name]
    mixture = build_model("ring2d")
    exact = mixture.model(schedule)
    asked = []

    def net(x, t):
        asked.append(float(t.max()))
        return exact.net(x, t)

    model = DiffusionModel(net, schedule, "eps")
    alpha, sigma = schedule.alpha_sigma(schedule.t_min)
    x = alpha * mixture.sample(16, torch.Generator().manual_seed(0)) + sigma * 0.1
    nll = pf_ode_nll(model, x, "dopri5", tolerance=1e-4)
    assert torch.isfinite(nll).all()
    assert max(asked) <= schedule.t_max, f"asked for t = {max(asked)} > t_max = {schedule.t_max}"


def test_a_solver_that_cannot_integrate_the_augmented_ode_is_refused():
    mixture = build_model("ring2d")
    with pytest.raises(ValueError, match="nll: 'dpmpp_2m' does not integrate the augmented PF-ODE; use one of euler"):
        pf_ode_nll(mixture.model(SCHEDULE), torch.zeros(2, 2), "dpmpp_2m", timesteps("logsnr", 4, SCHEDULE))


def test_bits_per_dim_of_the_uniform_density_over_8_bit_bins_is_8():
    dim = 10
    width = 256 / 127.5  # dequantised pixels fill [-1, 256/127.5 - 1)
    assert bits_per_dim(torch.tensor([dim * math.log(width)]), dim).item() == pytest.approx(8.0, abs=1e-12)
    pixels = torch.arange(256, dtype=torch.float64)
    images = pixels / 127.5 - 1
    dequantised = dequantize(images, torch.Generator().manual_seed(0))
    assert torch.equal(torch.floor((dequantised + 1) * 127.5), pixels)  # each value stays in its pixel's bin


def test_nll_rows_on_the_runners_path(tmp_path):
    spec = parse_spec({"models": ["ring2d"], "solvers": ["dopri5", "heun", "dpmpp_2m", "euler"], "steps": [16],
                       "spacings": ["logsnr"], "etas": [0.0, 1.0], "tolerances": [1e-5], "n_samples": 64,
                       "metrics": ["nll"], "time_limit_s": 0,
                       "reference_time_limit_s": 0})
    meta = store.open_run(tmp_path, spec)
    run_sweep(expand(spec), tmp_path, meta["run_id"], progress=False)
    rows = store.load_rows(tmp_path)
    ok = rows[rows.status == "ok"].set_index(["solver", "eta"])
    assert ok.loc[("dopri5", 0.0), "nll_se"] > 0 and ok.nll_bpd.isna().all()
    # 16 Heun steps misstate it by about 0.06 nats/dim (measured) against the adaptive solve: the column shows that
    assert 0.01 < abs(ok.loc[("dopri5", 0.0), "nll"] - ok.loc[("heun", 0.0), "nll"]) < 0.5
    assert math.isnan(ok.loc[("dpmpp_2m", 0.0), "nll"]) and "no nll: dpmpp_2m" in ok.loc[("dpmpp_2m", 0.0), "message"]
    assert math.isnan(ok.loc[("euler", 1.0), "nll"]) and "eta = 0 rows" in ok.loc[("euler", 1.0), "message"]
    # the row's value is the mean per-dimension NLL of the held-out exact samples, as computed by hand
    mixture = build_model("ring2d")
    held_out = mixture.sample(64, torch.Generator().manual_seed(30_000)).float()
    by_hand = pf_ode_nll(mixture.model(SCHEDULE), held_out, "dopri5", tolerance=1e-5).mean().item() / 2
    assert ok.loc[("dopri5", 0.0), "nll"] == pytest.approx(by_hand, rel=1e-6)


@needs_fashion
def test_nll_of_test_images_under_the_shipped_unet_on_the_runners_path(tmp_path):
    """Dequantised Fashion-MNIST test images, Hutchinson divergence through the UNet's gradients, bits/dim."""
    spec = parse_spec({"models": ["fmnist_unet"], "solvers": ["heun"], "steps": [10], "spacings": ["logsnr"],
                       "n_samples": 2, "metrics": ["nll"], "time_limit_s": 0,
                       "reference_time_limit_s": 0})
    meta = store.open_run(tmp_path, spec)
    run_sweep(expand(spec), tmp_path, meta["run_id"], progress=False)
    row = store.load_rows(tmp_path).iloc[0]
    assert row.status == "ok", row.message
    dim = 32 * 32
    assert row.nll_bpd == pytest.approx((row.nll * dim + dim * math.log(127.5)) / (dim * math.log(2)), rel=1e-9)
    assert math.isfinite(row.nll_bpd) and row.nll_se > 0


def test_a_network_not_known_to_model_fashion_mnist_gets_no_nll_of_its_images(tmp_path, monkeypatch):
    """A network's nll is of Fashion-MNIST test images: a python: network of other data got them too (a 3-channel one
    failed its whole row; a 1-channel one would have had an nll of data it never saw). Now its row says why it has
    none, and a diffusers folder that does not say what it models is refused with nll before anything runs, where
    one written by python -m bench train (its training.json) passes."""
    import json

    from bench.models.train import build_unet
    from bench.spec.config import SpecError

    (tmp_path / "other_data_net.py").write_text(
        "import torch\nfrom solvers import DiffusionModel\nfrom solvers.schedules import VPLinear\n"
        "class Net(torch.nn.Conv2d):\n    def forward(self, x, t):\n        return 0.1 * super().forward(x)\n"
        "def make():\n    return DiffusionModel(Net(3, 3, 3, padding=1), VPLinear()), (3, 8, 8)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    spec = parse_spec({"models": ["python:other_data_net:make"], "solvers": ["euler"], "steps": [4], "n_samples": 8,
                       "metrics": ["nll", "err_reference"], "time_limit_s": 0, "reference_time_limit_s": 0})
    run_dir = tmp_path / "run"
    try:
        run_sweep(expand(spec), run_dir, store.open_run(run_dir, spec)["run_id"], progress=False)
    finally:
        sys.modules.pop("other_data_net", None)
    row = store.load_rows(run_dir).iloc[0]
    assert row.status == "ok" and math.isnan(row.nll) and row.err_reference > 0
    assert row.message.startswith("no nll: which data this network models is not known")
    folder = tmp_path / "unet"
    build_unet(8, 1, widths=(8, 16)).save_pretrained(folder)
    (folder / "scheduler_config.json").write_text(json.dumps({"num_train_timesteps": 100, "beta_schedule": "linear"}))
    nll_of = {"models": [f"diffusers:{folder}"], "solvers": ["euler"], "steps": [4], "n_samples": 8, "metrics": ["nll"]}
    with pytest.raises(SpecError, match=f"'nll' of a network is of Fashion-MNIST test images, and 'diffusers:{folder}' "
                                        "does not say it models Fashion-MNIST"):
        parse_spec(nll_of)
    (folder / "training.json").write_text(json.dumps({"command": "python -m bench train --out unet"}))
    parse_spec(nll_of)
    assert build_model(f"diffusers:{folder}").dataset.startswith("Fashion-MNIST train (python -m bench train, ")
