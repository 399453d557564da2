"""Why one categorical latent collapses: the first steps, measured.

Trains the categorical VAE (M = 1 group of K classes, default K = 10) as
``vaelab train`` does (seeded init, data-initialized Sigma and output
bias, Adam with its warm-up and schedule, a fresh permutation per epoch,
dequantized or binarized pixels) and logs, at chosen steps, on a fixed
held-out batch (the first ``--batch-images`` validation images):

- ``H(agg)``: entropy of the aggregate posterior, mean_b q(c|x_b), in
  nats (log K = 2.30 for K = 10: all classes used evenly; 0: one class);
- ``used``: classes that are argmax_c q(c|x) for at least one image;
- ``KL``: mean KL(q(c|x) || uniform) per image, nats (at most log K);
- ``maxq``: mean max_c q(c|x);
- ``p-used``, ``maxp``: the same two for the exact posterior of the
  current decoder, p(c|x) = softmax_c log p(x|c) (uniform prior): the q
  that maximizes the ELBO for this decoder;
- ``common``, ``own``: the spread over codes of log p(x|c), nats, split
  into the part shared by all images (sd over c of the batch mean of
  log p(x|c)) and the image's own part (rms of the rest); common >> own
  means one code decodes best for every image;
- ``gap``: median over images of the best minus the second best
  log p(x|c), nats;
- ``dec-g``: the largest code's share of the decoder's per-code gradient
  (the norms of decoder_hidden's K weight columns); 1/K is even;
- ``|dW|``: norm of the logits head's (encoder_out's weight and bias)
  update at that step;
- ``spread``: mean pairwise L2 distance between the K decoded mean
  images f(e_k), pixels in [0, 1] (the header gives the same for the
  held-out images, for scale).

At the end: test purity, accuracy and classes used
(``vaelab.evaluation.clusters``) and the test ELBO (exact for enumerate), nats
per
image.

    VAELAB_DATA=/path/to/mnist python benchmarks/categorical_collapse.py \
        --data-dir /path/to/mnist --steps 1500 --threads 1
"""

from __future__ import annotations

import argparse
import math
import time

import torch

from vaelab.config import Config
from vaelab.data import Dataset, dequantize, load_data
from vaelab.evaluation.clusters import evaluate_clusters
from vaelab.models.model import build_model, init_from_data
from vaelab.prob.estimators import average_elbo
from vaelab.prob.objectives import code_log_lik, compute_elbo
from vaelab.training.loop import learning_rate, make_optimizer

# The zoo's categorical model (src/vaelab/runs/zoo.toml) before this study.
ZOO = {"var_init": "constant", "bias_init": "constant", "lr": 1e-3,
       "lr_schedule": "constant", "warmup_epochs": 0.0}
COLUMNS = ("step", "H(agg)", "used", "KL", "maxq", "p-used", "maxp",
           "common", "own", "gap", "dec-g", "|dW|", "spread")


def head_vector(model: torch.nn.Module) -> torch.Tensor:
    """The logits head's parameters (weight and bias), flattened."""
    return torch.cat([p.detach().flatten()
                      for p in model.encoder_out.parameters()])


def mean_pairwise_distance(images: torch.Tensor) -> float:
    """Mean L2 distance over distinct pairs of rows of images (N, D)."""
    n = images.shape[0]
    d = torch.cdist(images.double(), images.double())
    return (d.sum() / (n * (n - 1))).item()


@torch.no_grad()
def measure(model: torch.nn.Module, x: torch.Tensor) -> dict[str, float]:
    """The module docstring's columns on the held-out batch x (B, D)."""
    q = model.posterior(x)
    probs = q.probs[:, 0]  # (B, K), M = 1
    agg = probs.mean(0)
    kl = (probs * (q.log_probs[:, 0] + math.log(model.classes))).sum(-1)
    codes, table = code_log_lik(model, x)  # (C, B)
    table = table.double()
    post = table.softmax(0)  # exact p(c|x), uniform prior
    by_code = table.mean(1, keepdim=True)  # (C, 1)
    rest = table - by_code - table.mean(0, keepdim=True) + table.mean()
    top2 = table.topk(2, dim=0).values
    return {
        "H(agg)": -(agg * agg.clamp_min(1e-30).log()).sum().item(),
        "used": probs.argmax(-1).unique().numel(),
        "KL": kl.mean().item(),
        "maxq": probs.amax(-1).mean().item(),
        "p-used": table.argmax(0).unique().numel(),
        "maxp": post.amax(0).mean().item(),
        "common": by_code.std().item(),
        "own": rest.square().mean().sqrt().item(),
        "gap": (top2[0] - top2[1]).median().item(),
        "spread": mean_pairwise_distance(model.generate(codes)),
    }


def decoder_share(model: torch.nn.Module) -> float:
    """Largest per-code share of decoder_hidden's weight gradient."""
    g = model.decoder_hidden.weight.grad
    if g is None:
        return float("nan")
    norms = g.norm(dim=0)
    return (norms.max() / norms.sum().clamp_min(1e-30)).item()


def log_steps(steps: int, every: int) -> list[int]:
    """0, 1, 2, 5, 10, 20, 50, then every ``every`` steps, and the last."""
    early = [s for s in (0, 1, 2, 5, 10, 20, 50) if s < every]
    return sorted({*early, *range(0, steps + 1, every), steps})


