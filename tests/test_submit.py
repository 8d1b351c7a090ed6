"""`submit` against a fake kaggle CLI (KAGGLE_CLI=, a shell script logging every call) with kaggle.com faked
in-process: nothing reaches the network. Also `validate`'s reader, `check`'s tracking settings and the Make
checks of NODE_RANK and KERNEL_VERSION."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from tests.conftest import REPO, make_competition, run_cli, write_yaml

IDS = {"user": "alice", "competition": "tiny-comp", "dataset": "tiny-comp-kfold-bundle",
       "kernel": "tiny-comp-kfold-inference"}
REF = "alice/tiny-comp-kfold-bundle"
MAKE_N = ["make", "-n", "--no-print-directory", "-f", str(REPO / "Makefile")]

FAKE_KAGGLE = """#!/bin/sh
# a fake kaggle CLI: logs each call, one bracketed argument after another; answers `datasets status`
for a in "$@"; do printf '[%s] ' "$a"; done >> "$FAKE_KAGGLE_LOG"; echo >> "$FAKE_KAGGLE_LOG"
if [ "$1 $2" = "datasets status" ]; then
  case "$FAKE_DATASET" in
    exists) echo ready ;;
    missing) echo "404 Client Error: Not Found for url: https://api.kaggle.com/v1/datasets" >&2; exit 1 ;;
    *) echo "500 Server Error: Internal Server Error for url: https://api.kaggle.com/v1/datasets" >&2; exit 1 ;;
  esac
fi
"""

# kaggle.com "answers" the reachability probe; any other connection is refused: no test reaches the network
FAKE_NETWORK = """import socket
class _Open:
    def close(self):
        pass
def _create_connection(address, *args, **kwargs):
    if address[0] == "www.kaggle.com":
        return _Open()
    raise OSError("network blocked by the test")
_connect = socket.socket.connect
def _guard(self, address):
    if self.family in (socket.AF_INET, socket.AF_INET6):
        raise OSError("network blocked by the test")
    return _connect(self, address)
socket.create_connection = _create_connection
socket.socket.connect = _guard
"""


def write_json(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))


def write_cv(root: Path, chosen: str, blends: dict[str, float], models=("a", "b")) -> None:
    """submissions/cv.json as `ensemble` writes it (the keys submit reads)."""
    write_json(root / "submissions" / "cv.json", {
        "chosen": chosen, "blends": {name: {"cv": cv} for name, cv in blends.items()},
        "models": {m: {"cv": 0.4, "blended": True} for m in models}})


@pytest.fixture
def shipped(tmp_path: Path) -> Path:
    """A tiny competition, ensembled (cv.json chooses mean, submission.csv valid) and packaged: dist/kaggle with
    the files `package` writes that submit reads (the bundle holds the mean of a and b, cv 0.5); code.yaml is the
    same competition as a code competition. Plus a fake kaggle CLI and a fake network under tools/."""
    make_competition(tmp_path, n_train=30, n_test=6)
    comp = yaml.safe_load((tmp_path / "competition.yaml").read_text())
    write_yaml(tmp_path / "code.yaml", {**comp, "code_competition": True})
    sample = pd.read_csv(tmp_path / "data" / "tiny" / "sample_submission.csv", dtype=str, keep_default_na=False)
    (tmp_path / "submissions").mkdir()
    sample.assign(label="c0").to_csv(tmp_path / "submissions" / "submission.csv", index=False)
    write_cv(tmp_path, "mean", {"mean": 0.5, "lgbm": 0.61})
    bundle = tmp_path / "dist" / "kaggle"
    write_json(bundle / "manifest.json", {"method": "mean", "models": ["a", "b"], "kaggle": IDS})
    write_json(bundle / "dataset" / "bundle.json", {"blend": "mean", "kaggle": IDS, "models": []})
    write_json(bundle / "dataset" / "blend.json", {"method": "mean", "models": ["a", "b"], "cv": 0.5})
    (bundle / "kernel").mkdir()
    tools = tmp_path / "tools"
    tools.mkdir()
    (tools / "kaggle").write_text(FAKE_KAGGLE)
    (tools / "kaggle").chmod(0o755)
    (tools / "sitecustomize.py").write_text(FAKE_NETWORK)
    (tmp_path / "home").mkdir()  # no ~/.kaggle: no real credential is ever found
    return tmp_path


def env_for(root: Path, dataset: str | None = None, credentials: bool = True) -> dict:
    """The environment of a submit: the fake CLI and network, fake credentials unless told otherwise, and
    FAKE_DATASET (exists, missing, or anything else: a failing status) for `kaggle datasets status`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("KAGGLE_")}
    env.update(HOME=str(root / "home"), KAGGLE_CLI=str(root / "tools" / "kaggle"),
               FAKE_KAGGLE_LOG=str(root / "kaggle.log"), FAKE_DATASET=dataset or "",
               PYTHONPATH=os.pathsep.join(filter(None, [str(root / "tools"), os.environ.get("PYTHONPATH")])))
    if credentials:
        env.update(KAGGLE_USERNAME="alice", KAGGLE_KEY="not-a-key")
    return env


