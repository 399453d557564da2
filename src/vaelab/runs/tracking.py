"""MLflow tracking of a sweep's runs (optional: ``vaelab[mlflow]``).

Each finished run becomes one MLflow run, logged from the sweep's driver
by reading its folder back (config.json as params, metrics.jsonl as
per-epoch metrics, results.json's test ELBO and evaluation.json's
bounds as final metrics), so the workers need no MLflow. A run is logged
once: the tag ``vaelab_key`` (folder, epochs, evaluation's n and k)
marks it, and a rerun of the sweep skips what is there.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from vaelab.errors import ConfigError
from vaelab.training import runfolder

MLFLOW_HINT = "pip install 'vaelab[mlflow]'"
BATCH = 1000  # metrics per log_batch call, MLflow's limit
# Metrics.jsonl's per-epoch values logged (nats per image, seconds).
EPOCH_KEYS = ("train_elbo", "train_log_lik", "train_kl", "val_elbo",
              "val_log_lik", "val_kl", "val_iwae", "seconds")


def import_mlflow() -> Any:
    """The mlflow module, or a one-line ConfigError saying how to get it.
    """
    try:
        import mlflow
    except ImportError:
        raise ConfigError(
            f"--mlflow needs MLflow, which is not installed: {MLFLOW_HINT}"
        ) from None
    return mlflow


def default_uri(out: Path) -> str:
    """A local SQLite store under the sweep folder (DIR/mlflow.db):
    works offline; MLflow 3 refuses its old file store."""
    return f"sqlite:///{(Path(out) / 'mlflow.db').resolve()}"


class Tracker:
    """Logs finished run folders to the experiment named after the sweep
    folder at tracking ``uri``."""

    def __init__(self, uri: str, out: Path) -> None:
        mlflow = import_mlflow()
        from mlflow.entities import Metric, Param, RunTag
        self._entities = Metric, Param, RunTag
        self.client = mlflow.tracking.MlflowClient(tracking_uri=uri)
        name = f"vaelab sweep {Path(out).resolve()}"
        exp = self.client.get_experiment_by_name(name)
        self.experiment = (exp.experiment_id if exp is not None
                           else self.client.create_experiment(name))

    def log(self, run_dir: Path, name: str) -> bool:
        """Log ``run_dir`` (finished and evaluated) as MLflow run
        ``name``, unless it is logged already; True when logged."""
        Metric, Param, RunTag = self._entities
        ev = runfolder.read_json(run_dir / runfolder.EVALUATION)
        history = runfolder.read_metrics(run_dir)
        key = json.dumps([str(run_dir.resolve()), len(history),
                          ev.get("n_images"), ev.get("k")])
        found = self.client.search_runs(
            [self.experiment],
            filter_string=f"tags.vaelab_key = '{_quoted(key)}'",
            max_results=1)
        if found:
            return False
        config = runfolder.read_json(run_dir / runfolder.CONFIG)
        results = runfolder.read_json(run_dir / runfolder.RESULTS)
        now = int(time.time() * 1000)
        metrics = [Metric(k, float(m[k]), now, int(m["epoch"]))
                   for m in history for k in EPOCH_KEYS
                   if m.get(k) is not None]
        final = {
            "test_elbo": (results.get("test") or {}).get("elbo"),
            "train_seconds": results.get("train_seconds"),
            "eval_elbo": ev.get("elbo"),
            "eval_iwae": (ev.get("iwae") or {}).get("value"),
            "eval_log_px": (ev.get("log_px") or {}).get("value"),
            "eval_purity": (ev.get("clusters") or {}).get("purity"),
        }
        metrics += [Metric(k, float(v), now, len(history))
                    for k, v in final.items() if v is not None]
        run = self.client.create_run(self.experiment, run_name=name,
                                     tags={"vaelab_key": key})
        self.client.log_batch(
            run.info.run_id,
            params=[Param(k, str(v)) for k, v in config.items()],
            tags=[RunTag("vaelab_run_dir", str(run_dir.resolve()))])
        for i in range(0, len(metrics), BATCH):  # MLflow's batch limit
            self.client.log_batch(run.info.run_id,
                                  metrics=metrics[i:i + BATCH])
        self.client.set_terminated(run.info.run_id)
        return True


def _quoted(text: str) -> str:
    return text.replace("\\", "\\\\").replace("'", "\\'")