def parse_value(text: str) -> int | float | str:
    """An option's value from the command line: int, float or string."""
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def row(values: dict[str, float]) -> str:
    cells = []
    for name in COLUMNS:
        v = values[name]
        if name in ("step", "used", "p-used"):
            cells.append(f"{int(v):>6d}")
        elif name in ("common", "own", "gap"):
            cells.append(f"{v:8.1f}")
        elif name == "|dW|":
            cells.append(f"{v:8.2e}")
        else:
            cells.append(f"{v:6.3f}")
    return " ".join(cells)


def header() -> str:
    widths = {"common": 8, "own": 8, "gap": 8, "|dW|": 8}
    return " ".join(f"{n:>{widths.get(n, 6)}s}" for n in COLUMNS)


def run(
    config: Config, data: Dataset, args: argparse.Namespace
) -> None:
    """Train ``args.steps`` steps, logging; then the test figures."""
    dequantized = data.preprocess == "dequantize"
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        model = build_model(config)
    init_from_data(model, config, data.train.images, dequantized)
    optimizer = make_optimizer(model.parameters(), config)
    g = torch.Generator().manual_seed(config.seed)
    held = data.val.images[:args.batch_images]
    if dequantized:
        held = dequantize(held, torch.Generator().manual_seed(1))
    x_train = data.train.images
    n, batch = x_train.shape[0], config.batch_size
    per_epoch = -(-n // batch)
    wanted = set(log_steps(args.steps, args.every))
    print(f"\n{config.estimator}, {config.likelihood} likelihood"
          + "".join(f", {k} {getattr(config, k)}" for k in args.show)
          + f"; held-out batch: {held.shape[0]} images, mean pairwise "
          f"distance {mean_pairwise_distance(held):.2f}")
    print(header())
    t0 = time.perf_counter()
    step, update, share, perm = 0, float("nan"), float("nan"), None
    while True:
        if step in wanted:
            model.eval()
            values = measure(model, held)
            model.train()
            print(row({"step": step, "dec-g": share, "|dW|": update,
                       **values}), flush=True)
        if step == args.steps:
            break
        epoch, i = divmod(step, per_epoch)
        if i == 0:
            perm = torch.randperm(n, generator=g)
            if hasattr(model, "start_epoch"):
                model.start_epoch(epoch + 1, config.epochs)
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(config, step, per_epoch)
        x = x_train[perm[i * batch:(i + 1) * batch]]
        if dequantized:
            x = dequantize(x, g)
        before = head_vector(model)
        terms = compute_elbo(model, x, config.n_samples, g)
        optimizer.zero_grad(set_to_none=True)
        (-terms.objective().mean()).backward()
        share = decoder_share(model)
        optimizer.step()
        update = (head_vector(model) - before).norm().item()
        step += 1
    seconds = time.perf_counter() - t0
    model.eval()
    test = data.test
    clusters = evaluate_clusters(model, test.images, test.labels)
    elbo = average_elbo(model, test.images, dequantized=dequantized)
    print(f"test ({len(test):,} images) after {args.steps} steps "
          f"({args.steps / per_epoch:.1f} epochs, {seconds:.0f} s): "
          f"classes used {clusters.classes_used}, purity "
          f"{clusters.purity:.1%}, accuracy {clusters.accuracy:.1%}, "
          f"ELBO {elbo['elbo']:.2f} nats/image (KL {elbo['kl']:.2f})",
          flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--steps", type=int, default=1500)
    ap.add_argument("--every", type=int, default=100,
                    help="log every N steps (and at 0, 1, 2, 5, ...)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--classes", type=int, default=10)
    ap.add_argument("--likelihood", default="gaussian",
                    choices=("gaussian", "bernoulli"))
    ap.add_argument("--estimators", default="enumerate",
                    help="comma-separated: enumerate, gumbel, "
                    "straight-through, reinforce")
    ap.add_argument("--batch-images", type=int, default=1000,
                    help="held-out images the measurements use")
    ap.add_argument("--zoo", action="store_true",
                    help="the zoo's old start and schedule (as its "
                    "categorical model had it): Sigma = 0.1, output bias "
                    "0, Adam 1e-3 constant, no warm-up")
    ap.add_argument("--set", action="append", default=[],
                    metavar="NAME=VALUE",
                    help="any other Config field, e.g. --set lr=1e-3 "
                    "(numbers are parsed; repeatable)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    extra: dict[str, object] = dict(ZOO) if args.zoo else {}
    for item in args.set:
        name, _, value = item.partition("=")
        extra[name] = parse_value(value)
    args.show = list(extra)
    # Epochs the steps span (50,000 images, batch 100): the relaxation's
    # temperature is annealed over them.
    epochs = max(1, -(-args.steps // 500))
    base = Config(latent="categorical", groups=1, classes=args.classes,
                  likelihood=args.likelihood, data_dir=args.data_dir,
                  seed=args.seed, epochs=epochs, **extra)
    data = load_data(base.resolved())
    print(f"categorical VAE, M=1, K={args.classes}, batch "
          f"{base.batch_size}, seed {args.seed}, torch {torch.__version__},"
          f" {torch.get_num_threads()} thread(s); nats per image")
    for est in args.estimators.split(","):
        config = Config.from_dict({**base.to_dict(), "estimator": est})
        run(config.resolved(), data, args)


if __name__ == "__main__":
    main()
