"""Execution modes as a grid axis: eager, bf16 autocast and torch.compile of the network, with the drift
of each mode's samples from the eager ones of the same config and x_T."""
import json

import pytest
import torch

from bench.run import store
from bench.spec.config import SpecError, expand, parse_spec
from bench.run.sweep import run_sweep
from bench.models.train import build_unet
from support import needs_fashion, needs_weights


def _unet(path, size=8):
    build_unet(size, 1, widths=(8, 16)).save_pretrained(path)
    (path / "scheduler_config.json").write_text(json.dumps({"num_train_timesteps": 100}))
    return f"diffusers:{path}"


def _sweep(tmp_path, **spec):
    in_process = {"time_limit_s": 0, "reference_time_limit_s": 0, "timing_repeats": 1}
    parsed = parse_spec({"n_samples": 8, **in_process, **spec}, str(tmp_path / "s.toml"))
    meta = store.open_run(tmp_path / "run", parsed)
    run_sweep(expand(parsed), tmp_path / "run", meta["run_id"], progress=False)
    return store.load_rows(tmp_path / "run")


def test_an_unknown_exec_mode_is_a_spec_error():
    with pytest.raises(SpecError, match="key 'exec_modes': unknown exec_mode 'tensorrt'; allowed: eager, bf16, "
                                        "compile, cuda_graph"):
        parse_spec({"models": ["ring2d"], "solvers": ["heun"], "steps": [2], "n_samples": 4,
                    "exec_modes": ["eager", "tensorrt"]})


def test_cuda_graph_on_a_cpu_is_refused_before_compute_and_adaptive_solvers_are_skipped():
    base = {"models": ["ring2d"], "solvers": ["heun", "dopri5"], "steps": [2], "tolerances": [1e-3], "n_samples": 8,
            "exec_modes": ["eager", "cuda_graph"]}
    with pytest.raises(SpecError, match="key 'exec_modes': 'cuda_graph' captures the solve in a CUDA graph and needs "
                                        "a CUDA device, but device is 'cpu'"):
        parse_spec(base)
    reasons = {(c.solver, c.exec_mode): c.skip_reason for c in expand(parse_spec({**base, "device": "cuda"}))}
    assert reasons[("heun", "cuda_graph")] is None and reasons[("heun", "eager")] is None
    assert reasons[("dopri5", "cuda_graph")] == ("dopri5 is adaptive: it decides its steps on the host, so its solve "
                                                 "cannot be a CUDA graph")
    on_cpu = {(c.solver, c.exec_mode): c.skip_reason for c in expand(parse_spec({**base, "device": "cuda"}), "cpu")}
    assert on_cpu[("heun", "cuda_graph")] == "exec mode cuda_graph needs a CUDA device, the config runs on 'cpu'"


def test_eager_configs_keep_their_ids_and_each_mode_is_its_own_config():
    base = {"models": ["ring2d"], "solvers": ["heun", "ddpm"], "steps": [2], "etas": [0.0, 1.0], "n_samples": 8}
    before = expand(parse_spec(base))
    with_modes = expand(parse_spec({**base, "exec_modes": ["eager", "bf16"]}))
    assert [c.config_id for c in with_modes if c.exec_mode == "eager"] == [c.config_id for c in before]
    assert len({c.config_id for c in with_modes}) == 2 * len(before)


def test_bf16_drifts_from_eager_by_the_rounding_and_eager_rows_carry_no_drift(tmp_path):
    rows = _sweep(tmp_path, models=[_unet(tmp_path / "unet")], solvers=["ddim", "ddpm"], steps=[4], etas=[0.0, 1.0],
                  exec_modes=["eager", "bf16"], metrics=["err_reference"])
    ok = rows[rows.status == "ok"].set_index(["solver", "eta", "exec_mode"])
    assert len(ok) == 6 and len(rows) == 8  # ddpm at eta 0: skipped in both modes
    deterministic, stochastic = ("ddim", 0.0), ("ddpm", 1.0)
    assert ok.drift_vs_eager.xs("eager", level="exec_mode").isna().all()
    drift = ok.drift_vs_eager.xs("bf16", level="exec_mode")
    # bfloat16 keeps 8 bits of mantissa: the samples move, by far less than their own size (8x8 pixels, norm ~8)
    assert (drift > 1e-4).all() and (drift < 0.5).all(), drift
    # the same Brownian path in both modes: ddpm's drift is bf16 rounding, not another noise draw (norm ~8)
    assert drift[stochastic] < 10 * drift[deterministic], drift


