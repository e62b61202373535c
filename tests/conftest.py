"""Shared fixtures: schedules and the ring mixture. Helper functions live in support.py."""
from __future__ import annotations

import pytest

from bench.models import ring2d
from solvers.schedules import EDM, VE, DiscreteVP, FlowMatching, VPCosine, VPLinear

ALL_SCHEDULES = {
    "VPLinear": VPLinear(),
    "VPCosine": VPCosine(),
    "VE": VE(),
    "EDM": EDM(),
    "DiscreteVP": DiscreteVP.linear(),
    "FlowMatching": FlowMatching(shift=3.0, t_max=0.999),
}


@pytest.fixture(params=list(ALL_SCHEDULES), ids=list(ALL_SCHEDULES))
def schedule(request):
    return ALL_SCHEDULES[request.param]


@pytest.fixture(scope="session")
def ring():
    return ring2d()
