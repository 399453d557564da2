"""Inference by optimization: a separate q(z; lambda_n) per image.

The spec's variational E-step: for a fixed generative model Theta, fit the
variational parameters lambda_n = (location, spread) of each image's q by
gradient ascent on that image's own ELBO. It serves two purposes:

- the vEM baseline (``vaelab.inference.vem``), whose E-step runs a few
  iterations
  per minibatch, and whose test-time inference runs it from the prior;
- the amortization gap (``vaelab.evaluation.evaluate``): the encoder's q,
  optimized
  further per image, shows how much ELBO the shared encoder gives away
  (Cremer, Li and Duvenaud, "Inference suboptimality in variational
  autoencoders", ICML 2018).

Two E-steps (``config.e_method``): ``fit_posterior``, Adam on the Monte
Carlo ELBO, and ``newton_posterior``, Gauss-Newton steps from the best
point of a grid over z, which for the 2-D latent finds the posterior's
main mode where steps from the prior stay in the nearest one.

Everything is vectorized over images: the objective is the SUM of the
per-image ELBOs, so each image's gradient is its own, and Adam, being
elementwise, takes independent steps per image.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from vaelab.config import Config
from vaelab.prob.distributions import DiagGaussian, Laplace
from vaelab.prob.objectives import LatentVariableModel, compute_elbo

# The location-scale families q can be fitted in: constructor(loc, spread)
# with spread = variance (Gaussian) or scale b (Laplace), q.params in
# that order.
FAMILIES = (DiagGaussian, Laplace)


def prior_matched(
    model: LatentVariableModel, n: int, device: torch.device | str
) -> Any:
    """The model's prior repeated for n images, a q over (n, P) of the
    prior's family (N(0, I) or Lap(0, tau) per image), with its own
    parameter tensors on ``device``. The starting point of an E-step that
    knows nothing about the image."""
    prior = model.prior
    if not isinstance(prior, FAMILIES):
        raise TypeError(
            f"inference by optimization needs a Gaussian or Laplace prior, "
            f"got {type(prior).__name__}"
        )
    q = prior.expand((n,))
    # Copies, not views of the model's buffers, so callers may write into
    # q's parameters.
    return type(q)(*(t.to(device).clone() for t in q.params))


def split_params(q: Any) -> tuple[Tensor, Tensor]:
    """(location, log spread), each (B, P), of a fittable q."""
    if not isinstance(q, FAMILIES):
        raise TypeError(
            f"cannot fit a {type(q).__name__} posterior by optimization "
            "(Gaussian or Laplace only)"
        )
    loc, spread = q.params
    return loc, spread.log()


def join_params(family: type, loc: Tensor, log_spread: Tensor) -> Any:
    """The inverse of ``split_params``."""
    return family(loc, log_spread.exp())


def fit_posterior(
    model: LatentVariableModel,
    x: Tensor,
    q0: Any,
    *,
    steps: int,
    lr: float,
    n_samples: int = 1,
    generator: torch.Generator | None = None,
    decay: bool = False,
    progress: Callable[[int], None] | None = None,
) -> Any:
    """Maximize each image's ELBO over its own q, starting from q0.

    x: (B, D); q0: DiagGaussian or Laplace over (B, P). Runs ``steps``
    Adam iterations with ``n_samples`` reparameterized draws per image and
    step on (delta, eta), where loc = loc0 + sd0 * delta and
    log spread = log spread0 + eta: the step sizes are in units of q0's own
    standard deviation, so one learning rate suits posteriors of width 1
    (the prior) and of width 0.001 (a sharp MNIST posterior) alike. Only q
    moves; the model's parameters get no gradient. ``decay``: learning
    rate falling linearly to zero, to settle at the optimum rather than
    jitter around it. Returns q, detached, of q0's family.
    """
    family = type(q0)
    loc0, log_spread0 = (t.detach() for t in split_params(q0))
    sd0 = q0.stddev.detach()
    delta = torch.zeros_like(loc0, requires_grad=True)
    eta = torch.zeros_like(log_spread0, requires_grad=True)
    if steps <= 0:
        return join_params(family, loc0, log_spread0)
    # Capturable on CUDA: the training step that runs this E-step may be
    # captured in a CUDA graph (vaelab.training.step); a fresh optimizer per
    # call,
    # so the capture records its zeroed moments too.
    opt = torch.optim.Adam([delta, eta], lr=lr,
                           capturable=delta.device.type == "cuda")
    with torch.enable_grad():
        for t in range(steps):
            if decay:
                for group in opt.param_groups:
                    group["lr"] = lr * (1.0 - t / steps)
            q = join_params(family, loc0 + sd0 * delta, log_spread0 + eta)
            terms = compute_elbo(model, x, n_samples, generator, q=q)
            # autograd.grad, not backward: no gradient lands on Theta.
            g_delta, g_eta = torch.autograd.grad(
                -terms.elbo.sum(), [delta, eta]
            )
            delta.grad, eta.grad = g_delta, g_eta
            opt.step()
            if progress is not None:
                progress(1)
    return join_params(
        family, (loc0 + sd0 * delta).detach(),
        (log_spread0 + eta).detach(),
    )


# Points per axis of the grid that starts the Newton E-step (1- and 2-D
# latents), over the prior's mean +- GRID_RADIUS sd: on the test images
# of an 8-epoch vEM model, 16 x 16 then 5 steps gave an ELBO of 1191.4
# nats, 32 x 32 1191.7, no grid 1097.1 (docs/benchmarks.md).
GRID_POINTS = 16
GRID_RADIUS = 4.0


def _log_joint(model: LatentVariableModel, x: Tensor, z: Tensor) -> Tensor:
    """log p(x | z) + log p(z) of images x (B, D) at z (B, P): (B,)."""
    return model.log_likelihood(x, z[None])[0] + model.prior.log_prob(z)


def grid_start(
    model: LatentVariableModel, x: Tensor, loc: Tensor,
    points: int = GRID_POINTS,
) -> Tensor:
    """For each image of x (B, D), the better of its location ``loc``
    (B, P) and the best point of a grid over z, by log p(x, z): (B, P).

    The posterior of a 2-D latent has several modes; local steps from
    the prior stay in the nearest one. The grid (``points`` per axis over
    the prior's mean +- GRID_RADIUS sd) costs one decoder pass of
    points^P latents and one (B, D) x (D, points^P) product. Latents of
    more than 2 dimensions keep ``loc``.
    """
    p = loc.shape[-1]
    if p > 2 or x.shape[0] == 0:
        return loc
    prior = model.prior
    axes = [prior.loc[i] + prior.stddev[i] * torch.linspace(
        -GRID_RADIUS, GRID_RADIUS, points, device=loc.device,
        dtype=loc.dtype) for i in range(p)]
    grid = torch.cartesian_prod(*axes).reshape(-1, p)  # (G, P)
    log_lik = model.likelihood.pairwise_log_prob(model.decode_logits(grid))
    scores = log_lik(x) + prior.log_prob(grid)  # (B, G)
    best, index = scores.max(dim=-1)
    better = best > _log_joint(model, x, loc)
    return torch.where(better[:, None], grid[index], loc)


def newton_posterior(
    model: LatentVariableModel, x: Tensor, q0: DiagGaussian, *, steps: int,
    grid: bool = True,
) -> DiagGaussian:
    """Fit each image's Gaussian q by Gauss-Newton steps, from q0.

    x: (B, D); q0: DiagGaussian over (B, P); the prior must be Gaussian.
    Start at the better of q0's mean and the grid's best point
    (``grid_start``, when ``grid``), then take ``steps`` steps: with the
    log-likelihood's gradient g and Gauss-Newton matrix G in z at the
    mean m (from ``decode_jacobian`` and ``logit_curvature``) and the
    prior N(mu0, diag(v0)), precision Lambda = G + diag(1 / v0),

        m <- m + Lambda^-1 (g - (m - mu0) / v0),
        variance_p = 1 / Lambda_pp,

    the maximizer of the ELBO of the log-likelihood's quadratic
    expansion at m (docs/derivations.md, eq. (V.3)). The variance is
    Lambda's at the last step's starting mean: one Jacobian per step (at
    the final mean it cost a second one per minibatch, 7.1 s a vEM epoch
    against 5.4, for the same ELBO). Deterministic (no draws); the
    model's parameters get no gradient. Returns q, detached; with no
    steps, the start's mean and q0's variance.
    """
    prior = model.prior
    if not isinstance(prior, DiagGaussian):
        raise TypeError("the Newton E-step needs a Gaussian prior, got "
                        f"{type(prior).__name__}")
    prior_precision = prior.variance.reciprocal()
    with torch.no_grad():
        loc = q0.loc.detach()
        if grid:
            loc = grid_start(model, x, loc)
        if steps <= 0:
            return DiagGaussian(loc, q0.variance.detach())
        for _ in range(steps):
            logits, jac = model.decode_jacobian(loc)  # (B, D), (B, P, D)
            g_logit, w_logit = model.likelihood.logit_curvature(x, logits)
            grad = (jac @ g_logit[:, :, None])[..., 0]
            grad = grad - (loc - prior.loc) * prior_precision
            precision = (jac * w_logit[:, None, :]) @ jac.transpose(1, 2)
            precision = precision + torch.diag_embed(
                prior_precision.expand_as(loc))
            # solve_ex: solve without its check for singular matrices,
            # which waits for the GPU (no capture, vaelab.training.step); Lambda
            # is positive definite.
            loc = loc + torch.linalg.solve_ex(precision, grad)[0]
        variance = torch.diagonal(precision, dim1=-2, dim2=-1).reciprocal()
    return DiagGaussian(loc, variance)


def e_step(
    model: LatentVariableModel, config: Config, x: Tensor, q0: Any, *,
    steps: int, generator: torch.Generator | None = None,
    progress: Callable[[int], None] | None = None,
) -> Any:
    """The run's E-step on images x (B, D) from q0 (B, P): ``steps``
    iterations of ``config.e_method`` (Adam at ``config.e_lr`` with
    ``config.n_samples`` draws, or Gauss-Newton). Returns q, detached."""
    if config.e_method == "newton":
        q = newton_posterior(model, x, q0, steps=steps)
        if progress is not None:
            progress(steps)
        return q
    return fit_posterior(model, x, q0, steps=steps, lr=config.e_lr,
                         n_samples=config.n_samples, generator=generator,
                         progress=progress)


# The fewest E-step iterations of a held-out image: from the prior, 50
# all but settle the zoo's vEM model (spec model, 3 vEM epochs, first
# 2,000 test images: 1143.78 nats at 50, 1144.53 at 100, 1144.19 at 150,
# 1124.77 at the 15 its training images had had), at half 100's cost.
VEM_TEST_STEPS = 50


# Gauss-Newton steps of a held-out image after the grid: 5 gave 1191.4
# nats on the 8-epoch model above, 1 1186.8, 2 1189.7, 3 1190.6.
VEM_TEST_NEWTON_STEPS = 5


def vem_test_steps(config: Config) -> int:
    """E-step iterations a vEM model gets on images it was not trained on:
    as many as each training image got during training (e_steps per epoch
    times the epochs), and at least ``VEM_TEST_STEPS`` (Adam) or
    ``VEM_TEST_NEWTON_STEPS`` (Newton), so that a held-out ELBO is that of
    a fitted q however short the training was."""
    least = (VEM_TEST_NEWTON_STEPS if config.e_method == "newton"
             else VEM_TEST_STEPS)
    return max(config.e_steps * config.epochs, least)
