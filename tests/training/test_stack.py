"""Seeds trained as one stacked model (vaelab.stack, ``sweep --stack``)
against the same seeds trained separately."""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from helpers import synthetic_dataset

from vaelab.cli import build_parser, cmd_sweep, main
from vaelab.config import Config
from vaelab.runs import aggregate
from vaelab.training import runfolder
from vaelab.training.loop import make_optimizer, train
from vaelab.training.stack import train_stack

SEEDS = (0, 1, 2)


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    # A product's sums depend on the threads that split it: both sides
    # of every comparison run with one.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _quiet(text: str) -> None:
    pass


@pytest.mark.parametrize("optimizer", ["adam", "adagrad"])
def test_a_stacked_optimizer_is_independent_ones_bit_for_bit(
    optimizer: str,
) -> None:
    config = Config(optimizer=optimizer).resolved()
    g = torch.Generator().manual_seed(0)
    shapes = [(64, 784), (64,), (7,), (1,)]
    alone = [[torch.randn(s, generator=g).requires_grad_()
              for s in shapes] for _ in SEEDS]
    stacked = [torch.stack([p[j].detach() for p in alone])
               .requires_grad_() for j in range(len(shapes))]
    opts = [make_optimizer(ps, config) for ps in alone]
    opt = make_optimizer(stacked, config)
    for _ in range(10):
        grads = [[torch.randn(s, generator=g) for s in shapes]
                 for _ in SEEDS]
        for ps, gs, o in zip(alone, grads, opts, strict=True):
            for p, gr in zip(ps, gs, strict=True):
                p.grad = gr.clone()
            o.step()
        for j, p in enumerate(stacked):
            p.grad = torch.stack([gs[j] for gs in grads])
        opt.step()
    for j, p in enumerate(stacked):
        for s in range(len(SEEDS)):
            assert torch.equal(p[s].detach(), alone[s][j].detach())


def _per_image_elbo(run_dir: Path, x: torch.Tensor) -> torch.Tensor:
    """Test ELBO per image (N,) with one fixed noise draw (common random
    numbers: two runs' models see the same eps)."""
    model, _ = runfolder.load_model(run_dir, "cpu")
    g = torch.Generator().manual_seed(123)
    with torch.no_grad():
        return model.compute_elbo(x, 1, g).elbo.double()


CASES = {
    # The spec's model (Gaussian, per-pixel variance, dequantized).
    "spec": dict(hidden=32, latent_dim=4),
    # iwae-vae-dynamic's shape: two tanh layers, Bernoulli, dynamic
    # binarization, here trained on the IWAE bound.
    "iwae-dynamic": dict(hidden=[32, 16], latent_dim=4,
                         activation="tanh", likelihood="bernoulli",
                         preprocess="dynamic-binarize", init="glorot",
                         bias_init="data", objective="iwae", iwae_k=3),
}


@pytest.mark.parametrize("case", CASES)
def test_stacked_seeds_agree_with_separate_runs(
    case: str, tmp_path: Path
) -> None:
    options = {"epochs": 3, "batch_size": 20, **CASES[case]}
    pre = options.get("preprocess", "dequantize")
    ds = synthetic_dataset(300, 100, 100, preprocess=pre)
    configs = [Config(**options, seed=s) for s in SEEDS]
    for c in configs:
        train(c, tmp_path / f"alone-{c.seed}", dataset=ds,
              progress=False, log=_quiet)
    results = train_stack(configs, [tmp_path / f"stack-{s}"
                                    for s in SEEDS], ds, log=_quiet)
    x = ds.test.images
    if pre == "dynamic-binarize":
        x = (x > 0.5).float()
    elbo = {}
    for s, result in zip(SEEDS, results, strict=True):
        alone, stack = tmp_path / f"alone-{s}", tmp_path / f"stack-{s}"
        # The separate run's files, its config, epochs and results keys.
        files = {p.name for p in alone.iterdir()}
        assert {p.name for p in stack.iterdir()} == files
        assert (runfolder.read_json(stack / "config.json")
                == runfolder.read_json(alone / "config.json"))
        assert (len(runfolder.read_metrics(stack))
                == len(runfolder.read_metrics(alone)) == 3)
        assert result.keys() == runfolder.read_json(
            alone / "results.json").keys()
        session = runfolder.read_json(stack / "environment.json")[
            "sessions"][-1]
        assert session["stack"] == {"seeds": list(SEEDS)}
        assert aggregate.run_row(stack)["test_elbo"] is not None
        elbo[s] = (_per_image_elbo(alone, x), _per_image_elbo(stack, x))
    # Each seed's held-out ELBO agrees with its separate run's within
    # the Monte Carlo error of their difference (common draws: its
    # standard error over the N images), 4 standard errors, plus the
    # float32 rounding of the sums (1e-4 nats). Bit-equality is not
    # asserted: batched products may round otherwise than addmm.
    n = x.shape[0]

    def agree(a: torch.Tensor, b: torch.Tensor) -> bool:
        d = a - b
        se = float(d.std()) / math.sqrt(n)
        return abs(float(d.mean())) <= 4 * se + 1e-4

    for s in SEEDS:
        assert agree(*elbo[s]), s
        # Stronger, and able to fail: image by image the two are one
        # function up to float rounding (seen: ~1e-6 nats), where
        # another seed's model differs by nats.
        assert float((elbo[s][0] - elbo[s][1]).abs().max()) < 1e-2
    assert float((elbo[0][0] - elbo[1][1]).abs().max()) > 1.0


