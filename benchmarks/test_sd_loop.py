"""A Stable-Diffusion-sized sampling loop: the harness's (eager and CUDA-graph) against diffusers' own
StableDiffusionPipeline, on the same UNet, latents, text embeddings, scheduler grid and guidance, in one run.

On a CUDA device the UNet is a UNet2DConditionModel with Stable Diffusion 1.5's architecture (diffusers' defaults
with cross_attention_dim 768; random weights: timing needs no training), 4 x 64 x 64 latents, prompt embeddings of
shape (77, 768), classifier-free guidance 7.5, 20 DDIM steps on SD's leading grid, batch 1, 4 and 16. On the CPU the
same loops run on a tiny UNet of the same kind (the CPU-sized twin: SD's UNet takes seconds per forward there).

diffusers' side is the pipeline call itself (prompt_embeds and negative_prompt_embeds given, output_type "latent"):
what a practitioner runs, its per-step overhead included. The harness's side is bench.models.pipelines.PipelineSource
on that same pipeline object, its guided model (one network call on the doubled batch per step, as the pipeline's)
and ``solvers.sample("ddim", ...)``, the path a sweep takes. The latents are checked to agree in true float32 before
anything is timed; pytest-benchmark prints each case's loops in one group (the ratio of their times is the speed-up).
"""
import sys
from pathlib import Path

import pytest
import torch

from bench.models import guided_model
from bench.models.pipelines import PipelineSource
from bench.run.execution import CapturedSolve
from solvers import sample
from solvers.noise import NoNoise
from solvers.spacing import timesteps

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from test_against_diffusers import _true_float32  # noqa: E402  (the same TF32 switch as the other comparison)
from tiny_pipelines import byte_tokenizer, clip_text_config  # noqa: E402  (the tests' offline text encoder)

STEPS, SCALE = 20, 7.5
SD15_UNET = {"sample_size": 64, "cross_attention_dim": 768}  # UNet2DConditionModel's defaults are SD 1.x's otherwise
TINY_UNET = {"sample_size": 8, "layers_per_block": 1, "block_out_channels": (8, 16), "cross_attention_dim": 768,
             "down_block_types": ("CrossAttnDownBlock2D", "DownBlock2D"), "attention_head_dim": 2,
             "up_block_types": ("UpBlock2D", "CrossAttnUpBlock2D"), "norm_num_groups": 4}
CASES = ([("cuda", "sd15", b) for b in (1, 4, 16)] if torch.cuda.is_available() else []) + \
        [("cpu", "tiny", b) for b in (1, 4)]
AGREEMENT = 1e-4  # relative to the largest latent, true float32 (measured: see the results README that cites it)


def _pipeline(size: str, folder: Path):
    """A StableDiffusionPipeline in memory: the UNet of ``size``, a 1-layer CLIP text encoder of width 768 over 77
    positions (so the embeddings have SD's shape), a tiny VAE (unused by the loops), SD 1.5's DDIM scheduler."""
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel

    tokenizer, vocab = byte_tokenizer(folder, max_length=77)
    torch.manual_seed(0)
    text_encoder = CLIPTextModel(clip_text_config(vocab, hidden_size=768, intermediate_size=64,
                                                  max_position_embeddings=77))
    vae = AutoencoderKL(block_out_channels=(8,), norm_num_groups=4, latent_channels=4, scaling_factor=0.18215)
    unet = UNet2DConditionModel(**(SD15_UNET if size == "sd15" else TINY_UNET))
    scheduler = DDIMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, set_alpha_to_one=False,
                              steps_offset=1, clip_sample=False)
    return StableDiffusionPipeline(unet=unet, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer,
                                   scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)


@pytest.fixture(scope="module")
def loops(tmp_path_factory):
    """Per (device, size): the pipeline and its harness source, built once."""
    built = {}

    def get(device: str, size: str):
        if (device, size) not in built:
            pipe = _pipeline(size, tmp_path_factory.mktemp("tokenizer"))
            source = PipelineSource(f"in-memory SD UNet ({size})", pipeline=pipe).to(torch.device(device))
            built[device, size] = pipe, source
        return built[device, size]
    return get


@pytest.mark.parametrize("device,size,batch", CASES)
@pytest.mark.parametrize("loop", ["diffusers", "harness", "harness_cuda_graph"])
def test_stable_diffusion_sized_loop(benchmark, loops, loop, device, size, batch):
    if loop == "harness_cuda_graph" and device != "cuda":
        pytest.skip("the cuda_graph loop needs a CUDA device")
    pipe, source = loops(device, size)
    prompts = [f"prompt {i}" for i in range(batch)]
    rows = source.prompt_indices(prompts)
    model = guided_model(source, source.schedule, SCALE)
    model.condition_on(rows.to(device))
    ts = timesteps("leading", STEPS, source.schedule)  # SD 1.5's DDIM grid (steps_offset 1), then timestep 0
    x_T = torch.randn((batch, *source.event_shape), generator=torch.Generator().manual_seed(0)).to(device)
    with torch.inference_mode():  # diffusers' own encoding of the same prompts and of the empty negative prompt
        embeddings, negative = pipe.encode_prompt(prompts, torch.device(device), 1, True, negative_prompt=[""] * batch)

    def diffusers_loop():
        return pipe(prompt_embeds=embeddings, negative_prompt_embeds=negative, guidance_scale=SCALE,
                    num_inference_steps=STEPS, latents=x_T, output_type="latent").images

    def harness(x, noise=None):
        return sample("ddim", model, x, ts, eta=0.0, noise=NoNoise("ddim at eta 0"))

    pipe.set_progress_bar_config(disable=True)
    with torch.inference_mode(), _true_float32():
        theirs = diffusers_loop()
        difference = float((harness(x_T) - theirs).abs().max() / theirs.abs().max())
    benchmark.extra_info["relative_difference_to_diffusers"] = difference
    assert difference < AGREEMENT
    if loop == "harness_cuda_graph":
        captured = CapturedSolve(harness, model, x_T, NoNoise("ddim at eta 0"))
        with torch.inference_mode():
            eager = harness(x_T)
        assert (captured(x_T, None) - eager).abs().max() < 1e-4 * eager.abs().max()
        run = lambda: captured(x_T, None)  # noqa: E731
    else:
        run = diffusers_loop if loop == "diffusers" else (lambda: harness(x_T))
    benchmark.group = (f"SD-sized loop ({size} UNet): {STEPS} DDIM steps, guidance {SCALE}, batch {batch}, {device}, "
                       f"{torch.get_num_threads()} threads")

    def timed():
        with torch.inference_mode():
            out = run()
        if device == "cuda":
            torch.cuda.synchronize()
        return out

    timed()  # warm-up
    benchmark.pedantic(timed, rounds=3, iterations=1)
