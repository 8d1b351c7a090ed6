"""Experiment tracking: MLflow into a SQLite store read back with MLflow's own client; W&B offline."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pandas as pd
import pytest

from tests.conftest import TINY_MODEL, make_competition, run_cli, write_yaml


def setup(root, **config):
    make_competition(root, n_train=30, n_test=6, models_dir="models", **config)
    write_yaml(root / "models" / "tiny.yaml", {**TINY_MODEL, "epochs": 2})
    run_cli("folds", "-c", "competition.yaml", cwd=root)


@pytest.mark.slow
def test_mlflow_logs_each_fold_and_the_ensemble_into_sqlite(tmp_path):
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlruns.db'}"
    setup(tmp_path, tracking="mlflow", tracking_uri=uri)
    for k in range(3):
        run_cli("train", "-c", "competition.yaml", "--model", "tiny", "--fold", str(k), cwd=tmp_path)
    run_cli("predict", "-c", "competition.yaml", cwd=tmp_path)
    run_cli("ensemble", "-c", "competition.yaml", cwd=tmp_path)

    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name("tiny")
    runs = {r.info.run_name: r for r in client.search_runs([experiment.experiment_id])}
    assert {"tiny/fold0", "tiny/fold1", "tiny/fold2", "ensemble"} <= set(runs)
    fold0 = runs["tiny/fold0"]
    assert fold0.data.tags["model"] == "tiny" and fold0.data.tags["fold"] == "0"
    assert json.loads(fold0.data.params["lr"]) == TINY_MODEL["lr"]
    log = pd.read_csv(tmp_path / "runs" / "tiny" / "fold0" / "log.csv")
    for column in ("val_loss", "accuracy", "lr", "train_loss"):
        history = [m.value for m in sorted(client.get_metric_history(fold0.info.run_id, column), key=lambda m: m.step)]
        assert history == pytest.approx(log[column].tolist()), column
    artifacts = {a.path for a in client.list_artifacts(fold0.info.run_id)}
    assert {"done.json", "log.csv", "config.yaml", "oof.parquet"} <= artifacts
    cv = json.loads((tmp_path / "submissions" / "cv.json").read_text())
    logged = runs["ensemble"].data.metrics
    assert logged["cv/chosen"] == pytest.approx(cv["blends"][cv["chosen"]]["cv"])
    for name, entry in cv["blends"].items():
        if entry.get("cv") is not None:
            assert logged[f"cv/{name}"] == pytest.approx(entry["cv"])
    assert runs["ensemble"].data.params["chosen"] == cv["chosen"]


@pytest.mark.slow
def test_wandb_offline_writes_a_run_with_the_metrics(tmp_path):
    setup(tmp_path, tracking="wandb", tracking_uri="offline")
    run_cli("train", "-c", "competition.yaml", "--model", "tiny", "--fold", "0", cwd=tmp_path,
            env={"WANDB_SILENT": "true", "WANDB_MODE": "offline"})
    offline = list((tmp_path / "wandb").glob("offline-run-*"))
    assert len(offline) == 1
    (records,) = offline[0].glob("*.wandb")  # the run's record log, for `wandb sync`
    data = records.read_bytes()
    assert all(key.encode() in data for key in ("val_loss", "accuracy", "train_loss", "tiny/fold0"))
    files = offline[0] / "files"
    assert (files / "done.json").read_text() == (tmp_path / "runs" / "tiny" / "fold0" / "done.json").read_text()
    assert {"log.csv", "config.yaml", "oof.parquet"} <= {p.name for p in files.iterdir()}


def train_fold(root, env: dict, timeout: float = 150) -> subprocess.CompletedProcess:
    """`train` of fold 0 in a clean environment: HOME is root (no ~/.netrc, no W&B login), `env` on top
    (None removes a variable). The timeout is far below a stalled service's minutes of retries."""
    full = {k: v for k, v in os.environ.items() if not k.startswith(("WANDB_", "MLFLOW_"))}
    full.update(HOME=str(root), WANDB_SILENT="true")
    full.update({k: v for k, v in env.items() if v is not None})
    return subprocess.run([sys.executable, "-m", "pipeline", "train", "-c", "competition.yaml", "--model", "tiny",
                           "--fold", "0"], cwd=root, capture_output=True, text=True, env=full, timeout=timeout)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def assert_warned_once_and_trained(proc, root, message: str) -> None:
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    warnings = [line for line in proc.stderr.splitlines() if line.startswith("warning: tracking")]
    assert len(warnings) == 1 and message in warnings[0] and "the training goes on" in warnings[0], proc.stderr
    assert (root / "runs" / "tiny" / "fold0" / "done.json").is_file()


