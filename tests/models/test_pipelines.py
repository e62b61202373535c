"""Latent diffusers pipelines from a folder (DiT, Stable Diffusion 1.x and 3): the harness's solvers give diffusers' own
pipeline output for the matching scheduler, guidance scale and latents, to 1e-5 of the largest latent in float32,
on tiny random pipelines built here; a spec runs them; a bad folder or spec gets one line before compute."""
import json
import re
import shutil
import tomllib
from pathlib import Path

import pytest
import torch

from bench.models import guided_model, sample_kind
from bench.models.pipelines import PipelineSource, problems
from bench.run import sampling
from bench.run.plan import make_plan
from bench.run.runner import SweepCache, run_config
from bench.spec.config import SpecError, expand, parse_spec
from solvers import sample
from solvers.noise import NoNoise
from solvers.spacing import timesteps
from tiny_pipelines import LATENT, build_clip, build_dit, build_stable_diffusion, build_stable_diffusion_3
from support import have_fid_weights

pytestmark = pytest.mark.xdist_group("pipelines")
TOLERANCE = 1e-5  # of the largest latent; an off-by-one timestep, a start 0.1% off or guidance 4.01 move them 2e-4+
STEPS, SCALE = 10, 4.0
PROMPTS = ["a red shoe", "blue"]


@pytest.fixture(scope="module")
def dit(tmp_path_factory):
    return build_dit(tmp_path_factory.mktemp("dit") / "pipeline")


@pytest.fixture(scope="module")
def stable_diffusion(tmp_path_factory):
    return build_stable_diffusion(tmp_path_factory.mktemp("sd") / "pipeline")


@pytest.fixture(scope="module")
def stable_diffusion_3(tmp_path_factory):
    return build_stable_diffusion_3(tmp_path_factory.mktemp("sd3") / "pipeline")


def _latents(seed=3):
    return torch.randn((2, *LATENT), generator=torch.Generator().manual_seed(seed))


def _ours(source, conditions, x_T, solver, spacing, options=None, scale=SCALE, grid=None, steps=STEPS):
    model = guided_model(source, source.schedule, scale)
    model.condition_on(conditions)
    ts = timesteps(spacing, steps, source.schedule) if grid is None else grid
    with torch.no_grad():
        return sample(solver, model, x_T, ts, eta=0.0, noise=NoNoise("deterministic"), **(options or {}))


def _relative(ours, theirs):
    return float((ours - theirs).abs().max() / theirs.abs().max())


# (diffusers scheduler, its config changes, our solver, its options, our spacing for the scheduler's grid); the
# folders' configs are Stable Diffusion's (leading, steps_offset 1, set_alpha_to_one false)
DIT_SCHEDULERS = [
    ("DDIMScheduler", {}, "ddim", {}, "leading"),
    # below 15 steps diffusers' DPM-Solver++ takes its last step at first order: our lower_order_final
    ("DPMSolverMultistepScheduler", {"final_sigmas_type": "sigma_min", "timestep_spacing": "linspace"}, "dpmpp_2m",
     {"lower_order_final": True}, "linspace"),
    # the multistep schedulers' leading grid divides by n + 1: 901, 811, ...
    ("DPMSolverMultistepScheduler", {"final_sigmas_type": "sigma_min"}, "dpmpp_2m", {"lower_order_final": True},
     "leading_multistep"),
]


@pytest.mark.parametrize("scheduler, config, solver, options, spacing", DIT_SCHEDULERS)
def test_dit_pipeline_output_is_the_harness_solve(dit, scheduler, config, solver, options, spacing):
    import diffusers

    pipe = diffusers.DiTPipeline.from_pretrained(dit)
    pipe.scheduler = getattr(diffusers, scheduler).from_config(pipe.scheduler.config, **config)
    decoded = {}
    decode = pipe.vae.decode
    pipe.vae.decode = lambda z, *args, **kwargs: decoded.setdefault("z", z) is not None and decode(z, *args, **kwargs)
    images = pipe(class_labels=[1, 7], guidance_scale=SCALE, num_inference_steps=STEPS, output_type="pt",
                  generator=torch.Generator().manual_seed(3)).images  # DiT draws its latents with torch.randn
    theirs = decoded["z"] * pipe.vae.config.scaling_factor
    source = PipelineSource(dit)
    ours = _ours(source, torch.tensor([1, 7]), _latents(), solver, spacing, options)
    assert _relative(ours, theirs) < TOLERANCE, _relative(ours, theirs)
    assert float((((source.decode(ours) + 1) / 2).clamp(0, 1) - images).abs().max()) < 1e-5  # the same decoder


