"""Our solvers against the code users run, beyond the conformance table (bench/conformance/report.py, checked in
test_conformance.py): ComfyUI's published updates (ComfyUI does not install here), the identities between our
solvers that the peers' settings rely on, and step-for-step agreement of dpm_adaptive.

k-diffusion works in EDM's variables: x~ = x / alpha_t and sigma~ = sigma_t / alpha_t = exp(-lambda_t),
with a denoiser D(x~, sigma~) = x0 (bench.conformance.peers.k_diffusion_run maps between them).
"""
import math

import pytest
import torch

from bench.models import ring2d
from bench.conformance.report import flow_prediction_model
from bench.conformance.peers import ReplayedNoise, k_diffusion_run, k_diffusion_sampling
from solvers import sample
from solvers.schedules import FlowMatching, VPLinear
from solvers.spacing import timesteps
from support import prior_sample

SCHEDULE = VPLinear()


def _restated_ipndm(denoiser, x, sigmas, disable=True):
    """ComfyUI's sample_ipndm as published (equal-step Adams-Bashforth on d = (x - D)/sigma), restated here."""
    weights = {1: [1], 2: [3, -1], 3: [23, -16, 5], 4: [55, -59, 37, -9]}
    divisors = {1: 1, 2: 2, 3: 12, 4: 24}
    ds = []
    for sigma, sigma_next in zip(sigmas[:-1], sigmas[1:]):
        ds = [(x - denoiser(x, sigma.expand(len(x)))) / sigma] + ds[:3]
        k = len(ds)
        x = x + (sigma_next - sigma) * sum(w * d for w, d in zip(weights[k], ds)) / divisors[k]
    return x


def _restated_ipndm_v(denoiser, x, sigmas, disable=True, max_order=4, parenthesis_moved=False):
    """ComfyUI's sample_ipndm_v as published (from zju-pi/diff-sampler: Adams-Bashforth on d = (x - D)/sigma with
    closed-form weights for the steps h_n, h_n_1, ... in sigma), restated here. ``parenthesis_moved``: its order-3
    correction read as (1 - h_n / (3 (h_n + h_n_1))) (h_n (h_n + h_n_1)) / (h_n_1 (h_n_1 + h_n_2)) / 2, where the
    published line closes the first parenthesis after the whole product."""
    ds = []  # newest first
    for i, (sigma, sigma_next) in enumerate(zip(sigmas[:-1], sigmas[1:])):
        ds = [(x - denoiser(x, sigma.expand(len(x)))) / sigma] + ds[: max_order - 1]
        h_n = sigma_next - sigma
        order = len(ds)
        if order == 1:
            weights = [1.0]
        else:
            h_n_1 = sigma - sigmas[i - 1]
            weights = [(2 + h_n / h_n_1) / 2, -(h_n / h_n_1) / 2]
        if order >= 3:
            h_n_2 = sigmas[i - 1] - sigmas[i - 2]
            ratio = (h_n * (h_n + h_n_1)) / (h_n_1 * (h_n_1 + h_n_2))
            third = h_n / (3 * (h_n + h_n_1))
            temp1 = (1 - third) * ratio / 2 if parenthesis_moved else (1 - third * ratio) / 2
            weights = [weights[0] + temp1, weights[1] - (1 + h_n_1 / h_n_2) * temp1, temp1 * h_n_1 / h_n_2]
        if order == 4:
            h_n_3 = sigmas[i - 2] - sigmas[i - 3]
            span = h_n + h_n_1 + h_n_2
            temp2 = (((1 - third) / 2 + (1 - h_n / (2 * (h_n + h_n_1))) * h_n / (6 * span))
                     * (h_n * (h_n + h_n_1) * span) / (h_n_1 * (h_n_1 + h_n_2) * (h_n_1 + h_n_2 + h_n_3)))
            q = h_n_1 * (h_n_1 + h_n_2) / (h_n_2 * (h_n_2 + h_n_3))
            weights = [weights[0] + temp2, weights[1] - (1 + h_n_1 / h_n_2 + q) * temp2,
                       weights[2] + (h_n_1 / h_n_2 + q * (1 + h_n_2 / h_n_3)) * temp2, -temp2 * q * h_n_1 / h_n_2]
        x = x + h_n * sum(w * d for w, d in zip(weights, ds))
    return x


