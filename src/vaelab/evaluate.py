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
same dequantization noise (drawn once with a fixed seed).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from tqdm.auto import tqdm

from vaelab import runfolder
from vaelab.config import Config
from vaelab.data import dequantize
from vaelab.distributions import Categorical, kl_divergence
from vaelab.inference import FAMILIES, elbo_of, fit_posterior, posterior
from vaelab.quadrature import quadrature_log_px

EVALUATION = "evaluation.json"
# Seeds of the evaluation's random numbers, one per use, so that changing
# one estimator's settings leaves the others' draws alone.
DEQUANTIZE_SEED = 20210517
IWAE_SEED = 1
GAP_SEED = 2
# Points (z values times images) decoded in one pass: bounds memory to
# about MAX_POINTS * (D + H) * 4 bytes, ~170 MB for the spec's model.
MAX_POINTS = 32_768
LN2 = math.log(2.0)


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


@torch.no_grad()
def iwae_bound(
    model: Any, x: Tensor, q: Any, k: int,
    generator: torch.Generator | None = None,
    max_points: int = MAX_POINTS,
) -> IwaeTerms:
    """IWAE_k (Burda et al. 2015) and the ELBO of images x (B, D) with
    proposal q (over (B, P)), from the same k draws per image. The draws
    are decoded ``max_points`` at a time; all k log-weights of the batch
    are kept ((k, B) floats), then combined with logsumexp."""
    b = x.shape[0]
    per_pass = max(1, max_points // max(b, 1))
    log_w, log_lik = [], []
    for start in range(0, k, per_pass):
        kc = min(per_pass, k - start)
        z = q.rsample(kc, generator)  # (kc, B, P)
        ll = model.log_likelihood(x, z)  # (kc, B)
        log_lik.append(ll)
        log_w.append(ll + model.prior.log_prob(z) - q.log_prob(z))
    lw = torch.cat(log_w).double()
    ll_mean = torch.cat(log_lik).double().mean(0)
    kl = kl_divergence(q, model.prior)
    kl = (ll_mean - lw.mean(0)) if kl is None else kl.double()
    lse = torch.logsumexp(lw, 0)
    ess = torch.exp(2.0 * lse - torch.logsumexp(2.0 * lw, 0))
    return IwaeTerms(
        iwae=lse - math.log(k), elbo=ll_mean - kl, log_lik=ll_mean, kl=kl,
        var=(1.0 / ess - 1.0 / k).clamp(min=0.0),
    )


def iwae_dataset(
    model: Any, x: Tensor, q: Any, k: int,
    generator: torch.Generator | None = None,
    max_points: int = MAX_POINTS,
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
    model: Any, x: Tensor, batch_size: int = 500
) -> Tensor:
    """log p(x) (N,) of a categorical-latent model, exactly, by summing
    over all K^M codes (``objectives.exact_log_marginal``)."""
    from vaelab.objectives import exact_log_marginal

    return torch.cat([
        exact_log_marginal(model, x[i:i + batch_size]).double()
        for i in range(0, x.shape[0], batch_size)
    ])


# ------------------------------------------------------------------ gaps


def inference_gaps(
    model: Any, x: Tensor, q0: Any, *, starts: list[Any] | None = None,
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
    model: Any, x: Tensor, qs: list[Any], n_samples: int, seed: int,
) -> list[Tensor]:
    """ELBOs (B,) of x under each q, every q with the same noise draws."""
    out = []
    per = max(1, MAX_POINTS // max(n_samples, 1))
    for q in qs:
        g = torch.Generator(device=x.device).manual_seed(seed)
        out.append(torch.cat([
            elbo_of(model, x[i:i + per], slice_q(q, slice(i, i + per)),
                    n_samples, g).elbo.double()
            for i in range(0, x.shape[0], per)
        ]))
    return out


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
    if preprocess == "binarize":
        return -log_p / (dim * LN2)
    return None


def evaluate_run(
    run_dir: Path,
    *,
    n: int | None = None,
    k: int = 5000,
    device: str = "cpu",
    progress: bool = True,
    quick: bool = False,
    gap_n: int | None = None,
    data_dir: str | None = None,
) -> dict[str, Any]:
    """Evaluate the trained run in ``run_dir`` on its test set; write and
    return ``RUN_DIR/evaluation.json``. Units: nats per image.

    ``n``: the first n test images (default all); ``k``: importance
    samples per image; ``quick``: a smoke test (at most 1000 images and
    k <= 500, the gaps on 100 images with 30 steps); ``gap_n``: images for
    the gaps (default min(n, 1000); 0: no gaps).

    Keys (stable; the report reads them):

    - ``elbo``: mean test ELBO, E over k draws of q; ``elbo_se``: its
      standard error over images.
    - ``iwae``: {value, se, k, mc_se}: IWAE_k, se over images, and mc_se
      the Monte Carlo standard error of the mean (delta method).
    - ``log_px``: {value, error, method, coverage} or None: log p(x) by
      ``quadrature`` (P = 2; error: mean per-image error bound) or
      ``enumeration`` (categorical latents; exact, error 0); coverage:
      {ok, covered_fraction, max_edge_mass, max_outside_mass, box,
      prior_mass_outside_box} (quadrature only).
    - ``bpd``: {elbo, iwae, log_px} in bits per dimension, or None
      (see ``to_bpd``); ELBO and IWAE give upper bounds on bpd.
    - ``gaps``: {n_images, encoder_elbo, optimized_elbo, log_px,
      amortization_gap, approximation_gap} on the first gap_n images, or
      None (no fittable q). log_px there is the quadrature (or exact)
      value, else IWAE_k, named by ``gaps_log_px_method``. For vEM runs
      "encoder" is the test-time E-step (``inference.vem_test_steps``).
    - ``n_images``, ``k``, ``inference``, ``preprocess``, ``seconds``,
      ``timings`` (seconds per part), ``notes`` (list of warnings).
    """
    t_start = time.perf_counter()
    from vaelab.data import load_data

    run_dir = Path(run_dir)
    model, config = runfolder.load_model(run_dir, device)
    if data_dir is not None:
        config.data_dir = data_dir
    dataset = load_data(config)
    return evaluate_model(
        model, config, dataset.test.images, dataset.preprocess,
        run_dir=run_dir, n=n, k=k, progress=progress, quick=quick,
        gap_n=gap_n, t_start=t_start,
    )


def evaluate_model(
    model: Any,
    config: Config,
    images: Tensor,
    preprocess: str,
    *,
    run_dir: Path | None = None,
    n: int | None = None,
    k: int = 5000,
    progress: bool = True,
    quick: bool = False,
    gap_n: int | None = None,
    gap_steps: int | None = None,
    t_start: float | None = None,
) -> dict[str, Any]:
    """``evaluate_run`` for a model in memory and its test ``images``
    (N, D), pixels as the preprocessing left them; writes
    evaluation.json only when ``run_dir`` is given."""
    t_start = time.perf_counter() if t_start is None else t_start
    device = next(model.parameters()).device
    model.eval()
    notes: list[str] = []
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if quick:
        n = min(n or images.shape[0], 1000)
        k = min(k, 500)
    n_all = images.shape[0]
    n = n_all if n is None else min(n, n_all)
    if n < 1:
        raise ValueError("no test images to evaluate")
    # One fixed-seed noise draw for all test images, then the first n:
    # the same images and noise for every estimator and every n.
    x = images.to(device)
    if preprocess == "dequantize":
        g = torch.Generator(device="cpu").manual_seed(DEQUANTIZE_SEED)
        x = dequantize(x, g)
    x = x[:n]
    timings: dict[str, float] = {}

    t = time.perf_counter()
    g = torch.Generator(device=device).manual_seed(IWAE_SEED)
    q = posterior(model, config, x, generator=g, progress=progress)
    if config.inference == "vem":
        timings["e_step"] = time.perf_counter() - t

    t = time.perf_counter()
    bar = tqdm(total=n, unit="img", leave=False, desc=f"IWAE k={k}",
               disable=not progress)
    terms = iwae_dataset(model, x, q, k, g, progress=bar.update)
    bar.close()
    timings["elbo_iwae"] = time.perf_counter() - t
    elbo, elbo_se = _stats(terms.elbo)
    iwae, iwae_se = _stats(terms.iwae)
    iwae_mc_se = float(terms.var.sum().sqrt() / n)

    log_px = None
    log_px_values: Tensor | None = None
    quad = None
    latent_dim = getattr(model.prior, "dim", None)
    if isinstance(q, Categorical):
        try:
            t = time.perf_counter()
            log_px_values = enumerated_log_px(model, x)
            timings["log_px"] = time.perf_counter() - t
            log_px = {"value": float(log_px_values.mean()), "error": 0.0,
                      "method": "enumeration"}
        except ValueError as e:
            notes.append(f"log p(x) not computed: {e}")
    elif latent_dim == 2 and isinstance(q, FAMILIES):
        t = time.perf_counter()
        bar = tqdm(unit="img-tile", unit_scale=True, leave=False,
                   desc="quadrature", disable=not progress)
        quad = quadrature_log_px(model, x, q.mean, q.variance.sqrt(),
                                 progress=bar.update)
        bar.close()
        timings["log_px"] = time.perf_counter() - t
        log_px_values = quad.log_px
        ok_frac = float(quad.covered.double().mean())
        max_out = float(quad.outside.max())
        ok = ok_frac == 1.0
        log_px = {
            "value": float(quad.log_px.mean()),
            "error": float(quad.error.mean()),
            "method": "quadrature",
            "error_max": float(quad.error.max()),
            "coverage": {
                "ok": ok,
                "covered_fraction": ok_frac,
                "max_edge_mass": float(quad.edge.max()),
                "max_outside_mass": max_out,
                "box": quad.box,
                "prior_mass_outside_box": quad.prior_outside,
                "zoomed_images": int((quad.level > 0).sum()),
                "mean_window": float((quad.hi - quad.lo).mean()),
            },
        }
        if not ok:
            notes.append(
                f"quadrature check failed for {1 - ok_frac:.2%} of the "
                f"images (not covered or not resolved); largest share "
                f"outside a window {max_out:.2g}"
            )
    elif latent_dim != 2:
        notes.append(f"log p(x) by quadrature needs P = 2 (P = "
                     f"{latent_dim}); IWAE_{k} is the best estimate")

    gaps = None
    gaps_method = None
    if gap_n == 0:
        pass
    elif isinstance(q, FAMILIES):
        t = time.perf_counter()
        m = min(n, gap_n if gap_n is not None else (100 if quick else 1000))
        steps = gap_steps if gap_steps is not None else (30 if quick
                                                         else 100)
        starts = []
        if quad is not None:
            # The true posterior's moments, matched in q's family.
            var = quad.cov[:m].diagonal(dim1=-2, dim2=-1).float()
            mean = quad.mean[:m].float()
            floor = (q.variance[:m] * 1e-2).clamp(min=1e-12)
            var = torch.maximum(var, floor)
            spread = var if type(q).__name__ == "DiagGaussian" \
                else (var / 2.0).sqrt()
            starts.append(type(q)(mean, spread))
        bar = tqdm(total=m * steps * (1 + len(starts)), unit="img-step",
                   unit_scale=True, leave=False, desc="per-image q",
                   disable=not progress)
        enc, opt = inference_gaps(model, x[:m], slice_q(q, slice(0, m)),
                                  starts=starts, steps=steps,
                                  progress=bar.update)
        bar.close()
        timings["gaps"] = time.perf_counter() - t
        if log_px_values is not None:
            ref, gaps_method = log_px_values[:m], log_px["method"]
        else:
            ref, gaps_method = terms.iwae[:m], f"iwae-{k}"
        e, o, r = (float(v.mean()) for v in (enc, opt, ref))
        gaps = {
            "n_images": m,
            "encoder_elbo": e,
            "optimized_elbo": o,
            "log_px": r,
            "amortization_gap": o - e,
            "approximation_gap": r - o,
        }
    else:
        notes.append(f"no gaps: a {type(q).__name__} q cannot be fitted "
                     "per image")

    dim = x.shape[1]
    bpd = None
    if preprocess in ("dequantize", "binarize"):
        bpd = {
            "elbo": to_bpd(elbo, dim, preprocess),
            "iwae": to_bpd(iwae, dim, preprocess),
            "log_px": to_bpd(log_px["value"], dim, preprocess)
            if log_px else None,
        }
    result: dict[str, Any] = {
        "units": "nats per image",
        "inference": config.inference,
        "preprocess": preprocess,
        "n_images": n,
        "k": k,
        "elbo": elbo,
        "elbo_se": elbo_se,
        "iwae": {"value": iwae, "se": iwae_se, "k": k, "mc_se": iwae_mc_se},
        "log_px": log_px,
        "bpd": bpd,
        "gaps": gaps,
        "gaps_log_px_method": gaps_method,
        "notes": notes,
        "timings": timings,
        "seconds": time.perf_counter() - t_start,
    }
    if run_dir is not None:
        runfolder.write_json(Path(run_dir) / EVALUATION, result)
    return result


def format_table(result: dict[str, Any]) -> str:
    """The evaluation as a plain-text table (nats per image, bits/dim)."""
    bpd = result.get("bpd") or {}

    def row(name: str, value: float | None, pm: str, key: str) -> str:
        b = bpd.get(key)
        v = f"{value:12.2f}" if value is not None else f"{'-':>12}"
        bb = f"{b:9.4f}" if b is not None else f"{'-':>9}"
        return f"{name:24s}{v}  {pm:18s}{bb}"

    lines = [
        f"{result['n_images']:,} test images ({result['inference']}, "
        f"{result['preprocess']}); nats per image",
        f"{'estimate':24s}{'value':>12}  {'+-':18s}{'bits/dim':>9}",
    ]
    lines.append(row(f"ELBO ({result['k']} draws)", result["elbo"],
                     f"se {result['elbo_se']:.2f}", "elbo"))
    iw = result["iwae"]
    lines.append(row(f"IWAE (k = {iw['k']})", iw["value"],
                     f"se {iw['se']:.2f}, mc {iw['mc_se']:.2g}", "iwae"))
    lp = result.get("log_px")
    if lp:
        lines.append(row(f"log p(x) ({lp['method']})", lp["value"],
                         f"err {lp['error']:.2g}", "log_px"))
        cov = lp.get("coverage")
        if cov:
            lines.append(
                f"  check {'ok' if cov['ok'] else 'FAILED'}: "
                f"{cov['covered_fraction']:.2%} of images covered and "
                f"resolved ({cov['zoomed_images']:,} zoomed in); mass on "
                f"window edges <= {cov['max_edge_mass']:.1g}, outside "
                f"windows <= {cov['max_outside_mass']:.1g}; net box "
                f"+-{cov['box']:.2f} (prior mass outside "
                f"{cov['prior_mass_outside_box']:.1g})"
            )
    gaps = result.get("gaps")
    if gaps:
        lines.append(
            f"gaps on {gaps['n_images']:,} images (log p(x): "
            f"{result['gaps_log_px_method']}):"
        )
        if result["inference"] == "vem":
            lines.append("  (vEM: the 'encoder' is the test-time E-step "
                         "from the prior)")
        for key in ("encoder_elbo", "optimized_elbo", "log_px",
                    "amortization_gap", "approximation_gap"):
            lines.append(f"  {key:22s}{gaps[key]:12.2f}")
    for note in result.get("notes", []):
        lines.append(f"note: {note}")
    parts = ", ".join(f"{k} {v:.1f} s" for k, v in
                      result.get("timings", {}).items())
    lines.append(f"{result['seconds']:.1f} s ({parts})")
    return "\n".join(lines)
