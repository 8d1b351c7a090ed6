"""Competitions shaped like real Kaggle ones, each through `make folds train-all ensemble`.

Every competition is generated from scikit-learn's digits (real, learnable images) in its own folder, and
trained by a tiny timm model on CPU. Each test reads the written submission, scores it against the answer
key with scikit-learn or by hand (not through the pipeline's own metrics), and checks that it beats the
naive baseline of the shape: the majority class, the mean, the most frequent labels, the class prior.
"""

from __future__ import annotations

import shutil
import subprocess

import cv2
import numpy as np
import pandas as pd
import pytest
from sklearn.datasets import load_digits
from sklearn.metrics import accuracy_score, f1_score, mean_squared_error, roc_auc_score

from tests.conftest import REPO, run_cli, write_yaml

pytestmark = pytest.mark.slow  # end-to-end runs: `make test-fast` skips them

MAKE = ["make", "--no-print-directory", "-f", str(REPO / "Makefile")]
MODEL = {"backbone": "test_resnet", "in_chans": 1, "img_size": 16, "epochs": 6, "batch_size": 32, "lr": 0.01,
         "augment": "none", "num_workers": 0, "warmup_epochs": 0.5, "tta": "none"}
SCORES: dict[str, tuple[float, float]] = {}  # shape -> (submission score, baseline), printed at the end


def digits(classes=tuple(range(10)), n: int | None = None, seed: int = 0):
    """(images 8x8 uint8 in 0..255, labels) of the chosen digit classes, shuffled."""
    d = load_digits()
    keep = np.isin(d.target, classes)
    x, y = (d.images[keep] * 255 / 16).astype(np.uint8), d.target[keep]
    order = np.random.default_rng(seed).permutation(len(y))[:n]
    return x[order], y[order]


def grow(img: np.ndarray, h: int, w: int) -> np.ndarray:
    return cv2.resize(img, (w, h), interpolation=cv2.INTER_LINEAR)


def write_images(folder, names, images, ext=".png"):
    for name, img in zip(names, images):
        path = folder / f"{name}{ext}"
        path.parent.mkdir(parents=True, exist_ok=True)
        assert cv2.imwrite(str(path), img)


def lay_out(root, train: pd.DataFrame, test: pd.DataFrame, answers: pd.DataFrame, sample_value, **config):
    """train.csv, sample_submission.csv (ids + `sample_value` columns), answers.csv and competition.yaml."""
    data = root / "data" / "c"
    data.mkdir(parents=True, exist_ok=True)
    train.to_csv(data / "train.csv", index=False)
    sample = pd.DataFrame({"id": test["id"]})
    for col, value in sample_value.items():
        sample[col] = value
    sample.to_csv(data / "sample_submission.csv", index=False)
    answers.to_csv(root / "answers.csv", index=False)
    write_yaml(root / "models" / "tiny.yaml", {**MODEL, **config.pop("model", {})})
    write_yaml(root / "competition.yaml", {"data_dir": "data/c", "id_col": "id", "n_folds": 2, "seed": 0,
                                           "answers": "answers.csv", "models_dir": "models",
                                           "train_images": "train/{id}.png", "test_images": "test/{id}.png",
                                           **config})