def _restated_res_multistep(denoiser, x, sigmas, disable=True):
    """ComfyUI's sample_res_multistep as published (b1, b2 with c2 = -(previous step)/h in -log sigma), restated."""
    previous = None
    for i, (sigma, sigma_next) in enumerate(zip(sigmas[:-1], sigmas[1:])):
        denoised = denoiser(x, sigma.expand(len(x)))
        if previous is None:
            x = x + (sigma_next - sigma) * (x - denoised) / sigma
        else:
            h = torch.log(sigma) - torch.log(sigma_next)
            c2 = (torch.log(sigma) - torch.log(sigmas[i - 1])) / h
            phi1 = torch.expm1(-h) / -h
            phi2 = (phi1 - 1) / -h
            x = torch.exp(-h) * x + h * ((phi1 - phi2 / c2) * denoised + (phi2 / c2) * previous)
        previous = denoised
    return x


@pytest.mark.parametrize("name, restated", [("ipndm", _restated_ipndm), ("res_multistep", _restated_res_multistep)])
@pytest.mark.parametrize("spacing", ["logsnr", "karras"])
def test_agrees_with_comfyuis_published_update(name, restated, spacing):
    """ComfyUI cannot be installed here: its published update, restated in k-diffusion's variables, is the peer."""
    model = ring2d().model(SCHEDULE)
    x_T = prior_sample(SCHEDULE, 64, 2)
    ts = timesteps(spacing, 10, SCHEDULE)
    ours = sample(name, model, x_T, ts)
    theirs = k_diffusion_run(restated, model, x_T, ts)
    relative = ((ours - theirs).abs().max() / theirs.abs().max()).item()
    assert relative < 1e-8, f"{name} vs ComfyUI's update: relative difference {relative:.2e}"


def _relative(ours, theirs) -> float:
    return ((ours - theirs).abs().max() / theirs.abs().max()).item()


@pytest.mark.parametrize("spacing", ["logsnr", "karras"])
def test_comfyuis_ipndm_v_is_ours_at_order_2_and_off_at_3_by_a_parenthesis(spacing):
    """ipndm_v is k-diffusion's sample_lms (the conformance table); ComfyUI's sample_ipndm_v computes the same
    variable-step weights in closed form. At max_order 2 they agree; at 3 its published line misplaces a
    parenthesis (8.3% relative on karras, 5.0% on logsnr, 10 steps), and read as intended it agrees."""
    model = ring2d().model(SCHEDULE)
    x_T = prior_sample(SCHEDULE, 64, 2)
    ts = timesteps(spacing, 10, SCHEDULE)

    def comfy(max_order, moved=False):
        return k_diffusion_run(lambda denoiser, x, sigmas, disable: _restated_ipndm_v(
            denoiser, x, sigmas, max_order=max_order, parenthesis_moved=moved), model, x_T, ts)

    assert _relative(sample("ipndm_v", model, x_T, ts, max_order=2), comfy(2)) < 1e-8
    ours = sample("ipndm_v", model, x_T, ts, max_order=3)
    assert _relative(ours, comfy(3)) > 0.01
    assert _relative(ours, comfy(3, moved=True)) < 1e-8