def submit(root: Path, *args: str, env: dict, config: str = "code.yaml") -> subprocess.CompletedProcess:
    """`python -m pipeline submit` (what `make submit` runs) in exactly `env`, the fake CLI's log emptied first."""
    (root / "kaggle.log").write_text("")
    return subprocess.run([sys.executable, "-m", "pipeline", "submit", "-c", config, "--bundle", "dist/kaggle", *args],
                          cwd=root, capture_output=True, text=True, env=env, timeout=120)


def calls(root: Path) -> list[str]:
    """What the fake CLI was asked, one call a line: `[datasets] [status] [alice/...]`."""
    return [line.strip() for line in (root / "kaggle.log").read_text().splitlines() if line.strip()]


def call(*args: str) -> str:
    return " ".join(f"[{a}]" for a in args)


def shown(proc: subprocess.CompletedProcess, cli: str = "kaggle") -> list[str]:
    """The commands a submit printed (`$ ...`), as the fake CLI logs them."""
    return [call(*shlex.split(line[2:])[1:]) for line in proc.stdout.splitlines()
            if line.startswith("$ ") and shlex.split(line[2:])[0] == cli]


VERSION = call("datasets", "version", "-p", "dist/kaggle/dataset", "--dir-mode", "zip", "-m", "mean cv=0.50000")
CREATE = call("datasets", "create", "-p", "dist/kaggle/dataset", "--dir-mode", "zip")
PUSH = call("kernels", "push", "-p", "dist/kaggle/kernel")
STATUS = call("datasets", "status", REF)


# --- 14a: the label is what the bundle holds -------------------------------------------------------------


@pytest.mark.slow
def test_code_submit_labels_what_the_bundle_holds_not_cv_json(shipped):
    """Was: the dataset version and the kernel's submission labelled with cv.json's blend of the moment."""
    write_cv(shipped, "lgbm", {"mean": 0.5, "lgbm": 0.61})  # an `ensemble` since `package` chose another blend
    proc = submit(shipped, env=env_for(shipped, "exists"))
    assert proc.returncode == 0, proc.stderr
    assert calls(shipped) == [STATUS, VERSION, PUSH]
    note = ("!!! warning: submissions/cv.json now chooses lgbm cv=0.61000 of a, b, but dist/kaggle/ holds mean "
            "cv=0.50000 of a, b: labelled with what the bundle holds, which is what Kaggle runs; `make package` "
            "then `make submit` ships cv.json's")
    assert note in proc.stderr and proc.stderr.count("now chooses") == 1
    run = submit(shipped, "--kernel-version", "3", env=env_for(shipped))
    assert run.returncode == 0, run.stderr
    assert calls(shipped) == [call("competitions", "submit", "-c", "tiny-comp", "-k", "alice/tiny-comp-kfold-inference",
                                   "-v", "3", "-f", "submission.csv", "-m", "mean cv=0.50000")]
    assert note in run.stderr
    write_cv(shipped, "mean", {"mean": 0.5, "lgbm": 0.61})  # the same blend: nothing to say
    same = submit(shipped, env=env_for(shipped, "exists"))
    assert same.returncode == 0 and "now chooses" not in same.stderr and calls(shipped)[1] == VERSION
    write_cv(shipped, "mean", {"mean": 0.55}, models=("a", "b", "c"))  # the same method of other models
    other = submit(shipped, "--dry-run", env=env_for(shipped, credentials=False))
    assert "now chooses mean cv=0.55000 of a, b, c, but dist/kaggle/ holds mean cv=0.50000 of a, b" in other.stderr


def test_code_submit_without_a_bundle_says_make_package(shipped):
    (shipped / "dist" / "kaggle" / "dataset" / "blend.json").unlink()
    proc = submit(shipped, "--dry-run", env=env_for(shipped))
    assert proc.returncode == 2 and "run `make package` first" in proc.stderr and "dist/kaggle/dataset" in proc.stderr
    assert "$ " not in proc.stdout and calls(shipped) == []


# --- 14b: DRY_RUN prints what a real run runs ------------------------------------------------------------


