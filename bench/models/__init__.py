"""Models: what the samplers sample, by the name a spec gives it.

Job: build a model source from a spec entry: the analytic Gaussian mixtures (exact score, samples and density:
the ground truth; ``gmm_classes`` class-conditional), the shipped Fashion-MNIST UNets (unconditional and
class-conditional), a diffusers folder (``diffusers:PATH``) or a function (``python:module:function``); what a
conditional model takes, its conditions and its guided model (conditioning.py); the datasets they need
(Fashion-MNIST) and the UNets' training.

May import: solvers, bench.files. Nothing else of the harness (every later stage imports this).
"""
from bench.models.conditioning import (ClassConditioning, TextConditioning, conditioning_label, draw_labels,
                                      guided_model, prompts_label)
from bench.models.presets import (ANALYTIC_PRESETS, CHECKPOINTS_DIR, DATA_MODELS, MODELS, NETWORK_PRESETS,
                                  build_model, digits, fashion_gmm, fmnist_cond_unet, fmnist_unet, gmm_classes, gmm_hd,
                                  is_model_name, model_conditioning, model_problem, ring2d, sample_kind, weights_digest)

__all__ = ["ANALYTIC_PRESETS", "CHECKPOINTS_DIR", "DATA_MODELS", "MODELS", "NETWORK_PRESETS", "ClassConditioning",
           "TextConditioning", "prompts_label",
           "build_model", "conditioning_label", "digits", "draw_labels", "fashion_gmm", "fmnist_cond_unet",
           "fmnist_unet", "gmm_classes", "gmm_hd", "guided_model", "is_model_name", "model_conditioning",
           "model_problem", "ring2d", "sample_kind", "weights_digest"]