def test_comfyuis_ipndm_v_at_its_default_order_4_converges_at_order_2_where_ours_is_at_4():
    """At max_order 4 (ComfyUI's default) its weights do not even sum to 1 unless the steps' ratios are equal
    (h_n_1/h_n_2 = h_n_2/h_n_3), parenthesis moved or not. On karras grids of the ring (std 0.25, 100 samples,
    16-128 steps) it measured order 1.82 against ipndm_v's 3.38, and at 128 steps a 10x larger error
    (2.4e-4 against 2.4e-5); at 16 steps its error was the smaller (7.9e-3 against 2.7e-2)."""
    from solvers.reference import reference_solve
    from support import fitted_slope

    model = ring2d(std=0.25).model(SCHEDULE)
    x_T = prior_sample(SCHEDULE, 100, 2)
    exact = reference_solve(model, x_T, SCHEDULE.t_max, SCHEDULE.t_min, rtol=1e-12, atol=1e-12)
    ns, errors = (16, 32, 64, 128), {"ours": [], "comfy": []}
    for n in ns:
        ts = timesteps("karras", n, SCHEDULE)
        errors["ours"].append((sample("ipndm_v", model, x_T, ts) - exact).norm(dim=1).median().item())
        theirs = k_diffusion_run(_restated_ipndm_v, model, x_T, ts)
        errors["comfy"].append((theirs - exact).norm(dim=1).median().item())
    assert fitted_slope(ns, errors["ours"]) > 3 and fitted_slope(ns, errors["comfy"]) < 2.2
    assert errors["comfy"][-1] > 5 * errors["ours"][-1]


def _restated_seeds(denoiser, x, sigmas, disable=True, eta=1.0, noise_sampler=None, fractions=(0.5,),
                    solver_type="phi_1"):
    """ComfyUI's sample_seeds_2 / sample_seeds_3 as published (x~ = x/alpha, so alpha = 1; its eta is our eta^2)."""
    def phi_1(h):
        return torch.expm1(h)

    def phi_2(h):
        return (torch.expm1(h) - h) / h

    for sigma, sigma_next in zip(sigmas[:-1], sigmas[1:]):
        lam, lam_next = -torch.log(sigma), -torch.log(sigma_next)
        h = lam_next - lam
        h_eta = h * (eta + 1)
        denoised = denoiser(x, sigma.expand(len(x)))
        stages = [torch.exp(-torch.lerp(lam, lam_next, r)) for r in fractions]
        first = stages[0]
        r1 = fractions[0]
        x_1 = first / sigma * torch.exp(-r1 * h * eta) * x - phi_1(-r1 * h_eta) * denoised
        noise = torch.sqrt(-torch.expm1(-2 * r1 * h * eta)) * noise_sampler(sigma, first)
        x_1 = x_1 + noise * first
        denoised_1 = denoiser(x_1, first.expand(len(x)))
        last_r, last_sigma, last_denoised = r1, first, denoised_1
        if len(fractions) == 2:
            r2, second = fractions[1], stages[1]
            a2 = r2 / r1 * phi_2(-r2 * h_eta)
            x_2 = second / sigma * torch.exp(-r2 * h * eta) * x - ((phi_1(-r2 * h_eta) - a2) * denoised + a2 * denoised_1)
            factor = (r1 - r2) * h * eta
            noise = noise * torch.exp(factor) + torch.sqrt(-torch.expm1(2 * factor)) * noise_sampler(first, second)
            x_2 = x_2 + noise * second
            last_r, last_sigma, last_denoised = r2, second, denoiser(x_2, second.expand(len(x)))
        if solver_type == "phi_1":
            mixed = torch.lerp(denoised, last_denoised, 1 / (2 * last_r))
            x = sigma_next / sigma * torch.exp(-h * eta) * x - phi_1(-h_eta) * mixed
        else:
            b = phi_2(-h_eta) / last_r
            x = sigma_next / sigma * torch.exp(-h * eta) * x - ((phi_1(-h_eta) - b) * denoised + b * last_denoised)
        factor = (last_r - 1) * h * eta
        noise = noise * torch.exp(factor) + torch.sqrt(-torch.expm1(2 * factor)) * noise_sampler(last_sigma, sigma_next)
        x = x + noise * sigma_next
    return x


