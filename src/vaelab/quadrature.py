"""log p(x) = log int p(x|z) p(z) dz by quadrature over a 2-D latent.

What makes this hard for an MNIST VAE: the posteriors p(z|x) are narrow
(standard deviations from 0.002 to 0.4 latent units), often curved or with
several modes, and sit up to a unit or more away from the encoder's mean,
while the images spread over some 15 x 12 units. A single grid fine enough
for all of them would need ~10^8 points.

The scheme (``quadrature_log_px``):

1. A coarse net: one lattice of spacing 1/8 over the box [-L, L]^2 that
   holds the prior's mass (all but ~1e-6) and every encoder mean, shared
   by all images. Each image's window is the box around its encoder
   mean (half-width max(1, 6 sd)) widened to hold every net point within
   ``net_margin`` nats of the image's best net point: this finds modes
   the encoder missed. What the net sees outside the final window, as a
   share of p(x), is reported (``outside``).
2. The fine lattice (spacing h = 1/32), cut into tiles of T x T points
   (32 x 32). Each image sums over its window. Each tile is decoded ONCE
   for all the images whose window touches it, and log p(x|z) of those
   images at its points is one matrix product (``SharedPoints``). The
   integral is the Riemann sum h^2 sum p(x, z), which for a smooth
   integrand that vanishes at the window's edge converges faster than any
   power of h.
3. Coverage: the share of the sum on the window's outer ring. Above
   ``edge_tol`` the window doubles, up to ``max_radius``.
4. Resolution: the same sum on every 2nd and every 4th point (spacings 2h
   and 4h) gives an error estimate (``_estimates``). Above ``res_tol``,
   the image's region of mass (the points within ``SIGNIFICANT`` nats of
   its largest value, plus a cell) is summed again on a lattice twice as
   fine, and so on up to ``max_levels`` times. The mass left out, outside
   that region, is at most n_points * e^-SIGNIFICANT of the total.

An image's reported error is the sum of the resolution estimate at its
final level, the edge share, the left-out bound and the outside share.
A mode narrower than the net's spacing and away from the encoder's mean
can slip through every check: the net is a net, not a proof.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from vaelab.distributions import LaplacePrior, StandardNormal
from vaelab.model import BernoulliLikelihood, GaussianLikelihood

# Points further below the image's largest log p(x, z) than this (nats)
# carry no mass worth a finer lattice: e^-25 = 1.4e-11 each.
SIGNIFICANT = 25.0
MAX_POINTS = 32_768


class SharedPoints:
    """log p(x|z) at a fixed set of latents z (G, P) for any images.

    Decodes z once; ``log_lik(x)`` then gives (B, G) for images x (B, D).
    For the Gaussian likelihood the weighted squared error expands into
    x^2.(1/s) - 2 x.(f/s) + f^2.(1/s), one (B, D) x (D, G) matrix product
    instead of B * G * D differences; for the Bernoulli,
    sum_d x_d l_d - softplus(l_d) is x.l - sum softplus(l) likewise. Other
    likelihoods fall back to the direct, broadcast computation. Float32
    error, measured on the spec's model: under 2e-3 nats.
    """

    def __init__(self, model: Any, z: Tensor) -> None:
        self.model = model
        self.z = z
        self.kind = type(model.likelihood)
        logits = model.decode_logits(z)  # (G, D)
        d = logits.shape[-1]
        if self.kind is GaussianLikelihood:
            var = model.likelihood.variance().expand(d)
            inv = var.reciprocal()
            f = torch.sigmoid(logits)
            self.inv = inv
            self.cross = (f * inv).T.contiguous()  # (D, G)
            self.f_sq = f.square() @ inv  # (G,)
            self.const = var.log().sum() + d * math.log(2.0 * math.pi)
        elif self.kind is BernoulliLikelihood:
            self.cross = logits.T.contiguous()
            self.f_sq = F.softplus(logits).sum(-1)

    def log_lik(self, x: Tensor) -> Tensor:
        """log p(x_b | z_g), (B, G), in nats."""
        if self.kind is GaussianLikelihood:
            sq = ((x.square() @ self.inv)[:, None]
                  - 2.0 * (x @ self.cross) + self.f_sq[None, :])
            return -0.5 * (sq + self.const)
        if self.kind is BernoulliLikelihood:
            return x @ self.cross - self.f_sq[None, :]
        return self.model.log_likelihood(x, self.z[:, None, :]).T


def pairwise_log_lik(model: Any, x: Tensor, z: Tensor) -> Tensor:
    """log p(x_b | z_g) for images x (B, D) and shared latents z (G, P):
    (B, G), in nats (see ``SharedPoints``)."""
    return SharedPoints(model, z).log_lik(x)


@dataclass
class Quadrature:
    """Per-image results of ``quadrature_log_px``, B images.

    ``log_px`` (B,): the estimate in nats. ``error`` (B,): its bound,
    resolution + edge + left-out + outside. ``edge`` (B,): share of the
    sum on the window's outer ring. ``outside`` (B,): share the coarse
    net sees outside the window. ``covered`` (B,): edge and outside
    below edge_tol, and the final lattice resolved the posterior.
    ``level`` (B,): zoom levels used (0: the shared lattice sufficed).
    ``lo``, ``hi`` (B, 2): the window, in latent units. ``mean`` (B, 2),
    ``cov`` (B, 2, 2): the posterior p(z|x)'s moments on the lattice.
    ``box``: the net's half-width L; ``prior_outside``: the prior mass
    outside [-L, L]^2.
    """

    log_px: Tensor
    error: Tensor
    edge: Tensor
    outside: Tensor
    covered: Tensor
    level: Tensor
    lo: Tensor
    hi: Tensor
    mean: Tensor
    cov: Tensor
    box: float
    prior_outside: float


class _Sums:
    """Running sums of p(x, z) over lattice points, per image, scaled by
    e^-top with ``top`` the running maximum of log p(x, z): on all points,
    on every other point, on the window's ring, and the first two moments
    of z (for the posterior's mean and covariance)."""

    def __init__(self, n: int, device: torch.device) -> None:
        self.top = torch.full((n,), -math.inf, dtype=torch.float64,
                              device=device)
        # columns: all, even, quarter, ring, z1, z2, z1^2, z1 z2, z2^2
        self.acc = torch.zeros(n, 9, dtype=torch.float64, device=device)

    def add(self, idx: Tensor, lf: Tensor, cols: Tensor, ring: Tensor,
            origin: Tensor) -> Tensor:
        """Fold in log p(x, z) ``lf`` (b, G) (-inf off the window) of
        images ``idx`` (b,). ``cols`` (G, 8) as built by ``_columns``
        around ``origin`` (2,); ``ring`` (b, G). Returns the maxima (b,).
        """
        tmax = lf.amax(1)
        w = torch.exp(lf - tmax[:, None])  # (b, G), 0 off the window
        s = w @ cols  # (b, 8)
        ring_sum = (w * ring).sum(1)
        m0 = s[:, 0].double()
        d1 = s[:, 3:5].double()  # sum w dz
        d2 = s[:, 5:8].double()  # sum w dz dz^T (upper triangle)
        o = origin.double()
        # Moments about the origin of the lattice: z = origin + dz.
        z1 = d1 + o * m0[:, None]
        zz = torch.stack([
            d2[:, 0] + 2 * o[0] * d1[:, 0] + o[0] ** 2 * m0,
            d2[:, 1] + o[0] * d1[:, 1] + o[1] * d1[:, 0] + o[0] * o[1] * m0,
            d2[:, 2] + 2 * o[1] * d1[:, 1] + o[1] ** 2 * m0,
        ], 1)
        part = torch.cat([m0[:, None], s[:, 1:3].double(),
                          ring_sum[:, None].double(), z1, zz], 1)
        t64 = tmax.double()
        top = self.top[idx]
        new = torch.maximum(top, t64)
        old = torch.exp(top - new).nan_to_num(0.0)
        self.acc[idx] = (self.acc[idx] * old[:, None]
                         + part * torch.exp(t64 - new)[:, None])
        self.top[idx] = new
        return tmax

    def log_sums(self) -> Tensor:
        """log of the sums on all points, every 2nd point, every 4th
        point and the ring, (n, 4)."""
        return self.acc[:, :4].log() + self.top[:, None]

    def moments(self) -> tuple[Tensor, Tensor]:
        """Mean (n, 2) and covariance (n, 2, 2) of the lattice posterior."""
        m0 = self.acc[:, 0].clamp(min=1e-300)
        mean = self.acc[:, 4:6] / m0[:, None]
        e = self.acc[:, 6:9] / m0[:, None]
        c11 = e[:, 0] - mean[:, 0] ** 2
        c12 = e[:, 1] - mean[:, 0] * mean[:, 1]
        c22 = e[:, 2] - mean[:, 1] ** 2
        cov = torch.stack([torch.stack([c11, c12], -1),
                           torch.stack([c12, c22], -1)], -2)
        return mean, cov


def _columns(ii: Tensor, jj: Tensor, h: float) -> tuple[Tensor, Tensor]:
    """For the lattice points ii x jj (G = len(ii) len(jj), row-major):
    (G, 8) columns 1, [every 2nd point], [every 4th point], dz1, dz2,
    dz1^2, dz1 dz2, dz2^2 with dz = z - origin, and the origin (2,), the
    first point. Every k-th point: both lattice indices divisible by k."""
    di = (ii - ii[0]).double() * h
    dj = (jj - jj[0]).double() * h
    d = torch.cartesian_prod(di, dj)

    def every(k: int) -> Tensor:
        return ((ii % k == 0)[:, None] & (jj % k == 0)[None, :]).reshape(-1)

    cols = torch.stack([
        torch.ones_like(d[:, 0]), every(2).double(), every(4).double(),
        d[:, 0], d[:, 1],
        d[:, 0] ** 2, d[:, 0] * d[:, 1], d[:, 1] ** 2,
    ], 1).float()
    origin = torch.stack([ii[0].double() * h, jj[0].double() * h])
    return cols, origin


def _window_pass(
    model: Any, x: Tensor, lo: Tensor, hi: Tensor, h: float, tile: int,
    progress: Callable[[int], None] | None,
) -> tuple[_Sums, Tensor, Tensor]:
    """Riemann sums over each image's window [lo, hi] (integer lattice
    indices, (n, 2), inclusive) of the lattice of spacing h, tile by tile.

    Returns the sums and the lattice bounds (n, 2) of each image's
    significant points (within SIGNIFICANT nats of its maximum).
    """
    n, device = x.shape[0], x.device
    sums = _Sums(n, device)
    t_lo = torch.div(lo, tile, rounding_mode="floor")
    t_hi = torch.div(hi, tile, rounding_mode="floor")
    na, nb = (t_hi - t_lo + 1).unbind(1)
    img = torch.repeat_interleave(torch.arange(n, device=device), na * nb)
    start = torch.cumsum(na * nb, 0) - na * nb
    k = torch.arange(img.numel(), device=device) - start[img]
    ta = t_lo[img, 0] + torch.div(k, nb[img], rounding_mode="floor")
    tb = t_lo[img, 1] + k % nb[img]
    key = (ta - ta.min()) * (tb.max() - tb.min() + 1) + (tb - tb.min())
    order = torch.argsort(key, stable=True)
    img, ta, tb = img[order], ta[order], tb[order]
    _, counts = torch.unique_consecutive(key[order], return_counts=True)
    pair_max = torch.empty(img.numel(), device=device)
    pair_lo = torch.empty(img.numel(), 2, dtype=torch.long, device=device)
    pair_hi = torch.empty_like(pair_lo)
    offs = torch.arange(tile, device=device)
    s = 0
    for c in counts.tolist():
        sl = slice(s, s + c)
        idx = img[sl]
        ii = ta[s] * tile + offs  # lattice indices of the tile's rows
        jj = tb[s] * tile + offs
        s += c
        z = torch.cartesian_prod(ii.to(x.dtype) * h, jj.to(x.dtype) * h)
        cols, origin = _columns(ii, jj, h)
        pts = SharedPoints(model, z)
        log_prior = model.prior.log_prob(z)
        row_ok = (ii >= lo[idx, :1]) & (ii <= hi[idx, :1])  # (b, T)
        col_ok = (jj >= lo[idx, 1:]) & (jj <= hi[idx, 1:])
        mask = (row_ok[:, :, None] & col_ok[:, None, :]).reshape(c, -1)
        row_edge = (ii == lo[idx, :1]) | (ii == hi[idx, :1])
        col_edge = (jj == lo[idx, 1:]) | (jj == hi[idx, 1:])
        ring = ((row_edge[:, :, None] & col_ok[:, None, :])
                | (row_ok[:, :, None] & col_edge[:, None, :])).reshape(c, -1)
        for b0 in range(0, c, 4096):
            bs = slice(b0, b0 + 4096)
            lf = pts.log_lik(x[idx[bs]]) + log_prior
            lf = lf.masked_fill(~mask[bs], -math.inf)
            tmax = sums.add(idx[bs], lf, cols, ring[bs], origin)
            pair_max[sl][bs] = tmax
            sig = (lf >= tmax[:, None] - SIGNIFICANT).reshape(-1, tile, tile)
            rows, cols_ok = sig.any(2), sig.any(1)  # (b, T)
            pair_lo[sl][bs] = torch.stack(
                [ii[_first(rows)], jj[_first(cols_ok)]], 1)
            pair_hi[sl][bs] = torch.stack(
                [ii[_last(rows)], jj[_last(cols_ok)]], 1)
        if progress is not None:
            progress(c)
    top = sums.top[img].float()
    keep = pair_max >= top - SIGNIFICANT
    big = torch.iinfo(torch.long).max
    sig_lo = torch.full((n, 2), big, dtype=torch.long, device=device)
    sig_hi = torch.full((n, 2), -big, dtype=torch.long, device=device)
    sig_lo.scatter_reduce_(0, img[keep, None].expand(-1, 2), pair_lo[keep],
                           "amin")
    sig_hi.scatter_reduce_(0, img[keep, None].expand(-1, 2), pair_hi[keep],
                           "amax")
    return sums, sig_lo, sig_hi


def _first(mask: Tensor) -> Tensor:
    """Index of the first True along the last axis (0 if none)."""
    return mask.float().argmax(-1)


def _last(mask: Tensor) -> Tensor:
    """Index of the last True along the last axis."""
    n = mask.shape[-1]
    return n - 1 - mask.flip(-1).float().argmax(-1)


def _estimates(sums: _Sums, h: float) -> tuple[Tensor, Tensor, Tensor]:
    """log I_h, its error estimate and the edge share, per image (n,).

    The error estimate compares the sums at spacings h, 2h and 4h (every
    2nd and 4th point): with d1 = |log I_h - log I_2h| and
    d2 = |log I_2h - log I_4h|, a sequence that converges at least as
    fast as h^2 (d2 >= 4 d1) has, by Aitken's extrapolation, an error of
    about d1^2 / (d2 - d1) left (d1 / 3 for exactly h^2, far less for the
    faster-than-any-power convergence of smooth integrands); otherwise the
    estimate is d1 itself.
    """
    logs = sums.log_sums()
    log_i = logs[:, 0] + 2.0 * math.log(h)
    log_i2 = logs[:, 1] + 2.0 * math.log(2.0 * h)
    log_i4 = logs[:, 2] + 2.0 * math.log(4.0 * h)
    d1 = (log_i - log_i2).abs()
    d2 = (log_i2 - log_i4).abs()
    fast = torch.isfinite(d2) & (d2 >= 4.0 * d1)
    err = torch.where(fast, d1.square() / (d2 - d1).clamp(min=1e-300), d1)
    return log_i, err, torch.exp(logs[:, 3] - logs[:, 0])


@torch.no_grad()
def quadrature_log_px(
    model: Any,
    x: Tensor,
    center: Tensor,
    sd: Tensor,
    *,
    spacing: float = 1.0 / 32.0,
    tile: int = 32,
    radius: float = 1.0,
    sds: float = 6.0,
    net_spacing: float = 1.0 / 8.0,
    net_margin: float = 60.0,
    max_radius: float = 16.0,
    edge_tol: float = 1e-6,
    res_tol: float = 0.01,
    max_levels: int = 5,
    zoom_tile: int = 16,
    progress: Callable[[int], None] | None = None,
) -> Quadrature:
    """log p(x) (nats per image) of images x (B, D) under a model with a
    2-D latent, by the tiled lattice quadrature of this module's doc.

    ``center`` (B, 2) and ``sd`` (B, 2): where each image's window starts
    (q's mean and sd); the window's half-width is max(radius, sds * sd),
    doubled while mass reaches its edge. ``progress`` is called with the
    number of images of each tile done.
    """
    device = x.device
    b = x.shape[0]
    h = spacing
    half = torch.maximum(torch.full_like(sd, radius), sds * sd).double()
    c = center.double()
    # Widen each window to the places where the coarse net sees mass.
    box = max(_prior_box(model.prior), float((c.abs() + half).max()))
    box = math.ceil(box / net_spacing) * net_spacing
    w_lo, w_hi, log_out = _net_windows(model, x, c - half, c + half, box,
                                       net_spacing, net_margin, progress)
    c, half = (w_lo + w_hi) / 2.0, (w_hi - w_lo) / 2.0
    log_px = torch.full((b,), math.nan, dtype=torch.float64, device=device)
    res = torch.full_like(log_px, math.inf)
    edge = torch.ones_like(log_px)
    lo_idx = torch.zeros(b, 2, dtype=torch.long, device=device)
    hi_idx = torch.zeros_like(lo_idx)
    sig_lo = torch.zeros_like(lo_idx)
    sig_hi = torch.zeros_like(lo_idx)
    n_pts = torch.zeros(b, dtype=torch.float64, device=device)
    mean = torch.zeros(b, 2, dtype=torch.float64, device=device)
    cov = torch.zeros(b, 2, 2, dtype=torch.float64, device=device)
    active = torch.arange(b, device=device)
    while active.numel():
        lo = torch.floor((c[active] - half[active]) / h).long()
        hi = torch.ceil((c[active] + half[active]) / h).long()
        sums, s_lo, s_hi = _window_pass(model, x[active], lo, hi, h, tile,
                                        progress)
        log_i, r, e = _estimates(sums, h)
        log_px[active], res[active], edge[active] = log_i, r, e
        lo_idx[active], hi_idx[active] = lo, hi
        sig_lo[active], sig_hi[active] = s_lo, s_hi
        n_pts[active] = ((hi - lo + 1).prod(1)).double()
        mean[active], cov[active] = sums.moments()
        grow = (e >= edge_tol) & (half[active].amax(1) < max_radius)
        active = active[grow]
        half[active] *= 2.0
    level = torch.zeros(b, dtype=torch.long, device=device)
    left_out = torch.zeros_like(log_px)
    # Zoom: the significant region of each unresolved image (plus a cell)
    # on a lattice twice as fine, until resolved.
    todo = (res >= res_tol).nonzero().flatten()
    lo, hi, hz = sig_lo[todo] - 1, sig_hi[todo] + 1, h
    for depth in range(1, max_levels + 1):
        if todo.numel() == 0:
            break
        hz, lo, hi = hz / 2.0, lo * 2, hi * 2
        sums, s_lo, s_hi = _window_pass(model, x[todo], lo, hi, hz,
                                        zoom_tile, progress)
        log_i, r, e = _estimates(sums, hz)
        left_out[todo] += n_pts[todo] * math.exp(-SIGNIFICANT)
        n_pts[todo] = ((hi - lo + 1).prod(1)).double()
        log_px[todo], res[todo] = log_i, r
        edge[todo] = torch.maximum(edge[todo], e)
        mean[todo], cov[todo] = sums.moments()
        level[todo] = depth
        still = r >= res_tol
        todo, lo, hi = todo[still], s_lo[still] - 1, s_hi[still] + 1
    outside = torch.exp(log_out - log_px)
    covered = (edge < edge_tol) & (res < res_tol) & (outside < edge_tol)
    return Quadrature(
        log_px=log_px, error=res + edge + left_out + outside, edge=edge,
        outside=outside, covered=covered, level=level,
        lo=lo_idx.double() * h, hi=hi_idx.double() * h, mean=mean, cov=cov,
        box=box, prior_outside=_prior_tail(model.prior, box),
    )


def _prior_box(prior: Any) -> float:
    """Half-width of the box [-L, L]^P outside which the prior puts at
    most ~1e-6 of its mass."""
    return float(prior.icdf(torch.tensor(1.0 - 5e-7, dtype=torch.float64)))


def _net(model: Any, half: float, spacing: float,
         device: torch.device) -> tuple[SharedPoints, Tensor, Tensor]:
    """The coarse lattice over [-half, half]^2: decoded points, z (G, 2)
    and log p(z) (G,)."""
    k = math.ceil(half / spacing)
    axis = torch.arange(-k, k + 1, device=device) * spacing
    z = torch.cartesian_prod(axis, axis)
    return SharedPoints(model, z), z, model.prior.log_prob(z)


@torch.no_grad()
def _net_windows(
    model: Any, x: Tensor, lo: Tensor, hi: Tensor, half: float,
    spacing: float, margin: float,
    progress: Callable[[int], None] | None = None, max_pairs: int = 2**22,
) -> tuple[Tensor, Tensor, Tensor]:
    """Widen each image's window [lo, hi] (B, 2), latent units, to hold
    the points of the coarse lattice over [-half, half]^2 whose
    log p(x, z) is within ``margin`` nats of the image's largest, plus two
    coarse cells; and measure what the coarse lattice sees outside it.

    Returns the new lo, hi and log(h_net^2 sum p(x, z)) over the coarse
    points outside the new window (B,): divided by p(x), an estimate of
    the posterior mass the window misses (an upper one for the final
    window, which can only grow).
    """
    pts, z, log_prior = _net(model, half, spacing, x.device)
    new_lo, new_hi = lo.clone(), hi.clone()
    log_out = torch.empty(x.shape[0], dtype=torch.float64, device=x.device)
    chunk = max(1, max_pairs // z.shape[0])
    zd = z.double()
    for s in range(0, x.shape[0], chunk):
        sl = slice(s, s + chunk)
        lj = pts.log_lik(x[sl]) + log_prior  # (b, G)
        near = lj >= lj.amax(1, keepdim=True) - margin
        for d in range(2):
            coord = zd[:, d][None]
            new_lo[sl, d] = torch.minimum(
                lo[sl, d],
                coord.masked_fill(~near, math.inf).amin(1) - 2 * spacing)
            new_hi[sl, d] = torch.maximum(
                hi[sl, d],
                coord.masked_fill(~near, -math.inf).amax(1) + 2 * spacing)
        inside = ((zd[None] >= new_lo[sl][:, None, :])
                  & (zd[None] <= new_hi[sl][:, None, :])).all(-1)
        log_out[sl] = torch.logsumexp(
            lj.double().masked_fill(inside, -math.inf), 1
        ) + 2.0 * math.log(spacing)
        if progress is not None:
            progress(lj.shape[0])
    return new_lo, new_hi, log_out


def _prior_tail(prior: Any, half: float) -> float:
    """Prior mass outside the box [-half, half]^P."""
    if isinstance(prior, StandardNormal):
        one = math.erfc(half / math.sqrt(2.0))
    elif isinstance(prior, LaplacePrior):
        one = math.exp(-half / prior.tau)
    else:
        return math.nan
    return 1.0 - (1.0 - one) ** prior.dim
