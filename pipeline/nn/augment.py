"""Albumentations pipelines: the geometry to the model's input size, presets, or an explicit list.

Geometry (`resize`, one list for training and evaluation alike, see `geometry`) takes an image of any
shape to exactly (h, w) = `img_size`:

- squash: resize to (h, w), ignoring the aspect ratio;
- pad: the longest side to fit (h, w) keeping the aspect, then centred zero padding to (h, w);
- crop: the shortest side to cover (h, w) keeping the aspect, then a centre crop to (h, w).

Presets (`augment: <name>`) build around that geometry. For squash, none/light/medium/heavy are the
pipelines they always were (medium and heavy start with a RandomResizedCrop to (h, w)); for pad and
crop they start with the geometry, and their random crops keep the aspect h:w, so nothing is
stretched. `randaugment` draws N ops of a fixed magnitude per image (A.SomeOf), `trivialaugment`
one op of a random magnitude (A.OneOf); `autoaugment` (AutoAugment's ImageNet policy) and `augmix`
(AugMix) are timm's policies run as one albumentations transform (TimmPolicy); all after the geometry, a
zoom crop and a flip. With `augmix_jsd` (AugMix's consistency loss) training uses `augmix_views` instead:
the crop and flip once, then a clean view and two AugMix draws of it (AugMixViews).

An explicit list (`augment: [{name: <albumentations class>, ...params}, ...]`) is built with
albumentations' own serialisation (A.from_dict), so compositions nest:
`{name: OneOf, p: 0.5, transforms: [...]}`, SomeOf, Sequential, SelectiveChannelTransform, ...;
items in albumentations' serialised form (`__class_fullname__` instead of `name`) work too.
Rule: a list that sizes the image itself (it holds one of SIZING: Resize, RandomResizedCrop, RandomCrop,
LongestMaxSize + PadIfNeeded, ...) runs on the image as read (after the `read_side` reduction), so it
decides, and the geometry after it is a no-op when it reached img_size. Any other list (flips, Affine,
colour) runs on the image brought to img_size by the geometry first, as augmentations are usually tuned:
an Affine on an 8x8 digit before its resize to 32 px would cost the demo half a point of accuracy.

Normalize + ToTensorV2 end every pipeline. Unknown presets, modes, transforms and parameters are
ConfigErrors that name the key (`augment[1].transforms[0]`) and list or suggest the valid names.
"""

from __future__ import annotations

import difflib
import inspect
from functools import lru_cache
from typing import Any, Callable

import albumentations as A
import cv2
from albumentations.core.serialization import SERIALIZABLE_REGISTRY, shorten_class_name
from albumentations.pytorch import ToTensorV2
from pydantic import ValidationError

from pipeline.core.errors import ConfigError
from pipeline.nn.models import AUGMENT_PRESETS

# --- geometry -----------------------------------------------------------------------------------------


def _squash(h: int, w: int, interp: int) -> list:
    return [A.Resize(h, w, interpolation=interp)]


def _pad(h: int, w: int, interp: int) -> list:
    return [A.LongestMaxSize(max_size_hw=(h, w), interpolation=interp),
            A.PadIfNeeded(h, w, position="center", border_mode=cv2.BORDER_CONSTANT, fill=0)]


def _crop(h: int, w: int, interp: int) -> list:
    # pad_if_needed guards against a side rounding one pixel short of (h, w)
    return [A.SmallestMaxSize(max_size_hw=(h, w), interpolation=interp),
            A.CenterCrop(h, w, pad_if_needed=True, border_mode=cv2.BORDER_CONSTANT, fill=0)]


GEOMETRY: dict[str, Callable[[int, int, int], list]] = {"squash": _squash, "pad": _pad, "crop": _crop}


def size_hw(img_size: int | list[int] | tuple[int, int]) -> tuple[int, int]:
    """(height, width) of an img_size: an int (square) or [height, width]."""
    if isinstance(img_size, int):
        return img_size, img_size
    h, w = img_size
    return int(h), int(w)


def geometry(h: int, w: int, resize: str = "squash", interpolation: int = cv2.INTER_LINEAR) -> list:
    """The transforms that take any image to exactly (h, w) by `resize` (squash, pad or crop)."""
    if resize not in GEOMETRY:
        raise ConfigError(f"key 'resize': unknown mode {resize!r}; allowed: {', '.join(GEOMETRY)}")
    return GEOMETRY[resize](h, w, interpolation)


