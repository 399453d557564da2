"""The likelihoods' pairwise log-densities that the quadrature's matrix
products rest on, against their own ``log_prob``."""

from __future__ import annotations

import copy

import pytest
import torch

from vaelab.config import Config
from vaelab.evaluation.quadrature import flushed_denormals, shared_points
from vaelab.models.model import build_model


@pytest.mark.parametrize("likelihood, variance", [
    ("gaussian", "pixel"), ("gaussian", "shared"), ("gaussian", "fixed"),
    ("bernoulli", "pixel"),
])
def test_pairwise_log_prob_matches_log_prob(likelihood, variance) -> None:
    config = Config(hidden=32, likelihood=likelihood, variance=variance,
                    preprocess="binarize" if likelihood == "bernoulli"
                    else "dequantize").resolved()
    torch.manual_seed(0)
    model = build_model(config)
    lik = model.likelihood
    if variance == "pixel" and likelihood == "gaussian":
        with torch.no_grad():  # unequal variances, as after training
            lik.rho.add_(torch.randn_like(lik.rho))
    x = torch.rand(7, 784)
    if likelihood == "bernoulli":
        x = (x > 0.5).float()
    z = torch.randn(11, 2)
    with torch.no_grad():
        logits = model.decode_logits(z)
        pairwise = lik.pairwise_log_prob(logits)(x)
        direct = lik.log_prob(x, logits[:, None, :]).T  # (B, G)
        exact = copy.deepcopy(lik).double().log_prob(
            x.double(), logits.double()[:, None, :]).T
        shared = shared_points(model, z)(x)
    assert pairwise.shape == (7, 11)
    # The expansion cancels terms of ~D / var nats: float32 round-off
    # of those, a few 1e-3 nats, is the price of the matrix product.
    err = float((pairwise.double() - exact).abs().max())
    assert err < 5e-3, err
    torch.testing.assert_close(pairwise, direct, rtol=1e-5, atol=5e-3)
    assert torch.equal(shared, pairwise)


def test_flushed_denormals_zeroes_them_and_restores_the_setting() -> None:
    def flushing() -> bool:
        return float(torch.full((1,), 1e-39) * 1.0) == 0.0

    assert not flushing()
    with flushed_denormals():
        assert flushing()
        # A Bernoulli decoder's far-background logit: softplus(-100) is
        # e^-100, a float32 denormal, now 0.
        assert float(torch.nn.functional.softplus(torch.tensor(-100.0))) == 0
    assert not flushing()
    torch.set_flush_denormal(True)
    try:
        with flushed_denormals():
            pass
        assert flushing()  # a caller's own setting survives
    finally:
        torch.set_flush_denormal(False)
