"""Experiment tracking, off by default: the competition key `tracking: none | mlflow | wandb`.

- mlflow: one run per model x fold (`<model>/fold<k>`) and one per ensemble, in an experiment named after
  the competition's data folder. The store is `tracking_uri`, else MLFLOW_TRACKING_URI, else
  `sqlite:///mlruns.db` in the current folder: a real database that needs no server.
- wandb: the same runs (project = the competition's data folder, group = the model); `tracking_uri:
  offline` (or WANDB_MODE=offline) writes them under ./wandb for a later `wandb sync`.

A fold logs its resolved config as parameters, each epoch's log.csv row as metrics, and done.json,
log.csv, config.yaml and oof.parquet as artifacts; an ensemble logs every model's and blend's CV, the chosen
blend, and cv.md, cv.json and the submission. Tracking never costs a training: after the first failure
of the tracking service a tracker warns once and does nothing more. A server is probed first (a TCP
connection, at most PROBE_SECONDS), so one that does not answer costs seconds, not MLflow's or W&B's minutes
of retries; MLflow's HTTP requests are bounded too (MLFLOW_HTTP_REQUEST_TIMEOUT / _MAX_RETRIES, unless set),
and W&B's start (init_timeout, unless WANDB_INIT_TIMEOUT is set). W&B without an API key never prompts.
A missing package, or an MLflow URI of a form MLflow does not accept, is an error before any work.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import threading
from pathlib import Path
from urllib.parse import urlsplit

from pipeline.core.errors import ConfigError, PipelineError

DEFAULT_MLFLOW_URI = "sqlite:///mlruns.db"
PROBE_SECONDS = 5.0  # the most a tracking server that does not answer costs a process
WANDB_INIT_SECONDS = 30  # W&B's own start, once its server answered (its default is 90 s, then retries)
MLFLOW_HTTP_DEFAULTS = {"MLFLOW_HTTP_REQUEST_TIMEOUT": "10", "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1"}
DB_PORTS = {"http": 80, "https": 443, "postgresql": 5432, "mysql": 3306, "mssql": 1433}
MLFLOW_FORMS = ("sqlite:///path/to/mlruns.db, http(s)://host:port (an MLflow server), "
                "postgresql://, mysql:// or mssql://user@host/db, databricks")


class TrackingUnavailable(PipelineError):
    """The tracking service cannot be used now (no answer, no credentials); the message says why."""


def tcp_error(host: str, port: int, seconds: float = PROBE_SECONDS) -> str | None:
    """Why a TCP connection to host:port does not open within `seconds` (name resolution included: it
    runs in a thread that is given up on); None when it opens."""
    outcome: list = []

    def connect():
        try:
            socket.create_connection((host, port), timeout=seconds).close()
            outcome.append(None)
        except OSError as e:
            outcome.append(e)

    thread = threading.Thread(target=connect, daemon=True)
    thread.start()
    thread.join(seconds + 0.5)
    if not outcome:
        return f"no answer within {seconds:g} s"
    e = outcome[0]
    return None if e is None else f"{type(e).__name__}: {e.strerror or e}"


def reachable(url: str, what: str, where: str = "") -> None:
    """Raise TrackingUnavailable unless a TCP connection to url's host opens within PROBE_SECONDS."""
    parts = urlsplit(url)
    host = parts.hostname
    try:
        port = parts.port or DB_PORTS.get(parts.scheme.split("+")[0])
    except ValueError:
        port = None
    if host and port:
        why = tcp_error(host, port)
        if why:
            raise TrackingUnavailable(f"{what} {host}:{port}{where} cannot be reached ({why})")


def check_mlflow_uri(uri: str, source: str) -> None:
    """ConfigError unless `uri` has a form MLflow accepts; `source` names where it came from."""
    flag = os.environ.get("MLFLOW_ALLOW_FILE_STORE", "").lower() in ("1", "true", "yes")
    parts = urlsplit(uri)
    scheme = parts.scheme.split("+")[0].lower()
    if len(scheme) == 1:  # a Windows drive letter: a folder path
        scheme = ""
    problem = None
    if scheme in ("", "file"):
        if uri in ("databricks", "databricks-uc", "uc"):
            return
        if not flag:
            problem = (("is MLflow's file store," if scheme else "is no URI: MLflow would read it as a folder, its "
                        "file store,") + " which MLflow 3 refuses unless MLFLOW_ALLOW_FILE_STORE=true")
    elif scheme == "sqlite":
        if not uri.lower().startswith(("sqlite:///", "sqlite+")) or parts.path in ("", "/"):
            problem = "is not sqlite:///<file> (three slashes, then a relative path; four for an absolute one)"
    elif scheme in ("http", "https", "postgresql", "mysql", "mssql"):
        if not parts.hostname:
            problem = f"names no host ({scheme}://host:port)"
        else:
            try:
                parts.port
            except ValueError:
                problem = "has a port that is not a number"
    elif scheme in ("databricks", "databricks-uc", "uc"):
        return
    else:
        problem = f"has the scheme {parts.scheme}:, which MLflow does not know"
    if problem:
        raise ConfigError(f"{source}: {uri!r} {problem}; accepted: {MLFLOW_FORMS} "
                          "(null: MLFLOW_TRACKING_URI, else sqlite:///mlruns.db)")


