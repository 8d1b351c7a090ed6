import cv2
import pandas as pd
import pytest

from pipeline.core.demo import DIGIT_CLASSES, FASHION_MNIST_DIR, answers_path, write_digits, write_fashion_mnist
from pipeline.core.io import file_md5


def test_digits_layout(tmp_path):
    out = write_digits(tmp_path / "data" / "demo")
    train = pd.read_csv(out / "train.csv", dtype=str)
    sample = pd.read_csv(out / "sample_submission.csv", dtype=str)
    answers = pd.read_csv(answers_path(out), dtype=str)
    assert list(train.columns) == ["image_id", "label"] and list(sample.columns) == ["image_id", "label"]
    assert len(train) == 1500 and len(sample) == 297 == len(answers)
    assert set(train.label) == set(DIGIT_CLASSES) and set(answers.label) == set(DIGIT_CLASSES)
    assert answers_path(out).parent == out.parent  # answers stay outside the competition folder
    assert not set(train.image_id) & set(sample.image_id)
    assert (answers.image_id == sample.image_id).all()
    img = cv2.imread(str(out / "train" / f"{train.image_id[0]}.png"), cv2.IMREAD_UNCHANGED)
    assert img.shape == (8, 8) and img.dtype == "uint8" and img.max() > 200
    assert len(list((out / "test").iterdir())) == 297


def test_digits_is_deterministic(tmp_path):
    a, b = write_digits(tmp_path / "a"), write_digits(tmp_path / "b")
    files = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file())
    assert all(file_md5(a / f) == file_md5(b / f) for f in files)


@pytest.mark.skipif(not FASHION_MNIST_DIR.is_dir(), reason="Debian package dataset-fashion-mnist not installed")
def test_fashion_mnist_subsample(tmp_path):
    out = write_fashion_mnist(tmp_path / "fm", n_train=200, n_test=50)
    train = pd.read_csv(out / "train.csv", dtype=str)
    assert len(train) == 200 and len(pd.read_csv(out / "sample_submission.csv")) == 50
    assert train.label.value_counts().min() == 20  # stratified: 10 classes x 20
    img = cv2.imread(str(out / "train" / f"{train.image_id[0]}.png"), cv2.IMREAD_UNCHANGED)
    assert img.shape == (28, 28)
    assert len(pd.read_csv(answers_path(out))) == 50


def test_fashion_mnist_missing_source_is_clear(tmp_path):
    with pytest.raises(FileNotFoundError, match="dataset-fashion-mnist"):
        write_fashion_mnist(tmp_path / "fm", source=tmp_path / "nowhere")
