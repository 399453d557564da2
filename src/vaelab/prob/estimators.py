"""Held-out estimators: the ELBO, IWAE_k, exact log p(x), inference gaps.

All in nats per image, on held-out images (validation in training,
results.json's splits, ``vaelab evaluate``'s test images):

- ``chunked_terms``, the one accumulator behind every Monte Carlo
  estimate here: it draws z ~ q in passes of about ``EVAL_POINTS``
  decoded (image, draw) pairs and folds them into per-image float64 sums
  (``LogMeanExp``), giving each image's ELBO, its terms, IWAE_k and the
  latter's Monte Carlo variance. ``average_elbo`` (training's
  validation, results.json), ``estimate_bounds`` (evaluation) and the
  gaps' common-random-number ELBOs all go through it; the training
  objectives, with autograd, are ``vaelab.prob.objectives``'.
- IWAE_k (``ImageTerms.iwae``): the importance-weighted bound of Burda,
  Grosse and Salakhutdinov (2015), log 1/k sum_k p(x, z_k) / q(z_k | x),
  z_k ~ q; ELBO <= IWAE_k <= log p(x), rising to log p(x) as k grows;
- ``estimate_log_px``: log p(x) itself, by quadrature over the latent
  plane when P = 2 (``quadrature_log_px``) or by summing over every code
  of a categorical latent;
- ``estimate_gaps``: the amortization gap (ELBO of a q optimized for
  each image minus the run's q's ELBO) and the approximation gap
  (log p(x) minus the optimized ELBO), after Cremer, Li and Duvenaud
  (2018).

Every random number comes from ``SEEDS``; dequantized held-out images
get their noise from ``dequantize_held_out``, once, so that every
estimate of an image sees the same noise.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import Any

import torch
from torch import Tensor
from tqdm import tqdm

from vaelab.data import dequantize
from vaelab.evaluation.quadrature import Quadrature, quadrature_log_px
from vaelab.inference.e_steps import FAMILIES, fit_posterior
from vaelab.prob.distributions import Categorical, DiagGaussian, kl_divergence
from vaelab.prob.objectives import (
    LatentVariableModel,
    enumerated_log_lik,
    exact_log_marginal,
)


@dataclass(frozen=True)
class Seeds:
    """The seeds of every held-out random number, one per use, so that
    changing one estimator's settings leaves the others' draws alone.
    Training's own stream (``config.seed``) is never touched."""

    # The U(0, 1/256) noise of dequantized held-out images.
    dequantize: int = 20210517
    # z ~ q of the held-out ELBO and IWAE, and a vEM run's E-steps
    # before them.
    draws: int = 12345
    # The per-image fits of the inference gaps and their ELBOs' draws
    # (seed + batch offset + 0, 1, 2).
    gaps: int = 2
    # q of images whose caller gives no generator (a vEM run's E-steps
    # for figures and the explorer): the same q at every call.
    posterior: int = 7


SEEDS = Seeds()
# Decoded (image, draw) pairs per pass. Small enough that a pass's
# (points, D) tensors (6 MB for D = 784) stay in cache and below glibc's
# mmap threshold: with 32,768 points every elementwise op went to memory
# and every new tensor page-faulted; on the 2-core EPYC (1 thread), IWAE
# took 1.6-1.9x the time of the decoder's products then, 1.2-1.3x now
# (docs/benchmarks.md, "IWAE-k against the decoder's products").
EVAL_POINTS = 2048
# q for rows of a batch: (rows, x, generator) -> posterior over (B, ...).
PosteriorOf = Callable[[slice, Tensor, torch.Generator], Any]


def dequantize_held_out(images: Tensor) -> Tensor:
    """Held-out images (N, D), pixel / 256, plus one fixed U(0, 1/256)
    draw per pixel (``SEEDS.dequantize``), on the images' device.

    The noise is drawn for the whole tensor at once on the CPU, so image
    i of a split gets the same noise on any device, in training's
    validation and results.json as in ``vaelab evaluate``.
    """
    g = torch.Generator(device="cpu").manual_seed(SEEDS.dequantize)
    return dequantize(images, g)


