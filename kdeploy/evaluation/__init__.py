"""Evaluation, out of the stages: which models a run has (variants), latency and
throughput (bench), the task metric and retention (verify) and the profile's budgets.
Torch-free; the stages, the report, the CLI (on run dirs and model dirs) and serve-check
all import it."""
