"""Typed configuration: YAML files validated by pydantic, with `key=value` overrides.

Every error names the file, the key and what was expected. Unknown keys are errors, never silently
ignored, and a close match is suggested when there is one.
"""

from __future__ import annotations

import difflib
import functools
import hashlib
import json
import re
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml
from pydantic import (BaseModel, ConfigDict, Field, ValidationError, field_validator, model_serializer,
                      model_validator)

from pipeline.core.errors import ConfigError  # noqa: F401  (re-exported: `from pipeline.core.config import ConfigError`)


class StrictModel(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


M = TypeVar("M", bound=BaseModel)
_FLOAT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")

TASKS = ("binary", "multiclass", "multilabel", "ordinal", "regression")
# Competition keys added after projects were built: at these defaults they are left out of the dump.
ADDED_COMPETITION_KEYS: dict[str, Any] = {"dicom_windows": None, "meta_cols": None, "test_csv": None,
                                          "extra_train": None, "extra_images": None, "repeats": 1}
DEFAULT_METRIC = {"regression": "rmse"}  # every other task: accuracy


class Competition(StrictModel):
    """configs/competition.yaml: where the competition's files are and how it is scored."""

    data_dir: Path = Field(description="folder holding the competition files")
    train_csv: str = Field("train.csv", description="training table under data_dir")
    sample_submission: str = Field(
        "sample_submission.csv",
        description="under data_dir; its id column lists the test rows, its header is the submission format",
    )
    id_col: str = Field("image_id", description="id column in train.csv and sample_submission.csv")
    target: str | list[str] = Field(
        description="label column; multilabel: a list of 0/1 columns, or one column of labels separated by "
        "label_sep (tags); regression: one or more number columns"
    )
    task: Literal["binary", "multiclass", "multilabel", "ordinal", "regression"] = "multiclass"
    label_sep: str = Field(" ", min_length=1, description="multilabel tags: the separator between labels in one cell")
    train_images: str = Field("train/{id}.png", description="image path template under data_dir")
    test_images: str = Field("test/{id}.png", description="image path template under data_dir")
    images_outside_data_dir: bool = Field(
        False, description="allow ids whose image path leaves data_dir (e.g. an id '../x'); refused by default"
    )
    group_col: str | None = Field(None, description="rows sharing a group never straddle folds")
    metric: str = Field(
        None, description="a metric name (see pipeline/core/metrics.py; null: accuracy, rmse for regression) or "
        "path/to/file.py:function, your own, with greater_is_better"
    )
    greater_is_better: bool | None = Field(None, description="the direction of a metric from a file (required there)")
    beta: float = Field(2.0, gt=0, description="fbeta's beta (2: F2, as Planet)")
    k: int = Field(5, ge=1, description="map@k's k and the number of labels a topk submission writes")
    n_folds: int = Field(5, ge=2, le=100)
    seed: int = Field(42, ge=0, lt=2**32, description="the fold split's seed")
    repeats: int = Field(
        1, ge=1, le=20, description="repeated CV: R fold splits from seeds seed..seed+R-1 (duplicates and groups "
        "kept together in each); every model trains R x n_folds folds (repeat r's fold k is fold r x n_folds + k), "
        "each row's OOF is the mean over repeats, and cv.md gives the CV per repeat; blends are fitted on the "
        "averaged OOF under the first split's nested CV")
    classes: list[str] | None = Field(
        None, description="class order for probability columns; default: sorted labels of train.csv"
    )
    submission_format: Literal["auto", "labels", "probabilities", "topk"] = Field(
        "auto", description="auto reads it off sample_submission.csv; topk: the k best classes, best first"
    )
    answers: Path | None = Field(
        None, description="optional test answer key (id, target) kept outside data_dir, for a true test score"
    )
    generator: Literal["digits"] | None = Field(
        None, description="write the competition on demand when data_dir is missing (the embedded demo)"
    )
    models_dir: Path = Field(Path("configs/models"), description="folder of model configs that train-all trains")
    bad_images: Literal["fail", "skip"] = Field(
        "fail", description="an image that cannot be decoded stops `folds` (fail), or is named in a warning and "
        "still gets its fold (skip); model configs that do not set their own `bad_images` take this value, so "
        "training and prediction skip it too (up to max_bad_images per run)")
    max_image_pixels: int | None = Field(
        89_478_485, gt=0, description="refuse, before decoding, an image whose header declares more pixels "
        "(a decompression bomb); null: no limit")
    duplicates: Literal["near", "exact", "none"] = Field(
        "near", description="what `folds` keeps in one fold: near (default): exact copies and near-duplicates "
        "(resized or re-compressed copies: 64-bit DCT pHash within 4 bits); exact: identical files (md5) only; "
        "none: no duplicate grouping")
    dicom_windows: list[tuple[float, float]] | None = Field(
        None, description="[[center, width], ...]: a grayscale DICOM slice (rescale slope/intercept applied) "
        "becomes one channel per window, clipped and scaled to 0..255; 1 window (grayscale) or 3 (RGB, "
        "in_chans: 3), e.g. [[40, 80], [80, 200], [600, 2800]]; null: the file's own window")
    extra_train: str | None = Field(
        None, description="external labelled data: a CSV in train.csv's format (id_col and target columns) under "
        "data_dir, or an absolute path; its rows join every fold's training part, never its validation part, "
        "folds.csv or the CV; needs extra_images")
    extra_images: str | None = Field(
        None, description="image path template of extra_train's rows under data_dir, like train_images "
        "(e.g. extra/{id}.jpg)")
    tracking: Literal["none", "mlflow", "wandb"] = Field(
        "none", description="log every fold and ensemble to MLflow (sqlite:///mlruns.db by default) or W&B"
    )
    tracking_uri: str | None = Field(
        None, description="mlflow: the tracking URI (null: MLFLOW_TRACKING_URI, else sqlite:///mlruns.db); "
        "wandb: offline to log without a network"
    )
    code_competition: bool = Field(
        False, description="true: submissions are made by a notebook (`make submit` versions the bundle dataset and "
        "pushes the kernel); false: a CSV upload (`make submit` sends submissions/submission.csv)"
    )
    time_limit_hours: float = Field(
        9.0, gt=0, description="the competition's notebook run-time limit; `make package` warns when the kernel may pass it"
    )
    meta_cols: list[str] | None = Field(
        None, description="per-image metadata columns of train.csv (e.g. age, sex, site) that the lgbm, logreg and "
        "catboost stackers take beside the models' probabilities; numbers as numbers, other text as categories"
    )
    test_csv: str | None = Field(
        None, description="under data_dir: the test table holding id_col and meta_cols (default: "
        "sample_submission when it holds them)"
    )
    blend_budget_minutes: float = Field(
        5.0, gt=0, description="`ensemble --method auto` skips a blend whose (nested) CV is estimated, from the rows, "
        "classes and models, to take longer than this on a 2-core machine, and says so in cv.md"
    )

    @field_validator("train_images", "test_images", "extra_images")
    @classmethod
    def _has_id(cls, v: str | None) -> str | None:
        if v is not None and "{id}" not in v:
            raise ValueError(f"path template must contain '{{id}}', got {v!r}")
        return v

    @field_validator("dicom_windows")
    @classmethod
    def _windows(cls, v):
        if v is None:
            return v
        if len(v) not in (1, 3):
            raise ValueError(f"give 1 window (one grayscale channel) or 3 (one per RGB channel) as [[center, width], "
                             f"...], e.g. [[40, 80], [80, 200], [600, 2800]], not {len(v)}")
        bad = [list(w) for w in v if not w[1] > 0]
        if bad:
            raise ValueError(f"every window's width (its second number) must be > 0, not {bad}")
        return v

    @model_serializer(mode="wrap")
    def _without_added_defaults(self, handler):
        """Keys added after projects were built drop out of the dump at their defaults, so the competition's
        hash (config_hash), and with it every stage's record, stays as it was for a project that does not
        set them."""
        data = handler(self)
        return {k: v for k, v in data.items() if k not in ADDED_COMPETITION_KEYS or v != ADDED_COMPETITION_KEYS[k]}

    @model_validator(mode="before")
    @classmethod
    def _default_metric(cls, data):
        if isinstance(data, dict) and data.get("metric") is None:
            data = {**data, "metric": DEFAULT_METRIC.get(data.get("task"), "accuracy")}
        return data

    @model_validator(mode="after")
    def _task_matches_target(self) -> "Competition":
        if self.task not in ("multilabel", "regression") and isinstance(self.target, list):
            raise ValueError(f"task {self.task} expects target to be one column name, not a list")
        if (self.extra_train is None) != (self.extra_images is None):
            given, lacking = ("extra_train", "extra_images") if self.extra_images is None else ("extra_images",
                                                                                                "extra_train")
            raise ValueError(f"key '{lacking}': required with '{given}' (extra_train: the extra table, e.g. "
                             "extra.csv; extra_images: its image path template, e.g. extra/{id}.jpg)")
        if self.submission_format == "topk" and self.task not in ("binary", "multiclass", "ordinal"):
            raise ValueError(f"submission_format topk needs a single-label task, not {self.task}")
        if self.meta_cols is not None:
            bad = sorted({c for c in self.meta_cols if c == self.id_col or c in self.target_cols})
            dup = sorted({c for c in self.meta_cols if self.meta_cols.count(c) > 1})
            if bad or dup or not self.meta_cols:
                raise ValueError("key 'meta_cols': " + (f"{', '.join(bad)}: the id or target column, not metadata"
                                 if bad else f"{', '.join(dup)} listed twice" if dup else "empty; leave it out"))
        try:
            self.scoring()  # an unknown metric, or one that does not fit the task, fails here
        except ConfigError as e:
            raise ValueError(f"key 'metric': {e}") from None
        return self

    def scoring(self):
        """The competition metric (pipeline.core.metrics.Metric): name, direction, task, and how it scores."""
        return _scoring(self.metric, self.task, self.beta, self.k, self.greater_is_better)

    @property
    def is_tags(self) -> bool:
        """Multilabel targets written as one column of labels separated by label_sep."""
        return self.task == "multilabel" and isinstance(self.target, str)

    # --- derived paths -------------------------------------------------------------------------
    @property
    def target_cols(self) -> list[str]:
        """The target column(s) as written in train.csv."""
        return self.target if isinstance(self.target, list) else [self.target]

    @property
    def train_csv_path(self) -> Path:
        return self.data_dir / self.train_csv

    @property
    def sample_submission_path(self) -> Path:
        return self.data_dir / self.sample_submission

    @property
    def extra_train_path(self) -> Path | None:
        """The extra table (key extra_train): under data_dir, or the absolute path given; None when not set."""
        if self.extra_train is None:
            return None
        path = Path(self.extra_train)
        return path if path.is_absolute() else self.data_dir / path

    def template(self, split: Literal["train", "test", "extra"]) -> str:
        """The image path template of a split: train_images, test_images or extra_images."""
        template = {"train": self.train_images, "test": self.test_images, "extra": self.extra_images}[split]
        if template is None:
            raise ConfigError("key 'extra_images': not set, so the extra rows have no images")
        return template

    def image_path(self, split: Literal["train", "test", "extra"], image_id: str) -> Path:
        return self.data_dir / self.template(split).format(id=image_id)


@functools.lru_cache(maxsize=16)
def _scoring(metric: str, task: str, beta: float, k: int, greater_is_better: bool | None):
    """One Metric per setting (a metric from a file is imported once)."""
    from pipeline.core.metrics import get_metric

    return get_metric(metric, task, beta=beta, k=k, greater_is_better=greater_is_better, base_dir=Path("."))


# --- loading -----------------------------------------------------------------------------------


class _UniqueKeyLoader(yaml.SafeLoader):
    """yaml.safe_load that refuses a key given twice in one mapping (plain YAML keeps the last one)."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(None, None, f"key {key!r} is given twice",
                                                        key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def read_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    try:
        data = yaml.load(path.read_text(), Loader=_UniqueKeyLoader)  # a SafeLoader: no arbitrary objects
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of key: value at the top level, got {type(data).__name__}")
    return data


def parse_overrides(items: list[str] | None, source: str = "command line") -> dict[str, Any]:
    """Turn ["epochs=3", "optimizer.lr=1e-3"] into a nested dict; values are parsed as YAML scalars."""
    out: dict[str, Any] = {}
    for item in items or []:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(f"{source}: override {item!r} must look like key=value")
        try:
            value = yaml.safe_load(raw) if raw.strip() else None
        except yaml.YAMLError:
            value = raw
        if isinstance(value, str) and _FLOAT.fullmatch(value.strip()):
            value = float(value)  # YAML 1.1 reads 1e-3 as a string
        node = out
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"{source}: override {item!r} conflicts with another override of {part!r}")
        node[parts[-1]] = value
    return out


def deep_merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _allowed_keys(model: type[BaseModel], loc: tuple) -> list[str]:
    """Field names of the (possibly nested) model that `loc` points into."""
    current: Any = model
    for part in loc[:-1]:
        if not (isinstance(current, type) and issubclass(current, BaseModel)):
            return []
        field = current.model_fields.get(part)
        if field is None:
            return []
        annotation = field.annotation
        args = getattr(annotation, "__args__", ()) or ()
        candidates = [annotation, *args]
        current = next((c for c in candidates if isinstance(c, type) and issubclass(c, BaseModel)), None)
    if isinstance(current, type) and issubclass(current, BaseModel):
        return list(current.model_fields)
    return []


_TYPE_TAGS = {"int", "float", "bool", "str", "list", "dict", "none"}


def _is_union_branch(part) -> bool:
    """pydantic names each branch of a union in the error location ('constrained-int', "literal['auto']")."""
    return isinstance(part, str) and (part in _TYPE_TAGS or not part.isidentifier())


def format_validation_error(err: ValidationError, source: str, model: type[BaseModel]) -> str:
    lines = [f"{source}: invalid configuration"]
    union: dict[str, list[str]] = {}  # one line per key whose every union branch failed
    for e in err.errors():
        loc = tuple(p for p in e["loc"] if not (isinstance(p, str) and p.startswith("function-")))
        if len(loc) > 1 and _is_union_branch(loc[-1]) and e["type"] not in ("extra_forbidden", "missing"):
            key = ".".join(str(p) for p in loc[:-1])
            got = e.get("input")
            if key not in union:
                union[key] = []
                lines.append((key, f" (got {got!r})" if not isinstance(got, dict) else ""))
            union[key].append(e["msg"].removeprefix("Value error, ").removeprefix("Input should be ").split(",")[0])
            continue
        key = ".".join(str(p) for p in loc) or "(top level)"
        if e["type"] == "extra_forbidden":
            allowed = _allowed_keys(model, loc)
            close = difflib.get_close_matches(str(loc[-1]), allowed, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            lines.append(f"  key '{key}': unknown key{hint}; allowed keys: {', '.join(allowed)}")
        elif e["type"] == "missing":
            lines.append(f"  key '{key}': required but missing")
        elif not loc and e["msg"].startswith("Value error, key '"):  # a model-level check naming its key
            lines.append("  " + e["msg"].removeprefix("Value error, "))
        else:
            msg = e["msg"].removeprefix("Value error, ")
            got = e.get("input")
            got_s = "" if isinstance(got, dict) else f" (got {got!r})"
            lines.append(f"  key '{key}': {msg}{got_s}")
    return "\n".join(line if isinstance(line, str) else
                     f"  key '{line[0]}': should be {' or '.join(union[line[0]])}{line[1]}" for line in lines)


def validate(model: type[M], data: dict[str, Any], source: str) -> M:
    try:
        return model.model_validate(data)
    except ValidationError as e:
        raise ConfigError(format_validation_error(e, source, model)) from None


def load(model: type[M], path: str | Path, overrides: list[str] | None = None) -> M:
    data = deep_merge(read_yaml(path), parse_overrides(overrides, source=f"{path} (command-line override)"))
    source = f"{path}" + (" with overrides " + " ".join(overrides) if overrides else "")
    return validate(model, data, source)


# Model keys whose default is the competition's: load_competition sets them, and a model config that does
# not give the key takes the value of the competition loaded before it in this process.
COMPETITION_DEFAULTS: dict[str, Any] = {"bad_images": "fail"}


def competition_default(key: str) -> Any:
    """The default a model key takes from the competition loaded in this process (see COMPETITION_DEFAULTS)."""
    return COMPETITION_DEFAULTS[key]


def load_competition(path: str | Path, overrides: list[str] | None = None) -> Competition:
    """The competition config; its pixel limit and DICOM windows hold for every image this process reads from
    then on, and its `bad_images` is the default of every model config loaded after it."""
    comp = load(Competition, path, overrides)
    apply_image_settings(comp)
    COMPETITION_DEFAULTS["bad_images"] = comp.bad_images
    return comp


def apply_image_settings(comp: Competition) -> None:
    """What the competition sets for every image this process reads: the pixel limit and the DICOM windows
    (load_competition applies them; so does the Kaggle kernel, from the bundled config)."""
    from pipeline.core.images import set_dicom_windows, set_pixel_limit

    set_pixel_limit(comp.max_image_pixels)
    set_dicom_windows(comp.dicom_windows)


def open_competition(path: str | Path, overrides: list[str] | None = None) -> Competition:
    """load_competition, and write an embedded demo competition (`generator`) when its data_dir is missing."""
    comp = load_competition(path, overrides)
    if comp.generator and not comp.data_dir.exists():
        from pipeline.core.demo import GENERATORS

        print(f"{comp.data_dir} is missing: writing the {comp.generator} demo competition")
        GENERATORS[comp.generator](comp.data_dir)
    return comp


# Keys that change no result (where results are logged, how a submission is sent): left out of the
# competition's hash, so setting them makes nothing stale.
# bad_images decides only whether an unreadable image stops a stage; the model configs that inherit it carry
# it into their own stamps. duplicates changes only folds.csv, whose record holds it: later stages follow
# folds.csv itself. extra_train and extra_images change no fold split: a trained fold's record holds the
# extra table (an input, by md5) and its template (a param), and later stages follow the folds' records.
NEUTRAL_KEYS = frozenset({"tracking", "tracking_uri", "code_competition", "max_image_pixels", "bad_images",
                          "duplicates", "extra_train", "extra_images"})


def config_hash(cfg: BaseModel, exclude: set[str] | frozenset[str] = frozenset()) -> str:
    """A stable hash of a resolved config (its JSON with sorted keys), leaving out the `exclude` keys."""
    blob = json.dumps(cfg.model_dump(mode="json", exclude=set(exclude)), sort_keys=True)
    return hashlib.md5(blob.encode()).hexdigest()