@pytest.mark.parametrize("name, options, restated", [
    ("seeds_2", {}, {}), ("seeds_2", {"solver_type": "phi_2"}, {"solver_type": "phi_2"}),
    ("seeds_3", {}, {"fractions": (1 / 3, 2 / 3), "solver_type": "phi_2"})], ids=["seeds_2", "seeds_2-phi_2", "seeds_3"])
@pytest.mark.parametrize("eta", [1.0, 0.5])
def test_seeds_agree_with_comfyuis_published_update_on_the_same_noise(name, options, restated, eta):
    model = ring2d().model(SCHEDULE)
    x_T = prior_sample(SCHEDULE, 64, 2)
    ts = timesteps("karras", 10, SCHEDULE)
    noise = ReplayedNoise(x_T.shape, 10 * (len(restated.get("fractions", (0.5,))) + 1))
    ours = sample(name, model, x_T, ts, eta=eta, noise=noise, **options)
    theirs = k_diffusion_run(_restated_seeds, model, x_T, ts, eta=eta * eta, noise_sampler=noise.sampler, **restated)
    assert noise.all_used()
    relative = ((ours - theirs).abs().max() / theirs.abs().max()).item()
    assert relative < 1e-8, f"{name} {options} at eta {eta} vs ComfyUI's update: relative difference {relative:.2e}"


def _restated_er_sde(denoiser, x, sigmas, disable=True, noise_sampler=None, points=20_000):
    """ComfyUI's sample_er_sde as published (x~ = x/alpha), its integrals of 1/phi by a midpoint rule on ``points``
    points in float64 instead of its 200-point float32 Riemann sum (independent of our Gauss-Legendre)."""
    def scale(v):
        return v * (torch.exp(v**0.3) + 10.0)

    old = old_d = None
    for i, (sigma, sigma_next) in enumerate(zip(sigmas[:-1], sigmas[1:])):
        denoised = denoiser(x, sigma.expand(len(x)))
        r = scale(sigma_next) / scale(sigma)
        x = r * x + (1 - r) * denoised
        if i >= 1:
            dt = sigma_next - sigma
            step = -dt / points
            positions = sigma_next + (torch.arange(points, dtype=torch.float64) + 0.5) * step
            d = (denoised - old) / (sigma - sigmas[i - 1])
            x = x + (dt + torch.sum(1 / scale(positions)) * step * scale(sigma_next)) * d
            if i >= 2:
                s_u = torch.sum((positions - sigma) / scale(positions)) * step
                u = (d - old_d) / ((sigma - sigmas[i - 2]) / 2)
                x = x + (dt**2 / 2 + s_u * scale(sigma_next)) * u
            old_d = d
        x = x + noise_sampler(sigma, sigma_next) * torch.sqrt(sigma_next**2 - sigma**2 * r**2)
        old = denoised
    return x


def test_er_sde_agrees_with_comfyuis_published_update_on_the_same_noise():
    model = ring2d().model(SCHEDULE)
    x_T = prior_sample(SCHEDULE, 64, 2)
    ts = timesteps("karras", 10, SCHEDULE)
    noise = ReplayedNoise(x_T.shape, 10)
    ours = sample("er_sde", model, x_T, ts, noise=noise)
    theirs = k_diffusion_run(_restated_er_sde, model, x_T, ts, noise_sampler=noise.sampler)
    assert noise.all_used()
    relative = ((ours - theirs).abs().max() / theirs.abs().max()).item()
    assert relative < 1e-8, f"er_sde vs ComfyUI's update: relative difference {relative:.2e}"


def test_seeds_2_without_noise_is_dpmpp_2s():
    model = ring2d().model(SCHEDULE)
    x_T = prior_sample(SCHEDULE, 64, 2)
    ts = timesteps("logsnr", 10, SCHEDULE)
    torch.testing.assert_close(sample("seeds_2", model, x_T, ts), sample("dpmpp_2s", model, x_T, ts), rtol=0, atol=1e-12)


