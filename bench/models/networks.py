"""Network models for the harness: diffusers UNet checkpoints and user functions.

A spec's model entry ``diffusers:PATH`` loads a local ``UNet2DModel`` (a folder with config.json,
or a pipeline folder with unet/ and scheduler/) and its scheduler config: the betas become a
``DiscreteVP``, ``prediction_type`` the prediction (epsilon -> eps, v_prediction -> v, sample -> x0); a
FlowMatchEulerDiscreteScheduler config gives a ``FlowMatching`` schedule with its shift and the flow prediction;
``sample_size`` and ``in_channels`` the sample shape. A UNet with a class embedding (``num_class_embeds``) is
class-conditional: ``classes.json`` beside it (what ``python -m bench train --class-conditional`` writes) names the
classes and the null class learned by label dropout; without it every embedding is a class and there is no
unconditional prediction (no guidance). ``python:module:function`` calls a function
that returns ``(DiffusionModel, event_shape)``. Both carry their own schedule: the spec's
``schedule`` key does not apply to them.
"""
from __future__ import annotations

import importlib
import importlib.util
import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch

from bench.models import pipelines
from bench.models.conditioning import ClassConditioning
from bench.models.weights import files_digest, module_digest
from solvers.model import DiffusionModel
from solvers.schedules import DiscreteVP, FlowMatching

PREDICTION_TYPES = {"epsilon": "eps", "v_prediction": "v", "sample": "x0", "flow": "flow"}
FASHION_MNIST = "Fashion-MNIST train"  # how a network's ``dataset`` begins where it models Fashion-MNIST
# pipeline folders whose network is a plain UNet2DModel with unet/ and scheduler/ (what make train writes)
PLAIN_UNET_PIPELINES = ("DDPMPipeline", "DDIMPipeline")


@dataclass
class NetworkSource:
    """A model with its own schedule, in the shape the runner expects of a model source."""

    diffusion: DiffusionModel
    event_shape: tuple
    dataset: str | None = None  # a checkpoint does not say what it was trained on
    module: torch.nn.Module | None = None  # the network's weights, moved by ``to``
    weights_sha256: str | None = None  # of the weight files the network was loaded from
    conditioning: ClassConditioning | None = None  # class-conditional networks: their classes
    conditional: object = None  # and the network as net(x, t, labels)

    @property
    def prediction(self) -> str:
        return self.diffusion.prediction

    def model(self, schedule=None) -> DiffusionModel:
        return self.diffusion

    def conditional_net(self, schedule=None):
        """The class-conditional network ``net(x, t, labels)`` (its own schedule; the argument is ignored)."""
        if self.conditional is None:
            raise ValueError("this network is unconditional")
        return self.conditional

    def to(self, device) -> "NetworkSource":
        """Move the network's weights (a diffusers UNet, a python: function's torch module) to ``device``."""
        if self.module is not None:
            self.module.to(device)
        return self


def betas_from_config(config: dict) -> torch.Tensor:
    """The betas a diffusers scheduler config describes (DDPMScheduler's beta_schedule options)."""
    n = int(config.get("num_train_timesteps", 1000))
    if config.get("trained_betas") is not None:
        return torch.as_tensor(config["trained_betas"], dtype=torch.float64)
    kind = config.get("beta_schedule", "linear")
    start, end = float(config.get("beta_start", 1e-4)), float(config.get("beta_end", 0.02))
    if kind == "linear":
        return torch.linspace(start, end, n, dtype=torch.float64)
    if kind == "scaled_linear":
        return torch.linspace(start**0.5, end**0.5, n, dtype=torch.float64) ** 2
    if kind == "squaredcos_cap_v2":  # Nichol & Dhariwal 2021, eq. 17, betas capped at 0.999
        alpha_bar = [math.cos((i / n + 0.008) / 1.008 * math.pi / 2) ** 2 for i in range(n + 1)]
        return torch.tensor([min(1 - alpha_bar[i + 1] / alpha_bar[i], 0.999) for i in range(n)], dtype=torch.float64)
    raise ValueError(f"unsupported beta_schedule {kind!r}; supported: linear, scaled_linear, squaredcos_cap_v2")


