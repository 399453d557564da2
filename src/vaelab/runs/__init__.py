"""Runs: run, zoo, clock, workers, report, sweep, aggregate, tracking."""
