"""Held-out estimators: the ELBO and IWAE_k (exact log p(x) and the
inference gaps: ``vaelab.evaluation.log_px``).

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
  z_k ~ q; ELBO <= IWAE_k <= log p(x), rising to log p(x) as k grows.
  log p(x) itself and the inference gaps need the quadrature and the
  E-steps, above this package: ``vaelab.evaluation.log_px``.

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
from vaelab.prob.distributions import Categorical, kl_divergence
from vaelab.prob.objectives import (
    LatentVariableModel,
    enumerated_log_lik,
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
# Images per chunk of the quadrature and of the inference gaps' fits
# (the gaps' draws are seeded per chunk): their memory depends on it,
# not on the number of images. ``resources.evaluation_chunk`` picks a
# smaller one where the machine's memory is short.
EVAL_CHUNK = 500
# (code, image) pairs per pass of a categorical latent's exact log p(x):
# one pass's (codes, images, D) terms are then ~13 MB for D = 784,
# whatever the number of images.
ENUM_POINTS = 4096
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


def _per_image(n: int, device: torch.device, *shape: int) -> Tensor:
    """An (n, *shape) float64 buffer for per-image results, allocated
    before a loop over chunks and filled in place.

    Why not a list of per-chunk results joined at the end: each chunk's
    small result, allocated while its large temporaries are being freed,
    can land inside their freed memory, so that the next chunk's
    temporaries need fresh memory; glibc then keeps the holes resident
    (issue 37: +4 MB per image for IWAE_5000, 24 GB on 10,000 images).
    """
    return torch.full((n, *shape), math.nan, dtype=torch.float64,
                      device=device)


def slice_q(q: Any, sl: slice | Tensor) -> Any:
    """The distribution of images ``sl`` of a batched posterior q."""
    return type(q)(*(p[sl] for p in q.params))


def cat_q(qs: list[Any]) -> Any:
    """Batched posteriors of the same family, joined along the images."""
    return type(qs[0])(*(torch.cat(ps) for ps in
                         zip(*(q.params for q in qs), strict=True)))


# Images per pass of the encoder (``posterior_in_batches``).
POSTERIOR_BATCH = 2000


@torch.no_grad()
def posterior_in_batches(model: Any, x: Tensor,
                         batch: int = POSTERIOR_BATCH) -> Any:
    """The encoder's q(z | x) of images x (N, D), over (N, ...), in
    passes of ``batch`` images (on x's device)."""
    parts = [model.posterior(x[i:i + batch])
             for i in range(0, x.shape[0], batch)]
    return cat_q(parts) if parts else model.posterior(x)


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
        # In place: the sums outlive the pass (see ``_per_image``).
        self.sum_w.mul_(old).add_(e.sum(0))
        self.sum_w2.mul_(old.square()).add_(e.square().sum(0))
        self.max.copy_(new_max)
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
    out = ImageTerms(*(_per_image(x.shape[0], x.device)
                       for _ in fields(ImageTerms)))
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
        for f in fields(ImageTerms):
            getattr(out, f.name)[sl] = getattr(terms, f.name)
        if progress is not None:
            progress(b)
    return out


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
