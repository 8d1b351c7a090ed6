"""Training techniques as model keys, each through `python -m pipeline train` on tiny data: losses for
imbalance and hard examples (ohem, class_weights: effective, pos_weight), quick runs (train_fraction),
evaluation at the last stage's size, random-augmentation TTA (aug:N) and the autoaugment / augmix presets.

A CLI training costs about 10 s of CPU (imports included), so those tests are marked slow; the pieces they
wire (losses, weights, hashes, validation messages, the aug view) are also tested in-process, quickly."""

from __future__ import annotations

import hashlib
import json
import shutil

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from pipeline.core.config import ConfigError, config_hash, load_competition
from pipeline.core.io import load_checkpoint
from pipeline.nn.models import ADDED_KEYS, ModelConfig, stamp_exclusions
from tests.conftest import TINY_MODEL, make_competition, read_table_file, run_cli, write_yaml

FAST = {**TINY_MODEL, "epochs": 1}


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    """The tiny competition and its folds, made once for the module (`folds` is a process of its own)."""
    root = tmp_path_factory.mktemp("prepared")
    make_competition(root, n_train=60, models_dir="models")
    run_cli("folds", "-c", "competition.yaml", cwd=root)
    return root


def setup(root, prepared, model=None):
    """A copy of the prepared competition in root, with model `tiny`."""
    shutil.copytree(prepared, root, dirs_exist_ok=True)
    write_yaml(root / "models" / "tiny.yaml", {**FAST, **(model or {})})
    return root


def train(root, *overrides, check=True):
    return run_cli("train", "-c", "competition.yaml", "--model", "tiny", "--fold", "0", *overrides, cwd=root,
                   check=check)


def fold0(root):
    return root / "runs" / "tiny" / "fold0"


def first_loss(root) -> float:
    return float(pd.read_csv(fold0(root) / "log.csv")["train_loss"].iloc[0])


@pytest.fixture(scope="module")
def baseline(tmp_path_factory, prepared):
    """One fold trained with the defaults: its first epoch's loss and its config hash."""
    root = setup(tmp_path_factory.mktemp("baseline"), prepared)
    train(root)
    done = json.loads((fold0(root) / "done.json").read_text())
    return first_loss(root), done["params"]["config_hash"]


# --- 1. losses -----------------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("overrides", [
    ["ohem=0.5"],
    ["class_weights=effective", "cb_beta=0.99"],
    ["loss=bce", "pos_weight=balanced"],
    ["loss=bce", "pos_weight=[1.0, 4.0, 0.5]"],
], ids=["ohem", "effective", "pos_weight_balanced", "pos_weight_list"])
def test_loss_keys_train_a_fold_with_another_loss(tmp_path, prepared, baseline, overrides):
    setup(tmp_path, prepared)
    train(tmp_path, *overrides)
    done = json.loads((fold0(tmp_path) / "done.json").read_text())
    assert done["overrides"] == overrides and done["params"]["config_hash"] != baseline[1]
    loss = first_loss(tmp_path)
    assert np.isfinite(loss) and loss != pytest.approx(baseline[0], rel=1e-4)
    if overrides == ["ohem=0.5"]:  # the hardest half of each batch weighs more than the whole batch
        assert loss > baseline[0]


def test_loss_pieces_compute_what_the_keys_say():
    from pipeline.train.recipe import class_weight_tensor, make_loss, pos_weight_tensor

    logits, target = torch.randn(8, 3), torch.eye(3)[torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])]
    plain = make_loss(ModelConfig(**FAST), "multiclass", None)
    per_sample = -(target * torch.log_softmax(logits, 1)).sum(1)
    assert torch.allclose(plain(logits, target), per_sample.mean())
    ohem = make_loss(ModelConfig(**FAST, ohem=0.25), "multiclass", None)  # the hardest 2 of 8
    assert torch.allclose(ohem(logits, target), per_sample.sort(descending=True).values[:2].mean())
    counts = np.array([100.0, 10.0, 1.0])
    w = class_weight_tensor(ModelConfig(**FAST, class_weights="effective", cb_beta=0.9), counts, torch.device("cpu"))
    raw = (1 - 0.9) / (1 - 0.9 ** counts)
    assert np.allclose(w.numpy(), raw * 3 / raw.sum()) and w[2] > w[1] > w[0]
    multi_hot = np.array([[1, 0], [1, 1], [0, 0], [1, 0]], dtype=np.float32)
    pw = pos_weight_tensor(ModelConfig(**FAST, loss="bce", pos_weight="balanced"), multi_hot, torch.device("cpu"))
    assert np.allclose(pw.numpy(), [1 / 3, 3.0])  # negatives / positives per label
    bce = make_loss(ModelConfig(**FAST, loss="bce"), "multilabel", None, pos_weight=pw)
    expected = torch.nn.functional.binary_cross_entropy_with_logits(logits[:4, :2], torch.as_tensor(multi_hot),
                                                                    pos_weight=pw, reduction="none").sum(1).mean()
    assert torch.allclose(bce(logits[:4, :2], torch.as_tensor(multi_hot)), expected)


