"""CLIP score of a text-to-image model's samples: how well each decoded image matches its prompt.

Per sample, 100 x max(cos(image embedding, prompt embedding), 0) with the user's local CLIP (spec key
``clip_model``: a folder with a transformers CLIPModel and its CLIPProcessor; nothing is downloaded), the
convention torchmetrics' CLIPScore uses (Hessel et al. 2021, arXiv:2104.08718, scale 2.5 instead of 100); the row
has the mean over samples and its bootstrap standard error. Images in [-1, 1] are given to the processor in
[0, 1] (its resize, crop and normalisation as the model was trained with); each sample's prompt is the one it was
sampled with (the spec's prompts, cycled).
"""
from __future__ import annotations

import torch

from bench.metrics.registry import F64, STR, Inputs, Metric, register
from bench.metrics.uncertainty import bootstrap_se
from bench.models.weights import files_digest


def load_clip(path, device: str):
    """(CLIPModel in eval mode on ``device``, its CLIPProcessor, sha256 of its weight files) from a local folder."""
    from transformers import CLIPModel, CLIPProcessor

    model = CLIPModel.from_pretrained(str(path)).eval().requires_grad_(False).to(device)
    return model, CLIPProcessor.from_pretrained(str(path)), files_digest(path)


@torch.no_grad()
def clip_scores(model, processor, images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
    """100 x max(cos, 0) per (image in [-1, 1], prompt) pair."""
    device = next(model.parameters()).device
    pixels = processor(images=list(((images.float().cpu() + 1) / 2).clamp(0, 1)), do_rescale=False,
                       return_tensors="pt")["pixel_values"].to(device)
    text = processor(text=prompts, padding=True, truncation=True, return_tensors="pt").to(device)
    image_features = _features(model.get_image_features(pixel_values=pixels))
    text_features = _features(model.get_text_features(**text))
    return 100 * torch.nn.functional.cosine_similarity(image_features, text_features).clamp(min=0)


def _features(output) -> torch.Tensor:
    """The projected embedding (transformers 5 may return an output object holding it)."""
    return output if torch.is_tensor(output) else output.pooler_output


def _clip_score(inputs: Inputs) -> dict:
    cfg = inputs.cfg
    if cfg.prompts is None:
        note = "no clip_score: the model takes no prompts"
        if note not in inputs.notes:
            inputs.notes.append(note)
        return {}
    loaded = inputs.sweep.setdefault("clip", {})
    key = (cfg.clip_model, str(inputs.device))
    if key not in loaded:
        loaded[key] = load_clip(cfg.clip_model, str(inputs.device))
    model, processor, digest = loaded[key]
    n = len(inputs.samples)
    prompts = [cfg.prompts[i % len(cfg.prompts)] for i in range(n)]
    scores = torch.cat([clip_scores(model, processor, images, prompts[start:start + len(images)])
                        for start, images in zip(range(0, n, 64), inputs.images(inputs.samples).split(64))])
    return {"clip_score": scores.mean().item(), "clip_score_se": bootstrap_se(scores, "mean", inputs.seed),
            "clip_model_sha256": digest[:16]}


register(Metric(
    "clip_score", "CLIP score: mean over samples of 100 x max(cos(image, prompt), 0) with the spec's local CLIP "
    "(clip_model; text-conditional models, decoded images)",
    {"clip_score": (F64, "mean over samples of 100 x max(cos(CLIP image embedding, its prompt's), 0)"),
     "clip_score_se": (F64, "its standard error (bootstrap over samples)"),
     "clip_model_sha256": (STR, "sha256 (prefix) of the CLIP weights")},
    ("images",), _clip_score, better={"clip_score": "higher"}))
