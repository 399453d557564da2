"""How good is a trained model? Bounds, exact log p(x), inference gaps.

For the test images of a run, in nats per image (and bits per dimension
where that has a meaning):

- ``elbo``: E_q[log p(x|z)] - KL(q || p(z)), averaged over k draws of q;
- ``iwae``: the importance-weighted bound of Burda, Grosse and
  Salakhutdinov (2015), log 1/k sum_k p(x, z_k) / q(z_k | x), z_k ~ q,
  with the run's q as proposal; ELBO <= IWAE_k <= log p(x), rising to
  log p(x) as k grows;
- ``log_px``: log p(x) = log int p(x|z) p(z) dz itself, by quadrature
  over the latent plane when P = 2 (``quadrature_log_px``) or by summing
  over every code of a categorical latent;
- ``gaps``: the amortization gap (ELBO of a q optimized for each image
  minus the encoder's ELBO) and the approximation gap (log p(x) minus the
  optimized ELBO), after Cremer, Li and Duvenaud (2018).

Every estimator sees the same test images and, for dequantized data, the
same dequantization noise (drawn once with a fixed seed). The results are
an ``Evaluation``, whose ``to_json`` is the run folder's evaluation.json.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import dacite
import torch
from torch import Tensor
from tqdm import tqdm

from vaelab import runfolder
from vaelab.clusters import Clusters, evaluate_clusters
from vaelab.config import Config
from vaelab.data import BINARY, Dataset, dequantize, load_data
from vaelab.distributions import Categorical, DiagGaussian, kl_divergence
from vaelab.errors import VaelabError
from vaelab.inference import FAMILIES, fit_posterior
from vaelab.objectives import (
    MAX_POINTS,
    LatentVariableModel,
    compute_elbo,
    exact_log_marginal,
)
from vaelab.quadrature import Quadrature, quadrature_log_px
from vaelab.registry import method_for

# Seeds of the evaluation's random numbers, one per use, so that changing
# one estimator's settings leaves the others' draws alone.
DEQUANTIZE_SEED = 20210517
IWAE_SEED = 1
GAP_SEED = 2
LN2 = math.log(2.0)
# Decoded (image, draw) pairs per IWAE pass. Small enough that a pass's
# (points, D) tensors (6 MB for D = 784) stay in cache and below glibc's
# mmap threshold: with 32,768 points every elementwise op went to memory
# and every new tensor page-faulted; on the 2-core EPYC (1 thread), IWAE
# took 1.6-1.9x the time of the decoder's products then, 1.2-1.3x now
# (docs/benchmarks.md, "IWAE-k against the decoder's products").
EVAL_POINTS = 2048


def slice_q(q: Any, sl: slice | Tensor) -> Any:
    """The distribution of images ``sl`` of a batched posterior q."""
    return type(q)(*(p[sl] for p in q.params))


# ------------------------------------------------------------------ IWAE


@dataclass
class IwaeTerms:
    """Per-image results of ``iwae_bound``, each (B,), in nats.

    ``iwae``: log 1/k sum_k w_k; ``elbo``: E_q[log p(x|z)] - KL from the
    same k draws (closed-form KL where there is one); ``log_lik`` and
    ``kl`` its terms; ``var``: the delta-method Monte Carlo variance of
    ``iwae``, 1/ESS - 1/k with ESS = (sum w)^2 / sum w^2.
    """

    iwae: Tensor
    elbo: Tensor
    log_lik: Tensor
    kl: Tensor
    var: Tensor


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

    def terms(self, kl: Tensor | None) -> IwaeTerms:
        """The ``IwaeTerms`` of the draws so far; ``kl`` (B,), closed
        form, or None for the Monte Carlo E_q[log q - log p(z)]."""
        k = self.n
        shift = torch.where(torch.isneginf(self.max), 0.0, self.max)
        iwae = self.sum_w.log() + shift - math.log(k)
        ll_mean = self.sum_ll / k
        kl = (ll_mean - self.sum_lw / k) if kl is None else kl.double()
        # ESS = (sum w)^2 / sum w^2; the shift by max cancels.
        ess = self.sum_w.square() / self.sum_w2
        return IwaeTerms(
            iwae=iwae, elbo=ll_mean - kl, log_lik=ll_mean, kl=kl,
            var=(1.0 / ess - 1.0 / k).clamp(min=0.0),
        )


@torch.no_grad()
def iwae_bound(
    model: LatentVariableModel, x: Tensor, q: Any, k: int,
    generator: torch.Generator | None = None,
    max_points: int = EVAL_POINTS,
) -> IwaeTerms:
    """IWAE_k (Burda et al. 2015) and the ELBO of images x (B, D) with
    proposal q (over (B, P)), from the same k draws per image, in nats
    per image. The draws are decoded in passes of about ``max_points``
    (image, draw) pairs and folded into a ``LogMeanExp``: memory is one
    pass's, whatever k."""
    b = x.shape[0]
    per_pass = max(1, max_points // max(b, 1))
    acc = LogMeanExp(b, x.device)
    for start in range(0, k, per_pass):
        kc = min(per_pass, k - start)
        z = q.rsample(kc, generator)  # (kc, B, P)
        ll = model.log_likelihood(x, z)  # (kc, B)
        acc.add(ll + model.prior.log_prob(z) - q.log_prob(z), ll)
    return acc.terms(kl_divergence(q, model.prior))


def iwae_dataset(
    model: LatentVariableModel, x: Tensor, q: Any, k: int,
    generator: torch.Generator | None = None,
    max_points: int = EVAL_POINTS,
    progress: Callable[[int], None] | None = None,
) -> IwaeTerms:
    """``iwae_bound`` over many images (N, D), in batches sized so that
    one pass decodes about ``max_points`` draws."""
    batch = max(1, max_points // k)
    parts = []
    for i in range(0, x.shape[0], batch):
        sl = slice(i, i + batch)
        parts.append(iwae_bound(model, x[sl], slice_q(q, sl), k, generator,
                                max_points))
        if progress is not None:
            progress(parts[-1].iwae.shape[0])
    return IwaeTerms(*(torch.cat([getattr(p, f) for p in parts])
                       for f in ("iwae", "elbo", "log_lik", "kl", "var")))


# ------------------------------------------------------- exact log p(x)


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


# ------------------------------------------------------------------ gaps


def inference_gaps(
    model: LatentVariableModel,
    x: Tensor, q0: Any, *, starts: list[Any] | None = None,
    steps: int = 100, lr: float = 0.05, n_samples: int = 8,
    eval_samples: int = 256, seed: int = GAP_SEED, batch_size: int = 500,
    progress: Callable[[int], None] | None = None,
) -> tuple[Tensor, Tensor]:
    """ELBO (B,) of images x (B, D) under q0 (the encoder's q), and under
    a q optimized for each image separately, in nats per image.

    Each image's q starts at q0 (and at each of ``starts``, same family)
    and takes ``steps`` Adam steps (``n_samples`` draws per step, learning
    rate ``lr`` decaying to zero) on its own ELBO, the decoder fixed
    (``inference.fit_posterior``). Every candidate's ELBO is then
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


@torch.no_grad()
def _crn_elbos(
    model: LatentVariableModel,
    x: Tensor, qs: list[Any], n_samples: int, seed: int,
) -> list[Tensor]:
    """ELBOs (B,) of x under each q, every q with the same noise draws."""
    out = []
    per = max(1, MAX_POINTS // max(n_samples, 1))
    for q in qs:
        g = torch.Generator(device=x.device).manual_seed(seed)
        out.append(torch.cat([
            compute_elbo(model, x[i:i + per], n_samples, g,
                         q=slice_q(q, slice(i, i + per))).elbo.double()
            for i in range(0, x.shape[0], per)
        ]))
    return out


# ------------------------------------------------------- typed results


@dataclass(frozen=True)
class Estimate:
    """A mean over images, nats per image, and its standard error."""

    value: float
    se: float

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class IwaeEstimate(Estimate):
    """IWAE_k: ``se`` over images; ``mc_se`` the Monte Carlo standard
    error of the mean (delta method)."""

    k: int
    mc_se: float


@dataclass(frozen=True)
class Coverage:
    """The quadrature's checks over all images (see ``Quadrature``):
    ``ok`` when every image is covered and resolved; largest shares of
    p(x) on a window's edge and outside it; the net's half-width ``box``
    (latent units) and the prior mass outside it; images that zoomed in;
    the mean window width (latent units)."""

    ok: bool
    covered_fraction: float
    max_edge_mass: float
    max_outside_mass: float
    box: float
    prior_mass_outside_box: float
    zoomed_images: int
    mean_window: float


@dataclass(frozen=True)
class LogPx:
    """Mean log p(x), nats per image; ``error``: mean per-image error
    bound (0 for enumeration, exact); quadrature only: ``error_max``, the
    largest per-image bound, and ``coverage``."""

    value: float
    error: float
    method: Literal["quadrature", "enumeration"]
    error_max: float | None = None
    coverage: Coverage | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"value": self.value, "error": self.error,
                               "method": self.method}
        if self.error_max is not None:
            out["error_max"] = self.error_max
        if self.coverage is not None:
            out["coverage"] = dataclasses.asdict(self.coverage)
        return out


@dataclass(frozen=True)
class Bpd:
    """Bits per dimension of the ELBO, IWAE and log p(x) (``to_bpd``);
    None where there is no such number."""

    elbo: float | None
    iwae: float | None
    log_px: float | None


@dataclass(frozen=True)
class Gaps:
    """Means over the first ``n_images`` images, nats per image: the
    ELBO under the run's q (the encoder's, or for vEM the test-time
    E-step's), under q optimized per image, and log p(x) by
    ``log_px_method`` (quadrature, enumeration or iwae-k)."""

    n_images: int
    encoder_elbo: float
    optimized_elbo: float
    log_px: float
    log_px_method: str

    @property
    def amortization_gap(self) -> float:
        """Optimized minus the run's q's ELBO (for vEM not amortization:
        the E-step's shortfall)."""
        return self.optimized_elbo - self.encoder_elbo

    @property
    def approximation_gap(self) -> float:
        """log p(x) minus the optimized ELBO: the family's limit."""
        return self.log_px - self.optimized_elbo

    def to_json(self) -> dict[str, Any]:
        return {
            "n_images": self.n_images,
            "encoder_elbo": self.encoder_elbo,
            "optimized_elbo": self.optimized_elbo,
            "log_px": self.log_px,
            "amortization_gap": self.amortization_gap,
            "approximation_gap": self.approximation_gap,
        }


@dataclass(frozen=True)
class Timings:
    """Seconds per part; None for a part not run."""

    e_step: float | None = None
    elbo_iwae: float | None = None
    log_px: float | None = None
    gaps: float | None = None

    def to_json(self) -> dict[str, float]:
        return {k: v for k, v in dataclasses.asdict(self).items()
                if v is not None}


UNITS = "nats per image"


@dataclass(frozen=True)
class Evaluation:
    """What ``evaluate_model`` measured; ``to_json`` is evaluation.json.

    Its keys (stable; the report reads them), nats per image:

    - ``elbo``: mean test ELBO, E over k draws of q; ``elbo_se``: its
      standard error over images.
    - ``iwae``: {value, se, k, mc_se}: IWAE_k, se over images, and mc_se
      the Monte Carlo standard error of the mean (delta method).
    - ``log_px``: {value, error, method[, error_max, coverage]} or None:
      log p(x) by ``quadrature`` (P = 2; error: mean per-image error
      bound) or ``enumeration`` (categorical latents; exact, error 0);
      coverage: {ok, covered_fraction, max_edge_mass, max_outside_mass,
      box, prior_mass_outside_box, zoomed_images, mean_window}
      (quadrature only).
    - ``bpd``: {elbo, iwae, log_px} in bits per dimension, or None
      (see ``to_bpd``); ELBO and IWAE give upper bounds on bpd.
    - ``gaps``: {n_images, encoder_elbo, optimized_elbo, log_px,
      amortization_gap, approximation_gap} on the first gap_n images, or
      None (no fittable q). log_px there is the quadrature (or exact)
      value, else IWAE_k, named by ``gaps_log_px_method``. For vEM runs
      "encoder" is the test-time E-step (``inference.vem_test_steps``).
    - ``clusters``: discrete latents only (else None), the classes
      against the digits on the evaluated images: {n_images, classes,
      classes_used, purity, accuracy, counts, group}
      (``vaelab.clusters.Clusters``).
    - ``units``, ``n_images``, ``k``, ``inference``, ``preprocess``,
      ``seconds``, ``timings`` (seconds per part), ``notes`` (warnings).
    """

    inference: str
    preprocess: str
    n_images: int
    k: int
    elbo: Estimate
    iwae: IwaeEstimate
    log_px: LogPx | None
    bpd: Bpd | None
    gaps: Gaps | None
    notes: tuple[str, ...]
    timings: Timings
    seconds: float
    clusters: Clusters | None = None

    def to_json(self) -> dict[str, Any]:
        """evaluation.json's content, as plain JSON data."""
        return {
            "units": UNITS,
            "inference": self.inference,
            "preprocess": self.preprocess,
            "n_images": self.n_images,
            "k": self.k,
            "elbo": self.elbo.value,
            "elbo_se": self.elbo.se,
            "iwae": self.iwae.to_json(),
            "log_px": self.log_px.to_json() if self.log_px else None,
            "bpd": dataclasses.asdict(self.bpd) if self.bpd else None,
            "gaps": self.gaps.to_json() if self.gaps else None,
            "gaps_log_px_method": self.gaps.log_px_method
            if self.gaps else None,
            "notes": list(self.notes),
            "timings": self.timings.to_json(),
            "seconds": self.seconds,
            "clusters": (dataclasses.asdict(self.clusters)
                         if self.clusters else None),
        }

    @classmethod
    def from_json(cls, data: Any, source: str = runfolder.EVALUATION
                  ) -> Evaluation:
        """The inverse of ``to_json``; VaelabError naming ``source`` for
        anything that is not what ``to_json`` writes."""
        try:
            return _read_evaluation(data)
        except (ValueError, dacite.DaciteError) as e:
            raise VaelabError(
                f"{source}: not an evaluation vaelab writes ({e})"
            ) from None

    @classmethod
    def read(cls, run_dir: str | Path) -> Evaluation:
        """``run_dir``'s evaluation.json."""
        path = Path(run_dir) / runfolder.EVALUATION
        return cls.from_json(runfolder.read_json(path), str(path))

    def write(self, run_dir: str | Path) -> None:
        """Write ``run_dir``'s evaluation.json."""
        runfolder.write_json(Path(run_dir) / runfolder.EVALUATION,
                             self.to_json())


def _read_evaluation(data: Any) -> Evaluation:
    """``to_json``'s output back into an Evaluation; ValueError or
    DaciteError for anything else (unknown or missing keys, wrong types)."""
    if not isinstance(data, dict):
        raise ValueError(f"a {type(data).__name__}, not an object")
    data = dict(data)
    if data.pop("units", None) != UNITS:
        raise ValueError(f"units must be {UNITS!r}")
    # evaluation.json flattens the ELBO and keeps the gaps' method and
    # differences beside them: back to the dataclasses' nesting.
    nested: dict[str, Any] = {"elbo": {"value": data.pop("elbo", None),
                                       "se": data.pop("elbo_se", None)}}
    method = data.pop("gaps_log_px_method", None)
    gaps = data.pop("gaps", None)
    if isinstance(gaps, dict):
        gaps = {k: v for k, v in gaps.items()
                if k not in ("amortization_gap", "approximation_gap")}
        gaps["log_px_method"] = method
    nested["gaps"] = gaps
    return dacite.from_dict(
        Evaluation, {**data, **nested},
        config=dacite.Config(strict=True, cast=[tuple]),
    )


# ------------------------------------------------------------- the run


def _stats(values: Tensor) -> tuple[float, float]:
    """Mean and its standard error over images."""
    v = values.double()
    n = v.numel()
    se = float(v.std() / math.sqrt(n)) if n > 1 else float("nan")
    return float(v.mean()), se


def to_bpd(log_p: float | None, dim: int, preprocess: str) -> float | None:
    """Bits per dimension of a log-density in nats per image.

    Dequantized data, x = (pixel + u) / 256 in [0, 1]: the density of the
    integer-plus-noise data in pixel units is p(x) / 256^D, so
    bpd = (-log p(x) + D log 256) / (D log 2), an upper bound on the
    discrete data's bits per pixel. Binarized data: log p is a log
    probability, bpd = -log p / (D log 2). Other preprocessing: None (a
    density of pixel / 255 has no such reading).
    """
    if log_p is None or not math.isfinite(log_p):
        return None
    if preprocess == "dequantize":
        return (-log_p + dim * math.log(256.0)) / (dim * LN2)
    if preprocess in BINARY:
        return -log_p / (dim * LN2)
    return None


def estimate_bounds(
    model: LatentVariableModel,
    x: Tensor, q: Any, k: int, generator: torch.Generator,
    progress: bool = False, max_points: int = EVAL_POINTS,
) -> tuple[Estimate, IwaeEstimate, Tensor]:
    """The ELBO and IWAE_k of images x (N, D) with proposal q (over
    (N, P)), means over images in nats per image, and the per-image
    IWAE_k (N,). ``progress``: a bar on a terminal (stderr), counting
    images, with their rate and the time left; ``max_points``: decoded
    points per pass (``iwae_dataset``)."""
    bar = tqdm(total=x.shape[0], unit="img", leave=False,
               desc=f"IWAE k={k}", disable=None if progress else True)
    terms = iwae_dataset(model, x, q, k, generator, max_points,
                         progress=bar.update)
    bar.close()
    iwae = IwaeEstimate(*_stats(terms.iwae), k=k,
                        mc_se=float(terms.var.sum().sqrt() / x.shape[0]))
    return Estimate(*_stats(terms.elbo)), iwae, terms.iwae


@dataclass
class ExactLogPx:
    """log p(x) per image ``values`` (N,), nats; its ``summary`` for
    evaluation.json; and the ``quadrature``'s per-image results when it
    was the method (the posterior's moments among them)."""

    values: Tensor
    summary: LogPx
    quadrature: Quadrature | None = None


def enumerated_estimate(model: LatentVariableModel, x: Tensor) -> ExactLogPx:
    """log p(x) of images x (N, D) of a categorical-latent model, exact;
    ValueError when there are too many codes to enumerate."""
    values = enumerated_log_px(model, x)
    return ExactLogPx(values, LogPx(float(values.mean()), 0.0,
                                    "enumeration"))


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
    covered = float(quad.covered.double().mean())
    coverage = Coverage(
        ok=covered == 1.0,
        covered_fraction=covered,
        max_edge_mass=float(quad.edge.max()),
        max_outside_mass=float(quad.outside.max()),
        box=quad.box,
        prior_mass_outside_box=quad.prior_outside,
        zoomed_images=int((quad.level > 0).sum()),
        mean_window=float((quad.hi - quad.lo).mean()),
    )
    summary = LogPx(
        value=float(quad.log_px.mean()), error=float(quad.error.mean()),
        method="quadrature", error_max=float(quad.error.max()),
        coverage=coverage,
    )
    return ExactLogPx(quad.log_px, summary, quad)


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
    cov = exact.summary.coverage
    if cov is None or cov.ok:
        return exact, []
    return exact, [
        f"quadrature check failed for {1 - cov.covered_fraction:.2%} of "
        f"the images (not covered or not resolved); largest share "
        f"outside a window {cov.max_outside_mass:.2g}"
    ]


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


def estimate_gaps(
    model: LatentVariableModel, x: Tensor, q: Any, *, steps: int,
    exact: ExactLogPx | None, iwae: Tensor, k: int, progress: bool = False,
) -> Gaps:
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
        ref, method = exact.values[:m], exact.summary.method
    else:
        ref, method = iwae[:m], f"iwae-{k}"
    return Gaps(n_images=m, encoder_elbo=float(enc.mean()),
                optimized_elbo=float(opt.mean()), log_px=float(ref.mean()),
                log_px_method=method)


def bits_per_dim(
    elbo: float, iwae: float, log_px: LogPx | None, dim: int,
    preprocess: str,
) -> Bpd | None:
    """The estimates (nats per image) in bits per dimension, or None
    where the preprocessing gives them no such reading (``to_bpd``)."""
    if preprocess not in ("dequantize", *BINARY):
        return None
    return Bpd(
        elbo=to_bpd(elbo, dim, preprocess),
        iwae=to_bpd(iwae, dim, preprocess),
        log_px=to_bpd(log_px.value, dim, preprocess) if log_px else None,
    )


def _prepare(images: Tensor, preprocess: str, n: int,
             device: torch.device) -> Tensor:
    """The first n test images (n, D) as every estimator sees them."""
    # One fixed-seed noise draw for all test images, then the first n:
    # the same images and noise for every estimator and every n.
    x = images.to(device)
    if preprocess == "dequantize":
        g = torch.Generator(device="cpu").manual_seed(DEQUANTIZE_SEED)
        x = dequantize(x, g)
    return x[:n]


def evaluate_model(
    model: LatentVariableModel,
    config: Config,
    images: Tensor,
    preprocess: str,
    *,
    n: int | None = None,
    k: int = 5000,
    progress: bool = True,
    quick: bool = False,
    gap_n: int | None = None,
    gap_steps: int | None = None,
    labels: Tensor | None = None,
) -> Evaluation:
    """``evaluate_run`` for a model in memory and its test ``images``
    (N, D), pixels as the preprocessing left them, and their ``labels``
    (N,) for the clusters of a discrete latent; writes nothing."""
    t_start = time.perf_counter()
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if quick:
        n = min(n or images.shape[0], 1000)
        k = min(k, 500)
    n = images.shape[0] if n is None else min(n, images.shape[0])
    if n < 1:
        raise ValueError("no test images to evaluate")
    device = next(model.parameters()).device
    model.eval()
    x = _prepare(images, preprocess, n, device)
    timings: dict[str, float] = {}

    t = time.perf_counter()
    g = torch.Generator(device=device).manual_seed(IWAE_SEED)
    method = method_for(config)
    q = method.posterior(model, x, generator=g, progress=progress)
    if method.posterior_timing is not None:
        timings[method.posterior_timing] = time.perf_counter() - t

    t = time.perf_counter()
    elbo, iwae, iwae_values = estimate_bounds(model, x, q, k, g, progress)
    timings["elbo_iwae"] = time.perf_counter() - t

    t = time.perf_counter()
    exact, notes = estimate_log_px(model, x, q, k, progress)
    if exact is not None:
        timings["log_px"] = time.perf_counter() - t

    gaps = None
    if gap_n == 0:
        pass
    elif isinstance(q, FAMILIES):
        t = time.perf_counter()
        m = min(n, gap_n if gap_n is not None else (100 if quick else 1000))
        steps = gap_steps if gap_steps is not None else (30 if quick
                                                         else 100)
        gaps = estimate_gaps(model, x[:m], slice_q(q, slice(0, m)),
                             steps=steps, exact=exact, iwae=iwae_values,
                             k=k, progress=progress)
        timings["gaps"] = time.perf_counter() - t
    else:
        notes.append(f"no gaps: a {type(q).__name__} q cannot be fitted "
                     "per image")

    clusters = None
    if labels is not None:
        clusters = evaluate_clusters(model, x, labels[:n])
    log_px = exact.summary if exact is not None else None
    return Evaluation(
        inference=config.inference,
        preprocess=preprocess,
        n_images=n,
        k=k,
        elbo=elbo,
        iwae=iwae,
        log_px=log_px,
        bpd=bits_per_dim(elbo.value, iwae.value, log_px, x.shape[1],
                         preprocess),
        gaps=gaps,
        notes=tuple(notes),
        timings=Timings(**timings),
        seconds=time.perf_counter() - t_start,
        clusters=clusters,
    )


def evaluate_run(
    run_dir: str | Path,
    *,
    n: int | None = None,
    k: int = 5000,
    device: str = "cpu",
    progress: bool = True,
    quick: bool = False,
    gap_n: int | None = None,
    data_dir: str | None = None,
    dataset: Dataset | None = None,
) -> Evaluation:
    """Evaluate the trained run in ``run_dir`` on its test set; write
    ``RUN_DIR/evaluation.json`` (``Evaluation`` has its keys) and return
    it. Units: nats per image.

    ``n``: the first n test images (default all); ``k``: importance
    samples per image; ``quick``: a smoke test (at most 1000 images and
    k <= 500, the gaps on 100 images with 30 steps); ``gap_n``: images for
    the gaps (default min(n, 1000); 0: no gaps). ``dataset``: the run's
    data, preprocessed as in training (default: loaded from its config or
    ``data_dir``); only its test split is used.
    """
    t_start = time.perf_counter()
    run_dir = Path(run_dir)
    model, config = runfolder.load_model(run_dir, device)
    if dataset is None:
        dataset = load_data(config, data_dir)
    result = evaluate_model(
        model, config, dataset.test.images, dataset.preprocess, n=n, k=k,
        progress=progress, quick=quick, gap_n=gap_n,
        labels=dataset.test.labels,
    )
    # Loading the model and the data counts too.
    result = dataclasses.replace(result,
                                 seconds=time.perf_counter() - t_start)
    result.write(run_dir)
    return result


def format_table(result: Evaluation) -> str:
    """The evaluation as a plain-text table (nats per image, bits/dim)."""
    bpd = result.bpd

    def row(name: str, value: float | None, pm: str, key: str) -> str:
        b = getattr(bpd, key) if bpd is not None else None
        v = f"{value:12.2f}" if value is not None else f"{'-':>12}"
        bb = f"{b:9.4f}" if b is not None else f"{'-':>9}"
        return f"{name:24s}{v}  {pm:18s}{bb}"

    lines = [
        f"{result.n_images:,} test images ({result.inference}, "
        f"{result.preprocess}); nats per image",
        f"{'estimate':24s}{'value':>12}  {'+-':18s}{'bits/dim':>9}",
    ]
    lines.append(row(f"ELBO ({result.k} draws)", result.elbo.value,
                     f"se {result.elbo.se:.2f}", "elbo"))
    iw = result.iwae
    lines.append(row(f"IWAE (k = {iw.k})", iw.value,
                     f"se {iw.se:.2f}, mc {iw.mc_se:.2g}", "iwae"))
    lp = result.log_px
    if lp:
        lines.append(row(f"log p(x) ({lp.method})", lp.value,
                         f"err {lp.error:.2g}", "log_px"))
        cov = lp.coverage
        if cov:
            lines.append(
                f"  check {'ok' if cov.ok else 'FAILED'}: "
                f"{cov.covered_fraction:.2%} of images covered and "
                f"resolved ({cov.zoomed_images:,} zoomed in); mass on "
                f"window edges <= {cov.max_edge_mass:.1g}, outside "
                f"windows <= {cov.max_outside_mass:.1g}; net box "
                f"+-{cov.box:.2f} (prior mass outside "
                f"{cov.prior_mass_outside_box:.1g})"
            )
    gaps = result.gaps
    if gaps:
        lines.append(
            f"gaps on {gaps.n_images:,} images (log p(x): "
            f"{gaps.log_px_method}):"
        )
        note = method_for(result.inference).gap_note
        if note is not None:
            lines.append(f"  {note}")
        for key, value in gaps.to_json().items():
            if key != "n_images":
                lines.append(f"  {key:22s}{value:12.2f}")
    cl = result.clusters
    if cl:
        lines.append(
            f"clusters: purity {cl.purity:.1%}, accuracy {cl.accuracy:.1%}"
            f", {cl.classes_used} of {cl.classes} classes used"
            + (f" (group {cl.group + 1})" if cl.group else "")
        )
    for note in result.notes:
        lines.append(f"note: {note}")
    parts = ", ".join(f"{k} {v:.1f} s" for k, v in
                      result.timings.to_json().items())
    lines.append(f"{result.seconds:.1f} s ({parts})")
    return "\n".join(lines)
