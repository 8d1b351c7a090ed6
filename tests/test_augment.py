"""Image geometry (squash / pad / crop to [h, w]), presets, explicit lists through albumentations'
serialisation, the data config every pipeline is built from, and augmix_jsd (AugMix's consistency loss)."""

from __future__ import annotations

import hashlib
import json
import math

import albumentations as A
import numpy as np
import pytest
import torch

from pipeline.nn.augment import PRESETS, build_transform, eval_transform, from_list, geometry, train_transform
from pipeline.core.config import ConfigError, validate
from pipeline.nn.models import ModelConfig, build_model, data_config, resolve_stages
from pipeline.nn.tta import get_view

SOURCES = {"wide": (100, 300), "tall": (300, 100)}  # (height, width) of the image as read
SIZES = {"64x96": [64, 96], "int 64": 64}


def gradient_image(H: int, W: int) -> np.ndarray:
    """RGB: red = column position, green = row position (0..255), blue = 255 (so no content pixel is 0)."""
    cols = np.broadcast_to(np.linspace(0, 255, W), (H, W))
    rows = np.broadcast_to(np.linspace(0, 255, H)[:, None], (H, W))
    return np.stack([cols, rows, np.full((H, W), 255.0)], axis=-1).round().astype(np.uint8)


def hw(size) -> tuple[int, int]:
    return (size, size) if isinstance(size, int) else tuple(size)


def run_geometry(img: np.ndarray, size, resize: str) -> np.ndarray:
    h, w = hw(size)
    return A.Compose(geometry(h, w, resize))(image=img)["image"]


@pytest.fixture(scope="module")
def model():
    return build_model(ModelConfig(backbone="test_resnet"), num_classes=3)


# --- geometry -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("source", SOURCES)
@pytest.mark.parametrize("size", SIZES)
def test_squash_fills_the_whole_frame(source, size):
    H, W = SOURCES[source]
    out = run_geometry(gradient_image(H, W), SIZES[size], "squash")
    assert out.shape[:2] == hw(SIZES[size])
    assert out[..., 2].min() == 255  # no border anywhere
    assert out[0, 0, 0] <= 3 and out[0, -1, 0] >= 252  # every column of the source is in view


@pytest.mark.parametrize("source", SOURCES)
@pytest.mark.parametrize("size", SIZES)
def test_pad_keeps_the_aspect_and_centres_it_on_zero(source, size):
    H, W = SOURCES[source]
    h, w = hw(SIZES[size])
    out = run_geometry(gradient_image(H, W), SIZES[size], "pad")
    assert out.shape[:2] == (h, w)
    content = out[..., 2] > 0
    rows, cols = np.flatnonzero(content.any(axis=1)), np.flatnonzero(content.any(axis=0))
    top, bottom, left, right = rows[0], h - 1 - rows[-1], cols[0], w - 1 - cols[-1]
    box_h, box_w = len(rows), len(cols)
    scale = min(h / H, w / W)  # the longest side (relative to the frame) fits
    assert abs(box_h - H * scale) <= 1 and abs(box_w - W * scale) <= 1
    assert abs(box_w / box_h - W / H) <= 0.1 * W / H  # the aspect survives (up to a pixel of rounding)
    assert content[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1].all()
    assert not out[~content].any()  # the padding is 0
    assert abs(top - bottom) <= 1 and abs(left - right) <= 1  # centred
    assert min(top + bottom, left + right) == 0  # and touching two opposite sides


@pytest.mark.parametrize("source", SOURCES)
@pytest.mark.parametrize("size", SIZES)
def test_crop_is_the_centre_region(source, size):
    H, W = SOURCES[source]
    h, w = hw(SIZES[size])
    out = run_geometry(gradient_image(H, W), SIZES[size], "crop").astype(float)
    assert out.shape[:2] == (h, w) and out[..., 2].min() == 255  # no padding
    scale = max(h / H, w / W)  # the shortest side (relative to the frame) covers
    kept_w, kept_h = w / (W * scale), h / (H * scale)  # fractions of the source kept
    assert max(kept_w, kept_h) > 0.99 and min(kept_w, kept_h) < 0.9  # one side whole, the other cropped
    tol = 255 / min(h, w) * 2
    first_col, last_col = out[:, 0, 0].mean(), out[:, -1, 0].mean()
    first_row, last_row = out[0, :, 1].mean(), out[-1, :, 1].mean()
    assert first_col == pytest.approx(255 * (1 - kept_w) / 2, abs=tol)
    assert last_col == pytest.approx(255 * (1 + kept_w) / 2, abs=tol)
    assert first_row == pytest.approx(255 * (1 - kept_h) / 2, abs=tol)
    assert last_row == pytest.approx(255 * (1 + kept_h) / 2, abs=tol)


