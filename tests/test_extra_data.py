"""External labelled data (competition keys extra_train, extra_images): the extra rows join every fold's
training part, never its validation part, folds.csv or the OOF table; the table is checked like train.csv
(unknown classes, missing images, ids that collide), and it is an input of every fold's record, so changing
it makes the folds stale."""

from __future__ import annotations

import json
import shutil

import cv2
import numpy as np
import pandas as pd
import pytest

from pipeline.core.config import ADDED_COMPETITION_KEYS, NEUTRAL_KEYS, ConfigError, config_hash, load_competition
from pipeline.core.data import read_extra, read_train
from pipeline.core.errors import DataError
from tests.conftest import TINY_MODEL, make_competition, read_table_file, run_cli, write_yaml

N_EXTRA = 6
EXTRA_KEYS = {"extra_train": "extra.csv", "extra_images": "extra/{id}.png"}


def write_extra(root, n: int = N_EXTRA, labels: list[str] | None = None, ids: list[str] | None = None,
                images: bool = True) -> pd.DataFrame:
    """data/tiny/extra.csv and its images data/tiny/extra/<id>.png (8x8 random)."""
    data = root / "data" / "tiny"
    ids = ids or [f"xtra_{i}" for i in range(n)]
    labels = labels or [f"c{i % 3}" for i in range(len(ids))]
    (data / "extra").mkdir(exist_ok=True)
    rng = np.random.default_rng(1)
    if images:
        for i in ids:
            cv2.imwrite(str(data / "extra" / f"{i}.png"), rng.integers(0, 256, (8, 8), dtype=np.uint8))
    df = pd.DataFrame({"image_id": ids, "label": labels})
    df.to_csv(data / "extra.csv", index=False)
    return df


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    """A tiny competition of 30 train rows, 3 folds, and 6 extra rows (made once: `folds` is a process)."""
    root = tmp_path_factory.mktemp("extra")
    make_competition(root, n_train=30, models_dir="models", **EXTRA_KEYS)
    write_extra(root)
    write_yaml(root / "models" / "tiny.yaml", {**TINY_MODEL, "epochs": 1})
    run_cli("folds", "-c", "competition.yaml", cwd=root)
    return root


def comp_of(root, **overrides):
    return load_competition(root / "competition.yaml", [f"{k}={v}" for k, v in overrides.items()])


# --- config ----------------------------------------------------------------------------------------------


def test_the_keys_leave_the_competition_hash_of_projects_without_them(tiny):
    comp = load_competition(tiny / "competition.yaml")
    assert {"extra_train", "extra_images"} <= set(ADDED_COMPETITION_KEYS)
    assert "extra_train" not in comp.model_dump() and "extra_images" not in comp.model_dump()
    with_extra = load_competition(tiny / "competition.yaml", [f"{k}={v}" for k, v in EXTRA_KEYS.items()])
    assert with_extra.extra_train_path == comp.data_dir / "extra.csv"
    assert load_competition(tiny / "competition.yaml", ["extra_train=/x/e.csv", "extra_images=e/{id}.png"]
                            ).extra_train_path.as_posix() == "/x/e.csv"
    # the fold split does not depend on them: folds.csv's record keeps its competition hash
    assert config_hash(with_extra, NEUTRAL_KEYS) == config_hash(comp, NEUTRAL_KEYS)


@pytest.mark.parametrize("given, message", [
    (["extra_train=extra.csv"], "key 'extra_images': required with 'extra_train'"),
    (["extra_images=extra/{id}.png"], "key 'extra_train': required with 'extra_images'"),
    (["extra_train=extra.csv", "extra_images=extra/x.png"], "key 'extra_images': path template must contain '{id}'"),
])
def test_the_keys_are_validated(tiny, given, message):
    with pytest.raises(ConfigError, match="competition.yaml") as err:
        load_competition(tiny / "competition.yaml", given)
    assert message in str(err.value)


# --- a fold trains on the extra rows and validates on train rows only ----------------------------------------


