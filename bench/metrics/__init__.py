"""Metrics: the quality and error figures of a config's samples, each with its standard error, and their registry.

Job: given a config's samples and what they are compared with (the reference solve, exact samples of p_0, a
dataset's images), compute the row's metric columns. Every module here registers its metrics in
``registry.METRICS`` on import, and this package imports every module in it, so a new metric is one new file
(see density_coverage.py); the *_weights.py converters are the exception.

May import: solvers, bench.files, bench.models. Never the spec, run or analysis stages (they import this).
"""
import importlib
import pkgutil

from bench.metrics.registry import (BETTER, COLUMNS, METRICS, NEEDS, Inputs, Metric, fewest_samples, for_config,
                                    named_in_spec, needing, register)

# The core metrics first (the order of the row's columns and of the generated tables), then any other module but
# the weight converters (*_weights.py: run by make as `python -m`, they register nothing and load on demand).
_FIRST = ["errors", "distances", "fid", "lpips", "likelihood"]
_OTHERS = sorted(m.name for m in pkgutil.iter_modules(__path__) if m.name not in _FIRST and not m.name.endswith("_weights"))
for _name in _FIRST + _OTHERS:
    importlib.import_module(f"{__name__}.{_name}")

__all__ = ["BETTER", "COLUMNS", "METRICS", "NEEDS", "Inputs", "Metric", "fewest_samples", "for_config", "named_in_spec",
           "needing", "register"]