def _zoom_crop(h: int, w: int, resize: str, interp: int, scale: tuple[float, float]) -> list:
    """A random crop of `scale` of the area, resized to (h, w). squash: of the image as read, any aspect in
    3/4..4/3 (the classic RandomResizedCrop); pad/crop: of the (h, w) geometry, at its aspect (a zoom)."""
    if resize == "squash":
        return [A.RandomResizedCrop((h, w), scale=scale, interpolation=interp, p=1.0)]
    return [*geometry(h, w, resize, interp),
            A.RandomResizedCrop((h, w), scale=scale, ratio=(w / h, w / h), interpolation=interp, p=1.0)]


# --- presets ------------------------------------------------------------------------------------------


def _none(h: int, w: int, resize: str, interp: int, color: bool) -> list:
    return geometry(h, w, resize, interp)


def _light(h: int, w: int, resize: str, interp: int, color: bool) -> list:
    return [*geometry(h, w, resize, interp), A.HorizontalFlip(p=0.5)]


def _medium(h: int, w: int, resize: str, interp: int, color: bool) -> list:
    out = [
        *_zoom_crop(h, w, resize, interp, (0.7, 1.0)),
        A.HorizontalFlip(p=0.5),
        A.Affine(translate_percent=(-0.0625, 0.0625), scale=(0.9, 1.1), rotate=(-15, 15),
                 border_mode=cv2.BORDER_REFLECT_101, p=0.5),
        A.RandomBrightnessContrast(0.2, 0.2, p=0.5),
    ]
    if color:
        out.append(A.HueSaturationValue(10, 20, 10, p=0.3))
    out.append(A.CoarseDropout(num_holes_range=(1, 4), hole_height_range=(0.05, 0.2),
                               hole_width_range=(0.05, 0.2), p=0.3))
    return out


def _heavy(h: int, w: int, resize: str, interp: int, color: bool) -> list:
    out = [
        *_zoom_crop(h, w, resize, interp, (0.5, 1.0)),
        A.HorizontalFlip(p=0.5),
        A.VerticalFlip(p=0.2),
        A.Affine(translate_percent=(-0.1, 0.1), scale=(0.8, 1.2), rotate=(-30, 30), shear=(-10, 10),
                 border_mode=cv2.BORDER_REFLECT_101, p=0.7),
        A.OneOf([A.RandomBrightnessContrast(0.3, 0.3), A.CLAHE(clip_limit=(1, 4))], p=0.6),
    ]
    if color:
        out.append(A.HueSaturationValue(20, 30, 20, p=0.5))
    out += [
        A.GaussNoise(std_range=(0.02, 0.1), p=0.3),
        A.CoarseDropout(num_holes_range=(1, 8), hole_height_range=(0.05, 0.25),
                        hole_width_range=(0.05, 0.25), p=0.5),
    ]
    return out