def _schedule_from_config(config: dict, path) -> DiscreteVP | FlowMatching:
    """DDPM-family configs: their betas as a DiscreteVP. Flow-matching configs (FlowMatchEulerDiscreteScheduler):
    a FlowMatching schedule with their static shift, the network seeing timesteps sigma x num_train_timesteps."""
    if not config.get("_class_name", "").startswith("FlowMatch"):
        return DiscreteVP(betas_from_config(config))
    if config.get("use_dynamic_shifting"):
        raise ValueError(f"diffusers:{path}: use_dynamic_shifting sets the shift from the image's token count at "
                         f"sampling time; give a static 'shift' (FlowMatching.for_resolution computes Flux's)")
    return FlowMatching(shift=config.get("shift", 1.0), n_train=config.get("num_train_timesteps", 1000))


def load_diffusers(path: str | Path):
    """A local diffusers UNet2DModel and its scheduler config as a NetworkSource; a latent pipeline folder (DiT,
    Stable Diffusion: model_index.json) as a bench.models.pipelines.PipelineSource."""
    from diffusers import UNet2DModel

    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"diffusers:{path}: no such folder")
    if _latent_pipeline(path):
        return pipelines.PipelineSource(path)
    unet_dir = _unet_dir(path)
    candidates = [path / "scheduler" / "scheduler_config.json", path / "scheduler_config.json"]
    scheduler_config = next((c for c in candidates if c.is_file()), None)
    if not (unet_dir / "config.json").is_file() or scheduler_config is None:
        raise FileNotFoundError(f"diffusers:{path}: need a UNet2DModel folder (config.json + weights) and a scheduler "
                                f"config; looked for {unet_dir / 'config.json'} and {', '.join(map(str, candidates))}")
    config = json.loads(scheduler_config.read_text())
    flow = config.get("_class_name", "").startswith("FlowMatch")
    prediction = "flow" if flow else config.get("prediction_type", "epsilon")
    if prediction not in PREDICTION_TYPES:
        raise ValueError(f"diffusers:{path}: prediction_type {prediction!r} not supported; supported: "
                         f"{', '.join(PREDICTION_TYPES)}")
    # weights frozen, so a forward builds no graph unless x asks for one (the nll metric's divergence does)
    unet = UNet2DModel.from_pretrained(str(unet_dir), **pipelines.load_options()).eval().requires_grad_(False)
    schedule = _schedule_from_config(config, path)
    conditioning = read_conditioning(path)

    def conditional_net(x, t, labels=None):
        return unet(x.to(unet.dtype), schedule.network_time(t).to(x.device, unet.dtype),
                    class_labels=labels).sample.to(x.dtype)

    def net(x, t):
        if conditioning is None:
            return conditional_net(x, t)
        if not conditioning.guidable:
            raise ValueError(f"diffusers:{path} is class-conditional without a null class: it has no unconditional "
                             f"prediction; give the spec class_labels")
        return conditional_net(x, t, torch.full((x.shape[0],), conditioning.null_class, device=x.device))

    size = pipelines.sample_sides(unet.config.sample_size)
    return NetworkSource(DiffusionModel(net, schedule, PREDICTION_TYPES[prediction]), (unet.config.in_channels, *size),
                         dataset=trained_on(path), module=unet, weights_sha256=files_digest(unet_dir),
                         conditioning=conditioning, conditional=conditional_net if conditioning is not None else None)


def trained_on(path) -> str | None:
    """What a diffusers folder's network was trained on, where the folder says: Fashion-MNIST for one written by
    ``python -m bench train`` (its training.json); None for any other (a checkpoint does not say)."""
    record = Path(path) / "training.json"
    try:
        command = json.loads(record.read_text()).get("command", "")
    except (OSError, ValueError, AttributeError):
        return None
    return f"{FASHION_MNIST} (python -m bench train, {record})" if command.startswith("python -m bench train") else None


def _latent_pipeline(path: Path) -> bool:
    """Whether a diffusers folder is a latent pipeline (bench.models.pipelines), not a plain UNet's folder."""
    return pipelines.pipeline_class(path) not in (None, *PLAIN_UNET_PIPELINES)


def _unet_dir(path: Path) -> Path:
    """Where a plain UNet folder keeps its config.json: unet/ in a pipeline folder (what make train writes), else the
    folder itself."""
    return path / "unet" if (path / "unet" / "config.json").is_file() else path