SD_SCHEDULERS = DIT_SCHEDULERS + [
    # diffusers' Euler is Euler in sigma~ on eps: our ddim (the conformance report); its latents are x / alpha
    ("EulerDiscreteScheduler", {"final_sigmas_type": "sigma_min"}, "ddim", {}, "leading"),
]


@pytest.mark.parametrize("scheduler, config, solver, options, spacing", SD_SCHEDULERS)
def test_stable_diffusion_pipeline_output_is_the_harness_solve(stable_diffusion, scheduler, config, solver, options,
                                                             spacing):
    import diffusers

    pipe = diffusers.StableDiffusionPipeline.from_pretrained(stable_diffusion)
    pipe.scheduler = getattr(diffusers, scheduler).from_config(pipe.scheduler.config, **config)
    # the pipeline multiplies given latents by init_noise_sigma: 1 for DDIM and DPM-Solver, sqrt(sigma~_max^2 + 1)
    # for Euler on a leading grid, which is our x_T again in our (variance-preserving) variable
    theirs = pipe(prompt=PROMPTS, guidance_scale=SCALE, num_inference_steps=STEPS, latents=_latents(),
                  output_type="latent").images
    source = PipelineSource(stable_diffusion)
    ours = _ours(source, source.prompt_indices(PROMPTS), _latents(), solver, spacing, options)
    if scheduler == "EulerDiscreteScheduler":
        ours = ours / float(source.schedule.alpha(source.schedule.t_min))  # Euler's variable at its last sigma~
    assert _relative(ours, theirs) < TOLERANCE


def _sd3_ours(source, x_T, steps=STEPS, scale=SCALE, grid=None):
    """diffusers' n-step FlowMatchEuler as the harness runs it: ddim on the n - 1 steps uniform in t from t_max to the
    scheduler's last sigma (the schedule's t_min), then final_step = "x0" (the step to sigma 0)."""
    ts = timesteps("uniform", steps - 1, source.schedule) if grid is None else grid
    model = guided_model(source, source.schedule, scale)
    model.condition_on(source.prompt_indices(PROMPTS))
    with torch.no_grad():
        return model.x0(_ours(source, source.prompt_indices(PROMPTS), x_T, "ddim", "uniform", scale=scale, grid=ts),
                        float(ts[-1]))


