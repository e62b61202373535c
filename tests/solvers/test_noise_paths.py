"""Stochastic runs on the runner's own noise: seeded Brownian paths, independent draws within a step,
strong orders on a fixed path, and step-doubling estimates that use them."""
import pandas as pd
import pytest
import torch

from bench.run import sampling, store
from bench.spec.config import expand, parse_spec
from bench.models import ring2d
from bench.run.runner import SweepCache
from bench.run.sweep import run_sweep
from solvers import SOLVERS, sample
from solvers.noise import BrownianNoise, NoNoise, PrecomputedNoise
from solvers.schedules import VPLinear
from solvers.spacing import timesteps
from support import guided_ring, fitted_slope, prior_sample

SCHEDULE = VPLinear()
CPU = torch.device("cpu")

# Every stochastic way to run a solver: (solver, options, eta).
STOCHASTIC_RUNS = [
    ("euler_maruyama", {}, 1.0), ("euler", {}, 0.5), ("ddim", {}, 1.0), ("ddpm", {}, 1.0),
    ("ddpm", {"variance": "beta"}, 1.0), ("dpmpp_2m_sde", {}, 1.0), ("dpmpp_2m_sde", {}, 0.5),
    ("dpmpp_2m_sde", {"second_order": "taylor"}, 1.0), ("dpmpp_3m_sde", {}, 1.0), ("dpmpp_3m_sde", {}, 0.5),
    ("edm_stochastic", {}, 1.0), ("edm_stochastic", {"s_churn": 10.0}, 0.0), ("pc", {}, 1.0),
    ("pc", {"corrector_steps": 0}, 1.0), ("pc", {"corrector_steps": 0, "predictor": "reverse_diffusion"}, 1.0),
    ("euler_ancestral", {}, 1.0), ("dpm_2_ancestral", {}, 1.0), ("dpm_2_ancestral", {}, 0.5),
    ("dpmpp_sde", {}, 1.0), ("dpmpp_sde", {}, 0.5), ("restart", {}, 1.0), ("restart", {"restarts": 3}, 1.0),
    ("seeds_2", {}, 1.0), ("seeds_2", {"solver_type": "phi_2"}, 0.5), ("seeds_3", {}, 1.0), ("seeds_3", {}, 0.5),
    ("er_sde", {}, 1.0), ("er_sde", {"max_stage": 1}, 1.0), ("sa_solver", {}, 1.0),
    ("sa_solver", {"noise_sigma_min": 0.0, "noise_sigma_max": float("inf")}, 1.0),
]


def _run_id(run):
    name, options, eta = run
    return f"{name}-eta{eta:g}" + "".join(f"-{k}={v}" for k, v in options.items())


class _RecordingPath:
    """A BrownianNoise (and its independent streams) that records every (stream, t, s) it is asked for."""

    def __init__(self, path, log, stream=0):
        self.path, self.log, self.stream = path, log, stream

    def __call__(self, t, s, like):
        self.log.append((self.stream, t, s))
        return self.path(t, s, like)

    def independent(self, stream):
        return _RecordingPath(self.path.independent(stream), self.log, stream)


@pytest.mark.parametrize("run", STOCHASTIC_RUNS, ids=_run_id)
def test_no_solver_reuses_a_brownian_increment_within_a_solve(run):
    """Asking one path twice for the same (t, s) returns the same z: a second draw must use another stream."""
    name, options, eta = run
    x_T = prior_sample(SCHEDULE, 4, 2)
    log = []
    path = _RecordingPath(BrownianNoise(x_T, SCHEDULE.t_min, SCHEDULE.t_max, seed=3), log)
    sample(name, ring2d().model(SCHEDULE), x_T, timesteps("logsnr", 6, SCHEDULE), eta=eta, noise=path, **options)
    assert log, f"{name} drew no noise in a stochastic run"
    assert len(set(log)) == len(log), f"{name} drew the same (stream, t, s) twice: {sorted(log)}"