class Tracker:
    """No tracking: every call does nothing. Subclasses talk to a service through `_call`."""

    def log_metrics(self, row: dict, step: int) -> None:
        pass

    def log_artifacts(self, paths: list[Path]) -> None:
        pass

    def end(self) -> None:
        pass


class _Service(Tracker):
    """Calls to a tracking service, which warn once and then stop on the first failure."""

    broken = False

    def _call(self, fn, *args, **kwargs):
        if self.broken:
            return None
        try:
            return fn(*args, **kwargs)
        except Exception as e:  # a tracking service down or misconfigured must not stop a training
            self.broken = True
            why = str(e) if isinstance(e, TrackingUnavailable) else f"{type(e).__name__}: {e}"
            print(f"warning: tracking ({type(self).__name__}) failed and is off for this run; the training goes "
                  f"on: {why}", file=sys.stderr, flush=True)
            return None


def _numbers(row: dict) -> dict[str, float]:
    return {k: float(v) for k, v in row.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


class MlflowTracker(_Service):
    def __init__(self, uri: str | None, experiment: str, name: str, params: dict, tags: dict):
        import mlflow

        self.mlflow = mlflow
        self.run = None
        source = "competition key 'tracking_uri'" if uri else "MLFLOW_TRACKING_URI"
        uri = uri or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_MLFLOW_URI
        check_mlflow_uri(uri, source)
        for key, value in MLFLOW_HTTP_DEFAULTS.items():  # minutes of retries otherwise, for each call
            os.environ.setdefault(key, value)
        self._call(self._start, uri, source, experiment, name, params, tags)

    def _start(self, uri, source, experiment, name, params, tags):
        if urlsplit(uri).hostname:
            reachable(uri, f"the MLflow {'server' if uri.startswith('http') else 'database'}", f" ({source})")
        self.mlflow.set_tracking_uri(uri)
        self.mlflow.set_experiment(experiment)
        self.run = self.mlflow.start_run(run_name=name, tags=tags)
        self.mlflow.log_params({k: json.dumps(v)[:500] if not isinstance(v, str) else v[:500]
                                for k, v in params.items()})

    def log_metrics(self, row: dict, step: int) -> None:
        self._call(self.mlflow.log_metrics, _numbers(row), step=step)

    def log_artifacts(self, paths: list[Path]) -> None:
        for path in paths:
            if Path(path).is_file():
                self._call(self.mlflow.log_artifact, str(path))

    def end(self) -> None:
        if self.run is not None:
            self._call(self.mlflow.end_run)


class WandbTracker(_Service):
    def __init__(self, uri: str | None, experiment: str, name: str, params: dict, tags: dict):
        import wandb

        self.wandb, self.run = wandb, None
        mode = "offline" if uri == "offline" else None
        self.run = self._call(self._start, project=experiment, group=tags.get("model"), name=name,
                              config=params, tags=[f"{k}:{v}" for k, v in tags.items()], mode=mode, dir=".",
                              reinit="finish_previous")
        self.broken = self.broken or self.run is None

    def _start(self, **init):
        """wandb.init, once an online run has an API key (no prompt) and its server answers."""
        wandb = self.wandb
        settings = wandb.setup().settings
        if init["mode"] is None and settings.mode not in ("offline", "dryrun", "disabled"):
            if not wandb.login(prompt=False, verify=False):
                raise TrackingUnavailable(
                    "W&B has no API key: set WANDB_API_KEY or run `wandb login` (or log without a network: "
                    "competition key tracking_uri: offline, or WANDB_MODE=offline)")
            reachable(settings.base_url, "the W&B server", " (WANDB_BASE_URL)")
        if "WANDB_INIT_TIMEOUT" not in os.environ:
            init["settings"] = wandb.Settings(init_timeout=WANDB_INIT_SECONDS)
        return wandb.init(**init)

    def log_metrics(self, row: dict, step: int) -> None:
        if self.run is not None:
            self._call(self.run.log, _numbers(row), step=step)

    def log_artifacts(self, paths: list[Path]) -> None:
        """Copies in the run's folder, which W&B uploads (wandb.save would link to files that move)."""
        import shutil

        for path in paths:
            if Path(path).is_file() and self.run is not None:
                self._call(shutil.copy2, path, Path(self.run.dir) / Path(path).name)

    def end(self) -> None:
        if self.run is not None:
            self._call(self.run.finish)


TRACKERS = {"mlflow": (MlflowTracker, "mlflow"), "wandb": (WandbTracker, "wandb")}


def open_tracker(kind: str, uri: str | None, experiment: str, name: str, params: dict, tags: dict) -> Tracker:
    """A started tracker for `kind` ('none': one that does nothing)."""
    if kind == "none":
        return Tracker()
    cls, package = TRACKERS[kind]
    try:
        __import__(package)
    except ImportError:
        raise ConfigError(f"competition key 'tracking': {kind} needs the {package} package: "
                          "pip install -e '.[tracking]' (make install includes it)") from None
    return cls(uri, experiment, name, params, tags)


def competition_tracker(comp, name: str, params: dict, tags: dict) -> Tracker:
    """The tracker the competition config asks for, its experiment named after the data folder."""
    experiment = Path(comp.data_dir).resolve().name
    return open_tracker(comp.tracking, comp.tracking_uri, experiment, name, params, {"competition": experiment,
                                                                                    **tags})