def read_conditioning(path):
    """A diffusers folder's conditioning from its configs alone (no weights): a UNet's class conditioning from its
    config.json and classes.json, a latent pipeline's (bench.models.pipelines)."""
    path = Path(path)
    if _latent_pipeline(path):
        found = pipelines.problems(path)
        if found:
            raise ValueError("; ".join(found))
        return pipelines.read_conditioning(path)
    unet_dir = _unet_dir(path)
    embeddings = json.loads((unet_dir / "config.json").read_text()).get("num_class_embeds")
    if not embeddings:
        return None
    record = path / "classes.json"
    if not record.is_file():
        return ClassConditioning(int(embeddings), tuple(str(k) for k in range(embeddings)), None)
    classes = json.loads(record.read_text())
    null = classes.get("null_class")
    if null is not None and not (null == len(classes["names"]) and embeddings == null + 1):
        raise ValueError(f"{record}: null_class {null} with {len(classes['names'])} names does not fit the UNet's "
                         f"{embeddings} class embeddings (expected names 0..{embeddings - 2} and null {embeddings - 1})")
    return ClassConditioning(len(classes["names"]), tuple(classes["names"]), null)


def read_image_side(path) -> int:
    """The shorter side in pixels of the images a diffusers folder's samples are, from its configs alone (no weights):
    a UNet's sample_size, a latent pipeline's decoded size."""
    path = Path(path)
    if _latent_pipeline(path):
        return pipelines.read_image_side(path)
    unet_dir = _unet_dir(path)
    size = json.loads((unet_dir / "config.json").read_text())["sample_size"]
    return min(pipelines.sample_sides(size))


def load_python(spec: str):
    """``module:function`` -> a model source: the function returns (DiffusionModel, event_shape), or a
    source of its own with ``.model(schedule)`` and ``.event_shape`` (e.g. a bench.models.analytic
    GaussianMixture, which then brings exact ground truth and takes the spec's schedule). A DiffusionModel's network
    that is a torch module is run as a diffusers UNet is: in eval mode with its weights frozen, moved to the grid's
    device, called in its weights' dtype (``_in_weights_dtype``)."""
    if problem := python_model_problem(spec):
        raise ValueError(f"python:{spec}: {problem}")
    module_name, _, function_name = spec.partition(":")
    result = getattr(importlib.import_module(module_name), function_name)()
    if callable(getattr(result, "model", None)) and hasattr(result, "event_shape"):
        return result
    if not (isinstance(result, tuple) and len(result) == 2 and isinstance(result[0], DiffusionModel)):
        raise TypeError(f"python:{spec} must return (DiffusionModel, event_shape) or a model source with "
                        f".model(schedule) and .event_shape, got {type(result).__name__}")
    diffusion, event_shape = result
    module = diffusion.net if isinstance(diffusion.net, torch.nn.Module) else None
    if module is not None:  # as a diffusers UNet: for sampling (no dropout), no graph of the weights in any forward
        module.eval().requires_grad_(False)
        diffusion = DiffusionModel(_in_weights_dtype(module), diffusion.schedule, diffusion.prediction)
    return NetworkSource(diffusion, tuple(event_shape), module=module,
                         weights_sha256=module_digest(module) if module is not None else None)


def python_model_problem(spec: str) -> str | None:
    """What keeps ``python:`` + ``spec`` (module:function) from loading, found without running the module: its form,
    or a module that is not on the python path; None where it may load."""
    module_name, _, function_name = spec.partition(":")
    if not module_name or not function_name:
        return "expected python:module:function"
    try:
        found = importlib.util.find_spec(module_name)
    except (ImportError, ValueError):  # a parent package that is not there
        found = None
    return None if found else f"no module {module_name!r} on the python path (put its folder on PYTHONPATH)"


def _in_weights_dtype(module: torch.nn.Module):
    """``module`` as a python: function's network is called: x and t in its weights' dtype (the reference solve runs
    in float64, a spec may ask float64, and weights are mostly float32: a convolution given a float64 x raises), its
    output in x's, as a diffusers UNet's is."""
    dtype = next((p.dtype for p in module.parameters() if p.is_floating_point()), None)
    if dtype is None:
        return module

    def net(x, t, *args, **kwargs):
        return module(x.to(dtype), t.to(dtype), *args, **kwargs).to(x.dtype)

    return net


LOADERS = {"diffusers": load_diffusers, "python": load_python}
