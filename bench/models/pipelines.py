"""Latent diffusers pipelines from a folder: what the solvers integrate, what the metrics see, what it is conditioned on.

``diffusers:PATH`` where PATH holds a pipeline's ``model_index.json`` loads it with diffusers' own
``DiffusionPipeline.from_pretrained`` (so its components are built exactly as diffusers builds them) and keeps:

- the denoiser in latent space: a DiT transformer (``DiTPipeline``: class-conditional; its learned-sigma output
  channels dropped, as the pipeline drops them; the null class ``num_embeds_ada_norm`` for classifier-free
  guidance) or a text-conditional UNet (``StableDiffusionPipeline``: prompts encoded once by the pipeline's own
  ``encode_prompt``, outside the clock; the empty prompt is the unconditional one, as the pipeline's);
- the schedule of its scheduler config (a DiscreteVP on the scheduler's own float32 alphas_cumprod, with its
  steps_offset for the ``leading`` spacing);
- the VAE decoder: images = vae.decode(latents / scaling_factor), in [-1, 1]. The solvers integrate latents, so
  err_reference is a latent distance; image metrics decode first (``decode``; its time is the row's decode_s,
  never part of wall_s).

A folder is checked before anything loads (``problems``): every component model_index.json names must be there,
and the VAE's config must give its scaling_factor (diffusers would fall back to SD's 0.18215 silently).
``StableDiffusion3Pipeline`` (a flow-matching transformer with three text encoders, T5 among them) is refused with
the reason: see ``UNSUPPORTED``.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch

from bench.models.conditioning import ClassConditioning, TextConditioning
from bench.models.weights import files_digest
from solvers.model import DiffusionModel
from solvers.schedules import DiscreteVP

SUPPORTED = ("DiTPipeline", "StableDiffusionPipeline")
UNSUPPORTED = {
    "StableDiffusion3Pipeline": "SD3 conditions its transformer on three text encoders (two CLIPs and T5-XXL) and "
                                "pooled projections; the harness encodes prompts for single-encoder pipelines only "
                                "(StableDiffusionPipeline) so far",
}
PREDICTION_TYPES = {"epsilon": "eps", "v_prediction": "v", "sample": "x0"}


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
    if name in UNSUPPORTED:
        return [f"diffusers:{path}: {name} is not supported: {UNSUPPORTED[name]}"]
    if name not in SUPPORTED:
        return [f"diffusers:{path}: pipeline {name!r} is not supported; supported: {', '.join(SUPPORTED)}"]
    found = []
    for component in components(path):
        if not (path / component).is_dir():
            found.append(f"diffusers:{path}: the pipeline's {component!r} component is missing (model_index.json "
                         f"names it; no folder {path / component})")
    vae_config = path / "vae" / "config.json"
    if vae_config.is_file() and "scaling_factor" not in json.loads(vae_config.read_text()):
        found.append(f"diffusers:{path}: vae/config.json gives no scaling_factor (latents = scaling_factor x the "
                     f"VAE's encoding; diffusers would assume SD's 0.18215): add it to the config")
    return found


def read_conditioning(path):
    """A pipeline folder's conditioning from its configs alone: DiT's classes (ClassConditioning with the null class
    num_embeds_ada_norm, names from id2label where model_index.json has them), Stable Diffusion's prompts
    (TextConditioning)."""
    path, name = Path(path), pipeline_class(path)
    if name == "StableDiffusionPipeline":
        return TextConditioning()
    if name == "DiTPipeline":
        classes = int(json.loads((path / "transformer" / "config.json").read_text())["num_embeds_ada_norm"])
        id2label = json.loads((path / "model_index.json").read_text()).get("id2label") or {}
        names = tuple(str(id2label.get(str(k), k)) for k in range(classes))
        return ClassConditioning(classes, names, classes)
    return None


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

    def __init__(self, path):
        from diffusers import DiffusionPipeline

        self.path = Path(path)
        found = problems(self.path)
        if found:
            raise ValueError("\n".join(found))
        self.kind = pipeline_class(self.path)
        self.pipeline = DiffusionPipeline.from_pretrained(str(self.path))
        for module in self._modules():
            module.eval().requires_grad_(False)
        config = dict(self.pipeline.scheduler.config)
        prediction = config.get("prediction_type", "epsilon")
        if prediction not in PREDICTION_TYPES:
            raise ValueError(f"diffusers:{self.path}: prediction_type {prediction!r} not supported; supported: "
                             f"{', '.join(PREDICTION_TYPES)}")
        if not hasattr(self.pipeline.scheduler, "alphas_cumprod"):
            raise ValueError(f"diffusers:{self.path}: scheduler {type(self.pipeline.scheduler).__name__} has no "
                             "alphas_cumprod (a DDPM-family scheduler is needed)")
        self.schedule = DiscreteVP.from_alphas_cumprod(self.pipeline.scheduler.alphas_cumprod,
                                                       steps_offset=int(config.get("steps_offset", 0)))
        self.prediction = PREDICTION_TYPES[prediction]
        self.conditioning = read_conditioning(self.path)
        self.scaling_factor = float(self.pipeline.vae.config.scaling_factor)
        denoiser = self.pipeline.transformer if self.kind == "DiTPipeline" else self.pipeline.unet
        self.denoiser = denoiser
        size = denoiser.config.sample_size
        size = (size, size) if isinstance(size, int) else tuple(size)
        self.event_shape = (denoiser.config.in_channels, *size)
        vae_config = self.pipeline.vae.config
        upscale = 2 ** (len(vae_config.block_out_channels) - 1)
        self.image_shape = (vae_config.out_channels, size[0] * upscale, size[1] * upscale)
        self.weights_sha256 = weights_digest(self.path)
        self._prompts: list[str] = []
        self._embeddings = None
        if self.kind == "StableDiffusionPipeline":
            self.prompt_indices([""])  # row 0: the empty prompt, the unconditional prediction

    def _modules(self):
        return [m for m in self.pipeline.components.values() if isinstance(m, torch.nn.Module)]

    def to(self, device) -> "PipelineSource":
        for module in self._modules():
            module.to(device)
        if self._embeddings is not None:
            self._embeddings = self._embeddings.to(device)
        return self

    def _device(self):
        return next(self.denoiser.parameters()).device

    def prompt_indices(self, prompts) -> torch.Tensor:
        """The rows of the prompt table holding ``prompts`` (new ones encoded now with the pipeline's encode_prompt;
        the table only grows, so a row always means the same prompt)."""
        new = [p for p in dict.fromkeys(prompts) if p not in self._prompts]
        if new:
            with torch.no_grad():
                embeddings, _ = self.pipeline.encode_prompt(new, self._device(), 1, False)
            self._embeddings = embeddings if self._embeddings is None else torch.cat([self._embeddings, embeddings])
            self._prompts += new
        return torch.tensor([self._prompts.index(p) for p in prompts], dtype=torch.int64)

    def conditional_net(self, schedule=None):
        """The network as ``net(x, t, conditions)``: class labels (DiT) or prompt-table rows (Stable Diffusion)."""
        denoiser, channels = self.denoiser, self.event_shape[0]
        time_of = self.schedule.network_time

        if self.kind == "DiTPipeline":
            def net(x, t, labels):
                out = denoiser(x.to(denoiser.dtype), timestep=time_of(t).to(x.device, denoiser.dtype),
                               class_labels=labels).sample
                return out[:, :channels].to(x.dtype)  # learned sigma: the pipeline keeps the first channels
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
        """Images in [-1, 1] from latents: the VAE decoder on latents / scaling_factor, as the pipeline decodes."""
        vae = self.pipeline.vae
        with torch.no_grad():
            return vae.decode((latents / self.scaling_factor).to(vae.dtype)).sample.to(latents.dtype)
