"""The rows one fold trains and validates on, and their training targets: one-hot labels, multi-hot tags or
regression values; external labelled rows (competition keys extra_train, extra_images) and pseudo-labelled test
rows (folds/pseudo.csv), both in training only; a teacher's softened probabilities mixed
into a distilled student's targets (folds/distill.parquet); a meta_head model's metadata of those rows, and
the model built on it (`fitted_model`, torch imported there only)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from pipeline.artifacts.duplicates import read_extra_pairs
from pipeline.artifacts.folds import fold_layout, fold_of
from pipeline.artifacts.tables import read_table
from pipeline.core.config import Competition
from pipeline.core.data import (class_names, encode_targets, lines, numbers, read_csv_text, read_extra, read_sample,
                                read_train)
from pipeline.core.errors import ConfigError, DataError
from pipeline.core.meta import MetaEncoding, read_meta, require_meta_cols, rows_meta


@dataclass
class FoldMeta:
    """meta_head: the metadata encoding (exported; pipeline.core.meta) and the coded rows, in the fold's order."""

    encoding: dict
    train: np.ndarray  # (len(train_paths), columns) float32, NaN: missing
    val: np.ndarray  # (len(val_paths), columns)


@dataclass
class FoldData:
    classes: list[str]
    train_paths: list[Path]
    train_targets: np.ndarray  # (n, C) float32: one-hot, multi-hot, soft pseudo-labels, or regression values
    val_ids: list[str]
    val_paths: list[Path]
    val_y: np.ndarray  # class index (n,), multi-hot (n, C) or values (n, T)
    distilled_ids: list[str] = field(default_factory=list)  # training rows whose target mixes in the teacher
    fold_train_rows: int = 0  # the fold's labelled training rows, before `train_fraction` kept some of them
    labelled_rows: int = 0  # the train.csv rows it trains on (train_paths also holds extra and pseudo rows)
    extra_rows: int = 0  # extra_train rows it trains on (in train_paths after the labelled rows, before pseudo)
    extra_left_out: int = 0  # extra rows whose image copies one of this fold's validation images
    meta: FoldMeta | None = None  # meta_head's metadata of the rows

    @property
    def val_meta(self) -> np.ndarray | None:
        return self.meta.val if self.meta is not None else None

    def target_scale(self) -> tuple[np.ndarray, np.ndarray]:
        """Regression: the training targets' mean and std per column (a constant column gets std 1), computed
        in float64 so that large targets cannot overflow them (read_train refuses targets beyond float32)."""
        values = self.train_targets.astype(np.float64)
        mean, std = values.mean(axis=0), values.std(axis=0)
        return mean, np.where(std > 0, std, 1.0)


def one_hot(y: np.ndarray, n_classes: int) -> np.ndarray:
    return np.eye(n_classes, dtype=np.float32)[y]


