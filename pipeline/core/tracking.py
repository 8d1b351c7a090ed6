"""Experiment tracking, off by default: the competition key `tracking: none | mlflow | wandb`.

- mlflow: one run per model x fold (`<model>/fold<k>`) and one per ensemble, in an experiment named after
  the competition's data folder. The store is `tracking_uri`, else MLFLOW_TRACKING_URI, else
  `sqlite:///mlruns.db` in the current folder: a real database that needs no server.
- wandb: the same runs (project = the competition's data folder, group = the model); `tracking_uri:
  offline` (or WANDB_MODE=offline) writes them under ./wandb for a later `wandb sync`.

A fold logs its resolved config as parameters, each epoch's log.csv row as metrics, and done.json,
log.csv, config.yaml and oof.parquet as artifacts; an ensemble logs every model's and blend's CV, the chosen
blend, and cv.md, cv.json and the submission. Tracking never costs a training: after the first failure
of the tracking service a tracker warns once and does nothing more. A missing package is an error before
any work, naming the extra (`pip install -e '.[tracking]'`).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from pipeline.core.errors import ConfigError

DEFAULT_MLFLOW_URI = "sqlite:///mlruns.db"


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
            print(f"warning: tracking ({type(self).__name__}) failed and is off for this run: "
                  f"{type(e).__name__}: {e}", file=sys.stderr)
            return None


def _numbers(row: dict) -> dict[str, float]:
    return {k: float(v) for k, v in row.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


class MlflowTracker(_Service):
    def __init__(self, uri: str | None, experiment: str, name: str, params: dict, tags: dict):
        import mlflow

        self.mlflow = mlflow
        uri = uri or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_MLFLOW_URI
        self._call(self._start, uri, experiment, name, params, tags)

    def _start(self, uri, experiment, name, params, tags):
        self.mlflow.set_tracking_uri(uri)
        self.mlflow.set_experiment(experiment)
        self.mlflow.start_run(run_name=name, tags=tags)
        self.mlflow.log_params({k: json.dumps(v)[:500] if not isinstance(v, str) else v[:500]
                                for k, v in params.items()})

    def log_metrics(self, row: dict, step: int) -> None:
        self._call(self.mlflow.log_metrics, _numbers(row), step=step)

    def log_artifacts(self, paths: list[Path]) -> None:
        for path in paths:
            if Path(path).is_file():
                self._call(self.mlflow.log_artifact, str(path))

    def end(self) -> None:
        self._call(self.mlflow.end_run)


class WandbTracker(_Service):
    def __init__(self, uri: str | None, experiment: str, name: str, params: dict, tags: dict):
        import wandb

        mode = "offline" if uri == "offline" else None
        self.run = self._call(wandb.init, project=experiment, group=tags.get("model"), name=name, config=params,
                              tags=[f"{k}:{v}" for k, v in tags.items()], mode=mode, dir=".", reinit=True)
        self.broken = self.broken or self.run is None

    def log_metrics(self, row: dict, step: int) -> None:
        self._call(self.run.log, _numbers(row), step=step)

    def log_artifacts(self, paths: list[Path]) -> None:
        """Copies in the run's folder, which W&B uploads (wandb.save would link to files that move)."""
        import shutil

        for path in paths:
            if Path(path).is_file():
                self._call(shutil.copy2, path, Path(self.run.dir) / Path(path).name)

    def end(self) -> None:
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
