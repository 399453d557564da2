"""Resources before work (issue #26): refuse a training run whose one
step cannot fit in memory, and an evaluation that would decode for days,
with one line naming the size, before anything is allocated or run."""

from __future__ import annotations

import math
import os
import time
from typing import Any

import torch

from vaelab.config import Config
from vaelab.errors import ConfigError
from vaelab.models.kinds import kind_for

DATA_DIM = 784  # 28 x 28 pixels, the width of the data and the decoder
FLOAT_BYTES = 4
# Parameter, gradient and Adam's two moments: four floats per weight.
COPIES_PER_WEIGHT = 4
# Activations kept for the backward pass, their gradients and the
# temporaries of the nonlinearity and the likelihood: a generous factor,
# so that a refusal means the step cannot fit, not that it might not.
ACTIVATION_COPIES = 3
# `vaelab evaluate` refuses beyond this many hours of decoding.
EVAL_HOURS_LIMIT = 24.0


def human_bytes(n: float) -> str:
    """1234567 -> "1.2 MB" (decimal units, as disks and RAM are sold)."""
    for unit in ("B", "kB", "MB", "GB", "TB", "PB"):
        if abs(n) < 1000 or unit == "PB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} PB"


def available_memory(device: torch.device | None = None) -> int:
    """Bytes free for a new allocation: the GPU's free memory on CUDA,
    else the machine's available RAM (psutil), else its physical RAM."""
    if device is not None and device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    try:
        import psutil
        return int(psutil.virtual_memory().available)
    except ImportError:  # psutil is optional: all RAM, an upper bound
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def training_step_bytes(config: Config) -> tuple[int, int]:
    """(bytes of the weights with gradients and Adam moments, bytes of
    one step's activations) of the model ``config`` describes: an
    estimate from the layer sizes, computed without building anything."""
    sizes = list(config.hidden_sizes)
    # The decoder's input (the encoder's head is at most twice it).
    p = kind_for(config).latent_width(config)
    enc = [DATA_DIM, *sizes, 2 * p]
    dec = [p, *sizes[::-1], DATA_DIM]
    weights = sum((a + 1) * b for net in (enc, dec)
                  for a, b in zip(net[:-1], net[1:], strict=True))
    weights += 2 * DATA_DIM  # per-pixel variance, baselines: small
    draws = config.n_samples
    if config.objective == "iwae":
        draws = max(draws, config.iwae_k or 1)
    # The encoder sees each image once, the decoder each draw of z.
    per_image = sum(enc) + draws * (sum(dec) + DATA_DIM)
    acts = config.batch_size * per_image * ACTIVATION_COPIES
    return (weights * COPIES_PER_WEIGHT * FLOAT_BYTES,
            acts * FLOAT_BYTES)


def check_training_fits(config: Config, device: torch.device) -> None:
    """ConfigError, one line naming the sizes, when one training step of
    ``config``'s model needs more memory than ``device`` has free."""
    weights, acts = training_step_bytes(config)
    free = available_memory(device)
    if weights + acts <= free:
        return
    hidden = ",".join(map(str, config.hidden_sizes))
    if weights >= acts:
        what = (f"--hidden {hidden}: the weights with their gradients and "
                f"Adam moments need about {human_bytes(weights)}")
    else:
        draws = (f"--iwae-k {config.iwae_k}" if config.objective == "iwae"
                 else f"--n-samples {config.n_samples}")
        what = (f"--batch-size {config.batch_size} x {draws} with "
                f"--hidden {hidden}: one step's activations need about "
                f"{human_bytes(acts)}")
    raise ConfigError(f"{what}, more than the {human_bytes(free)} of "
                      f"memory available on {device.type}; choose "
                      "smaller sizes")


@torch.no_grad()
def seconds_per_point(model: Any, x: torch.Tensor, repeats: int = 2
                      ) -> float:
    """Measured seconds per decoded point of the IWAE on this machine:
    the fastest of ``repeats`` passes of ``EVAL_POINTS`` draws for the
    image x (1, D) (the fastest, so that a slow moment never refuses)."""
    from vaelab.prob.estimators import EVAL_POINTS, SEEDS, chunked_terms
    q = model.posterior(x)
    g = torch.Generator(device=x.device).manual_seed(SEEDS.draws)
    best = math.inf
    for _ in range(repeats):
        t = time.perf_counter()
        chunked_terms(model, x, q, EVAL_POINTS, g)
        best = min(best, time.perf_counter() - t)
    return best / EVAL_POINTS


def check_evaluation_time(n: int, k: int, per_point: float, *,
                          limit_hours: float = EVAL_HOURS_LIMIT) -> None:
    """ConfigError when n images x k draws would take longer than
    ``limit_hours`` at ``per_point`` seconds per decoded point."""
    hours = n * k * per_point / 3600
    if hours <= limit_hours:
        return
    flag = f"--k {k}" if k >= n else f"--n {n} (with --k {k})"
    raise ConfigError(
        f"{flag}: about {hours:,.0f} hours of decoding on this machine "
        f"({n:,} images x {k:,} draws); pass --force to run it anyway")
