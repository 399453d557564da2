"""How good is a trained model? The evaluation record, evaluation.json.

``evaluate_run`` measures a run's test images with the estimators of
``vaelab.prob.estimators`` (ELBO, IWAE_k, log p(x), inference gaps) and
records their means over images, in nats per image (and bits per
dimension where that has a meaning), as an ``Evaluation``, whose
``to_json`` is the run folder's evaluation.json; ``format_table`` prints
it. Every estimator sees the same test images and, for dequantized data,
the same dequantization noise (``estimators.dequantize_held_out``), the
noise results.json's test ELBO saw too.
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import dacite
import torch
from torch import Tensor

from vaelab.config import Config
from vaelab.data import BINARY, Dataset, load_data
from vaelab.errors import VaelabError
from vaelab.evaluation.clusters import Clusters, evaluate_clusters
from vaelab.inference.e_steps import FAMILIES
from vaelab.models.kinds import method_for
from vaelab.prob.estimators import (
    SEEDS,
    ExactLogPx,
    GapTerms,
    ImageTerms,
    dequantize_held_out,
    estimate_bounds,
    estimate_gaps,
    estimate_log_px,
    slice_q,
)
from vaelab.prob.objectives import LatentVariableModel
from vaelab.training import runfolder
from vaelab.training.resources import check_evaluation_time, seconds_per_point

LN2 = math.log(2.0)


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

    - ``elbo``: mean test ELBO, E over k draws of q (the expectation
      exact for ``--estimator enumerate``), the estimator and, for
      dequantized data, the noise of results.json's test ELBO;
      ``elbo_se``: its standard error over images.
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
      "encoder" is the test-time E-step (``e_steps.vem_test_steps``).
    - ``clusters``: discrete latents only (else None), the classes
      against the digits on the evaluated images: {n_images, classes,
      classes_used, purity, accuracy, counts, group}
      (``vaelab.evaluation.clusters.Clusters``).
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


def bounds_summary(terms: ImageTerms, k: int
                   ) -> tuple[Estimate, IwaeEstimate]:
    """The means over images of ``estimate_bounds``'s per-image ELBO
    and IWAE_k, nats per image, with their standard errors."""
    n = terms.iwae.shape[0]
    iwae = IwaeEstimate(*_stats(terms.iwae), k=k,
                        mc_se=float(terms.var.sum().sqrt() / n))
    return Estimate(*_stats(terms.elbo)), iwae


def log_px_summary(exact: ExactLogPx) -> LogPx:
    """evaluation.json's log p(x): the mean over images, the mean error
    bound and, for the quadrature, the largest bound and its checks."""
    value, error = float(exact.values.mean()), float(exact.error.mean())
    quad = exact.quadrature
    if quad is None:
        return LogPx(value, error, "enumeration")
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
    return LogPx(value=value, error=error, method="quadrature",
                 error_max=float(quad.error.max()), coverage=coverage)


def gaps_summary(gaps: GapTerms) -> Gaps:
    """evaluation.json's gaps: means over the images of ``gaps``."""
    return Gaps(n_images=gaps.encoder.shape[0],
                encoder_elbo=float(gaps.encoder.mean()),
                optimized_elbo=float(gaps.optimized.mean()),
                log_px=float(gaps.log_px.mean()),
                log_px_method=gaps.method)


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
    # The fixed noise of all test images, then the first n: the same
    # images and noise for every estimator, every n and results.json.
    x = images.to(device)
    if preprocess == "dequantize":
        x = dequantize_held_out(x)
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
    # One generator for q (a vEM E-step) and then the draws, as for
    # results.json's held-out ELBO (``estimators.average_elbo``).
    g = torch.Generator(device=device).manual_seed(SEEDS.draws)
    method = method_for(config)
    q = method.posterior(model, x, generator=g, progress=progress)
    if method.posterior_timing is not None:
        timings[method.posterior_timing] = time.perf_counter() - t

    t = time.perf_counter()
    terms = estimate_bounds(model, x, q, k, g, progress)
    elbo, iwae = bounds_summary(terms, k)
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
        gaps = gaps_summary(estimate_gaps(
            model, x[:m], slice_q(q, slice(0, m)), steps=steps,
            exact=exact, iwae=terms.iwae, k=k, progress=progress))
        timings["gaps"] = time.perf_counter() - t
    else:
        notes.append(f"no gaps: a {type(q).__name__} q cannot be fitted "
                     "per image")

    clusters = None
    if labels is not None:
        clusters = evaluate_clusters(model, x, labels[:n])
    log_px = log_px_summary(exact) if exact is not None else None
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
    force: bool = False,
) -> Evaluation:
    """Evaluate the trained run in ``run_dir`` on its test set; write
    ``RUN_DIR/evaluation.json`` (``Evaluation`` has its keys) and return
    it. Units: nats per image.

    ``n``: the first n test images (default all); ``k``: importance
    samples per image; ``quick``: a smoke test (at most 1000 images and
    k <= 500, the gaps on 100 images with 30 steps); ``gap_n``: images for
    the gaps (default min(n, 1000); 0: no gaps). ``dataset``: the run's
    data, preprocessed as in training (default: loaded from its config or
    ``data_dir``); only its test split is used. ``force``: run even when
    the IWAE's decoding would take more than a day (else ConfigError).
    """
    t_start = time.perf_counter()
    run_dir = Path(run_dir)
    model, config = runfolder.load_model(run_dir, device)
    # evaluation.json goes here: fail now, not after the estimates.
    runfolder.check_writable(run_dir, [runfolder.EVALUATION])
    if dataset is None:
        dataset = load_data(config, data_dir)
    if not force:
        _check_time(model, dataset, n, k, quick)
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


def _check_time(model: LatentVariableModel, dataset: Dataset,
                n: int | None, k: int, quick: bool) -> None:
    """Refuse (ConfigError) an IWAE of n images x k draws that would
    decode for more than a day, from one measured pass on this machine."""
    images = dataset.test.images
    # The sizes evaluate_model will use: n clamped to the test set.
    if quick:
        n, k = min(n or images.shape[0], 1000), min(k, 500)
    n = images.shape[0] if n is None else min(n, images.shape[0])
    if n < 1 or k < 1:
        return  # evaluate_model says what is wrong
    device = next(model.parameters()).device
    x = _prepare(images, dataset.preprocess, 1, device)
    check_evaluation_time(n, k, seconds_per_point(model, x))


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
