from pathlib import Path

import pytest

from pipeline.core.config import Competition, ConfigError, load_competition, parse_overrides
from tests.conftest import REPO, run_cli, write_yaml

BASE = {"data_dir": "data/x", "target": "label", "task": "multiclass", "metric": "accuracy"}


def test_repo_config_is_valid():
    comp = load_competition(REPO / "configs" / "competition.yaml")
    assert comp.id_col == "image_id" and comp.n_folds == 5 and comp.generator == "digits"


def test_fashion_mnist_config_matches_what_make_data_fashion_mnist_writes(tmp_path):
    from pipeline.core.demo import FASHION_MNIST_DIR, write_fashion_mnist

    config = REPO / "configs" / "fashion-mnist" / "competition.yaml"
    comp = load_competition(config)
    assert sorted(p.name for p in (REPO / comp.models_dir).glob("*.yaml")) == [
        "fm_convnext_tiny.yaml", "fm_efficientnet_b2.yaml"]
    if not FASHION_MNIST_DIR.is_dir():
        pytest.skip("dataset-fashion-mnist is not installed")
    write_fashion_mnist(tmp_path / comp.data_dir, n_train=200, n_test=50)
    proc = run_cli("check", "-c", str(config), cwd=tmp_path)
    assert "200" in proc.stdout and (tmp_path / comp.answers).is_file()


def test_unknown_key_names_file_key_and_suggestion(tmp_path):
    path = write_yaml(tmp_path / "c.yaml", {**BASE, "n_fold": 5})
    with pytest.raises(ConfigError) as e:
        load_competition(path)
    msg = str(e.value)
    assert str(path) in msg and "n_fold" in msg and "did you mean 'n_folds'" in msg and "allowed keys" in msg


def test_bad_literal_lists_allowed_values(tmp_path):
    path = write_yaml(tmp_path / "c.yaml", {**BASE, "metric": "acuracy"})
    msg = str(pytest.raises(ConfigError, load_competition, path).value)
    assert "key 'metric'" in msg and "did you mean 'accuracy'" in msg and "f1_macro" in msg
    path = write_yaml(tmp_path / "c.yaml", {**BASE, "metric": "rmse"})
    msg = str(pytest.raises(ConfigError, load_competition, path).value)
    assert "key 'metric'" in msg and "applies to regression" in msg and "accuracy" in msg


def test_wrong_type(tmp_path):
    path = write_yaml(tmp_path / "c.yaml", {**BASE, "n_folds": "five"})
    msg = str(pytest.raises(ConfigError, load_competition, path).value)
    assert "key 'n_folds'" in msg and "integer" in msg


@pytest.mark.parametrize(
    "extra, needle",
    [
        ({"task": "regression"}, "Metrics for regression: rmse"),
        ({"target": ["a", "b"]}, "one column name"),
        ({"metric": "qwk"}, "applies to ordinal"),
        ({"train_images": "train/x.png"}, "{id}"),
        ({"n_folds": 1}, "greater than or equal to 2"),
    ],
)
def test_cross_field_rules(tmp_path, extra, needle):
    path = write_yaml(tmp_path / "c.yaml", {**BASE, **extra})
    assert needle in str(pytest.raises(ConfigError, load_competition, path).value)


def test_missing_required_key(tmp_path):
    data = dict(BASE)
    del data["target"]
    msg = str(pytest.raises(ConfigError, load_competition, write_yaml(tmp_path / "c.yaml", data)).value)
    assert "key 'target': required but missing" in msg


def test_missing_and_malformed_files(tmp_path):
    assert "config file not found" in str(pytest.raises(ConfigError, load_competition, tmp_path / "nope.yaml").value)
    bad = tmp_path / "bad.yaml"
    bad.write_text("data_dir: [unclosed\n")
    assert "not valid YAML" in str(pytest.raises(ConfigError, load_competition, bad).value)
    listy = tmp_path / "list.yaml"
    listy.write_text("- a\n- b\n")
    assert "mapping" in str(pytest.raises(ConfigError, load_competition, listy).value)


def test_overrides_parse_yaml_scalars_and_nesting():
    assert parse_overrides(["n_folds=3", "seed=7", "group_col=null", "a.b=1e-3", "name=x=y"]) == {
        "n_folds": 3, "seed": 7, "group_col": None, "a": {"b": 1e-3}, "name": "x=y",
    }
    with pytest.raises(ConfigError, match="key=value"):
        parse_overrides(["n_folds"])


def test_override_applies_and_is_validated(tmp_path):
    path = write_yaml(tmp_path / "c.yaml", BASE)
    assert load_competition(path, ["n_folds=3"]).n_folds == 3
    msg = str(pytest.raises(ConfigError, load_competition, path, ["task=survival"]).value)
    assert "override" in msg and "key 'task'" in msg


def test_cli_reports_config_error_with_exit_2(tmp_path):
    write_yaml(tmp_path / "c.yaml", {**BASE, "colour": "red"})
    proc = run_cli("folds", "-c", "c.yaml", cwd=tmp_path, check=False)
    assert proc.returncode == 2
    assert "c.yaml" in proc.stderr and "colour" in proc.stderr and "Traceback" not in proc.stderr


def test_cli_missing_data_dir(tmp_path):
    write_yaml(tmp_path / "c.yaml", BASE)
    proc = run_cli("check", "-c", "c.yaml", cwd=tmp_path, check=False)
    assert proc.returncode == 2 and "data/x" in proc.stderr and "data_dir" in proc.stderr


def test_competition_paths():
    comp = Competition(**BASE)
    assert comp.image_path("train", "ab") == Path("data/x/train/ab.png")
    assert comp.target_cols == ["label"]