def test_drift_is_measured_against_a_fresh_eager_solve_when_eager_is_not_in_the_grid(tmp_path):
    model = _unet(tmp_path / "unet")
    alone = _sweep(tmp_path / "alone", models=[model], solvers=["ddim"], steps=[3], exec_modes=["bf16"],
                   metrics=["err_reference"])
    together = _sweep(tmp_path / "together", models=[model], solvers=["ddim"], steps=[3],
                      exec_modes=["eager", "bf16"], metrics=["err_reference"])
    bf16 = together[together.exec_mode == "bf16"].iloc[0]
    assert alone.iloc[0].status == "ok" and alone.iloc[0].drift_vs_eager == pytest.approx(bf16.drift_vs_eager, rel=1e-6)


@pytest.mark.slow  # TorchInductor compiles the UNet: about 50 s on 2 cores
def test_compile_runs_on_the_cpu_and_matches_eager_to_float32_rounding(tmp_path):
    rows = _sweep(tmp_path, models=[_unet(tmp_path / "unet")], solvers=["dpmpp_2m"], steps=[3],
                  exec_modes=["eager", "compile"], metrics=["err_reference"])
    compiled = rows[rows.exec_mode == "compile"].iloc[0]
    assert compiled.status == "ok", compiled.message
    assert compiled.drift_vs_eager < 1e-3 and compiled.nfe == 3
    assert compiled.forward_s > 0 and compiled.overhead_ratio > 0


@needs_fashion
@needs_weights
def test_the_fid_difference_to_eager(tmp_path):
    rows = _sweep(tmp_path, models=[_unet(tmp_path / "unet", size=32)], solvers=["ddim"], steps=[2],
                  exec_modes=["eager", "bf16"], metrics=["fid"], fid_reference="fashion_mnist_test")
    by_mode = rows.set_index("exec_mode")
    assert (rows.status == "ok").all(), rows.message.tolist()
    assert by_mode.fid_vs_eager["bf16"] == pytest.approx(by_mode.fid["bf16"] - by_mode.fid["eager"], abs=1e-9)
    assert torch.isnan(torch.tensor(by_mode.fid_vs_eager["eager"]))


@pytest.mark.gpu
def test_every_fixed_step_solver_runs_on_cuda_without_a_host_sync_and_its_graph_matches_eager(tmp_path):
    """A CUDA graph capture fails on a host synchronisation or a host-to-device copy, so a solver whose whole
    solve captures and replays to its eager samples keeps its loop on the device, on the runner's own path: its
    noise source, device, dtype and batches, eta 0 and 1."""
    from solvers import SOLVERS

    fixed = [name for name, solver in SOLVERS.items() if not solver.adaptive and not solver.needs_guidance]
    rows = _sweep(tmp_path, models=[_unet(tmp_path / "unet")], solvers=fixed, steps=[4], etas=[0.0, 1.0],
                  exec_modes=["eager", "cuda_graph"], device="cuda", n_samples=12, batch_size=8,
                  metrics=["err_reference"])
    ran = rows[rows.status != "skipped"]
    broken = ran[ran.status != "ok"]
    assert broken.empty, broken[["solver", "eta", "exec_mode", "status", "message"]].to_string()
    assert set(ran.solver) == set(fixed)
    ok = ran.set_index(["solver", "eta", "exec_mode"])
    graphed = ok.xs("cuda_graph", level="exec_mode")
    assert (graphed.drift_vs_eager < 1e-3).all(), graphed.drift_vs_eager.sort_values().tail()
    assert (graphed.nfe == ok.xs("eager", level="exec_mode").nfe).all()


@pytest.mark.gpu
def test_cuda_graph_replays_the_solve_on_cuda_and_matches_eager(tmp_path):
    """The whole solve captured once per shape and replayed per batch (a smaller last batch is another graph): the
    same samples as eager to float32 rounding (TF32 matmuls in both), the same NFE, deterministic and stochastic."""
    rows = _sweep(tmp_path, models=[_unet(tmp_path / "unet")], solvers=["dpmpp_2m", "ddim", "sa_solver"], steps=[4],
                  etas=[0.0, 1.0], exec_modes=["eager", "cuda_graph"], device="cuda", n_samples=12, batch_size=8,
                  metrics=["err_reference"])
    ok = rows[rows.status == "ok"].set_index(["solver", "eta", "exec_mode"])
    assert len(ok) == 10, rows[["solver", "eta", "exec_mode", "status", "message"]]  # dpmpp_2m at eta 1: skipped
    graphed = ok.xs("cuda_graph", level="exec_mode")
    assert (graphed.drift_vs_eager < 1e-3).all(), graphed.drift_vs_eager
    assert (graphed.nfe == ok.xs("eager", level="exec_mode").nfe).all()


