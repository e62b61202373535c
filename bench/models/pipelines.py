"""Latent diffusers pipelines from a folder: what the solvers integrate, what the metrics see, what it is conditioned on.

``diffusers:PATH`` where PATH holds a pipeline's ``model_index.json`` loads it with diffusers' own
``DiffusionPipeline.from_pretrained`` (so its components are built exactly as diffusers builds them) and keeps:

- the denoiser in latent space: a DiT transformer (``DiTPipeline``: class-conditional; its learned-sigma output
  channels dropped, as the pipeline drops them; the null class ``num_embeds_ada_norm`` for classifier-free
  guidance), a text-conditional UNet (``StableDiffusionPipeline``) or a flow-matching transformer
  (``StableDiffusion3Pipeline``: two CLIP text encoders and T5, whose sequence embeddings and pooled projections
  it reads). Prompts are encoded once by the pipeline's own ``encode_prompt``, outside the clock; the empty prompt
  is the unconditional one, as the pipelines' default negative prompt;
- the schedule of its scheduler config: a DiscreteVP on a DDPM-family scheduler's own float32 alphas_cumprod, with
  its steps_offset for the ``leading`` spacing; for FlowMatchEulerDiscreteScheduler a FlowMatching schedule with the
  config's shift whose t_min is the scheduler's own last sigma before 0 (diffusers' grid ends there, then steps to
  sigma 0: the spec's ``final_step = "x0"``), the network seeing timesteps sigma x num_train_timesteps;
- the VAE decoder: images = vae.decode(latents / scaling_factor + shift_factor), in [-1, 1] (shift_factor: SD3's;
  none for the others). The solvers integrate latents, so err_reference is a latent distance; image metrics decode
  first (``decode``; its time is the row's decode_s, never part of wall_s).

A folder is checked before anything loads (``problems``): every component model_index.json names must be there,
and the VAE's config must give its scaling_factor (diffusers would fall back to SD's 0.18215 silently) and, for
SD3, its shift_factor.
"""
from __future__ import annotations

import hashlib
import importlib.util
import json
from pathlib import Path

import torch

from bench.models.conditioning import ClassConditioning, TextConditioning
from bench.models.weights import files_digest
from solvers.model import DiffusionModel
from solvers.schedules import DiscreteVP, FlowMatching

TEXT_PIPELINES = ("StableDiffusionPipeline", "StableDiffusion3Pipeline")
SUPPORTED = ("DiTPipeline", *TEXT_PIPELINES)
PREDICTION_TYPES = {"epsilon": "eps", "v_prediction": "v", "sample": "x0"}


def load_options() -> dict:
    """diffusers' from_pretrained options: accelerate's low-memory loading where it is installed, else the plain
    loading asked for by name (which diffusers falls back to anyway, warning on every load)."""
    return {"low_cpu_mem_usage": importlib.util.find_spec("accelerate") is not None}


def pipeline_class(path) -> str | None:
    """The ``_class_name`` of a folder's model_index.json (None when the folder has none: not a pipeline)."""
    index = Path(path) / "model_index.json"
    return json.loads(index.read_text()).get("_class_name") if index.is_file() else None


def components(path) -> dict[str, list]:
    """model_index.json's components: name -> [library, class] (entries that are None left out)."""
    index = json.loads((Path(path) / "model_index.json").read_text())
    return {name: value for name, value in index.items()
            if not name.startswith("_") and isinstance(value, list) and value[0] is not None}


def problems(path) -> list[str]:
    """Why a pipeline folder cannot be loaded, one line each (none: it can), before any weights are read."""
    path, name = Path(path), pipeline_class(path)
    if name not in SUPPORTED:
        return [f"diffusers:{path}: pipeline {name!r} is not supported; supported: {', '.join(SUPPORTED)}"]
    found = []
    for component in components(path):
        if not (path / component).is_dir():
            found.append(f"diffusers:{path}: the pipeline's {component!r} component is missing (model_index.json "
                         f"names it; no folder {path / component})")
    vae_config = path / "vae" / "config.json"
    vae = json.loads(vae_config.read_text()) if vae_config.is_file() else {}
    if vae_config.is_file() and "scaling_factor" not in vae:
        found.append(f"diffusers:{path}: vae/config.json gives no scaling_factor (latents = scaling_factor x the "
                     f"VAE's encoding; diffusers would assume SD's 0.18215): add it to the config")
    if vae_config.is_file() and name == "StableDiffusion3Pipeline" and vae.get("shift_factor") is None:
        found.append(f"diffusers:{path}: vae/config.json gives no shift_factor (SD3 decodes latents / scaling_factor "
                     f"+ shift_factor): add it to the config")
    scheduler = path / "scheduler" / "scheduler_config.json"
    if scheduler.is_file() and json.loads(scheduler.read_text()).get("use_dynamic_shifting"):
        found.append(f"diffusers:{path}: scheduler_config.json sets use_dynamic_shifting (the shift follows the "
                     f"image's token count at sampling time); give a static 'shift'")
    return found


