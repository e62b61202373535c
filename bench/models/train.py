"""Train the built-in UNet (diffusers' UNet2DModel, a few million parameters) on Fashion-MNIST.

DDPM training (Ho et al. 2020, Algorithm 1) on ``DiscreteVP.linear(1000)``: pick n uniformly, set
t = (n + 1)/N, x_t = alpha_t x0 + sigma_t eps, regress eps (or v, Salimans & Ho 2022) with the
network seeing the step index n. With class labels the UNet gets a class embedding with one extra entry,
the null class (index = number of classes), which replaces the label with probability ``label_dropout``, so
one network predicts both p(x | y) and p(x) (Ho & Salimans 2022, arXiv:2207.12598, Algorithm 1). EMA of the weights, bf16 autocast on a GPU, a checkpoint every
``checkpoint_every`` steps that a rerun resumes from. The result is the EMA UNet saved with
``save_pretrained`` plus ``scheduler_config.json``, which ``diffusers:OUT`` loads in a grid spec, and
``losses.csv``, the training loss of every step (kept across resumes).
"""
from __future__ import annotations

import copy
import hashlib
import json
import platform
from pathlib import Path

import torch

from solvers.schedules import DiscreteVP

N_TRAIN = 1000
BETA_START, BETA_END = 1e-4, 0.02


def build_unet(sample_size: int = 32, channels: int = 1, widths=(32, 64, 64), n_classes: int | None = None):
    """A small UNet2DModel: one ResNet block per level, attention-free (about 1.1M parameters at the default
    widths); with ``n_classes`` a class embedding of n_classes + 1 entries, the last the null class."""
    from diffusers import UNet2DModel

    return UNet2DModel(sample_size=sample_size, in_channels=channels, out_channels=channels, layers_per_block=1,
                       block_out_channels=tuple(widths), down_block_types=("DownBlock2D",) * len(widths),
                       up_block_types=("UpBlock2D",) * len(widths), norm_num_groups=min(8, widths[0]),
                       num_class_embeds=None if n_classes is None else n_classes + 1)


def _scheduler_config(prediction: str) -> dict:
    return {"_class_name": "DDPMScheduler", "num_train_timesteps": N_TRAIN, "beta_schedule": "linear",
            "beta_start": BETA_START, "beta_end": BETA_END,
            "prediction_type": {"eps": "epsilon", "v": "v_prediction"}[prediction]}


