"""Albumentations pipelines: presets built from what winning write-ups use, or an explicit list.

Every pipeline ends with resize (or a random resized crop), Normalize and ToTensorV2, so presets only
choose the augmentations in between. Unknown preset or transform names are errors that list the
valid ones.
"""

from __future__ import annotations

import difflib
import inspect
from typing import Any, Callable

import albumentations as A
import cv2
from albumentations.pytorch import ToTensorV2

from pipeline.config import ConfigError


def _light(size: int, interp: int, color: bool) -> list:
    return [A.Resize(size, size, interpolation=interp), A.HorizontalFlip(p=0.5)]


def _medium(size: int, interp: int, color: bool) -> list:
    out = [
        A.RandomResizedCrop((size, size), scale=(0.7, 1.0), interpolation=interp, p=1.0),
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


def _heavy(size: int, interp: int, color: bool) -> list:
    out = [
        A.RandomResizedCrop((size, size), scale=(0.5, 1.0), interpolation=interp, p=1.0),
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


def _none(size: int, interp: int, color: bool) -> list:
    return [A.Resize(size, size, interpolation=interp)]


PRESETS: dict[str, Callable[[int, int, bool], list]] = {
    "none": _none,
    "light": _light,
    "medium": _medium,
    "heavy": _heavy,
}


def _from_list(spec: list[dict[str, Any]], size: int, interp: int) -> list:
    valid = sorted(n for n in dir(A) if isinstance(getattr(A, n), type) and issubclass(getattr(A, n), A.BasicTransform))
    out = [A.Resize(size, size, interpolation=interp)]
    for i, item in enumerate(spec):
        params = dict(item)
        name = params.pop("name", None)
        if name not in valid:
            close = difflib.get_close_matches(str(name), valid, n=3)
            raise ConfigError(
                f"key 'augment[{i}]': unknown albumentations transform {name!r}"
                + (f" (did you mean {', '.join(close)}?)" if close else "")
                + "; each item needs name: <an albumentations class>"
            )
        allowed = [k for k in inspect.signature(getattr(A, name).__init__).parameters if k not in ("self", "kwargs")]
        unknown = sorted(set(params) - set(allowed))
        if unknown:  # albumentations itself only warns, and the transform then runs without them
            close = difflib.get_close_matches(unknown[0], allowed, n=1)
            raise ConfigError(f"key 'augment[{i}]' ({name}): unknown parameter(s) {unknown}"
                              + (f" (did you mean {close[0]!r}?)" if close else "") + f"; allowed: {', '.join(allowed)}")
        try:
            out.append(getattr(A, name)(**params))
        except (TypeError, ValueError) as e:
            raise ConfigError(f"key 'augment[{i}]' ({name}): {e}") from None
    return out


def build_transform(
    augment: str | list[dict[str, Any]],
    img_size: int,
    mean: list[float],
    std: list[float],
    interpolation: int = cv2.INTER_LINEAR,
    color: bool = True,
    train: bool = True,
) -> A.Compose:
    """The train pipeline for `augment`, or the plain eval pipeline (resize + normalise) when train=False."""
    if not train:
        body = _none(img_size, interpolation, color)
    elif isinstance(augment, str):
        if augment not in PRESETS:
            raise ConfigError(
                f"key 'augment': unknown preset {augment!r}; valid presets: {', '.join(PRESETS)} "
                "(or a list of {name: <albumentations transform>, ...})"
            )
        body = PRESETS[augment](img_size, interpolation, color)
    else:
        body = _from_list(augment, img_size, interpolation)
    return A.Compose([*body, A.Normalize(mean=mean, std=std, max_pixel_value=255.0), ToTensorV2()])


def eval_transform(data_config: dict, in_chans: int) -> A.Compose:
    """The evaluation pipeline (resize + normalise) for a resolved data config (models.data_config)."""
    d = data_config
    return build_transform("none", d["img_size"], d["mean"], d["std"], d["interpolation"], in_chans == 3, train=False)
