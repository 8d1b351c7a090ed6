import shutil

import numpy as np
import pandas as pd
import pytest

from tests.conftest import REPO, edit_train, make_competition, run_cli


def read(root):
    return pd.read_csv(root / "folds" / "folds.csv", dtype={"image_id": str})


def labels(root):
    return pd.read_csv(root / "data" / "tiny" / "train.csv", dtype=str)


@pytest.fixture(scope="module")
def demo_folds(tmp_path_factory):
    """`python -m pipeline folds` on the repo's demo config, from an empty folder."""
    root = tmp_path_factory.mktemp("demo")
    shutil.copytree(REPO / "configs", root / "configs")
    proc = run_cli("folds", cwd=root)
    return root, proc


def test_demo_folds_cover_every_id_once(demo_folds):
    root, proc = demo_folds
    train = pd.read_csv(root / "data" / "demo" / "train.csv", dtype=str)
    folds = read(root)
    assert list(folds.columns) == ["image_id", "fold"]
    assert folds["image_id"].is_unique
    assert sorted(folds["image_id"]) == sorted(train["image_id"])
    assert sorted(folds["fold"].unique()) == [0, 1, 2, 3, 4]
    assert "writing the digits demo" in proc.stdout and "rows" in proc.stdout


def test_demo_folds_class_balance_within_one_row(demo_folds):
    root, _ = demo_folds
    train = pd.read_csv(root / "data" / "demo" / "train.csv", dtype=str)
    merged = train.merge(read(root), on="image_id")
    counts = pd.crosstab(merged["fold"], merged["label"])
    ideal = counts.sum(axis=0) / 5
    assert ((counts - ideal).abs() < 1).all().all(), counts


def test_demo_folds_skip_when_up_to_date_and_rebuild_on_change(demo_folds):
    root, _ = demo_folds
    before = (root / "folds" / "folds.csv").stat().st_mtime_ns
    original = read(root)
    proc = run_cli("folds", cwd=root)
    assert "up to date" in proc.stdout
    assert (root / "folds" / "folds.csv").stat().st_mtime_ns == before
    proc = run_cli("folds", "seed=1", cwd=root)  # new config -> recomputed, different assignment
    assert "wrote" in proc.stdout and not read(root)["fold"].equals(original["fold"])
    run_cli("folds", "seed=42", cwd=root)
    assert read(root).equals(original)


def test_folds_deterministic_and_seed_dependent(tiny):
    run_cli("folds", "-c", "competition.yaml", cwd=tiny)
    first = read(tiny)
    run_cli("folds", "-c", "competition.yaml", "--force", cwd=tiny)
    assert read(tiny).equals(first)
    run_cli("folds", "-c", "competition.yaml", "seed=5", cwd=tiny)
    assert not read(tiny)["fold"].equals(first["fold"])


def test_groups_never_straddle_folds(tmp_path):
    make_competition(tmp_path, n_train=90, group_col="patient")
    edit_train(tmp_path, lambda df: df.assign(patient=[f"p{i // 3}" for i in range(len(df))]))
    run_cli("folds", "-c", "competition.yaml", cwd=tmp_path)
    merged = labels(tmp_path).merge(read(tmp_path), on="image_id")
    assert (merged.groupby("patient")["fold"].nunique() == 1).all()
    assert "group" in read(tmp_path).columns


def test_duplicate_images_share_a_fold_and_are_reported(tmp_path):
    make_competition(tmp_path, n_train=60)
    train = labels(tmp_path)
    img = tmp_path / "data" / "tiny" / "train"
    copies = [(0, 1), (0, 2), (5, 9), (10, 11)]  # 0,1,2 form one set; 5,9 and 10,11 two more
    for a, b in copies:
        shutil.copy(img / f"{train.image_id[a]}.png", img / f"{train.image_id[b]}.png")
    test_img = tmp_path / "data" / "tiny" / "test"
    shutil.copy(img / f"{train.image_id[20]}.png", next(test_img.iterdir()))
    proc = run_cli("folds", "-c", "competition.yaml", cwd=tmp_path)
    folds = read(tmp_path).set_index("image_id")["fold"]
    for a, b in copies:
        assert folds[train.image_id[a]] == folds[train.image_id[b]]
    assert "7 rows in 3 sets" in proc.stdout
    assert "also appear in test: 1" in proc.stdout