def train(data: torch.Tensor, out_dir: Path, *, steps: int, batch_size: int = 64, lr: float = 2e-4,
          prediction: str = "eps", ema_decay: float = 0.999, checkpoint_every: int = 500, device: str = "cpu",
          seed: int = 0, widths=(32, 64, 64), labels: torch.Tensor | None = None, class_names=None,
          label_dropout: float = 0.1, log=print) -> list[float]:
    """Train (or resume) and save; returns the losses of the steps run in this call. ``labels`` (int64, one per
    image, 0 .. n_classes - 1) make the UNet class-conditional; ``class_names`` name them in ``classes.json``."""
    if prediction not in ("eps", "v"):
        raise ValueError(f"train: prediction must be 'eps' or 'v', got {prediction!r}")
    if steps < 1 or batch_size < 1:
        raise ValueError(f"train: need steps >= 1 and batch_size >= 1, got {steps}, {batch_size}")
    n_classes = None
    if labels is not None:
        if labels.shape != (len(data),) or labels.dtype != torch.int64 or int(labels.min()) < 0:
            raise ValueError(f"train: labels must be int64 >= 0 with shape ({len(data)},), got {labels.dtype} "
                             f"{tuple(labels.shape)}")
        n_classes = int(labels.max()) + 1
        if class_names is not None and len(class_names) != n_classes:
            raise ValueError(f"train: {len(class_names)} class names for {n_classes} classes")
        if not 0 < label_dropout < 1:
            raise ValueError(f"train: label_dropout must be in (0, 1) so the null class is learned, got {label_dropout}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    checkpoint_path = out_dir / "checkpoint.pt"
    schedule = DiscreteVP.linear(N_TRAIN, BETA_START, BETA_END)
    unet = build_unet(data.shape[-1], data.shape[1], widths, n_classes).to(device)
    ema = copy.deepcopy(unet).requires_grad_(False)
    optimizer = torch.optim.AdamW(unet.parameters(), lr=lr)
    generator = torch.Generator().manual_seed(seed)
    start, history = 0, []
    if checkpoint_path.is_file():
        state = torch.load(checkpoint_path, map_location=device, weights_only=False)
        unet.load_state_dict(state["unet"])
        ema.load_state_dict(state["ema"])
        optimizer.load_state_dict(state["optimizer"])
        generator.set_state(state["generator"])
        start = state["step"]
        history = state.get("losses", [])
        log(f"resuming from step {start}")
    alphas, sigmas = schedule.alphas_cumprod.sqrt().float(), (1 - schedule.alphas_cumprod).sqrt().float()
    use_bf16 = device.startswith("cuda")
    losses = []
    for step in range(start, steps):
        index = torch.randint(len(data), (batch_size,), generator=generator)
        x0 = data[index].to(device)
        n = torch.randint(N_TRAIN, (batch_size,), generator=generator)
        eps = torch.randn(x0.shape, generator=generator).to(device)
        alpha, sigma = alphas[n].to(device).view(-1, 1, 1, 1), sigmas[n].to(device).view(-1, 1, 1, 1)
        target = eps if prediction == "eps" else alpha * eps - sigma * x0
        class_labels = None
        if n_classes is not None:
            dropped = torch.rand(batch_size, generator=generator) < label_dropout
            class_labels = torch.where(dropped, n_classes, labels[index]).to(device)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=use_bf16):
            out = unet(alpha * x0 + sigma * eps, n.to(device), class_labels=class_labels).sample
        loss = torch.nn.functional.mse_loss(out.float(), target)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        with torch.no_grad():
            for p_ema, p in zip(ema.parameters(), unet.parameters()):
                p_ema.lerp_(p, 1 - ema_decay)
        losses.append(loss.item())
        if (step + 1) % checkpoint_every == 0 or step + 1 == steps:
            tmp = checkpoint_path.with_name(".tmp-checkpoint.pt")
            torch.save({"unet": unet.state_dict(), "ema": ema.state_dict(), "optimizer": optimizer.state_dict(),
                        "generator": generator.get_state(), "step": step + 1, "losses": history + losses}, tmp)
            tmp.replace(checkpoint_path)
            log(f"step {step + 1}/{steps}: loss {sum(losses[-50:]) / len(losses[-50:]):.4f}")
    ema.save_pretrained(out_dir / "unet")
    (out_dir / "scheduler_config.json").write_text(json.dumps(_scheduler_config(prediction), indent=2))
    if n_classes is not None:
        names = list(class_names) if class_names is not None else [str(k) for k in range(n_classes)]
        (out_dir / "classes.json").write_text(json.dumps(
            {"names": names, "null_class": n_classes, "label_dropout": label_dropout}, indent=2) + "\n")
    (out_dir / "losses.csv").write_text("step,loss\n" + "".join(
        f"{i + 1},{loss:.6g}\n" for i, loss in enumerate(history + losses)))
    return losses


def write_record(out_dir: Path, command: str, commit: str, seconds: float, machine: str | None = None) -> dict:
    """``training.json``: what reproduces the weights (command, commit), what they are (sha256 of the
    safetensors file) and what training cost (seconds, machine)."""
    out_dir = Path(out_dir)
    weights = out_dir / "unet" / "diffusion_pytorch_model.safetensors"
    losses = (out_dir / "losses.csv").read_text().splitlines()[1:]
    record = {"command": command, "commit": commit, "weights_sha256": hashlib.sha256(weights.read_bytes()).hexdigest(),
              "weights_bytes": weights.stat().st_size, "steps": len(losses), "seconds": round(seconds),
              "machine": machine or f"{platform.machine()}, {torch.get_num_threads()} torch threads",
              "torch": torch.__version__}
    (out_dir / "training.json").write_text(json.dumps(record, indent=2) + "\n")
    return record
