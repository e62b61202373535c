"""Our solvers against the code users run: k-diffusion 0.1.1.post1's samplers on the same model, time
grid and x_T, in float64.

k-diffusion works in EDM's variables: x~ = x / alpha_t and sigma~ = sigma_t / alpha_t = exp(-lambda_t),
with a denoiser D(x~, sigma~) = x0. Every solver compared here is invariant under that change of
variables, so the results must agree to rounding (1e-8 relative asserted, at most 2e-15 measured).
"""
import pytest
import torch

from bench.models import ring2d
from solvers import DiffusionModel, sample
from solvers.schedules import DiscreteVP, FlowMatching, VPLinear
from solvers.spacing import timesteps
from support import k_diffusion_sampling, prior_sample

SCHEDULE = VPLinear()


def _k_diffusion_run(sampler, model, x_T, ts, **kwargs):
    """k-diffusion's ``sampler`` on our model and grid, mapped back to our variables."""
    def denoiser(x_tilde, sigma_tilde):
        t = SCHEDULE.t_of_lambda(-torch.log(sigma_tilde[0]))
        return model.x0(float(SCHEDULE.alpha(t)) * x_tilde, float(t))

    sigmas = torch.exp(-SCHEDULE.lambda_(ts))
    alpha_start, alpha_end = float(SCHEDULE.alpha(ts[0])), float(SCHEDULE.alpha(ts[-1]))
    return alpha_end * sampler(denoiser, x_T / alpha_start, sigmas, disable=True, **kwargs)


def _no_noise(sigma, sigma_next):
    raise AssertionError("k-diffusion drew noise at eta = 0")


PEERS = [
    ("dpmpp_3m_phi3", {"second_order": "taylor"}, "sample_dpmpp_3m_sde", {"eta": 0.0, "noise_sampler": _no_noise}),
    ("dpmpp_2m", {}, "sample_dpmpp_2m", {}),
    ("dpmpp_2s", {}, "sample_dpmpp_2s_ancestral", {"eta": 0.0}),
    ("ddim", {}, "sample_euler", {}),
    ("edm_stochastic", {}, "sample_heun", {}),
]


@pytest.mark.parametrize("name, options, peer, peer_kwargs", PEERS, ids=[f"{p[0]}-vs-{p[2]}" for p in PEERS])
@pytest.mark.parametrize("spacing", ["logsnr", "karras"])
def test_agrees_with_k_diffusion(name, options, peer, peer_kwargs, spacing):
    model = ring2d().model(SCHEDULE)
    x_T = prior_sample(SCHEDULE, 64, 2)
    ts = timesteps(spacing, 10, SCHEDULE)
    ours = sample(name, model, x_T, ts, **options)
    theirs = _k_diffusion_run(getattr(k_diffusion_sampling(), peer), model, x_T, ts, **peer_kwargs)
    relative = ((ours - theirs).abs().max() / theirs.abs().max()).item()
    assert relative < 1e-8, f"{name} vs k-diffusion {peer}: relative difference {relative:.2e}"


class _ReplayedNoise:
    """The same standard normal draws, in order, for our solver (noise(t, s, like)) and k-diffusion's
    noise_sampler(sigma, sigma_next): both draw the same number per step, in the same order, and scale them
    themselves."""

    def __init__(self, shape, draws, seed=5):
        g = torch.Generator().manual_seed(seed)
        self.draws = [torch.randn(shape, generator=g, dtype=torch.float64) for _ in range(draws)]
        self.ours, self.theirs = iter(self.draws), iter(self.draws)

    def __call__(self, t, s, like):
        return next(self.ours)

    def sampler(self, sigma, sigma_next):
        return next(self.theirs)


ANCESTRAL_PEERS = [("euler_ancestral", "sample_euler_ancestral"), ("dpm_2_ancestral", "sample_dpm_2_ancestral"),
                   ("ddim", "sample_euler_ancestral"), ("dpmpp_sde", "sample_dpmpp_sde")]
DRAWS_PER_STEP = {"dpmpp_sde": 2}  # [t, t_mid] then [t, s]


