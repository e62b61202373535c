"""sample(): registry metadata, NFE accounting, determinism, pairing, and input validation."""
import subprocess
import sys

import pytest
import torch

from bench.models import ring2d
from solvers import SOLVERS, sample
from solvers.schedules import VPLinear
from solvers.spacing import timesteps
from support import guided_ring, prior_sample

SCHEDULE = VPLinear()
TS = timesteps("logsnr", 10, SCHEDULE)


@pytest.fixture
def model():
    return ring2d().model(SCHEDULE)


@pytest.fixture
def x_T():
    return prior_sample(SCHEDULE, 8, 2)


def _model_for(name, model):
    """``model``, or for a CFG++ sampler (which reads the unconditional prediction) the guided two-class ring."""
    return guided_ring(SCHEDULE, 8) if SOLVERS[name].needs_guidance else model


def test_registry_metadata_is_complete():
    for name, solver in SOLVERS.items():
        assert solver.name == name
        assert solver.order >= 1 and solver.stochastic in ("ode", "sde", "both")
        assert solver.eta and solver.reference and solver.fn.__doc__
        assert set(solver.allowed) <= set(solver.options), name  # a rule for an option the solver has
        solver.validate_options(solver.options)  # its defaults are of their own types and within its rules


@pytest.mark.parametrize("name", [n for n, s in SOLVERS.items() if not s.adaptive])
@pytest.mark.parametrize("n", [1, 3, 10])
def test_nfe_matches_registry_formula(model, x_T, name, n):
    model = _model_for(name, model)
    if n < SOLVERS[name].min_steps:
        with pytest.raises(ValueError, match=f"{name}: the grid needs at least {SOLVERS[name].min_steps} steps"):
            sample(name, model, x_T, timesteps("uniform", n, SCHEDULE), generator=torch.Generator().manual_seed(0))
        return
    model.reset_nfe()
    sample(name, model, x_T, timesteps("uniform", n, SCHEDULE), generator=torch.Generator().manual_seed(0))
    assert model.nfe == SOLVERS[name].nfe(n)
    if SOLVERS[name].needs_guidance:  # one batched call of conditional and unconditional inputs per evaluation
        assert model.passes == 2 * model.nfe


@pytest.mark.parametrize("order, warmup, n, expected", [(4, "rk4", 10, 19), (4, "rk4", 2, 8), (3, "rk4", 10, 16),
                                                        (4, "lower_order", 10, 10), (1, "rk4", 10, 10)])
def test_lms_nfe_counts_its_warmup(model, x_T, order, warmup, n, expected):
    model.reset_nfe()
    sample("lms", model, x_T, timesteps("uniform", n, SCHEDULE), order=order, warmup=warmup)
    assert model.nfe == expected == SOLVERS["lms"].nfe(n, order=order, warmup=warmup)


@pytest.mark.parametrize("name", [n for n, s in SOLVERS.items() if s.stochastic != "sde"])
def test_ode_solvers_are_bit_reproducible(model, x_T, name):
    model = _model_for(name, model)
    assert torch.equal(sample(name, model, x_T, TS), sample(name, model, x_T.clone(), TS))


@pytest.mark.parametrize("name", [n for n, s in SOLVERS.items() if s.stochastic != "ode"])
def test_stochastic_solvers_reproduce_under_the_same_seed(model, x_T, name):
    model = _model_for(name, model)

    def run(seed):
        return sample(name, model, x_T, TS, eta=1.0, generator=torch.Generator().manual_seed(seed))

    assert torch.equal(run(5), run(5)) and not torch.equal(run(5), run(6))


def test_same_seed_gives_the_same_x_T_for_every_solver(model):
    """Paired comparisons: x_T depends only on the seed, and no solver mutates it."""
    x_T = prior_sample(SCHEDULE, 8, 2, seed=9)
    before = x_T.clone()
    for name in SOLVERS:
        sample(name, _model_for(name, model), x_T, TS, generator=torch.Generator().manual_seed(0))
        assert torch.equal(x_T, before), name
    assert torch.equal(prior_sample(SCHEDULE, 8, 2, seed=9), before)


