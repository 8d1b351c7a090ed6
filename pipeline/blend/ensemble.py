"""`ensemble`: blend the level-1 tables in stacking/ into submissions/submission.csv and a CV report.

Inputs: `stacking/<model>.oof.parquet` and `stacking/<model>.test.parquet` (or a CSV of your own: id + one probability column per
class, in class order; pipeline.artifacts.tables reads and checks them). A model is any name with both files.

The blends themselves are pipeline.blend.blends' estimators. This stage scores each honestly, picks one,
and writes what it picked:

Honesty: a blend that learns (weights, weights_scipy, lgbm, logreg, and any blend with ordinal
thresholds) is scored by nested CV on the folds of folds.csv: fit on the other folds' OOF rows, predict
the held-out fold; its CV comes from those held-out predictions only. Its test prediction is the mean
of the fold-wise learners' test predictions. Blends that learn nothing are applied to all rows at once.

For metric qwk every blend also gets a `<name>+thr` variant: class thresholds on the expected class
index, fitted under the same nested rule; its prediction is a hard class (one-hot). Its test class is
the fold-averaged expected value cut at the fold-averaged thresholds. For a multilabel metric that
decides at a threshold (f1, fbeta, accuracy, ...) `<name>+thr` tunes one threshold per label, under the
same nested rule, and moves it to 0.5 (blends.LabelThresholded).

`auto` (default) evaluates every blend and picks the best CV (ties: the first in registry order).
Outputs: submission.csv (validated), cv.md and cv.json (every model's and blend's CV), blend.test.parquet
and blend.oof.parquet (the chosen blend's tables), and blend.json: the chosen blend's fitted state, which
`package` ships as it is instead of fitting it again.
"""

from __future__ import annotations

import json
import math
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from sklearn.base import clone
from tqdm import tqdm

from pipeline.blend.base import as_float
from pipeline.blend.blends import (FittedBlend, ThresholdWrapper, blend_output, blend_test_prediction,
                                   candidate_names, make_blend, plan_blend, stack)
from pipeline.blend.meta import features_line, takes_meta
from pipeline.core.meta import check_meta, test_meta, train_meta
from pipeline.core.config import NEUTRAL_KEYS, Competition, config_hash
from pipeline.core.data import read_answers, read_sample
from pipeline.core.errors import DataError
from pipeline.artifacts.folds import competition_identity
from pipeline.artifacts.record import changes, choose, file_md5, read_record, record_path, write_record
from pipeline.core.io import release_memory, write_json, write_text
from pipeline.core.metrics import Metric
from pipeline.artifacts.runs import DISTILL_SUFFIX
from pipeline.artifacts.tables import Level1, find_table, load_level1, read_meta, table_path
from pipeline.train.tune_space import tuned_folds

TEST_PREDICTION_RULE = (
    "blends that learn: mean of the fold-wise learners' test predictions (nested CV); "
    "blends that learn nothing: applied once to the test tables"
)
BLEND_STATE = "blend.json"  # the chosen blend's fitted state, beside submission.csv


class EnsembleError(DataError):
    """The stacking tables cannot be blended; the message says which file and why."""


# --- nested cross-validation -------------------------------------------------------------------


@dataclass
class BlendResult:
    name: str
    learned: bool
    oof: np.ndarray  # (n, C): nested held-out predictions for learned blends
    test: np.ndarray  # (t, C)
    cv: float
    fold_scores: dict[int, float]
    learners: list = field(default_factory=list)
    test_score: float | None = None


def fold_scores(metric: Metric, y: np.ndarray, proba: np.ndarray, fold: np.ndarray) -> dict[int, float]:
    return {int(k): metric.score(y[fold == k], proba[fold == k]) for k in np.unique(fold)}


def permute_rows(X: np.ndarray, order: np.ndarray) -> None:
    """X's rows rearranged in place, X[i] <- X[order[i]] (a permutation), one cycle at a time: only one row
    is ever copied aside, where X[order] would copy all of X."""
    done = order == np.arange(len(order))  # rows that stay
    for start in np.flatnonzero(~done):
        if done[start]:
            continue
        first, i = X[start].copy(), start
        while order[i] != start:
            X[i], done[i] = X[order[i]], True
            i = order[i]
        X[i], done[i] = first, True