def test_stable_diffusion_3_pipeline_output_is_the_harness_solve(stable_diffusion_3):
    import diffusers

    source = PipelineSource(stable_diffusion_3)
    assert source.prediction == "flow" and source.schedule.shift == 3.0 and source.shift_factor == 0.1
    pipe = diffusers.StableDiffusion3Pipeline.from_pretrained(stable_diffusion_3)
    pipe.scheduler.set_timesteps(STEPS)
    assert float(source.schedule.sigma(source.schedule.t_min)) == pytest.approx(float(pipe.scheduler.sigmas[-2]))
    ts = timesteps("uniform", STEPS - 1, source.schedule)
    ours = _sd3_ours(source, _latents())
    # SD3's latents as given; our grid as the pipeline's own `sigmas` (unshifted; the scheduler shifts them)
    theirs = pipe(prompt=PROMPTS, guidance_scale=SCALE, num_inference_steps=STEPS, latents=_latents(),
                  sigmas=ts.tolist(), output_type="latent").images
    assert _relative(ours, theirs) < TOLERANCE
    # diffusers' default grid starts at sigma 1 (alpha 0, where only Euler-type steps are defined), ours at
    # t_max = 0.999 (sigma 0.9997) and so lies up to 1e-3 lower in t: measured 9.3e-4 apart at 10 steps here
    default = pipe(prompt=PROMPTS, guidance_scale=SCALE, num_inference_steps=STEPS, latents=_latents(),
                   output_type="latent").images
    assert TOLERANCE < _relative(ours, default) < 5e-3
    # the final step to sigma 0 is what diffusers' last step is: without it the latents move by 20 tolerances and
    # more; guidance 4.01 moves them by 5 and more (this tiny network's prompts matter less than SD's)
    unfinished = _ours(source, source.prompt_indices(PROMPTS), _latents(), "ddim", "uniform", grid=ts)
    assert _relative(unfinished, theirs) > 20 * TOLERANCE
    assert _relative(_sd3_ours(source, _latents(), scale=4.01), theirs) > 5 * TOLERANCE
    decoded = pipe.vae.decode(theirs / pipe.vae.config.scaling_factor + pipe.vae.config.shift_factor).sample
    assert float((source.decode(theirs) - decoded).abs().max()) < 1e-6  # the shift factor is applied


def test_stable_diffusion_3_with_dpm_solver_plus_plus_is_the_harness_dpmpp_2m(stable_diffusion_3):
    """diffusers' DPM-Solver++ (2M) on flow sigmas: n steps from t = 0.999 down to 0.999 / n, uniform in the
    unshifted time, then a first-order step to sigma 0 (its final_sigmas_type 'zero'): our dpmpp_2m on those n - 1
    steps (second order after the first) and final_step = "x0". One offset hides there: the scheduler hands the
    transformer its timesteps truncated to integers (999 for sigma 0.99967) while its update uses the exact sigma;
    the harness evaluates the network at sigma x 1000. With the truncation applied to our network the two agree."""
    import diffusers

    pipe = diffusers.StableDiffusion3Pipeline.from_pretrained(stable_diffusion_3)
    pipe.scheduler = diffusers.DPMSolverMultistepScheduler(use_flow_sigmas=True, flow_shift=3.0, solver_order=2,
                                                           prediction_type="flow_prediction")
    theirs = pipe(prompt=PROMPTS, guidance_scale=SCALE, num_inference_steps=STEPS, latents=_latents(),
                  output_type="latent").images
    grid = torch.tensor([0.999 * (STEPS - i) / STEPS for i in range(STEPS)], dtype=torch.float64)

    def ours(truncate: bool):
        source = PipelineSource(stable_diffusion_3)
        if truncate:
            exact = source.schedule.network_time
            source.schedule.network_time = lambda t: torch.trunc(exact(t))
        model = guided_model(source, source.schedule, SCALE)
        model.condition_on(source.prompt_indices(PROMPTS))
        with torch.no_grad():
            x = sample("dpmpp_2m", model, _latents(), grid, eta=0.0, noise=NoNoise("deterministic"),
                       lower_order_final=False)
            return model.x0(x, float(grid[-1]))

    assert _relative(ours(truncate=True), theirs) < TOLERANCE
    assert _relative(ours(truncate=False), theirs) > 20 * TOLERANCE  # measured 2.7e-3: the integer timesteps


def test_stable_diffusion_3_prompts_carry_the_pooled_projections(stable_diffusion_3):
    source = PipelineSource(stable_diffusion_3)
    assert source.prompt_indices(PROMPTS).tolist() == [1, 2]
    embeddings, _, pooled, _ = source.pipeline.encode_prompt(["", "blue"], None, None, torch.device("cpu"), 1, False)
    assert torch.equal(source._embeddings[[0, 2]], embeddings)
    assert torch.allclose(source._pooled[[0, 2]], pooled, atol=1e-6)  # encoded in other batches: float rounding