def test_unknown_resize_mode_lists_the_modes():
    with pytest.raises(ConfigError, match=r"key 'resize'.*squash, pad, crop"):
        geometry(64, 64, "stretch")


# --- presets --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("preset", PRESETS)
@pytest.mark.parametrize("resize", ["squash", "pad", "crop"])
def test_every_preset_gives_the_size_on_rgb_and_grayscale(preset, resize):
    rng = np.random.default_rng(0)
    for color, shape in ((True, (100, 300, 3)), (False, (300, 100))):
        c = 3 if color else 1
        tf = build_transform(preset, [64, 96], [0.5] * c, [0.25] * c, color=color, resize=resize)
        img = rng.integers(0, 256, shape, dtype=np.uint8)
        for _ in range(8):  # several draws: every random branch has its chance to break the shape
            x = tf(image=img)["image"]
            assert isinstance(x, torch.Tensor) and x.dtype == torch.float32 and tuple(x.shape) == (c, 64, 96)


def test_rand_and_trivial_augment_change_images_and_skip_colour_on_grayscale():
    img = np.random.default_rng(1).integers(40, 200, (64, 96, 3), dtype=np.uint8)
    for preset in ("randaugment", "trivialaugment"):
        tf = build_transform(preset, [64, 96], [0.5] * 3, [0.25] * 3)
        outs = [tf(image=img)["image"] for _ in range(4)]
        assert not all(torch.equal(outs[0], o) for o in outs[1:])
        gray = A.to_dict(build_transform(preset, 64, [0.5], [0.25], color=False))
        assert "ColorJitter" not in str(gray) and "ColorJitter" in str(A.to_dict(tf))
    some_of = A.to_dict(build_transform("randaugment", 64, [0.5], [0.25]))["transform"]["transforms"][-3]
    assert some_of["__class_fullname__"] == "SomeOf" and some_of["n"] == 2 and len(some_of["transforms"]) >= 12


def test_unknown_preset_lists_the_presets():
    with pytest.raises(ConfigError, match=r"key 'augment'.*randaugment, trivialaugment"):
        build_transform("strong", 64, [0.5], [0.5])


# --- explicit lists -------------------------------------------------------------------------------------

NESTED = [
    {"name": "OneOf", "p": 0.5, "transforms": [{"name": "HorizontalFlip", "p": 1}, {"name": "VerticalFlip", "p": 1}]},
    {"name": "SomeOf", "n": 1, "transforms": [{"name": "Blur", "blur_limit": 3, "p": 0}]},
    {"name": "Sequential", "p": 1, "transforms": [{"name": "Transpose", "p": 0}]},
]


def test_nested_compositions_build_and_are_random():
    built = from_list(NESTED)
    assert [type(t).__name__ for t in built] == ["OneOf", "SomeOf", "Sequential"]
    assert built[0].p == 0.5 and built[1].n == 1
    img = np.arange(12 * 18, dtype=np.uint8).reshape(12, 18)  # every flip gives another image
    tf = build_transform(NESTED, [12, 18], [0.0], [1.0 / 255], color=False)
    seen = {"none": 0, "h": 0, "v": 0}
    for _ in range(300):
        x = tf(image=img)["image"][0].round().numpy().astype(np.uint8)
        key = next(k for k, ref in (("none", img), ("h", img[:, ::-1]), ("v", img[::-1])) if np.array_equal(x, ref))
        seen[key] += 1
    assert 0.38 < seen["none"] / 300 < 0.62 and seen["h"] > 50 and seen["v"] > 50


def test_a_missing_p_is_the_classes_own_default_not_from_dicts_half():
    (t,) = from_list([{"name": "LongestMaxSize", "max_size": 32}])
    assert t.p == 1


