"""The benchmarking harness: grid specs, models, runner, metrics, results store, plots and reports, and solver checks."""