LOAD_ERRORS = [
    (["ohem=0"], "key 'ohem': Input should be greater than 0 (got 0)"),
    (["ohem=1.5"], "key 'ohem': Input should be less than or equal to 1 (got 1.5)"),
    (["class_weights=inverse"], "key 'class_weights': should be 'balanced' or 'effective' or a valid list "
                                "(got 'inverse')"),
    (["class_weights=effective", "cb_beta=1"], "key 'cb_beta': Input should be less than 1 (got 1)"),
    (["pos_weight=[1, -2, 1]", "loss=bce"], "key 'pos_weight': each label's weight must be > 0 (or give balanced) "
                                            "(got [1, -2, 1])"),
    (["pos_weight=some"], "key 'pos_weight': should be 'balanced' or a valid list (got 'some')"),
    (["train_fraction=0"], "key 'train_fraction': Input should be greater than 0 (got 0)"),
    (["train_fraction=1.2"], "key 'train_fraction': Input should be less than or equal to 1 (got 1.2)"),
    (["augment=autoaugmix"], "key 'augment': unknown preset 'autoaugmix'; valid presets: none, light, medium, "
                             "heavy, randaugment, trivialaugment, autoaugment, augmix"),
    (["stages=[{epochs: 1, train_fraction: 0.5}]"], "stages[0] may not change ['train_fraction']"),
    (["stages=[{epochs: 1, ohem: 2}]"], "stages[0]: invalid configuration\n  key 'ohem': Input should be less than "
                                        "or equal to 1 (got 2)"),
]


@pytest.mark.parametrize("overrides,message", LOAD_ERRORS, ids=[" ".join(o) for o, _ in LOAD_ERRORS])
def test_out_of_range_values_are_refused_when_the_config_loads(tmp_path, overrides, message):
    """What `train`, `plan` and `make check` load a model config with: the file, the key, the allowed values."""
    from pipeline.nn.models import load_model

    write_yaml(tmp_path / "models" / "tiny.yaml", FAST)
    with pytest.raises(ConfigError) as err:
        load_model(tmp_path / "models", "tiny", overrides)
    assert str(tmp_path / "models" / "tiny.yaml") in str(err.value) and message in str(err.value), str(err.value)


TASK_ERRORS = [
    (["pos_weight=[1, 2]", "loss=bce"], "models/tiny.yaml: key 'pos_weight': 2 values for 3 labels (c0, c1, c2); "
                                        "give one per label, in that order, or balanced"),
    (["pos_weight=balanced"], "models/tiny.yaml: key 'pos_weight': weights the positives of loss bce, and this "
                              "config's loss is ce (task multiclass); set loss: bce, or use class_weights"),
    (["class_weights=[1, 2]"], "models/tiny.yaml: key 'class_weights': 2 values for 3 classes (c0, c1, c2); give "
                               "one per class, in that order, or balanced | effective"),
]


def test_keys_that_do_not_fit_the_task_are_refused_before_training(tmp_path, prepared, monkeypatch):
    """Refused by `train` before a model is built or a run folder made, naming the file: through the CLI for
    one, through train_fold (what the CLI calls) for all."""
    from pipeline.nn.models import load_model
    from pipeline.train.train import train_fold

    setup(tmp_path, prepared)
    proc = train(tmp_path, *TASK_ERRORS[0][0], check=False)
    assert proc.returncode == 2 and TASK_ERRORS[0][1] in proc.stderr, proc.stderr
    monkeypatch.chdir(tmp_path)
    comp = load_competition("competition.yaml")
    for overrides, message in TASK_ERRORS:
        cfg, source = load_model("models", "tiny", overrides)
        with pytest.raises(ConfigError) as err:
            train_fold(comp, cfg, "tiny", 0, source=source)
        assert str(err.value).startswith(message), str(err.value)
    assert not (tmp_path / "runs").exists()


