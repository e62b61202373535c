"""The benchmarking harness: grid specs, models, runner, metrics, results store, plots and reports."""
