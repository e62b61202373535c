"""Shared fixtures: schedules and the ring mixture. Helper functions live in support.py."""
from __future__ import annotations

import pytest

from bench.models import ring2d
from solvers.schedules import EDM, VE, DiscreteVP, VPCosine, VPLinear

ALL_SCHEDULES = {
    "VPLinear": VPLinear(),
    "VPCosine": VPCosine(),
    "VE": VE(),
    "EDM": EDM(),
    "DiscreteVP": DiscreteVP.linear(),
}


@pytest.fixture(params=list(ALL_SCHEDULES), ids=list(ALL_SCHEDULES))
def schedule(request):
    return ALL_SCHEDULES[request.param]


@pytest.fixture(scope="session")
def ring():
    return ring2d()