@pytest.mark.parametrize("name", [n for n, s in SOLVERS.items() if s.needs_guidance])
def test_cfg_pp_samplers_refuse_an_unguided_model_before_any_evaluation(model, x_T, name):
    with pytest.raises(ValueError, match=f"{name} is a CFG.. sampler: it needs a classifier-free guided model"):
        sample(name, model, x_T, TS, generator=torch.Generator().manual_seed(0))
    assert model.nfe == 0


def test_euler_with_eta_zero_is_the_ode_path(model, x_T):
    torch.testing.assert_close(sample("euler", model, x_T, TS, eta=0.0, generator=torch.Generator().manual_seed(1)),
                               sample("euler", model, x_T, TS))


def test_float32_input_stays_float32(x_T):
    model = ring2d().model(SCHEDULE)
    out = sample("heun", model, x_T.float(), TS)
    assert out.dtype == torch.float32


@pytest.mark.parametrize("call, error, message", [
    (lambda m, x: sample("zzz", m, x, TS), ValueError, "unknown solver 'zzz'. Valid solvers: euler, euler_maruyama"),
    (lambda m, x: sample("heum", m, x, TS), ValueError, "Did you mean 'heun'"),
    (lambda m, x: sample("euler", m, x, TS, eta=-0.5), ValueError, "eta must be >= 0, got -0.5"),
    (lambda m, x: sample("euler", m, x, TS, eta=float("nan")), ValueError, "eta must be a finite number"),
    (lambda m, x: sample("heun", m, x, TS, eta=0.5), ValueError, "heun is an ODE solver: eta must be 0, got 0.5"),
    (lambda m, x: sample("ddpm", m, x, TS, eta=0.5), ValueError, "ddpm: eta is fixed at 1.0"),
    (lambda m, x: sample("euler_maruyama", m, x, TS, eta=0.0), ValueError, "SDE solver: eta must be > 0"),
    (lambda m, x: sample("euler", m, x, TS.flip(0)), ValueError, r"strictly decreasing \(t_max first\), but ts\[0\]"),
    (lambda m, x: sample("euler", m, x, torch.tensor([1.0, 0.5, 0.5, 0.1])), ValueError, r"ts\[1\] = 0.5 <= ts\[2\] = 0.5"),
    (lambda m, x: sample("euler", m, x, torch.tensor([1.5, 0.5])), ValueError, r"ts spans \[0.5, 1.5\] but VPLinear"),
    (lambda m, x: sample("euler", m, x, torch.tensor([0.5, 0.0])), ValueError, "is defined on \\[0.001, 1.0\\]"),
    (lambda m, x: sample("euler", m, x, torch.tensor([1.0])), ValueError, "at least 2 times"),
    (lambda m, x: sample("euler", m, x, TS[None]), ValueError, "1-D floating tensor, got shape"),
    (lambda m, x: sample("euler", m, x, torch.tensor([3, 2])), ValueError, "dtype torch.int64"),
    (lambda m, x: sample("euler", m, x, [1.0, 0.5]), TypeError, "ts must be a 1-D floating torch.Tensor, got list"),
    (lambda m, x: sample("euler", m, x, torch.tensor([1.0, float("nan")])), ValueError, "ts must be finite"),
    (lambda m, x: sample("lms", m, x, TS, oder=3), ValueError, "lms: unknown option\\(s\\) oder; allowed options: order, warmup"),
    (lambda m, x: sample("lms", m, x, TS, order=7), ValueError, "lms: order must be an integer in 1..4, got 7"),
    (lambda m, x: sample("lms", m, x, TS, warmup="euler"), ValueError, "lms: warmup must be one of"),
    (lambda m, x: sample("ddpm", m, x, TS, variance="small"), ValueError, r"ddpm: variance must be one of \('beta_tilde', 'beta'\), got 'small'"),
    (lambda m, x: sample("pc", m, x, TS, predictor="langevin"), ValueError, "pc: predictor must be one of"),
    (lambda m, x: sample("pc", m, x, TS, corrector_steps=-1), ValueError, "pc: corrector_steps must be >= 0, got -1"),
    (lambda m, x: sample("pc", m, x, TS, snr=0.0), ValueError, "pc: snr must be > 0, got 0.0"),
    (lambda m, x: sample("pc", m, x, TS, eta=0.5, predictor="reverse_diffusion"), ValueError, "eta must be 1, got 0.5"),
    (lambda m, x: sample("edm_stochastic", m, x, TS, s_churn=-1.0), ValueError, r"edm_stochastic: s_churn must be a number >= 0 \(or unset: eta sets the churn\), got -1.0"),
    (lambda m, x: sample("unipc_2", m, x, TS, variant="bh3"), ValueError, "unipc_2: variant must be one of"),
    (lambda m, x: sample("dpmpp_3m_phi3", m, x, TS, second_order="heun"), ValueError,
     r"dpmpp_3m_phi3: second_order must be one of \('midpoint', 'taylor'\), got 'heun'"),
    (lambda m, x: sample("dpmpp_3m", m, x, TS, d2_weight="phi_3"), ValueError,
     "dpmpp_3m: unknown option\\(s\\) d2_weight; allowed options: second_order, lower_order_final"),
    (lambda m, x: sample("unipc_2", m, x, TS, order=3), ValueError, "unipc_2: unknown option\\(s\\) order; allowed options: variant"),
    (lambda m, x: sample("ipndm", m, x, TS, max_order=5), ValueError, "ipndm: max_order must be an integer in 1..4, got 5"),
    (lambda m, x: sample("dpmpp_2m", m, x, TS, lower_order_final="false"), ValueError,  # a TOML string is truthy
     "dpmpp_2m: lower_order_final must be true or false, got 'false'"),
    (lambda m, x: sample("lms", m, x, TS, order=3.0), ValueError, "lms: order must be an integer, got 3.0"),
    (lambda m, x: sample("gradient_estimation", m, x, TS, gamma="2"), ValueError,
     "gradient_estimation: gamma must be a number, got '2'"),
    (lambda m, x: sample("dpm_solver_2", m, x, TS, r1=0.0), ValueError, r"dpm_solver_2: r1 must be in \(0, 1\), got 0.0"),
    (lambda m, x: sample("dpm_solver_3", m, x, TS, r1=0.7), ValueError,
     "dpm_solver_3: need 0 < r1 < r2 < 1, got r1=0.7, r2=0.66"),
    (lambda m, x: sample("dpmpp_2s", m, x, TS, r=1.5), ValueError, r"dpmpp_2s: r must be in \(0, 1\), got 1.5"),
    (lambda m, x: sample("edm_stochastic", m, x, TS, s_churn="x"), ValueError,
     r"edm_stochastic: s_churn must be a number >= 0 \(or unset: eta sets the churn\), got 'x'"),
    (lambda m, x: sample("dpmpp_sde", m, x, TS, r=1.0), ValueError, r"dpmpp_sde: r must be in \(0, 1\), got 1.0"),
    (lambda m, x: sample("seeds_2", m, x, TS, solver_type="phi_3"), ValueError,
     r"seeds_2: solver_type must be one of \('phi_1', 'phi_2'\), got 'phi_3'"),
    (lambda m, x: sample("seeds_2", m, x, TS, r=0.0), ValueError, r"seeds_2: r must be in \(0, 1\), got 0.0"),
    (lambda m, x: sample("seeds_2", m, x, TS, r=1.0), ValueError, r"seeds_2: r must be in \(0, 1\), got 1.0"),
    (lambda m, x: sample("seeds_3", m, x, TS, r1=0.7), ValueError, "seeds_3: need 0 < r1 < r2 < 1, got r1=0.7, r2=0.66"),
    (lambda m, x: sample("seeds_3", m, x, TS, r2=1.0), ValueError, r"seeds_3: r2 must be in \(0, 1\), got 1.0"),
    (lambda m, x: sample("er_sde", m, x, TS, max_stage=4), ValueError, "er_sde: max_stage must be an integer in 1..3, got 4"),
    (lambda m, x: sample("sa_solver", m, x, TS, corrector_order=5), ValueError,
     "sa_solver: corrector_order must be an integer in 1..4, got 5"),
    (lambda m, x: sample("sa_solver", m, x, TS, noise_sigma_min=30.0), ValueError,
     r"sa_solver: need 0 <= noise_sigma_min <= noise_sigma_max \(sigma~ = sigma/alpha\), got 30.0, 25.5"),
    (lambda m, x: sample("sa_solver", m, x, TS, noise_switch="middle"), ValueError,
     r"sa_solver: noise_switch must be one of \('start', 'end'\), got 'middle'"),
    (lambda m, x: sample("restart", m, x, TS, restarts=0), ValueError, "restart: restarts must be an integer >= 1, got 0"),
    (lambda m, x: sample("restart", m, x, TS, restart_steps=0), ValueError,
     "restart: restart_steps must be an integer >= 1, got 0"),
    (lambda m, x: sample("restart", m, x, TS, sigma_restart_max=0.01), ValueError,
     "restart: need 0 < sigma_restart_min < sigma_restart_max, got 0.06, 0.01"),
    (lambda m, x: sample("restart", m, x, TS, sigma_restart_max=200.0), ValueError,  # above the schedule's sigma~
     r"restart: options sigma_restart_min, sigma_restart_max = 0.06, 200.0 \(in sigma/alpha\) must lie in the solve's"),
    (lambda m, x: sample("dpm_adaptive", m, x, TS, order=4), ValueError, "dpm_adaptive: order must be an integer in 2..3, got 4"),
    (lambda m, x: sample("dpm_adaptive", m, x, TS, rtol=0.0), ValueError,
     "dpm_adaptive: rtol must be > 0, got 0.0"),
    (lambda m, x: sample("euler", lambda x, t: x, x, TS), TypeError, "model must be a solvers.DiffusionModel"),
    (lambda m, x: sample("euler", m, x.long(), TS), TypeError, "x must be a floating torch.Tensor"),
])
def test_bad_input_is_rejected_before_any_network_call(model, x_T, call, error, message):
    with pytest.raises(error, match=message):
        call(model, x_T)
    assert model.nfe == 0