def slice_q(q: Any, sl: slice | Tensor) -> Any:
    """The distribution of images ``sl`` of a batched posterior q."""
    return type(q)(*(p[sl] for p in q.params))


def cat_q(qs: list[Any]) -> Any:
    """Batched posteriors of the same family, joined along the images."""
    return type(qs[0])(*(torch.cat(ps) for ps in
                         zip(*(q.params for q in qs), strict=True)))


# ------------------------------------------------------ the accumulator


@dataclass
class ImageTerms:
    """Per-image results of ``chunked_terms``, each (N,), float64, nats.

    ``elbo`` = ``log_lik`` - ``kl``: E_q[log p(x|z)] from the k draws
    (exact for a model that enumerates its codes) minus KL(q || p(z))
    (closed form where there is one, else from the same draws);
    ``iwae``: log 1/k sum_k w_k of the same draws; ``var``: the
    delta-method Monte Carlo variance of ``iwae``, 1/ESS - 1/k with
    ESS = (sum w)^2 / sum w^2.
    """

    elbo: Tensor
    log_lik: Tensor
    kl: Tensor
    iwae: Tensor
    var: Tensor

    @classmethod
    def cat(cls, parts: list[ImageTerms]) -> ImageTerms:
        """The parts' images, in order."""
        return cls(*(torch.cat([getattr(p, f.name) for p in parts])
                     for f in fields(cls)))


class LogMeanExp:
    """Streamed log (1/k) sum_k exp(lw_k) per image, k arriving in passes.

    Holds, per image (B,), in float64: the running max m of the log-weights,
    sum exp(lw - m) and sum exp(2 (lw - m)) (for the effective sample size),
    and the running sums of the log-weights and of log p(x|z), so that
    memory stays (B,) whatever k. ``add`` takes one pass's (kc, B); it
    equals a logsumexp over all k at once up to float64 rounding.
    """

    def __init__(self, b: int, device: torch.device | str = "cpu") -> None:
        def zeros() -> Tensor:
            return torch.zeros(b, dtype=torch.float64, device=device)

        self.n = 0
        self.max = torch.full((b,), -math.inf, dtype=torch.float64,
                              device=device)
        self.sum_w, self.sum_w2 = zeros(), zeros()
        self.sum_lw, self.sum_ll = zeros(), zeros()

    def add(self, log_w: Tensor, log_lik: Tensor) -> None:
        """One pass: log-weights and log p(x|z), each (kc, B), nats."""
        # float64 from here on only: the (kc, B) weights are tiny next to
        # the (kc, B, D) decoder outputs, and a sum of 5000 exps in
        # float32 would lose digits the comparison with logsumexp needs.
        lw = log_w.double()
        new_max = torch.maximum(self.max, lw.amax(0))
        # An image whose weights are all 0 so far (max -inf) is shifted by
        # 0, as logsumexp does, so that -inf - -inf never makes a NaN.
        shift = torch.where(torch.isneginf(new_max), 0.0, new_max)
        old = torch.exp(self.max - shift)
        e = torch.exp(lw - shift)
        self.sum_w = self.sum_w * old + e.sum(0)
        self.sum_w2 = self.sum_w2 * old.square() + e.square().sum(0)
        self.max = new_max
        self.sum_lw += lw.sum(0)
        self.sum_ll += log_lik.double().sum(0)
        self.n += lw.shape[0]

    def terms(self, kl: Tensor | None) -> ImageTerms:
        """The ``ImageTerms`` of the draws so far; ``kl`` (B,), closed
        form, or None for the Monte Carlo E_q[log q - log p(z)]."""
        k = self.n
        shift = torch.where(torch.isneginf(self.max), 0.0, self.max)
        iwae = self.sum_w.log() + shift - math.log(k)
        ll_mean = self.sum_ll / k
        kl = (ll_mean - self.sum_lw / k) if kl is None else kl.double()
        # ESS = (sum w)^2 / sum w^2; the shift by max cancels.
        ess = self.sum_w.square() / self.sum_w2
        return ImageTerms(
            elbo=ll_mean - kl, log_lik=ll_mean, kl=kl, iwae=iwae,
            var=(1.0 / ess - 1.0 / k).clamp(min=0.0),
        )


