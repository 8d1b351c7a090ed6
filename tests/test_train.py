"""The training engine through its real entry points (CLI, Make, torchrun) on tiny data."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest
import torch

from pipeline.nn.augment import PRESETS, build_transform
from pipeline.core.config import ConfigError
from pipeline.nn.models import ModelConfig, build_model, head_parameter_names, load_model_config
from pipeline.core.io import load_checkpoint
from pipeline.train.recipe import SAM, current_lr, make_mixer, make_optimizer, make_scheduler
from tests.conftest import REPO, TINY_MODEL, make_competition, run_cli, write_yaml, read_table_file

def setup(root, n_train=60, model=None, name="tiny", **comp):
    make_competition(root, n_train=n_train, models_dir="models", **comp)
    write_yaml(root / "models" / f"{name}.yaml", {**TINY_MODEL, **(model or {})})
    run_cli("folds", "-c", "competition.yaml", cwd=root)
    return root


def train(root, *args, fold=0, model="tiny", check=True, env=None):
    return run_cli("train", "-c", "competition.yaml", "--model", model, "--fold", str(fold), *args,
                   cwd=root, check=check, env=env)


def weights(path):
    return load_checkpoint(path)["model"]


def same_weights(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# --- a whole fold ---------------------------------------------------------------------------------


@pytest.mark.slow
def test_fold_run_folder(tmp_path):
    setup(tmp_path)
    proc = train(tmp_path)
    out = tmp_path / "runs" / "tiny" / "fold0"
    for name in ("config.yaml", "log.csv", "last.pt", "best.pt", "oof.parquet", "done.json"):
        assert (out / name).is_file(), name
    log = pd.read_csv(out / "log.csv")
    assert list(log["epoch"]) == [1, 2]
    assert {"train_loss", "val_loss", "accuracy", "lr", "img_per_s"} <= set(log.columns)
    oof = read_table_file(out / "oof.parquet")
    folds = pd.read_csv(tmp_path / "folds" / "folds.csv", dtype={"image_id": str})
    assert sorted(oof.image_id) == sorted(folds.image_id[folds.fold == 0])
    assert list(oof.columns) == ["image_id", "c0", "c1", "c2"]
    assert np.allclose(oof[["c0", "c1", "c2"]].sum(axis=1), 1, atol=1e-5)
    done = json.loads((out / "done.json").read_text())  # the fold's stage record
    assert done["stage"] == "train" and done["params"]["config_hash"] and done["metric"] == "accuracy"
    assert list(done["inputs"]) == ["folds/folds.csv"] and done["overrides"] == [] and done["seconds"] > 0
    assert {"runs/tiny/fold0/best.pt", "runs/tiny/fold0/oof.parquet"} <= set(done["outputs"])
    assert "epoch 2/2" in proc.stdout and "img/s" in proc.stdout
    ckpt = load_checkpoint(out / "last.pt")  # weights_only=True load of the full state
    assert {"model", "optimizer", "scaler", "epoch", "best", "rng", "stamp", "config"} <= set(ckpt)


@pytest.mark.slow
def test_done_is_skipped_and_stale_on_config_or_folds_change(tmp_path):
    setup(tmp_path)
    train(tmp_path)
    done = tmp_path / "runs" / "tiny" / "fold0" / "done.json"
    first = done.read_text()
    assert "skipping" in train(tmp_path).stdout and done.read_text() == first
    proc = train(tmp_path, "lr=0.02")  # another config hash -> retrained
    assert "skipping" not in proc.stdout
    assert json.loads(done.read_text())["params"]["config_hash"] != json.loads(first)["params"]["config_hash"]
    run_cli("folds", "-c", "competition.yaml", "seed=3", cwd=tmp_path)  # another folds.csv -> stale
    assert "skipping" not in train(tmp_path, "lr=0.02").stdout


def plan_says(root, *args):
    return run_cli("plan", "-c", "competition.yaml", "--models", "tiny student", *args, cwd=root).stderr


@pytest.mark.slow
def test_the_fold_record_decides_what_plan_retrains(tmp_path):
    """done.json is the fold's record: an output touched but unchanged keeps the fold; a changed output,
    folds.csv or teacher table makes it stale, each named; a done.json of the earlier format still counts."""
    setup(tmp_path, model={"epochs": 1})
    write_yaml(tmp_path / "models" / "student.yaml", {**TINY_MODEL, "epochs": 1, "distill": "folds/distill.csv"})
    ids = pd.read_csv(tmp_path / "data/tiny/train.csv", dtype=str).image_id
    teacher = pd.DataFrame({"image_id": ids, "c0": 0.5, "c1": 0.25, "c2": 0.25})
    teacher.to_csv(tmp_path / "folds/distill.csv", index=False)
    train(tmp_path)
    train(tmp_path, model="student")
    out = tmp_path / "runs/tiny/fold0"
    assert json.loads((tmp_path / "runs/student-distilled/fold0/done.json").read_text())["inputs"].keys() == {
        "folds/distill.csv", "folds/folds.csv"}
    both_done = ["plan: tiny: 1/3 folds done; to train: fold1 (not trained)",
                 "plan: student-distilled: 1/3 folds done; to train: fold1 (not trained)"]
    stat = (out / "best.pt").stat()
    os.utime(out / "best.pt", ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # touched, the same bytes
    assert all(line in plan_says(tmp_path) for line in both_done)
    oof = (out / "oof.parquet").read_bytes()
    (out / "oof.parquet").write_bytes(oof + b"\n")
    assert "tiny: 0/3 folds done; to train: fold0 (oof.parquet changed since written)" in plan_says(tmp_path)
    (out / "oof.parquet").write_bytes(oof)
    teacher.assign(c0=0.4, c1=0.35).to_csv(tmp_path / "folds/distill.csv", index=False)
    said = plan_says(tmp_path)
    assert both_done[0] in said and "student-distilled: 0/3 folds done; to train: fold0 (teacher table changed)" in said
    # a done.json of the earlier format: its stamp at the top level, folds.csv by md5
    done = json.loads((out / "done.json").read_text())
    earlier = {**done["params"], "folds_md5": done["inputs"]["folds/folds.csv"]["md5"],
               **{k: v for k, v in done.items() if k not in ("stage", "params", "choices", "inputs", "outputs")}}
    (out / "done.json").write_text(json.dumps(earlier))
    assert both_done[0] in plan_says(tmp_path)
    assert "fold0 (config changed)" in plan_says(tmp_path, "lr=0.02")
    run_cli("folds", "-c", "competition.yaml", "seed=3", cwd=tmp_path)
    assert "tiny: 0/3 folds done; to train: fold0 (folds.csv changed)" in plan_says(tmp_path)


@pytest.mark.slow
def test_best_checkpoint_holds_what_inference_reads(tmp_path):
    """best.pt: weights (EMA too), config, classes, data config; no optimizer or resume state, so it is
    smaller than last.pt; predict works from it and gives the fold's own OOF."""
    setup(tmp_path, model={"epochs": 1, "ema": 0.5})
    for k in range(3):
        train(tmp_path, fold=k)
    out = tmp_path / "runs/tiny/fold0"
    best, last = load_checkpoint(out / "best.pt"), load_checkpoint(out / "last.pt")
    assert {"model", "ema", "config", "classes", "data_config", "epoch", "best", "best_epoch"} <= set(best)
    assert not {"optimizer", "scheduler", "scaler", "rng", "log", "stamp"} & set(best)
    assert same_weights(best["ema"], last["ema"]) and same_weights(best["model"], last["model"])  # one epoch
    assert (out / "best.pt").stat().st_size < (out / "last.pt").stat().st_size / 1.5
    run_cli("predict", "-c", "competition.yaml", cwd=tmp_path)
    table = read_table_file(tmp_path / "stacking/tiny.oof.parquet").set_index("image_id")
    fold = read_table_file(out / "oof.parquet").set_index("image_id")
    assert len(table) == 60 and np.allclose(table.loc[fold.index].to_numpy(), fold.to_numpy(), atol=1e-5)


