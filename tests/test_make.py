"""The Makefile is an entry point too: its help, and `make folds` from an empty folder."""

import re
import shutil
import subprocess

import pytest

from tests.conftest import REPO

MAKE = ["make", "--no-print-directory", "-f", str(REPO / "Makefile")]


def test_help_lists_every_target():
    out = subprocess.run([*MAKE, "help"], capture_output=True, text=True, check=True).stdout
    text = (REPO / "Makefile").read_text()
    targets = set(re.findall(r"^([a-z][a-zA-Z_-]*):", text, flags=re.M))  # FORCE and pattern rules aside
    described = re.findall(r"^  (\S+)\s", out, flags=re.M)
    assert {"test", "folds", "help", "demo", "data-fashion-mnist"} <= set(described)
    assert targets <= set(described), f"targets without a help line or a group: {targets - set(described)}"
    groups = re.findall(r"^(\w+):$", out, flags=re.M)
    assert groups == ["data", "training", "prediction", "blending", "kaggle", "tools"]
    order = {t: i for i, t in enumerate(described)}  # pipeline order, not alphabetical
    assert order["check"] < order["folds"] < order["train-all"] < order["predict"] < order["ensemble"] < order["package"]


def test_make_echoes_no_dangling_line(tmp_path):
    """The fold command make echoes is one line (no backslash continuation with an empty second line)."""
    proc = subprocess.run([*MAKE, "-n", "runs/tiny/fold0/done.json", "ARGS=epochs=1"], cwd=tmp_path,
                          capture_output=True, text=True, check=True)
    lines = [line for line in proc.stdout.splitlines() if "pipeline train" in line or not line.strip()]
    assert len(lines) == 1 and lines[0].split()[-3:] == ["--target", "runs/tiny/fold0/done.json", "'epochs=1'"], proc.stdout


def test_make_folds_in_a_fresh_folder(tmp_path):
    shutil.copytree(REPO / "configs", tmp_path / "configs")
    proc = subprocess.run([*MAKE, "folds"], cwd=tmp_path, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert (tmp_path / "data" / "demo" / "train.csv").is_file()
    assert (tmp_path / "folds" / "folds.csv").is_file()
    bad = subprocess.run([*MAKE, "folds", "COMP_ARGS=n_folds=x"], cwd=tmp_path, capture_output=True, text=True)
    assert bad.returncode != 0 and "n_folds" in bad.stderr


@pytest.mark.slow
def test_make_variables_reach_commands_as_one_quoted_word(tmp_path):
    """A value with shell syntax in it is passed as the value it is: nothing runs, nothing is dropped."""
    from tests.conftest import make_competition

    make_competition(tmp_path, models_dir="models")
    (tmp_path / "models").mkdir()
    cases = [
        ["submit", "DRY_RUN=1", "COMPETITION_SLUG=x; touch pwned"],  # the real submit must not run either
        ["lr-find", "MODEL=tiny; touch pwned"],
        ["show-batch", 'MODEL=a"; touch pwned; "'],
        ["train", "MODEL=tiny", "FOLD=0", "ARGS=lr=1e-3;touch pwned"],
        ["validate", "FILE=$(touch pwned).csv"],
    ]
    for args in cases:
        proc = subprocess.run([*MAKE, *args, "COMPETITION=competition.yaml"], cwd=tmp_path, capture_output=True,
                              text=True)
        assert proc.returncode != 0, args
        assert not (tmp_path / "pwned").exists(), f"make {' '.join(args)} ran a command from a variable"
        assert "Traceback" not in proc.stderr, proc.stderr
    proc = subprocess.run([*MAKE, "submit", "DRY_RUN=1", "COMPETITION_SLUG=x; touch pwned",
                           "COMPETITION=competition.yaml"], cwd=tmp_path, capture_output=True, text=True)
    assert "--dry-run" in proc.stdout and "'x; touch pwned'" in proc.stdout