def test_serialised_items_round_trip():
    """Items as A.to_dict writes them (`__class_fullname__`, every argument) build the same transforms."""
    for resize in ("pad", "crop"):
        items = A.to_dict(build_transform("heavy", [64, 96], [0.5] * 3, [0.5] * 3, resize=resize))
        items = items["transform"]["transforms"][:-2]  # less Normalize + ToTensorV2, which every pipeline adds
        assert A.to_dict(A.Compose(from_list(items)))["transform"]["transforms"] == items


def test_a_list_without_sizing_runs_at_training_size():
    """Flips, Affine, colour: the geometry first, so they act on the image at img_size (here: pad)."""
    from pipeline.nn.augment import sizes_itself

    spec = [{"name": "Affine", "rotate": [0, 0], "translate_px": [4, 4], "p": 1.0}]  # a shift of 4 px right/down
    assert not sizes_itself(spec) and sizes_itself([{"name": "OneOf", "transforms": [{"name": "RandomCrop",
                                                                                        "height": 8, "width": 8}]}])
    img = np.full((300, 100, 3), 200, np.uint8)
    x = build_transform(spec, [64, 96], [0.0] * 3, [1.0 / 255] * 3, resize="pad")(image=img)["image"].numpy()
    padded = A.Compose(geometry(64, 96, "pad"))(image=img)["image"]
    shifted = A.Affine(rotate=(0, 0), translate_px=(4, 4), p=1.0)(image=padded)["image"]
    assert x.shape == (3, 64, 96)
    np.testing.assert_allclose(x.transpose(1, 2, 0), shifted.astype(np.float32), atol=1e-3)  # geometry, then the list
    assert not np.allclose(x.transpose(1, 2, 0), padded)  # and the list did act


def test_a_list_runs_on_the_image_as_read_and_the_geometry_after_it():
    """The user's LongestMaxSize + PadIfNeeded decide (zero bands, the aspect kept); the squash after is a no-op."""
    spec = [{"name": "LongestMaxSize", "max_size_hw": [64, 96]},
            {"name": "PadIfNeeded", "min_height": 64, "min_width": 96, "border_mode": 0, "fill": 0}]
    tf = build_transform(spec, [64, 96], [0.0] * 3, [1.0 / 255] * 3, resize="squash")
    x = tf(image=np.full((300, 100, 3), 200, np.uint8))["image"]
    assert tuple(x.shape) == (3, 64, 96)
    assert x[:, :, :10].abs().max() == 0 and x[:, :, 48].min() > 150  # padded left and right, content inside


def test_unknown_nested_transform_names_the_position():
    spec = [{"name": "HorizontalFlip"}, {"name": "OneOf", "transforms": [{"name": "Blur"}, {"name": "GausianBlur"}]}]
    with pytest.raises(ConfigError) as e:
        from_list(spec)
    msg = str(e.value)
    assert "key 'augment[1].transforms[1]'" in msg and "OneOf" in msg and "GaussianBlur" in msg


def test_unknown_nested_parameter_names_the_position():
    spec = [{"name": "Sequential", "transforms": [
        {"name": "SomeOf", "n": 1, "transforms": [{"name": "Blur", "blur_limt": 3}]}]}]
    with pytest.raises(ConfigError) as e:
        from_list(spec)
    msg = str(e.value)
    assert "key 'augment[0].transforms[0].transforms[0]' (Sequential > SomeOf > Blur)" in msg
    assert "blur_limt" in msg and "did you mean 'blur_limit'" in msg


def test_bad_values_and_pipeline_ends_are_config_errors():
    with pytest.raises(ConfigError, match=r"key 'augment\[0\].transforms\[0\]' \(OneOf > Blur\): blur_limit"):
        from_list([{"name": "OneOf", "transforms": [{"name": "Blur", "blur_limit": "big"}]}])
    with pytest.raises(ConfigError, match="end every pipeline"):
        from_list([{"name": "Normalize"}])
    with pytest.raises(ConfigError, match=r"key 'augment\[0\]'.*a mapping"):
        from_list(["HorizontalFlip"])


# --- data configs and callers ---------------------------------------------------------------------------


def test_an_old_int_data_config_from_a_checkpoint_still_works():
    old = {"img_size": 32, "mean": [0.5], "std": [0.5], "interpolation": 1}  # no resize, no read_side
    x = eval_transform(old, in_chans=1)(image=np.zeros((100, 300), np.uint8))["image"]
    assert tuple(x.shape) == (1, 32, 32)