def test_res_multistep_is_dpmpp_3ms_taylor_second_order_step():
    model = ring2d().model(SCHEDULE)
    x_T = prior_sample(SCHEDULE, 16, 2)
    ts = timesteps("logsnr", 2, SCHEDULE)  # dpmpp_3m's steps 1-2: first order, then the 2M update
    torch.testing.assert_close(sample("res_multistep", model, x_T, ts),
                               sample("dpmpp_3m", model, x_T, ts, second_order="taylor"), rtol=0, atol=1e-12)


@pytest.mark.parametrize("name, peer", [("euler_ancestral", "sample_euler_ancestral"), ("dpmpp_sde", "sample_dpmpp_sde")])
def test_ancestral_samplers_above_eta_one_cap_the_noise_as_k_diffusion(name, peer):
    """eta 2 on 4 steps asks for more noise than sigma_s on the coarse steps: both cap it at sigma_s. (k-diffusion's
    sample_dpm_2_ancestral drops the noise on such a step: a by-design row of the conformance table.)"""
    model = ring2d().model(SCHEDULE)
    x_T = prior_sample(SCHEDULE, 64, 2)
    ts = timesteps("karras", 4, SCHEDULE)
    noise = ReplayedNoise(x_T.shape, 4 * (2 if name == "dpmpp_sde" else 1))
    ours = sample(name, model, x_T, ts, eta=2.0, noise=noise)
    theirs = k_diffusion_run(getattr(k_diffusion_sampling(), peer), model, x_T, ts, eta=2.0,
                             noise_sampler=noise.sampler)
    assert noise.all_used() and torch.isfinite(ours).all()
    relative = ((ours - theirs).abs().max() / theirs.abs().max()).item()
    assert relative < 1e-8, f"{name} at eta 2 vs k-diffusion {peer}: relative difference {relative:.2e}"


def test_dpm_2_ancestral_adds_the_capped_noise_where_k_diffusion_drops_it():
    """On a step whose noise takes all of sigma_s, ours is alpha_s x0 + sigma_s z (1 NFE); k-diffusion's Euler branch
    returns x0 with no noise, so its sample there has none at a noise level sigma_s > 0."""
    model = ring2d().model(SCHEDULE)
    x_T = prior_sample(SCHEDULE, 64, 2)
    ts = timesteps("karras", 1, SCHEDULE)  # one step from t_max to t_min: eta 2 caps it
    z = prior_sample(SCHEDULE, 64, 2, seed=9) / float(SCHEDULE.sigma(SCHEDULE.t_max))
    model.reset_nfe()
    ours = sample("dpm_2_ancestral", model, x_T, ts, eta=2.0, noise=lambda t, s, like: z)
    assert model.nfe == 1
    (alpha_s, sigma_s), t_max = SCHEDULE.alpha_sigma(float(ts[-1])), float(ts[0])
    torch.testing.assert_close(ours, alpha_s * model.x0(x_T, t_max) + sigma_s * z, rtol=0, atol=1e-12)
    theirs = k_diffusion_run(k_diffusion_sampling().sample_dpm_2_ancestral, model, x_T, ts, eta=2.0,
                             noise_sampler=lambda sigma, sigma_next: z)
    torch.testing.assert_close(theirs, alpha_s * model.x0(x_T, t_max), rtol=0, atol=1e-12)


def test_dpm_2_ancestral_without_noise_is_dpm_solver_2():
    from solvers.exponential import dpm_2_ancestral

    model = ring2d().model(SCHEDULE)
    x_T = prior_sample(SCHEDULE, 64, 2)
    ts = timesteps("logsnr", 10, SCHEDULE)
    ancestral = dpm_2_ancestral(model, x_T, ts, eta=0.0, noise=None)
    relative = ((ancestral - sample("dpm_solver_2", model, x_T, ts)).abs().max() / ancestral.abs().max()).item()
    assert relative < 1e-12, relative