def test_new_keys_change_the_config_hash_only_when_set():
    """A config that does not set the added keys hashes as it did before they existed; setting one changes it."""
    new = {"cb_beta", "pos_weight", "ohem", "train_fraction"}
    assert new <= set(ADDED_KEYS)
    cfg = ModelConfig(**FAST)
    dump = {k: v for k, v in cfg.model_dump(mode="json").items() if k not in new | stamp_exclusions(cfg)}
    before = hashlib.md5(json.dumps(dump, sort_keys=True).encode()).hexdigest()
    assert config_hash(cfg, stamp_exclusions(cfg)) == before
    for key, value in ADDED_KEYS.items():
        at_default = ModelConfig(**FAST, **{key: value})
        assert config_hash(at_default, stamp_exclusions(at_default)) == before, key
    for key, value in {"ohem": 0.7, "cb_beta": 0.99, "pos_weight": "balanced", "train_fraction": 0.5,
                       "class_weights": "effective"}.items():
        changed = ModelConfig(**FAST, **{key: value})
        assert config_hash(changed, stamp_exclusions(changed)) != before, key


# --- 6. quick runs ------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_train_fraction_trains_on_a_stratified_part_and_validates_on_all(tmp_path, prepared):
    setup(tmp_path, prepared)
    proc = train(tmp_path, "train_fraction=0.25")
    done = json.loads((fold0(tmp_path) / "done.json").read_text())
    assert done["fold_train_rows"] == 40 and done["train_rows"] == 10
    assert ("tiny fold0: train_fraction 0.25: training on 10 of the fold's 40 training rows (stratified); "
            "validating on all 20 validation rows") in proc.stdout
    assert len(read_table_file(fold0(tmp_path) / "oof.parquet")) == 20  # validation unchanged

    from pipeline.train.folddata import fold_data

    comp = load_competition(tmp_path / "competition.yaml")
    comp = comp.model_copy(update={"data_dir": tmp_path / comp.data_dir})
    full = fold_data(comp, tmp_path / "folds/folds.csv", 0, None)
    part = fold_data(comp, tmp_path / "folds/folds.csv", 0, None, train_fraction=0.25, seed=42)
    again = fold_data(comp, tmp_path / "folds/folds.csv", 0, None, train_fraction=0.25, seed=42)
    assert part.train_paths == again.train_paths and set(part.train_paths) < set(full.train_paths)
    per_class, whole = part.train_targets.sum(axis=0), full.train_targets.sum(axis=0)
    assert np.all(np.abs(per_class - 0.25 * whole) <= 1)  # stratified: each class keeps its share
    assert part.val_paths == full.val_paths
    other = fold_data(comp, tmp_path / "folds/folds.csv", 0, None, train_fraction=0.25, seed=7)
    assert other.train_paths != part.train_paths  # drawn from the seed


# --- 7. evaluation at the size the model finished at ------------------------------------------------------


@pytest.mark.slow
def test_evaluation_reads_images_at_the_last_stage_size(tmp_path, prepared):
    """img_size 16, stages end at 24: validation, OOF and predict's path all read at 24."""
    from pipeline.nn.infer import EvalSpec, image_logits, load_fold_model, to_proba
    from pipeline.nn.models import eval_data_config

    setup(tmp_path, prepared, model={"stages": [{"epochs": 1}, {"epochs": 1, "img_size": 24}]})
    train(tmp_path)
    out = fold0(tmp_path)
    ckpt = load_checkpoint(out / "best.pt")
    assert ckpt["data_config"]["img_size"] == [24, 24]  # what predict, report and the kernel read
    assert yaml.safe_load((out / "config.yaml").read_text())["_data"]["img_size"] == [24, 24]
    model, cfg, _ = load_fold_model(out, "best", torch.device("cpu"))
    assert eval_data_config(cfg, model)["img_size"] == [24, 24]
    oof = read_table_file(out / "oof.parquet")
    paths = [tmp_path / "data/tiny/train" / f"{i}.png" for i in oof.image_id]
    at = {side: to_proba(image_logits([model], paths, EvalSpec.of(cfg, {**ckpt["data_config"], "img_size": [side] * 2}),
                                      dev=torch.device("cpu"))[0, 0], "multiclass") for side in (24, 16)}
    table = oof[["c0", "c1", "c2"]].to_numpy()
    assert np.allclose(table, at[24], atol=1e-5) and not np.allclose(table, at[16], atol=1e-3)


