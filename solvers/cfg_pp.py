"""CFG++ samplers (Chung et al. 2024, arXiv:2406.08070): classifier-free guidance whose renoising direction is the
unconditional prediction, not the guided one, in the forms ComfyUI ships (comfy/k_diffusion/sampling.py at
commit 02159d814dee609acc27994c1bf25fc5b40e2aaa: sample_euler_cfg_pp, sample_euler_ancestral_cfg_pp,
sample_dpmpp_2m_cfg_pp, sample_dpmpp_2s_ancestral_cfg_pp, sample_res_multistep_cfg_pp).

Each needs a model that gives the guided and the unconditional prediction from one batched call
(``solvers.guidance.GuidedModel.guided_and_unconditional``): one NFE, two network passes, at every guidance scale
(scale 1 included, as ComfyUI's disable_cfg1_optimization). Written in x~ = x / alpha and sigma~ = sigma / alpha,
k-diffusion's variables, with D the guided x0 and U the unconditional one.

None of them is a discretisation of the guided probability-flow ODE: each step adds a guidance term of size
O(D - U), not O(h), so refining the grid does not converge to a limit (no order, no step-doubling estimate),
and at scale 0 (D = U) each is its base sampler on the unconditional model (tested).
"""
from __future__ import annotations

import math

import torch

from solvers.coefficients import log_snr, phi
from solvers.denoising import ancestral_noise_std, ddim_step


def _predictions(model, x: torch.Tensor, t: float):
    """(D, U, eps_U): guided and unconditional x0 and the unconditional eps, from one batched call."""
    pair = getattr(model, "guided_and_unconditional", None)
    if pair is None:
        raise TypeError(f"CFG++ samplers need a classifier-free guided model (solvers.guidance.GuidedModel), which "
                        f"gives the unconditional prediction beside the guided one; got {type(model).__name__}")
    (_, guided_x0), (unconditional_eps, unconditional_x0) = pair(x, t)
    return guided_x0, unconditional_x0, unconditional_eps


def euler_cfg_pp(model, x: torch.Tensor, ts: torch.Tensor, *, eta: float, noise) -> torch.Tensor:
    """Euler / ancestral Euler CFG++ (Chung et al. 2024, arXiv:2406.08070, Algorithm 1; ComfyUI's
    sample_euler_cfg_pp at eta 0, sample_euler_ancestral_cfg_pp at eta > 0).

    DDIM's step with the guided x0 and the unconditional eps: x_s = alpha_s D + sqrt(sigma_s^2 - c^2) eps_U + c z,
    c = ancestral_noise_std (k-diffusion's sigma_up times alpha_s). 1 NFE per step.
    """
    times = ts.tolist()
    for t, s in zip(times[:-1], times[1:]):
        guided_x0, _, unconditional_eps = _predictions(model, x, t)
        x = ddim_step(model.schedule, guided_x0, unconditional_eps, t, s, eta, noise)
    return x


def dpmpp_2s_ancestral_cfg_pp(model, x: torch.Tensor, ts: torch.Tensor, *, eta: float, noise) -> torch.Tensor:
    """DPM-Solver++(2S) ancestral CFG++ as ComfyUI writes it (sample_dpmpp_2s_ancestral_cfg_pp; DPM-Solver++(2S),
    Lu et al. 2022b, arXiv:2211.01095, Alg. 1, on the unconditional model).

    From t to sigma_down~ (k-diffusion's ancestral split): the midpoint stage in lambda and the full step are
    DPM-Solver++ first-order steps on the unconditional x0 (U at t, then U at the midpoint); then the ancestral
    noise, and the guidance vector D - U of the step's first evaluation is added in x~. 2 NFE per step (the
    midpoint's guided output is computed and unused, as in ComfyUI).
    """
    schedule = model.schedule
    times = ts.tolist()
    for t, s in zip(times[:-1], times[1:]):
        (alpha_t, sigma_t), (alpha_s, sigma_s) = schedule.alpha_sigma(t), schedule.alpha_sigma(s)
        sigma_tilde_t = sigma_t / alpha_t
        c = ancestral_noise_std(schedule, t, s, eta)
        sigma_tilde_down = math.sqrt((sigma_s / alpha_s) ** 2 - (c / alpha_s) ** 2)
        h = math.log(sigma_tilde_t / sigma_tilde_down)
        sigma_tilde_mid = sigma_tilde_t * math.exp(-h / 2)
        t_mid = float(schedule.t_of_lambda(-math.log(sigma_tilde_mid)))
        guided_x0, unconditional_x0, _ = _predictions(model, x, t)
        x_tilde = x / alpha_t
        x_tilde_mid = (sigma_tilde_mid / sigma_tilde_t) * x_tilde - math.expm1(-h / 2) * unconditional_x0
        _, unconditional_x0_mid, _ = _predictions(model, float(schedule.alpha(t_mid)) * x_tilde_mid, t_mid)
        x_tilde = (sigma_tilde_down / sigma_tilde_t) * x_tilde - math.expm1(-h) * unconditional_x0_mid
        x = alpha_s * (x_tilde + (guided_x0 - unconditional_x0))
        if eta > 0:
            x = x + c * noise(t, s, x)
    return x


