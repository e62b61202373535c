"""The CFG++ samplers against ComfyUI's published code (comfy/k_diffusion/sampling.py at commit
02159d814dee609acc27994c1bf25fc5b40e2aaa), restated here in k-diffusion's variables because ComfyUI does not install:
the same guided model (the class-conditional mixture, exact scores, float64), the same grid, x_T, labels and noise
draws, to 1e-8 relative. ComfyUI's sampler sees the guided denoiser D through ``model(x, sigma)`` and the
unconditional one U through its post-CFG hook; here ``GuidedDenoiser`` plays both.
"""
import math

import pytest
import torch

from bench.conformance.peers import ReplayedNoise
from bench.models import gmm_classes, guided_model
from solvers import sample
from solvers.schedules import VPLinear
from solvers.spacing import timesteps
from support import prior_sample

SCHEDULE = VPLinear()
MIXTURE = gmm_classes()


class GuidedDenoiser:
    """k-diffusion's D(x~, sigma~) of a guided model, keeping the unconditional U of its last call (ComfyUI's
    post_cfg_function with disable_cfg1_optimization)."""

    def __init__(self, model):
        self.model, self.uncond = model, None

    def __call__(self, x_tilde, sigma_tilde):
        t = float(SCHEDULE.t_of_lambda(-math.log(float(sigma_tilde[0]))))
        (_, guided), (_, unconditional) = self.model.guided_and_unconditional(float(SCHEDULE.alpha(t)) * x_tilde, t)
        self.uncond = unconditional
        return guided


def _ancestral_step(sigma_from, sigma_to, eta):
    if not eta:
        return sigma_to, 0.0
    sigma_up = min(sigma_to, eta * (sigma_to**2 * (sigma_from**2 - sigma_to**2) / sigma_from**2) ** 0.5)
    return (sigma_to**2 - sigma_up**2) ** 0.5, sigma_up


def comfy_euler_ancestral_cfg_pp(model, x, sigmas, eta=1.0, noise_sampler=None):
    """sample_euler_ancestral_cfg_pp (not RF: alpha = 1 in k-diffusion's variables); eta 0: sample_euler_cfg_pp."""
    s_in = x.new_ones([x.shape[0]])
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * s_in)
        d = (x - model.uncond) / sigmas[i]
        sigma_down, sigma_up = _ancestral_step(sigmas[i], sigmas[i + 1], eta)
        x = denoised + sigma_down * d
        if eta > 0:
            x = x + noise_sampler(sigmas[i], sigmas[i + 1]) * sigma_up
    return x


def comfy_dpmpp_2s_ancestral_cfg_pp(model, x, sigmas, eta=1.0, noise_sampler=None):
    """sample_dpmpp_2s_ancestral_cfg_pp (not RF)."""
    s_in = x.new_ones([x.shape[0]])
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * s_in)
        uncond = model.uncond
        guidance_vector = denoised - uncond
        sigma_down, sigma_up = _ancestral_step(sigmas[i], sigmas[i + 1], eta)
        t, t_next = -torch.log(sigmas[i]), -torch.log(torch.as_tensor(sigma_down, dtype=sigmas.dtype))
        h = t_next - t
        s = t + h / 2
        x_2 = (torch.exp(-s) / torch.exp(-t)) * x - torch.expm1(-h / 2) * uncond
        model(x_2, torch.exp(-s) * s_in)
        x = (torch.exp(-t_next) / torch.exp(-t)) * x - torch.expm1(-h) * model.uncond
        if eta > 0:
            x = x + noise_sampler(sigmas[i], sigmas[i + 1]) * sigma_up
        x = x + guidance_vector
    return x


def comfy_dpmpp_2m_cfg_pp(model, x, sigmas):
    """sample_dpmpp_2m_cfg_pp."""
    s_in = x.new_ones([x.shape[0]])
    old_uncond = None
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * s_in)
        t, t_next = -torch.log(sigmas[i]), -torch.log(sigmas[i + 1])
        h = t_next - t
        if old_uncond is None:
            mix = -torch.exp(-h) * model.uncond
        else:
            r = (t + torch.log(sigmas[i - 1])) / h
            mix = -torch.exp(-h) * model.uncond - torch.expm1(-h) * (1 / (2 * r)) * (denoised - old_uncond)
        x = denoised + mix + torch.exp(-h) * x
        old_uncond = model.uncond
    return x


def comfy_res_multistep_cfg_pp(model, x, sigmas):
    """res_multistep with cfg_pp=True and eta 0 (sample_res_multistep_cfg_pp)."""
    s_in = x.new_ones([x.shape[0]])
    old_uncond, old_sigma_down = None, None
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * s_in)
        sigma_down = sigmas[i + 1]
        if old_uncond is None:
            x = denoised + (x - model.uncond) / sigmas[i] * sigma_down
        else:
            t, t_old, t_next, t_prev = (-torch.log(v) for v in (sigmas[i], old_sigma_down, sigma_down, sigmas[i - 1]))
            h = t_next - t
            c2 = (t_prev - t_old) / h
            phi1 = torch.expm1(-h) / -h
            phi2 = (phi1 - 1.0) / -h
            b1, b2 = phi1 - phi2 / c2, phi2 / c2
            x = x + (denoised - model.uncond)
            x = torch.exp(-h) * x + h * (b1 * model.uncond + b2 * old_uncond)
        old_uncond, old_sigma_down = model.uncond, sigma_down
    return x