def test_multilabel_uses_iterative_stratification(tmp_path):
    make_competition(tmp_path, n_train=80, task="multilabel", target=["a", "b", "c"])
    rng = np.random.default_rng(0)
    edit_train(tmp_path, lambda df: df.assign(**{k: rng.integers(0, 2, len(df)) for k in "abc"}))
    run_cli("folds", "-c", "competition.yaml", cwd=tmp_path)
    merged = labels(tmp_path).merge(read(tmp_path), on="image_id")
    pos = merged[list("abc")].astype(int).groupby(merged["fold"]).sum()
    assert (pos.max() - pos.min() <= 2).all(), pos


def test_ordinal_stratifies_on_values(tmp_path):
    make_competition(tmp_path, n_train=60, task="ordinal", metric="qwk")
    edit_train(tmp_path, lambda df: df.assign(label=[str(i % 4) for i in range(len(df))]))
    run_cli("folds", "-c", "competition.yaml", cwd=tmp_path)
    merged = labels(tmp_path).merge(read(tmp_path), on="image_id")
    counts = pd.crosstab(merged["fold"], merged["label"])
    assert (counts.max() - counts.min() <= 1).all()


# --- bad input: a clear message, exit 2, nothing written --------------------------------------


def fails(root, *needles, args=()):
    proc = run_cli("folds", "-c", "competition.yaml", *args, cwd=root, check=False)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    for needle in needles:
        assert needle in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (root / "folds" / "folds.csv").exists()
    return proc.stderr


def test_missing_image(tiny):
    victim = labels(tiny).image_id[3]
    (tiny / "data" / "tiny" / "train" / f"{victim}.png").unlink()
    fails(tiny, "1 train image(s) missing", victim, "train_images")


def test_unreadable_image(tiny):
    victim = labels(tiny).image_id[4]
    (tiny / "data" / "tiny" / "train" / f"{victim}.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    fails(tiny, "1 train image(s) cannot be decoded", victim, "set the competition key bad_images: skip",
          "COMP_ARGS=bad_images=skip")


def test_unreadable_images_get_folds_under_bad_images_skip(tiny):
    """The competition key bad_images: skip lets folds through: the rows keep their folds (training and
    prediction skip the images), and a warning names them."""
    victims = list(labels(tiny).image_id[[4, 9]])
    for victim in victims:
        (tiny / "data" / "tiny" / "train" / f"{victim}.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    proc = run_cli("folds", "-c", "competition.yaml", "bad_images=skip", cwd=tiny)
    assert "warning: 2 train image(s) cannot be decoded; with bad_images: skip their rows still get a fold" in proc.stderr
    assert all(v in proc.stderr for v in victims)
    assert sorted(read(tiny).image_id) == sorted(labels(tiny).image_id)


def test_duplicate_ids(tiny):
    edit_train(tiny, lambda df: pd.concat([df, df.iloc[[7]]]))
    fails(tiny, "duplicate id", labels(tiny).image_id[7])


def test_empty_label(tiny):
    victim = labels(tiny).image_id[2]
    edit_train(tiny, lambda df: df.assign(label=df.label.where(df.image_id != victim, "")))
    fails(tiny, "empty value in column 'label'", victim)


def test_rare_class_suggests_fewer_folds(tiny):
    ids = labels(tiny).image_id
    edit_train(tiny, lambda df: df.assign(label=df.label.where(~df.image_id.isin(ids[:2]), "rare")))
    fails(tiny, "'rare' (2 rows)", "fewer folds", "n_folds=2")
    # one row: no n_folds can help, and the message does not pretend it can (n_folds=2 would fail the same way)
    edit_train(tiny, lambda df: df.assign(label=df.label.where(df.image_id != ids[0], "c0")))
    err = fails(tiny, "'rare' (1 rows)", "single row", "merge it into another class or drop it")
    assert "n_folds=2" not in err
    assert run_cli("folds", "-c", "competition.yaml", "n_folds=2", cwd=tiny, check=False).returncode == 2


def test_missing_target_column(tiny):
    fails(tiny, "column(s) ['species']", "target", args=["target=species"])


def test_wrong_id_column(tiny):
    fails(tiny, "id column 'id'", "id_col", args=["id_col=id"])


def test_too_few_groups(tmp_path):
    make_competition(tmp_path, n_train=30, group_col="site")
    edit_train(tmp_path, lambda df: df.assign(site=["a", "b"] * 15))
    fails(tmp_path, "only 2 groups", "fewer folds")
