"""Held-out estimates that need the quadrature or the E-steps: exact
log p(x) (by quadrature over the latent plane when P = 2, or by summing
over every code of a categorical latent) and the inference gaps (the
amortization gap, ELBO of a q optimized for each image minus the run's
q's ELBO, and the approximation gap, log p(x) minus the optimized ELBO,
after Cremer, Li and Duvenaud (2018)). Nats per image; every random
number from ``vaelab.prob.estimators.SEEDS``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor
from tqdm import tqdm

from vaelab.evaluation.quadrature import (
    Quadrature,
    QuadratureSettings,
    quadrature_log_px,
)
from vaelab.inference.e_steps import FAMILIES, fit_posterior
from vaelab.prob.distributions import Categorical, DiagGaussian
from vaelab.prob.estimators import (
    ENUM_POINTS,
    EVAL_CHUNK,
    SEEDS,
    _per_image,
    chunked_terms,
    slice_q,
)
from vaelab.prob.objectives import (
    LatentVariableModel,
    code_log_lik,
)

# ------------------------------------------------------- exact log p(x)


@dataclass
class ExactLogPx:
    """log p(x) per image ``values`` (N,), nats, by ``method``; its
    per-image error bound ``error`` (N,) (0: exact); and the
    ``quadrature``'s per-image results when it was the method (the
    posterior's moments and coverage checks among them)."""

    values: Tensor
    error: Tensor
    method: str
    quadrature: Quadrature | None = None


