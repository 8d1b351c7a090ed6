"""The Makefile is an entry point too: its help, and `make folds` from an empty folder."""

import re
import shutil
import subprocess

from tests.conftest import REPO

MAKE = ["make", "--no-print-directory", "-f", str(REPO / "Makefile")]


def test_help_lists_every_target():
    out = subprocess.run([*MAKE, "help"], capture_output=True, text=True, check=True).stdout
    text = (REPO / "Makefile").read_text()
    targets = set(re.findall(r"^([a-z][a-zA-Z_-]*):", text, flags=re.M))  # FORCE and pattern rules aside
    described = set(re.findall(r"^  (\S+)\s", out, flags=re.M))
    assert {"test", "folds", "help", "demo", "data-fashion-mnist"} <= described
    assert targets <= described, f"targets without a help line: {targets - described}"


def test_make_folds_in_a_fresh_folder(tmp_path):
    shutil.copytree(REPO / "configs", tmp_path / "configs")
    proc = subprocess.run([*MAKE, "folds"], cwd=tmp_path, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert (tmp_path / "data" / "demo" / "train.csv").is_file()
    assert (tmp_path / "folds" / "folds.csv").is_file()
    bad = subprocess.run([*MAKE, "folds", "COMP_ARGS=n_folds=x"], cwd=tmp_path, capture_output=True, text=True)
    assert bad.returncode != 0 and "n_folds" in bad.stderr