@pytest.mark.parametrize("name, peer", ANCESTRAL_PEERS, ids=[f"{n}-vs-{p}" for n, p in ANCESTRAL_PEERS])
@pytest.mark.parametrize("eta", [1.0, 0.5])
@pytest.mark.parametrize("spacing", ["logsnr", "karras"])
def test_ancestral_samplers_agree_with_k_diffusion_on_the_same_noise(name, peer, eta, spacing):
    model = ring2d().model(SCHEDULE)
    x_T = prior_sample(SCHEDULE, 64, 2)
    ts = timesteps(spacing, 10, SCHEDULE)
    noise = _ReplayedNoise(x_T.shape, 10 * DRAWS_PER_STEP.get(name, 1))
    ours = sample(name, model, x_T, ts, eta=eta, noise=noise)
    theirs = _k_diffusion_run(getattr(k_diffusion_sampling(), peer), model, x_T, ts, eta=eta,
                              noise_sampler=noise.sampler)
    assert next(noise.ours, None) is None and next(noise.theirs, None) is None  # the same draws, all used
    relative = ((ours - theirs).abs().max() / theirs.abs().max()).item()
    assert relative < 1e-8, f"{name} vs k-diffusion {peer} at eta {eta}: relative difference {relative:.2e}"


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
    theirs = _k_diffusion_run(restated, model, x_T, ts)
    relative = ((ours - theirs).abs().max() / theirs.abs().max()).item()
    assert relative < 1e-8, f"{name} vs ComfyUI's update: relative difference {relative:.2e}"


def test_res_multistep_is_dpmpp_3ms_taylor_second_order_step():
    model = ring2d().model(SCHEDULE)
    x_T = prior_sample(SCHEDULE, 16, 2)
    ts = timesteps("logsnr", 2, SCHEDULE)  # dpmpp_3m's steps 1-2: first order, then the 2M update
    torch.testing.assert_close(sample("res_multistep", model, x_T, ts),
                               sample("dpmpp_3m", model, x_T, ts, second_order="taylor"), rtol=0, atol=1e-12)


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

    theirs = _k_diffusion_run(peer, model, x_T, ts)
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


def _diffusers_run(scheduler_class, config, name, options, n=10):
    """(ours, diffusers') samples: the scheduler's own loop on the ring mixture under the scheduler's
    betas (as a DiscreteVP), the same x_T and the same discrete grid ending at timestep 0."""
    scheduler = scheduler_class(num_train_timesteps=1000, beta_schedule="linear", final_sigmas_type="sigma_min", **config)
    cumulative = scheduler.alphas_cumprod.double()  # the scheduler's own float32 products, exactly
    schedule = DiscreteVP(1 - cumulative / torch.cat([torch.ones(1, dtype=torch.float64), cumulative[:-1]]))
    model = ring2d().model(schedule)
    scheduler.set_timesteps(n)
    steps = [int(v) for v in scheduler.timesteps]
    x_T = prior_sample(schedule, 64, 2)
    x = x_T
    for step in scheduler.timesteps:
        x = scheduler.step(model.eps(x, (int(step) + 1) / 1000), step, x).prev_sample
    ts = torch.tensor([(s + 1) / 1000 for s in steps] + [1 / 1000], dtype=torch.float64)
    return sample(name, model, x_T, ts, **options), x


DIFFUSERS_CASES = [
    *[("DPMSolverMultistepScheduler", {"solver_order": 3, "algorithm_type": "dpmsolver++", "solver_type": form,
                                       "lower_order_final": final},
       "dpmpp_3m_phi3", {"second_order": "midpoint" if form == "midpoint" else "taylor", "lower_order_final": final})
      for form in ("midpoint", "heun") for final in (False, True)],
    *[("DPMSolverMultistepScheduler", {"solver_order": 2, "algorithm_type": "dpmsolver++", "lower_order_final": final},
       "dpmpp_2m", {"lower_order_final": final}) for final in (False, True)],
    *[("UniPCMultistepScheduler", {"solver_order": order, "solver_type": variant, "lower_order_final": final},
       f"unipc_{order}", {"variant": variant, "lower_order_final": final})
      for order in (2, 3) for variant in ("bh1", "bh2") for final in (False, True)],
]


@pytest.mark.parametrize("scheduler, config, name, options", DIFFUSERS_CASES,
                         ids=[f"{c[2]}-" + "-".join(f"{v}" for v in c[3].values()) for c in DIFFUSERS_CASES])
def test_agrees_with_diffusers_schedulers(scheduler, config, name, options):
    """diffusers keeps sigmas in float32, so agreement is to float32 rounding (measured <= 3.6e-7)."""
    import diffusers

    ours, theirs = _diffusers_run(getattr(diffusers, scheduler), config, name, options)
    relative = ((ours - theirs).abs().max() / theirs.abs().max()).item()
    assert relative < 2e-6, f"{name} {options} vs diffusers {scheduler} {config}: {relative:.2e}"