@contextmanager
def fold_rows(X: np.ndarray, held: np.ndarray):
    """(X[~held], X[held]) of one fold, each in row order, as views of X instead of copies: X's rows are
    rearranged in place, training rows first (permute_rows), and put back on exit (an error inside included).

    The copies would be all of X once a fold (at 12k rows x 4 models x 1,000 classes, 180 MiB beside the
    tables). The blends see the same values in the same order as with the copies, so their results are
    identical. An X that cannot be written to gets the copies."""
    train, test = np.flatnonzero(~held), np.flatnonzero(held)
    if not X.flags.writeable:
        yield X[train], X[test]
        return
    order = np.concatenate([train, test])
    permute_rows(X, order)
    try:
        yield X[:len(train)], X[len(train):]
    finally:
        permute_rows(X, np.argsort(order))


def nested_cv(estimator, X: np.ndarray, y: np.ndarray, fold: np.ndarray):
    """Fit on the other folds, predict each held-out fold; -> (oof (n, C) probabilities, or (n, T) values for
    a regressor, the fold-wise learners). X's rows are moved about in place while it runs (fold_rows) and
    are as they were when it returns."""
    X, y, fold = as_float(X), np.asarray(y), np.asarray(fold)  # float32 stays float32: no float64 copy of X
    oof, learners = None, []
    for k in np.unique(fold):
        held = fold == k
        with fold_rows(X, held) as (X_train, X_held):
            est = clone(estimator).fit(X_train, y[~held])
            p = blend_output(est, X_held)
        if oof is None:
            oof = np.zeros((len(X), p.shape[1]), dtype=p.dtype)
        oof[held] = p
        learners.append(est)
        del p
    return oof, learners


def evaluate_blend(name: str, estimator, X, y, fold, X_test, metric: Metric) -> BlendResult:
    """Honest CV of one blend: nested for learned blends, one pass over all rows otherwise."""
    learned = bool(getattr(estimator, "learned", False))
    if learned:
        oof, learners = nested_cv(estimator, X, y, fold)
    else:
        est = clone(estimator).fit(X, y)
        oof, learners = blend_output(est, X), [est]
    test = blend_test_prediction(learned, learners, X_test, metric.task)
    return BlendResult(name, learned, oof, test, metric.score(y, oof), fold_scores(metric, y, oof, fold), learners)


SPILL_BYTES = 1 << 24  # score_blends keeps the best blend's outputs over this size in a temporary file


def spill(a: np.ndarray) -> np.ndarray:
    """`a` written to an anonymous temporary file and mapped back (copy-on-write): the same values, which take
    memory again only where they are read. The file goes when the array does. Arrays up to SPILL_BYTES stay
    as they are."""
    if a is None or a.nbytes <= SPILL_BYTES:
        return a
    with tempfile.TemporaryFile() as f:  # the mapping keeps the file until it is dropped
        np.ascontiguousarray(a).tofile(f)
        f.flush()
        return np.memmap(f, dtype=a.dtype, mode="c", shape=a.shape)


class Skipped(str):
    """Why a blend was not scored: its estimated time is over the budget (cv.md and cv.json say so)."""


def _duration(seconds: float) -> str:
    if seconds < 10:
        return f"{seconds:.2g} s"
    if seconds < 90:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:,.0f} min" if seconds < 5400 else f"{seconds / 3600:,.0f} h"