@torch.no_grad()
def enumerated_log_px(
    model: LatentVariableModel, x: Tensor, max_points: int = ENUM_POINTS
) -> Tensor:
    """log p(x) (N,) of a categorical-latent model, exactly, by summing
    over all K^M codes (``objectives.exact_log_marginal``): the codes
    decoded once, the images in batches of max(1, max_points // K^M)."""
    # The limit's check, and the codes (C, M, K).
    codes, _ = code_log_lik(model, x[:1])
    logits = model.decode_logits(codes.unsqueeze(1))  # (C, 1, D)
    log_prior = model.prior.log_prob(codes).unsqueeze(1)  # (C, 1)
    per = max(1, max_points // codes.shape[0])
    out = _per_image(x.shape[0], x.device)
    for i in range(0, x.shape[0], per):
        out[i:i + per] = torch.logsumexp(
            model.likelihood.log_prob(x[i:i + per], logits) + log_prior,
            dim=0)
    return out


def enumerated_estimate(model: LatentVariableModel, x: Tensor) -> ExactLogPx:
    """log p(x) of images x (N, D) of a categorical-latent model, exact;
    ValueError when there are too many codes to enumerate."""
    values = enumerated_log_px(model, x)
    return ExactLogPx(values, torch.zeros_like(values), "enumeration")


def quadrature_estimate(
    model: LatentVariableModel, x: Tensor, q: Any, progress: bool = False,
    chunk: int = EVAL_CHUNK,
) -> ExactLogPx:
    """log p(x) of images x (N, D) of a 2-D latent model by quadrature,
    windows placed by q (a Gaussian or Laplace over (N, 2)), ``chunk``
    images at a time."""
    bar = tqdm(unit="img-tile", unit_scale=True, leave=False,
               desc="quadrature", disable=None if progress else True)
    quad = quadrature_log_px(model, x, q.mean, q.stddev,
                             QuadratureSettings(images=chunk),
                             progress=bar.update)
    bar.close()
    return ExactLogPx(quad.log_px, quad.error, "quadrature", quad)


def estimate_log_px(
    model: LatentVariableModel,
    x: Tensor, q: Any, k: int, progress: bool = False,
    chunk: int = EVAL_CHUNK,
) -> tuple[ExactLogPx | None, list[str]]:
    """log p(x) of images x (N, D) by enumeration (categorical q) or
    quadrature (P = 2, Gaussian or Laplace q, ``chunk`` images at a
    time), or None; and notes on what failed or could not be computed
    (``k``: the IWAE's, for the note)."""
    if isinstance(q, Categorical):
        try:
            return enumerated_estimate(model, x), []
        except ValueError as e:
            return None, [f"log p(x) not computed: {e}"]
    dim = model.prior.dim
    if dim != 2:
        return None, [f"log p(x) by quadrature needs P = 2 (P = {dim}); "
                      f"IWAE_{k} is the best estimate"]
    if not isinstance(q, FAMILIES):
        return None, []
    exact = quadrature_estimate(model, x, q, progress, chunk)
    quad = exact.quadrature
    assert quad is not None
    covered = float(quad.covered.double().mean())
    if covered == 1.0:
        return exact, []
    return exact, [
        f"quadrature check failed for {1 - covered:.2%} of "
        f"the images (not covered or not resolved); largest share "
        f"outside a window {float(quad.outside.max()):.2g}"
    ]


# ------------------------------------------------------------------ gaps


def inference_gaps(
    model: LatentVariableModel,
    x: Tensor, q0: Any, *, starts: list[Any] | None = None,
    steps: int = 100, lr: float = 0.05, n_samples: int = 8,
    eval_samples: int = 256, seed: int = SEEDS.gaps, batch_size: int = 500,
    progress: Callable[[int], None] | None = None,
) -> tuple[Tensor, Tensor]:
    """ELBO (B,) of images x (B, D) under q0 (the encoder's q), and under
    a q optimized for each image separately, in nats per image.

    Each image's q starts at q0 (and at each of ``starts``, same family)
    and takes ``steps`` Adam steps (``n_samples`` draws per step, learning
    rate ``lr`` decaying to zero) on its own ELBO, the decoder fixed
    (``e_steps.fit_posterior``). Every candidate's ELBO is then
    estimated with ``eval_samples`` draws, the same standard-normal draws
    for all (common random numbers: differences, such as the amortization
    gap, are far more precise than either ELBO). Per image the best
    candidate, q0 included, is chosen on one set of draws and reported on
    another, so that the choice does not bias the reported ELBO upward.
    A gradient ascent from the encoder alone can stop at a local optimum
    near it; a start at the true posterior's moments (``starts``, from
    the quadrature) finds the better mode when there is one.
    """
    enc = _per_image(x.shape[0], x.device)
    opt = _per_image(x.shape[0], x.device)
    starts = starts or []
    for i in range(0, x.shape[0], batch_size):
        sl = slice(i, i + batch_size)
        xb, qb = x[sl], slice_q(q0, sl)
        g = torch.Generator(device=x.device).manual_seed(seed + i)
        cands = [qb]
        for start in [qb] + [slice_q(s, sl) for s in starts]:
            cands.append(fit_posterior(
                model, xb, start, steps=steps, lr=lr, n_samples=n_samples,
                generator=g, decay=True,
                progress=(lambda k, nb=xb.shape[0]: progress(k * nb))
                if progress is not None else None,
            ))
        choose = torch.stack(
            _crn_elbos(model, xb, cands, eval_samples, seed + i + 1))
        pick = choose.argmax(0)  # (b,)
        params = [torch.stack([q.params[j] for q in cands])  # (C, b, P)
                  for j in range(2)]
        rows = torch.arange(xb.shape[0], device=x.device)
        best = type(qb)(*(p[pick, rows] for p in params))
        report = _crn_elbos(model, xb, [qb, best], eval_samples,
                            seed + i + 2)
        enc[sl], opt[sl] = report
    return enc, opt


def _crn_elbos(
    model: LatentVariableModel,
    x: Tensor, qs: list[Any], n_samples: int, seed: int,
) -> list[Tensor]:
    """ELBOs (B,) of x under each q, float64, every q with the same noise
    draws: ``chunked_terms`` from a fresh generator seeded ``seed``."""
    return [chunked_terms(
        model, x, q, n_samples,
        torch.Generator(device=x.device).manual_seed(seed)).elbo
        for q in qs]


def _moment_matched(q: Any, quad: Quadrature) -> Any:
    """The q of q's family (over (m, 2)) with the mean and variances of
    the quadrature's posterior, first m images."""
    m = q.mean.shape[0]
    var = quad.cov[:m].diagonal(dim1=-2, dim2=-1).float()
    mean = quad.mean[:m].float()
    var = torch.maximum(var, (q.variance * 1e-2).clamp(min=1e-12))
    # A Gaussian takes variances; a Laplace scales b, var = 2 b^2.
    spread = var if isinstance(q, DiagGaussian) else (var / 2.0).sqrt()
    return type(q)(mean, spread)


@dataclass
class GapTerms:
    """Per-image ELBOs (m,) under the run's q (``encoder``) and under q
    optimized per image (``optimized``), and the reference ``log_px``
    (m,) by ``method``, all in nats."""

    encoder: Tensor
    optimized: Tensor
    log_px: Tensor
    method: str


def estimate_gaps(
    model: LatentVariableModel, x: Tensor, q: Any, *, steps: int,
    exact: ExactLogPx | None, iwae: Tensor, k: int, progress: bool = False,
    chunk: int = EVAL_CHUNK,
) -> GapTerms:
    """Inference gaps on images x (m, D), q (a Gaussian or Laplace over
    (m, P)) the run's: ``inference_gaps`` with ``steps`` steps, started
    also at the quadrature posterior's moments when ``exact`` has them.
    The reference log p(x) is ``exact``'s, else the per-image IWAE_k
    ``iwae``; both (N,) with N >= m. ``chunk``: images per fit."""
    m = x.shape[0]
    starts = []
    if exact is not None and exact.quadrature is not None:
        starts.append(_moment_matched(q, exact.quadrature))
    bar = tqdm(total=m * steps * (1 + len(starts)), unit="img-step",
               unit_scale=True, leave=False, desc="per-image q",
               disable=None if progress else True)
    enc, opt = inference_gaps(model, x, q, starts=starts, steps=steps,
                              batch_size=chunk, progress=bar.update)
    bar.close()
    if exact is not None:
        return GapTerms(enc, opt, exact.values[:m], exact.method)
    return GapTerms(enc, opt, iwae[:m], f"iwae-{k}")
