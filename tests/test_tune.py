"""`make tune`: the search space validated like every key, a study killed and resumed (the trial count goes
on), and the best trial written as a valid <model>-tuned.yaml; the model's own folds are never touched; a
changed search space starts a new study and keeps the old one."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time

import pytest
import yaml

from pipeline.nn.models import load_model
from tests.conftest import REPO, TINY_MODEL, make_competition, run_cli, write_yaml

MAKE = ["make", "--no-print-directory", "-f", str(REPO / "Makefile"), "COMPETITION=competition.yaml"]
SPACE = {"lr": [1.0e-3, 1.0e-1, "log"], "augment": ["none", "light"]}


def setup(root, search):
    make_competition(root, n_train=45, models_dir="models")
    write_yaml(root / "models" / "tiny.yaml", {**TINY_MODEL, "epochs": 2, "search": search})
    run_cli("folds", "-c", "competition.yaml", cwd=root)
    return root


@pytest.mark.parametrize("search, needles", [
    ({"nope": [1, 2]}, ["models/tiny.yaml", "search.nope", "not a model config key"]),
    # each case is a `make tune` process: one in the fast loop, the others with the slow tests
    pytest.param({"augment": ["light", "wobbly"]}, ["search.augment", "'wobbly' is not a valid value"],
                 marks=pytest.mark.slow),
    pytest.param({"epochs": [1, 2, 3]}, ["search.epochs", "ambiguous", "{choices: [...]}"], marks=pytest.mark.slow),
    pytest.param({"lr": [0.1, 0.01]}, ["search.lr", "low < high"], marks=pytest.mark.slow),
    pytest.param({"backbone": ["test_resnet", "test_efficientnet"]}, ["search.backbone", "cannot be searched"],
                 marks=pytest.mark.slow),
])
def test_bad_search_space_is_clear(tmp_path, search, needles):
    setup(tmp_path, search)
    proc = subprocess.run([*MAKE, "tune", "MODEL=tiny", "TRIALS=1"], cwd=tmp_path, capture_output=True, text=True)
    assert proc.returncode != 0
    for needle in needles:
        assert needle in proc.stderr, (needle, proc.stderr)
    assert not (tmp_path / "runs" / "tiny" / "tune.db").exists()  # refused before any trial


def trial_numbers(text: str) -> list[int]:
    return [int(n) for n in re.findall(r"tune tiny: trial (\d+) accuracy", text)]


@pytest.mark.slow
def test_killed_study_resumes_and_the_count_goes_on(tmp_path):
    setup(tmp_path, SPACE)
    first = subprocess.Popen([*MAKE, "tune", "MODEL=tiny", "TRIALS=4"], cwd=tmp_path, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True, start_new_session=True)
    out, deadline = "", time.time() + 300
    while time.time() < deadline:  # wait for the first finished trial, then kill the search mid-trial
        line = first.stdout.readline()
        out += line
        if not line or trial_numbers(out):
            break
    time.sleep(1.0)
    os.killpg(first.pid, signal.SIGKILL)
    first.wait()
    done_first = trial_numbers(out)
    assert done_first, out
    second = subprocess.run([*MAKE, "tune", "MODEL=tiny", "TRIALS=4"], cwd=tmp_path, capture_output=True, text=True)
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    resumed = re.search(r"(\d+) trial\(s\) finished in runs/tiny/tune.db, (\d+) to go", second.stdout)
    assert resumed and int(resumed.group(1)) >= 1 and int(resumed.group(1)) + int(resumed.group(2)) == 4, second.stdout
    assert "ExperimentalWarning" not in second.stderr, second.stderr[-2000:]  # no library noise in the log
    new = trial_numbers(second.stdout)
    assert new and min(new) > max(done_first)  # numbering goes on; no trial is run twice
    import optuna

    storage = f"sqlite:///{tmp_path / 'runs/tiny/tune.db'}"
    (name,) = optuna.get_all_study_names(storage)
    study = optuna.load_study(study_name=name, storage=storage)
    finished = [t for t in study.trials if t.state.name in ("COMPLETE", "PRUNED")]
    assert len(finished) == 4
    # the best trial as a config: valid, its score in a comment, the search space gone
    tuned = tmp_path / "models" / "tiny-tuned.yaml"
    text = tuned.read_text()
    assert text.startswith("# written by `make tune` from tiny.yaml: best of 4 trial(s)") and "accuracy" in text
    data = yaml.safe_load(text)
    assert "search" not in data and 1e-3 <= data["lr"] <= 1e-1 and data["augment"] in ("none", "light")
    cfg, _ = load_model(tmp_path / "models", "tiny-tuned")
    assert cfg.lr == study.best_params["lr"]
    # trials trained under runs/tiny/tune/, never the model's own folds
    assert not list((tmp_path / "runs" / "tiny").glob("fold*"))
    assert list((tmp_path / "runs" / "tiny" / "tune" / name).glob("trial*/tiny/fold0/done.json"))
    plan = run_cli("plan", "-c", "competition.yaml", cwd=tmp_path)  # the tuned config is a model train-all trains
    assert "runs/tiny-tuned/fold0/done.json" in plan.stdout


@pytest.mark.slow
def test_a_changed_space_starts_a_new_study_and_keeps_the_old(tmp_path):
    import optuna

    setup(tmp_path, {"lr": [1.0e-3, 2.0e-3]})
    tune = [*MAKE, "tune", "MODEL=tiny", "TRIALS=1"]
    first = subprocess.run(tune, cwd=tmp_path, capture_output=True, text=True)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    assert "new study" not in first.stdout  # the first study is simply created
    write_yaml(tmp_path / "models" / "tiny.yaml", {**TINY_MODEL, "epochs": 2, "search": {"lr": [0.05, 0.1]}})
    second = subprocess.run(tune, cwd=tmp_path, capture_output=True, text=True)
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    storage = f"sqlite:///{tmp_path / 'runs/tiny/tune.db'}"
    old, new = optuna.get_all_study_names(storage)
    assert old != new and old.startswith("tiny-") and new.startswith("tiny-")
    assert (f"tune tiny: new study {new} (search space or base config changed; the earlier study {old} is kept "
            "in runs/tiny/tune.db)") in second.stdout, second.stdout
    assert "0 trial(s) finished in runs/tiny/tune.db, 1 to go" in second.stdout  # not the old study's trial
    (kept,) = optuna.load_study(study_name=old, storage=storage).trials  # the old study is untouched
    assert kept.state.name == "COMPLETE" and 1e-3 <= kept.params["lr"] <= 2e-3
    data = yaml.safe_load((tmp_path / "models" / "tiny-tuned.yaml").read_text())
    assert 0.05 <= data["lr"] <= 0.1 and "search" not in data  # the best of the new space, not the old one's
    # the same space and base config resume, a result-neutral key (log_every) changed or not
    write_yaml(tmp_path / "models" / "tiny.yaml",
               {**TINY_MODEL, "epochs": 2, "log_every": 7, "search": {"lr": [0.05, 0.1]}})
    third = subprocess.run(tune, cwd=tmp_path, capture_output=True, text=True)
    assert third.returncode == 0, third.stdout[-3000:] + third.stderr[-3000:]
    assert f"1 trial(s) finished in runs/tiny/tune.db, 0 to go (study {new})" in third.stdout, third.stdout
    assert "new study" not in third.stdout and len(optuna.get_all_study_names(storage)) == 2