def score_blends(names: list[str], method: str, comp: Competition, n_classes: int, X, y, fold, X_test,
                 y_test, meta: tuple | None = None) -> tuple[list[BlendResult], dict[str, str]]:
    """Every candidate blend scored by (nested) CV, in order -> (results, {name: why it failed or was skipped}).

    A blend whose (nested) CV is estimated (plan_blend) over the competition's `blend_budget_minutes` is
    skipped in `auto`, with the reason (a `Skipped`); one named by --method runs anyway. In `auto` a failing
    blend is reported, not raised. Only the blend the stage will choose (best CV, the first on a tie) keeps
    its oof and test arrays, in a temporary file (spill) while the others are scored; the others' are
    dropped as they are scored: memory holds one blend's outputs.
    `meta` (encoding, train rows, test rows; pipeline.core.meta): the stackers that take metadata get its
    columns after the probabilities."""
    metric, task, seed, budget = comp.scoring(), comp.task, comp.seed, 60.0 * comp.blend_budget_minutes
    n, n_folds = len(y), len(np.unique(fold))
    n_models = X.shape[1] // n_classes
    blends, errors, best = [], {}, None
    for name in tqdm(names, desc="blends", leave=False, disable=None):  # None: off outside a terminal
        est = make_blend(name, task, n_classes, metric, seed)
        Xb, Xb_test = X, X_test
        if meta is not None and takes_meta(name):
            inner = est.estimator if isinstance(est, ThresholdWrapper) else est
            inner.set_params(meta_kinds=tuple(meta[0].kinds))
            Xb, Xb_test = np.hstack([X, meta[1]]), np.hstack([X_test, meta[2]])
        seconds = plan_blend(est, n, n_classes, n_models, n_folds)
        if seconds > budget:
            why = (f"{n:,} rows x {n_classes:,} classes x {n_models} models: est. {_duration(seconds)} > budget "
                   f"{_duration(budget)}")
            if method == "auto":
                errors[name] = Skipped(f"skipped, {why}")
                print(f"note: blend {name} {errors[name]}")
                continue
            print(f"note: blend {name}: {why}; running it as --method names it")
        try:
            b = evaluate_blend(name, est, Xb, y, fold, Xb_test, metric)
        except Exception as e:  # in auto, one failing blend must not sink the others
            if method != "auto":
                raise
            errors[name] = f"{type(e).__name__}: {e}"
            print(f"warning: blend {name} failed: {errors[name]}")
            continue
        if y_test is not None:
            b.test_score = metric.score(y_test, b.test)
        if best is None or metric.is_better(b.cv, best.cv):  # the stage's own choice rule
            if best is not None:
                best.oof = best.test = None
            best = b
            b.oof, b.test = spill(b.oof), spill(b.test)
        else:
            b.oof = b.test = None
        blends.append(b)
        release_memory()  # the blend's temporaries: peak memory stays that of one blend at a time
    if not blends:
        raise EnsembleError("every blend failed or was skipped: "
                            + "; ".join(f"{k}: {v}" for k, v in errors.items()))
    return blends, errors


# --- the stage ---------------------------------------------------------------------------------


def _num(x: float | None) -> float | None:
    return None if x is None or (isinstance(x, float) and math.isnan(x)) else float(x)


def _fmt(x: float | None) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.5f}"


NOT_BLENDED = "model, distilled: not blended"


def blend_inputs(level1: Level1) -> Level1:
    """The models the blends see: all but distilled students, whose OOF learned from the other models' OOF.

    A student distilled from a blend is a copy of it trained on its OOF: beside its teachers it would only
    double-count them, and its OOF, tuned toward theirs, would make the blend's CV look better than its
    test score. The report still shows the student's own CV. Only students left: they are blended."""
    keep = [m for m in level1.models if not m.endswith(DISTILL_SUFFIX)]
    if not keep or len(keep) == len(level1.models):
        return level1
    left = [m for m in level1.models if m not in keep]
    print(f"note: {', '.join(left)}: distilled from a blend of the other models, so scored but not blended "
          "(their OOF learned from the teachers' OOF); `make package STUDENT=` ships one alone")
    return level1.select(keep)