@pytest.mark.parametrize("resize", ["squash", "pad", "crop"])
@pytest.mark.parametrize("augment", ["light", "heavy", "trivialaugment", NESTED])
def test_train_and_eval_pipelines_of_a_model_give_the_same_size(model, resize, augment):
    from pipeline.nn.infer import EvalSpec

    cfg = ModelConfig(backbone="test_resnet", img_size=[48, 80], resize=resize, augment=augment)
    d = data_config(cfg, model)
    assert d["img_size"] == [48, 80] and d["resize"] == resize
    img = np.random.default_rng(0).integers(0, 256, (120, 90, 3), dtype=np.uint8)
    train = train_transform(cfg.augment, d, cfg.in_chans)(image=img)["image"]
    evaluated = EvalSpec.of(cfg, d).transform()(image=img)["image"]
    assert tuple(train.shape) == tuple(evaluated.shape) == (3, 48, 80)


def test_read_side_is_over_the_largest_size_of_all_stages(model):
    stages = [{"epochs": 1, "img_size": [64, 200]}, {"epochs": 1}]
    cfg = validate(ModelConfig, {"backbone": "test_resnet", "img_size": 128, "stages": stages}, "test")
    assert data_config(cfg, model)["read_side"] == math.ceil(1.5 * 200)
    first, second = resolve_stages(cfg, "test")
    assert data_config(first, model)["img_size"] == [64, 200] and data_config(second, model)["img_size"] == [128, 128]
    # a stage's own config has no stages: the whole config decides, so every stage reads (and caches) alike
    for stage in (first, second):
        assert data_config(stage, model, whole=cfg)["read_side"] == 300
    assert data_config(cfg.model_copy(update={"read_scale": None}), model)["read_side"] is None
    default = model.pretrained_cfg["input_size"][-1]  # img_size null: the model's own
    assert data_config(ModelConfig(backbone="test_resnet", read_scale=2), model)["read_side"] == 2 * default


def test_size_keys_are_validated_by_name():
    for bad, needle in (({"img_size": [64]}, "key 'img_size'"), ({"img_size": [64, 4]}, "key 'img_size'"),
                        ({"resize": "stretch"}, "key 'resize'"), ({"read_scale": 0}, "key 'read_scale'")):
        with pytest.raises(ConfigError, match=needle):
            validate(ModelConfig, {"backbone": "test_resnet", **bad}, "test")
    with pytest.raises(ConfigError, match="'squash', 'pad' or 'crop'"):
        validate(ModelConfig, {"backbone": "test_resnet", "resize": "stretch"}, "test")
    cfg = validate(ModelConfig, {"backbone": "test_resnet", "stages": [{"epochs": 1, "resize": "pad"}]}, "test")
    assert resolve_stages(cfg, "test")[0].resize == "pad"
    bad_stage = validate(ModelConfig, {"backbone": "test_resnet", "stages": [{"epochs": 1, "img_size": [8]}]}, "test")
    with pytest.raises(ConfigError, match=r"(?s)stages\[0\].*key 'img_size'"):
        resolve_stages(bad_stage, "test")
    with pytest.raises(ConfigError, match="read_scale"):
        resolve_stages(validate(ModelConfig, {"backbone": "test_resnet",
                                              "stages": [{"epochs": 1, "read_scale": 2}]}, "test"), "test")


def test_tta_scale_views_keep_a_non_square_size():
    x = torch.rand(2, 3, 48, 80)
    for factor in ("0.8", "1.25"):
        assert get_view(f"scale:{factor}")(x).shape == x.shape


# --- augmix_jsd: AugMix's Jensen-Shannon consistency loss ---------------------------------------------------

JSD_MODEL = {"backbone": "test_resnet", "img_size": 16, "in_chans": 1, "augment": "augmix", "augmix_jsd": 12.0}


