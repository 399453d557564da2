"""Tests for vaelab.runs.aggregate: the intervals and paired differences
against a hand computation with scipy.stats.t, and the written files."""

from __future__ import annotations

import math

import pytest
from scipy import stats

from vaelab.runs import aggregate
from vaelab.training import runfolder

SETTINGS = [{"name": "lr=0.001", "values": {"lr": 0.001}},
            {"name": "lr=0.003", "values": {"lr": 0.003}}]
ELBOS = {("lr=0.001", 0): -100.0, ("lr=0.001", 1): -98.0,
         ("lr=0.001", 2): -101.0, ("lr=0.003", 0): -97.0,
         ("lr=0.003", 1): -96.5, ("lr=0.003", 2): -99.0,
         }


def rows() -> list[dict]:
    return [{"setting": s, "seed": seed, "run_dir": f"{s}/seed-{seed}",
             "test_elbo": v, "iwae": v + 1.0, "log_px": None,
             "purity": None, "accuracy": None, "train_seconds": 2.0,
             "eval_images": 100, "eval_k": 5}
            for (s, seed), v in ELBOS.items()]


def by_hand(x: list[float]) -> tuple[float, float, float, float]:
    n = len(x)
    mean = sum(x) / n
    sd = math.sqrt(sum((v - mean) ** 2 for v in x) / (n - 1))
    half = stats.t.ppf(0.975, n - 1) * sd / math.sqrt(n)
    return mean, sd, mean - half, mean + half


def test_interval_over_seeds() -> None:
    result = aggregate.aggregate(SETTINGS, rows())
    first = result["settings"][0]
    assert first["seeds"] == [0, 1, 2]
    st = first["metrics"]["test_elbo"]
    mean, sd, lo, hi = by_hand([-100.0, -98.0, -101.0])
    assert st["n"] == 3
    assert (st["mean"], st["sd"], st["lo"], st["hi"]) == pytest.approx(
        (mean, sd, lo, hi), rel=1e-12)
    assert first["metrics"]["log_px"]["n"] == 0  # none of the runs has it
    assert first["metrics"]["train_seconds"]["lo"] == 2.0  # sd 0


def test_paired_difference() -> None:
    (pair,) = aggregate.aggregate(SETTINGS, rows())["paired"]
    assert (pair["a"], pair["b"], pair["seeds"]) == (
        "lr=0.001", "lr=0.003", [0, 1, 2])
    d = [ELBOS["lr=0.003", s] - ELBOS["lr=0.001", s] for s in range(3)]
    st = pair["metrics"]["test_elbo"]
    assert (st["mean"], st["sd"], st["lo"], st["hi"]) == pytest.approx(
        by_hand(d), rel=1e-12)
    # The paired interval is narrower than the unpaired one here: the
    # seeds' shared part cancels.
    assert st["hi"] - st["lo"] < 6.0
    assert "log_px" not in pair["metrics"]


def test_unshared_seeds_and_one_seed() -> None:
    r = [x for x in rows() if not (x["setting"] == "lr=0.003"
                                   and x["seed"] > 0)]
    result = aggregate.aggregate(SETTINGS, r)
    assert result["paired"] == []  # one seed in common: no interval
    st = result["settings"][1]["metrics"]["test_elbo"]
    assert (st["n"], st["mean"], st["sd"], st["lo"]) == (1, -97.0, None,
                                                        None)


def test_write_aggregate(tmp_path) -> None:
    result = aggregate.write_aggregate(tmp_path, SETTINGS, rows(), "cmd")
    assert runfolder.read_json(tmp_path / aggregate.SWEEP_JSON) == result
    html = (tmp_path / aggregate.SWEEP_HTML).read_text()
    assert "lr=0.003 &minus; lr=0.001" in html
    assert "over the first 100 with\nk = 5" in html
    assert "data:image/png;base64," in html
    assert (tmp_path / aggregate.SWEEP_PNG).exists()
