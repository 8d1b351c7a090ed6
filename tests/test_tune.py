"""`make tune`: the search space read as written and validated like every key; everything the user gives
checked before any trial; a study killed and resumed (the count goes on, the killed trial is failed and its
files removed, only the best checkpoint kept); two processes sharing a study; a failing trial recorded and the
search going on; a lost database named; the tuned file keeping the source's comments and never overwriting
a hand edit; a tuned model marked in cv.md; a changed search space starting a new study."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from pipeline.artifacts.tables import write_table
from pipeline.nn.models import load_model
from tests.conftest import REPO, TINY_MODEL, make_competition, run_cli, write_yaml

MAKE = ["make", "--no-print-directory", "-f", str(REPO / "Makefile"), "COMPETITION=competition.yaml"]
SPACE = {"lr": [1.0e-3, 1.0e-1, "log"], "augment": ["none", "light"]}
DB = "runs/tiny/tune.db"
# a hand-written source: YAML 1.1 reads 1e-3 as text; comments a tuned file must keep
SOURCE = """\
# tiny: the test model
backbone: test_resnet   # the smallest timm model
img_size: 16
in_chans: 1
epochs: 1
batch_size: 16
lr: 0.01
augment: none
num_workers: 0
warmup_epochs: 0.5
search:   # what make tune searches
  lr: [1e-3, 1E-1]
  weight_decay: [0, 1]
  batch_size: {low: 8, high: 16}
  drop_rate: {low: .5e-1, high: 0.25, log: true}