def test_jsd_is_zero_for_identical_views_and_matches_numpy():
    from pipeline.train.recipe import jsd

    logits = torch.randn(3, 6, 5, generator=torch.Generator().manual_seed(0)) * 3
    same = logits[:1].expand(3, 6, 5)
    assert torch.allclose(jsd(same), torch.zeros(6), atol=1e-6)
    got = jsd(logits)
    assert got.shape == (6,) and (got > 1e-4).all()
    p = np.exp(logits.double().numpy())
    p /= p.sum(axis=-1, keepdims=True)
    log_m = np.log(np.clip(p.mean(axis=0), 1e-7, 1))
    expected = (p * (np.log(p) - log_m)).sum(axis=-1).mean(axis=0)  # mean over the views of KL(p_v || M)
    assert np.allclose(got.numpy(), expected, rtol=1e-4, atol=1e-6)
    assert (got.numpy() <= np.log(3) + 1e-6).all()  # a JSD of 3 distributions is at most log 3


def test_jsd_loss_is_the_clean_views_loss_plus_lambda_jsd():
    from pipeline.train.recipe import JsdLoss, jsd, make_loss

    cfg = ModelConfig(**JSD_MODEL, label_smoothing=0.1, ohem=0.5)
    base = make_loss(cfg, "multiclass", None)
    loss_fn = JsdLoss(base, cfg.augmix_jsd)
    logits = torch.randn(3 * 4, 3, generator=torch.Generator().manual_seed(1))  # clean, draw 1, draw 2
    target = torch.eye(3)[torch.tensor([0, 1, 2, 0])]
    views = logits.reshape(3, 4, 3)
    expected = base(views[0], target) + 12.0 * jsd(views).mean()
    assert torch.allclose(loss_fn(logits, target), expected)
    assert torch.allclose(loss_fn.last, jsd(views).mean())
    assert torch.allclose(loss_fn(views[0].repeat(3, 1), target), base(views[0], target), atol=1e-5)
    with pytest.raises(ValueError, match="3 views"):
        loss_fn(logits[:8], target)


def test_augmix_views_are_a_clean_view_and_two_seeded_augmix_draws(model):
    from pipeline.nn.augment import AugMixViews, augmix_views
    from pipeline.train.train import to_device

    cfg = ModelConfig(**{**JSD_MODEL, "in_chans": 3, "img_size": [24, 32]})
    d = data_config(cfg, model)
    tf = augmix_views(d, 3)
    assert isinstance(tf, AugMixViews)
    img = (np.random.default_rng(0).random((40, 50, 3)) * 255).astype(np.uint8)
    tf.set_random_seed(5)
    x = tf(image=img)["image"]
    tf.set_random_seed(5)
    assert x.shape == (3, 3, 24, 32) and torch.equal(x, tf(image=img)["image"])
    assert not torch.equal(x[1], x[2]) and not torch.equal(x[0], x[1]) and not torch.equal(x[0], x[2])
    # the clean view is the augmix preset's crop and flip, normalised, without the AugMix policy
    clean = A.Compose([*tf.base.transforms, *tf.clean.transforms])
    clean.set_random_seed(5)
    assert torch.equal(x[0], clean(image=img)["image"])
    # a batch (n, 3, C, H, W) goes to the model as the clean views, then the first draws, then the second
    batch = torch.stack([x, x + 1])
    flat = to_device(batch, torch.device("cpu"), torch.channels_last)
    assert flat.shape == (6, 3, 24, 32) and torch.equal(flat[1], x[0] + 1) and torch.equal(flat[4], x[2])
    assert flat.is_contiguous(memory_format=torch.channels_last)


JSD_ERRORS = [
    ({"augment": "light"}, "key 'augmix_jsd': AugMix's consistency loss compares AugMix views, so it needs augment: "
                           "augmix, not light"),
    ({"augmix_jsd": -1.0}, "key 'augmix_jsd': Input should be greater than 0 (got -1.0)"),
    ({"augmix_jsd": 0}, "key 'augmix_jsd': Input should be greater than 0 (got 0)"),
    ({"mixup": 0.2}, "key 'augmix_jsd': does not combine with mixup or cutmix"),
    ({"cutmix": 1.0}, "key 'augmix_jsd': does not combine with mixup or cutmix"),
    ({"stages": [{"epochs": 1, "augment": "none"}]}, "stages[0]: invalid configuration\n  key 'augmix_jsd': "
                                                     "AugMix's consistency loss compares AugMix views"),
]