def test_diffusers_3m_is_the_phi3_form_not_ours():
    """Negative control for the tolerance above: our Taylor-consistent dpmpp_3m is 0.3 away (10 steps)."""
    import diffusers

    ours, theirs = _diffusers_run(diffusers.DPMSolverMultistepScheduler,
                                  {"solver_order": 3, "algorithm_type": "dpmsolver++", "lower_order_final": False},
                                  "dpmpp_3m", {})
    assert ((ours - theirs).abs().max() / theirs.abs().max()).item() > 0.1


def _flow_model(schedule):
    """ring2d under a FlowMatching schedule, predicting the flow u = eps - x0 from its exact eps."""
    exact = ring2d().model(schedule)

    def flow(x, t):
        alpha, sigma = exact.coefficients(x, t)
        eps = exact.net(x, t)
        return eps - (x - sigma * eps) / alpha

    return DiffusionModel(flow, schedule, "flow")


def test_the_flow_prediction_samples_as_the_eps_prediction():
    schedule = FlowMatching(shift=3.0)
    ts = timesteps("logsnr", 10, schedule)
    x_T = prior_sample(schedule, 64, 2)
    for name in ("ddim", "dpmpp_2m", "heun"):
        torch.testing.assert_close(sample(name, _flow_model(schedule), x_T, ts),
                                   sample(name, ring2d().model(schedule), x_T, ts), rtol=1e-12, atol=1e-12)


def test_flow_matching_euler_agrees_with_diffusers():
    """FlowMatchEulerDiscreteScheduler (shift 3) given our unshifted times as its sigmas shifts them to our
    sigma_t, and its loop (Euler in sigma, the last step to sigma = 0) is our ddim followed by the x0
    prediction. diffusers' step casts the sample to float32, so agreement is to float32 rounding (the
    float64 1e-8 of the other peers is out of reach here); measured 8.5e-8."""
    import diffusers

    schedule = FlowMatching(shift=3.0, t_max=0.99, t_min=0.01)
    ts = torch.linspace(0.99, 0.01, 12, dtype=torch.float64)
    scheduler = diffusers.FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0)
    scheduler.set_timesteps(sigmas=ts.tolist())
    torch.testing.assert_close(scheduler.sigmas[:-1].double(), schedule.sigma(ts), rtol=1e-6, atol=0)
    assert float(scheduler.sigmas[-1]) == 0.0
    model, x_T = _flow_model(schedule), prior_sample(schedule, 64, 2)
    x = x_T
    for t, timestep in zip(ts, scheduler.timesteps):
        x = scheduler.step(model.net(x, torch.full((len(x),), float(t), dtype=torch.float64)), timestep, x).prev_sample
    ours = sample("ddim", model, x_T, ts)
    ours = model.x0(ours, ts[-1])
    relative = ((ours - x.double()).abs().max() / x.abs().max()).item()
    assert relative < 2e-6, relative


def test_midpoint_is_torchdiffeqs_fixed_grid_midpoint():
    import torchdiffeq

    model, ts = ring2d().model(SCHEDULE), timesteps("logsnr", 12, SCHEDULE)
    x_T = prior_sample(SCHEDULE, 64, 2)
    theirs = torchdiffeq.odeint(lambda t, y: model.drift(y, float(t)), x_T, ts, method="midpoint")[-1]
    torch.testing.assert_close(sample("midpoint", model, x_T, ts), theirs, rtol=1e-12, atol=1e-12)


def test_exponential_spacing_is_k_diffusions():
    k_sampling = k_diffusion_sampling()
    ts = timesteps("exponential", 12, SCHEDULE)
    sigmas = torch.exp(-SCHEDULE.lambda_(ts))
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)  # k-diffusion builds its grid in the default dtype
    try:
        theirs = k_sampling.get_sigmas_exponential(13, float(sigmas[-1]), float(sigmas[0]))[:-1]
    finally:
        torch.set_default_dtype(previous)
    torch.testing.assert_close(sigmas, theirs, rtol=1e-12, atol=0)


def test_gradient_estimation_with_gamma_one_is_ddim():
    model = ring2d().model(SCHEDULE)
    x_T = prior_sample(SCHEDULE, 64, 2)
    ts = timesteps("logsnr", 10, SCHEDULE)
    one, ddim = sample("gradient_estimation", model, x_T, ts, gamma=1.0), sample("ddim", model, x_T, ts)
    assert ((one - ddim).abs().max() / ddim.abs().max()).item() < 1e-12
    assert (sample("gradient_estimation", model, x_T, ts) - ddim).abs().max() > 1e-3  # gamma = 2 moves the samples
