"""What a model is conditioned on, the conditions a config samples with, and the guided model a config runs.

A model source that takes class labels has ``conditioning``, a ClassConditioning (how many classes, their names,
the null class that stands for "no label" where the model learned one), and ``conditional_net(schedule)``, the
network as ``net(x, t, labels)`` in ``prediction``. Unconditional sources have ``conditioning = None``.

A spec's ``class_labels`` is "random" (one label per sample, uniform over the classes, drawn from the config's
seed: the same sample index gets the same label in every config with that seed, like x_T) or a list cycled over
the samples (``[0, 1, ..., 9]`` gives balanced classes in order).

A text-conditional source (a Stable Diffusion pipeline) has a TextConditioning: its conditions are rows of the
table of prompts it has encoded (``prompt_indices``), row 0 the empty prompt (its unconditional prediction); a
spec's prompts are cycled over the samples.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass

import torch

from solvers.guidance import GuidedModel

LABEL_SEED_OFFSET = 1_000_003  # the labels of seed s come from seed s + offset: a stream apart from x_T's


@dataclass(frozen=True)
class ClassConditioning:
    n_classes: int
    names: tuple[str, ...]
    null_class: int | None  # the label of the unconditional prediction; None: the model has none (no guidance)

    @property
    def guidable(self) -> bool:
        return self.null_class is not None


@dataclass(frozen=True)
class TextConditioning:
    """Prompts: encoded by the source; the empty prompt (row 0 of its table) is the unconditional prediction."""

    null_class: int = 0
    guidable: bool = True


def prompts_label(prompts) -> str:
    """The conditions' source of a prompt list as a row records it: 'prompts:<count>:<sha256 prefix>'."""
    digest = hashlib.sha256("\n".join(prompts).encode()).hexdigest()[:12]
    return f"prompts:{len(prompts)}:{digest}"


def conditioning_label(class_labels) -> str:
    """The conditions' source as a row records it: 'labels:random' or 'labels:0,3,7'."""
    if class_labels == "random":
        return "labels:random"
    return "labels:" + ",".join(str(int(label)) for label in class_labels)


def draw_labels(conditions: str, source, seed: int, n: int, prompts=None) -> torch.Tensor:
    """The n conditions (int64) of ``conditions`` (a conditioning_label or prompts_label) for a config with ``seed``:
    class labels, or for prompts the rows of ``source``'s prompt table, the prompts cycled over the samples."""
    kind, _, value = conditions.partition(":")
    if kind not in ("labels", "prompts"):
        raise ValueError(f"conditions {conditions!r}: class labels or prompts are supported")
    if kind == "labels" and value == "random":
        generator = torch.Generator().manual_seed(seed + LABEL_SEED_OFFSET)
        return torch.randint(source.conditioning.n_classes, (n,), generator=generator)
    if kind == "prompts":
        listed = source.prompt_indices(list(prompts))
    else:
        listed = torch.tensor([int(v) for v in value.split(",")], dtype=torch.int64)
        if bool(((listed < 0) | (listed >= source.conditioning.n_classes)).any()):
            raise ValueError(f"class labels {listed.tolist()} outside 0..{source.conditioning.n_classes - 1}")
    return listed.repeat((n + len(listed) - 1) // len(listed))[:n]  # cycled over the samples


def guided_model(source, schedule, scale: float, interval: tuple[float, float] | None = None) -> GuidedModel:
    """The classifier-free guided model of a class-conditional source at ``scale`` (1: the conditional model)."""
    conditioning = source.conditioning
    if conditioning is None:
        raise ValueError("guidance needs a conditional model; this one is unconditional")
    if scale != 1 and not conditioning.guidable:
        raise ValueError(f"guidance scale {scale:g} needs an unconditional prediction, but the model has no null class")
    null = torch.tensor(conditioning.null_class if conditioning.guidable else 0, dtype=torch.int64)
    return GuidedModel(source.conditional_net(schedule), schedule, source.prediction, null=null, scale=scale,
                       interval=interval)
