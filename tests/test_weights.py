"""Pretrained weights on a machine with no model hub: a fast, clear failure; `make weights`' stored file
used by `pretrained: true`; `make models` listing timm names with their pretrained tags (no network)."""

from __future__ import annotations

import os
import subprocess
import time

import pytest
import torch

from pipeline.core.config import ConfigError
from pipeline.nn.models import ModelConfig, build_model, head_parameter_names, stored_weights
from tests.conftest import REPO, TINY_MODEL, make_competition, run_cli, write_yaml

MAKE = ["make", "--no-print-directory", "-f", str(REPO / "Makefile"), "COMPETITION=competition.yaml"]
OFFLINE = {"HF_ENDPOINT": "https://hub.invalid"}  # a name that never resolves: no hub, whatever the machine


def test_offline_pretrained_fails_fast_and_names_the_fixes(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_ENDPOINT", OFFLINE["HF_ENDPOINT"])
    cfg = ModelConfig.model_validate({**TINY_MODEL, "backbone": "test_resnet", "pretrained": True})
    started = time.time()
    with pytest.raises(ConfigError) as err:
        build_model(cfg, 3)
    seconds = time.time() - started
    assert seconds < 5, f"took {seconds:.1f}s"  # not the hub's minute of retries
    assert "`make weights`" in str(err.value) and "pretrained: path/to/weights.safetensors" in str(err.value)
    assert "weights/test_resnet.safetensors" in str(err.value)


@pytest.mark.slow
def test_train_offline_with_pretrained_is_one_clear_line(tmp_path):
    make_competition(tmp_path, models_dir="models")
    write_yaml(tmp_path / "models" / "tiny.yaml", {**TINY_MODEL, "pretrained": True})
    run_cli("folds", "-c", "competition.yaml", cwd=tmp_path)
    proc = run_cli("train", "-c", "competition.yaml", "--model", "tiny", "--fold", "0", cwd=tmp_path, check=False,
                   env=OFFLINE)
    assert proc.returncode == 2 and "make weights" in proc.stderr and "Traceback" not in proc.stderr
    weights = subprocess.run([*MAKE, "weights"], cwd=tmp_path, capture_output=True, text=True,
                             env={**os.environ, **OFFLINE})
    assert weights.returncode != 0 and "make weights: needs test_resnet's weights" in weights.stderr
    assert not (tmp_path / "weights").exists()  # nothing half-written


def test_stored_weights_serve_pretrained_true_offline(tmp_path, monkeypatch):
    """What `make weights` leaves (weights/<backbone>.safetensors) is what `pretrained: true` loads."""
    import timm
    from safetensors.torch import save_file

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_ENDPOINT", OFFLINE["HF_ENDPOINT"])
    torch.manual_seed(123)
    source = timm.create_model("test_resnet", pretrained=False)  # stands in for the hub's weights
    path = stored_weights("test_resnet")
    path.parent.mkdir()
    save_file({k: v.contiguous() for k, v in source.state_dict().items()}, str(path))
    cfg = ModelConfig.model_validate({**TINY_MODEL, "backbone": "test_resnet", "in_chans": 3, "pretrained": True})
    model = build_model(cfg, 5)
    head = head_parameter_names(model)
    ours, theirs = model.state_dict(), source.state_dict()
    body = [k for k in ours if k not in head and k in theirs]
    assert body and all(torch.equal(ours[k], theirs[k]) for k in body)
    assert model.get_classifier().out_features == 5  # a fresh head for this competition


@pytest.mark.slow
def test_make_models_lists_pretrained_tags(tmp_path):
    proc = subprocess.run([*MAKE, "models", "PATTERN=test_res*"], cwd=tmp_path, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "test_resnet: test_resnet.r160_in1k" in proc.stdout
    bad = subprocess.run([*MAKE, "models", "PATTERN=nothing_like_this*"], cwd=tmp_path, capture_output=True, text=True)
    assert bad.returncode != 0 and "no timm model matches 'nothing_like_this*'" in bad.stderr