@pytest.mark.parametrize("order", [2, 3])
@pytest.mark.parametrize("rtol, atol", [(0.05, 0.0078), (1e-3, 1e-3)])
def test_dpm_adaptive_agrees_with_k_diffusion_step_for_step(order, rtol, atol):
    """Same samples (1e-8; k-diffusion keeps atol and rtol in float32, which moves them by ~1e-10) and the same
    accepted and rejected steps."""
    model = ring2d().model(SCHEDULE)
    x_T = prior_sample(SCHEDULE, 64, 2)
    ts = timesteps("uniform", 1, SCHEDULE)
    stats, info = {}, {}
    ours = sample("dpm_adaptive", model, x_T, ts, order=order, rtol=rtol, atol=atol, stats=stats)

    def peer(denoiser, x, sigmas, disable):
        x, found = k_diffusion_sampling().sample_dpm_adaptive(denoiser, x, sigmas[-1], sigmas[0], disable=disable,
                                                              order=order, rtol=rtol, atol=atol, return_info=True)
        info.update(found)
        return x

    theirs = k_diffusion_run(peer, model, x_T, ts)
    relative = ((ours - theirs).abs().max() / theirs.abs().max()).item()
    assert relative < 1e-8, f"dpm_adaptive order {order} vs k-diffusion: relative difference {relative:.2e}"
    assert (stats["accepted"], stats["rejected"]) == (info["n_accept"], info["n_reject"])


def test_dpmpp_sde_without_noise_is_dpmpp_2s():
    from solvers.exponential import dpmpp_sde

    model = ring2d().model(SCHEDULE)
    x_T = prior_sample(SCHEDULE, 64, 2)
    ts = timesteps("logsnr", 10, SCHEDULE)
    torch.testing.assert_close(dpmpp_sde(model, x_T, ts, eta=0.0, noise=None), sample("dpmpp_2s", model, x_T, ts),
                               rtol=0, atol=1e-12)


def test_the_two_3m_forms_differ_only_from_the_third_step_on():
    """dpmpp_3m (2 phi_3) and dpmpp_3m_phi3 share steps 1-2, then differ by the D2 weight."""
    model = ring2d().model(SCHEDULE)
    x_T = prior_sample(SCHEDULE, 64, 2)
    for steps, differ in ((2, False), (3, True)):
        ts = timesteps("logsnr", steps, SCHEDULE)
        same = torch.equal(sample("dpmpp_3m", model, x_T, ts), sample("dpmpp_3m_phi3", model, x_T, ts))
        assert same != differ, steps


def test_lower_order_final_takes_the_last_2m_step_at_first_order():
    """dpmpp_2m with lower_order_final: the first n - 1 steps as usual, then one DDIM (first-order) step."""
    model = ring2d().model(SCHEDULE)
    x_T = prior_sample(SCHEDULE, 16, 2)
    ts = timesteps("logsnr", 8, SCHEDULE)
    expected = sample("ddim", model, sample("dpmpp_2m", model, x_T, ts[:-1]), ts[-2:])
    torch.testing.assert_close(sample("dpmpp_2m", model, x_T, ts, lower_order_final=True), expected,
                               rtol=0, atol=1e-12)


def test_the_flow_prediction_samples_as_the_eps_prediction():
    schedule = FlowMatching(shift=3.0)
    ts = timesteps("logsnr", 10, schedule)
    x_T = prior_sample(schedule, 64, 2)
    for name in ("ddim", "dpmpp_2m", "heun"):
        torch.testing.assert_close(sample(name, flow_prediction_model(schedule), x_T, ts),
                                   sample(name, ring2d().model(schedule), x_T, ts), rtol=1e-12, atol=1e-12)


