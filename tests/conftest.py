"""Shared fixtures: schedules and the ring mixture. Helper functions live in support.py."""
from __future__ import annotations

import os

import pytest
import torch

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


def pytest_configure(config):
    """Under pytest-xdist (make test: two worker processes on the two cores) each worker keeps to one torch thread:
    two workers of two threads each on two cores would thrash."""
    if os.environ.get("PYTEST_XDIST_WORKER"):
        torch.set_num_threads(1)
