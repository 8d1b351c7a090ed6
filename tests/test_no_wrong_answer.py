"""No wrong answer and no lost work: labels and ids as written, stale tables caught, no folder deleted
that the pipeline did not make, clear messages instead of tracebacks. Through the CLI and Make."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml

from pipeline.core.data import MISSING_TEXT
from tests.conftest import REPO, TINY_MODEL, make_competition, run_cli, write_yaml, read_table_file

MAKE = ["make", "--no-print-directory", "-f", str(REPO / "Makefile"), "COMPETITION=competition.yaml"]
LABELS = {"c0": "01", "c1": "02", "c2": "1e3"}  # pandas would read these as the floats 1.0, 2.0, 1000.0
ODD_IDS = ["NA", "null", "None", "nan"]  # pandas would read these as missing


def make(root: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*MAKE, *args], cwd=root, capture_output=True, text=True)


def clean_error(proc: subprocess.CompletedProcess, *needles: str) -> str:
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr, proc.stderr
    for needle in needles:
        assert needle in proc.stderr, proc.stderr
    return proc.stderr


def odd_competition(root: Path, n_train: int = 45, n_test: int = 9, **config) -> Path:
    """A tiny competition whose labels look like numbers and some of whose ids look like missing values."""
    make_competition(root, n_train=n_train, n_test=n_test, models_dir="models", answers="data/tiny-answers.csv",
                     **config)
    data = root / "data" / "tiny"
    files = {"train": data / "train.csv", "test": data / "sample_submission.csv"}
    renames = {}
    for split, path in files.items():
        df = pd.read_csv(path, dtype=str, keep_default_na=False)
        for i, new in enumerate(ODD_IDS[:2] if split == "train" else ODD_IDS[2:]):
            renames[df.loc[i, "image_id"]] = new
            (data / split / f"{df.loc[i, 'image_id']}.png").rename(data / split / f"{new}.png")
        df["image_id"] = df["image_id"].replace(renames)
        df["label"] = df["label"].map(LABELS)
        df.to_csv(path, index=False)
    answers = pd.read_csv(root / "data" / "tiny-answers.csv", dtype=str, keep_default_na=False)
    answers.assign(image_id=answers.image_id.replace(renames), label=answers.label.map(LABELS)).to_csv(
        root / "data" / "tiny-answers.csv", index=False)
    write_yaml(root / "models" / "tiny.yaml", {**TINY_MODEL, "epochs": 1})
    return root


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """The odd competition trained (3 folds through make train-all), predicted and blended."""
    root = odd_competition(tmp_path_factory.mktemp("odd"))
    proc = make(root, "ensemble", "METHOD=mean")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return root


@pytest.fixture
def copy(trained, tmp_path) -> Path:
    """A copy of the trained competition to change."""
    root = tmp_path / "copy"
    shutil.copytree(trained, root)
    return root


# --- 1, 2: labels and ids exactly as written --------------------------------------------------------------


@pytest.mark.slow
def test_labels_and_ids_come_out_exactly_as_written(trained):
    sub = pd.read_csv(trained / "submissions" / "submission.csv", dtype=str, keep_default_na=False)
    sample = pd.read_csv(trained / "data" / "tiny" / "sample_submission.csv", dtype=str, keep_default_na=False)
    assert sub.image_id.tolist() == sample.image_id.tolist() and {"None", "nan"} <= set(sub.image_id)
    assert set(sub.label) <= set(LABELS.values()) and len(sub) == 9
    folds = pd.read_csv(trained / "folds" / "folds.csv", dtype=str, keep_default_na=False)
    assert {"NA", "null"} <= set(folds.image_id)
    cv = json.loads((trained / "submissions" / "cv.json").read_text())
    assert cv["classes"] == ["01", "02", "1e3"] and cv["submission_test"] is not None
    assert "valid" in run_cli("validate", "submissions/submission.csv", "-c", "competition.yaml", cwd=trained).stdout
    sub.assign(label=sub.label.replace({"01": "1", "02": "2.0", "1e3": "1000"})).to_csv(trained / "numeric.csv",
                                                                                      index=False)
    proc = run_cli("validate", "numeric.csv", "-c", "competition.yaml", cwd=trained, check=False)
    clean_error(proc, "not a known class", "classes are 01, 02, 1e3")


def test_booleans_stay_as_written(tmp_path):
    make_competition(tmp_path, n_train=30, task="binary", n_classes=2)
    edit = tmp_path / "data" / "tiny" / "train.csv"
    df = pd.read_csv(edit, dtype=str)
    df.assign(label=df.label.map({"c0": "false", "c1": "true"})).to_csv(edit, index=False)
    out = run_cli("folds", "-c", "competition.yaml", cwd=tmp_path).stdout
    assert "false" in out and "true" in out and "True" not in out


# --- 3: labels that are not labels ------------------------------------------------------------------------


@pytest.mark.parametrize("label, needle", [("NaN", "look like missing values"), ("None", "look like missing values"),
                                           ("c0 ", "leading or trailing spaces"), (" ", "empty value")])
def test_hollow_labels_are_refused_naming_the_rows(tmp_path, label, needle):
    make_competition(tmp_path, n_train=30)
    path = tmp_path / "data" / "tiny" / "train.csv"
    df = pd.read_csv(path, dtype=str, keep_default_na=False)
    df.loc[[3, 7, 11], "label"] = label
    df.to_csv(path, index=False)
    err = clean_error(run_cli("folds", "-c", "competition.yaml", cwd=tmp_path, check=False), needle)
    assert "line(s) 5, 9, 13" in err or df.image_id[3] in err
    assert not (tmp_path / "folds" / "folds.csv").exists()
    if label == "None":  # a real class called None: list it in `classes`
        run_cli("folds", "-c", "competition.yaml", "classes=[c0,c1,c2,None]", cwd=tmp_path)


# --- 4: impossible probabilities in stacking tables --------------------------------------------------------


@pytest.mark.parametrize("change, needle", [
    (lambda t: t.assign(c01=t["01"] * 10), "unknown column"),
    (lambda t: t.assign(**{"01": t["01"] + 1.5}), "outside [0, 1]"),
    (lambda t: t.assign(**{c: t[c] * 0.3 for c in ("01", "02", "1e3")}), "do not sum to 1"),
])
@pytest.mark.slow
def test_impossible_probabilities_are_refused(copy, change, needle):
    path = copy / "stacking" / "mine.oof.csv"
    table = read_table_file(copy / "stacking" / "tiny.oof.parquet")
    change(table).to_csv(path, index=False)
    read_table_file(copy / "stacking" / "tiny.test.parquet").to_csv(copy / "stacking" / "mine.test.csv", index=False)
    err = clean_error(run_cli("ensemble", "-c", "competition.yaml", cwd=copy, check=False), "mine.oof.csv", needle)
    assert "row" in err or "column" in err


# --- 5 and 13: pretrained weights that do not fit; other inputs that used to crash --------------------


@pytest.mark.slow
def test_pretrained_weights_must_fit_the_backbone(copy):
    import timm
    import torch
    from safetensors.torch import save_file

    weights = copy / "weights"
    weights.mkdir()
    for name, arch in (("other", "test_efficientnet"), ("same", "test_resnet")):
        model = timm.create_model(arch, num_classes=1000, in_chans=1)
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(weights / f"{name}.safetensors"))
    same = timm.create_model("test_resnet", num_classes=1000, in_chans=1).state_dict()
    torch.save({k: v for k, v in same.items() if not k.startswith("layer4")}, weights / "partial.pth")
    (weights / "text.pth").write_text("not weights")
    (weights / "empty.safetensors").write_bytes(b"")

    def train(file):
        return run_cli("train", "-c", "competition.yaml", "--model", "tiny", "--fold", "0", "--rerun",
                       f"pretrained=weights/{file}", cwd=copy, check=False)

    clean_error(train("other.safetensors"), "weights/other.safetensors", "cannot be loaded into test_resnet")
    clean_error(train("partial.pth"), "weights/partial.pth", "does not fit backbone test_resnet", "not in it")
    clean_error(train("text.pth"), "weights/text.pth", "safetensors file or a torch state dict")
    clean_error(train("empty.safetensors"), "weights/empty.safetensors", "cannot be loaded")
    assert train("same.safetensors").returncode == 0  # only the 1000-class head differs: the usual fine-tuning


@pytest.mark.parametrize("edit, needles", [
    ({"seed": -1}, ["seed", "greater than or equal to 0"]),
    ({"seed": 2**32}, ["seed", "less than 4294967296"]),
    ({"task": "binary"}, ["task binary expects 2 classes"]),
    ({"classes": ["c0", "c1"]}, ["competition key 'classes'", "['c2']"]),
])
def test_competition_mistakes_stop_folds_and_check(tmp_path, edit, needles):
    config = yaml.safe_load(make_competition(tmp_path, n_train=30).read_text())
    write_yaml(tmp_path / "competition.yaml", {**config, **edit})
    for command in ("folds", "check"):
        clean_error(run_cli(command, "-c", "competition.yaml", cwd=tmp_path, check=False), *needles)


@pytest.mark.slow
def test_duplicate_yaml_keys_and_augmentation_typos_are_errors(tmp_path):
    make_competition(tmp_path, n_train=30, models_dir="models")
    (tmp_path / "competition.yaml").write_text((tmp_path / "competition.yaml").read_text() + "seed: 3\n")
    clean_error(run_cli("folds", "-c", "competition.yaml", cwd=tmp_path, check=False), "key 'seed' is given twice")
    make_competition(tmp_path, n_train=30, models_dir="models")
    run_cli("folds", "-c", "competition.yaml", cwd=tmp_path)
    write_yaml(tmp_path / "models" / "tiny.yaml", {**TINY_MODEL, "augment": [{"name": "HorizontalFlip", "q": 3}]})
    proc = run_cli("train", "-c", "competition.yaml", "--model", "tiny", "--fold", "0", cwd=tmp_path, check=False)
    clean_error(proc, "augment[0]", "HorizontalFlip", "unknown parameter(s) ['q']", "allowed: p")


# --- 6, 7: stale tables -----------------------------------------------------------------------------


@pytest.mark.slow
def test_an_interrupted_predict_is_caught(copy):
    old = {p.name: p.read_bytes() for p in (copy / "stacking").glob("tiny.test.*")}
    run_cli("train", "-c", "competition.yaml", "--model", "tiny", "--fold", "1", "--rerun", "lr=0.05",
            cwd=copy)  # a new run, with other weights (the same settings would give the very same tables)
    run_cli("predict", "-c", "competition.yaml", cwd=copy)
    for name, data in old.items():  # as if predict had been killed between the OOF and the test table
        (copy / "stacking" / name).write_bytes(data)
    clean_error(run_cli("ensemble", "-c", "competition.yaml", cwd=copy, check=False),
                "stacking/tiny.oof and .test tables", "tiny.test.parquet changed since written", "make predict")
    assert "up to date" not in run_cli("predict", "-c", "competition.yaml", cwd=copy).stdout
    run_cli("ensemble", "-c", "competition.yaml", "--method", "mean", cwd=copy)


@pytest.mark.slow
def test_stages_called_directly_see_a_changed_or_deleted_config(copy):
    cfg = copy / "models" / "tiny.yaml"
    write_yaml(cfg, {**yaml.safe_load(cfg.read_text()), "lr": 0.02})
    clean_error(run_cli("predict", "-c", "competition.yaml", cwd=copy, check=False),
                "fold0 (config changed)", "make train-all")
    clean_error(run_cli("ensemble", "-c", "competition.yaml", cwd=copy, check=False),
                "stacking/tiny.oof and .test tables", "not current", "config changed")
    cfg.unlink()
    clean_error(run_cli("predict", "-c", "competition.yaml", cwd=copy, check=False), "models/tiny.yaml is gone")
    clean_error(run_cli("ensemble", "-c", "competition.yaml", cwd=copy, check=False), "models/tiny.yaml is gone")


@pytest.mark.slow
def test_a_damaged_submission_is_rewritten(copy):
    sub = copy / "submissions" / "submission.csv"
    good = sub.read_text()
    sub.write_text(good.replace("01", "0l"))
    proc = run_cli("ensemble", "-c", "competition.yaml", "--method", "mean", cwd=copy)
    assert "inputs unchanged" not in proc.stdout and "submission.csv changed since" in proc.stdout
    assert sub.read_text() == good
    assert "inputs unchanged" in run_cli("ensemble", "-c", "competition.yaml", "--method", "mean", cwd=copy).stdout


# --- 8, 9, 11: no finished fold lost ------------------------------------------------------------------------


@pytest.mark.slow
def test_args_overrides_are_kept_by_a_later_plain_target(copy):
    proc = make(copy, "train-all", "ARGS=epochs=2")
    assert proc.returncode == 0, proc.stderr[-2000:]
    done = {k: (copy / f"runs/tiny/fold{k}/done.json").read_text() for k in range(3)}
    assert all(json.loads(d)["overrides"] == ["epochs=2"] for d in done.values())
    assert yaml.safe_load((copy / "runs/tiny/fold0/config.yaml").read_text())["_overrides"] == ["epochs=2"]
    proc = make(copy, "predict")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "kept as trained: fold0 (trained with ARGS 'epochs=2')" in proc.stderr
    assert "using folds trained with command-line overrides" in proc.stdout
    assert {k: (copy / f"runs/tiny/fold{k}/done.json").read_text() for k in range(3)} == done  # nothing retrained
    proc = make(copy, "train-all", "RETRAIN=1", "MODELS=tiny")
    assert proc.returncode == 0 and "fold0 (trained with ARGS 'epochs=2')" in proc.stderr
    assert json.loads((copy / "runs/tiny/fold0/done.json").read_text())["overrides"] == []
    aside = [json.loads((p / "done.json").read_text()) for p in (copy / "runs/tiny/stale").iterdir()]
    assert sorted(len(d["overrides"]) for d in aside) == [0, 0, 0, 1, 1, 1]  # every replaced fold set aside


@pytest.mark.slow
def test_a_killed_rerun_keeps_the_finished_fold(copy):
    fold = copy / "runs" / "tiny" / "fold0"
    before = {name: (fold / name).read_bytes() for name in ("done.json", "best.pt", "oof.parquet")}
    cmd = [sys.executable, "-m", "pipeline", "train", "-c", "competition.yaml", "--model", "tiny", "--fold", "0",
           "--rerun", "epochs=40"]
    proc = subprocess.Popen(cmd, cwd=copy, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    last = copy / "runs" / "tiny" / ".fold0.partial" / "last.pt"
    deadline = time.time() + 120
    while not last.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert last.exists(), "the run ended before its first checkpoint"
    assert {name: (fold / name).read_bytes() for name in before} == before  # the finished fold is untouched
    (last.parent / ".last.pt.x1y2.tmp").write_bytes(b"half a checkpoint")  # a write killed midway
    last.write_bytes(b"corrupt")  # and a damaged checkpoint: the rerun names it and starts over
    proc = run_cli("train", "-c", "competition.yaml", "--model", "tiny", "--fold", "0", "--rerun", "epochs=2", cwd=copy)
    assert "last.pt: checkpoint cannot be read" in proc.stdout and "starting over" in proc.stdout
    assert json.loads((fold / "done.json").read_text())["epochs_run"] == 2
    stale = list((copy / "runs" / "tiny" / "stale").iterdir())
    assert sum((s / "done.json").is_file() and (s / "done.json").read_bytes() == before["done.json"]
               for s in stale) == 1  # the finished fold it replaced, set aside, not deleted
    assert sum((s / "last.pt").read_bytes() == b"corrupt" for s in stale if (s / "last.pt").is_file()) == 1
    assert not list(copy.rglob("*.tmp"))


@pytest.mark.slow
def test_a_corrupt_best_checkpoint_is_named(copy):
    """The fold's record catches it before any checkpoint is opened; a checkpoint damaged behind the record's
    back (same size and time) is named when it is loaded."""
    best = copy / "runs" / "tiny" / "fold2" / "best.pt"
    original, stat = best.read_bytes(), best.stat()
    best.write_bytes(b"\x00" * 10)
    clean_error(run_cli("predict", "-c", "competition.yaml", "--force", cwd=copy, check=False),
                "tiny: fold2 (best.pt changed since written)", "make train-all MODELS=tiny")
    best.write_bytes(b"\x00" * len(original))
    os.utime(best, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    clean_error(run_cli("predict", "-c", "competition.yaml", "--force", cwd=copy, check=False),
                "runs/tiny/fold2/best.pt: checkpoint cannot be read", "make train MODEL=tiny FOLD=2")
    best.write_bytes(original)
    os.utime(best, ns=(stat.st_atime_ns, stat.st_mtime_ns))


# --- 10: package never deletes a folder it did not make --------------------------------------------------------


@pytest.mark.slow
def test_package_out_is_swapped_in_and_never_deletes_a_foreign_folder(copy):
    mine = copy / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("my notes")
    clean_error(run_cli("package", "-c", "competition.yaml", "--out", "mine", "--wheels", "", cwd=copy, check=False),
                "mine exists and is not a bundle")
    assert (mine / "notes.txt").read_text() == "my notes"
    run_cli("package", "-c", "competition.yaml", "--out", "dist/b", "--wheels", "", cwd=copy)
    manifest = (copy / "dist/b/manifest.json").read_text()
    proc = run_cli("package", "-c", "competition.yaml", "--out", "dist/b", "--wheels", "no-such-package-kfold==9.9",
                   cwd=copy, check=False)
    assert proc.returncode == 2 and "pip download" in proc.stderr
    assert (copy / "dist/b/manifest.json").read_text() == manifest  # the complete bundle survived the failure
    assert sorted(p.name for p in (copy / "dist").iterdir()) == ["b", "b.record.json"]  # no half-built folder left


# --- 12, 15: images ----------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_zero_byte_images_are_named_and_skippable(tmp_path):
    make_competition(tmp_path, n_train=30, models_dir="models")
    write_yaml(tmp_path / "models" / "tiny.yaml", {**TINY_MODEL, "epochs": 1})
    run_cli("folds", "-c", "competition.yaml", cwd=tmp_path)
    train = pd.read_csv(tmp_path / "data" / "tiny" / "train.csv", dtype=str)
    folds = pd.read_csv(tmp_path / "folds" / "folds.csv", dtype=str)
    victim = train.image_id[0]
    (tmp_path / "data" / "tiny" / "train" / f"{victim}.png").write_bytes(b"")
    clean_error(run_cli("folds", "-c", "competition.yaml", "--force", cwd=tmp_path, check=False),
                "cannot be decoded", f"{victim}.png")
    fold = "1" if folds.set_index("image_id").fold[victim] == "0" else "0"
    clean_error(run_cli("train", "-c", "competition.yaml", "--model", "tiny", "--fold", fold, cwd=tmp_path,
                        check=False), f"{victim}.png: empty image file")
    proc = run_cli("train", "-c", "competition.yaml", "--model", "tiny", "--fold", fold, "bad_images=skip",
                   cwd=tmp_path)
    assert f"{victim}.png: empty image file" in proc.stderr


def test_ids_may_not_leave_data_dir(tmp_path):
    make_competition(tmp_path, n_train=30)
    path = tmp_path / "data" / "tiny" / "train.csv"
    df = pd.read_csv(path, dtype=str)
    outside = tmp_path / "data" / "outside.png"
    shutil.copy(tmp_path / "data" / "tiny" / "train" / f"{df.image_id[0]}.png", outside)
    df.loc[0, "image_id"] = "../../outside"
    df.to_csv(path, index=False)
    clean_error(run_cli("folds", "-c", "competition.yaml", cwd=tmp_path, check=False),
                "point outside data_dir", "'../../outside'", "images_outside_data_dir")
    run_cli("folds", "-c", "competition.yaml", "images_outside_data_dir=true", cwd=tmp_path)


@pytest.mark.slow
def test_symlinks_that_leave_data_dir_are_refused_like_ids(tmp_path):
    """An image (or a folder) under data_dir that is a symbolic link to a file outside it was followed,
    although an id that leaves data_dir is refused: refused likewise, naming the file."""
    make_competition(tmp_path, n_train=30)
    data = tmp_path / "data" / "tiny"
    victim = pd.read_csv(data / "train.csv", dtype=str).image_id[3]
    image, outside = data / "train" / f"{victim}.png", tmp_path / "elsewhere.png"
    image.rename(outside)
    image.symlink_to(outside)
    for command in ("folds", "check"):
        clean_error(run_cli(command, "-c", "competition.yaml", cwd=tmp_path, check=False),
                    "data/tiny/train.csv: 1 image(s) under data_dir data/tiny are symbolic links", f"{victim}.png",
                    "images_outside_data_dir: true")
    run_cli("folds", "-c", "competition.yaml", "images_outside_data_dir=true", cwd=tmp_path)
    image.unlink()  # a link that stays inside data_dir is fine
    outside.rename(data / "kept.png")
    image.symlink_to(data / "kept.png")
    run_cli("folds", "-c", "competition.yaml", "--force", "--comp-args", "", cwd=tmp_path)  # clears the key
    (data / "test").rename(tmp_path / "test-elsewhere")  # a linked folder
    (data / "test").symlink_to(tmp_path / "test-elsewhere")
    clean_error(run_cli("folds", "-c", "competition.yaml", "--force", cwd=tmp_path, check=False),
                "sample_submission.csv: 12 image(s) under data_dir data/tiny are symbolic links", "data/tiny/test/")


@pytest.mark.slow
def test_a_few_unreadable_images_run_end_to_end_under_bad_images_skip(tmp_path):
    """Unreadable train and test images stop `make folds` with an error naming the competition key
    bad_images; with bad_images: skip, folds, train-all and ensemble run through and the submission
    covers every test row."""
    make_competition(tmp_path, n_train=30, n_test=6, models_dir="models")
    write_yaml(tmp_path / "models" / "tiny.yaml", {**TINY_MODEL, "epochs": 1})
    data = tmp_path / "data" / "tiny"
    train_ids = pd.read_csv(data / "train.csv", dtype=str).image_id
    test_ids = pd.read_csv(data / "sample_submission.csv", dtype=str).image_id
    for path in (data / "train" / f"{train_ids[2]}.png", data / "train" / f"{train_ids[11]}.png",
                 data / "test" / f"{test_ids[0]}.png"):
        path.write_bytes(b"\x89PNG\r\n\x1a\ntruncated")
    clean_error(make(tmp_path, "folds"), "2 train image(s) cannot be decoded", f"{train_ids[2]}.png",
                "set the competition key bad_images: skip")
    proc = make(tmp_path, "folds", "train-all", "ensemble", "METHOD=mean", "COMP_ARGS=bad_images=skip")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "skipping" in proc.stderr and f"{train_ids[2]}.png" in proc.stderr
    submission = pd.read_csv(tmp_path / "submissions" / "submission.csv", dtype=str)
    assert sorted(submission.image_id) == sorted(test_ids)


# --- 14: nothing reaches generated code unquoted -----------------------------------------------------------------


@pytest.mark.slow
def test_slugs_are_checked_and_the_kernel_script_quotes_its_values(copy):
    evil = 'x"; open("pwned", "w"); "'
    clean_error(run_cli("package", "-c", "competition.yaml", "--competition-slug", evil, cwd=copy, check=False),
                "competition slug", "is not valid on Kaggle")
    shutil.copytree(copy / "data" / "tiny", copy / "data" / "Bad Name")  # predict's record still finds its inputs
    config = yaml.safe_load((copy / "competition.yaml").read_text())
    write_yaml(copy / "evil.yaml", {**config, "data_dir": "data/Bad Name"})
    clean_error(run_cli("package", "-c", "evil.yaml", "--wheels", "", cwd=copy, check=False),
                "the data folder's name; set COMPETITION_SLUG=")
    clean_error(run_cli("package", "-c", "evil.yaml", "--competition-slug", "tiny-comp", "--kaggle-user", "a b",
                        cwd=copy, check=False), "Kaggle user 'a b'")
    run_cli("package", "-c", "evil.yaml", "--competition-slug", "tiny-comp", "--wheels", "", "--out", "dist/ok",
            cwd=copy)
    script = next((copy / "dist/ok/kernel").glob("*.py"))  # the kernel's code holds no value: bundle.json does
    assert script.read_bytes() == (REPO / "pipeline" / "kaggle" / "notebook.py").read_bytes()
    settings = json.loads((copy / "dist/ok/dataset/bundle.json").read_text())["kernel"]
    assert settings["data_dir"] == "/kaggle/input/tiny-comp" and not (copy / "pwned").exists()


def test_missing_markers_cover_pandas_defaults():
    import pandas._libs.parsers as parsers

    assert set(parsers.STR_NA_VALUES) <= MISSING_TEXT