def test_early_stopping_is_per_seed_and_the_stack_goes_on(
    tmp_path: Path,
) -> None:
    # At a high constant rate the seeds stop at different epochs (2, 2
    # and 5 here), so the stack sheds seeds and goes on.
    ds = synthetic_dataset(100, 30, 30)
    configs = [Config(epochs=12, batch_size=20, hidden=8, latent_dim=2,
                      seed=s, lr=0.1, patience=1, lr_schedule="constant")
               for s in SEEDS]
    alone = [train(c, tmp_path / f"alone-{c.seed}", dataset=ds,
                   progress=False, log=_quiet) for c in configs]
    stacked = train_stack(configs, [tmp_path / f"stack-{s}"
                                    for s in SEEDS], ds, log=_quiet)
    epochs = [(r["epochs"], r["model_epoch"]) for r in stacked]
    assert epochs == [(r["epochs"], r["model_epoch"]) for r in alone]
    assert len(set(epochs)) > 1


def test_an_interrupted_stack_resumes_where_it_stopped(
    tmp_path: Path,
) -> None:
    ds = synthetic_dataset(200, 50, 50)
    configs = [Config(epochs=3, batch_size=25, hidden=8, latent_dim=2,
                      seed=s) for s in SEEDS]
    whole = train_stack(configs, [tmp_path / f"whole-{s}" for s in SEEDS],
                        ds, log=_quiet)

    def stop(i: int, record: dict) -> None:
        if i == 1 and record["epoch"] == 2:
            raise KeyboardInterrupt

    dirs = [tmp_path / f"cut-{s}" for s in SEEDS]
    with pytest.raises(KeyboardInterrupt):
        train_stack(configs, dirs, ds, log=_quiet, on_epoch=stop)
    # Seeds 0 and 1 saved epoch 2, seed 2 only epoch 1: two stacks.
    assert [runfolder.checkpoint_epoch(d) for d in dirs] == [2, 2, 1]
    again = train_stack(configs, dirs, ds, log=_quiet)
    for a, b in zip(whole, again, strict=True):
        # Up to rounding: a batched product's sums may depend on how
        # many seeds it batches (here 2 and 1 after the cut, 3 before).
        assert b["test"] == pytest.approx(a["test"], rel=1e-6)
        assert b["epochs"] == a["epochs"] == 3
    # One seed's folder continues alone, as any run folder does.
    longer = Config(epochs=4, batch_size=25, hidden=8, latent_dim=2,
                    seed=0)
    result = train(longer, dirs[0], resume=True, dataset=ds,
                   progress=False, log=_quiet)
    assert result["epochs"] == 4


def load(config: Config):
    """The sweep's data: synthetic digits (module-level: picklable)."""
    return synthetic_dataset(n_train=300, n_val=50, n_test=50,
                             preprocess=config.preprocess)


@pytest.mark.parametrize("jobs", ["1", "2"])
def test_sweep_stack_writes_the_sweep_of_separate_runs(
    tmp_path: Path, jobs: str,
) -> None:
    # jobs 2: each setting's stack a task of the sweep's process pool.
    flags = ["--seeds", "0-2", "--jobs", jobs, "--grid", "hidden=8,12",
             "--epochs", "2", "--eval-n", "20", "--eval-k", "5",
             "--quiet"]
    out = {}
    for name, extra in (("alone", []), ("stack", ["--stack"])):
        args = build_parser().parse_args(
            ["sweep", "--out", str(tmp_path / name), *flags, *extra])
        assert cmd_sweep(args, load=load) == 0
        out[name] = runfolder.read_json(tmp_path / name / "sweep.json")
    alone, stack = out["alone"]["runs"], out["stack"]["runs"]
    assert [(r["setting"], r["seed"]) for r in stack] == [
        (r["setting"], r["seed"]) for r in alone]
    assert len(stack) == 6
    for a, b in zip(alone, stack, strict=True):
        # One epoch of 300 images: float-level differences at most.
        assert b["test_elbo"] == pytest.approx(a["test_elbo"], abs=1e-2)
    # Run again: every run is reused, nothing retrained.
    args = build_parser().parse_args(
        ["sweep", "--out", str(tmp_path / "stack"), *flags, "--stack"])
    seen = []
    cmd_sweep(args, load=load,
              on_run=lambda run, outcome: seen.append(outcome["status"]))
    assert seen == ["reused"] * 6


@pytest.mark.parametrize("flags, words", [
    (["--latent", "categorical"], "--latent categorical"),
    (["--latent", "mixture"], "--latent mixture"),
    (["--inference", "vem"], "--inference vem"),
    (["--prior", "laplace"], "--prior laplace"),
    (["--backend", "ray"], "local backend only"),
])
def test_stack_refuses_what_it_does_not_train_in_one_line(
    flags: list[str], words: str, tmp_path: Path,
    capsys: pytest.CaptureFixture,
) -> None:
    code = main(["sweep", "--out", str(tmp_path / "s"), "--stack",
                 "--epochs", "1", *flags])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and words in err, err
    assert not (tmp_path / "s").exists()