def dpmpp_2m_cfg_pp(model, x: torch.Tensor, ts: torch.Tensor, *, eta: float, noise) -> torch.Tensor:
    """DPM-Solver++(2M) CFG++ as ComfyUI writes it (sample_dpmpp_2m_cfg_pp; DPM-Solver++(2M), Lu et al. 2022b,
    arXiv:2211.01095, Alg. 2): x~_s = D + e^(-h) (x~_t - U) - expm1(-h) (D - U_prev) / (2 r), with
    r = h_prev / h in lambda; the first step has no history term. 1 NFE per step.
    """
    schedule, times = model.schedule, ts.tolist()
    lams = log_snr(schedule, times)
    previous_unconditional = None
    for i, (t, s) in enumerate(zip(times[:-1], times[1:])):
        alpha_t, alpha_s = schedule.alpha_sigma(t)[0], schedule.alpha_sigma(s)[0]
        h = lams[i + 1] - lams[i]
        guided_x0, unconditional_x0, _ = _predictions(model, x, t)
        x_tilde = guided_x0 + math.exp(-h) * (x / alpha_t - unconditional_x0)
        if previous_unconditional is not None:
            r = (lams[i] - lams[i - 1]) / h
            x_tilde = x_tilde - math.expm1(-h) / (2 * r) * (guided_x0 - previous_unconditional)
        x = alpha_s * x_tilde
        previous_unconditional = unconditional_x0
    return x


def res_multistep_cfg_pp(model, x: torch.Tensor, ts: torch.Tensor, *, eta: float, noise) -> torch.Tensor:
    """RES multistep CFG++ as ComfyUI writes it (sample_res_multistep_cfg_pp; RES, Zhang et al. 2023,
    arXiv:2308.02157): the first step is euler_cfg_pp's; then x~_s = e^(-h) (x~_t + D - U) + h (b1 U + b2 U_prev)
    with res_multistep's weights b1 = phi_1(-h) - phi_2(-h)/c2, b2 = phi_2(-h)/c2, c2 = -h_prev / h. 1 NFE per step.
    """
    schedule, times = model.schedule, ts.tolist()
    lams = log_snr(schedule, times)
    previous_unconditional = None
    for i, (t, s) in enumerate(zip(times[:-1], times[1:])):
        (alpha_t, sigma_t), (alpha_s, sigma_s) = schedule.alpha_sigma(t), schedule.alpha_sigma(s)
        guided_x0, unconditional_x0, _ = _predictions(model, x, t)
        x_tilde = x / alpha_t
        if previous_unconditional is None:
            x_tilde = guided_x0 + (sigma_s / alpha_s) / (sigma_t / alpha_t) * (x_tilde - unconditional_x0)
        else:
            h = lams[i + 1] - lams[i]
            c2 = -(lams[i] - lams[i - 1]) / h
            b2 = phi(2, -h) / c2
            b1 = phi(1, -h) - b2
            x_tilde = math.exp(-h) * (x_tilde + guided_x0 - unconditional_x0) + h * (
                b1 * unconditional_x0 + b2 * previous_unconditional)
        x = alpha_s * x_tilde
        previous_unconditional = unconditional_x0
    return x
