"""`make distill STUDENT=<model>`: the ensemble distilled into one model.

1. `teacher`: the chosen blend's OOF probabilities (submissions/blend.oof.csv, from nested CV) become the
   teacher table folds/distill.csv. Each row's soft label there comes from models that never saw the row,
   which is what a fold's training rows need; the blend's test predictions are never used.
2. Make trains the student plainly (runs/<student>/) and distilled (runs/<student>-distilled/, the model
   config with `distill=folds/distill.csv`): each training row's target is distill_alpha x its label +
   (1 - distill_alpha) x the teacher at `temperature`; validation rows keep their true labels.
3. `predict` writes both students' tables to stacking/, and `compare` prints the teacher blend, the plain
   student and the distilled one side by side (CV, and test when the competition has answers).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from pipeline.core.config import Competition
from pipeline.core.data import DataError, class_names, encode_targets, read_answers, read_sample, read_train
from pipeline.artifacts.folds import fold_of
from pipeline.core.io import file_md5
from pipeline.artifacts.runs import DISTILL_SUFFIX, DISTILL_TABLE
from pipeline.artifacts.tables import read_table, write_table


def chosen_blend(submissions: Path) -> dict:
    try:
        cv = json.loads((submissions / "cv.json").read_text())
    except (OSError, json.JSONDecodeError):
        raise DataError(f"{submissions / 'cv.json'} not found or unreadable; run `make ensemble` first") from None
    return {"name": cv["chosen"], **cv["blends"][cv["chosen"]]}


def write_teacher(comp: Competition, submissions: str | Path = "submissions", out: str | Path = DISTILL_TABLE
                  ) -> Path:
    """folds/distill.csv from the chosen blend's OOF table, checked against every training id."""
    submissions, out = Path(submissions), Path(out)
    blend = chosen_blend(submissions)
    train = read_train(comp)
    classes = class_names(comp, train)
    ids = train[comp.id_col].astype(str).tolist()
    source = submissions / "blend.oof.csv"
    table = read_table(source, comp.id_col, classes, ids, task=comp.task)
    write_table(out, ids, table.to_numpy(), classes, comp.id_col,
                meta={"teacher": blend["name"], "cv": blend["cv"], "source": str(source), "source_md5": file_md5(source)})
    print(f"distill: teacher = blend {blend['name']} (CV {comp.metric} {blend['cv']:.5f}), its OOF for {len(ids)} "
          f"training rows -> {out}")
    return out


def compare(comp: Competition, student: str, stacking: str | Path = "stacking", folds_path: str | Path =
            "folds/folds.csv", submissions: str | Path = "submissions") -> str:
    """A small table: the teacher blend, the plain student and the distilled student, CV and test."""
    stacking, submissions = Path(stacking), Path(submissions)
    train = read_train(comp)
    classes = class_names(comp, train)
    ids = train[comp.id_col].astype(str).tolist()
    y = encode_targets(comp, train, classes)
    test_ids = read_sample(comp)[comp.id_col].astype(str).tolist()
    y_test = read_answers(comp, classes, test_ids)
    fold_of(folds_path, comp, ids)  # the tables must belong to these folds
    metric = comp.scoring()
    blend = chosen_blend(submissions)
    rows = [(f"teacher: blend {blend['name']}", blend["cv"], blend.get("test"))]
    for name in (student, student + DISTILL_SUFFIX):
        if not (stacking / f"{name}.oof.csv").is_file():
            rows.append((name, None, None))
            continue
        oof = read_table(stacking / f"{name}.oof.csv", comp.id_col, classes, ids, task=comp.task).to_numpy()
        test = read_table(stacking / f"{name}.test.csv", comp.id_col, classes, test_ids, task=comp.task).to_numpy()
        rows.append((name, metric.score(y, oof), metric.score(y_test, test) if y_test is not None else None))
    fmt = lambda v: "-" if v is None or not np.isfinite(v) else f"{v:.5f}"  # noqa: E731
    lines = [f"| model | CV {comp.metric} |" + (" test |" if y_test is not None else ""),
             "|---|---|" + ("---|" if y_test is not None else "")]
    lines += [f"| {n} | {fmt(cv)} |" + (f" {fmt(t)} |" if y_test is not None else "") for n, cv, t in rows]
    return "\n".join(lines)