def run_pipeline(root) -> pd.DataFrame:
    proc = subprocess.run([*MAKE, "folds", "train-all", "ensemble", "COMPETITION=competition.yaml"], cwd=root,
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return pd.read_csv(root / "submissions" / "submission.csv", dtype=str, keep_default_na=False)


def kernel_reproduces(root) -> None:
    """`package`, then the Kaggle kernel on the test images alone writes the same submission."""
    from tests.test_package import same_submission

    run_cli("package", "-c", "competition.yaml", "--wheels", "", "--competition-slug", "c", cwd=root)
    shutil.copytree(root / "data" / "c", root / "input" / "c", ignore=shutil.ignore_patterns("train", "train.csv"))
    run_cli("kernel", "--bundle", "dist/kaggle/dataset", "--data-dir", "input/c", "--out", "kernel/submission.csv",
            cwd=root)
    same_submission(root / "kernel" / "submission.csv", root / "submissions" / "submission.csv")


def split(n_test: int, *arrays):
    return [a[n_test:] for a in arrays], [a[:n_test] for a in arrays]


def record(shape: str, score: float, baseline: float, greater_is_better: bool = True) -> None:
    SCORES[shape] = (score, baseline)
    print(f"{shape}: submission {score:.4f}, baseline {baseline:.4f}")
    assert (score > baseline) if greater_is_better else (score < baseline), (shape, score, baseline)


# --- the shapes ---------------------------------------------------------------------------------------


def test_non_square_rgb_jpegs_with_extension_ids_under_pad(tmp_path):
    """Varied-size, non-square colour JPEGs whose ids end in .jpg, read through the template {id}."""
    x, y = digits((0, 1, 2), n=240)
    rng = np.random.default_rng(1)
    ids = [f"img{i:03d}.jpg" for i in range(len(y))]
    images = []
    for img in x:  # a digit on a wide canvas of random size, in a random colour
        h = int(rng.integers(20, 33))
        w = int(h * rng.uniform(1.4, 2.0))
        canvas = np.zeros((h, w, 3), np.uint8)
        left = int(rng.integers(0, w - h + 1))
        colour = rng.uniform(0.5, 1.0, 3)
        canvas[:, left:left + h] = (grow(img, h, h)[..., None] * colour).astype(np.uint8)
        images.append(canvas)
    (tr_ids, tr_y), (te_ids, te_y) = split(60, np.array(ids), y)
    te_images, tr_images = images[:60], images[60:]
    for folder, names, imgs in (("train", tr_ids, tr_images), ("test", te_ids, te_images)):
        for name, img in zip(names, imgs):
            path = tmp_path / "data" / "c" / folder / name
            path.parent.mkdir(parents=True, exist_ok=True)
            assert cv2.imwrite(str(path), img)
    labels = np.array(["zero", "one", "two"])
    lay_out(tmp_path, pd.DataFrame({"id": tr_ids, "label": labels[tr_y]}), pd.DataFrame({"id": te_ids}),
            pd.DataFrame({"id": te_ids, "label": labels[te_y]}), {"label": "zero"},
            target="label", task="multiclass", metric="accuracy", train_images="train/{id}",
            test_images="test/{id}", model={"in_chans": 3, "img_size": [16, 32], "resize": "pad"})
    sub = run_pipeline(tmp_path)
    truth = labels[te_y]
    majority = pd.Series(labels[tr_y]).mode()[0]
    record("non-square RGB JPEGs, resize pad (accuracy)", accuracy_score(truth, sub["label"]),
           accuracy_score(truth, [majority] * len(truth)))


def tags_images(n: int, seed: int):
    """Two digit slots side by side; each slot shows 0, 1 or 7 or stays empty; tags name the digits shown."""
    x, y = digits((0, 1, 7), n=600, seed=seed)
    names = {0: "zero", 1: "one", 7: "seven"}
    rng = np.random.default_rng(seed)
    images, tags = [], []
    for _ in range(n):
        slots = [int(i) if rng.random() < 0.7 else None for i in rng.integers(0, len(y), 2)]
        if slots == [None, None]:
            slots[0] = int(rng.integers(0, len(y)))
        tiles = [grow(x[i], 16, 16) if i is not None else np.zeros((16, 16), np.uint8) for i in slots]
        images.append(np.concatenate(tiles, axis=1))
        tags.append(" ".join(sorted({names[int(y[i])] for i in slots if i is not None})))
    return images, tags


def test_tags_multilabel_scored_by_f1_with_tuned_thresholds(tmp_path):
    images, tags = tags_images(300, seed=0)
    ids = np.array([f"t{i:03d}" for i in range(len(tags))])
    (tr_ids, tr_tags), (te_ids, te_tags) = split(80, ids, np.array(tags))
    write_images(tmp_path / "data" / "c" / "train", tr_ids, images[80:])
    write_images(tmp_path / "data" / "c" / "test", te_ids, images[:80])
    lay_out(tmp_path, pd.DataFrame({"id": tr_ids, "tags": tr_tags}), pd.DataFrame({"id": te_ids}),
            pd.DataFrame({"id": te_ids, "tags": te_tags}), {"tags": "zero"},
            target="tags", task="multilabel", metric="f1_samples", model={"img_size": [16, 32]})
    sub = run_pipeline(tmp_path)
    classes = ["one", "seven", "zero"]

    def matrix(cells):
        return np.array([[c in str(cell).split() for c in classes] for cell in cells], dtype=int)

    truth = matrix(te_tags)
    counts = matrix(tr_tags).sum(axis=0)
    prior = [" ".join(np.array(classes)[counts >= counts.max()])] * len(truth)  # the most frequent label
    record("tags multilabel (f1_samples)", f1_score(truth, matrix(sub["tags"]), average="samples", zero_division=0),
           f1_score(truth, matrix(prior), average="samples", zero_division=0))
    cv = (tmp_path / "submissions" / "cv.md").read_text()
    assert "+thr" in cv  # the tuned-threshold blends were scored
    kernel_reproduces(tmp_path)


def test_regression_scored_by_rmse(tmp_path):
    """The target is the brightness the digit is drawn with (0..100), plus noise."""
    x, _ = digits(n=300)
    rng = np.random.default_rng(2)
    value = rng.uniform(0, 100, len(x))
    images = [(grow(img, 16, 16) * (0.1 + 0.9 * v / 100)).astype(np.uint8) for img, v in zip(x, value)]
    target = value + rng.normal(0, 3, len(x))
    ids = np.array([f"r{i:03d}" for i in range(len(x))])
    (tr_ids, tr_t), (te_ids, te_t) = split(80, ids, target)
    write_images(tmp_path / "data" / "c" / "train", tr_ids, images[80:])
    write_images(tmp_path / "data" / "c" / "test", te_ids, images[:80])
    lay_out(tmp_path, pd.DataFrame({"id": tr_ids, "score": np.round(tr_t, 3)}), pd.DataFrame({"id": te_ids}),
            pd.DataFrame({"id": te_ids, "score": np.round(te_t, 3)}), {"score": 0.0},
            target="score", task="regression", metric="rmse", model={"epochs": 8})
    sub = run_pipeline(tmp_path)
    pred = sub["score"].astype(float).to_numpy()
    rmse = float(np.sqrt(mean_squared_error(te_t, pred)))
    baseline = float(np.sqrt(mean_squared_error(te_t, np.full(len(te_t), tr_t.mean()))))
    record("regression (rmse)", rmse, baseline, greater_is_better=False)
    kernel_reproduces(tmp_path)


def test_custom_metric_from_a_file(tmp_path):
    x, y = digits((3, 5, 8), n=270)
    images = [grow(img, 16, 16) for img in x]
    ids = np.array([f"m{i:03d}" for i in range(len(y))])
    (tr_ids, tr_y), (te_ids, te_y) = split(70, ids, y.astype(str))
    write_images(tmp_path / "data" / "c" / "train", tr_ids, images[70:])
    write_images(tmp_path / "data" / "c" / "test", te_ids, images[:70])
    (tmp_path / "my_metric.py").write_text(
        "import numpy as np\n\n\ndef worst_class_recall(y_true, y_pred):\n"
        "    hit = y_pred.argmax(axis=1) == y_true\n"
        "    return float(min(hit[y_true == c].mean() for c in np.unique(y_true)))\n")
    lay_out(tmp_path, pd.DataFrame({"id": tr_ids, "digit": tr_y}), pd.DataFrame({"id": te_ids}),
            pd.DataFrame({"id": te_ids, "digit": te_y}), {"digit": "3"},
            target="digit", task="multiclass", metric="my_metric.py:worst_class_recall", greater_is_better=True)
    sub = run_pipeline(tmp_path)
    cv = (tmp_path / "submissions" / "cv.json").read_text()
    assert "worst_class_recall" in cv

    def worst_recall(truth, pred):
        return min((pred[truth == c] == c).mean() for c in np.unique(truth))

    majority = pd.Series(tr_y).mode()[0]
    record("custom metric from a file (worst-class recall)", worst_recall(te_y, sub["digit"].to_numpy()),
           worst_recall(te_y, np.full(len(te_y), majority)))
    kernel_reproduces(tmp_path)  # the kernel scores nothing: no metric file needed


def test_binary_with_one_probability_column(tmp_path):
    x, y = digits((4, 9), n=240)
    images = [grow(img, 16, 16) for img in x]
    ids = np.array([f"b{i:03d}" for i in range(len(y))])
    labels = np.where(y == 9, "1", "0")
    (tr_ids, tr_y), (te_ids, te_y) = split(60, ids, labels)
    write_images(tmp_path / "data" / "c" / "train", tr_ids, images[60:])
    write_images(tmp_path / "data" / "c" / "test", te_ids, images[:60])
    lay_out(tmp_path, pd.DataFrame({"id": tr_ids, "target": tr_y}), pd.DataFrame({"id": te_ids}),
            pd.DataFrame({"id": te_ids, "target": te_y}), {"target": 0.5},
            target="target", task="binary", metric="auc")
    sub = run_pipeline(tmp_path)
    p = sub["target"].astype(float).to_numpy()
    assert ((p >= 0) & (p <= 1)).all() and len(np.unique(p)) > 2  # probabilities, not labels
    truth = (te_y == "1").astype(int)
    record("binary, one probability column (auc)", roc_auc_score(truth, p),
           roc_auc_score(truth, np.full(len(p), (tr_y == "1").mean())))


def map_at_k(truth, cells, k):
    total = 0.0
    for t, cell in zip(truth, cells):
        guesses = str(cell).split()[:k]
        total += 1.0 / (guesses.index(t) + 1) if t in guesses else 0.0
    return total / len(truth)


def test_topk_submission_scored_by_map_at_k(tmp_path):
    x, y = digits(n=400)
    images = [grow(img, 16, 16) for img in x]
    names = np.array([f"d{c}" for c in y])
    ids = np.array([f"k{i:03d}" for i in range(len(y))])
    (tr_ids, tr_y), (te_ids, te_y) = split(100, ids, names)
    write_images(tmp_path / "data" / "c" / "train", tr_ids, images[100:])
    write_images(tmp_path / "data" / "c" / "test", te_ids, images[:100])
    lay_out(tmp_path, pd.DataFrame({"id": tr_ids, "digit": tr_y}), pd.DataFrame({"id": te_ids}),
            pd.DataFrame({"id": te_ids, "digit": te_y}), {"digit": "d0 d1 d2"},
            target="digit", task="multiclass", metric="map@k", k=3, submission_format="topk")
    sub = run_pipeline(tmp_path)
    assert sub["digit"].str.split().map(len).eq(3).all()
    frequent = " ".join(pd.Series(tr_y).value_counts().index[:3])
    record("top-k (map@3)", map_at_k(te_y, sub["digit"], 3), map_at_k(te_y, [frequent] * len(te_y), 3))
    kernel_reproduces(tmp_path)


@pytest.fixture(scope="module", autouse=True)
def table_of_scores():
    yield
    if SCORES:
        print("\n| shape | submission | baseline |\n|---|---|---|")
        for shape, (score, baseline) in SCORES.items():
            print(f"| {shape} | {score:.4f} | {baseline:.4f} |")


def test_fine_grained_heads_gem_and_arcface_through_every_stage(tmp_path):
    """GeM pooling (p learned) and a sub-center ArcFace head: train, predict with TTA, blend, report
    (Grad-CAM through the swapped head), package, and the kernel reproduces the submission."""
    x, y = digits((1, 3, 5, 7, 9), n=300)
    images = [grow(img, 16, 16) for img in x]
    ids = np.array([f"g{i:03d}" for i in range(len(y))])
    (tr_ids, tr_y), (te_ids, te_y) = split(75, ids, y.astype(str))
    write_images(tmp_path / "data" / "c" / "train", tr_ids, images[75:])
    write_images(tmp_path / "data" / "c" / "test", te_ids, images[:75])
    lay_out(tmp_path, pd.DataFrame({"id": tr_ids, "digit": tr_y}), pd.DataFrame({"id": te_ids}),
            pd.DataFrame({"id": te_ids, "digit": te_y}), {"digit": "1"}, target="digit", task="multiclass",
            metric="accuracy", model={"pool": "gem", "head": "arcface", "arcface_scale": 16.0,
                                      "arcface_margin": 0.2, "tta": ["none", "hflip"]})
    sub = run_pipeline(tmp_path)
    majority = pd.Series(tr_y).mode()[0]
    record("GeM + ArcFace heads (accuracy)", accuracy_score(te_y, sub["digit"]),
           accuracy_score(te_y, np.full(len(te_y), majority)))
    from pipeline.core.io import load_checkpoint

    state = load_checkpoint(tmp_path / "runs" / "tiny" / "fold0" / "best.pt")["model"]
    p = [v for k, v in state.items() if k.endswith("global_pool.p")]
    assert len(p) == 1 and float(p[0]) != 3.0  # GeM's p was learned
    assert any(k.endswith("fc.weight") and v.shape[0] == 5 * 3 for k, v in state.items())  # 3 sub-centers a class
    proc = subprocess.run([*MAKE, "report", "COMPETITION=competition.yaml"], cwd=tmp_path, capture_output=True,
                          text=True)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert list((tmp_path / "submissions" / "report").glob("gradcam*.png"))
    kernel_reproduces(tmp_path)
