"""The evaluation layer, above both halves: synthetic persona benchmarks, fluency, cost, report.

``python -m evals`` (``make eval``) runs it; ``python -m evals.report docs/eval`` re-renders.
"""
