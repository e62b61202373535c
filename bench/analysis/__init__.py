"""Analysis: rows to frontiers, plots, reports and comparisons between runs.

Job: read the rows of one or more run folders (bench.run.store) and answer the user's questions: which
configuration is best for a budget (ties called ties), where the Pareto frontier lies, how the solvers converge,
what changed between two runs beyond noise; report.md and report.html with the plots embedded.

May import: solvers (the registry, for names and colours), bench.spec (a config's keys), bench.metrics (column
descriptions), bench.run.store (the rows). Never the rest of the run stage: it reads results, it computes none.
"""
