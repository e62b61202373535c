"""Helpers shared by the tests (a plain module: torch-fidelity's wheel ships a top-level `tests` package,
so test modules import this as `support`, never as `tests.something`)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from bench.metrics import fid_weights
from bench.models.data import DEBIAN_DIR


def fitted_slope(ns, errors) -> float:
    """The empirical order: minus the least-squares slope of log error against log n."""
    return float(-np.polyfit(np.log(ns), np.log(errors), 1)[0])


def prior_sample(schedule, n: int, dim: int, seed: int = 0) -> torch.Tensor:
    """x_T ~ N(0, sigma_{t_max}^2 I) (alpha_{t_max} is ~0 on VP schedules, 1 on VE), float64."""
    g = torch.Generator().manual_seed(seed)
    scale = float(schedule.sigma(schedule.t_max))
    return scale * torch.randn(n, dim, generator=g, dtype=torch.float64)


def guided_ring(schedule, batch: int, scale: float = 2.0, seed: int = 0):
    """The 8-mode ring with std 0.25 as two classes (even and odd modes), classifier-free guided at ``scale`` towards
    labels drawn from ``seed`` for a batch of ``batch``: exact conditional and unconditional scores."""
    from bench.models import ring2d
    from bench.models.analytic import GaussianMixture
    from solvers.guidance import GuidedModel

    ring = ring2d(std=0.25)
    classes = GaussianMixture(ring.means, ring.variances, component_classes=torch.arange(8) % 2)
    model = GuidedModel(classes.conditional_net(schedule), schedule, "eps", null=torch.tensor(2), scale=scale)
    model.condition_on(torch.randint(2, (batch,), generator=torch.Generator().manual_seed(seed)))
    return model


def bench_cli(*args: str) -> tuple[int, str, str]:
    """``python -m bench ARGS`` in this process: (exit status, stdout, stderr). For the CLI's own checks of its
    arguments; what needs a process of its own (a main guard, signals, concurrency) runs as one."""
    import contextlib
    import io

    from bench.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            status = main(list(args))
        except SystemExit as exit_:  # argparse's own refusals
            status = exit_.code
    return status, out.getvalue(), err.getvalue()


# Models for runner tests, named in specs as python:support:<name> so that the sweep's worker
# processes build them too.
def smooth_ring():
    """The ring with component std 0.25: smooth enough that strong errors are asymptotic at 64+ steps."""
    from bench.models import ring2d

    return ring2d(std=0.25)


def single_gaussian():
    from bench.models.analytic import GaussianMixture

    return GaussianMixture(torch.tensor([[0.5, -0.5]]), 0.2)


def _mixture_with_eps(eps):
    """A 2-D single-Gaussian mixture whose eps is replaced by ``eps(x, schedule, t)``."""
    from bench.models.analytic import GaussianMixture

    class Replaced(GaussianMixture):
        def eps(self, x, schedule, t):
            return eps(lambda: GaussianMixture.eps(self, x, schedule, t), x)

    return Replaced(torch.tensor([[0.5, -0.5]]), 0.2)


def broken_nan():
    """eps is NaN everywhere: fixed-step solves diverge, adaptive ones must stop."""
    return _mixture_with_eps(lambda exact, x: torch.full_like(x, float("nan")))


def broken_raise():
    def eps(exact, x):
        raise RuntimeError("network exploded")

    return _mixture_with_eps(eps)


def oom_above_8():
    """Raises CUDA's out-of-memory error on batches larger than 8 (a GPU's limit, simulated on the CPU)."""
    def eps(exact, x):
        if x.shape[0] > 8:
            raise torch.cuda.OutOfMemoryError(f"batch {x.shape[0]} does not fit")
        return exact()

    return _mixture_with_eps(eps)


def oom_always():
    def eps(exact, x):
        raise torch.cuda.OutOfMemoryError(f"batch {x.shape[0]} does not fit")

    return _mixture_with_eps(eps)


def sleeps_forever():
    """A model that hangs: the sweep's time limit has to stop it."""
    import time

    def eps(exact, x):
        time.sleep(3600)
        return exact()

    return _mixture_with_eps(eps)