def read_conditioning(path):
    """A pipeline folder's conditioning from its configs alone: DiT's classes (ClassConditioning with the null class
    num_embeds_ada_norm, names from id2label where model_index.json has them), Stable Diffusion's prompts
    (TextConditioning)."""
    path, name = Path(path), pipeline_class(path)
    if name in TEXT_PIPELINES:
        return TextConditioning()
    if name == "DiTPipeline":
        classes = int(json.loads((path / "transformer" / "config.json").read_text())["num_embeds_ada_norm"])
        id2label = json.loads((path / "model_index.json").read_text()).get("id2label") or {}
        names = tuple(str(id2label.get(str(k), k)) for k in range(classes))
        return ClassConditioning(classes, names, classes)
    return None


def denoiser_component(kind: str) -> str:
    """The pipeline component that denoises the latents: Stable Diffusion 1.x's UNet, DiT's and SD3's transformer."""
    return "unet" if kind == "StableDiffusionPipeline" else "transformer"


def sample_sides(sample_size) -> tuple[int, int]:
    """A diffusers config's sample_size (one int, or height and width) as (height, width)."""
    return (sample_size, sample_size) if isinstance(sample_size, int) else tuple(sample_size)


def vae_upscale(block_out_channels) -> int:
    """How many pixels a side of the decoded image one latent pixel becomes: the VAE decoder doubles the size at
    every level but the first."""
    return 2 ** (len(block_out_channels) - 1)


def read_image_side(path) -> int:
    """The shorter side in pixels of a pipeline folder's decoded images, from its configs alone: the denoiser's
    sample_size times the VAE's upscaling."""
    path = Path(path)
    size = json.loads((path / denoiser_component(pipeline_class(path)) / "config.json").read_text())["sample_size"]
    vae = json.loads((path / "vae" / "config.json").read_text())
    return min(sample_sides(size)) * vae_upscale(vae["block_out_channels"])


def weights_digest(path) -> str:
    """sha256 over the components' weight digests (bench.models.weights.files_digest), by component name."""
    digest = hashlib.sha256()
    for folder in sorted(p for p in Path(path).iterdir() if p.is_dir()):
        component = files_digest(folder)
        if component is not None:
            digest.update(f"{folder.name}:{component}".encode())
    return digest.hexdigest()


