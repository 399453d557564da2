"""Inference methods: the Method base, amortized, variational EM, the
E-steps."""
