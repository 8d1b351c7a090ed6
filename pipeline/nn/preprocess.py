"""Domain preprocessing (`preprocess:` model key): steps run on each image as read, before augmentation.

Every image a model sees goes through them, in order: training, validation, TTA, prediction, the report's
previews and the Kaggle kernel, because they all read images through pipeline.nn.loader (ImageDataset,
ImageCache; the RAM cache holds preprocessed images, so a cached run preprocesses each image once).

The steps travel in the data config (`data_config["preprocess"]`, saved in best.pt): a built-in by its
name, a custom `file.py:function` with the file's source text, so the kernel, which has no config folder,
runs the same code. A step takes and returns an image as read: HxW uint8 (in_chans 1) or HxWx3 uint8 RGB.

Built-ins:
  ben_graham   4*img - 4*GaussianBlur(img, sigma=shorter side/30) + 128 (Kaggle diabetic retinopathy)
  circle_crop  crop to the bounding box of the non-dark area, then black out what lies outside its
               inscribed circle (retina, dermoscopy)
  clahe        OpenCV CLAHE (clip 2, 8x8 tiles) on the L channel of LAB, or on a grey image
  trim         crop uniform borders: rows and columns whose pixels all lie within a tolerance of the
               top-left pixel's colour
"""

from __future__ import annotations

import ast
import difflib
import hashlib
import re
import sys
import types
from pathlib import Path
from typing import Callable

import numpy as np

from pipeline.core.errors import ConfigError, DataError

DARK = 7  # circle_crop: grey levels at or below this are the dark surround
TRIM_TOL = 10  # trim: a pixel within this of the border colour (every channel) is border


def ben_graham(img: np.ndarray) -> np.ndarray:
    import cv2

    sigma = max(min(img.shape[:2]) / 30, 0.5)
    return cv2.addWeighted(img, 4, cv2.GaussianBlur(img, (0, 0), sigma), -4, 128)


def _crop_to(img: np.ndarray, keep: np.ndarray) -> np.ndarray:
    """`img` cropped to the bounding box of the True pixels of `keep` (unchanged when there are none)."""
    rows, cols = np.flatnonzero(keep.any(axis=1)), np.flatnonzero(keep.any(axis=0))
    if not len(rows) or not len(cols):
        return img
    return img[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]


def _grey(img: np.ndarray) -> np.ndarray:
    import cv2

    return img if img.ndim == 2 else cv2.cvtColor(img, cv2.COLOR_RGB2GRAY)


def circle_crop(img: np.ndarray) -> np.ndarray:
    import cv2

    img = _crop_to(img, _grey(img) > DARK)
    h, w = img.shape[:2]
    mask = np.zeros((h, w), np.uint8)
    cv2.circle(mask, (w // 2, h // 2), min(h, w) // 2, 1, thickness=-1)
    return np.ascontiguousarray(img * (mask if img.ndim == 2 else mask[..., None]))


def clahe(img: np.ndarray) -> np.ndarray:
    import cv2

    op = cv2.createCLAHE(clipLimit=2.0, tileGridSize=(8, 8))
    if img.ndim == 2:
        return op.apply(img)
    lab = cv2.cvtColor(img, cv2.COLOR_RGB2LAB)
    lab[..., 0] = op.apply(np.ascontiguousarray(lab[..., 0]))
    return cv2.cvtColor(lab, cv2.COLOR_LAB2RGB)


def trim(img: np.ndarray) -> np.ndarray:
    diff = np.abs(img.astype(np.int16) - img[0, 0].astype(np.int16))
    return np.ascontiguousarray(_crop_to(img, (diff if diff.ndim == 2 else diff.max(axis=2)) > TRIM_TOL))


BUILTINS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "ben_graham": ben_graham, "circle_crop": circle_crop, "clahe": clahe, "trim": trim}
CUSTOM = re.compile(r"^(?P<file>.+\.py):(?P<function>[A-Za-z_][A-Za-z0-9_]*)$")


def check_name(step: str) -> str:
    """A `preprocess` entry is a built-in's name or `file.py:function`; ValueError (listing the built-ins)
    otherwise. Used by ModelConfig's validator."""
    if step in BUILTINS or CUSTOM.match(step):
        return step
    close = difflib.get_close_matches(step, list(BUILTINS), n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    raise ValueError(f"unknown preprocess step {step!r}{hint}; built-ins: {', '.join(BUILTINS)}, or "
                     "'path/to/file.py:function' (relative to the model config's folder)")


def custom_file(step: str, config_dir: Path) -> tuple[Path, str]:
    m = CUSTOM.match(step)
    assert m is not None
    return config_dir / m["file"], m["function"]


def check_files(steps: list[str], config_dir: Path, source: str) -> None:
    """At config load: each custom step's file exists and binds its function at the top level (read, not
    run). ConfigError naming the config, the file and the function otherwise."""
    for step in steps:
        if step in BUILTINS:
            continue
        file, function = custom_file(step, config_dir)
        if not file.is_file():
            raise ConfigError(f"{source}: key 'preprocess': {step!r}: file {file} not found (paths are relative to "
                              f"the model config's folder {config_dir})")
        try:
            tree = ast.parse(file.read_bytes(), filename=str(file))
        except (SyntaxError, ValueError) as e:
            raise ConfigError(f"{source}: key 'preprocess': {step!r}: cannot read {file}: {type(e).__name__}: "
                              f"{e}") from None
        names = {n.name for n in tree.body if isinstance(n, (ast.FunctionDef, ast.ClassDef))}
        names |= {a.asname or a.name for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom))
                  for a in n.names}
        names |= {t.id for n in tree.body if isinstance(n, ast.Assign) for t in n.targets if isinstance(t, ast.Name)}
        if function not in names and "*" not in names:
            raise ConfigError(f"{source}: key 'preprocess': {file} has no function {function!r} "
                              f"(its top-level names: {', '.join(sorted(names)) or 'none'})")


