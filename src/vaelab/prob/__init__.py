"""Probability: distributions, the ELBO and IWAE objectives, held-out
estimators."""
