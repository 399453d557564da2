"""Evaluation: evaluate a run, quadrature, cluster scores."""