def read_pseudo(path: str | Path, comp: Competition, classes: list[str]) -> tuple[list[str], np.ndarray]:
    """folds/pseudo.csv: id + one probability column per class (soft), or id + target column (hard)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"key 'pseudo': {path} not found (make pseudo writes folds/pseudo.csv)")
    df = read_csv_text(path)
    if comp.id_col not in df.columns:
        raise DataError(f"{path}: id column '{comp.id_col}' missing; columns are {list(df.columns)}")
    if df.empty:
        raise DataError(f"{path}: holds no pseudo-labelled rows")
    if all(c in df.columns for c in classes):
        values = numbers(df[classes])
        bad = ~np.isfinite(values).all(axis=1)
        if comp.task != "regression":
            bad |= ~((values >= 0) & (values <= 1)).all(axis=1)
        if bad.any():
            what = "finite numbers" if comp.task == "regression" else "probabilities in [0, 1]"
            raise DataError(f"{path}: soft labels must be {what}; line(s) {lines(bad)} are not")
        targets = values.astype(np.float32)
    elif comp.task != "multilabel" and comp.target in df.columns:
        index = {c: i for i, c in enumerate(classes)}
        labels = df[comp.target].astype(str)
        unknown = sorted(set(labels) - set(index))
        if unknown:
            raise DataError(f"{path}: unknown class(es) {unknown}")
        targets = one_hot(labels.map(index).to_numpy(), len(classes))
    else:
        raise DataError(f"{path}: needs columns {[comp.id_col, *classes]} or {[comp.id_col, comp.target]}")
    test_ids = set(read_sample(comp)[comp.id_col])
    stray = sorted(set(df[comp.id_col]) - test_ids)
    if stray:
        raise DataError(f"{path}: {len(stray)} id(s) are not test rows of {comp.sample_submission_path}: {stray[:5]}")
    return df[comp.id_col].tolist(), targets


def soften(p: np.ndarray, task: str, temperature: float) -> np.ndarray:
    """A teacher's probabilities at a temperature: p^(1/T) renormalised (multilabel: sigmoid(logit(p)/T));
    regression values as they are. Computed in log space with the row's largest term taken out first
    (log-sum-exp), so a small T sharpens towards the teacher's top class instead of underflowing to 0/0;
    a target that still is not finite is a ConfigError naming the key `temperature`."""
    if task == "regression" or temperature == 1:
        return p
    from scipy.special import expit

    p = np.clip(p.astype(np.float64), 1e-7, 1 - 1e-7)
    with np.errstate(over="ignore", under="ignore", invalid="ignore", divide="ignore"):
        if task == "multilabel":
            q = expit(np.log(p / (1 - p)) / temperature)
        else:
            z = np.log(p) / temperature
            z = z - z.max(axis=1, keepdims=True)
            q = np.exp(z)
            q = q / q.sum(axis=1, keepdims=True)
    bad = ~np.isfinite(q).all(axis=1)
    if bad.any():
        raise ConfigError(f"key 'temperature': {temperature!r} gives non-finite soft targets for {int(bad.sum())} "
                          "teacher row(s); use a larger temperature (1 leaves the teacher as it is, 2 is usual)")
    return q


def strata(task: str, y: np.ndarray, bins: int = 10) -> np.ndarray:
    """One stratum per row: its class; multilabel: its rarest positive label (-1: none); regression: the decile
    of its first target."""
    if task == "multilabel":
        rarity = np.where(y > 0, y.sum(axis=0)[None, :], np.inf)
        return np.where(np.isfinite(rarity).any(axis=1), rarity.argmin(axis=1), -1)
    if task == "regression":
        first = np.asarray(y, dtype=np.float64).reshape(len(y), -1)[:, 0]
        return np.searchsorted(np.quantile(first, np.linspace(0, 1, bins + 1)[1:-1]), first)
    return np.asarray(y)


def stratified_subset(mask: np.ndarray, keys: np.ndarray, fraction: float, seed: tuple[int, int]) -> np.ndarray:
    """`mask` (the fold's training rows) keeping a seeded `fraction` of each stratum's rows, at least one."""
    if fraction >= 1:
        return mask
    rng = np.random.default_rng(list(seed))
    rows = np.flatnonzero(mask)
    keep = []
    for key in np.unique(keys[rows]):
        group = rows[keys[rows] == key]
        keep.append(rng.permutation(group)[: max(1, round(fraction * len(group)))])
    out = np.zeros_like(mask)
    out[np.concatenate(keep)] = True
    return out


def fitted_model(cfg, n_classes: int, meta: FoldMeta | None):
    """build_model for training: a meta_head model gets its encoding and its numbers' statistics fitted on
    the rows it trains on."""
    from pipeline.nn.models import build_model

    model = build_model(cfg, num_classes=n_classes, meta=meta.encoding if meta is not None else None)
    if meta is not None:
        model.meta_mlp.fit(meta.train)
    return model


def fold_data(comp: Competition, folds_path: str | Path, fold: int, pseudo: str | None,
              distill: tuple[str, float, float] | None = None, train_fraction: float = 1.0,
              seed: int = 0, meta_head: str | None = None) -> FoldData:
    """Training rows (+ pseudo-labelled test rows) and validation rows of one fold. `distill` = (teacher
    table, alpha, temperature): each training row's target becomes alpha x its label + (1 - alpha) x the
    teacher's softened probabilities for it. The teacher table is the blend's OOF, so each row's soft label
    comes from models that never saw that row; validation rows keep their true labels, untouched.
    `train_fraction` < 1 keeps that fraction of the fold's labelled training rows, stratified (`strata`) and
    drawn from (seed, fold); the validation rows are all kept, so the fold's score compares with a full run's.
    The extra table's rows (competition key extra_train) join training, with their own labels (a distilled
    student's teacher covers train.csv's rows only), except those whose image copies one of this fold's
    validation images (folds/extra_duplicates.csv); no validation row is ever one of them. `meta_head` (the
    model config's path, for a model with a metadata head): the rows' metadata too (fold_meta)."""
    train = read_train(comp)
    classes = class_names(comp, train)
    ids = train[comp.id_col]
    layout = fold_layout(folds_path)
    if fold not in layout.folds:
        raise ConfigError(f"fold {fold} not in {folds_path} (folds: {layout.folds}"
                          + (f": {layout.repeats} repeats of {layout.n_folds}" if layout.repeats > 1 else "") + ")")
    repeat, split_fold = layout.split_of(fold) if layout.repeats > 1 else (0, fold)
    fold_index = fold_of(folds_path, comp, ids.tolist(), repeat)
    y = encode_targets(comp, train, classes)
    targets = y if comp.task in ("multilabel", "regression") else one_hot(y, len(classes))
    tr, va = fold_index != split_fold, fold_index == split_fold
    fold_train_rows = int(tr.sum())
    tr = stratified_subset(tr, strata(comp.task, y), train_fraction, (seed, fold))
    train_paths = [comp.image_path("train", i) for i in ids[tr]]
    train_targets = targets[tr]
    distilled = []
    if distill:
        table, alpha, temperature = distill
        if not Path(table).is_file():
            raise ConfigError(f"key 'distill': {table} not found (`make distill STUDENT=<model>` writes folds/distill.parquet)")
        teacher = read_table(table, comp.id_col, classes, ids.tolist(), task=comp.task).loc[ids[tr]].to_numpy()
        train_targets = alpha * train_targets + (1 - alpha) * soften(teacher, comp.task, temperature)
        distilled = ids[tr].tolist()
    extra_ids: list[str] = []
    p_ids: list[str] = []
    extra_left_out = 0
    if comp.extra_train:
        extra_ids, extra_y = read_extra(comp, classes, ids.tolist())
        copies = read_extra_pairs(Path(folds_path))  # an extra copy of a validation image would leak its label
        if copies is not None:
            leaking = set(copies["extra_id"][copies["train_id"].isin(set(ids[va]))])
            keep = np.array([i not in leaking for i in extra_ids], dtype=bool)
            extra_left_out = int((~keep).sum())
            extra_ids, extra_y = [i for i, k in zip(extra_ids, keep) if k], extra_y[keep]
        extra_targets = extra_y if comp.task in ("multilabel", "regression") else one_hot(extra_y, len(classes))
        train_paths += [comp.image_path("extra", i) for i in extra_ids]
        train_targets = np.concatenate([train_targets, extra_targets])
    if pseudo:
        p_ids, p_targets = read_pseudo(pseudo, comp, classes)
        train_paths += [comp.image_path("test", i) for i in p_ids]
        train_targets = np.concatenate([train_targets, p_targets])
    comp.scoring().ready(y[va], len(classes))  # a metric from a file: imported and tried now, not after epoch 1
    return FoldData(classes=classes, train_paths=train_paths, train_targets=train_targets.astype(np.float32),
                    val_ids=ids[va].tolist(), val_paths=[comp.image_path("train", i) for i in ids[va]],
                    val_y=y[va], distilled_ids=distilled, fold_train_rows=fold_train_rows,
                    labelled_rows=int(tr.sum()), extra_rows=len(extra_ids), extra_left_out=extra_left_out,
                    meta=fold_meta(comp, meta_head, ids.tolist(), tr, va, extra_ids, p_ids) if meta_head else None)


def fold_meta(comp: Competition, source: str, ids: list[str], tr: np.ndarray, va: np.ndarray, extra_ids: list[str],
              pseudo_ids: list[str]) -> FoldMeta:
    """meta_head's metadata: the encoding fitted on all of train.csv's values (no labels; train.csv read once),
    then the training rows (train.csv's rows `tr`, the extra table's, the pseudo-labelled test rows') and the
    validation rows `va` coded by it. `source`: the model config, named when the competition has no meta_cols."""
    require_meta_cols(comp, source)
    table = read_meta(comp, "train", ids)
    enc = MetaEncoding.fit(table)
    coded = enc.encode(table).astype(np.float32)
    return FoldMeta(enc.export(), np.concatenate([coded[tr], rows_meta(comp, enc, [], extra_ids, pseudo_ids)]),
                    coded[va])