@pytest.mark.parametrize("name", list(SOLVERS))
def test_draws_noise_says_exactly_when_a_solver_draws(name):
    """The registry decides which runs get a seeded path and which get NoNoise: check both directions."""
    solver = SOLVERS[name]
    model, x_T = ring2d().model(SCHEDULE), prior_sample(SCHEDULE, 4, 2)
    if solver.needs_guidance:  # CFG++ reads the unconditional prediction: the guided two-class ring
        model = guided_ring(SCHEDULE, 4)
    runs = [(eta, options) for n, options, eta in STOCHASTIC_RUNS if n == name]
    if solver.stochastic != "sde":
        runs.append((0.0, {"rtol": 1e-3, "atol": 1e-3} if solver.adaptive else {}))
    for eta, options in runs:
        log = []
        path = _RecordingPath(BrownianNoise(x_T, SCHEDULE.t_min, SCHEDULE.t_max, seed=3), log)
        sample(name, model, x_T, timesteps("logsnr", 4, SCHEDULE), eta=eta, noise=path, **options)
        assert bool(log) == solver.draws_noise(eta, options), (name, eta, options)
        if not log:
            sample(name, model, x_T, timesteps("logsnr", 4, SCHEDULE), eta=eta, noise=NoNoise(), **options)


SMOOTH_RING = "python:support:smooth_ring"  # the ring with std 0.25: strong errors asymptotic from 64 steps


def _config(name, options, eta, steps, model=SMOOTH_RING, n_samples=200):
    spec = parse_spec({"models": [model], "solvers": [name], "steps": steps, "etas": [eta], "n_samples": n_samples,
                       "dtype": "float64", "options": {name: options} if options else {}})
    return expand(spec)


def _runner_samples(cfg, steps, cache=None):
    cache = cache or SweepCache()
    source, model = cache.model(cfg)
    x_T = cache.prior(cfg, source.event_shape, CPU, torch.float64)
    return sampling.solve(cfg, model, x_T, steps, CPU).samples


# Three in the default suite (10-12 s each on the 2-core CPU); pc (two evaluations a step, 20 s) and the rest: -m slow.
FAST_STRONG_ORDER = {"euler_maruyama-eta1", "dpmpp_2m_sde-eta1", "edm_stochastic-eta1"}


@pytest.mark.parametrize("run", [pytest.param(r, id=_run_id(r), marks=() if _run_id(r) in FAST_STRONG_ORDER
                                              else pytest.mark.slow) for r in STOCHASTIC_RUNS])
def test_strong_order_on_the_runners_brownian_path_matches_the_registry(run):
    """Mean error against a 4096-step solve on the same path (the runner's noise, seed and batch), n = 64..256.

    Measured (ring std 0.25, logsnr, 400 samples): euler_maruyama 1.08, euler eta 0.5 1.07, ddim/ddpm
    1.02, ddpm beta 0.97, dpmpp_2m_sde eta 1 / 0.5 1.04 / 1.10, edm_stochastic eta 1 0.94, s_churn 10 0.93,
    euler_ancestral 1.03, dpm_2_ancestral eta 1 / 0.5 1.09 / 1.02, dpmpp_sde eta 1 / 0.5 0.84 / 1.02, restart
    2.03 (its noise is a fixed number of jumps at fixed times: Heun's order), seeds_2 eta 1 / 0.5 0.80 / 0.86,
    seeds_3 eta 1 / 0.5 0.82 / 0.94 (additive noise: order 1, still approaching it from below), er_sde 0.99,
    er_sde max_stage 1 1.04, sa_solver with noise to the end 0.98 (with its default interval none, see
    sa_solver_order);
    pc with a corrector does not converge pathwise (its Langevin step does not shrink with the step).
    """
    name, options, eta = run
    cfg = _config(name, options, eta, [64])[0]
    cache = SweepCache()
    fine = _runner_samples(cfg, 4096, cache)
    ns = (64, 128, 256)
    errors = [(_runner_samples(cfg, n, cache) - fine).norm(dim=1).mean().item() for n in ns]
    order = SOLVERS[name].order_for(eta, options)
    slope = fitted_slope(ns, errors)
    if order is None:
        assert slope < 0.3, f"{name} {options}: errors {errors} fall at slope {slope:.2f}, registry says no order"
    else:
        assert abs(slope - order) < 0.25, f"{name} {options} eta {eta}: slope {slope:.2f}, registry {order}"