def test_a_spec_runs_stable_diffusion_3_with_the_final_step(stable_diffusion_3):
    configs = expand(_spec(stable_diffusion_3, prompts=PROMPTS, spacings=["uniform"], solvers=["ddim"],
                           guidance_scales=[4.0], final_step="x0", steps=[STEPS - 1], n_samples=2))
    (cfg,) = configs
    cache, device = SweepCache(), torch.device("cpu")
    row = run_config(cfg, cache, {}, "test")
    assert row["status"] == "ok", row["message"]
    assert row["nfe"] == STEPS and row["final_step"] == "x0" and row["err_reference"] >= 0
    source, model = cache.model(cfg)
    x_T = cache.prior(cfg, source.event_shape, device, torch.float32)
    solved = sampling.solve(cfg, model, x_T, cfg.steps, device, conditions=cache.conditions(cfg, device)).samples
    assert torch.equal(solved, _sd3_ours(source, x_T))


def test_the_stable_diffusion_3_example_spec_runs_on_a_tiny_pipeline(stable_diffusion_3):
    raw = tomllib.loads(Path("bench/configs/sd3.toml").read_text())
    del raw["fid_reference"]  # FID on decoded images: the SD 1.5 example's test runs it
    raw.update(models=[f"diffusers:{stable_diffusion_3}"], steps=[2], n_samples=2, batch_size=2, device="cpu",
               time_limit_s=0, timing_repeats=1, metrics=["err_reference"], guidance_scales=[4.0])
    configs = expand(parse_spec(raw))
    assert {c.final_step for c in configs} == {"x0"} and len(configs) == 5
    cache = SweepCache()
    rows = [run_config(c, cache, {}, "test") for c in configs if c.solver in ("ddim", "euler_cfg_pp")]
    assert [row["status"] for row in rows] == ["ok", "ok"], [row["message"] for row in rows]
    assert [row["nfe"] for row in rows] == [3, 3] and rows[0]["err_reference"] >= 0


def test_the_offsets_that_hide_in_pipelines_move_the_latents_by_more_than_the_tolerance(stable_diffusion):
    source = PipelineSource(stable_diffusion)
    rows, x_T = source.prompt_indices(PROMPTS), _latents()
    exact = _ours(source, rows, x_T, "ddim", "leading")
    grid = timesteps("leading", STEPS, source.schedule)
    grid[1] += 1 / source.schedule.n_train  # one timestep late
    for moved in (_ours(source, rows, x_T, "ddim", "leading", grid=grid), _ours(source, rows, 1.001 * x_T, "ddim",
                  "leading"), _ours(source, rows, x_T, "ddim", "leading", scale=4.01)):
        assert _relative(moved, exact) > 20 * TOLERANCE


def test_a_prompt_is_encoded_once_and_keeps_its_row(stable_diffusion):
    source = PipelineSource(stable_diffusion)
    first = source.prompt_indices(PROMPTS)
    assert first.tolist() == [1, 2]  # row 0: the empty prompt, the unconditional prediction
    assert source.prompt_indices(["green", "blue"]).tolist() == [3, 2]
    pipe_embeddings, _ = source.pipeline.encode_prompt(["blue"], torch.device("cpu"), 1, False)
    assert torch.equal(source._embeddings[2:3], pipe_embeddings)


def test_a_text_pipeline_in_memory_is_the_same_source_as_its_folder(stable_diffusion, dit):
    import diffusers

    pipe = diffusers.StableDiffusionPipeline.from_pretrained(stable_diffusion)
    in_memory, loaded = PipelineSource("in memory", pipeline=pipe), PipelineSource(stable_diffusion)
    assert in_memory.weights_sha256 is None and len(loaded.weights_sha256) == 64
    x_T = _latents()
    assert torch.equal(_ours(in_memory, in_memory.prompt_indices(PROMPTS), x_T, "ddim", "leading"),
                       _ours(loaded, loaded.prompt_indices(PROMPTS), x_T, "ddim", "leading"))
    with pytest.raises(ValueError, match="an in-memory pipeline must be one of StableDiffusionPipeline, "
                                         "StableDiffusion3Pipeline, got DiTPipeline"):
        PipelineSource("in memory", pipeline=diffusers.DiTPipeline.from_pretrained(dit))


