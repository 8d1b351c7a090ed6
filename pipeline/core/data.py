"""Reading a competition's tables: train.csv, sample_submission.csv, answers, and the class list.

One reading rule for every CSV the pipeline reads (`read_csv_text`): each cell is the text as written,
nothing is guessed. `01` stays `01`, `NA` and `null` are ids like any other, `True` is not a boolean.
Conversions happen on purpose, where a column's meaning is known (fold numbers, probabilities, 0/1
multilabel columns, ordinal values), and each refuses what it cannot convert, naming the file and rows.

Labels that look like missing values (`NaN`, `NA`, `null`, `None`, blank) or carry leading or trailing
spaces are refused, naming the rows, unless the competition key `classes` lists them as written.
Ordinal values are numbers: `2`, `2.0` and `02` are one class, written `2`.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.core.config import Competition
from pipeline.core.errors import ConfigError, DataError

# pandas' default missing-value markers: as labels they are almost always a hole in the data.
MISSING_TEXT = frozenset({"", "#N/A", "#N/A N/A", "#NA", "-1.#IND", "-1.#QNAN", "-NaN", "-nan", "1.#IND",
                          "1.#QNAN", "<NA>", "N/A", "NA", "NULL", "NaN", "None", "n/a", "nan", "null"})


def read_csv_text(path: str | Path, what: str = "") -> pd.DataFrame:
    """A CSV with every cell as the text it is (no type guessing, no missing-value guessing)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found{what}")
    try:
        return pd.read_csv(path, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: cannot be read as CSV ({e})") from None


def numbers(frame: pd.DataFrame) -> np.ndarray:
    """Text cells as float64 (surrounding spaces ignored); NaN where a cell is not a number."""
    return frame.apply(lambda col: pd.to_numeric(col.astype(str).str.strip(), errors="coerce")).to_numpy(np.float64)


def _read_csv(path: Path, key: str, id_col: str) -> pd.DataFrame:
    df = read_csv_text(path, f" (competition key '{key}')")
    if id_col not in df.columns:
        raise DataError(
            f"{path}: id column '{id_col}' (competition key 'id_col') not found; columns are {list(df.columns)}"
        )
    return df


def examples(values, n: int = 5) -> str:
    """The first n values, comma-separated, and how many more: for error messages."""
    values = list(values)
    more = f" and {len(values) - n} more" if len(values) > n else ""
    return ", ".join(map(str, values[:n])) + more


def lines(mask) -> str:
    """1-based file line numbers (header = line 1) of the rows where mask is true, for error messages."""
    return examples((np.flatnonzero(np.asarray(mask)) + 2).tolist())


def check_data_dir(comp: Competition) -> None:
    if not comp.data_dir.is_dir():
        hint = " (run `make demo` to write the embedded demo)" if comp.generator else ""
        raise DataError(f"{comp.data_dir}: data folder not found (competition key 'data_dir'){hint}")


def check_ids(comp: Competition, path: Path, ids: pd.Series, split: str) -> None:
    """Ids are non-empty and unique, and their image paths stay inside data_dir unless the competition
    allows images outside it."""
    empty = ids.str.strip() == ""
    if empty.any():
        raise DataError(f"{path}: empty id in line(s) {lines(empty)}")
    dup = ids[ids.duplicated(keep=False)].unique()
    if len(dup):
        raise DataError(f"{path}: {len(dup)} duplicate id(s) in column '{comp.id_col}': {examples(dup)}")
    if comp.images_outside_data_dir:
        return
    root = os.path.abspath(comp.data_dir)
    template = comp.template(split)
    paths = [os.path.abspath(comp.image_path(split, i)) for i in ids]
    outside = [i for i, p in zip(ids, paths) if os.path.commonpath([p, root]) != root]
    if outside:
        raise DataError(
            f"{path}: {len(outside)} id(s) point outside data_dir {comp.data_dir} through the path template "
            f"{template!r}: {examples(repr(i) for i in outside)}. Set the competition key "
            "images_outside_data_dir: true if that is intended")
    linked = [str(comp.image_path(split, ids.iloc[k])) for k in linked_outside(paths, root)]
    if linked:
        raise DataError(
            f"{path}: {len(linked)} image(s) under data_dir {comp.data_dir} are symbolic links (or sit in linked "
            f"folders) that lead outside it: {examples(linked)}. Set the competition key "
            "images_outside_data_dir: true if that is intended")


def linked_outside(paths: list[str], root: str) -> list[int]:
    """The indices of the absolute paths under `root` whose real location (symbolic links followed, the
    file's and its folders') is outside root's real location. One lstat per file, one realpath per folder."""
    real_root = os.path.realpath(root)
    folders: dict[str, str] = {}
    out = []
    for k, p in enumerate(paths):
        folder, name = os.path.split(p)
        if folder not in folders:
            folders[folder] = os.path.realpath(folder)
        real = os.path.realpath(p) if os.path.islink(p) else os.path.join(folders[folder], name)
        if os.path.commonpath([real, real_root]) != real_root:
            out.append(k)
    return out


def check_labels(comp: Competition, path: Path, df: pd.DataFrame) -> None:
    """Refuse labels that are holes in the data: missing-value markers, blanks, stray spaces."""
    listed = set(comp.classes or [])
    labels = df[comp.target]
    for bad, why in ((labels.isin(MISSING_TEXT) & ~labels.isin(listed), "look like missing values"),
                     ((labels != labels.str.strip()) & ~labels.isin(listed), "have leading or trailing spaces")):
        if bad.any():
            raise DataError(
                f"{path}: label(s) {examples(sorted(set(map(repr, labels[bad]))))} in column '{comp.target}' "
                f"{why} (line(s) {lines(bad)}); fix them, or list them as written in the competition key "
                "'classes' if they are real classes")


def binary_columns(path: Path, df: pd.DataFrame, cols: list[str]) -> pd.DataFrame:
    """0/1 columns as written ('0', '1') -> integers; anything else is refused naming the column and lines."""
    for col in cols:
        bad = ~df[col].astype(str).isin(["0", "1"])
        if bad.any():
            raise DataError(f"{path}: multilabel column '{col}' must hold 0 or 1, found "
                            f"{examples(sorted(set(map(repr, df[col][bad]))))} in line(s) {lines(bad)}")
    return df.astype({c: int for c in cols})


def read_train(comp: Competition) -> pd.DataFrame:
    """train.csv as text, checked: ids (present, unique, inside data_dir), columns, empty and hollow labels.
    Multilabel columns become 0/1 integers; every other cell stays the text it is."""
    check_data_dir(comp)
    path = comp.train_csv_path
    df = _read_csv(path, "train_csv", comp.id_col)
    wanted = comp.target_cols + ([comp.group_col] if comp.group_col else [])
    missing = [c for c in wanted if c not in df.columns]
    if missing:
        keys = ["target" if c in comp.target_cols else "group_col" for c in missing]
        raise DataError(
            f"{path}: column(s) {missing} (competition key {sorted(set(keys))}) not found; "
            f"columns are {list(df.columns)}"
        )
    if df.empty:
        raise DataError(f"{path}: has no rows")
    ids = df[comp.id_col]
    check_ids(comp, path, ids, "train")
    for col in wanted:
        empty = df[col].str.strip() == ""
        if empty.any():
            raise DataError(f"{path}: empty value in column '{col}' for {empty.sum()} row(s), "
                            f"ids {examples(ids[empty])}")
    return check_targets(comp, path, df)


def check_targets(comp: Competition, path: Path, df: pd.DataFrame) -> pd.DataFrame:
    """The target cells of train.csv or the answers, checked for the task: 0/1 multilabel columns become
    integers, tags must hold labels, regression and ordinal targets must be numbers, labels must not be holes."""
    if comp.task == "multilabel" and not comp.is_tags:
        return binary_columns(path, df, comp.target_cols)
    if comp.is_tags:
        empty = pd.Series([not tags for tags in split_tags(df[comp.target], comp.label_sep)], index=df.index)
        if empty.any():
            raise DataError(f"{path}: column '{comp.target}' holds no label (separator {comp.label_sep!r}, "
                            f"competition key 'label_sep') in line(s) {lines(empty)}")
        return df
    if comp.task in ("regression", "ordinal"):
        values = numbers(df[comp.target_cols])
        bad = ~np.isfinite(values).all(axis=1)
        if bad.any():
            raise DataError(f"{path}: {comp.task} target(s) {comp.target_cols} must be finite numbers; line(s) "
                            f"{lines(bad)} are not ({examples(df.loc[bad, comp.target_cols[0]].unique())})")
        if comp.task == "regression":
            check_regression_range(path, df, comp.target_cols, values)
            return df
    check_labels(comp, path, df)
    return df


FLOAT32_MAX = float(np.finfo(np.float32).max)


def check_regression_range(path: Path, df: pd.DataFrame, cols: list[str], values: np.ndarray) -> None:
    """Regression targets train as float32: a value beyond its range (about 3.4e38), or a column whose
    float32 mean or spread overflows (values far apart near the range's ends), is refused naming the column
    and its lines."""
    fix = "rescale the column (divide it by a constant, or take its log)"
    for c, col in enumerate(cols):
        v = values[:, c]
        beyond = np.abs(v) > FLOAT32_MAX
        if beyond.any():
            raise DataError(f"{path}: regression target column '{col}' holds value(s) beyond the float32 range "
                            f"(|value| <= {FLOAT32_MAX:.4g}) that training uses: "
                            f"{examples(df[col][beyond].unique())} in line(s) {lines(beyond)}; {fix}")
        with np.errstate(over="ignore", invalid="ignore"):
            v32 = v.astype(np.float32)
            scale_ok = np.isfinite(v32.mean()) and np.isfinite(v32.std())
        if not scale_ok:
            largest = np.abs(v) >= np.sort(np.abs(v))[-min(5, len(v))]
            raise DataError(f"{path}: regression target column '{col}' overflows float32 when training scales it "
                            f"(its mean or standard deviation is beyond {FLOAT32_MAX:.4g}); its largest values are "
                            f"{examples(df[col][largest].unique())} in line(s) {lines(largest)}; {fix}")


def constant_targets(comp: Competition, train: pd.DataFrame) -> dict[str, str]:
    """Regression target columns that hold one value in every row -> that value (as written first): a model
    learns nothing from them. Empty for other tasks."""
    if comp.task != "regression" or len(train) < 2:
        return {}
    values = numbers(train[comp.target_cols])
    return {col: train[col].iloc[0] for c, col in enumerate(comp.target_cols) if np.all(values[:, c] == values[0, c])}


def constant_target_warning(comp: Competition, train: pd.DataFrame) -> str | None:
    """One warning line naming the constant regression target columns of train.csv; None when there are none."""
    constant = constant_targets(comp, train)
    if not constant:
        return None
    listing = ", ".join(f"'{col}' (always {value})" for col, value in constant.items())
    return (f"warning: {comp.train_csv_path}: regression target column(s) {listing} hold one value in every row: "
            "a model learns nothing from them (it predicts that value; r2 is undefined)")


def split_tags(values: pd.Series, sep: str) -> list[list[str]]:
    """Each cell's labels: split at `sep`, surrounding spaces and empty pieces dropped, order kept."""
    return [[t.strip() for t in str(v).split(sep) if t.strip()] for v in values]


def read_sample(comp: Competition) -> pd.DataFrame:
    """sample_submission.csv as text; its ids are checked like train.csv's."""
    check_data_dir(comp)
    path = comp.sample_submission_path
    df = _read_csv(path, "sample_submission", comp.id_col)
    check_ids(comp, path, df[comp.id_col], "test")
    return df


def ordinal_text(value) -> str:
    """One way to write an ordinal value: an integer without decimals (2, 2.0, 02 -> '2'), else repr."""
    number = float(value)
    return str(int(number)) if number.is_integer() else repr(number)


def labels_as_text(comp: Competition, values: pd.Series) -> pd.Series:
    """A single-label target column as the class names used everywhere: the text as written, except
    ordinal targets, whose numbers are written one canonical way (see ordinal_text)."""
    if comp.task == "ordinal":
        return pd.Series([ordinal_text(v) for v in values], index=values.index)
    return values.astype(str)


def class_names(comp: Competition, train: pd.DataFrame) -> list[str]:
    """The probability columns, in a stable order: config `classes`, else sorted labels (numeric for ordinal)."""
    if comp.task == "regression" or (comp.task == "multilabel" and not comp.is_tags):
        return list(comp.target_cols)
    if comp.is_tags:
        found = sorted({t for tags in split_tags(train[comp.target], comp.label_sep) for t in tags})
    elif comp.task == "ordinal":
        found = sorted(pd.unique(labels_as_text(comp, train[comp.target])), key=float)
    else:
        found = sorted(pd.unique(labels_as_text(comp, train[comp.target])))
    if comp.classes is not None:
        unknown = sorted(set(found) - set(comp.classes))
        if unknown:
            raise ConfigError(
                f"competition key 'classes' lists {comp.classes} but {comp.train_csv_path} also holds {unknown}"
            )
        return list(comp.classes)
    if comp.task == "binary" and len(found) != 2:
        raise DataError(f"{comp.train_csv_path}: task binary expects 2 classes in '{comp.target}', found {found}")
    return found


def encode_targets(comp: Competition, table: pd.DataFrame, classes: list[str], source: str | Path | None = None
                   ) -> np.ndarray:
    """Integer class index per row (n,), the 0/1 matrix (n, C) for multilabel, the numbers (n, T) for
    regression. A label that is not one of `classes` is an error naming `source` (default: train.csv)."""
    if comp.task == "regression":
        return numbers(table[comp.target_cols]).astype(np.float32)
    if comp.task == "multilabel" and not comp.is_tags:  # check_targets has made these 0/1 integers
        return table[comp.target_cols].to_numpy(dtype=np.float32)
    if comp.is_tags:
        index = {c: i for i, c in enumerate(classes)}
        tags = split_tags(table[comp.target], comp.label_sep)
        unknown = sorted({t for row in tags for t in row} - set(index))
        if unknown:
            raise DataError(f"{source or comp.train_csv_path}: label(s) {examples(unknown)} are not classes "
                            f"{examples(classes, 12)}")
        out = np.zeros((len(tags), len(classes)), dtype=np.float32)
        for r, row in enumerate(tags):
            out[r, [index[t] for t in row]] = 1.0
        return out
    labels = labels_as_text(comp, table[comp.target])
    unknown = sorted(set(labels) - set(classes))
    if unknown:
        raise DataError(f"{source or comp.train_csv_path}: label(s) {examples(unknown)} are not classes "
                        f"{examples(classes, 12)}")
    index = {c: i for i, c in enumerate(classes)}
    return labels.map(index).to_numpy(dtype=np.int64)


def read_extra(comp: Competition, classes: list[str], train_ids: list[str]) -> tuple[list[str], np.ndarray]:
    """The extra labelled rows (competition keys extra_train, extra_images): (ids, targets encoded as
    encode_targets does). Checked like train.csv (columns, ids, empty and hollow labels), and more: every label
    a class of train.csv, no id of train.csv, every image present; each refusal names the file and lines."""
    path = comp.extra_train_path
    df = _read_csv(path, "extra_train", comp.id_col)
    missing = [c for c in comp.target_cols if c not in df.columns]
    if missing:
        raise DataError(f"{path}: target column(s) {missing} (competition key 'target') not found; "
                        f"columns are {list(df.columns)} (competition key 'extra_train')")
    if df.empty:
        raise DataError(f"{path}: has no rows (competition key 'extra_train')")
    ids = df[comp.id_col]
    check_ids(comp, path, ids, "extra")
    taken = ids.isin(set(train_ids))
    if taken.any():
        raise DataError(f"{path}: id(s) {examples(ids[taken])} in line(s) {lines(taken)} are also ids of "
                        f"{comp.train_csv_path}; an extra row needs an id of its own")
    for col in comp.target_cols:
        empty = df[col].str.strip() == ""
        if empty.any():
            raise DataError(f"{path}: empty value in column '{col}' in line(s) {lines(empty)}")
    df = check_targets(comp, path, df)
    unknown = unknown_labels(comp, df, classes)
    if unknown.any():
        raise DataError(f"{path}: label(s) {examples(sorted(set(df[comp.target][unknown])))} in line(s) "
                        f"{lines(unknown)} are not classes of {comp.train_csv_path} ({examples(classes, 12)}); "
                        "fix them, or list every class in the competition key 'classes'")
    absent = np.array([not os.path.isfile(comp.image_path("extra", i)) for i in ids])
    if absent.any():
        raise DataError(f"{path}: {int(absent.sum())} image(s) not found through the template {comp.extra_images!r} "
                        f"(competition key 'extra_images'): "
                        f"{examples(str(comp.image_path('extra', i)) for i in ids[absent])} (line(s) {lines(absent)})")
    return ids.tolist(), encode_targets(comp, df, classes, source=path)


def unknown_labels(comp: Competition, df: pd.DataFrame, classes: list[str]) -> np.ndarray:
    """Rows whose label (or one of its tags) is not one of `classes`; none for 0/1 columns and regression."""
    if comp.task == "regression" or (comp.task == "multilabel" and not comp.is_tags):
        return np.zeros(len(df), dtype=bool)
    known = set(classes)
    if comp.is_tags:
        return np.array([any(t not in known for t in row) for row in split_tags(df[comp.target], comp.label_sep)],
                        dtype=bool)
    return ~labels_as_text(comp, df[comp.target]).isin(known).to_numpy()


def read_answers(comp: Competition, classes: list[str], test_ids: list[str]) -> np.ndarray | None:
    """True test labels from the competition key `answers` (id + target column(s)), encoded like the
    training targets, in test_ids order; None when the competition has no answers."""
    if comp.answers is None:
        return None
    path = Path(comp.answers)
    if not path.is_file():
        print(f"note: answers file {path} (competition key 'answers') not found; no test scores")
        return None
    df = read_csv_text(path, " (competition key 'answers')")
    missing_cols = [c for c in [comp.id_col, *comp.target_cols] if c not in df.columns]
    if missing_cols:
        raise DataError(f"{path}: column(s) {missing_cols} missing (competition key 'answers')")
    df = df.drop_duplicates(comp.id_col).set_index(comp.id_col)
    lacking = pd.Index(test_ids).difference(df.index)
    if len(lacking):
        raise DataError(f"{path}: no answer for {len(lacking)} test id(s): {examples(lacking)}")
    df = check_targets(comp, path, df.loc[test_ids].reset_index())
    return encode_targets(comp, df, classes, source=path)
