"""The conformance table is the peer test: every comparison agrees with its peer (1e-8 against k-diffusion in
float64, 2e-6 against diffusers' float32 schedulers) or differs by the reason it states."""
import pandas as pd
import pytest
import torch

from bench import cli
from bench.conformance import report as conformance
from bench.conformance.report import COMPARISONS, Comparison


@pytest.mark.parametrize("comparison", COMPARISONS, ids=[f"{c.ours} vs {c.peer}" for c in COMPARISONS])
def test_each_solver_agrees_with_its_peer_or_differs_by_its_stated_reason(comparison):
    difference = conformance.relative_difference(*comparison.run())
    text, ok = conformance.verdict(comparison, difference)
    assert ok, f"{comparison.ours} vs {comparison.library} {comparison.peer}: {text}, max relative difference " \
               f"{difference:.2e} (tolerance {comparison.tolerance:g}; reason on record: " \
               f"{comparison.by_design or comparison.peer_error!r})"


def _fixed(ours, theirs):
    return lambda: (ours, theirs)


def test_the_verdicts_fail_both_ways():
    same, other = torch.ones(3, dtype=torch.float64), torch.full((3,), 1.1, dtype=torch.float64)
    assert conformance.verdict(Comparison("a", "b", "k-diffusion", _fixed(same, same)), 0.0) == ("agrees", True)
    assert conformance.verdict(Comparison("a", "b", "k-diffusion", _fixed(same, other)), 0.1) == ("DIFFERS", False)
    stale = Comparison("a", "b", "diffusers", _fixed(same, same), by_design="a reason that no longer holds")
    assert conformance.verdict(stale, 1e-7) == ("agrees, but a difference was expected", False)
    bug = Comparison("a", "b", "diffusers", _fixed(same, other), peer_error="their sign")
    assert conformance.verdict(bug, 0.1) == ("differs: the peer's error", True)
    assert conformance.verdict(bug, 1e-7) == ("agrees, but a difference was expected", False)  # fixed upstream
    assert conformance.verdict(Comparison("a", "b", "diffusers", _fixed(same, same)), float("nan"))[1] is False


def test_command_writes_the_table_and_exits_1_on_a_failure(tmp_path, monkeypatch, capsys):
    same, other = torch.ones(3, dtype=torch.float64), torch.full((3,), 2.0, dtype=torch.float64)

    def missing_peer():
        raise ImportError("k-diffusion is an optional peer")

    def broken_peer():
        raise RuntimeError("the peer drew a different number of normals")

    monkeypatch.setattr(conformance, "COMPARISONS", [
        Comparison("ddim", "sample_euler", "k-diffusion", _fixed(same, same)),
        Comparison("broken", "sample_broken", "k-diffusion", _fixed(same, other)),
        Comparison("ddim", "sample_euler", "k-diffusion", missing_peer),
        Comparison("crash", "sample_crash", "k-diffusion", broken_peer),
    ])
    assert cli.main(["conformance", "--out", str(tmp_path)]) == 1
    out, err = capsys.readouterr()
    assert ("4 comparisons: 1 agree, 0 differ by design, 0 differ by the peer's error, 1 not run (peer missing), "
            "2 failed") in out
    assert "FAILED crash vs k-diffusion sample_crash: ERROR: RuntimeError: the peer drew a different number" in err
    assert "FAILED broken vs k-diffusion sample_broken: DIFFERS (max relative difference 5.00e-01" in err
    table = pd.read_csv(tmp_path / "conformance.csv")
    assert table.ok.tolist() == [True, False, True, False]
    text = (tmp_path / "conformance.md").read_text()
    assert "| broken | sample_broken | k-diffusion | 5.0e-01 | DIFFERS |  |" in text
    assert "| ddim | sample_euler | k-diffusion | - | not run: k-diffusion is an optional peer |  |" in text
