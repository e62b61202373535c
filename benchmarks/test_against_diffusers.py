"""The harness next to diffusers' own scheduler loop: the same UNet, x_T, NFE and time grid, in one run.

The shipped Fashion-MNIST UNet (bench/checkpoints/fmnist_unet) samples 10 steps through diffusers'
``scheduler.step`` loop and through ``solvers.sample`` on the same discrete timesteps:
DPMSolverMultistepScheduler (order 2, lower_order_final, its default below 15 steps) against
``dpmpp_2m`` with ``lower_order_final``, and EulerDiscreteScheduler (Euler in sigma) against ``ddim``
(the same update, tested in tests/conformance/test_peers.py). pytest-benchmark prints each pair in one group; the
ratio is the speed of the harness's solver loop relative to the peer's. Both run under inference mode
at the batch sizes of CASES; the samples are checked to agree before anything is timed.
On a CUDA machine the group also runs there, with a third loop: the harness's solve captured in a CUDA
graph (exec mode cuda_graph, bench.run.execution.CapturedSolve) and replayed; without CUDA those cases skip.
"""
import contextlib

import pytest
import torch

from bench.run.execution import CapturedSolve
from bench.models import build_model
from solvers import DiffusionModel, sample
from solvers.noise import NoNoise
from solvers.schedules import DiscreteVP

STEPS = 10
PAIRS = {"DPMSolverMultistepScheduler": ("dpmpp_2m", {"lower_order_final": True},
                                         {"solver_order": 2, "algorithm_type": "dpmsolver++", "lower_order_final": True}),
         "EulerDiscreteScheduler": ("ddim", {}, {"timestep_spacing": "trailing"})}  # 10 steps to timestep 0


# On a GPU: launch-bound batches (the cuda_graph goal: at least 5x diffusers' loop at batch <= 64) and one that fills
# the device (the eager goal: within 1.05x of diffusers' loop, the network's time dominating both).
CASES = [("cpu", 16), ("cpu", 128)] + ([("cuda", 16), ("cuda", 64), ("cuda", 2048)] if torch.cuda.is_available() else [])
AGREEMENT = 2e-4  # relative, float32 (measured: 3e-6 to 5.8e-5 on the CPU, 7e-6 to 5.2e-5 on an H200)


@contextlib.contextmanager
def _true_float32():
    """Convolutions and matmuls in float32 while the two loops are checked to agree. By default a GPU runs cuDNN's
    convolutions in TF32 (10 mantissa bits), and two loops whose states differ by float32 rounding then round
    differently: on an H200, 1.4-2.8% apart after 10 DPM-Solver++ steps at batch 64-2048. Timing keeps the default."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def _setup(scheduler_name: str, batch: int, device: str = "cpu"):
    import diffusers

    source = build_model("fmnist_unet")
    source.to(torch.device(device))
    unet = source.module
    config = {**unet_scheduler_config(), **PAIRS[scheduler_name][2], "final_sigmas_type": "sigma_min"}
    scheduler = getattr(diffusers, scheduler_name).from_config(config)
    scheduler.set_timesteps(STEPS)
    schedule = DiscreteVP.from_alphas_cumprod(scheduler.alphas_cumprod)  # the grid diffusers steps on
    model = DiffusionModel(source.model().net, schedule, "eps")
    ts = torch.tensor([(int(s) + 1) / 1000 for s in scheduler.timesteps] + [1 / 1000], dtype=torch.float64)
    x_T = torch.randn(batch, *source.event_shape, generator=torch.Generator().manual_seed(0)).to(device)
    return unet, scheduler, model, ts, x_T


def unet_scheduler_config() -> dict:
    import json

    from bench.models import CHECKPOINTS_DIR

    return json.loads((CHECKPOINTS_DIR / "fmnist_unet" / "scheduler_config.json").read_text())


def _peer_start(scheduler, x_T):
    """The VP state diffusers' first network call sees. Not always x_T: with linspace or trailing spacing
    EulerDiscreteScheduler's init_noise_sigma is sigma_max, not sqrt(sigma_max^2 + 1), so its start is x_T
    scaled by sigma_max / sqrt(sigma_max^2 + 1) (1 - 2e-5 here; 10 steps later up to 1.1e-3 relative)."""
    scheduler.set_timesteps(STEPS)
    return scheduler.scale_model_input(x_T * scheduler.init_noise_sigma, scheduler.timesteps[0])


def _diffusers_loop(unet, scheduler, x_T):
    """diffusers' documented sampling loop (x_T in the VP variable; Euler's is scaled by init_noise_sigma)."""
    scheduler.set_timesteps(STEPS)
    x = x_T * scheduler.init_noise_sigma
    for t in scheduler.timesteps:
        eps = unet(scheduler.scale_model_input(x, t), t).sample
        x = scheduler.step(eps, t, x).prev_sample
    return x


@pytest.mark.parametrize("device,batch", CASES)
@pytest.mark.parametrize("scheduler_name", list(PAIRS))
@pytest.mark.parametrize("loop", ["diffusers", "harness", "harness_cuda_graph"])
def test_sampling_loop_against_diffusers(benchmark, loop, scheduler_name, batch, device):
    if loop == "harness_cuda_graph" and device != "cuda":
        pytest.skip("the cuda_graph loop needs a CUDA device")
    unet, scheduler, model, ts, x_T = _setup(scheduler_name, batch, device)
    name, options, _ = PAIRS[scheduler_name]

    def harness(x, noise=None):
        return sample(name, model, x, ts, **options)

    with torch.inference_mode(), _true_float32():
        theirs = _diffusers_loop(unet, scheduler, x_T)
        start = _peer_start(scheduler, x_T)
        difference = float((harness(start) - theirs).abs().max() / theirs.abs().max())
    benchmark.extra_info["relative_difference_to_diffusers"] = difference
    assert difference < AGREEMENT  # the same computation
    if loop == "harness_cuda_graph":  # the graph replays the eager solve's kernels (TF32 as timed)
        captured = CapturedSolve(harness, model, start, NoNoise())
        with torch.inference_mode():
            eager = harness(start)
        assert (captured(start, None) - eager).abs().max() < 1e-4 * eager.abs().max()
        run = lambda: captured(start, None)  # noqa: E731
    else:
        run = (lambda: _diffusers_loop(unet, scheduler, x_T)) if loop == "diffusers" else (lambda: harness(start))
    benchmark.group = (f"{scheduler_name} vs {name}: {STEPS} NFE, batch {batch}, {device}, "
                       f"{torch.get_num_threads()} threads")

    def timed():
        with torch.inference_mode():
            run()
        if device == "cuda":
            torch.cuda.synchronize()

    benchmark.pedantic(timed, rounds=3, iterations=1, warmup_rounds=1)