@pytest.mark.slow
def test_wandb_without_an_api_key_warns_once_and_the_fold_trains(tmp_path):
    """Was: AttributeError 'NoneType' object has no attribute 'log', every fold dead (and a prompt on a tty)."""
    setup(tmp_path, tracking="wandb")
    proc = train_fold(tmp_path, {})
    assert_warned_once_and_trained(proc, tmp_path, "W&B has no API key: set WANDB_API_KEY or run `wandb login`")


@pytest.mark.slow
def test_wandb_server_not_answering_costs_seconds_not_minutes(tmp_path):
    """Was: 90 s of wandb.init retries, then more (the fold's timeout here is 150 s, training included)."""
    setup(tmp_path, tracking="wandb")
    port = free_port()
    proc = train_fold(tmp_path, {"WANDB_API_KEY": "a" * 40, "WANDB_BASE_URL": f"http://127.0.0.1:{port}"})
    assert_warned_once_and_trained(proc, tmp_path, f"the W&B server 127.0.0.1:{port} (WANDB_BASE_URL) cannot be "
                                                   "reached (ConnectionRefusedError")


@pytest.mark.slow
def test_mlflow_server_not_answering_costs_seconds_not_minutes(tmp_path):
    """Was: about 4 minutes of MLflow's HTTP retries per fold before its warning."""
    port = free_port()
    setup(tmp_path, tracking="mlflow", tracking_uri=f"http://127.0.0.1:{port}")
    proc = train_fold(tmp_path, {})
    assert_warned_once_and_trained(proc, tmp_path, f"the MLflow server 127.0.0.1:{port} (competition key "
                                                   "'tracking_uri') cannot be reached")


@pytest.mark.parametrize("uri, problem", [
    ("garbage", "'garbage' is no URI: MLflow would read it as a folder"),
    ("no-such-scheme://nowhere",
     "'no-such-scheme://nowhere' has the scheme no-such-scheme:, which MLflow does not know"),
])
@pytest.mark.slow
def test_a_malformed_mlflow_uri_is_one_line_naming_the_accepted_forms(tmp_path, uri, problem):
    setup(tmp_path, tracking="mlflow", tracking_uri=uri)
    proc = run_cli("train", "-c", "competition.yaml", "--model", "tiny", "--fold", "0", cwd=tmp_path, check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    (line,) = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert f"competition key 'tracking_uri': {problem}" in line
    assert "accepted: sqlite:///path/to/mlruns.db, http(s)://host:port" in line
    assert not (tmp_path / "runs" / "tiny" / "fold0" / "done.json").exists()


@pytest.mark.slow
def test_a_malformed_mlflow_tracking_uri_variable_is_named(tmp_path):
    setup(tmp_path, tracking="mlflow")
    proc = train_fold(tmp_path, {"MLFLOW_TRACKING_URI": "mlruns"})
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert "error: MLFLOW_TRACKING_URI: 'mlruns' is no URI" in proc.stderr


@pytest.mark.slow
def test_no_tracking_logs_nothing_and_loads_no_mlflow(tmp_path):
    """(timm itself imports wandb when it is installed; no W&B run starts, and mlflow stays unloaded.)"""
    setup(tmp_path)
    code = ("import sys, runpy; sys.argv = ['pipeline', 'train', '-c', 'competition.yaml', '--model', 'tiny', "
            "'--fold', '0']\ntry:\n    runpy.run_module('pipeline', run_name='__main__')\nexcept SystemExit:\n    pass\n"
            "print('LOADED', 'mlflow' in sys.modules)")
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True)
    assert "LOADED False" in proc.stdout, proc.stdout + proc.stderr
    assert not (tmp_path / "wandb").exists() and not (tmp_path / "mlruns.db").exists()