@pytest.mark.slow
def test_extra_rows_join_training_only_and_a_changed_table_makes_the_fold_stale(tmp_path, prepared, monkeypatch):
    shutil.copytree(prepared, tmp_path, dirs_exist_ok=True)
    proc = run_cli("train", "-c", "competition.yaml", "--model", "tiny", "--fold", "0", cwd=tmp_path)
    extra_csv = "data/tiny/extra.csv"
    assert (f"tiny fold0: training on 20 train rows + {N_EXTRA} extra rows ({extra_csv}); validating on 10 "
            "train rows only") in proc.stdout
    fold = tmp_path / "runs" / "tiny" / "fold0"
    done = json.loads((fold / "done.json").read_text())
    assert done["extra_rows"] == N_EXTRA and done["train_rows"] == 20
    assert extra_csv in done["inputs"] and done["params"]["extra_images"] == "extra/{id}.png"

    train_ids = set(pd.read_csv(tmp_path / "data/tiny/train.csv", dtype=str)["image_id"])
    folds = pd.read_csv(tmp_path / "folds/folds.csv", dtype=str)
    assert set(folds["image_id"]) == train_ids  # no extra id in folds.csv
    oof = read_table_file(fold / "oof.parquet")
    assert len(oof) == 10 and set(oof["image_id"]) <= train_ids
    assert set(oof["image_id"]) == set(folds.loc[folds["fold"] == "0", "image_id"])

    from pipeline.train.folddata import fold_data

    monkeypatch.chdir(tmp_path)
    data = fold_data(comp_of(tmp_path), tmp_path / "folds/folds.csv", 0, None)
    trained = [p.name for p in data.train_paths]
    assert sum(n.startswith("xtra_") for n in trained) == N_EXTRA and data.extra_rows == N_EXTRA
    assert not any(p.name.startswith("xtra_") for p in data.val_paths)
    assert len(data.train_targets) == 20 + N_EXTRA

    # the same table: nothing to train; a changed table: the fold is stale, and plan and train say so
    plan = run_cli("plan", "-c", "competition.yaml", "--models", "tiny", cwd=tmp_path)
    assert "runs/tiny/fold0/done.json" not in plan.stdout and "runs/tiny/fold1/done.json" in plan.stdout
    write_extra(tmp_path, n=N_EXTRA - 1)
    plan = run_cli("plan", "-c", "competition.yaml", "--models", "tiny", cwd=tmp_path)
    assert "runs/tiny/fold0/done.json" in plan.stdout and "fold0 (extra table changed)" in plan.stderr
    proc = run_cli("train", "-c", "competition.yaml", "--model", "tiny", "--fold", "0", cwd=tmp_path)
    assert "extra table changed; training it again" in proc.stdout
    assert f"+ {N_EXTRA - 1} extra rows" in proc.stdout


# --- bad extra tables are refused, naming the file and the rows -----------------------------------------------