@pytest.mark.gpu
@pytest.mark.parametrize("tf32", [False, True])
def test_an_eager_row_on_cuda_does_not_depend_on_the_modes_that_ran_before_it(tmp_path, tf32):
    """TF32 is the sweep's policy, set once: an eager config run after bf16 and cuda_graph configs (which once
    switched TF32 on for the rest of the sweep) gives the same samples, to the bit, as the same config alone."""
    unet = _unet(tmp_path / "unet", size=16)
    spec = {"models": [unet], "solvers": ["dpmpp_2m", "ddim"], "steps": [4], "device": "cuda", "n_samples": 8,
            "metrics": ["err_reference"], "tf32_matmul": tf32, "tf32_cudnn": tf32}
    after = _sweep(tmp_path / "after", **spec, exec_modes=["bf16", "cuda_graph", "eager"])
    alone = _sweep(tmp_path / "alone", **spec, exec_modes=["eager"])
    first = after[after.exec_mode == "eager"].set_index("config_id").sort_index()
    second = alone.set_index("config_id").sort_index()
    assert (first.status == "ok").all() and list(first.index) == list(second.index)
    assert (first.err_reference == second.err_reference).all()
    assert (first.tf32_matmul == tf32).all() and (first.tf32_cudnn == tf32).all()


def _class_conditional_unet(path, size=8):
    """A tiny UNet with 3 classes and the null class (classes.json as train() writes it)."""
    build_unet(size, 1, widths=(8, 16), n_classes=3).save_pretrained(path)
    (path / "scheduler_config.json").write_text(json.dumps({"num_train_timesteps": 100}))
    (path / "classes.json").write_text(json.dumps({"names": ["a", "b", "c"], "null_class": 3}))
    return f"diffusers:{path}"


def test_guided_configs_run_in_every_cpu_exec_mode_with_the_same_labels(tmp_path):
    """bf16 autocast wraps the guided model's conditional network and keeps its labels and guidance: its guided eps
    stays within bf16's rounding of eager's (2.4% here against 1.1% unguided: guidance at scale 3 scales the
    conditional-unconditional difference up), the labels reach the network, and the sweep's bf16 rows run with two
    passes per evaluation (on this random network the samples' drift is large in absolute terms: x0 divides by
    alpha at t_max)."""
    import torch

    from bench.models import build_model, guided_model
    from bench.run.execution import in_mode

    model = _class_conditional_unet(tmp_path / "unet")
    source = build_model(model)
    eager = guided_model(source, source.model().schedule, 3.0)
    bf16 = in_mode(eager, "bf16", torch.device("cpu"))
    x = torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    eager.condition_on(torch.tensor([0, 1, 2, 0]))  # the modes share the conditions' buffers
    with torch.no_grad():
        reference, rounded = eager.eps(x, 0.5), bf16.eps(x, 0.5)
        assert ((reference - rounded).norm() / reference.norm()).item() < 0.05
        bf16.condition_on(torch.tensor([1, 1, 1, 1]))
        assert (bf16.eps(x, 0.5) - rounded).norm() > 0.1 * rounded.norm()
    rows = _sweep(tmp_path, models=[model], solvers=["dpmpp_2m", "euler_cfg_pp"], steps=[3], guidance_scales=[3.0],
                  exec_modes=["eager", "bf16"], metrics=[], batch_size=4)
    assert (rows.status == "ok").all(), rows[["solver", "exec_mode", "status", "message"]].to_string()
    assert (rows.network_passes == 2 * rows.nfe).all() and rows[rows.exec_mode == "bf16"].drift_vs_eager.notna().all()


@pytest.mark.gpu
def test_a_guided_solve_captures_in_a_cuda_graph_and_replays_each_batchs_labels(tmp_path):
    """The labels live in a per-batch-size buffer that the captured graph reads: a replay on the next batch uses its
    labels (batch 8 of 12: two shapes, two graphs), so the graphed samples equal eager's to float32 rounding."""
    rows = _sweep(tmp_path, models=[_class_conditional_unet(tmp_path / "unet")],
                  solvers=["dpmpp_2m", "euler_cfg_pp", "ddim"], steps=[4], guidance_scales=[1.0, 4.0],
                  exec_modes=["eager", "cuda_graph"], device="cuda", n_samples=12, batch_size=8, metrics=[])
    assert (rows.status == "ok").all(), rows[["solver", "exec_mode", "status", "message"]].to_string()
    graphed = rows[rows.exec_mode == "cuda_graph"]
    assert (graphed.drift_vs_eager < 1e-3).all(), graphed.drift_vs_eager.sort_values().tail()
    assert (graphed.network_passes.to_numpy() == rows[rows.exec_mode == "eager"].network_passes.to_numpy()).all()
