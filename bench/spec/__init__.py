"""Spec: a grid spec (TOML) validated in full before any compute and expanded into frozen RunConfigs.

Job: every problem with a spec is one line naming the file, the key, the value and what is allowed; a valid
spec becomes the cartesian product of its axes, one RunConfig each (combinations a solver cannot run are
configs with a skip reason, kept as rows).

May import: solvers, bench.models (model names), bench.metrics (the metric registry's names). Never the run or
analysis stages (they import this): the names of the exec modes are the spec's own, bench.run.execution
implements them.
"""
from bench.spec.config import (DEFAULTS, EXEC_MODES, LIMIT_KEYS, REFERENCE_METRICS, RunConfig, Spec, SpecError, expand,
                               load_spec, parse_spec, shard, spec_changes)

__all__ = ["DEFAULTS", "EXEC_MODES", "LIMIT_KEYS", "REFERENCE_METRICS", "RunConfig", "Spec", "SpecError", "expand",
           "load_spec", "parse_spec", "shard", "spec_changes"]