# RandAugment / TrivialAugment ops: name -> (build(lo, hi) with the amount drawn from [lo, hi], the amount at
# magnitude 1, signed, colour only). Amounts at magnitude 1 follow TrivialAugment-wide / timm: rotate 30
# degrees, shear 17 degrees (0.3), translate 45 % (timm's 0.45), enhance factors 1 +- 0.9, posterize down to
# 4 bits, solarize down to threshold 0. Signed ops go either way (rotate left or right).
_FILL = {"border_mode": cv2.BORDER_CONSTANT, "fill": 0, "p": 1.0}
OPS: dict[str, tuple[Callable[[float, float], A.BasicTransform], float, bool, bool]] = {
    "identity": (lambda lo, hi: A.NoOp(p=1.0), 0.0, False, False),
    "autocontrast": (lambda lo, hi: A.AutoContrast(p=1.0), 0.0, False, False),
    "equalize": (lambda lo, hi: A.Equalize(p=1.0), 0.0, False, False),
    "rotate": (lambda lo, hi: A.Affine(rotate=(lo, hi), **_FILL), 30.0, True, False),
    "shear_x": (lambda lo, hi: A.Affine(shear={"x": (lo, hi), "y": (0, 0)}, **_FILL), 17.0, True, False),
    "shear_y": (lambda lo, hi: A.Affine(shear={"x": (0, 0), "y": (lo, hi)}, **_FILL), 17.0, True, False),
    "translate_x": (lambda lo, hi: A.Affine(translate_percent={"x": (lo, hi), "y": (0, 0)}, **_FILL), 0.45, True,
                    False),
    "translate_y": (lambda lo, hi: A.Affine(translate_percent={"x": (0, 0), "y": (lo, hi)}, **_FILL), 0.45, True,
                    False),
    "brightness": (lambda lo, hi: A.RandomBrightnessContrast(brightness_limit=(lo, hi), contrast_limit=(0, 0),
                                                             brightness_by_max=False, p=1.0), 0.9, True, False),
    "contrast": (lambda lo, hi: A.RandomBrightnessContrast(brightness_limit=(0, 0), contrast_limit=(lo, hi), p=1.0),
                 0.9, True, False),
    "sharpness": (lambda lo, hi: A.Sharpen(alpha=(lo, hi), lightness=(1.0, 1.0), p=1.0), 0.9, False, False),
    "posterize": (lambda lo, hi: A.Posterize(num_bits=(round(8 - 4 * hi), round(8 - 4 * lo)), p=1.0), 1.0, False,
                  False),
    "solarize": (lambda lo, hi: A.Solarize(threshold_range=(1 - hi, 1 - lo), p=1.0), 1.0, False, False),
    "color": (lambda lo, hi: A.ColorJitter(brightness=0, contrast=0, saturation=(1 + lo, 1 + hi), hue=0, p=1.0),
              0.9, True, True),
}
RANDAUGMENT_N, RANDAUGMENT_MAGNITUDE = 2, 0.9  # timm's rand-m9-n2 (magnitude 9 of 10)


def _fixed(name: str, magnitude: float) -> A.BasicTransform:
    """The op at exactly `magnitude` (of its maximum); a signed op either way with equal chance."""
    build, top, signed, _ = OPS[name]
    v = magnitude * top
    return A.OneOf([build(v, v), build(-v, -v)], p=1.0) if signed and v else build(v, v)


def _ranged(name: str) -> A.BasicTransform:
    """The op with its amount uniform in [0, max] ([-max, max] when signed)."""
    build, top, signed, _ = OPS[name]
    return build(-top if signed else 0.0, top)


def _ops(color: bool) -> list[str]:
    return [name for name, (_, _, _, color_only) in OPS.items() if color or not color_only]


def _randaugment(h: int, w: int, resize: str, interp: int, color: bool) -> list:
    ops = [_fixed(name, RANDAUGMENT_MAGNITUDE) for name in _ops(color)]
    return [*_zoom_crop(h, w, resize, interp, (0.5, 1.0)), A.HorizontalFlip(p=0.5),
            A.SomeOf(ops, n=RANDAUGMENT_N, replace=False, p=1.0)]


def _trivialaugment(h: int, w: int, resize: str, interp: int, color: bool) -> list:
    ops = [_ranged(name) for name in _ops(color)]
    return [*_zoom_crop(h, w, resize, interp, (0.5, 1.0)), A.HorizontalFlip(p=0.5), A.OneOf(ops, p=1.0)]


