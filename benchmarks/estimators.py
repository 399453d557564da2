"""Gradient estimators for discrete latents, compared on one model.

The categorical VAE (M groups of K classes; default M = 1, K = 10) on
MNIST. Where K^M is small enough, enumeration gives the exact ELBO, its
exact gradient and the exact log p(x); beyond that (the Gumbel-softmax
paper's 20 x 10: ``--groups 20 --likelihood bernoulli --hidden 512,256``)
the reference gradient is REINFORCE averaged over ``--reference-samples``
draws per image (unbiased; its own variance, est. var / samples, is
printed), the fixed point is reached with Gumbel-softmax steps, and the
test metrics are the proper hard-sample ELBO. Two parts:

1. Gradient noise at a fixed point. A model is trained for a few hundred
   steps with exact (enumerated) gradients; there, for each estimator, the
   gradient of the minibatch objective wrt the ENCODER's parameters is drawn
   ``--repeats`` times (a fresh random minibatch and fresh noise each time)
   next to the exact gradient on the same minibatch. Printed: the total
   variance of the estimate across draws (trace of its covariance, which
   includes the minibatch's own variance), and its mean squared error
   against the exact minibatch gradient, split into bias^2 + variance of
   the estimator alone. REINFORCE's baseline is first fitted at the fixed
   point (the rest of the model frozen); "reinforce-nobaseline" is the same
   estimator with b(x) = 0.
2. Training. A fresh model per estimator, ``--epochs`` epochs through
   ``vaelab.training.loop.train`` (as ``vaelab train`` runs it); then on the
   test
   set: the ELBO as training reports it (hard samples), the exact ELBO and
   the exact log p(x) by enumeration, the number of classes in use and
   their purity (how well the most probable class predicts the digit);
   for many groups, classes in use are averaged over the groups and
   purity is the best group's. ``--epochs 0`` skips this part.

    VAELAB_DATA=/path/to/mnist python benchmarks/estimators.py

Units: nats per image; gradients of the per-image mean objective.
"""

from __future__ import annotations

import argparse
import dataclasses
import tempfile
import time
from collections.abc import Iterator

import numpy as np
import torch

from vaelab.config import ENUMERATE_LIMIT, Config
from vaelab.data import Split, load_data, training_batch
from vaelab.prob.objectives import compute_elbo, exact_log_marginal
from vaelab.training.loop import make_optimizer, train

ESTIMATORS = ("enumerate", "gumbel", "straight-through", "reinforce")


def encoder_params(model: torch.nn.Module) -> list[torch.nn.Parameter]:
    return [*model.encoder_hidden.parameters(),
            *model.encoder_out.parameters()]


def grad_vector(
    model: torch.nn.Module, x: torch.Tensor, g: torch.Generator,
    n_samples: int,
) -> torch.Tensor:
    """Gradient of the mean objective wrt the encoder, flattened."""
    terms = compute_elbo(model, x, n_samples, g)
    grads = torch.autograd.grad(terms.objective().mean(),
                                encoder_params(model))
    return torch.cat([gr.flatten() for gr in grads])


def enumerable(config: Config) -> bool:
    """Whether K^M codes are few enough for the exact gradient."""
    return config.classes ** config.groups <= ENUMERATE_LIMIT


def minibatches(
    images: torch.Tensor, batch: int, g: torch.Generator,
    preprocess: str = "dequantize",
) -> Iterator[torch.Tensor]:
    """Endless random minibatches, as training sees them (fresh
    dequantization noise for the Gaussian likelihood)."""
    while True:
        idx = torch.randint(images.shape[0], (batch,), generator=g)
        yield training_batch(images[idx], preprocess, g)


def fixed_point(
    config: Config, images: torch.Tensor, steps: int, seed: int
) -> torch.nn.Module:
    """A model after ``steps`` Adam steps on the exact (enumerated) ELBO,
    or on the Gumbel-softmax surrogate when there are too many codes."""
    from vaelab.models.model import build_model, init_from_data

    exact = config_for(config, "enumerate" if enumerable(config)
                       else "gumbel")
    if not enumerable(config):
        # The paper's Adam 1e-3: from 3e-3 without a warm-up the 512-256
        # networks' q collapsed onto the prior within the first steps.
        exact = Config.from_dict({**exact.to_dict(), "lr": 1e-3})
    torch.manual_seed(seed)
    model = build_model(exact)
    init_from_data(model, exact, images, config.preprocess == "dequantize")
    opt = make_optimizer(model.parameters(), exact)
    g = torch.Generator().manual_seed(seed)
    batches = minibatches(images, config.batch_size, g, config.preprocess)
    for _ in range(steps):
        loss = -compute_elbo(model, next(batches), 1, g).objective().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model