@pytest.mark.slow
def test_make_train_all_and_rerun_one_fold(tmp_path):
    setup(tmp_path, model={"epochs": 1})
    make = ["make", "--no-print-directory", "-f", str(REPO / "Makefile"), "COMPETITION=competition.yaml"]
    proc = subprocess.run([*make, "train-all"], cwd=tmp_path, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    dones = {k: tmp_path / "runs" / "tiny" / f"fold{k}" / "done.json" for k in range(3)}
    assert all(p.is_file() for p in dones.values())
    stamps = {k: p.read_text() for k, p in dones.items()}
    proc = subprocess.run([*make, "train-all"], cwd=tmp_path, capture_output=True, text=True)
    assert proc.returncode == 0 and "plan: tiny: 3/3 folds done" in proc.stderr  # the plan skips done folds
    assert "pipeline train" not in proc.stdout and {k: p.read_text() for k, p in dones.items()} == stamps
    plan = run_cli("plan", "-c", "competition.yaml", "lr=0.02", cwd=tmp_path)  # ARGS as train-all passes them
    assert plan.stdout.split() == [f"runs/tiny/fold{k}/done.json" for k in range(3)]
    assert "fold0 (config changed)" in plan.stderr
    proc = subprocess.run([*make, "train", "MODEL=tiny", "FOLD=1"], cwd=tmp_path, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert dones[1].read_text() != stamps[1]  # retrained
    assert dones[0].read_text() == stamps[0] and dones[2].read_text() == stamps[2]
    bad = subprocess.run([*make, "train-all", "MODELS=nope"], cwd=tmp_path, capture_output=True, text=True)
    assert bad.returncode != 0 and "nope.yaml" in bad.stderr


@pytest.mark.slow
def test_sigkill_mid_run_then_resume_equals_unbroken(tmp_path):
    """Kill after the first checkpoint (mid-epoch 2 or later), rerun: same final weights as no kill."""
    model = {"epochs": 4, "img_size": 24, "augment": "medium", "mixup": 0.2, "cutmix": 0.2, "ema": 0.9,
             "num_workers": 1, "batch_size": 8}
    a, b = tmp_path / "a", tmp_path / "b"
    for root in (a, b):
        setup(root, n_train=150, model=model)
    train(a)
    # b also writes TensorBoard events: a result-neutral key, so it must not change the weights either
    cmd = [sys.executable, "-m", "pipeline", "train", "-c", "competition.yaml", "--model", "tiny", "--fold", "0",
           "tensorboard=true"]
    proc = subprocess.Popen(cmd, cwd=b, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    last = b / "runs" / "tiny" / ".fold0.partial" / "last.pt"  # a fold trains beside its final place
    deadline = time.time() + 120
    while not last.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    time.sleep(0.3)  # well into the next epoch
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (b / "runs" / "tiny" / "fold0" / "done.json").exists(), "the kill came too late to test resume"
    assert "resuming after epoch" in train(b, "tensorboard=true").stdout
    assert same_weights(weights(a / "runs/tiny/fold0/last.pt"), weights(b / "runs/tiny/fold0/last.pt"))
    ema_a, ema_b = (load_checkpoint(r / "runs/tiny/fold0/last.pt")["ema"] for r in (a, b))
    assert same_weights(ema_a, ema_b)
    assert read_table_file(a / "runs/tiny/fold0/oof.parquet").equals(read_table_file(b / "runs/tiny/fold0/oof.parquet"))
    # TensorBoard after a kill and resume: every epoch once, with log.csv's values
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    board = EventAccumulator(str(b / "runs/tiny/fold0/tb"))
    board.Reload()
    log = pd.read_csv(b / "runs/tiny/fold0/log.csv")
    for tag, column in (("loss/train", "train_loss"), ("metric/accuracy", "accuracy"), ("lr", "lr")):
        points = board.Scalars(tag)
        assert [p.step for p in points] == [1, 2, 3, 4], tag
        assert np.allclose([p.value for p in points], log[column], rtol=1e-6), tag
    assert not (a / "runs/tiny/fold0/tb").exists()


@pytest.mark.slow
def test_ram_cache_changes_nothing_and_neutral_keys_do_not_retrain(tmp_path):
    model = {"epochs": 2, "img_size": 24, "augment": "medium", "num_workers": 1, "batch_size": 8}
    a, b = tmp_path / "a", tmp_path / "b"
    for root in (a, b):
        setup(root, n_train=90, model=model)
    disk, ram = train(a, "cache_images=false"), train(b, "cache_images=true")
    assert "cached in RAM" in ram.stdout and "cached in RAM" not in disk.stdout
    assert same_weights(weights(a / "runs/tiny/fold0/last.pt"), weights(b / "runs/tiny/fold0/last.pt"))
    done = (b / "runs/tiny/fold0/done.json").read_text()
    assert "skipping" in train(b, "cache_images=false", "tensorboard=true").stdout  # how, not what: no retrain
    assert (b / "runs/tiny/fold0/done.json").read_text() == done
    assert "skipping" not in train(b, "cache_images=false", "augment=light").stdout  # what: retrained


# --- config and its errors ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "override, needles",
    [
        ("epoch=3", ["epoch", "did you mean 'epochs'"]),
        ("optimizer=adamm", ["optimizer", "unknown timm optimizer 'adamm'", "adamw"]),
        ("backbone=resnet1", ["unknown timm model", "resnet18"]),
        ("pretrained=weights/missing.pth", ["pretrained", "not found"]),
        ("augment=extreme", ["unknown preset", "none, light, medium, heavy"]),
        ("augment=[{name: HorizontalFlipp}]", ["HorizontalFlip", "unknown albumentations transform"]),
        ("in_chans=2", ["in_chans"]),
        ("num_workers=-2", ["key 'num_workers': should be greater than or equal to 0 or 'auto' (got -2)"]),
        ("cache_images=maybe", ["key 'cache_images': should be a valid boolean or 'auto'"]),
    ],
)
@pytest.mark.slow
def test_bad_overrides_are_clear(tmp_path, override, needles):
    if not (tmp_path / "models").exists():
        setup(tmp_path)
    proc = train(tmp_path, override, check=False)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr
    for needle in needles:
        assert needle in proc.stderr, proc.stderr
    assert not (tmp_path / "runs" / "tiny" / "fold0" / "done.json").exists()


@pytest.mark.slow
def test_overrides_land_in_resolved_config(tmp_path):
    import yaml

    setup(tmp_path, model={"epochs": 1})
    train(tmp_path, "lr=0.005", "batch_size=8")
    resolved = yaml.safe_load((tmp_path / "runs/tiny/fold0/config.yaml").read_text())
    assert resolved["lr"] == 0.005 and resolved["batch_size"] == 8
    assert resolved["_data"]["img_size"] == [16, 16] and len(resolved["_data"]["mean"]) == 1


def test_shipped_model_configs_are_valid():
    for path in sorted((REPO / "configs").rglob("models/*.yaml")) + sorted((REPO / "configs/examples").glob("*.yaml")):
        cfg = load_model_config(path)
        assert cfg.backbone


@pytest.mark.parametrize("name", ["fm_convnext_tiny", "fm_efficientnet_b2"])
@pytest.mark.slow
def test_fashion_mnist_gpu_recipe_runs_scaled_down_on_cpu(tmp_path, name):
    """The GPU recipe's own files, at 32 px for one epoch from random init: every key it sets works."""
    setup(tmp_path, n_train=45)
    shutil.copy(REPO / "configs" / "fashion-mnist" / "models" / f"{name}.yaml", tmp_path / "models")
    proc = train(tmp_path, "img_size=32", "epochs=1", "batch_size=8", check=False, model=name)
    assert proc.returncode == 2 and "weights file weights/" in proc.stderr  # the recipe wants local weights
    train(tmp_path, "pretrained=false", "img_size=32", "epochs=1", "batch_size=8", model=name)
    assert (tmp_path / "runs" / name / "fold0" / "done.json").is_file()


def test_stage_may_not_change_backbone(tmp_path):
    path = write_yaml(tmp_path / "m.yaml", {**TINY_MODEL, "stages": [{"epochs": 1, "backbone": "resnet18"}]})
    with pytest.raises(ConfigError, match="may not change"):
        load_model_config(path)


# --- augmentation ---------------------------------------------------------------------------------


@pytest.mark.parametrize("preset", list(PRESETS))
@pytest.mark.parametrize("chans", [1, 3])
def test_each_preset_runs(preset, chans):
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (20, 30) if chans == 1 else (20, 30, 3), dtype=np.uint8)
    tf = build_transform(preset, 24, [0.5] * chans, [0.25] * chans, color=chans == 3)
    x = tf(image=img)["image"]
    assert tuple(x.shape) == (chans, 24, 24) and x.dtype == torch.float32
    if preset == "none":  # no augmentation: deterministic
        assert torch.equal(x, tf(image=img)["image"])


# --- recipe pieces each change what they should ---------------------------------------------------


def tiny_model(**kw):
    cfg = ModelConfig(**{**TINY_MODEL, **kw})
    torch.manual_seed(0)
    return cfg, build_model(cfg, num_classes=3)


def one_step(cfg, model):
    x, y = torch.randn(4, 1, 16, 16), torch.tensor([0, 1, 2, 0])
    opt = make_optimizer(cfg, model)
    loss = torch.nn.functional.cross_entropy(model(x), y)
    loss.backward()
    return opt, x, y


def test_sam_perturbs_then_restores_and_steps():
    cfg, model = tiny_model(sam=True, optimizer="sgd", weight_decay=0.0)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    opt, x, y = one_step(cfg, model)
    assert isinstance(opt, SAM)
    opt.perturb()
    perturbed = {k: v.clone() for k, v in model.state_dict().items()}
    name = next(n for n, p in model.named_parameters() if p.ndim > 1)
    assert not torch.equal(perturbed[name], before[name])
    opt.zero_grad()
    torch.nn.functional.cross_entropy(model(x), y).backward()
    opt.restore()
    assert torch.allclose(model.state_dict()[name], before[name], atol=1e-6)  # back at the start ...
    opt.base.step()  # ... stepping with the gradient taken at the perturbed point
    after = model.state_dict()
    assert not torch.equal(after[name], before[name]) and not torch.equal(after[name], perturbed[name])


def test_freeze_backbone_trains_head_only():
    cfg, model = tiny_model(freeze_backbone=True)
    make_optimizer(cfg, model)
    head = head_parameter_names(model)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == head and head


def test_backbone_lr_is_lower_than_head():
    cfg, model = tiny_model(backbone_lr_mult=0.1, lr=0.01, warmup_epochs=1)
    opt = make_optimizer(cfg, model)
    sched = make_scheduler(cfg, opt, steps_per_epoch=10, metric_mode="max")
    sched.step_update(10)  # the end of the warmup: the peak lr
    assert sorted({g["lr"] for g in opt.param_groups}) == pytest.approx([0.001, 0.01])
    assert current_lr(opt) == pytest.approx(0.01)


def test_mixup_mixes_images_and_targets():
    np.random.seed(0)
    cfg = ModelConfig(**{**TINY_MODEL, "mixup": 1.0})
    mixer = make_mixer(cfg, n_classes=3)
    x = torch.arange(4, dtype=torch.float32).view(4, 1, 1, 1).repeat(1, 1, 2, 2)
    y = torch.eye(3)[[0, 1, 2, 0]]
    x, mixed = mixer(x, y.clone())
    lam = float(mixed[1, 1])  # row 1 (class 1) mixed with row 2 (class 2): weight lam on class 1
    assert 0 < lam < 1 and not torch.equal(x[:, 0, 0, 0], torch.arange(4, dtype=torch.float32))
    assert torch.allclose(mixed[1], lam * y[1] + (1 - lam) * y[2]) and torch.allclose(mixed.sum(1), torch.ones(4))


@pytest.mark.slow
def test_ema_and_stages_end_to_end(tmp_path):
    stages = [
        {"epochs": 1, "img_size": 12, "freeze_backbone": True, "batch_size": 32},
        {"epochs": 1, "img_size": 16, "optimizer": "sgd", "lr": 0.005},
    ]
    setup(tmp_path, model={"ema": 0.5, "stages": stages})
    train(tmp_path)
    out = tmp_path / "runs/tiny/fold0"
    assert pd.read_csv(out / "log.csv")["stage"].tolist() == [0, 1]
    ckpt = load_checkpoint(out / "last.pt")
    assert "ema" in ckpt and not same_weights(ckpt["ema"], ckpt["model"])


# --- faults ---------------------------------------------------------------------------------------


def corrupt_one(root):
    train_csv = pd.read_csv(root / "data/tiny/train.csv", dtype=str)
    victim = train_csv.image_id[0]
    (root / "data/tiny/train" / f"{victim}.png").write_bytes(b"\x89PNG\r\n\x1a\ntruncated")
    return victim


@pytest.mark.slow
def test_corrupt_image_fail_and_skip_policies(tmp_path):
    setup(tmp_path, model={"epochs": 1})
    victim = corrupt_one(tmp_path)
    folds = pd.read_csv(tmp_path / "folds/folds.csv", dtype=str)
    fold = 1 if folds.set_index("image_id").fold[victim] == "0" else 0  # victim in the training part
    proc = train(tmp_path, fold=fold, check=False)
    assert proc.returncode == 2 and victim in proc.stderr and "Traceback" not in proc.stderr
    proc = train(tmp_path, "bad_images=skip", fold=fold)
    assert "skipping" in proc.stderr and victim in proc.stderr
    assert (tmp_path / f"runs/tiny/fold{fold}/done.json").is_file()
    proc = train(tmp_path, "bad_images=skip", "max_bad_images=0", "--rerun", fold=fold, check=False)
    assert proc.returncode == 2 and "max_bad_images=0" in proc.stderr


@pytest.mark.slow
def test_nan_loss_policies_never_save_best(tmp_path):
    setup(tmp_path, model={"epochs": 1, "std": [0.0]})  # std 0 -> infinite inputs -> non-finite loss
    proc = train(tmp_path, "nan_policy=stop", check=False)
    assert proc.returncode == 2 and "non-finite loss" in proc.stderr
    assert not (tmp_path / "runs/tiny/fold0/best.pt").exists()
    proc = train(tmp_path, "nan_policy=skip", "max_nan_steps=1000", check=False)
    assert proc.returncode == 2 and "no epoch produced a finite" in proc.stderr
    assert not (tmp_path / "runs/tiny/fold0/best.pt").exists()
    assert not (tmp_path / "runs/tiny/fold0/done.json").exists()


@pytest.mark.slow
def test_a_last_batch_of_one_trains(tmp_path):
    """A 17-row training part with batch_size 16 would end every epoch on a batch of one, which BatchNorm
    refuses in training ("Expected more than 1 value per channel"): it joins the batch before it."""
    setup(tmp_path, n_train=26, model={"epochs": 1})
    sizes = pd.read_csv(tmp_path / "folds/folds.csv", dtype=str).fold.value_counts()
    fold = next(int(f) for f, n in sizes.items() if 26 - n == 17)
    proc = train(tmp_path, fold=fold, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    log = pd.read_csv(tmp_path / f"runs/tiny/fold{fold}/log.csv")
    assert np.isfinite(log.train_loss).all() and (log.train_loss > 0).all()


@pytest.mark.slow
def test_a_tiny_distillation_temperature_still_teaches(tmp_path):
    """p^(1/T) for a tiny T underflowed to 0/0: NaN targets, every step skipped, a logged loss of 0.0000 and
    an untrained student. In log space it is the teacher's top class; a T no arithmetic can use is an error."""
    setup(tmp_path, model={"epochs": 1})
    ids = pd.read_csv(tmp_path / "data/tiny/train.csv", dtype=str).image_id
    p = np.random.default_rng(0).dirichlet(np.ones(3), len(ids))
    pd.DataFrame({"image_id": ids, "c0": p[:, 0], "c1": p[:, 1], "c2": 1 - p[:, 0] - p[:, 1]}).to_csv(
        tmp_path / "folds/teacher.csv", index=False)
    train(tmp_path, "distill=folds/teacher.csv", "distill_alpha=0", "temperature=0.0001")
    log = pd.read_csv(tmp_path / "runs/tiny-distilled/fold0/log.csv")
    assert np.isfinite(log.train_loss).all() and (log.train_loss > 0.01).all()
    proc = train(tmp_path, "distill=folds/teacher.csv", "temperature=5e-324", "--rerun", check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "error: key 'temperature': 5e-324 gives non-finite soft targets" in proc.stderr


# --- DDP ------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_ddp_gloo_two_processes(tmp_path):
    setup(tmp_path, model={"epochs": 1})
    torchrun = shutil.which("torchrun", path=os.path.dirname(sys.executable))
    proc = subprocess.run(
        [torchrun, "--standalone", "--nproc_per_node=2", "-m", "pipeline", "train", "-c", "competition.yaml",
         "--model", "tiny", "--fold", "0"],
        cwd=tmp_path, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = tmp_path / "runs/tiny/fold0"
    assert (out / "done.json").is_file()
    oof = read_table_file(out / "oof.parquet")
    folds = pd.read_csv(tmp_path / "folds/folds.csv", dtype={"image_id": str})
    assert sorted(oof.image_id) == sorted(folds.image_id[folds.fold == 0])
    assert proc.stdout.count("epoch 1/1") == 1  # only rank 0 reports
