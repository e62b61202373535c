"""final_step = "x0": after the grid's last step, one more network evaluation and its x0 prediction is the sample (the
step to sigma 0 of k-diffusion's, ComfyUI's and diffusers' flow-matching schedules), on the runner's path: the
samples, the NFE, the reference it is measured against, the plan, and the spec's refusal of other values."""
import re

import pytest
import torch

from bench.run import references, sampling
from bench.run.plan import make_plan
from bench.run.runner import SweepCache, make_reference, run_config
from bench.spec.config import SpecError, expand, parse_spec
from solvers.reference import reference_solve

BASE = {"name": "f", "models": ["ring2d"], "solvers": ["ddim", "heun"], "steps": [4], "n_samples": 16,
        "metrics": ["err_reference"], "reference_tolerance": 1e-8, "timing_repeats": 1, "time_limit_s": 0}


def _configs(**changes):
    return expand(parse_spec({**BASE, **changes}))


def test_the_sample_is_the_x0_prediction_at_the_last_time_and_costs_one_evaluation():
    cache, device = SweepCache(), torch.device("cpu")
    for plain, final in zip(_configs(), _configs(final_step="x0")):
        _, model = cache.model(final)
        x_T = cache.prior(final, (2,), device, torch.float32)
        t_min = model.schedule.t_min
        before = sampling.solve(plain, model, x_T, plain.steps, device).samples
        with torch.no_grad():
            expected = model.x0(before, t_min)
        solved = sampling.solve(final, model, x_T, final.steps, device)
        assert torch.equal(solved.samples, expected)
        row, plain_row = run_config(final, cache, {}, "t"), run_config(plain, cache, {}, "t")
        assert row["status"] == "ok" and row["final_step"] == "x0" and plain_row["final_step"] == "none"
        assert row["nfe"] == plain_row["nfe"] + 1
        # measured against the reference solve followed by the same x0 step, not against the bare reference
        assert references.key(final) != references.key(plain)
        reference = make_reference(final, cache)
        with torch.no_grad():
            bare = reference_solve(model, x_T.double(), model.schedule.t_max, t_min, rtol=1e-8, atol=1e-8)
            assert torch.allclose(reference, model.x0(bare, t_min), atol=1e-6)
        norms = (solved.samples.double() - reference).norm(dim=1)
        assert row["err_reference"] == pytest.approx(norms.median().item(), rel=1e-6)


def test_none_keeps_the_ids_of_earlier_configs_and_x0_is_another_config():
    (plain, _), (none, _), (final, _) = _configs(), _configs(final_step="none"), _configs(final_step="x0")
    assert plain.config_id == none.config_id != final.config_id


def test_the_plan_counts_the_final_evaluation():
    plain = make_plan(_configs(solvers=["ddim"]), measure=False)
    final = make_plan(_configs(solvers=["ddim"], final_step="x0"), measure=False)
    assert final.forwards["solves"] == plain.forwards["solves"] + 16


def test_another_final_step_is_refused_with_what_is_allowed():
    with pytest.raises(SpecError, match=re.escape("key 'final_step': unknown value 'zero'; allowed: none, x0")):
        _configs(final_step="zero")