def config_for(config: Config, estimator: str) -> Config:
    values = config.to_dict()
    values["estimator"] = estimator
    return Config.from_dict(values)


def as_estimator(
    base: torch.nn.Module, config: Config, estimator: str,
) -> torch.nn.Module:
    """The fixed point's weights in a model using ``estimator``."""
    from vaelab.models.model import build_model

    model = build_model(config_for(config, estimator))
    model.load_state_dict(base.state_dict(), strict=False)
    model.estimator.temperature = config.temperature
    return model


def fit_baseline(
    model: torch.nn.Module, images: torch.Tensor, steps: int, seed: int,
    preprocess: str = "dequantize",
) -> None:
    """Train only the REINFORCE baseline at the model's fixed point."""
    model.train()
    opt = torch.optim.Adam(model.baseline_net.parameters(), lr=1e-3)
    g = torch.Generator().manual_seed(seed)
    batches = minibatches(images, 100, g, preprocess)
    for _ in range(steps):
        terms = compute_elbo(model, next(batches), 1, g)
        # the surrogate's gradient wrt the baseline is its squared error's
        loss = -terms.objective().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()


def gradient_noise(
    base: torch.nn.Module, config: Config, images: torch.Tensor,
    repeats: int, n_samples: int, seed: int, reference_samples: int = 200,
) -> dict[str, dict[str, float]]:
    """Variance, bias^2 and MSE of each estimator's encoder gradient,
    against the exact gradient (enumeration) or, with too many codes,
    against REINFORCE averaged over ``reference_samples`` draws."""
    pre = config.preprocess
    if enumerable(config):
        exact, ref_samples = as_estimator(base, config, "enumerate"), 1
    else:
        exact = as_estimator(base, config, "reinforce")
        fit_baseline(exact, images, 300, seed, pre)
        exact.eval()
        ref_samples = reference_samples
    names = [e for e in ESTIMATORS if e != "enumerate" or enumerable(config)]
    out: dict[str, dict[str, float]] = {}
    for name in (*names, "reinforce-nobaseline"):
        est = name.removesuffix("-nobaseline")
        model = as_estimator(base, config, est)
        if name == "reinforce":
            fit_baseline(model, images, 300, seed, pre)
        model.eval()  # no running-mean updates while measuring
        g = torch.Generator().manual_seed(seed + 1)
        batches = minibatches(images, config.batch_size, g, pre)
        grad_vector(model, next(batches), g, n_samples)  # warm-up
        draws, errors = [], []
        seconds = 0.0
        for _ in range(repeats):
            x = next(batches)
            t0 = time.perf_counter()
            grad = grad_vector(model, x, g, n_samples)
            seconds += time.perf_counter() - t0
            draws.append(grad)
            errors.append(grad - grad_vector(exact, x, g, ref_samples))
        seconds /= repeats
        d, e = torch.stack(draws).double(), torch.stack(errors).double()
        bias = e.mean(0)
        out[name] = {
            "total_var": d.var(0).sum().item(),
            "mse": e.square().sum(1).mean().item(),
            "bias2": bias.square().sum().item(),
            "est_var": e.var(0).sum().item(),
            "exact_norm2": (d - e).square().sum(1).mean().item(),
            "seconds": seconds,
        }
    return out