def build_report(comp, level1: Level1, model_rows: list[dict], blends: list[BlendResult], errors: dict[str, str],
                 chosen: str, has_answers: bool, submission: dict, meta_enc=None) -> tuple[str, dict]:
    folds = sorted(int(k) for k in np.unique(level1.fold))
    report = {
        "metric": comp.metric, "greater_is_better": comp.scoring().greater_is_better, "task": comp.task,
        "n_rows": len(level1.train_ids), "n_test": len(level1.test_ids), "n_models": len(model_rows),
        "n_classes": len(level1.classes), "n_folds": len(folds), "classes": level1.classes, "chosen": chosen,
        "test_prediction": TEST_PREDICTION_RULE,
        "models": {r["name"]: {"cv": _num(r["cv"]), "folds": {str(k): _num(v) for k, v in r["folds"].items()},
                               "test": _num(r.get("test")), "blended": r["blended"]} for r in model_rows},
        "blends": {}, **submission,
    }
    for b in blends:
        entry = {"cv": _num(b.cv), "nested": b.learned, "folds": {str(k): _num(v) for k, v in b.fold_scores.items()},
                 "test": _num(b.test_score)}
        weights = [est.weights_ for est in b.learners if hasattr(est, "weights_")]
        if weights:
            entry["weights"] = dict(zip(level1.models, np.round(np.mean(weights, axis=0), 4).tolist()))
        report["blends"][b.name] = entry
    for name, err in errors.items():
        report["blends"][name] = {"cv": None, "skipped" if isinstance(err, Skipped) else "error": str(err)}

    arrow = "higher" if comp.scoring().greater_is_better else "lower"
    repeats = max((len(r.get("repeats") or []) for r in model_rows), default=0)  # repeated CV's models
    head = (["", "name", "kind", f"CV {comp.metric}"] + [f"fold {k}" for k in folds]
            + [f"repeat {q}" for q in range(repeats)] + (["test"] if has_answers else []))
    lines = [
        "# CV report", "",
        f"{len(level1.train_ids)} rows, {len(level1.test_ids)} test rows, {len(model_rows)} models"
        + (f" ({len(level1.models)} blended)" if len(level1.models) < len(model_rows) else "") + ", "
        f"{len(level1.classes)} classes, {len(folds)} folds; task {comp.task}, metric {comp.metric} ({arrow} is better).",
        "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head),
    ]

    def row(mark, name, kind, cv, per_fold, test, per_repeat=None):
        cells = [mark, name, kind, _fmt(cv)] + [_fmt(per_fold.get(k)) for k in folds]
        cells += [_fmt(v) for v in (per_repeat or [])] + [""] * (repeats - len(per_repeat or []))
        return "| " + " | ".join(cells + ([_fmt(test)] if has_answers else [])) + " |"

    tuned = {r["name"]: on for r in model_rows if (on := tuned_folds(comp.models_dir, r["name"])) is not None}
    for r in model_rows:
        kind = "model" if r["blended"] else NOT_BLENDED
        kind += ", tuned: CV optimistic (see below)" if r["name"] in tuned else ""
        lines.append(row("", r["name"], kind, r["cv"], r["folds"], r.get("test"), r.get("repeats")))
        if r.get("repeats"):
            report["models"][r["name"]]["repeats"] = [_num(v) for v in r["repeats"]]
    for b in blends:
        lines.append(row("**chosen**" if b.name == chosen else "", b.name, "blend, nested CV" if b.learned else "blend",
                         b.cv, b.fold_scores, b.test_score))
    for name, err in errors.items():
        lines.append(row("", name, str(err)[:120] if isinstance(err, Skipped) else f"failed: {err}"[:80], None, {},
                         None))
    for name, on in tuned.items():  # make tune picked its settings on these folds' validation rows
        report["models"][name]["tuned_on_folds"] = on
        lines += ["", f"{name}: tuned on fold {', '.join(map(str, on))}'s validation rows: its CV is optimistic "
                  "(`make tune` picked its settings on them); judge it by the other folds or a test score."]
    if repeats:
        lines += ["", f"Repeated CV ({repeats} repeats of {len(folds)} folds): a model's CV scores each row's mean "
                  "over the repeats' held-out predictions, and `repeat r` the OOF of repeat r alone (the spread "
                  "is the split's noise). The mean of R predictions is a small ensemble, so the CV can sit above every "
                  "repeat's own; compare models run with the same repeats. The fold columns and the blends' nested "
                  "CV use repeat 0's folds."]
    stackers = [features_line(b.name, len(level1.models), meta_enc) for b in blends if takes_meta(b.name)]
    if stackers:  # what each stacker took (competition key meta_cols: pipeline.blend.meta)
        report["stacker_features"] = stackers
        lines += ["", "Stacker features:", *[f"- {line}" for line in stackers]]
    lines += ["", f"Test prediction: {TEST_PREDICTION_RULE}.",
              f"Submission: {submission.get('submission')} ({submission.get('format')}); "
              f"archived as {submission.get('history')}.", ""]
    return "\n".join(lines), report


def track(comp: Competition, report: dict, files: list[Path]) -> None:
    """The CV table as a tracking run (competition key `tracking`): every model's and blend's CV."""
    from pipeline.core.tracking import competition_tracker

    tracker = competition_tracker(comp, "ensemble", {"chosen": report["chosen"], "metric": comp.metric},
                                  {"stage": "ensemble"})
    cvs = {f"cv/{name}": v["cv"] for part in ("models", "blends") for name, v in report[part].items()
           if v.get("cv") is not None}
    tracker.log_metrics({**cvs, "cv/chosen": report["blends"][report["chosen"]]["cv"]}, 0)
    tracker.log_artifacts(files)
    tracker.end()


