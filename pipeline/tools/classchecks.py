"""The report's per-class checks: ROC and precision-recall curves (OOF), and the predicted test class shares.

**ROC and PR** (`roc_pr_section`): binary, the positive class; multilabel, every label; multiclass and
ordinal, one-vs-rest for every class, plus two averages:
- micro: every (row, class) cell pooled into one binary problem (at most MICRO_MAX_CELLS cells: beyond, a
  fixed random sample of rows, and the table says so);
- macro: the mean of the per-class curves (TPR on a common FPR grid; on a common recall grid the
  interpolated precision, the best precision at that recall or more); its AUC and AP are the means of the
  per-class ones, over the classes with both outcomes.
The figures draw the MAX_CLASS_CURVES classes with the most positive rows (and the averages); `roc_pr.csv`
and the table list every class.

**Class shares** (`shares_section`): the share of test rows the chosen blend predicts as each class
(argmax; multilabel: the label at >= 0.5) beside that class's share of the training rows. A class is
flagged, and the report prints one warning line naming the flagged classes, when all three hold:
- it has at least SHARE_MIN_ROWS (10) training rows;
- its predicted share is over SHARE_RATIO (2) times its training share or under 1/SHARE_RATIO of it, or
  the two are more than SHARE_POINTS (10 percentage points) apart;
- the difference is more than SHARE_SIGMAS (3) standard errors of a test set of that size drawn with the
  training share s (sqrt(s (1 - s) / n_test)), so that a small test set's chance wobble is not flagged.
A flag is a prompt to look (a shifted test set, a blend that never predicts a class), not an error.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.core.io import write_csv
from pipeline.tools.figures import md_table, pyplot, save_fig

MAX_CLASS_CURVES = 10  # per-class curves drawn (the table lists every class)
MICRO_MAX_CELLS = 10_000_000  # (row, class) cells the micro average pools at most
MICRO, MACRO = "(micro average)", "(macro average)"
GRID = np.linspace(0.0, 1.0, 201)  # the common FPR / recall grid of the macro curves
SHARE_RATIO = 2.0
SHARE_POINTS = 0.10
SHARE_MIN_ROWS = 10
SHARE_SIGMAS = 3.0


# --- ROC and PR ---------------------------------------------------------------------------------------


def one_vs_rest(task: str, y: np.ndarray, proba: np.ndarray, classes: list[str]
                ) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """(name, 0/1 truth, score) per curve: the positive class (binary), every label, or every class."""
    if task == "binary":
        return [(classes[1], (np.asarray(y) == 1).astype(int), proba[:, 1])]
    if task == "multilabel":
        return [(c, y[:, j].astype(int), proba[:, j]) for j, c in enumerate(classes)]
    Y = (np.asarray(y, dtype=int)[:, None] == np.arange(len(classes))).astype(int)
    return [(c, Y[:, j], proba[:, j]) for j, c in enumerate(classes)]


def binary_curves(t: np.ndarray, p: np.ndarray):
    """(fpr, tpr, recall, precision, ROC AUC, average precision) of one binary problem; None with one outcome."""
    from sklearn.metrics import average_precision_score, precision_recall_curve, roc_auc_score, roc_curve

    if t.min() == t.max():
        return None
    fpr, tpr, _ = roc_curve(t, p)
    prec, rec, _ = precision_recall_curve(t, p)
    return fpr, tpr, rec, prec, float(roc_auc_score(t, p)), float(average_precision_score(t, p))


def interpolated_precision(rec: np.ndarray, prec: np.ndarray) -> np.ndarray:
    """On GRID: the best precision at that recall or more (scikit-learn's recall runs down to 0)."""
    best = np.maximum.accumulate(prec)  # over the prefix: every point with that recall or more
    return np.interp(GRID, rec[::-1], best[::-1])


def micro_cells(y1: np.ndarray, proba: np.ndarray) -> tuple[np.ndarray, np.ndarray, str]:
    """(truth, score, note) of every (row, class) cell, or of a fixed sample of rows past MICRO_MAX_CELLS."""
    n, c = proba.shape
    rows = np.arange(n)
    if n * c > MICRO_MAX_CELLS:
        rows = np.sort(np.random.default_rng(0).choice(n, MICRO_MAX_CELLS // c, replace=False))
    note = "" if len(rows) == n else f" on {len(rows):,} of {n:,} rows"
    return y1[rows].ravel(), proba[rows].ravel(), note


def plot_roc_pr(task: str, y: np.ndarray, proba: np.ndarray, classes: list[str], out: Path
                ) -> tuple[list[str], pd.DataFrame]:
    """roc.png and pr.png, and a table of each curve's ROC AUC and average precision (multiclass and
    ordinal: every class one-vs-rest, then the micro and macro averages)."""
    curves = one_vs_rest(task, y, proba, classes)
    support = np.array([int(t.sum()) for _, t, _ in curves])
    shown = set(np.argsort(-support, kind="stable")[:MAX_CLASS_CURVES].tolist())
    plt = pyplot()
    fig_roc, ax_roc = plt.subplots(figsize=(5.5, 5.5))
    fig_pr, ax_pr = plt.subplots(figsize=(5.5, 5.5))
    rows, tprs, precs = [], [], []
    for j, (name, t, p) in enumerate(curves):
        c = binary_curves(t, p)
        rows.append({"class": name, "roc_auc": c[4] if c else np.nan, "average_precision": c[5] if c else np.nan})
        if c is None:  # one outcome only: no curve
            continue
        fpr, tpr, rec, prec, auc_, ap = c
        tprs.append(np.interp(GRID, fpr, tpr))
        precs.append(interpolated_precision(rec, prec))
        if j in shown:
            ax_roc.plot(fpr, tpr, lw=1, label=f"{name} (AUC {auc_:.3f})")
            ax_pr.plot(rec, prec, lw=1, label=f"{name} (AP {ap:.3f})")
    if task not in ("binary", "multilabel") and tprs:
        rows += averages(curves, proba, rows, tprs, precs, ax_roc, ax_pr)
    ax_roc.plot([0, 1], [0, 1], "k:", lw=0.8, label="chance")
    hidden = len(curves) - len(shown)
    what = f" ({len(shown)} most frequent of {len(curves)} classes drawn)" if hidden > 0 else ""
    for ax, (xl, yl, title) in ((ax_roc, ("false positive rate (share of negatives flagged)",
                                          "true positive rate (recall)", "ROC (OOF)")),
                                (ax_pr, ("recall (share of positives found)", "precision (share of flagged that are positive)",
                                         "precision-recall (OOF)"))):
        ax.set_xlabel(xl)
        ax.set_ylabel(yl)
        ax.set_xlim(-0.02, 1.02)
        ax.set_ylim(-0.02, 1.02)
        ax.set_aspect("equal")
        ax.set_title(title + ("\none-vs-rest" if task not in ("binary", "multilabel") else "") + what, fontsize=9)
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    return [save_fig(fig_roc, out / "roc.png"), save_fig(fig_pr, out / "pr.png")], pd.DataFrame(rows)


def averages(curves, proba, rows, tprs, precs, ax_roc, ax_pr) -> list[dict]:
    """The micro and macro rows of a one-vs-rest table, their curves drawn in black."""
    t, p, note = micro_cells(np.stack([t for _, t, _ in curves], axis=1), proba)
    fpr, tpr, rec, prec, auc_, ap = binary_curves(t, p)
    ax_roc.plot(fpr, tpr, "k--", lw=2, label=f"micro average (AUC {auc_:.3f})")
    ax_pr.plot(rec, prec, "k--", lw=2, label=f"micro average (AP {ap:.3f})")
    macro_auc = float(np.nanmean([r["roc_auc"] for r in rows]))
    macro_ap = float(np.nanmean([r["average_precision"] for r in rows]))
    ax_roc.plot(GRID, np.mean(tprs, axis=0), "k-", lw=2, label=f"macro average (AUC {macro_auc:.3f})")
    ax_pr.plot(GRID, np.mean(precs, axis=0), "k-", lw=2, label=f"macro average (AP {macro_ap:.3f})")
    return [{"class": MICRO + note, "roc_auc": auc_, "average_precision": ap},
            {"class": MACRO, "roc_auc": macro_auc, "average_precision": macro_ap}]


def roc_pr_section(task: str, y: np.ndarray, proba: np.ndarray, classes: list[str], out: Path) -> list[str]:
    """The report's ROC/PR section (roc.png, pr.png, roc_pr.csv)."""
    files, aucs = plot_roc_pr(task, y, proba, classes, out)
    write_csv(out / "roc_pr.csv", aucs)
    how = {"binary": "the positive class", "multilabel": "per label"}.get(
        task, f"one-vs-rest per class, with the micro average (every (row, class) cell pooled) and the macro "
        f"average (the mean of the per-class curves); the plots draw at most {MAX_CLASS_CURVES} classes")
    return ["### ROC and PR curves", "", f"Out-of-fold, {how}; `roc_pr.csv`.", "", md_table(aucs), ""] + [
        f"![{f}]({f})" for f in files] + [""]


# --- predicted test class shares ----------------------------------------------------------------------------


def class_shares(task: str, y: np.ndarray, test_proba: np.ndarray, classes: list[str]) -> pd.DataFrame:
    """Per class: training rows and share, predicted test rows and share, their ratio, the mean test
    probability, and `flagged` by the module's rule."""
    y = np.asarray(y)
    if task == "multilabel":
        train_rows = (y >= 0.5).sum(axis=0).astype(int)
        test_rows = (test_proba >= 0.5).sum(axis=0).astype(int)
    else:
        train_rows = np.bincount(y.astype(int), minlength=len(classes))
        test_rows = np.bincount(test_proba.argmax(axis=1), minlength=len(classes))
    s, q = train_rows / len(y), test_rows / len(test_proba)
    ratio = np.divide(q, s, out=np.full(len(s), np.nan), where=s > 0)
    far = (ratio > SHARE_RATIO) | (ratio < 1 / SHARE_RATIO) | (np.abs(q - s) > SHARE_POINTS)
    beyond_chance = np.abs(q - s) > SHARE_SIGMAS * np.sqrt(s * (1 - s) / len(test_proba))
    flagged = (train_rows >= SHARE_MIN_ROWS) & far & beyond_chance
    return pd.DataFrame({"class": classes, "train rows": train_rows, "train share": s, "test predicted rows": test_rows,
                         "test predicted share": q, "ratio": ratio, "mean test probability": test_proba.mean(axis=0),
                         "flagged": np.where(flagged, "yes", "")})


def share_warning(shares: pd.DataFrame, show: int = 5) -> str | None:
    """One line naming the flagged classes (the first `show`), or None."""
    bad = shares[shares["flagged"] == "yes"]
    if bad.empty:
        return None
    items = [f"{r['class']} {r['test predicted share']:.1%} predicted vs {r['train share']:.1%} in training"
             for _, r in bad.head(show).iterrows()]
    more = f"; and {len(bad) - show} more" if len(bad) > show else ""
    return (f"warning: the predicted test shares of {len(bad)} of {len(shares)} classes differ much from their "
            f"training shares: {'; '.join(items)}{more} (over {SHARE_RATIO:g}x or under 1/{SHARE_RATIO:g}, or more "
            f"than {SHARE_POINTS * 100:g} points apart, beyond {SHARE_SIGMAS:g} standard errors; classes with >= "
            f"{SHARE_MIN_ROWS} training rows; class_shares.csv)")


def blend_table(comp, cv: dict, part: str, ids: list[str], classes: list[str], submissions: Path, stacking: Path
                ) -> tuple[np.ndarray | None, str]:
    """(probabilities of `part` ("oof" or "test") in `ids` order, where they come from): the chosen blend's
    blend.<part> table, else the mean of the models' <part> tables; (None, why) when there is neither."""
    from pipeline.artifacts.tables import find_table, read_table

    path = find_table(submissions, f"blend.{part}")
    if path.is_file():
        p = read_table(path, comp.id_col, classes, ids, task=comp.task).to_numpy()
        return p, f"the chosen blend `{cv.get('chosen')}` (`{path}`)"
    what = "OOF" if part == "oof" else part
    models = [m for m in cv.get("models", {}) if find_table(stacking, f"{m}.{part}").is_file()]
    if not models:
        return None, f"`{path}` is missing and `{stacking}` holds no {what} table of the models in cv.json"
    p = np.mean([read_table(find_table(stacking, f"{m}.{part}"), comp.id_col, classes, ids, task=comp.task)
                 .to_numpy() for m in models], axis=0)
    return p, f"the mean of the models' {what} tables ({', '.join(models)}); `{path}` was not found"


def predicted_test(comp, cv: dict, classes: list[str], submissions: Path, stacking: Path
                   ) -> tuple[np.ndarray | None, str]:
    """(test probabilities in the sample's order, where they come from); (None, why) when there are none."""
    from pipeline.core.data import read_sample

    test_ids = read_sample(comp)[comp.id_col].astype(str).tolist()
    return blend_table(comp, cv, "test", test_ids, classes, submissions, stacking)


def shares_section(comp, cv: dict, y: np.ndarray, classes: list[str], submissions: Path, stacking: Path,
                   out: Path) -> list[str]:
    """The report's test-shares section (class_shares.csv); prints the warning line when a class is flagged."""
    md = ["## Predicted test class shares", ""]
    proba, source = predicted_test(comp, cv, classes, Path(submissions), Path(stacking))
    if proba is None:
        return md + [f"No test predictions: {source}; run `make ensemble`.", ""]
    shares = class_shares(comp.task, y, proba, classes)
    write_csv(out / "class_shares.csv", shares)
    how = "rows at >= 0.5 per label" if comp.task == "multilabel" else "argmax"
    md += [f"Test predictions: {source}; predicted share = {how}, beside the share of the training rows. "
           f"`class_shares.csv`.", ""]
    warning = share_warning(shares)
    if warning:
        print(warning)
        md += [f"**{warning}**", ""]
    else:
        md += ["No class is flagged (the rule: pipeline/tools/classchecks.py, docs/metrics-and-blends.md).", ""]
    return md + [md_table(shares), ""]