@pytest.mark.parametrize("dataset, upload", [("exists", VERSION), ("missing", CREATE)], ids=["exists", "missing"])
def test_dry_run_prints_the_commands_a_real_run_runs(shipped, dataset, upload):
    """Was: a dry run always printed `datasets create`, where a real run versions the existing dataset."""
    dry = submit(shipped, "--dry-run", env=env_for(shipped, dataset))
    assert dry.returncode == 0, dry.stderr
    assert calls(shipped) == [STATUS]  # asked the read-only question, ran nothing else
    verb = "versions" if dataset == "exists" else "creates"
    assert (f"DRY_RUN: dataset {REF} {'exists' if dataset == 'exists' else 'does not exist'} on Kaggle (kaggle "
            f"datasets status): a real run {verb} it, as below") in dry.stdout
    real = submit(shipped, env=env_for(shipped, dataset))
    assert real.returncode == 0, real.stderr
    assert calls(shipped) == [STATUS, upload, PUSH]
    assert shown(dry) == shown(real, str(shipped / "tools" / "kaggle")) == [upload, PUSH]


def test_dry_run_that_cannot_ask_says_so_and_names_the_other_command(shipped):
    dry = submit(shipped, "--dry-run", env=env_for(shipped, "exists", credentials=False))
    assert dry.returncode == 0, dry.stderr
    assert calls(shipped) == [] and shown(dry) == [CREATE, PUSH]
    assert (f"DRY_RUN: not known whether dataset {REF} exists on Kaggle (not asked: no Kaggle credentials: put "
            "kaggle.json (Account > API > Create New Token) in ~/.kaggle/ (chmod 600), or set KAGGLE_USERNAME and "
            "KAGGLE_KEY); shown: its first upload, `datasets create`; if it exists, a real run runs `kaggle datasets "
            "version -p dist/kaggle/dataset --dir-mode zip -m 'mean cv=0.50000'` instead") in dry.stdout


def test_a_status_that_says_neither_stops_a_real_run_before_any_upload(shipped):
    """Was: any failure of `datasets status` read as 'does not exist': `datasets create` on an existing dataset."""
    real = submit(shipped, env=env_for(shipped, "broken"))
    assert real.returncode == 2 and calls(shipped) == [STATUS] and "$ " not in real.stdout
    assert (f"error: cannot tell whether dataset {REF} exists on Kaggle, so whether to create or version it: "
            f"`kaggle datasets status {REF}` failed (exit 1: 500 Server Error: Internal Server Error for url: "
            "https://api.kaggle.com/v1/datasets); nothing was submitted") in real.stderr
    dry = submit(shipped, "--dry-run", env=env_for(shipped, "broken"))
    assert dry.returncode == 0 and f"DRY_RUN: not known whether dataset {REF} exists on Kaggle (`kaggle" in dry.stdout


# --- 14c: KERNEL_VERSION on a CSV competition --------------------------------------------------------------


@pytest.mark.slow
def test_kernel_version_on_a_csv_competition_is_refused(shipped):
    """Was: KERNEL_VERSION ignored without a word, and the CSV submitted."""
    message = ("error: KERNEL_VERSION=3 (--kernel-version) names a run of a code competition's kernel, but this "
               "competition takes a CSV (competition key code_competition: false): drop KERNEL_VERSION to submit "
               "submissions/submission.csv, or set code_competition: true; nothing was submitted")
    for args in (["--dry-run"], []):
        proc = submit(shipped, "--competition-slug", "tiny-comp", "--kernel-version", "3", *args,
                      env=env_for(shipped, "exists"), config="competition.yaml")
        assert proc.returncode == 2 and message in proc.stderr, proc.stderr
        assert "$ " not in proc.stdout and calls(shipped) == []
    csv = submit(shipped, "--competition-slug", "tiny-comp", env=env_for(shipped), config="competition.yaml")
    assert csv.returncode == 0 and calls(shipped) == [call("competitions", "submit", "-c", "tiny-comp", "-f",
                                                           "submissions/submission.csv", "-m", "mean cv=0.50000")]
    zero = submit(shipped, "--kernel-version", "0", "--dry-run", env=env_for(shipped))
    assert zero.returncode == 2 and "KERNEL_VERSION=0: Kaggle numbers a kernel's versions from 1" in zero.stderr