class TimmPolicy(A.ImageOnlyTransform):
    """One of timm's PIL augmentation policies as an albumentations transform, so it runs inside the one
    pipeline (after the geometry, before Normalize): `original` is AutoAugment's ImageNet policy
    (auto_augment_transform), `augmix-m3-w3` AugMix (augment_and_mix_transform; its JSD loss: AugMixViews).
    timm draws from python's and numpy's global generators; each call seeds them from this transform's own
    generator and puts them back, so albumentations' `set_random_seed` (and the DataLoader's per-worker seed)
    decides every draw. Grayscale images go through as RGB and come back gray."""

    def __init__(self, policy: str = "original", p: float = 1.0):
        super().__init__(p=p)
        self.policy = policy
        self._built: dict[tuple[int, int], Callable] = {}

    def _transform(self, h: int, w: int) -> Callable:
        """timm's transform for (h, w) images (translations are in pixels), built once per size."""
        from timm.data.auto_augment import augment_and_mix_transform, auto_augment_transform

        if (h, w) not in self._built:
            hparams = {"translate_const": int(min(h, w) * 0.45), "img_mean": (0, 0, 0)}
            build = augment_and_mix_transform if self.policy.startswith("augmix") else auto_augment_transform
            self._built[(h, w)] = build(self.policy, hparams)
        return self._built[(h, w)]

    def get_params(self) -> dict[str, Any]:
        return {"seed": self.py_random.randrange(2**32)}

    def apply(self, img, seed: int = 0, **params):
        import random

        import numpy as np
        from PIL import Image

        gray = img.ndim == 2 or img.shape[-1] == 1
        rgb = np.repeat(img.reshape(img.shape[0], img.shape[1], 1), 3, axis=2) if gray else img
        kept = random.getstate(), np.random.get_state()
        random.seed(seed)
        np.random.seed(seed)
        try:
            out = np.asarray(self._transform(*img.shape[:2])(Image.fromarray(rgb)))
        finally:
            random.setstate(kept[0])
            np.random.set_state(kept[1])
        return out[..., 0].reshape(img.shape) if gray else out

    def get_transform_init_args_names(self) -> tuple[str, ...]:
        return ("policy",)


def _policy_base(h: int, w: int, resize: str, interp: int) -> list:
    """What the timm policies run after: a zoom crop and a flip."""
    return [*_zoom_crop(h, w, resize, interp, (0.5, 1.0)), A.HorizontalFlip(p=0.5)]


def _timm_preset(policy: str) -> Callable[[int, int, str, int, bool], list]:
    def preset(h: int, w: int, resize: str, interp: int, color: bool) -> list:
        return [*_policy_base(h, w, resize, interp), TimmPolicy(policy)]

    return preset


AUGMIX_POLICY = "augmix-m3-w3"


Preset = Callable[[int, int, str, int, bool], list]
PRESETS: dict[str, Preset] = {
    "none": _none,
    "light": _light,
    "medium": _medium,
    "heavy": _heavy,
    "randaugment": _randaugment,
    "trivialaugment": _trivialaugment,
    "autoaugment": _timm_preset("original"),
    "augmix": _timm_preset(AUGMIX_POLICY),
}
assert tuple(PRESETS) == AUGMENT_PRESETS, "pipeline.nn.models.AUGMENT_PRESETS lists the presets for config loading"


# --- explicit lists (albumentations' serialisation) ---------------------------------------------------

PIPELINE_END = ("Normalize", "ToTensorV2")  # appended to every pipeline with the model's mean and std
_NOT_TRANSFORMS = {"BasicTransform", "DualTransform", "ImageOnlyTransform", "Transform3D", "MaxSizeTransform",
                   "ReplayCompose"}


@lru_cache(maxsize=1)
def transform_classes() -> dict[str, type]:
    """Albumentations' serialisable 2-D transforms and compositions, by class name."""
    out = {}
    for name, cls in SERIALIZABLE_REGISTRY.items():
        if not isinstance(cls, type) or name.startswith(("Base", "_")) or name in _NOT_TRANSFORMS:
            continue
        if issubclass(cls, A.BaseCompose) or (issubclass(cls, A.BasicTransform)
                                              and not issubclass(cls, A.Transform3D)):
            out[name] = cls
    return out


def _init_params(cls: type) -> dict[str, inspect.Parameter]:
    params = inspect.signature(cls.__init__).parameters
    return {k: v for k, v in params.items()
            if k != "self" and v.kind not in (inspect.Parameter.VAR_KEYWORD, inspect.Parameter.VAR_POSITIONAL)}


def _inherited_params(cls: type) -> set[str]:
    """Parameters of the parents' __init__ that `cls` does not take: albumentations' to_dict writes them
    (PadIfNeeded's padding, SafeRotate's shear, ...) and its from_dict ignores them with a warning."""
    names = set()
    for parent in cls.__mro__[1:]:
        if "__init__" in parent.__dict__ and parent is not object:
            names |= set(_init_params(parent))
    return names - set(_init_params(cls))