def describe(steps: list[str], config_dir: Path) -> list:
    """The steps as the data config carries them: a built-in's name; a custom step as {step, file, source}."""
    out: list = []
    for step in steps:
        if step in BUILTINS:
            out.append(step)
            continue
        file, _ = custom_file(step, config_dir)
        try:
            text = file.read_text()
        except OSError as e:
            raise ConfigError(f"key 'preprocess': {step!r}: cannot read {file}: {e}") from None
        out.append({"step": step, "file": str(file), "source": text})
    return out


def _load_custom(entry: dict) -> Callable[[np.ndarray], np.ndarray]:
    file, function = entry["file"], CUSTOM.match(entry["step"])["function"]
    digest = hashlib.sha1(entry["source"].encode()).hexdigest()[:10]
    module = types.ModuleType(f"_kfold_preprocess_{re.sub(r'[^0-9A-Za-z_]', '_', Path(file).stem)}_{digest}")
    module.__file__ = file
    sys.modules[module.__name__] = module
    try:
        exec(compile(entry["source"], file, "exec"), module.__dict__)  # noqa: S102 - the user's own preprocess file
    except (Exception, SystemExit) as e:
        raise ConfigError(f"preprocess {entry['step']!r}: cannot import {file} (for function {function!r}): "
                          f"{type(e).__name__}: {e}") from None
    fn = getattr(module, function, None)
    if not callable(fn):
        raise ConfigError(f"preprocess {entry['step']!r}: {file} has no function {function!r}")
    return fn


def check_output(out, img: np.ndarray, name: str) -> np.ndarray:
    """A step's result must be an image like its input: uint8, the same number of channels, non-empty."""
    ok = isinstance(out, np.ndarray) and out.dtype == np.uint8 and out.size > 0
    if ok and img.ndim == 2 and out.ndim == 3 and out.shape[2] == 1:
        out = out[..., 0]
    if not ok or out.ndim != img.ndim or (img.ndim == 3 and out.shape[2] != img.shape[2]):
        got = (f"{out.dtype} array of shape {out.shape}" if isinstance(out, np.ndarray) else type(out).__name__)
        want = "HxW (in_chans 1)" if img.ndim == 2 else f"HxWx{img.shape[2]}"
        raise DataError(f"preprocess {name}: returned a {got} for a uint8 image of shape {img.shape}; it must "
                        f"return a {want} uint8 numpy array")
    return np.ascontiguousarray(out)


class Preprocess:
    """The steps of a data config's `preprocess`, callable on an image; picklable (DataLoader workers): the
    custom functions are loaded again where it is unpickled."""

    def __init__(self, spec: list | None):
        self.spec = list(spec or [])
        self._fns: list | None = None

    def key(self) -> tuple:
        return tuple(s if isinstance(s, str) else (s["step"], s["source"]) for s in self.spec)

    def digest(self) -> str:
        return hashlib.sha1(repr(self.key()).encode()).hexdigest()

    def __bool__(self) -> bool:
        return bool(self.spec)

    def __getstate__(self):
        return {"spec": self.spec, "_fns": None}

    def steps(self) -> list:
        if self._fns is None:
            self._fns = [(s, BUILTINS[s]) if isinstance(s, str) else
                         (f"{s['step']!r} ({s['file']}, function {CUSTOM.match(s['step'])['function']!r})",
                          _load_custom(s)) for s in self.spec]
        return self._fns

    def __call__(self, img: np.ndarray, path: str | Path = "an image") -> np.ndarray:
        for name, fn in self.steps():
            try:
                out = fn(img)
            except Exception as e:  # noqa: BLE001 - a custom step may raise anything; name the step and image
                raise DataError(f"preprocess {name} failed on {path}: {type(e).__name__}: {e}") from e
            img = check_output(out, img, name)
        return img