def fails_in_float64():
    """Works in float32 and raises in float64, as the reference solve runs: its failure must not end the rows."""
    def eps(exact, x):
        if x.dtype == torch.float64:
            raise RuntimeError("float64 is not supported by this model")
        return exact()

    return _mixture_with_eps(eps)


def fails_to_build():
    """A model whose building raises (its weights missing, say): in the reference stage's worker process too."""
    raise RuntimeError("weights not found")


def sleeps_in_float64():
    """Fast in float32, hangs in float64, as the reference solve runs: a reference that never finishes in time."""
    import time

    def eps(exact, x):
        if x.dtype == torch.float64:
            time.sleep(3600)
        return exact()

    return _mixture_with_eps(eps)


def image_mixture_32():
    """A 32x32 grey image mixture (8 random smooth means, std 0.1): LPIPS and FID paths without a dataset."""
    from bench.models.analytic import GaussianMixture

    g = torch.Generator().manual_seed(0)
    coarse = torch.rand(8, 1, 4, 4, generator=g, dtype=torch.float64) * 2 - 1
    means = torch.nn.functional.interpolate(coarse, size=(32, 32), mode="bilinear", align_corners=False)
    return GaussianMixture(means.reshape(8, -1), 0.01, event_shape=(1, 32, 32))


def torch_fidelity_fid(features: torch.Tensor, reference: torch.Tensor) -> float:
    """torch-fidelity's own FID of two feature sets (scipy's sqrtm): the independent check of ours."""
    from torch_fidelity.metric_fid import fid_features_to_statistics, fid_statistics_to_metric

    stats = [fid_features_to_statistics(x.reshape(len(x), -1).double()) for x in (features, reference)]
    return float(fid_statistics_to_metric(*stats, verbose=False)["frechet_inception_distance"])


def torch_fidelity_precision_recall(features: torch.Tensor, reference: torch.Tensor, k: int = 3) -> tuple:
    from torch_fidelity.metric_prc import prc_features_to_metric

    out = prc_features_to_metric(features.reshape(len(features), -1).float(), reference.reshape(len(reference), -1).float(),
                                 prc_neighborhood=k, prc_batch_size=10000, save_cpu_ram=False, verbose=False)
    return out["precision"], out["recall"]


HAVE_FASHION = (DEBIAN_DIR / "train-images-idx3-ubyte.gz").is_file()
needs_fashion = pytest.mark.skipif(not HAVE_FASHION, reason="apt-get install dataset-fashion-mnist (.ci/run does)")


def have_fid_weights() -> bool:
    try:
        fid_weights.resolve()
        return True
    except FileNotFoundError:
        return False


needs_weights = pytest.mark.skipif(not have_fid_weights(), reason="make fid-weights (make setup does)")


def have_lpips_weights() -> bool:
    from bench.metrics import lpips

    return all((lpips.CACHE_DIR / f"lpips-{backbone}-v0.1.pth").is_file() for backbone in lpips.BACKBONES)


def sweep_and_resample(spec, run_dir):
    """Run ``spec`` into ``run_dir``; return its first row, that config, its model source and the samples the
    runner's own path (SweepCache, prior, sampling.solve on the CPU) gives that config again: what a test
    rebuilds a row's numbers from."""
    from bench.run import sampling, store
    from bench.spec.config import expand
    from bench.run.runner import SweepCache
    from bench.run.sweep import run_sweep

    meta = store.open_run(run_dir, spec)
    run_sweep(expand(spec), run_dir, meta["run_id"], progress=False)
    row = store.load_rows(run_dir).iloc[0]
    cfg = expand(spec)[0]
    cache = SweepCache()
    source, model = cache.model(cfg)
    x_T = cache.prior(cfg, source.event_shape, torch.device("cpu"), torch.float32)
    return row, cfg, source, sampling.solve(cfg, model, x_T, cfg.steps, torch.device("cpu")).samples