"""


def setup(root, search=None, text=None):
    make_competition(root, n_train=45, models_dir="models")
    if text is None:
        write_yaml(root / "models" / "tiny.yaml", {**TINY_MODEL, "epochs": 2, "search": search})
    else:
        (root / "models").mkdir(exist_ok=True)
        (root / "models" / "tiny.yaml").write_text(text)
    run_cli("folds", "-c", "competition.yaml", cwd=root)
    return root


def tune(root, *words):
    return subprocess.run([*MAKE, "tune", "MODEL=tiny", *words], cwd=root, capture_output=True, text=True)


def load_study(root):
    import optuna

    storage = f"sqlite:///{root / DB}"
    names = optuna.get_all_study_names(storage)
    return optuna.load_study(study_name=names[-1], storage=storage)


def trial_numbers(text: str) -> list[int]:
    return [int(n) for n in re.findall(r"tune tiny: trial (\d+) accuracy", text)]


@pytest.mark.parametrize("search, needles", [
    ({"nope": [1, 2]}, ["models/tiny.yaml", "search.nope", "not a model config key"]),
    # each case is a `make tune` process: one in the fast loop, the others with the slow tests
    pytest.param({"augment": ["light", "wobbly"]}, ["search.augment", "'wobbly' is not a valid value"],
                 marks=pytest.mark.slow),
    pytest.param({"epochs": [1, 2, 3]}, ["search.epochs", "ambiguous", "{choices: [...]}"], marks=pytest.mark.slow),
    pytest.param({"lr": [0.1, 0.01]}, ["search.lr", "low < high"], marks=pytest.mark.slow),
    pytest.param({"batch_size": [16, 64, "float"]}, ["search.batch_size", "batch_size takes whole numbers"],
                 marks=pytest.mark.slow),
    pytest.param({"backbone": ["test_resnet", "test_efficientnet"]}, ["search.backbone", "cannot be searched"],
                 marks=pytest.mark.slow),
])
def test_bad_search_space_is_clear(tmp_path, search, needles):
    setup(tmp_path, search)
    proc = tune(tmp_path, "TRIALS=1")
    assert proc.returncode != 0
    for needle in needles:
        assert needle in proc.stderr, (needle, proc.stderr)
    assert not (tmp_path / DB).exists()  # refused before any trial


@pytest.mark.parametrize("words, needles", [
    (["FOLDS= "], ["error: FOLDS=", "no fold given", "folds/folds.csv has folds 0, 1, 2"]),
    pytest.param(["FOLDS=0 7"], ["error: FOLDS='0 7': 7 is not a fold; folds/folds.csv has folds 0, 1, 2"],
                 marks=pytest.mark.slow),
    pytest.param(["TRIALS=0"], ["TRIALS=0: expected a whole number of at least 1"], marks=pytest.mark.slow),
    pytest.param(["TRIALS=2"], ["models/tiny-tuned.yaml exists and was not written by `make tune`; it is left "
                                "alone: keep it under another name (mv models/tiny-tuned.yaml"],
                 marks=pytest.mark.slow, id="hand-written-tuned-yaml"),
])
def test_what_the_user_gives_is_checked_before_any_trial(tmp_path, words, needles):
    setup(tmp_path, SPACE)
    if words == ["TRIALS=2"]:
        (tmp_path / "models" / "tiny-tuned.yaml").write_text("# mine\nbackbone: test_resnet\n")
    proc = tune(tmp_path, *words)
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-2000:]
    for needle in needles:
        assert needle in proc.stderr, (needle, proc.stderr)
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / DB).exists() and not (tmp_path / "runs" / "tiny" / "tune").exists()


@pytest.mark.slow
def test_search_space_is_read_as_written_and_printed(tmp_path):
    setup(tmp_path, text=SOURCE)
    proc = tune(tmp_path, "TRIALS=1")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    for line in ("tune tiny:   lr: float in [0.001, 0.1]\n", "tune tiny:   weight_decay: float in [0, 1]\n",
                 "tune tiny:   batch_size: int in [8, 16]\n", "tune tiny:   drop_rate: float in [0.05, 0.25] (log)\n"):
        assert line in proc.stdout, (line, proc.stdout[:2000])
    (trial,) = load_study(tmp_path).trials
    dist = {k: (type(d).__name__, d.low, d.high, d.log) for k, d in trial.distributions.items()}
    assert dist == {"lr": ("FloatDistribution", 0.001, 0.1, False), "weight_decay": ("FloatDistribution", 0, 1, False),
                    "batch_size": ("IntDistribution", 8, 16, False), "drop_rate": ("FloatDistribution", 0.05, 0.25, True)}


@pytest.mark.slow
def test_killed_study_resumes_fails_the_killed_trial_and_keeps_one_checkpoint(tmp_path):
    setup(tmp_path, SPACE)
    first = subprocess.Popen([*MAKE, "tune", "MODEL=tiny", "TRIALS=4"], cwd=tmp_path, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True, start_new_session=True)
    out, deadline = "", time.time() + 300
    while time.time() < deadline:  # wait for the first finished trial
        line = first.stdout.readline()
        out += line
        if not line or trial_numbers(out):
            break
    done_first = trial_numbers(out)
    assert done_first, out
    tune_dir = tmp_path / "runs" / "tiny" / "tune"
    number = max(done_first) + 1
    killed = f"trial{number}"
    while time.time() < deadline and not list(tune_dir.glob(f"*/{killed}/tiny/.fold0.partial/last.pt")):
        time.sleep(0.2)  # the next trial has written its first checkpoint: kill the search mid-trial
    os.killpg(first.pid, signal.SIGKILL)
    first.wait()
    assert [t.state.name for t in load_study(tmp_path).trials].count("RUNNING") == 1
    (partial,) = tune_dir.glob(f"*/{killed}/tiny/.fold0.partial")

    second = tune(tmp_path, "TRIALS=4")
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    assert f"tune tiny: trial {number} was left running by process " in second.stdout, second.stdout
    assert "has ended: marked failed (not counted; a new trial takes its place)" in second.stdout
    assert not partial.exists() and not partial.parent.parent.exists()  # the killed trial's files are gone
    resumed = re.search(r"(\d+) trial\(s\) finished in runs/tiny/tune.db, (\d+) to go", second.stdout)
    assert resumed and int(resumed.group(1)) >= 1 and int(resumed.group(1)) + int(resumed.group(2)) == 4, second.stdout
    assert "ExperimentalWarning" not in second.stderr, second.stderr[-2000:]  # no library noise in the log
    new = trial_numbers(second.stdout)
    assert new and min(new) > max(done_first)  # numbering goes on; no trial is run twice
    study = load_study(tmp_path)
    states = [t.state.name for t in study.trials]
    assert states.count("COMPLETE") + states.count("PRUNED") == 4 and "RUNNING" not in states
    assert "1 killed midway (not counted)" in second.stdout
    # only the best trial keeps a checkpoint, its best.pt; the disk used is printed
    best = study.best_trial.number
    assert [p.relative_to(tune_dir / study.study_name) for p in tune_dir.rglob("*.pt")] == \
        [Path(f"trial{best}/tiny/fold0/best.pt")]
    assert re.search(rf"tune tiny: runs/tiny/tune/{study.study_name} uses \d+\.\d MB", second.stdout), second.stdout
    # the best trial as a config: valid, its score in a comment, the search space gone
    text = (tmp_path / "models" / "tiny-tuned.yaml").read_text()
    assert text.startswith("# written by `make tune` from tiny.yaml: best of 4 trial(s)") and "accuracy" in text
    data = yaml.safe_load(text)
    assert "search" not in data and 1e-3 <= data["lr"] <= 1e-1 and data["augment"] in ("none", "light")
    cfg, _ = load_model(tmp_path / "models", "tiny-tuned")
    assert cfg.lr == study.best_params["lr"]
    # trials trained under runs/tiny/tune/, never the model's own folds
    assert not list((tmp_path / "runs" / "tiny").glob("fold*"))
    assert list((tune_dir / study.study_name).glob("trial*/tiny/fold0/done.json"))
    plan = run_cli("plan", "-c", "competition.yaml", cwd=tmp_path)  # the tuned config is a model train-all trains
    assert "runs/tiny-tuned/fold0/done.json" in plan.stdout


@pytest.mark.slow
def test_two_processes_share_one_study_and_stop_at_trials(tmp_path):
    setup(tmp_path, {"lr": [1.0e-3, 1.0e-1, "log"]})
    procs = [subprocess.Popen([*MAKE, "tune", "MODEL=tiny", "TRIALS=4"], cwd=tmp_path, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=600)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs[0][-2000:] + outs[1][-2000:]
    trials = load_study(tmp_path).trials
    assert len(trials) == 4 and {t.state.name for t in trials} <= {"COMPLETE", "PRUNED"}, [t.state for t in trials]
    assert len({t.params["lr"] for t in trials}) == 4  # no trial drawn twice


@pytest.mark.slow
def test_a_failing_trial_is_recorded_and_the_search_goes_on(tmp_path):
    space = {"lr": {"choices": [0.01, 1.0e+30]}}  # 1e30 diverges at once
    setup(tmp_path, text=yaml.safe_dump({**TINY_MODEL, "epochs": 1, "nan_policy": "stop", "search": space}))
    proc = tune(tmp_path, "TRIALS=4")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    trials = load_study(tmp_path).trials
    failed = [t for t in trials if t.state.name == "FAIL"]
    assert len(trials) == 4 and failed and all(t.params["lr"] == 1e30 for t in failed)
    assert all(t.params["lr"] == 0.01 for t in trials if t.state.name == "COMPLETE")
    assert f"{len(failed)} failed: training tiny fold 0 stopped: non-finite loss" in proc.stdout, proc.stdout[-3000:]
    assert f"tune tiny: trial {failed[0].number} failed (lr=1e+30): training tiny fold 0 stopped" in proc.stdout
    assert yaml.safe_load((tmp_path / "models" / "tiny-tuned.yaml").read_text())["lr"] == 0.01


@pytest.mark.slow
def test_a_deleted_database_is_named(tmp_path):
    setup(tmp_path, SPACE)
    proc = subprocess.Popen([*MAKE, "tune", "MODEL=tiny", "TRIALS=3"], cwd=tmp_path, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    out, deadline = "", time.time() + 300
    while time.time() < deadline and not trial_numbers(out):
        line = proc.stdout.readline()
        out += line
        if not line:
            break
    (tmp_path / DB).unlink()
    out += proc.communicate(timeout=300)[0]
    assert proc.returncode == 2, out[-3000:]
    assert ("error: runs/tiny/tune.db: the study's database was deleted or replaced while `make tune` ran; the "
            "trials it recorded are lost") in out, out[-3000:]
    assert "Traceback" not in out


@pytest.mark.slow
def test_tuned_yaml_keeps_the_comments_and_a_hand_edit(tmp_path):
    setup(tmp_path, text=SOURCE.replace("lr: 0.01", "lr: 0.01   # the base rate")
          .replace("  weight_decay: [0, 1]\n  batch_size: {low: 8, high: 16}\n", ""))
    assert tune(tmp_path, "TRIALS=1").returncode == 0
    tuned = tmp_path / "models" / "tiny-tuned.yaml"
    text = tuned.read_text()
    best = load_study(tmp_path).best_params
    assert "# tiny: the test model\nbackbone: test_resnet   # the smallest timm model\n" in text
    assert re.search(r"^lr: \S+   # the base rate$", text, re.M) and "search" not in text
    assert f"drop_rate: {best['drop_rate']!r}  # added by make tune" in text
    assert "# Tuned on the validation rows of fold(s) 0: its CV there is optimistic" in text
    data = yaml.safe_load(text)
    assert data["lr"] == best["lr"] and data["drop_rate"] == best["drop_rate"] and data["epochs"] == 1
    tuned.write_text(text.replace("epochs: 1", "epochs: 3  # mine"))  # a hand edit
    again = tune(tmp_path, "TRIALS=2")
    assert again.returncode == 2
    assert ("error: models/tiny-tuned.yaml was edited by hand since `make tune` wrote it; it is left alone: keep it "
            "under another name (mv models/tiny-tuned.yaml models/tiny-mine.yaml) or delete it, then rerun "
            "`make tune MODEL=tiny`") in again.stderr, again.stderr
    assert "epochs: 3  # mine" in tuned.read_text() and len(load_study(tmp_path).trials) == 1  # no trial ran
    tuned.rename(tmp_path / "models" / "tiny-mine.yaml")
    third = tune(tmp_path, "TRIALS=1")  # the study resumes with nothing to do; only the file is written
    assert third.returncode == 0 and not trial_numbers(third.stdout) and tuned.read_text() == text


@pytest.mark.slow
def test_a_tuned_model_is_marked_in_cv_md(tmp_path):
    setup(tmp_path, {"lr": [1.0e-2, 2.0e-2]})
    assert tune(tmp_path, "TRIALS=1").returncode == 0
    # tiny-tuned's tables, dropped into stacking/ (cheaper than training its 3 folds and predicting)
    (tmp_path / "stacking").mkdir()
    for part, csv in (("oof", "folds/folds.csv"), ("test", "data/tiny/sample_submission.csv")):
        ids = pd.read_csv(tmp_path / csv, dtype=str, keep_default_na=False)["image_id"]
        write_table(tmp_path / f"stacking/tiny-tuned.{part}.csv", ids, np.random.default_rng(0).dirichlet(
            np.ones(3), len(ids)), ["c0", "c1", "c2"], "image_id")
    run_cli("ensemble", "-c", "competition.yaml", cwd=tmp_path)
    cv = (tmp_path / "submissions" / "cv.md").read_text()
    assert "| tiny-tuned | model, tuned: CV optimistic (see below) |" in cv, cv
    assert ("tiny-tuned: tuned on fold 0's validation rows: its CV is optimistic (`make tune` picked its settings "
            "on them)") in cv
    report = json.loads((tmp_path / "submissions" / "cv.json").read_text())
    assert report["models"]["tiny-tuned"]["tuned_on_folds"] == [0]


@pytest.mark.slow
def test_a_changed_space_starts_a_new_study_and_keeps_the_old(tmp_path):
    import optuna

    setup(tmp_path, {"lr": [1.0e-3, 2.0e-3]})
    first = tune(tmp_path, "TRIALS=1")
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    assert "new study" not in first.stdout  # the first study is simply created
    write_yaml(tmp_path / "models" / "tiny.yaml", {**TINY_MODEL, "epochs": 2, "search": {"lr": [0.05, 0.1]}})
    second = tune(tmp_path, "TRIALS=1")
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    storage = f"sqlite:///{tmp_path / DB}"
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
    third = tune(tmp_path, "TRIALS=1")
    assert third.returncode == 0, third.stdout[-3000:] + third.stderr[-3000:]
    assert f"1 trial(s) finished in runs/tiny/tune.db, 0 to go (study {new})" in third.stdout, third.stdout
    assert "new study" not in third.stdout and len(optuna.get_all_study_names(storage)) == 2