@pytest.mark.parametrize("name, options, eta, grid", [
    ("euler_maruyama", {}, 1.0, {}), ("dpmpp_2m_sde", {}, 1.0, {}), ("edm_stochastic", {}, 1.0, {}),
    ("lms", {"order": 4, "warmup": "lower_order"}, 0.0, {"schedule": "VE", "spacings": ["uniform"]}),
], ids=["euler_maruyama", "dpmpp_2m_sde", "edm_stochastic", "lms-lower_order"])
def test_stepdoubling_column_is_within_3x_of_the_true_error(tmp_path, name, options, eta, grid):
    """The n-step row's err_stepdoubling (the runner's own path) against the 2n-step solve's true error:
    its distance to the same solver on 4096 steps, same x_T and Brownian path.

    lms with the lower-order warm-up is checked on VE, where its first Euler step's error shows (order 2,
    measured ratio 0.83 at n = 64). On VPLinear + logsnr that step starts from nearly pure noise, where
    the flow is nearly linear: its error coefficient is tiny, the error falls at order 4 up to n = 256,
    and the order-2 estimate is 4-5x above the truth there (conservative; the old p = 4 was not).
    """
    raw = {"name": "t", "models": [SMOOTH_RING], "solvers": [name], "steps": [64, 128], "etas": [eta],
           "n_samples": 200, "dtype": "float64", "metrics": ["err_stepdoubling"], "timing_repeats": 1,
           "options": {name: options} if options else {}, **grid}
    spec = parse_spec(raw, str(tmp_path / "t.toml"))
    run_dir = tmp_path / "run"
    run_sweep(expand(spec), run_dir, store.open_run(run_dir, spec)["run_id"], progress=False)
    row = store.load_rows(run_dir).set_index("steps").loc[64]
    cfg = next(c for c in expand(spec) if c.steps == 128)
    cache = SweepCache()
    true_error = (_runner_samples(cfg, 128, cache) - _runner_samples(cfg, 4096, cache)).norm(dim=1).median().item()
    ratio = row.err_stepdoubling / true_error
    assert 1 / 3 < ratio < 3, f"{name}: estimate {row.err_stepdoubling:.3g}, true {true_error:.3g}"


def test_churn_at_eta_zero_is_seeded_and_not_compared_to_the_ode(tmp_path):
    """edm_stochastic with s_churn at eta = 0 is stochastic: same config, same samples; no err_reference."""
    raw = {"name": "t", "models": ["ring2d"], "solvers": ["edm_stochastic"], "steps": [8], "n_samples": 64,
           "options": {"edm_stochastic": {"s_churn": 5.0}}, "metrics": ["err_reference", "sliced_wasserstein"]}
    tables = []
    for run in ("a", "b"):
        spec = parse_spec(raw, str(tmp_path / "t.toml"))
        torch.manual_seed(len(run) + ord(run))  # a different global RNG state for each run
        run_sweep(expand(spec), tmp_path / run, store.open_run(tmp_path / run, spec)["run_id"], progress=False)
        tables.append(store.load_rows(tmp_path / run).iloc[0])
    assert tables[0].status == "ok" and tables[0].sliced_wasserstein == tables[1].sliced_wasserstein
    assert pd.isna(tables[0].err_reference)


def test_brownian_streams_are_independent_and_reproducible():
    like = torch.zeros(20_000, dtype=torch.float64)
    main = BrownianNoise(like, 0.0, 1.0, seed=5)
    z0, z1 = main(0.8, 0.3, like), main.independent(1)(0.8, 0.3, like)
    assert abs(torch.corrcoef(torch.stack([z0, z1]))[0, 1].item()) < 5 / 20_000**0.5
    assert torch.equal(z1, BrownianNoise(like, 0.0, 1.0, seed=5).independent(1)(0.8, 0.3, like))
    assert not torch.equal(z1, main.independent(2)(0.8, 0.3, like))
    with pytest.raises(ValueError, match="stream must be an integer >= 1, got 0"):
        main.independent(0)