@pytest.mark.parametrize("case, message", [
    ("unknown class", "extra.csv: label(s) zebra in line(s) 3 are not classes of"),
    ("missing image", "extra.csv: 1 image(s) not found through the template 'extra/{id}.png' (competition key "
                      "'extra_images'):"),
    ("train id", "extra.csv: id(s) TAKEN in line(s) 3 are also ids of data/tiny/train.csv"),
    ("duplicate id", "extra.csv: 1 duplicate id(s) in column 'image_id': xtra_0"),
    ("empty label", "extra.csv: empty value in column 'label' in line(s) 4"),
    ("missing column", "extra.csv: target column(s) ['label'] (competition key 'target') not found"),
])
def test_a_bad_extra_table_is_refused_naming_the_file_and_rows(tiny, case, message, monkeypatch):
    monkeypatch.chdir(tiny)  # data_dir is relative to the project folder
    write_extra(tiny, n=3)
    path = tiny / "data" / "tiny" / "extra.csv"
    taken = pd.read_csv(tiny / "data" / "tiny" / "train.csv", dtype=str)["image_id"].iloc[1]
    message = message.replace("TAKEN", taken)
    df = pd.read_csv(path, dtype=str, keep_default_na=False)
    if case == "unknown class":
        df.loc[1, "label"] = "zebra"
    elif case == "missing image":
        (tiny / "data" / "tiny" / "extra" / "xtra_2.png").unlink()
    elif case == "train id":
        df.loc[1, "image_id"] = taken
        shutil.copy(tiny / "data" / "tiny" / "extra" / "xtra_1.png", tiny / "data" / "tiny" / "extra" / f"{taken}.png")
    elif case == "duplicate id":
        df.loc[1, "image_id"] = "xtra_0"
    elif case == "empty label":
        df.loc[2, "label"] = ""
    elif case == "missing column":
        df = df.rename(columns={"label": "class"})
    df.to_csv(path, index=False)
    comp = load_competition(tiny / "competition.yaml", [f"{k}={v}" for k, v in EXTRA_KEYS.items()])
    train = read_train(comp)
    with pytest.raises(DataError) as err:
        read_extra(comp, ["c0", "c1", "c2"], train["image_id"].tolist())
    assert message in str(err.value)
    if case == "missing image":
        assert "xtra_2.png (line(s) 4)" in str(err.value)


def test_check_validates_the_extra_table(tiny):
    make_competition(tiny, models_dir="models", **EXTRA_KEYS)
    write_extra(tiny, n=3, labels=["c0", "zebra", "c2"])
    proc = run_cli("check", "-c", "competition.yaml", cwd=tiny, check=False)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert "extra: data/tiny/extra.csv FAILED" in out
    assert "extra.csv: label(s) zebra in line(s) 3 are not classes of data/tiny/train.csv" in out
    write_extra(tiny, n=3)
    proc = run_cli("check", "-c", "competition.yaml", cwd=tiny, check=False)
    assert "extra: data/tiny/extra.csv: 3 rows, every label a class and every image found" in proc.stdout


# --- an extra image that copies a train image never trains the fold that validates on that image ------------


def test_an_extra_copy_of_a_train_image_is_left_out_of_the_folds_that_validate_on_it(tmp_path, monkeypatch):
    make_competition(tmp_path, n_train=30, **EXTRA_KEYS)
    write_extra(tmp_path)
    data = tmp_path / "data" / "tiny"
    train_ids = pd.read_csv(data / "train.csv", dtype=str)["image_id"].tolist()
    shutil.copyfile(data / "train" / f"{train_ids[4]}.png", data / "extra" / "xtra_1.png")  # a copy, new id
    proc = run_cli("folds", "-c", "competition.yaml", cwd=tmp_path)
    assert "extra images that copy a train image: 1 of 6" in proc.stdout
    pairs = pd.read_csv(tmp_path / "folds" / "extra_duplicates.csv", dtype=str)
    assert pairs[["extra_id", "train_id"]].values.tolist() == [["xtra_1", train_ids[4]]]
    assert json.loads((tmp_path / "folds" / "folds.json").read_text())["extra_copies"] == 1

    from pipeline.train.folddata import fold_data

    monkeypatch.chdir(tmp_path)
    folds = pd.read_csv(tmp_path / "folds" / "folds.csv", dtype=str)
    copied_fold = int(folds.set_index("image_id").loc[train_ids[4], "fold"])
    for k in range(3):
        fd = fold_data(comp_of(tmp_path), tmp_path / "folds/folds.csv", k, None)
        trained = {p.name for p in fd.train_paths}
        assert ("xtra_1.png" in trained) == (k != copied_fold), k
        assert fd.extra_rows == N_EXTRA - (k == copied_fold) and fd.extra_left_out == (k == copied_fold)

    write_extra(tmp_path)  # the copy replaced by an image of its own (images are not inputs: --force)
    run_cli("folds", "-c", "competition.yaml", "--force", cwd=tmp_path)
    assert not (tmp_path / "folds" / "extra_duplicates.csv").exists()
