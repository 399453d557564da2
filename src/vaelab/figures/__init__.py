"""Figures: plots, discrete figures, the explorer, HTML templates."""