def test_the_image_size_the_spec_reads_from_a_folders_configs_is_the_decoded_images(dit, stable_diffusion,
                                                                                  stable_diffusion_3):
    """What the spec checks LPIPS's 32 px against, read without loading weights: the decoded size, not the latents'."""
    for folder in (dit, stable_diffusion, stable_diffusion_3):
        kind, source = sample_kind(f"diffusers:{folder}"), PipelineSource(folder)
        assert (kind.exact, kind.image_side) == (False, min(source.image_shape[-2:])) and kind.image_side > LATENT[-1]


def _spec(model, **changes):
    base = {"name": "pipe", "models": [f"diffusers:{model}"], "solvers": ["ddim", "dpmpp_2m"], "steps": [4],
            "spacings": ["leading"], "guidance_scales": [1.0, 4.0], "n_samples": 3, "seeds": [0],
            "metrics": ["err_reference"], "reference_tolerance": 1e-4, "time_limit_s": 0, "timing_repeats": 1}
    return parse_spec({**base, **changes})


def test_a_spec_samples_a_text_pipeline_with_its_prompts_and_guidance(stable_diffusion):
    configs = expand(_spec(stable_diffusion, prompts=PROMPTS))
    assert {c.conditions for c in configs} == {configs[0].conditions} and configs[0].conditions.startswith("prompts:2:")
    cache = SweepCache()
    rows = [run_config(c, cache, {}, "test") for c in configs]
    assert all(row["status"] == "ok" for row in rows), [row["message"] for row in rows]
    by_scale = {(row["solver"], row["guidance_scale"]): row for row in rows}
    assert by_scale["ddim", 1.0]["network_passes"] == 4 and by_scale["ddim", 4.0]["network_passes"] == 8
    assert all(row["err_reference"] >= 0 for row in rows)  # in latent space, against the guided dopri5 solve
    # the runner's samples are the guided solve with the prompts cycled over the samples
    cfg = next(c for c in configs if (c.solver, c.guidance_scale) == ("ddim", 4.0))
    source, model = cache.model(cfg)
    device = torch.device("cpu")
    x_T = cache.prior(cfg, source.event_shape, device, torch.float32)
    solved = sampling.solve(cfg, model, x_T, cfg.steps, device, conditions=cache.conditions(cfg, device)).samples
    expected = _ours(source, source.prompt_indices([*PROMPTS, PROMPTS[0]]), x_T, "ddim", "leading", steps=4)
    assert torch.equal(solved, expected)


def test_a_class_pipeline_takes_labels_and_not_prompts(dit):
    rows = [run_config(c, SweepCache(), {}, "test") for c in expand(_spec(dit, class_labels=[1, 7], solvers=["ddim"]))]
    assert [row["status"] for row in rows] == ["ok", "ok"]
    with pytest.raises(SpecError, match="is class-conditional \\(1000 classes\\); give class_labels, not prompts"):
        _spec(dit, prompts=PROMPTS)


def test_a_text_pipeline_needs_prompts_not_labels(stable_diffusion):
    with pytest.raises(SpecError, match="is text-conditional; give prompts"):
        _spec(stable_diffusion)
    with pytest.raises(SpecError, match="give prompts, not class_labels"):
        _spec(stable_diffusion, prompts=PROMPTS, class_labels=[1])