def ensemble_inputs(comp: Competition, stacking: str | Path, folds_path: str | Path) -> list[Path]:
    """The files a blend depends on: folds.csv, the train, sample and answers tables, and every file in
    stacking/ (tables, sidecars and predict's records: a new or removed model changes the blend)."""
    stacking = Path(stacking)
    files = sorted(p for p in stacking.iterdir() if p.is_file()) if stacking.is_dir() else []
    answers = [Path(comp.answers)] if comp.answers is not None and Path(comp.answers).is_file() else []
    answers += [comp.data_dir / comp.test_csv] if comp.meta_cols and comp.test_csv else []  # the test metadata
    return [p for p in [Path(folds_path), comp.train_csv_path, comp.sample_submission_path, *answers, *files]
            if p.is_file()]


OUTPUTS = ("submission.csv", "blend.test.parquet", "blend.oof.parquet", "blend.test.json", "blend.oof.json", BLEND_STATE,
           "cv.md", "cv.json")


def check_provenance(comp: Competition, stacking: str | Path, runs: str | Path, folds_path: str | Path) -> None:
    """Tables that `predict` made from runs/ must still describe those runs: the run's config file is
    there and unchanged (with the overrides its folds were trained with), and its folds' done.json and the
    tables are the ones predict's record holds (no checkpoint is read). Tables of your own (no record) and
    runs not on this machine pass."""
    from pipeline.artifacts.record import changed_files, read_record, record_path
    from pipeline.artifacts.runs import fold_runs
    from pipeline.artifacts.tables import find_models
    from pipeline.core.data import class_names, read_train
    from pipeline.artifacts.folds import fold_numbers

    stacking, classes, folds = Path(stacking), None, None
    for name in find_models(stacking)[0]:
        record = read_record(record_path(stacking, name))
        if record is None or record.stage != "predict":
            continue
        run = record.params.get("model", name)
        if not (Path(runs) / run).is_dir():
            print(f"note: {stacking / name}.* tables: made by predict from {runs}/{run}, which is not here; not checked")
            continue
        if classes is None:  # read once, and only when some table needs checking
            classes, folds = class_names(comp, read_train(comp)), fold_numbers(folds_path)
        try:
            fold_runs(comp, run, folds, runs, folds_path, classes)
        except DataError as e:
            raise EnsembleError(f"{stacking / name}.oof and .test tables were made from {runs}/{run}, which is not "
                                f"current any more: {e}") from None
        changed = changed_files(record_path(stacking, name))
        if changed:
            raise EnsembleError(f"{stacking / name}.oof and .test tables: made by predict from other runs or files "
                                f"than are here now ({'; '.join(changed[:3])}); run `make predict`")


def level1_md5(stacking: str | Path, models: list[str]) -> dict[str, str]:
    """md5 of every stacking table a blend was fitted on (its OOF and test tables)."""
    stacking = Path(stacking)
    return {path.name: file_md5(path) for m in models for part in ("oof", "test")
            for path in [find_table(stacking, f"{m}.{part}")]}


def write_blend_state(path: Path, blend: FittedBlend, level1: Level1, stacking: str | Path, cv: float) -> None:
    """The chosen blend's fitted state as JSON, stamped with the models, classes and tables it was fitted on."""
    write_json(path, {**blend.export(), "models": level1.models, "classes": level1.classes, "cv": _num(cv),
                      "tables": level1_md5(stacking, level1.models)})


def read_blend_state(path: str | Path, stacking: str | Path) -> tuple[FittedBlend, dict]:
    """(the fitted blend, its JSON) from `write_blend_state`; refused when a stacking table it was fitted
    on has changed since."""
    path = Path(path)
    if not path.is_file():
        raise EnsembleError(f"{path}: not found; run `make ensemble` (it saves the chosen blend there)")
    data = json.loads(path.read_text())
    stacking = Path(stacking)
    changed = sorted(name for name, md5 in data["tables"].items()
                     if not (stacking / name).is_file() or file_md5(stacking / name) != md5)
    if changed:
        raise EnsembleError(f"{path}: {len(changed)} stacking table(s) changed or missing since the blend was "
                            f"fitted ({', '.join(changed[:4])}); rerun `make ensemble`")
    return FittedBlend.from_export(data), data