def _class_of(item: dict[str, Any], where: str, path: str) -> tuple[str, type, dict[str, Any]]:
    """(class name, class, the other keys) of a list item written with `name` or `__class_fullname__`."""
    params = dict(item)
    name, full = params.pop("name", None), params.pop("__class_fullname__", None)
    if name is not None and full is not None:
        raise ConfigError(f"key '{where}': give `name` or `__class_fullname__`, not both")
    serialised = full is not None
    name = shorten_class_name(str(name if name is not None else full)) if (name or full) is not None else None
    if name in PIPELINE_END:
        raise ConfigError(f"key '{where}': {name} is left out of augment lists: Normalize (with the model's "
                          "mean and std) and ToTensorV2 end every pipeline already")
    classes = transform_classes()
    if name not in classes:
        close = difflib.get_close_matches(str(name), list(classes), n=3)
        raise ConfigError(f"key '{where}'" + (f" (in {path})" if path else "") + f": unknown albumentations "
                          f"transform {name!r}"
                          + (f" (did you mean {', '.join(close)}?)" if close else "")
                          + "; each item needs name: <an albumentations class>")
    cls = classes[name]
    if serialised:  # as albumentations' to_dict wrote it: drop what its from_dict would ignore
        params = {k: v for k, v in params.items() if k not in _inherited_params(cls)}
    return name, cls, params


def _serialised(item: Any, where: str, path: str) -> tuple[dict[str, Any], Any]:
    """(albumentations' serialised dict, the built transform) of one list item; errors name `where` (the
    key, e.g. augment[1].transforms[0]) and `path` (the classes down to it, e.g. OneOf > Blur)."""
    if not isinstance(item, dict):
        raise ConfigError(f"key '{where}': each item is a mapping {{name: <albumentations class>, ...params}}, "
                          f"got {item!r}")
    name, cls, params = _class_of(item, where, path)
    label = f"{path} > {name}" if path else name
    allowed = _init_params(cls)
    unknown = sorted(set(params) - set(allowed))
    if unknown:  # albumentations itself only warns, and the transform then runs without them
        close = difflib.get_close_matches(unknown[0], list(allowed), n=1)
        raise ConfigError(f"key '{where}' ({label}): unknown parameter(s) {unknown}"
                          + (f" (did you mean {close[0]!r}?)" if close else "") + f"; allowed: {', '.join(allowed)}")
    # from_dict would default a missing p to 0.5, not the class's own (1 for LongestMaxSize, SomeOf, ...)
    if "p" not in params and "p" in allowed and allowed["p"].default is not inspect.Parameter.empty:
        params["p"] = allowed["p"].default
    if "transforms" in params:
        children = params["transforms"]
        if not isinstance(children, list) or not issubclass(cls, A.BaseCompose):
            raise ConfigError(f"key '{where}.transforms' ({label}): a list of transforms, for a composition "
                              "(OneOf, SomeOf, Sequential, ...)")
        params["transforms"] = [_serialised(child, f"{where}.transforms[{j}]", label)[0]
                                for j, child in enumerate(children)]
    spec = {"__class_fullname__": name, **params}
    try:
        built = A.from_dict({"transform": spec})
    except (TypeError, ValueError) as e:
        raise ConfigError(f"key '{where}' ({label}): {_reason(e)}") from None
    return spec, built


def _reason(e: Exception) -> str:
    """A constructor's error in one line; albumentations re-raises pydantic's check of its parameters as a
    ValueError whose cause lists each bad parameter."""
    cause = e.__cause__ if isinstance(e.__cause__, ValidationError) else e
    if isinstance(cause, ValidationError):
        return "; ".join(f"{err['loc'][0] if err['loc'] else 'parameters'}: {err['msg']}" for err in cause.errors())
    return " ".join(str(e).split())[:300]


# Transforms that set an image's size: a list holding one (anywhere, nested) sizes the image itself.
SIZING = {"Resize", "RandomResizedCrop", "RandomSizedCrop", "RandomCrop", "CenterCrop", "Crop", "CropAndPad",
          "LongestMaxSize", "SmallestMaxSize", "PadIfNeeded", "RandomCropFromBorders", "RandomSizedBBoxSafeCrop"}


def sizes_itself(spec: list[Any]) -> bool:
    """Whether an explicit list holds a sizing transform (SIZING), at any depth."""
    for item in spec:
        if not isinstance(item, dict):
            continue
        name = item.get("name", item.get("__class_fullname__"))
        if shorten_class_name(str(name)) in SIZING or sizes_itself(item.get("transforms") or []):
            return True
    return False