def _comfy_run(restated, model, x_T, ts, **kwargs):
    """ComfyUI's sampler on our guided model and grid, mapped back to our variables (x = alpha x~ at the end)."""
    sigmas = torch.exp(-SCHEDULE.lambda_(ts))
    alpha_start, alpha_end = float(SCHEDULE.alpha(ts[0])), float(SCHEDULE.alpha(ts[-1]))
    return alpha_end * restated(GuidedDenoiser(model), x_T / alpha_start, sigmas, **kwargs)


CASES = [("euler_cfg_pp", comfy_euler_ancestral_cfg_pp, 0.0), ("euler_ancestral_cfg_pp", comfy_euler_ancestral_cfg_pp, 1.0),
         ("euler_ancestral_cfg_pp", comfy_euler_ancestral_cfg_pp, 0.6),
         ("dpmpp_2s_ancestral_cfg_pp", comfy_dpmpp_2s_ancestral_cfg_pp, 1.0),
         ("dpmpp_2m_cfg_pp", comfy_dpmpp_2m_cfg_pp, 0.0), ("res_multistep_cfg_pp", comfy_res_multistep_cfg_pp, 0.0)]


@pytest.mark.parametrize("name, restated, eta", CASES, ids=[f"{c[0]}-eta{c[2]:g}" for c in CASES])
@pytest.mark.parametrize("spacing", ["logsnr", "karras"])
@pytest.mark.parametrize("scale", [1.0, 2.5])
def test_cfg_pp_equals_comfyuis_published_code(name, restated, eta, spacing, scale):
    labels = torch.arange(48) % 4
    x_T = prior_sample(SCHEDULE, 48, MIXTURE.dim)
    ts = timesteps(spacing, 8, SCHEDULE)
    ours_model, theirs_model = guided_model(MIXTURE, SCHEDULE, scale), guided_model(MIXTURE, SCHEDULE, scale)
    ours_model.condition_on(labels)
    theirs_model.condition_on(labels)
    ancestral = restated in (comfy_euler_ancestral_cfg_pp, comfy_dpmpp_2s_ancestral_cfg_pp)
    noise = ReplayedNoise(x_T.shape, 8) if eta > 0 else None
    kwargs = {"eta": eta, "noise_sampler": noise and noise.sampler} if ancestral else {}
    ours = sample(name, ours_model, x_T, ts, eta=eta, noise=noise)
    theirs = _comfy_run(restated, theirs_model, x_T, ts, **kwargs)
    if noise is not None:
        assert noise.all_used()
    relative = ((ours - theirs).abs().max() / theirs.abs().max()).item()
    assert relative < 1e-8, f"{name} at scale {scale}, eta {eta} vs ComfyUI's code: relative difference {relative:.2e}"
    assert ours_model.nfe == theirs_model.nfe and ours_model.passes == 2 * ours_model.nfe


@pytest.mark.parametrize("name, base, eta", [("euler_cfg_pp", "ddim", 0.0), ("euler_ancestral_cfg_pp", "euler_ancestral", 1.0),
                                             ("dpmpp_2m_cfg_pp", "dpmpp_2m", 0.0),
                                             ("res_multistep_cfg_pp", "res_multistep", 0.0)])
def test_cfg_pp_at_scale_zero_is_its_base_sampler_on_the_unconditional_model(name, base, eta):
    """D = U at scale 0: every CFG++ term vanishes (dpmpp_2s_ancestral_cfg_pp's base, k-diffusion's ancestral 2S at
    eta > 0, is not registered; its eta-0 form, dpmpp_2s, is checked with the same draws below)."""
    labels = torch.arange(32) % 4
    x_T = prior_sample(SCHEDULE, 32, MIXTURE.dim, seed=2)
    ts = timesteps("logsnr", 10, SCHEDULE)
    guided = guided_model(MIXTURE, SCHEDULE, 0.0)
    guided.condition_on(labels)
    generator = lambda: torch.Generator().manual_seed(3)  # noqa: E731 - the same draws for both
    ours = sample(name, guided, x_T, ts, eta=eta, generator=generator())
    expected = sample(base, MIXTURE.model(SCHEDULE), x_T, ts, eta=eta, generator=generator())
    torch.testing.assert_close(ours, expected, rtol=1e-10, atol=1e-10)


def test_dpmpp_2s_ancestral_cfg_pp_at_scale_zero_and_tiny_eta_approaches_dpmpp_2s():
    labels = torch.arange(32) % 4
    x_T = prior_sample(SCHEDULE, 32, MIXTURE.dim, seed=2)
    ts = timesteps("logsnr", 10, SCHEDULE)
    guided = guided_model(MIXTURE, SCHEDULE, 0.0)
    guided.condition_on(labels)
    ours = sample("dpmpp_2s_ancestral_cfg_pp", guided, x_T, ts, eta=1e-9, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(ours, sample("dpmpp_2s", MIXTURE.model(SCHEDULE), x_T, ts), rtol=1e-7, atol=1e-7)