def run_ensemble(comp: Competition, method: str | None = None, stacking: str | Path = "stacking",
                 folds_path: str | Path = "folds/folds.csv", out: str | Path = "submissions",
                 force: bool = False, runs: str | Path = "runs") -> dict:
    """The stage: blend, score honestly, pick, validate and write the submission and cv.md/cv.json.

    `method` None: the one given before (recorded in out/ensemble.record.json), else auto. Tables made by
    `predict` are first checked against their runs (check_provenance). When the record holds the same
    method, competition config and input files, and the outputs are the files it wrote, nothing is redone
    (no new history file); `force` reruns."""
    from pipeline.blend.submission import archive_submission, infer_format, make_submission, write_submission
    from pipeline.artifacts.tables import write_table

    out = Path(out)
    record = record_path(out, "ensemble")
    method = choose(record, "method", method, "auto", "METHOD")
    metric = comp.scoring()
    names = candidate_names(method, metric)
    check_provenance(comp, stacking, runs, folds_path)
    params = {"method": method, "competition": config_hash(comp, NEUTRAL_KEYS)}
    inputs = ensemble_inputs(comp, stacking, folds_path)
    reasons = changes(record, params, inputs)
    if not force and not reasons:
        previous = json.loads((out / "cv.json").read_text())
        print(f"{out / 'submission.csv'}: inputs unchanged since the last ensemble (chosen: "
              f"{previous.get('chosen')}); skipping. `--force` (make ensemble FORCE=1) reruns it")
        return previous
    if read_record(record) is not None and not force:
        print(f"ensemble: rerunning ({'; '.join(reasons[:3])}{'; ...' if len(reasons) > 3 else ''})")
    everything = load_level1(comp, stacking, folds_path)
    level1 = blend_inputs(everything)
    task, C = comp.task, len(level1.classes)
    sample = read_sample(comp)
    fmt = infer_format(comp, sample, level1.classes)  # fail on a bad sample before any work
    y_test = read_answers(comp, level1.classes, level1.test_ids)
    X, X_test, y, fold = stack(level1.oof), stack(level1.test), level1.y, level1.fold
    metadata = None
    if comp.meta_cols:  # per-image metadata for the stackers; the encoding from train.csv only
        check_meta(comp)
        enc, M = train_meta(comp, level1.train_ids)
        metadata = (enc, M, test_meta(comp, enc, level1.test_ids))

    model_rows = []
    for m, name in enumerate(everything.models):
        r = {"name": name, "cv": metric.score(y, everything.oof[m]),
             "folds": fold_scores(metric, y, everything.oof[m], fold), "blended": name in level1.models,
             "repeats": read_meta(find_table(stacking, f"{name}.oof")).get("per_repeat")}  # repeated CV
        if y_test is not None:
            r["test"] = metric.score(y_test, everything.test[m])
        model_rows.append(r)

    blends, errors = score_blends(names, method, comp, C, X, y, fold, X_test, y_test, metadata)

    best = None
    for b in blends:
        if best is None or metric.is_better(b.cv, best.cv):
            best = b
    df = make_submission(fmt, sample, level1.classes, level1.test_ids, best.test)
    path = write_submission(out / "submission.csv", df, fmt, sample, level1.classes, task)
    history = archive_submission(path, out / "history", best.name, best.cv)
    meta = {"method": best.name, "cv": _num(best.cv), "metric": comp.metric, "folds_md5": file_md5(folds_path),
            "competition": competition_identity(comp, level1.train_ids)}
    blend_table = write_table(table_path(out, "blend.test"), level1.test_ids, best.test, level1.classes, comp.id_col,
                              meta={**meta, "models": level1.models})
    write_table(table_path(out, "blend.oof"), level1.train_ids, best.oof, level1.classes, comp.id_col,  # for `make report`
                meta=meta)
    best_meta = metadata[0].export() if metadata is not None and takes_meta(best.name) else None
    write_blend_state(out / BLEND_STATE, FittedBlend(best.name, best.learned, best.learners, best_meta), level1,
                      stacking, best.cv)
    submission = {"submission": str(path), "history": str(history), "format": fmt.kind,
                  "blend_test_table": str(blend_table), "submission_test": _num(best.test_score)}
    text, report = build_report(comp, level1, model_rows, blends, errors, best.name, y_test is not None, submission,
                                metadata[0] if metadata is not None else None)
    write_text(out / "cv.md", text)
    write_json(out / "cv.json", report)
    write_record(record, "ensemble", params, inputs, [out / name for name in OUTPUTS],
                 choices={"method": method} if method != "auto" else None)
    track(comp, report, [out / "cv.md", out / "cv.json", path])
    print(text)
    print(f"chosen: {best.name} (CV {_fmt(best.cv)}"
          + (f", test {_fmt(best.test_score)}" if y_test is not None else "") + f") -> wrote {path}")
    return report