def test_midpoint_is_torchdiffeqs_fixed_grid_midpoint():
    import torchdiffeq

    model, ts = ring2d().model(SCHEDULE), timesteps("logsnr", 12, SCHEDULE)
    x_T = prior_sample(SCHEDULE, 64, 2)
    theirs = torchdiffeq.odeint(lambda t, y: model.drift(y, float(t)), x_T, ts, method="midpoint")[-1]
    torch.testing.assert_close(sample("midpoint", model, x_T, ts), theirs, rtol=1e-12, atol=1e-12)


def test_gradient_estimation_with_gamma_one_is_ddim():
    model = ring2d().model(SCHEDULE)
    x_T = prior_sample(SCHEDULE, 64, 2)
    ts = timesteps("logsnr", 10, SCHEDULE)
    one, ddim = sample("gradient_estimation", model, x_T, ts, gamma=1.0), sample("ddim", model, x_T, ts)
    assert ((one - ddim).abs().max() / ddim.abs().max()).item() < 1e-12
    assert (sample("gradient_estimation", model, x_T, ts) - ddim).abs().max() > 1e-3  # gamma = 2 moves the samples


def _restated_sa_solver(denoiser, x, sigmas, disable=True, noise_sampler=None, predictor_order=3, corrector_order=4,
                        sigma_noise=(0.0, float("inf")), simple_order_2=False):
    """ComfyUI's sample_sa_solver as published (x~ = x/alpha, lambda = -log sigma~, tau = 1 where the step's next sigma
    lies in ``sigma_noise``; coefficients from its closed-form exponential integrals and a Vandermonde solve, or its
    simple order-2 ones), restated; the grid ends above sigma 0, so no order is lowered at the end."""
    def b_coefficients(lams, lam_s, lam_t, tau, corrector):
        kappa, h = 1 + tau**2, lam_t - lam_s
        if simple_order_2 and len(lams) == 2:
            if corrector:
                newer = 0.5 * kappa * h
                return torch.stack([-torch.expm1(-h * kappa) - newer, newer])
            older = 0.5 * kappa * h**2 / (lams[-2] - lam_s)
            return torch.stack([older, -torch.expm1(-h * kappa) - older])
        p = torch.arange(len(lams), dtype=torch.float64)
        products = lam_t**p - lam_s**p * torch.exp(-kappa * h)
        depth = p[:, None] - p[None, :]
        log_factorial = (p + 1).lgamma()
        recursive = (log_factorial[:, None] - log_factorial[None, :]) - depth * torch.log(torch.tensor(kappa))
        recursive = (recursive.exp() * torch.where(depth % 2 == 0, 1.0, -1.0)).tril()
        return torch.linalg.solve(torch.vander(lams, len(lams), increasing=True).T, recursive @ products)

    lams = -torch.log(sigmas)
    x_pred, h, tau, noise, history = x, 0.0, 0.0, 0.0, []
    for i in range(len(sigmas) - 1):
        history = (history + [denoiser(x_pred, sigmas[i].expand(len(x)))])[-max(predictor_order, corrector_order):]
        if i == 0:
            x = x_pred
        else:
            k = min(corrector_order, len(history))
            b = b_coefficients(lams[i - k + 1:i + 1], lams[i - 1], lams[i], tau, True)
            x = sigmas[i] / sigmas[i - 1] * torch.exp(-tau**2 * h) * x + sum(c * d for c, d in zip(b, history[-k:]))
            x = x + noise if tau > 0 else x
        tau = 1.0 if sigma_noise[0] <= sigmas[i + 1] <= sigma_noise[1] else 0.0
        k = min(predictor_order, len(history))
        b = b_coefficients(lams[i - k + 1:i + 1], lams[i], lams[i + 1], tau, False)
        h = lams[i + 1] - lams[i]
        x_pred = sigmas[i + 1] / sigmas[i] * torch.exp(-tau**2 * h) * x + sum(c * d for c, d in zip(b, history[-k:]))
        if tau > 0:
            noise = noise_sampler(sigmas[i], sigmas[i + 1]) * sigmas[i + 1] * torch.sqrt(-torch.expm1(-2 * tau**2 * h))
            x_pred = x_pred + noise
    return x_pred