def _enumerates(model: LatentVariableModel, q: Any) -> bool:
    """Whether the ELBO's E_q[log p(x|z)] is summed over all codes, as
    training's does for ``--estimator enumerate``: exact, no draws."""
    return isinstance(q, Categorical) and model.estimator.exact


def _exact_log_lik(model: LatentVariableModel, x: Tensor, q: Any,
                   max_points: int) -> Tensor:
    """E_q[log p(x|z)] (B,), float64, summed over all K^M codes, in
    chunks of about ``max_points`` (image, code) pairs."""
    per = max(1, max_points // q.n_codes)
    return torch.cat([
        enumerated_log_lik(model, x[i:i + per],
                           slice_q(q, slice(i, i + per))).double()
        for i in range(0, x.shape[0], per)
    ])


@torch.no_grad()
def chunked_terms(
    model: LatentVariableModel, x: Tensor, q: Any, k: int,
    generator: torch.Generator | None = None, *,
    max_points: int = EVAL_POINTS,
    progress: Callable[[int], None] | None = None,
) -> ImageTerms:
    """ELBO, its terms, IWAE_k and IWAE_k's variance of each image of x
    (N, D) from k draws z ~ q (q over (N, ...)), in nats per image.

    Images go in batches of max(1, max_points // k); each batch's k
    draws in passes of max(1, max_points // batch) draws, folded into a
    ``LogMeanExp``: memory is one pass's, whatever k and N. The draws
    are ``q.rsample(kc, generator)`` of each batch's q, batch by batch
    and pass by pass: the same seed, q, k and max_points give the same
    draws. ``progress`` is called with each batch's number of images.
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    batch = max(1, max_points // k)
    exact = _enumerates(model, q)
    parts = []
    for i in range(0, x.shape[0], batch):
        sl = slice(i, i + batch)
        xb, qb = x[sl], slice_q(q, sl)
        b = xb.shape[0]
        per_pass = max(1, max_points // b)
        acc = LogMeanExp(b, x.device)
        for start in range(0, k, per_pass):
            z = qb.rsample(min(per_pass, k - start), generator)
            ll = model.log_likelihood(xb, z)  # (kc, b)
            acc.add(ll + model.prior.log_prob(z) - qb.log_prob(z), ll)
        terms = acc.terms(kl_divergence(qb, model.prior))
        if exact:
            terms.log_lik = _exact_log_lik(model, xb, qb, max_points)
            terms.elbo = terms.log_lik - terms.kl
        parts.append(terms)
        if progress is not None:
            progress(b)
    return ImageTerms.cat(parts)


def average_elbo(
    model: LatentVariableModel,
    images: Tensor,
    *,
    dequantized: bool = False,
    n_samples: int = 1,
    batch_size: int = 1000,
    seed: int = SEEDS.draws,
    posterior: PosteriorOf | None = None,
    iwae_k: int | None = None,
) -> dict[str, float]:
    """Mean ELBO, log-likelihood and KL over ``images`` (N, D), in nats per
    image: the held-out ELBO of every kind of inference. A fixed-seed
    generator makes repeated calls agree.

    ``dequantized``: add ``dequantize_held_out``'s fixed noise first, as
    for training on dequantized data. ``posterior(rows, x, generator)``:
    q for the images ``rows`` (a slice of ``images``, ``batch_size`` at a
    time), given them as ``x`` after dequantization; default the encoder's
    q(z | x). Variational EM passes its stored or freshly fitted per-image
    q here. ``iwae_k``: estimate the ELBO from k draws per image instead
    of ``n_samples``, and add "iwae", the mean IWAE_k bound of the same
    draws.

    The generator (``seed``) serves q first, then ``chunked_terms``'s
    draws, as in ``vaelab evaluate``: with the same seed and k draws the
    two give the same ELBO for the same images.
    """
    keys = ["elbo", "log_lik", "kl"] + ([] if iwae_k is None else ["iwae"])
    n = images.shape[0]
    if n == 0:
        return dict.fromkeys(keys, float("nan"))
    x = dequantize_held_out(images) if dequantized else images
    g = torch.Generator(device=images.device).manual_seed(seed)
    qs = []
    for i in range(0, n, batch_size):
        rows = slice(i, i + batch_size)
        if posterior is None:
            with torch.no_grad():
                qs.append(model.posterior(x[rows]))
        else:  # outside no_grad: an E-step ascends its ELBO
            qs.append(posterior(rows, x[rows], g))
    with torch.no_grad():
        q = cat_q(qs)
    k = n_samples if iwae_k is None else iwae_k
    terms = chunked_terms(model, x, q, k, g)
    return {key: float(getattr(terms, key).mean()) for key in keys}


def estimate_bounds(
    model: LatentVariableModel,
    x: Tensor, q: Any, k: int, generator: torch.Generator,
    progress: bool = False, max_points: int = EVAL_POINTS,
) -> ImageTerms:
    """``chunked_terms`` of images x (N, D) with proposal q (over (N,
    P)), k draws each: per-image ELBO and IWAE_k in nats per image.
    ``progress``: a bar on a terminal (stderr), counting images, with
    their rate and the time left."""
    bar = tqdm(total=x.shape[0], unit="img", leave=False,
               desc=f"IWAE k={k}", disable=None if progress else True)
    terms = chunked_terms(model, x, q, k, generator, max_points=max_points,
                          progress=bar.update)
    bar.close()
    return terms


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
    model: LatentVariableModel, x: Tensor, batch_size: int = 500
) -> Tensor:
    """log p(x) (N,) of a categorical-latent model, exactly, by summing
    over all K^M codes (``objectives.exact_log_marginal``)."""
    return torch.cat([
        exact_log_marginal(model, x[i:i + batch_size]).double()
        for i in range(0, x.shape[0], batch_size)
    ])


def enumerated_estimate(model: LatentVariableModel, x: Tensor) -> ExactLogPx:
    """log p(x) of images x (N, D) of a categorical-latent model, exact;
    ValueError when there are too many codes to enumerate."""
    values = enumerated_log_px(model, x)
    return ExactLogPx(values, torch.zeros_like(values), "enumeration")


def quadrature_estimate(
    model: LatentVariableModel, x: Tensor, q: Any, progress: bool = False
) -> ExactLogPx:
    """log p(x) of images x (N, D) of a 2-D latent model by quadrature,
    windows placed by q (a Gaussian or Laplace over (N, 2))."""
    bar = tqdm(unit="img-tile", unit_scale=True, leave=False,
               desc="quadrature", disable=None if progress else True)
    quad = quadrature_log_px(model, x, q.mean, q.stddev,
                             progress=bar.update)
    bar.close()
    return ExactLogPx(quad.log_px, quad.error, "quadrature", quad)


def estimate_log_px(
    model: LatentVariableModel,
    x: Tensor, q: Any, k: int, progress: bool = False
) -> tuple[ExactLogPx | None, list[str]]:
    """log p(x) of images x (N, D) by enumeration (categorical q) or
    quadrature (P = 2, Gaussian or Laplace q), or None; and notes on what
    failed or could not be computed (``k``: the IWAE's, for the note)."""
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
    exact = quadrature_estimate(model, x, q, progress)
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
    enc, opt = [], []
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
        enc.append(report[0])
        opt.append(report[1])
    return torch.cat(enc), torch.cat(opt)


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
) -> GapTerms:
    """Inference gaps on images x (m, D), q (a Gaussian or Laplace over
    (m, P)) the run's: ``inference_gaps`` with ``steps`` steps, started
    also at the quadrature posterior's moments when ``exact`` has them.
    The reference log p(x) is ``exact``'s, else the per-image IWAE_k
    ``iwae``; both (N,) with N >= m."""
    m = x.shape[0]
    starts = []
    if exact is not None and exact.quadrature is not None:
        starts.append(_moment_matched(q, exact.quadrature))
    bar = tqdm(total=m * steps * (1 + len(starts)), unit="img-step",
               unit_scale=True, leave=False, desc="per-image q",
               disable=None if progress else True)
    enc, opt = inference_gaps(model, x, q, starts=starts, steps=steps,
                              progress=bar.update)
    bar.close()
    if exact is not None:
        return GapTerms(enc, opt, exact.values[:m], exact.method)
    return GapTerms(enc, opt, iwae[:m], f"iwae-{k}")