@pytest.mark.parametrize("run", STOCHASTIC_RUNS, ids=_run_id)
def test_noise_drawn_before_the_solve_is_the_paths_own_and_covers_every_draw(run):
    """The runner draws a fixed grid's noise before the clock starts: same samples, no draw left to the tree."""
    name, options, eta = run
    model, x_T = ring2d().model(SCHEDULE), prior_sample(SCHEDULE, 8, 2)
    ts = timesteps("karras", 7, SCHEDULE)

    def path():
        return BrownianNoise(x_T, SCHEDULE.t_min, SCHEDULE.t_max, seed=5)

    streams = SOLVERS[name].extra_noise_streams(options)
    drawn = PrecomputedNoise(path(), ts, x_T, streams=streams,
                             extra_intervals=SOLVERS[name].extra_noise_intervals(SCHEDULE, ts.tolist(), options))
    direct = sample(name, model, x_T, ts, eta=eta, noise=path(), **options)
    assert torch.equal(sample(name, model, x_T, ts, eta=eta, noise=drawn, **options), direct)
    assert drawn.misses == 0


def test_precomputed_draws_copy_into_a_captured_solves_buffers():
    """cuda_graph replays read the first batch's noise tensors: a later batch writes its draws into them."""
    like = torch.zeros(6, 2, dtype=torch.float64)
    ts = timesteps("karras", 4, SCHEDULE)
    first = PrecomputedNoise(BrownianNoise(like, SCHEDULE.t_min, SCHEDULE.t_max, seed=1), ts, like)
    second = PrecomputedNoise(BrownianNoise(like, SCHEDULE.t_min, SCHEDULE.t_max, seed=2), ts, like)
    buffer = first(float(ts[0]), float(ts[1]), like)
    second.copy_into(first)
    assert first(float(ts[0]), float(ts[1]), like) is buffer
    assert torch.equal(buffer, second(float(ts[0]), float(ts[1]), like))
    with pytest.raises(ValueError, match="drawn for different intervals"):
        PrecomputedNoise(BrownianNoise(like, SCHEDULE.t_min, SCHEDULE.t_max, seed=3), ts[:3], like).copy_into(first)


def _runner_solve(solver, model_name, batch_size=32, n=32, **spec):
    """A config's samples on the runner's own path (SweepCache, prior, sampling.solve), on the CPU."""
    cfg = expand(parse_spec({"models": [model_name], "solvers": [solver], "steps": [6], "etas": [1.0],
                             "n_samples": n, "batch_size": batch_size, **spec}))[0]
    cache = SweepCache()
    source, model = cache.model(cfg)
    x_T = cache.prior(cfg, source.event_shape, CPU, torch.float32)
    return sampling.solve(cfg, model, x_T, cfg.steps, CPU)


@pytest.mark.parametrize("solver", ["ddpm", "dpmpp_sde", "restart"])
def test_a_noise_memory_bound_splits_the_batch_and_keeps_every_samples_noise(monkeypatch, solver):
    """Pre-drawn noise is held for a few samples at a time when a whole batch's would not fit: each part takes its
    rows of its batch's Brownian path, so the samples are the same as those of the unsplit solve."""
    whole = _runner_solve(solver, "python:support:single_gaussian")
    per_sample = whole.samples[0].numel() * whole.samples.element_size()
    monkeypatch.setattr(sampling, "NOISE_BUDGET_BYTES", 40 * per_sample)  # a few steps' draws for about 5 samples
    split = _runner_solve(solver, "python:support:single_gaussian")
    assert whole.batch_used == 32 and split.batch_used < 8 and split.batches > 4
    assert torch.equal(split.samples, whole.samples)


def test_the_out_of_memory_path_keeps_the_noise_pairing():
    """oom_above_8 is single_gaussian that cannot take more than 8 samples at once: its ddpm samples, solved in
    parts of 8 after the halving, equal single_gaussian's solved in one batch of 32."""
    whole = _runner_solve("ddpm", "python:support:single_gaussian")
    halved = _runner_solve("ddpm", "python:support:oom_above_8")
    assert halved.batch_used == 8 and torch.equal(halved.samples, whole.samples)