class _StepNoise:
    """One standard normal per grid step, found by the step's start: the same draw for a solver that draws every step
    and one that draws only where its noise is on (ComfyUI's SA-Solver)."""

    def __init__(self, ts, shape, seed: int = 5):
        g = torch.Generator().manual_seed(seed)
        self.times = ts.tolist()
        self.draws = [torch.randn(shape, generator=g, dtype=torch.float64) for _ in self.times[:-1]]
        self.sigmas = torch.exp(-SCHEDULE.lambda_(ts))

    def __call__(self, t, s, like):
        return self.draws[self.times.index(t)]

    def sampler(self, sigma, sigma_next):
        return self.draws[int(torch.argmin((self.sigmas - sigma).abs()))]


@pytest.mark.parametrize("simple_order_2", [False, True])
def test_sa_solver_agrees_with_comfyuis_published_update_under_its_conventions(simple_order_2):
    """ComfyUI's three conventions as our options: noise decided by each step's end sigma (noise_switch="end"), its
    interval in sigma~ (ComfyUI's sigma), and the plain Lagrange two-node coefficients (simple_order_2=False, its
    default); ComfyUI's simple_order_2=True is our default O(h^3) modification."""
    model = ring2d().model(SCHEDULE)
    x_T = prior_sample(SCHEDULE, 64, 2)
    ts = timesteps("karras", 12, SCHEDULE)
    noise, interval = _StepNoise(ts, x_T.shape), (0.3, 8.0)
    ours = sample("sa_solver", model, x_T, ts, eta=1.0, noise=noise, noise_switch="end", simple_order_2=simple_order_2,
                  noise_sigma_min=interval[0], noise_sigma_max=interval[1])
    theirs = k_diffusion_run(_restated_sa_solver, model, x_T, ts, noise_sampler=noise.sampler, sigma_noise=interval,
                             simple_order_2=simple_order_2)
    relative = ((ours - theirs).abs().max() / theirs.abs().max()).item()
    assert relative < 1e-8, f"sa_solver vs ComfyUI's update: relative difference {relative:.2e}"
    started = sample("sa_solver", model, x_T, ts, eta=1.0, noise=noise, simple_order_2=simple_order_2,
                     noise_sigma_min=interval[0], noise_sigma_max=interval[1])
    assert ((started - theirs).abs().max() / theirs.abs().max()).item() > 1e-3  # the switch by start time differs


def test_sa_solvers_noise_interval_means_the_same_noise_levels_on_every_schedule():
    """The same sigma~ grid on VPLinear and on EDM (where t = sigma~) gives the same samples in x~ = x/alpha: the
    exact mixture's eps and SA-Solver's step depend on (x~, sigma~) alone, and the default interval switches the
    noise on the same steps (an interval in each schedule's own time would switch it on different ones)."""
    from solvers.schedules import EDM

    sigmas = torch.logspace(math.log10(60.0), math.log10(0.05), 13, dtype=torch.float64)
    x_tilde = prior_sample(EDM(), 64, 2) / EDM().t_max * 60.0
    results = []
    for schedule, ts in ((SCHEDULE, SCHEDULE.t_of_lambda(-torch.log(sigmas))), (EDM(), sigmas)):
        noise = _StepNoise(ts, x_tilde.shape)
        x_T = float(schedule.alpha(ts[0])) * x_tilde
        out = sample("sa_solver", ring2d().model(schedule), x_T, ts, eta=1.0, noise=noise)
        results.append(out / float(schedule.alpha(ts[-1])))
    assert torch.allclose(results[0], results[1], rtol=1e-8, atol=1e-10)