class PipelineSource:
    """A loaded latent pipeline as the runner sees a model source (``model``, ``conditional_net``, ``event_shape``,
    ``conditioning``, ``to``) plus ``decode`` (latents -> images in [-1, 1]) and, for text pipelines,
    ``prompt_indices`` (prompts -> rows of the encoded-prompt table the network reads)."""

    dataset = None

    def __init__(self, path, pipeline=None):
        """The pipeline saved in folder ``path``, loaded with diffusers' own from_pretrained; or ``pipeline``, a text
        pipeline already built in memory (``path`` then only names it; no weight digest), e.g. an SD-sized network
        timed without being saved."""
        from diffusers import DiffusionPipeline

        self.path = Path(path)
        if pipeline is None:
            found = problems(self.path)
            if found:
                raise ValueError("\n".join(found))
            pipeline = DiffusionPipeline.from_pretrained(str(self.path), **load_options())
            self.weights_sha256 = weights_digest(self.path)
        elif type(pipeline).__name__ not in TEXT_PIPELINES:
            raise ValueError(f"an in-memory pipeline must be one of {', '.join(TEXT_PIPELINES)}, got "
                             f"{type(pipeline).__name__}")
        else:
            self.weights_sha256 = None
        self.kind, self.pipeline = type(pipeline).__name__, pipeline
        for module in self._modules():
            module.eval().requires_grad_(False)
        self.schedule, self.prediction = self._schedule(self.pipeline.scheduler)
        self.conditioning = TextConditioning() if self.kind in TEXT_PIPELINES else read_conditioning(self.path)
        self.scaling_factor = float(self.pipeline.vae.config.scaling_factor)
        self.shift_factor = float(getattr(self.pipeline.vae.config, "shift_factor", None) or 0.0)
        denoiser = getattr(self.pipeline, denoiser_component(self.kind))
        self.denoiser = denoiser
        size = denoiser.config.sample_size
        size = sample_sides(size)
        self.event_shape = (denoiser.config.in_channels, *size)
        vae_config = self.pipeline.vae.config
        upscale = vae_upscale(vae_config.block_out_channels)
        self.image_shape = (vae_config.out_channels, size[0] * upscale, size[1] * upscale)
        self._prompts: list[str] = []
        self._embeddings = self._pooled = None
        if self.kind in TEXT_PIPELINES:
            self.prompt_indices([""])  # row 0: the empty prompt, the unconditional prediction

    def _schedule(self, scheduler):
        """(schedule, prediction) of the pipeline's scheduler: a DiscreteVP on a DDPM-family scheduler's
        alphas_cumprod, or FlowMatching (t_min: the scheduler's last sigma before 0, as an unshifted time) and flow."""
        config = dict(scheduler.config)
        if type(scheduler).__name__.startswith("FlowMatch"):
            return FlowMatching(shift=float(config.get("shift", 1.0)), n_train=int(config["num_train_timesteps"]),
                                t_min=float(scheduler.sigma_min)), "flow"
        prediction = config.get("prediction_type", "epsilon")
        if prediction not in PREDICTION_TYPES:
            raise ValueError(f"diffusers:{self.path}: prediction_type {prediction!r} not supported; supported: "
                             f"{', '.join(PREDICTION_TYPES)}")
        if not hasattr(scheduler, "alphas_cumprod"):
            raise ValueError(f"diffusers:{self.path}: scheduler {type(scheduler).__name__} has no alphas_cumprod (a "
                             "DDPM-family or flow-matching scheduler is needed)")
        return (DiscreteVP.from_alphas_cumprod(scheduler.alphas_cumprod, steps_offset=int(config.get("steps_offset", 0))),
                PREDICTION_TYPES[prediction])

    def _modules(self):
        return [m for m in self.pipeline.components.values() if isinstance(m, torch.nn.Module)]

    def to(self, device) -> "PipelineSource":
        for module in self._modules():
            module.to(device)
        if self._embeddings is not None:
            self._embeddings = self._embeddings.to(device)
        if self._pooled is not None:
            self._pooled = self._pooled.to(device)
        return self

    def _device(self):
        return next(self.denoiser.parameters()).device

    def prompt_indices(self, prompts) -> torch.Tensor:
        """The rows of the prompt table holding ``prompts`` (new ones encoded now with the pipeline's encode_prompt;
        the table only grows, so a row always means the same prompt)."""
        new = [p for p in dict.fromkeys(prompts) if p not in self._prompts]
        if new:
            with torch.no_grad():
                if self.kind == "StableDiffusion3Pipeline":  # (embeddings, negative, pooled, negative pooled)
                    embeddings, _, pooled, _ = self.pipeline.encode_prompt(new, None, None, self._device(), 1, False)
                    self._pooled = pooled if self._pooled is None else torch.cat([self._pooled, pooled])
                else:
                    embeddings, _ = self.pipeline.encode_prompt(new, self._device(), 1, False)
            self._embeddings = embeddings if self._embeddings is None else torch.cat([self._embeddings, embeddings])
            self._prompts += new
        return torch.tensor([self._prompts.index(p) for p in prompts], dtype=torch.int64)

    def conditional_net(self, schedule=None):
        """The network as ``net(x, t, conditions)``: class labels (DiT) or prompt-table rows (Stable Diffusion 1.x
        and 3)."""
        denoiser, channels = self.denoiser, self.event_shape[0]
        time_of = self.schedule.network_time

        if self.kind == "DiTPipeline":
            def net(x, t, labels):
                out = denoiser(x.to(denoiser.dtype), timestep=time_of(t).to(x.device, denoiser.dtype),
                               class_labels=labels).sample
                return out[:, :channels].to(x.dtype)  # learned sigma: the pipeline keeps the first channels
            return net

        if self.kind == "StableDiffusion3Pipeline":
            def net(x, t, rows):
                rows = rows.to(self._embeddings.device)
                return denoiser(hidden_states=x.to(denoiser.dtype), timestep=time_of(t).to(x.device, denoiser.dtype),
                                encoder_hidden_states=self._embeddings[rows],
                                pooled_projections=self._pooled[rows]).sample.to(x.dtype)
            return net

        def net(x, t, rows):
            return denoiser(x.to(denoiser.dtype), time_of(t).to(x.device, denoiser.dtype),
                            encoder_hidden_states=self._embeddings[rows.to(self._embeddings.device)]).sample.to(x.dtype)
        return net

    def model(self, schedule=None) -> DiffusionModel:
        """The unconditional model (the null class, the empty prompt)."""
        conditional, null = self.conditional_net(), self.conditioning.null_class

        def net(x, t):
            return conditional(x, t, torch.full((x.shape[0],), null, dtype=torch.int64, device=x.device))
        return DiffusionModel(net, self.schedule, self.prediction)

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Images in [-1, 1] from latents: the VAE decoder on latents / scaling_factor + shift_factor, as the
        pipeline decodes."""
        vae = self.pipeline.vae
        with torch.no_grad():
            return vae.decode((latents / self.scaling_factor + self.shift_factor).to(vae.dtype)).sample.to(latents.dtype)
