"""Training: rising ELBO, determinism, resume (also after SIGKILL),
divergence handling and run-folder contents."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from helpers import edit_checkpoint, synthetic_dataset

from vaelab.config import Config
from vaelab.errors import ConfigError, TrainingDiverged, VaelabError
from vaelab.inference import vem
from vaelab.inference.amortized import Amortized
from vaelab.inference.methods import METHODS, check_config
from vaelab.models import latents
from vaelab.models.kinds import KINDS
from vaelab.training import loop as train_module
from vaelab.training import runfolder
from vaelab.training.loop import train
from vaelab.training.runfolder import read_metrics

TESTS = Path(__file__).parents[1]
SMALL = dict(hidden=64, batch_size=50, device="cpu")


def _weights(run_dir: Path) -> dict[str, torch.Tensor]:
    _, tensors, _ = runfolder.read_checkpoint(run_dir)
    return tensors


def _resume_matches(opts: dict, ds: object, run_dir: Path, cut: int,
                    epochs: int) -> bool:
    """Whether a run of ``opts`` stopped after ``cut`` epochs and resumed
    to ``epochs`` ends bit for bit as the uninterrupted run in
    ``run_dir / "full"`` (trained first): weights, optimizer and RNG
    state, and every metric but the timings."""
    part = run_dir / "part"
    train(Config(epochs=cut, **opts), part, dataset=ds, progress=False)
    train(Config(epochs=epochs, **opts), part, dataset=ds, progress=False,
          resume=True)
    wf, wp = _weights(run_dir / "full"), _weights(part)
    return (set(wf) == set(wp) and all(torch.equal(wf[k], wp[k]) for k in wf)
            and _same_numbers(read_metrics(run_dir / "full"),
                              read_metrics(part)))


def _same_numbers(a: list[dict], b: list[dict]) -> bool:
    drop = ("seconds", "images_per_second")
    strip = [{k: v for k, v in m.items() if k not in drop} for m in a + b]
    return strip[: len(a)] == strip[len(a):]


def test_elbo_is_finite_and_rises(tmp_path: Path) -> None:
    ds = synthetic_dataset(600, 200, 200)
    train(Config(epochs=6, **SMALL), tmp_path, dataset=ds, progress=False)
    m = read_metrics(tmp_path)
    assert [r["epoch"] for r in m] == list(range(1, 7))
    for r in m:
        for key in ("train_elbo", "val_elbo", "train_kl", "seconds"):
            assert math.isfinite(r[key])
        assert r["train_kl"] >= 0 and r["val_kl"] >= 0
        assert r["val_elbo"] == pytest.approx(
            r["val_log_lik"] - r["val_kl"], abs=1e-3)
    assert m[-1]["val_elbo"] > m[0]["val_elbo"] + 50
    results = json.loads((tmp_path / "results.json").read_text())
    assert set(results) >= {"train", "val", "test", "train_seconds"}


def test_iwae_objective_trains_and_reports_the_elbo_and_the_bound(
    tmp_path: Path,
) -> None:
    """--objective iwae: training ascends IWAE_5 (another run than the
    ELBO's from the same seed); metrics and results keep the ELBO and add
    the bound, which is above the ELBO of the same draws."""
    ds = synthetic_dataset(300, 100, 100, preprocess="binarize")
    small = dict(SMALL, likelihood="bernoulli", epochs=2)
    res = train(Config(objective="iwae", iwae_k=5, **small), tmp_path / "i",
                dataset=ds, progress=False)
    train(Config(**small), tmp_path / "e", dataset=ds, progress=False)
    m, e = read_metrics(tmp_path / "i"), read_metrics(tmp_path / "e")
    assert "val_iwae" not in e[-1]
    for r in m:
        assert math.isfinite(r["train_elbo"]) and r["val_iwae"] > r["val_elbo"]
    assert m[-1]["train_elbo"] != e[-1]["train_elbo"]
    assert m[-1]["val_elbo"] > m[0]["val_elbo"]
    for split in ("train", "val", "test"):
        assert res[split]["iwae"] > res[split]["elbo"]


def test_dynamic_binarization_trains_on_fresh_draws(tmp_path: Path) -> None:
    """Grey training images, binarized afresh each step: the training ELBO
    of the results is that of one fixed binarization (finite, in nats),
    and the run differs from the fixed binarization's."""
    ds = synthetic_dataset(300, 100, 100, preprocess="dynamic-binarize")
    assert 0 < float(ds.train.images.mean()) and bool(
        (ds.train.images % 1 != 0).any())
    results = train(Config(likelihood="bernoulli", epochs=2,
                           preprocess="dynamic-binarize", **SMALL),
                    tmp_path, dataset=ds, progress=False)
    assert all(math.isfinite(results[s]["elbo"]) for s in
               ("train", "val", "test"))
    assert results["preprocess"] == "dynamic-binarize"
    m = read_metrics(tmp_path)
    assert m[-1]["val_elbo"] > m[0]["val_elbo"]


def test_same_seed_same_run_other_seed_other_run(tmp_path: Path) -> None:
    ds = synthetic_dataset(300, 100, 100)
    for name, seed in (("a", 1), ("b", 1), ("c", 2)):
        train(Config(epochs=2, seed=seed, **SMALL), tmp_path / name,
              dataset=ds, progress=False)
    wa, wb, wc = (_weights(tmp_path / n) for n in "abc")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert not torch.equal(wa["model.decoder_out.weight"],
                           wc["model.decoder_out.weight"])
    assert _same_numbers(read_metrics(tmp_path / "a"),
                         read_metrics(tmp_path / "b"))


def _registered() -> list[tuple[str, str]]:
    """Every (latent kind, inference method) of the registries that a
    config allows: a new entry is trained by the tests that iterate
    these."""
    pairs = []
    for latent in KINDS:
        for inference in METHODS:
            try:
                check_config(Config(latent=latent, inference=inference,
                                    **SMALL).resolved())
            except ConfigError:
                continue
            pairs.append((latent, inference))
    return pairs


@pytest.mark.parametrize(("latent", "inference"), _registered())
def test_resume_ends_where_an_uninterrupted_run_ends(
    tmp_path: Path, latent: str, inference: str
) -> None:
    ds = synthetic_dataset(300, 100, 100)
    # A constant relaxation temperature: the default anneal spans the
    # run's epochs, so a shorter run would anneal faster (by design).
    opts = dict(SMALL, latent=latent, inference=inference,
                temperature=0.5, min_temperature=0.5)
    train(Config(epochs=4, **opts), tmp_path / "full", dataset=ds,
          progress=False)
    # Model, Adam moments and the RNG state all match bit for bit.
    assert _resume_matches(opts, ds, tmp_path, cut=2, epochs=4)


@pytest.mark.parametrize(("pretrain", "fit"), [
    (False, "kmeans"), (True, "kmeans"), (True, "spectral")])
def test_mixture_fit_from_data_resumes_bit_exact(
    tmp_path: Path, pretrain: bool, fit: str
) -> None:
    """--mixture-fit-epoch 2 sets the classes by k-means (or spectral
    clustering) on the posterior means after epoch 1 (with or without the
    N(0, I) pretraining); a run resumed after epoch 1 fits them exactly
    as the uninterrupted run does."""
    ds = synthetic_dataset(300, 100, 100)
    opts = dict(SMALL, latent="mixture", classes=3, mixture_fit_epoch=2,
                mixture_pretrain=pretrain, mixture_fit=fit)
    full, plain = tmp_path / "full", tmp_path / "plain"
    train(Config(epochs=3, **opts), full, dataset=ds, progress=False)
    assert _resume_matches(opts, ds, tmp_path, cut=1, epochs=3)
    wf = _weights(full)
    no_fit = {**opts, "mixture_fit_epoch": None,
              "mixture_pretrain": False, "mixture_fit": "kmeans"}
    train(Config(epochs=3, **no_fit), plain, dataset=ds, progress=False)
    key = "model.mixture_loc"
    assert not torch.equal(wf[key], _weights(plain)[key])


def test_mixture_pretrain_uses_normal_prior_until_the_fit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With --mixture-pretrain, every ELBO before the fit epoch is
    computed under N(0, I); from the fit epoch on, under the mixture."""
    from vaelab.prob.distributions import GaussianMixture

    seen: list[tuple[int, bool]] = []
    real = latents.compute_elbo
    epoch = {"n": 0}

    def spy(model, *args, **kwargs):  # type: ignore[no-untyped-def]
        seen.append((epoch["n"], isinstance(model.prior, GaussianMixture)))
        return real(model, *args, **kwargs)

    real_start = Amortized.start_epoch

    def start(self, n):  # type: ignore[no-untyped-def]
        epoch["n"] = n
        real_start(self, n)

    monkeypatch.setattr(latents, "compute_elbo", spy)
    monkeypatch.setattr(Amortized, "start_epoch", start)
    ds = synthetic_dataset(300, 100, 100)
    cfg = Config(epochs=3, latent="mixture", classes=3, mixture_fit_epoch=2,
                 mixture_pretrain=True, **SMALL)
    train(cfg, tmp_path / "run", dataset=ds, progress=False)
    assert {m for n, m in seen if n == 1} == {False}
    assert {m for n, m in seen if n >= 2} == {True}


def test_mixture_hard_epochs_train_on_the_fit_labels_and_resume(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """--mixture-hard-epochs 2 with the fit at epoch 2: epochs 2 and 3
    train on labelled_elbo, each image with its class of the fit (saved
    in the checkpoint), epochs 1 and 4 on the summed-out ELBO; a run
    resumed after epoch 2 reads the labels back and ends bit-exact."""
    seen: list[tuple[int, str]] = []
    epoch = {"n": 0}
    fitted: list[torch.Tensor] = []
    real_labelled, real_elbo = (latents.labelled_elbo,
                                latents.compute_elbo)
    real_start = Amortized.start_epoch

    def labelled(model, x, labels, *args):  # type: ignore[no-untyped-def]
        seen.append((epoch["n"], "labelled"))
        fitted.append(labels)
        return real_labelled(model, x, labels, *args)

    def summed(*args, **kwargs):  # type: ignore[no-untyped-def]
        seen.append((epoch["n"], "summed"))
        return real_elbo(*args, **kwargs)

    def start(self, n):  # type: ignore[no-untyped-def]
        epoch["n"] = n
        real_start(self, n)

    monkeypatch.setattr(latents, "labelled_elbo", labelled)
    monkeypatch.setattr(latents, "compute_elbo", summed)
    monkeypatch.setattr(Amortized, "start_epoch", start)
    ds = synthetic_dataset(300, 100, 100)
    opts = dict(SMALL, latent="mixture", classes=3, mixture_fit_epoch=2,
                mixture_hard_epochs=2)
    full = tmp_path / "full"
    train(Config(epochs=4, **opts), full, dataset=ds, progress=False)
    kinds = {n: {k for m, k in seen if m == n} for n in range(1, 5)}
    assert kinds == {1: {"summed"}, 2: {"labelled"}, 3: {"labelled"},
                     4: {"summed"}}
    saved = _weights(full)["mixture_labels"]
    assert saved.shape == (300,) and len(saved.unique()) == 3
    # Each hard epoch passes every image's label once: the same counts.
    counts = saved.bincount(minlength=3)
    assert torch.equal(torch.cat(fitted[:len(fitted) // 2])
                       .bincount(minlength=3), counts)
    assert _resume_matches(opts, ds, tmp_path, cut=2, epochs=4)
    with pytest.raises(ConfigError, match="--mixture-fit-epoch"):
        check_config(Config(latent="mixture", mixture_hard_epochs=2)
                     .resolved())


# Where each inference method's training step computes its ELBO.
STEP_MODULE = {"amortized": latents, "vem": vem}


@pytest.mark.parametrize("inference", ["amortized", "vem"])
def test_interrupt_mid_epoch_then_resume(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, inference: str
) -> None:
    ds = synthetic_dataset(300, 100, 100)
    cfg = Config(epochs=3, inference=inference, **SMALL)
    train(cfg, tmp_path / "full", dataset=ds, progress=False)

    calls = {"n": 0}
    module = STEP_MODULE[inference]
    real = module.compute_elbo

    def flaky(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 6 * 2 + 3:  # three steps into epoch 3
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(module, "compute_elbo", flaky)
    with pytest.raises(KeyboardInterrupt):
        train(cfg, tmp_path / "cut", dataset=ds, progress=False)
    assert len(read_metrics(tmp_path / "cut")) == 2
    monkeypatch.setattr(module, "compute_elbo", real)
    train(cfg, tmp_path / "cut", dataset=ds, progress=False, resume=True)
    wf, wc = _weights(tmp_path / "full"), _weights(tmp_path / "cut")
    assert set(wf) == set(wc)
    assert all(torch.equal(wf[k], wc[k]) for k in wf)


KILL_SCRIPT = """
import sys
sys.path.insert(0, {tests!r})
from helpers import synthetic_dataset
from vaelab.config import Config
from vaelab.training.loop import train
train(Config(epochs={epochs}, hidden=64, batch_size=50, device="cpu",
             inference={inference!r}),
      {out!r}, dataset=synthetic_dataset(300, 100, 100), progress=False,
      resume={resume})
"""


def _script(
    out: Path, epochs: int, resume: bool, inference: str
) -> list[str]:
    code = KILL_SCRIPT.format(tests=str(TESTS), out=str(out),
                              epochs=epochs, resume=resume,
                              inference=inference)
    return [sys.executable, "-c", code]


@pytest.mark.parametrize("inference", ["amortized", "vem"])
def test_resume_after_sigkill(tmp_path: Path, inference: str) -> None:
    kill, full = tmp_path / "kill", tmp_path / "full"
    proc = subprocess.Popen(_script(kill, 400, False, inference))
    try:
        # Generous: the first epochs wait for imports on a loaded machine.
        deadline = time.time() + 300
        # The line of epoch e lands just before its checkpoint: four lines
        # mean at least three checkpoints.
        while len(read_metrics(kill)) < 4 and time.time() < deadline:
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    done = runfolder.read_checkpoint(kill)[0]
    assert 3 <= done < 400
    target = done + 1
    subprocess.run(_script(kill, target, True, inference), check=True)
    subprocess.run(_script(full, target, False, inference), check=True)
    wk, wf = _weights(kill), _weights(full)
    assert set(wk) == set(wf)
    assert all(torch.equal(wk[k], wf[k]) for k in wf)
    assert _same_numbers(read_metrics(kill), read_metrics(full))


def test_divergence_stops_and_keeps_last_good_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ds = synthetic_dataset(300, 100, 100)
    calls = {"n": 0}
    real = latents.compute_elbo

    def poisoned(*args, **kwargs):
        calls["n"] += 1
        terms = real(*args, **kwargs)
        if calls["n"] > 6 * 2:  # epoch 3 onward
            terms.elbo = terms.elbo * float("nan")
        return terms

    monkeypatch.setattr(latents, "compute_elbo", poisoned)
    with pytest.raises(TrainingDiverged, match="epoch 3") as e:
        train(Config(epochs=5, **SMALL), tmp_path, dataset=ds,
              progress=False)
    assert "\n" not in str(e.value)
    epoch, tensors, _ = runfolder.read_checkpoint(tmp_path)
    assert epoch == 2 and len(read_metrics(tmp_path)) == 2
    assert all(torch.isfinite(t.float()).all() for t in tensors.values())


def test_existing_run_needs_resume_and_same_options(tmp_path: Path) -> None:
    ds = synthetic_dataset(200, 50, 50)
    train(Config(epochs=1, **SMALL), tmp_path, dataset=ds, progress=False)
    with pytest.raises(ConfigError, match="--resume"):
        train(Config(epochs=2, **SMALL), tmp_path, dataset=ds,
              progress=False)
    with pytest.raises(ConfigError, match="latent_dim"):
        train(Config(epochs=2, latent_dim=3, **SMALL), tmp_path,
              dataset=ds, progress=False, resume=True)


def test_run_folder_records_config_versions_and_metrics(
    tmp_path: Path,
) -> None:
    ds = synthetic_dataset(200, 50, 50)
    train(Config(epochs=1, seed=7, **SMALL), tmp_path, dataset=ds,
          progress=False)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["seed"] == 7 and config["lr"] == 3e-3
    env = json.loads((tmp_path / "environment.json").read_text())
    assert env["sessions"][0]["versions"]["torch"] == torch.__version__
    assert not list(tmp_path.glob("*.tmp"))


def test_checkpoint_round_trip_gives_the_same_model(tmp_path: Path) -> None:
    ds = synthetic_dataset(200, 50, 50)
    train(Config(epochs=1, **SMALL), tmp_path, dataset=ds, progress=False)
    model, config = runfolder.load_model(tmp_path)
    assert config.hidden == 64 and not model.training
    _, tensors, _ = runfolder.read_checkpoint(tmp_path)
    for k, v in model.state_dict().items():
        assert torch.equal(v, tensors["model." + k])
    x = ds.test.images[:5]
    mean, var = model.infer(x)
    assert mean.shape == (5, 2) and (var > 0).all()


def test_a_folder_in_use_is_refused(tmp_path: Path) -> None:
    ds = synthetic_dataset(200, 50, 50)
    # flock conflicts between two open file descriptions even within one
    # process, so holding the lock here stands in for another process.
    with runfolder.lock(tmp_path):
        with pytest.raises(VaelabError, match="in use") as e:
            train(Config(epochs=1, **SMALL), tmp_path, dataset=ds,
                  progress=False)
    assert "\n" not in str(e.value)
    assert not (tmp_path / "config.json").exists()
    # Released with the block: the same call now trains.
    train(Config(epochs=1, **SMALL), tmp_path, dataset=ds, progress=False)
    assert len(read_metrics(tmp_path)) == 1


def test_train_images_is_used_and_kept_on_resume(tmp_path: Path) -> None:
    ds = synthetic_dataset(300, 50, 50)
    cfg = Config(epochs=1, train_images=120, **SMALL)
    train(cfg, tmp_path, dataset=ds, progress=False)
    stored = runfolder.load_config(tmp_path)
    assert stored.train_images == 120
    assert runfolder.load_config(str(tmp_path)) == stored  # a str folder
    # Resume from the stored config, as ``vaelab train --resume`` does.
    stored.epochs = 2
    train(stored, tmp_path, dataset=ds, progress=False, resume=True)
    assert [m["images"] for m in read_metrics(tmp_path)] == [120, 120]


def test_stop_reason_counts_epochs_since_the_best() -> None:
    def hist(vals):
        return [{"epoch": i + 1, "val_elbo": v} for i, v in enumerate(vals)]

    assert train_module.stop_reason(hist([1, 2, 3]), 2) is None
    assert train_module.stop_reason(hist([1, 3, 2]), 2) is None
    reason = train_module.stop_reason(hist([1, 3, 2, 3]), 2)
    assert reason is not None and "epoch 2" in reason  # ties keep the first
    assert train_module.stop_reason(hist([1, 3, 2, 3]), None) is None
    assert train_module.stop_reason(hist([]), 1) is None
    # Epochs before ``first`` (a mixture's fit epoch) are no candidates:
    # the best is epoch 3's 2, one epoch ago.
    assert train_module.stop_reason(hist([5, 1, 2, 1]), 2, first=3) is None
    assert "epoch 3" in train_module.stop_reason(hist([5, 1, 2, 1, 1]), 2,
                                                 first=3)


def test_patience_stops_keeps_the_best_and_resumes_exactly(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ds = synthetic_dataset(300, 100, 100)
    # The validation ELBO stops improving after epoch 3 (made so here:
    # later epochs validate lower), so patience 2 stops after epoch 5.
    real = Amortized.validate
    epochs_seen: list[int] = []

    def worse_after_3(self, images):
        out = dict(real(self, images))
        epochs_seen.append(1)
        if len(epochs_seen) > 3:
            out["elbo"] -= 1000.0 * len(epochs_seen)
        return out

    monkeypatch.setattr(Amortized, "validate", worse_after_3)
    cfg = Config(epochs=20, patience=2, **SMALL)
    results = train(cfg, tmp_path / "a", dataset=ds, progress=False)
    metrics = read_metrics(tmp_path / "a")
    assert [m["epoch"] for m in metrics] == [1, 2, 3, 4, 5]
    assert "stop" in metrics[-1] and "epoch 3" in metrics[-1]["stop"]
    assert results["converged"] and results["model_epoch"] == 3
    best_epoch, best, _ = runfolder.read_checkpoint(tmp_path / "a",
                                                    best=True)
    assert best_epoch == 3
    model, _ = runfolder.load_model(tmp_path / "a")
    assert all(torch.equal(v, best["model." + k])
               for k, v in model.state_dict().items())
    # A stopped run stays stopped when resumed, even with more epochs.
    epochs_seen.clear()
    cfg.epochs = 30
    train(cfg, tmp_path / "a", dataset=ds, progress=False, resume=True)
    assert len(read_metrics(tmp_path / "a")) == 5


def test_learning_rate_warms_up_then_decays_to_zero() -> None:
    lr = train_module.learning_rate
    spe = 10  # steps per epoch; 5 epochs = 50 steps, 1 of warm-up
    for schedule in ("cosine", "linear"):
        c = Config(epochs=5, warmup_epochs=1, lr_schedule=schedule,
                   lr=1e-3).resolved()
        assert lr(c, 0, spe) == pytest.approx(1e-4)  # 1/10 of the peak
        assert lr(c, 9, spe) == pytest.approx(1e-3)  # warm-up's end
        assert lr(c, 10, spe) == pytest.approx(1e-3)  # decay's start
        assert lr(c, 30, spe) == pytest.approx(5e-4)  # halfway: half
        assert 0 < lr(c, 49, spe) < 1e-3 / 30  # last step: near 0
        assert lr(c, 50, spe) == 0.0  # the run's end
        rates = [lr(c, s, spe) for s in range(50)]
        assert rates[9:] == sorted(rates[9:], reverse=True)
    const = Config(epochs=5, lr_schedule="constant", lr=1e-3,
                   warmup_epochs=0).resolved()
    assert {lr(const, s, spe) for s in range(50)} == {1e-3}
    # exponential: halved every lr_half_life epochs, whatever the length
    for epochs in (5, 50):
        exp = Config(epochs=epochs, lr_schedule="exponential",
                     lr_half_life=2, warmup_epochs=1, lr=1e-3).resolved()
        assert lr(exp, 0, spe) == pytest.approx(1e-4)
        assert lr(exp, 10, spe) == pytest.approx(1e-3)
        assert lr(exp, 30, spe) == pytest.approx(5e-4)
        assert lr(exp, 50, spe) == pytest.approx(2.5e-4)
    # the default: exponential after a warm-up of one epoch
    default = Config(epochs=5, lr=1e-3).resolved()
    assert default.lr_schedule == "exponential"
    assert default.warmup_epochs == 1
    assert lr(default, 0, spe) == pytest.approx(1e-4)
    assert lr(default, 10, spe) == pytest.approx(1e-3)
    assert lr(default, 10 + 10 * default.lr_half_life, spe) == (
        pytest.approx(5e-4))
    with pytest.raises(ConfigError, match="warmup_epochs"):
        Config(epochs=2, warmup_epochs=3).resolved()
    with pytest.raises(ConfigError, match="warmup_epochs"):
        Config(warmup_epochs=-1).resolved()


def test_time_epoch_times_a_fresh_model_and_leaves_no_trace(
    tmp_path, monkeypatch
):
    # The cost unit of `vaelab run`: an epoch of a fresh model, timed and
    # scaled to the whole training set; no file, no global RNG draw.
    monkeypatch.chdir(tmp_path)
    data = synthetic_dataset(n_train=400)
    config = Config(hidden=16, batch_size=50)
    state = torch.random.get_rng_state()
    whole = train_module.time_epoch(config, data, warmup=50)
    part = train_module.time_epoch(config, data, images=100, warmup=50)
    assert whole > 0 and part > 0
    assert torch.equal(torch.random.get_rng_state(), state)
    assert list(tmp_path.iterdir()) == []


def test_a_cuda_run_resumed_on_the_cpu_says_so(tmp_path: Path) -> None:
    """A CUDA generator's state (16 bytes) cannot drive the CPU's: one
    line naming the device to resume on, nothing changed."""
    ds = synthetic_dataset(120, 40, 40)
    train(Config(epochs=1, **SMALL), tmp_path, dataset=ds, progress=False)
    path = edit_checkpoint(tmp_path, lambda t, m: t.update(
        {"rng.train": torch.zeros(16, dtype=torch.uint8)}))
    before = path.read_bytes()
    with pytest.raises(VaelabError, match="trained on CUDA.*--device cuda"):
        train(Config(epochs=2, **SMALL), tmp_path, dataset=ds,
              progress=False, resume=True)
    assert path.read_bytes() == before