@pytest.mark.parametrize("keys,message", JSD_ERRORS, ids=[str(k) for k, _ in JSD_ERRORS])
def test_bad_augmix_jsd_configs_are_refused_naming_the_key(tmp_path, keys, message):
    """As `train`, `plan` and `make check` load a model config: the file, the key and why."""
    from pipeline.nn.models import load_model
    from tests.conftest import write_yaml

    path = write_yaml(tmp_path / "models" / "m.yaml", {**JSD_MODEL, **keys})
    with pytest.raises(ConfigError) as err:
        load_model(tmp_path / "models", "m")
    assert str(path) in str(err.value) and message in str(err.value), str(err.value)


def test_augmix_jsd_is_refused_for_multilabel_and_regression_and_its_stage_may_turn_it_off():
    from pipeline.train.recipe import check_recipe

    stages = resolve_stages(ModelConfig(**JSD_MODEL), "m.yaml")
    for task in ("binary", "multiclass", "ordinal"):
        check_recipe(stages, task, ["a", "b"], "m.yaml")
    for task, why in (("multilabel", "independent sigmoids"), ("regression", "no class distribution")):
        loss = {"regression": "mse"}.get(task, "auto")
        with pytest.raises(ConfigError, match=rf"^m.yaml: key 'augmix_jsd': .*task {task} has {why}; set augmix_jsd"):
            check_recipe(resolve_stages(ModelConfig(**JSD_MODEL, loss=loss), "m.yaml"), task, ["a", "b"], "m.yaml")
    staged = resolve_stages(ModelConfig(**JSD_MODEL, stages=[{"epochs": 1}, {"epochs": 1, "augment": "none",
                                                                                 "augmix_jsd": None}]), "m.yaml")
    assert [s.augmix_jsd for s in staged] == [12.0, None]


def test_augmix_jsd_unset_keeps_the_config_hash_and_set_changes_it():
    from pipeline.core.config import config_hash
    from pipeline.nn.models import ADDED_KEYS, stamp_exclusions

    assert ADDED_KEYS["augmix_jsd"] is None
    plain = ModelConfig(**{**JSD_MODEL, "augmix_jsd": None})
    dump = {k: v for k, v in plain.model_dump(mode="json").items() if k != "augmix_jsd"}
    before = hashlib.md5(json.dumps({k: v for k, v in dump.items() if k not in stamp_exclusions(plain)},
                                    sort_keys=True).encode()).hexdigest()  # as before the key existed
    assert config_hash(plain, stamp_exclusions(plain)) == before
    on = ModelConfig(**JSD_MODEL)
    assert config_hash(on, stamp_exclusions(on)) != before


@pytest.mark.slow
def test_augmix_jsd_trains_a_fold_through_the_cli_and_logs_its_jsd(tmp_path):
    """One fold of the tiny competition with augment: augmix and augmix_jsd: 12, through the CLI: log.csv has
    the train_jsd column (finite, > 0) and train_loss includes 12 x it; validation and OOF as always; show-batch
    still draws the model."""
    import pandas as pd

    from tests.conftest import TINY_MODEL, make_competition, run_cli, write_yaml

    make_competition(tmp_path, n_train=60, models_dir="models")
    write_yaml(tmp_path / "models" / "tiny.yaml", {**TINY_MODEL, "epochs": 1, "augment": "augmix"})
    run_cli("folds", "-c", "competition.yaml", cwd=tmp_path)
    fold0 = tmp_path / "runs" / "tiny" / "fold0"
    proc = run_cli("train", "-c", "competition.yaml", "--model", "tiny", "--fold", "0", "augmix_jsd=12",
                   cwd=tmp_path)
    assert "| jsd " in proc.stdout, proc.stdout
    log = pd.read_csv(fold0 / "log.csv")
    done = json.loads((fold0 / "done.json").read_text())
    assert done["overrides"] == ["augmix_jsd=12"]
    jsd_mean, loss = float(log["train_jsd"].iloc[0]), float(log["train_loss"].iloc[0])
    assert np.isfinite(jsd_mean) and 0 < jsd_mean <= math.log(3)
    assert loss > 12 * jsd_mean and np.isfinite(log["val_loss"].iloc[0])  # the clean view's ce + 12 x jsd
    assert (fold0 / "oof.parquet").is_file()  # validation and OOF: one view, as always
    run_cli("show-batch", "-c", "competition.yaml", "--model", "tiny", "--n", "4", "augmix_jsd=12", cwd=tmp_path)
    assert (tmp_path / "runs" / "tiny" / "show_batch" / "train.png").is_file()