def from_list(spec: list[dict[str, Any]], key: str = "augment") -> list:
    """The transforms of an explicit list, built through albumentations' serialisation (see the module
    docstring); items nest through `transforms`."""
    return [_serialised(item, f"{key}[{i}]", "")[1] for i, item in enumerate(spec)]


# --- pipelines ----------------------------------------------------------------------------------------


def build_transform(
    augment: str | list[dict[str, Any]],
    img_size: int | list[int] | tuple[int, int],
    mean: list[float],
    std: list[float],
    interpolation: int = cv2.INTER_LINEAR,
    color: bool = True,
    train: bool = True,
    resize: str = "squash",
) -> A.Compose:
    """The train pipeline for `augment`, or the plain eval pipeline (geometry + normalise) when train=False.
    img_size: an int (square) or [height, width]; resize: squash, pad or crop (see `geometry`)."""
    h, w = size_hw(img_size)
    if not train:
        body = geometry(h, w, resize, interpolation)
    elif isinstance(augment, str):
        if augment not in PRESETS:
            raise ConfigError(
                f"key 'augment': unknown preset {augment!r}; valid presets: {', '.join(PRESETS)} "
                "(or a list of {name: <albumentations transform>, ...})"
            )
        body = PRESETS[augment](h, w, resize, interpolation, color)
    else:
        first = [] if sizes_itself(augment) else geometry(h, w, resize, interpolation)
        body = [*first, *from_list(augment), *geometry(h, w, resize, interpolation)]
    return A.Compose([*body, A.Normalize(mean=mean, std=std, max_pixel_value=255.0), ToTensorV2()])


def _from_data_config(augment, data_config: dict, in_chans: int, train: bool) -> A.Compose:
    d = data_config
    # checkpoints saved before non-square sizes hold an int img_size and no resize: squash, as then
    return build_transform(augment, d["img_size"], d["mean"], d["std"], d["interpolation"], in_chans == 3,
                           train=train, resize=d.get("resize", "squash"))


def train_transform(augment: str | list[dict[str, Any]], data_config: dict, in_chans: int) -> A.Compose:
    """The training pipeline of `augment` for a resolved data config (models.data_config)."""
    return _from_data_config(augment, data_config, in_chans, train=True)


class AugMixViews:
    """AugMix's three views of one training image for its Jensen-Shannon consistency loss (`augmix_jsd`), as
    timm's AugMixDataset (split 3) makes them: the augmix preset's zoom crop and flip, shared, then the clean
    view (normalised as it is) and two independent AugMix draws -> {"image": (3, C, H, W)}. Seeded like a
    Compose (`set_random_seed`), so the loader's per-epoch and per-worker seeds decide every draw."""

    def __init__(self, base: A.Compose, clean: A.Compose, mix: A.Compose):
        self.base, self.clean, self.mix = base, clean, mix

    def __call__(self, *, image):
        import torch

        img = self.base(image=image)["image"]
        views = [self.clean(image=img)["image"], self.mix(image=img)["image"], self.mix(image=img)["image"]]
        return {"image": torch.stack(views)}

    def set_random_seed(self, seed: int | None) -> None:
        self.base.set_random_seed(seed)
        self.mix.set_random_seed(None if seed is None else (seed + 1) % 2**32)  # not the base's draws again


def augmix_views(data_config: dict, in_chans: int) -> AugMixViews:
    """The training transform of `augmix_jsd` (augment: augmix) for a resolved data config: AugMixViews."""
    d = data_config
    h, w = size_hw(d["img_size"])
    end = [A.Normalize(mean=d["mean"], std=d["std"], max_pixel_value=255.0), ToTensorV2()]
    base = _policy_base(h, w, d.get("resize", "squash"), d["interpolation"])
    return AugMixViews(A.Compose(base), A.Compose(end), A.Compose([TimmPolicy(AUGMIX_POLICY), *end]))


def eval_transform(data_config: dict, in_chans: int) -> A.Compose:
    """The evaluation pipeline (geometry + normalise) for a resolved data config (models.data_config), also
    the older ones saved in checkpoints (img_size an int, no resize key: squash)."""
    return _from_data_config("none", data_config, in_chans, train=False)