def test_a_prompts_file_is_read_before_compute(stable_diffusion, tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red shoe\n\nblue\n")
    (config, *_) = expand(_spec(stable_diffusion, prompts_file=str(prompts)))
    assert config.prompts == tuple(PROMPTS) and config.conditions == expand(_spec(stable_diffusion, prompts=PROMPTS))[0].conditions
    with pytest.raises(SpecError, match="key 'prompts_file': cannot read"):
        _spec(stable_diffusion, prompts_file=str(tmp_path / "missing.txt"))


def test_a_broken_folder_is_named_in_one_line_before_any_weights_load(stable_diffusion, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(stable_diffusion, broken)
    shutil.rmtree(broken / "text_encoder")
    (line,) = problems(broken)
    assert "the pipeline's 'text_encoder' component is missing" in line
    with pytest.raises(SpecError, match="'text_encoder' component is missing"):
        _spec(broken, prompts=PROMPTS)
    shutil.copytree(stable_diffusion / "text_encoder", broken / "text_encoder")
    config = json.loads((broken / "vae" / "config.json").read_text())
    del config["scaling_factor"]
    (broken / "vae" / "config.json").write_text(json.dumps(config))
    (line,) = problems(broken)
    assert "vae/config.json gives no scaling_factor" in line
    index = json.loads((broken / "model_index.json").read_text())
    (broken / "model_index.json").write_text(json.dumps({**index, "_class_name": "StableDiffusionXLPipeline"}))
    (line,) = problems(broken)
    assert "pipeline 'StableDiffusionXLPipeline' is not supported; supported: DiTPipeline, StableDiffusionPipeline, " \
           "StableDiffusion3Pipeline" in line


def test_a_broken_stable_diffusion_3_folder_is_named_before_any_weights_load(stable_diffusion_3, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(stable_diffusion_3, broken)
    shutil.rmtree(broken / "text_encoder_3")
    vae = json.loads((broken / "vae" / "config.json").read_text())
    (broken / "vae" / "config.json").write_text(json.dumps({**vae, "shift_factor": None}))
    scheduler = json.loads((broken / "scheduler" / "scheduler_config.json").read_text())
    (broken / "scheduler" / "scheduler_config.json").write_text(json.dumps({**scheduler, "use_dynamic_shifting": True}))
    lines = problems(broken)
    assert len(lines) == 3 and "the pipeline's 'text_encoder_3' component is missing" in lines[0]
    assert "vae/config.json gives no shift_factor (SD3 decodes latents / scaling_factor + shift_factor)" in lines[1]
    assert "sets use_dynamic_shifting" in lines[2]
    with pytest.raises(SpecError, match="'text_encoder_3' component is missing"):
        _spec(broken, prompts=PROMPTS)


def _reference_folder(folder, count=10):
    from PIL import Image

    folder.mkdir()
    generator = torch.Generator().manual_seed(0)
    for index in range(count):
        pixels = (torch.rand((40, 40, 3), generator=generator) * 255).to(torch.uint8).numpy()
        Image.fromarray(pixels).save(folder / f"{index:03d}.png")
    return folder


@pytest.mark.skipif(not have_fid_weights(), reason="needs the FID weights: make fid-weights (make setup makes them)")
def test_the_stable_diffusion_example_spec_runs_on_a_tiny_pipeline(stable_diffusion, tmp_path):
    raw = tomllib.loads(Path("bench/configs/sd15.toml").read_text())
    references = _reference_folder(tmp_path / "references")
    raw.update(models=[f"diffusers:{stable_diffusion}"], fid_reference=f"folder:{references}", steps=[2],
               n_samples=5, batch_size=5, device="cpu", time_limit_s=0, timing_repeats=1)
    configs = expand(parse_spec(raw))
    assert {c.solver for c in configs} == {"ddim", "euler", "dpmpp_2m", "unipc_2", "euler_cfg_pp"}
    assert configs[0].prompts == tuple(Path("bench/configs/sd15-prompts.txt").read_text().splitlines())
    cache = SweepCache()
    rows = [run_config(c, cache, {}, "test") for c in configs if c.solver in ("ddim", "euler_cfg_pp")]
    assert [row["status"] for row in rows] == ["ok"] * 6, [row["message"] for row in rows]
    for row in rows:
        assert row["fid"] > 0 and row["fid_reference"].startswith(f"folder {references}: 10 images, resized to 32px")
        assert row["lpips_reference"] >= 0 and row["err_reference"] >= 0  # decoded images; latents
        assert row["decode_s"] > 0 and row["wall_s"] > 0
    assert rows[0]["network_passes"] == 2 and rows[-1]["network_passes"] == 4  # scale 1: one pass; CFG++: two
    # the folder's features were computed once: a second sweep finds them cached by the files' hash
    assert list(Path(".cache/fid").glob("folder-*-3x32-*.pt"))
    plan = make_plan(configs[:3])  # the plan measures the Inception pass on decoded-size images
    assert plan.inception_images == 3 * 5 and "Inception" in next(iter(plan.measured.values()))


def test_clip_score_is_the_cosine_of_clips_own_embeddings_of_each_image_and_its_prompt(stable_diffusion, tmp_path):
    from transformers import CLIPModel, CLIPProcessor

    clip = build_clip(tmp_path / "clip")
    (cfg,) = expand(_spec(stable_diffusion, prompts=PROMPTS, guidance_scales=[4.0], solvers=["ddim"],
                          metrics=["clip_score"], clip_model=str(clip)))
    cache, device = SweepCache(), torch.device("cpu")
    source, model = cache.model(cfg)
    x_T = cache.prior(cfg, source.event_shape, device, torch.float32)
    samples = sampling.solve(cfg, model, x_T, 4, device, conditions=cache.conditions(cfg, device)).samples
    images = ((source.decode(samples) + 1) / 2).clamp(0, 1)
    prompts = [PROMPTS[i % 2] for i in range(3)]

    def cosines():  # CLIP's own embeddings of each decoded sample and its prompt, straight from transformers
        network, processor = CLIPModel.from_pretrained(clip), CLIPProcessor.from_pretrained(clip)
        with torch.no_grad():
            pixels = processor(images=list(images), do_rescale=False, return_tensors="pt")["pixel_values"]
            image = network.get_image_features(pixel_values=pixels)
            text = network.get_text_features(**processor(text=prompts, padding=True, return_tensors="pt"))
        image, text = (f if torch.is_tensor(f) else f.pooler_output for f in (image, text))
        return torch.nn.functional.cosine_similarity(image, text), network

    cos, network = cosines()
    if bool((cos <= 0).all()):  # a random CLIP: turn its text embeddings round so that some scores are not clipped
        network.text_projection.weight.data.neg_()
        network.save_pretrained(clip)
        cos, _ = cosines()
    row = run_config(cfg, cache, {}, "test")
    assert row["status"] == "ok", row["message"]
    expected = (100 * cos.clamp(min=0)).mean().item()
    assert expected > 0 and row["clip_score"] == pytest.approx(expected, rel=1e-5)
    assert row["clip_score_se"] > 0 and len(row["clip_model_sha256"]) == 16
    with pytest.raises(SpecError, match="metric 'clip_score' needs a local CLIP folder"):
        _spec(stable_diffusion, prompts=PROMPTS, metrics=["clip_score"])


@pytest.mark.parametrize("changes, message", [
    (dict(prompts=PROMPTS, prompts_file="x.txt"), "keys 'prompts' and 'prompts_file': give one of them"),
    (dict(prompts=["a", " "]), "key 'prompts' must be a non-empty list of non-empty prompts"),
    (dict(prompts=PROMPTS, clip_model="nowhere"), "key 'clip_model': 'nowhere' is not a CLIP folder (no config.json)"),
    (dict(prompts=PROMPTS, metrics=["fid"], fid_reference="folder:nowhere"), "'folder:nowhere': no such folder"),
])
def test_bad_text_and_reference_keys_get_one_line_each(stable_diffusion, changes, message):
    with pytest.raises(SpecError, match=re.escape(message)):
        _spec(stable_diffusion, **changes)


def test_an_empty_prompts_file_or_a_reference_folder_of_one_image_is_refused(stable_diffusion, tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("\n  \n")
    with pytest.raises(SpecError, match="holds no prompts \\(one per line\\)"):
        _spec(stable_diffusion, prompts_file=str(empty))
    folder = _reference_folder(tmp_path / "one", count=1)
    with pytest.raises(SpecError, match="holds fewer than 2 images"):
        _spec(stable_diffusion, prompts=PROMPTS, metrics=["fid"], fid_reference=f"folder:{folder}")