@torch.no_grad()
def test_metrics(
    model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor,
    seed: int, preprocess: str = "dequantize",
) -> dict[str, float]:
    """Exact ELBO and log p(x) by enumeration (NaN with too many codes),
    classes used (mean over groups), purity (the best group's)."""
    from vaelab.evaluation.clusters import cluster_stats
    from vaelab.prob.objectives import enumerated_log_lik

    g = torch.Generator().manual_seed(seed)
    sums = np.zeros(2)
    codes = []
    exact = enumerable(model.config)
    for i in range(0, images.shape[0], 500):
        x = images[i:i + 500]
        if preprocess == "dequantize":
            x = training_batch(x, preprocess, g)
        q = model.posterior(x)
        if exact:
            kl = compute_elbo(model, x, 1, g).kl
            sums[0] += (enumerated_log_lik(model, x, q) - kl).sum().item()
            sums[1] += exact_log_marginal(model, x).sum().item()
        codes.append(q.logits.argmax(-1))  # (B, M)
    c = torch.cat(codes).numpy()
    y = labels.numpy()
    n = images.shape[0]
    stats = [cluster_stats(c[:, m], y, model.classes)
             for m in range(c.shape[1])]
    return {
        "exact_elbo": sums[0] / n if exact else float("nan"),
        "log_px": sums[1] / n if exact else float("nan"),
        "used": float(np.mean([s.classes_used for s in stats])),
        "purity": max(s.purity for s in stats),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--groups", type=int, default=1)
    ap.add_argument("--classes", type=int, default=10)
    ap.add_argument("--likelihood", default="gaussian",
                    choices=("gaussian", "bernoulli"))
    ap.add_argument("--hidden", default="512",
                    help="layer sizes, e.g. 512,256")
    ap.add_argument("--reference-samples", type=int, default=200,
                    help="REINFORCE draws per image of the reference "
                    "gradient when K^M is too large to enumerate")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--warmup-steps", default="5,50",
                    help="exact-gradient steps before each fixed point "
                    "(comma-separated)")
    ap.add_argument("--repeats", type=int, default=100)
    ap.add_argument("--n-samples", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--train-images", type=int, default=None,
                    help="use only the first N training images")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    sizes = [int(v) for v in args.hidden.split(",")]

    config = Config(
        latent="categorical", groups=args.groups, classes=args.classes,
        epochs=max(args.epochs, 1), seed=args.seed, data_dir=args.data_dir,
        n_samples=args.n_samples, likelihood=args.likelihood,
        hidden=sizes[0] if len(sizes) == 1 else sizes,
    ).resolved()
    data = load_data(config)
    if args.train_images is not None:
        n = args.train_images
        data = dataclasses.replace(data, train=Split(
            data.train.images[:n], data.train.labels[:n]))
    train_x = data.train.images
    print(f"categorical VAE, M={args.groups}, K={args.classes}, hidden "
          f"{args.hidden}, "
          f"{config.likelihood} likelihood, batch {config.batch_size}, "
          f"S={args.n_samples}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads")

    for i, steps in enumerate(int(v) for v in args.warmup_steps.split(",")):
        base = fixed_point(config, train_x, steps, args.seed)
        with torch.no_grad():
            x = data.val.images[:1000]
            if config.preprocess == "dequantize":
                x = training_batch(x, config.preprocess,
                                   torch.Generator().manual_seed(0))
            maxp = base.posterior(x).probs.amax(-1).mean().item()
        kind = ("exact" if enumerable(config) else "gumbel-softmax")
        ref_name = ("the exact minibatch gradient" if enumerable(config)
                    else f"REINFORCE averaged over {args.reference_samples}"
                    " draws per image")
        print(f"\n1{'abcdefgh'[i]}. encoder-gradient noise after {steps} "
              f"{kind} steps (mean max_k q(k|x) = {maxp:.2f}); "
              f"{args.repeats} minibatches; sums over the encoder's "
              f"parameters; reference: {ref_name}")
        noise = gradient_noise(base, config, train_x, args.repeats,
                               args.n_samples, args.seed,
                               args.reference_samples)
        first = next(iter(noise.values()))
        ref = first["exact_norm2"]
        print(f"   mean ||reference minibatch gradient||^2 = {ref:.4g}")
        if not enumerable(config):
            noise_ref = noise["reinforce"]["est_var"] / args.reference_samples
            print(f"   the reference's own variance, about {noise_ref:.4g}"
                  ", is inside every est. var below")
        print(f"   {'estimator':22s} {'total var':>11s} "
              f"{'MSE vs ref':>13s} {'bias^2':>10s} {'est. var':>10s} "
              f"{'ms/grad':>8s}")
        for name, r in noise.items():
            print(f"   {name:22s} {r['total_var']:11.4g} {r['mse']:13.4g} "
                  f"{r['bias2']:10.4g} {r['est_var']:10.4g} "
                  f"{1000 * r['seconds']:8.1f}", flush=True)

    if args.epochs == 0:
        return
    print(f"\n2. training {args.epochs} epochs per estimator; test set "
          f"({len(data.test):,} images), nats per image")
    print(f"   {'estimator':18s} {'ELBO (hard)':>11s} {'exact ELBO':>11s}"
          f" {'log p(x)':>9s} {'used':>5s} {'purity':>7s} {'s/epoch':>8s}")
    for est in ESTIMATORS:
        if est == "enumerate" and not enumerable(config):
            continue
        cfg = config_for(config, est)
        with tempfile.TemporaryDirectory() as tmp:
            res = train(cfg, tmp, dataset=data, progress=False)
            from vaelab.training.runfolder import load_model

            model, _ = load_model(tmp)
        m = test_metrics(model, data.test.images, data.test.labels,
                         args.seed, config.preprocess)
        per_epoch = res["train_seconds"] / max(res["epochs"], 1)
        print(f"   {est:18s} {res['test']['elbo']:11.2f} "
              f"{m['exact_elbo']:11.2f} {m['log_px']:9.2f} {m['used']:5.1f} "
              f"{m['purity']:7.1%} {per_epoch:8.1f}", flush=True)
    print("\nbias^2 + est. var = MSE; bias^2 is ||mean error||^2, which "
          "also holds est. var / repeats;\ntotal var also holds the "
          "minibatch's own variance; ms/grad: the estimator's gradient "
          "alone")


if __name__ == "__main__":
    main()