# --- 3. random-augmentation TTA ---------------------------------------------------------------------------


def test_aug_view_averages_seeded_draws_of_the_training_augmentation(tmp_path):
    from pipeline.nn.infer import EvalSpec, image_logits
    from pipeline.nn.models import build_model, data_config
    from pipeline.nn.tta import aug_seed, expand

    make_competition(tmp_path, n_train=12)
    cfg = ModelConfig(**{**FAST, "augment": "medium"})
    torch.manual_seed(0)
    model = build_model(cfg, num_classes=3).eval()
    spec = EvalSpec.of(cfg, data_config(cfg, model))
    paths = sorted((tmp_path / "data/tiny/train").glob("*.png"))[:6]
    views = expand(["none", "hflip", "aug:3"])
    assert views == ["none", "hflip", "aug:3"]
    logits = image_logits([model], paths, spec, views, dev=torch.device("cpu"))
    plain = image_logits([model], paths, spec, ["none", "hflip"], dev=torch.device("cpu"))
    assert np.array_equal(logits[:, :2], plain)  # the fixed views are as before
    again = image_logits([model], paths, EvalSpec(**{**spec.__dict__, "batch_size": 4}), ["aug:3"],
                         dev=torch.device("cpu"), rows=[0, 1, 2, 3, 4, 5])
    assert np.allclose(logits[:, 2], again[:, 0], atol=1e-6)  # seeded per image: batching changes nothing
    assert not np.allclose(logits[:, 2], logits[:, 0], atol=1e-4)  # the draws did augment
    from pipeline.core.images import read_image

    aug = spec.augmentation()
    draws = []
    for j in range(3):
        aug.set_random_seed(aug_seed(2, j))
        draws.append(model(aug(image=read_image(paths[2], 1, spec.data_config["read_side"]))["image"][None]))
    assert np.allclose(logits[0, 2, 2], torch.cat(draws).mean(0).detach().numpy(), atol=1e-5)
    for bad in ("aug:0", "aug:x", "aug:65"):
        with pytest.raises(ConfigError, match=r"key 'tta': view 'aug:.*': aug:<N> takes N draws .* N from 1 to 64"):
            expand(["none", bad])


# --- 2. autoaugment and augmix ------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("preset", ["autoaugment", "augmix"])
def test_timm_policies_train_a_fold_and_show_in_show_batch(tmp_path, prepared, preset):
    setup(tmp_path, prepared, model={"tta": ["none", "aug:2"]})
    train(tmp_path, f"augment={preset}")
    assert (fold0(tmp_path) / "done.json").is_file()
    run_cli("show-batch", "-c", "competition.yaml", "--model", "tiny", "--n", "6", f"augment={preset}", cwd=tmp_path)
    grid = json.loads((tmp_path / "runs/tiny/show_batch/grid.json").read_text())
    assert grid["tta"]["cols"] == 3  # none and the two draws of aug:2

    from pipeline.nn.models import load_model
    from pipeline.tools.show_batch import batch_arrays

    comp = load_competition(tmp_path / "competition.yaml")
    comp = comp.model_copy(update={"data_dir": tmp_path / comp.data_dir})
    cfg, _ = load_model(tmp_path / "models", "tiny", [f"augment={preset}"])
    batch, again = batch_arrays(comp, cfg, n=6, seed=1), batch_arrays(comp, cfg, n=6, seed=1)
    assert np.array_equal(batch.train, again.train) and not np.array_equal(batch.train, batch.eval)
    assert not np.array_equal(batch.tta["aug:2 #1"], batch.tta["aug:2 #2"])
