"""Run: RunConfigs to rows, under one execution policy, resumably, on one process, worker processes or Ray.

Job: the sweep (sweep.py) sets the execution policy (policy.py) in every process that runs configs, makes the
reference solves first (references.py), then runs each config (runner.py): its samples (sampling.py, the
network in its exec mode: execution.py) and the metrics the spec names (bench.metrics); worker.py stops a
config at its time limit, distributed.py fans a sweep out on Ray; store.py writes and reads the rows.

May import: solvers, bench.files, bench.models, bench.metrics, bench.spec. Never the analysis stage.
"""