def test_make_submit_checks_kernel_version_and_passes_kaggle_cli(shipped):
    bad = subprocess.run([*MAKE_N, "submit", "COMPETITION=code.yaml", "KERNEL_VERSION=v3"], cwd=shipped,
                         capture_output=True, text=True)
    assert bad.returncode != 0 and ("KERNEL_VERSION=v3: expected a whole number of at least 1 (the finished version "
                                    "of the pushed kernel to submit)") in bad.stderr
    ok = subprocess.run([*MAKE_N, "submit", "COMPETITION=code.yaml", "KERNEL_VERSION=3", "KAGGLE_CLI=/opt/k b/kaggle"],
                        cwd=shipped, capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    assert "KAGGLE_CLI='/opt/k b/kaggle' " in ok.stdout and "--kernel-version 3\n" in ok.stdout


# --- leftovers: validate's reader, check's tracking, NODE_RANK -----------------------------------------------


def test_validate_reads_through_the_core_reader_and_names_the_file(tiny):
    missing = run_cli("validate", "missing.csv", "-c", "competition.yaml", cwd=tiny, check=False)
    assert missing.returncode == 2
    assert "error: missing.csv: file not found (the submission to check)" in missing.stderr
    (tiny / "bytes.csv").write_bytes(b"image_id,label\n\xff\xfe,c0\n")
    unreadable = run_cli("validate", "bytes.csv", "-c", "competition.yaml", cwd=tiny, check=False)
    assert unreadable.returncode == 2 and "error: bytes.csv: cannot be read as CSV (" in unreadable.stderr


@pytest.mark.slow
def test_check_validates_the_tracking_settings(tmp_path):
    """Was: a malformed MLflow URI passed `make check` and stopped the first fold."""
    make_competition(tmp_path, n_train=30, n_test=6, tracking="mlflow", tracking_uri="sqlite:/mlruns.db")
    bad = run_cli("check", "-c", "competition.yaml", cwd=tmp_path, check=False)
    assert bad.returncode == 2 and "tracking: FAILED" in bad.stdout
    assert ("competition key 'tracking_uri': 'sqlite:/mlruns.db' is not sqlite:///<file> (three slashes, then a "
            "relative path; four for an absolute one); accepted: sqlite:///path/to/mlruns.db") in bad.stderr
    good = run_cli("check", "-c", "competition.yaml", "--comp-args", "tracking_uri=sqlite:///mlruns.db", cwd=tmp_path,
                   check=False)
    assert good.returncode == 0, good.stderr
    assert "tracking: mlflow, sqlite:///mlruns.db (competition key 'tracking_uri')" in good.stdout
    assert not (tmp_path / "mlruns.db").exists()  # nothing was opened
    env = run_cli("check", "-c", "competition.yaml", "--comp-args", "tracking_uri=null", cwd=tmp_path, check=False,
                  env={"MLFLOW_TRACKING_URI": "ftp://host/x"})
    assert env.returncode == 2 and "MLFLOW_TRACKING_URI: 'ftp://host/x' has the scheme ftp:" in env.stderr
    wandb = run_cli("check", "-c", "competition.yaml", "--comp-args", "tracking=wandb tracking_uri=http://host",
                    cwd=tmp_path, check=False)
    assert wandb.returncode == 2
    assert "competition key 'tracking_uri': 'http://host' means nothing to wandb: offline" in wandb.stderr


@pytest.mark.parametrize("settings, message", [
    (["NNODES=2", "NODE_RANK=2"], "NODE_RANK=2 is not below NNODES=2: ranks run from 0 (the node at RDZV) to NNODES-1 "
                                  "(one per machine)"),
    (["NNODES=3", "NODE_RANK=7"], "NODE_RANK=7 is not below NNODES=3"),
    (["NODE_RANK=1"], "NODE_RANK=1 is not below NNODES=1"),
    (["NNODES=2", "NODE_RANK=-1"], "NODE_RANK=-1: expected a whole number of at least 0 (this node's rank: 0 on the "
                                   "node at RDZV and 1 to NNODES-1 on the others)"),
], ids=["rank-equals-nnodes", "rank-above-nnodes", "one-node", "negative"])
def test_node_rank_outside_nnodes_is_refused(tmp_path, settings, message):
    """Was: NODE_RANK=2 of NNODES=2 went to torchrun, which waited for a rendezvous that could never complete."""
    proc = subprocess.run([*MAKE_N, "train", "MODEL=tiny", "FOLD=0", "RDZV=127.0.0.1:29500", *settings], cwd=tmp_path,
                          capture_output=True, text=True)
    assert proc.returncode != 0 and message in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert "torchrun" not in proc.stdout


def test_node_rank_from_the_environment_is_left_to_multi_node_runs(tmp_path):
    """A NODE_RANK a cluster exported is not this make's business when it trains on one node."""
    proc = subprocess.run([*MAKE_N, "train", "MODEL=tiny", "FOLD=0"], cwd=tmp_path, capture_output=True, text=True,
                          env={**os.environ, "NODE_RANK": "3"})
    assert proc.returncode == 0, proc.stderr
    assert "-m pipeline train" in proc.stdout and "torchrun" not in proc.stdout
    two = subprocess.run([*MAKE_N, "train", "MODEL=tiny", "FOLD=0", "NNODES=2", "RDZV=127.0.0.1:29500"], cwd=tmp_path,
                         capture_output=True, text=True, env={**os.environ, "NODE_RANK": "3"})
    assert two.returncode != 0 and "NODE_RANK=3 is not below NNODES=2" in two.stderr