def test_solvers_import_no_harness_modules():
    code = ("import sys, solvers, solvers.reference; "
            "bad = [m for m in sys.modules if m.split('.')[0] in ('bench', 'pandas', 'torch_fidelity', 'sklearn')]; "
            "print(bad); sys.exit(1 if bad else 0)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr



def test_python_m_solvers_prints_the_registry_table():
    result = subprocess.run([sys.executable, "-m", "solvers"], capture_output=True, text=True, check=True)
    lines = result.stdout.strip().splitlines()
    assert lines[0].startswith("| name | order | strong order (eta > 0) | NFE per step | ode/sde | adaptive | eta |")
    assert len(lines) == 2 + len(SOLVERS)
    assert "| `lms` | 4 | - | 1 + 3 per RK4 warm-up step | ode | no |" in result.stdout
    assert "| `pc` | 1 | none |" in result.stdout and "| `ddpm` | 1 | 1 |" in result.stdout
    assert "| `euler_cfg_pp` | none | - |" in result.stdout  # no ODE limit, not "None"


def test_the_solver_docs_show_the_registry_table_as_it_is():
    from pathlib import Path

    from solvers.__main__ import registry_table

    assert registry_table() in Path(__file__).resolve().parents[2].joinpath("docs", "solvers.md").read_text()
