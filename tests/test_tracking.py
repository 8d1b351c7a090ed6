"""Experiment tracking: MLflow into a SQLite store read back with MLflow's own client; W&B offline."""

from __future__ import annotations

import json
import subprocess
import sys

import pandas as pd
import pytest

from tests.conftest import TINY_MODEL, make_competition, run_cli, write_yaml


def setup(root, **config):
    make_competition(root, n_train=30, n_test=6, models_dir="models", **config)
    write_yaml(root / "models" / "tiny.yaml", {**TINY_MODEL, "epochs": 2})
    run_cli("folds", "-c", "competition.yaml", cwd=root)


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


def test_a_broken_tracking_store_warns_and_training_finishes(tmp_path):
    setup(tmp_path, tracking="mlflow", tracking_uri="no-such-scheme://nowhere")
    proc = run_cli("train", "-c", "competition.yaml", "--model", "tiny", "--fold", "0", cwd=tmp_path)
    assert "warning: tracking (MlflowTracker) failed" in proc.stderr
    assert (tmp_path / "runs" / "tiny" / "fold0" / "done.json").is_file()


def test_no_tracking_logs_nothing_and_loads_no_mlflow(tmp_path):
    """(timm itself imports wandb when it is installed; no W&B run starts, and mlflow stays unloaded.)"""
    setup(tmp_path)
    code = ("import sys, runpy; sys.argv = ['pipeline', 'train', '-c', 'competition.yaml', '--model', 'tiny', "
            "'--fold', '0']\ntry:\n    runpy.run_module('pipeline', run_name='__main__')\nexcept SystemExit:\n    pass\n"
            "print('LOADED', 'mlflow' in sys.modules)")
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True)
    assert "LOADED False" in proc.stdout, proc.stdout + proc.stderr
    assert not (tmp_path / "wandb").exists() and not (tmp_path / "mlruns.db").exists()
