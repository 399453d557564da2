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
import os
import socket
import stat
import time
import urllib.parse
from pathlib import Path
from typing import Any

from vaelab import folders
from vaelab.errors import ConfigError
from vaelab.evaluation.evaluate import Evaluation
from vaelab.training import readers, runfolder

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
    # The folder resolved, not the file: a link planted at mlflow.db is
    # refused by check_uri, never followed to where it points.
    return f"sqlite:///{Path(out).resolve() / 'mlflow.db'}"


# Bounds of one HTTP request to a tracking server (MLflow's defaults
# retry for minutes): set unless the user set them.
HTTP_ENV = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
            "MLFLOW_HTTP_REQUEST_TIMEOUT": "20"}
CONNECT_SECONDS = 5.0
SQLITE_MAGIC = b"SQLite format 3\x00"
DATABASES = ("postgresql", "mysql", "mssql")


def cause(error: BaseException) -> str:
    """An exception of MLflow (or SQLAlchemy, or HTTP) as a short text:
    its type and its message's first line."""
    text = (str(error).strip().splitlines() or [""])[0][:200]
    return f"{type(error).__name__}: {text}" if text else type(
        error).__name__


def check_uri(uri: str) -> None:
    """A ConfigError, one line naming ``uri`` and the cause, for a
    tracking URI that cannot work, checked without MLflow: an unknown
    scheme, a file store (MLflow 3 wants a database), a server where
    nothing answers, an SQLite path in a missing or unwritable folder,
    or one that is a link, a folder or not an SQLite database."""
    parsed = urllib.parse.urlparse(uri)
    scheme = parsed.scheme.split("+")[0].lower()

    def fail(why: str) -> ConfigError:
        return ConfigError(f"--mlflow {uri}: {why}")

    if scheme in ("http", "https"):
        try:
            port = parsed.port or (443 if scheme == "https" else 80)
        except ValueError:
            raise fail("its port is not a number") from None
        if not parsed.hostname:
            raise fail("no host")
        try:
            socket.create_connection((parsed.hostname, port),
                                     timeout=CONNECT_SECONDS).close()
        except OSError as e:
            raise fail(f"nothing answers at {parsed.hostname}:{port} "
                       f"({e.strerror or e})") from None
    elif scheme == "sqlite":
        _check_sqlite(uri, fail)
    elif scheme in ("", "file") or len(scheme) == 1:  # C:\ is a path
        raise fail("a file store (a folder); MLflow 3 takes a database: "
                   "sqlite:///PATH/mlflow.db, or http(s)://HOST:PORT")
    elif scheme not in DATABASES:
        raise fail(f"unknown scheme {scheme!r}; use sqlite:///PATH, "
                   "http(s)://HOST:PORT or a database URI")


def _check_sqlite(uri: str, fail: Any) -> None:
    if "://" not in uri:
        raise fail("expected sqlite:///PATH")
    rest = uri.split("://", 1)[1].split("?", 1)[0]
    if rest in ("", "/", "/:memory:"):
        return  # an in-memory database
    if not rest.startswith("/"):
        raise fail("expected sqlite:///PATH")
    path = Path(rest[1:] or ".")
    folder = path.parent
    if not folder.is_dir():
        raise fail(f"the folder {folder} does not exist")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise fail(f"the folder {folder} is not writable")
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return  # MLflow creates it
    if stat.S_ISLNK(st.st_mode):
        raise fail(f"{path} is a symbolic link; MLflow would write the "
                   "file it points to: remove it")
    if stat.S_ISDIR(st.st_mode):
        raise fail(f"{path} is a folder, not a database")
    if not stat.S_ISREG(st.st_mode):
        raise fail(f"{path} is not a regular file")
    if st.st_nlink > 1:
        raise fail(f"{path} has more than one hard link; MLflow would "
                   "change the file it shares")
    if st.st_size > 0:
        head = folders.read_regular(path)[:len(SQLITE_MAGIC)]
        if head != SQLITE_MAGIC:
            raise fail(f"{path} is not an SQLite database")
    if not os.access(path, os.W_OK):
        raise fail(f"{path} is not writable")


def open_tracker(uri: str, out: Path) -> Tracker:
    """The sweep's Tracker at ``uri`` (``check_uri``, then opened: its
    experiment found or created), or one line naming the URI and the
    cause: before any run starts."""
    import_mlflow()
    if uri == default_uri(out):
        runfolder.make_folder(Path(out))
    check_uri(uri)
    for key, value in HTTP_ENV.items():
        os.environ.setdefault(key, value)
    try:
        return Tracker(uri, out)
    except Exception as e:  # noqa: BLE001 (MLflow's, SQLAlchemy's, HTTP)
        raise ConfigError(f"--mlflow {uri}: cannot open the tracking "
                          f"store ({cause(e)})") from None


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
        ev = Evaluation.read(run_dir)
        history = runfolder.read_metrics(run_dir)
        key = json.dumps([str(run_dir.resolve()), len(history),
                          ev.n_images, ev.k])
        found = self.client.search_runs(
            [self.experiment],
            filter_string=f"tags.vaelab_key = '{_quoted(key)}'",
            max_results=1)
        if found:
            return False
        config = runfolder.load_config(run_dir).to_dict()
        results = readers.read_results(run_dir)
        now = int(time.time() * 1000)
        metrics = [Metric(k, float(m[k]), now, int(m["epoch"]))
                   for m in history for k in EPOCH_KEYS
                   if m.get(k) is not None]
        final = {
            "test_elbo": (results.get("test") or {}).get("elbo"),
            "train_seconds": results.get("train_seconds"),
            "eval_elbo": ev.elbo.value,
            "eval_iwae": ev.iwae.value,
            "eval_log_px": ev.log_px.value if ev.log_px else None,
            "eval_purity": ev.clusters.purity if ev.clusters else None,
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
