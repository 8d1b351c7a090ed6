"""`make distill STUDENT=<model>`: the ensemble distilled into one model.

1. `teacher`: the chosen blend's OOF probabilities (submissions/blend.oof.parquet, from nested CV) become the
   teacher table folds/distill.parquet. Each row's soft label there comes from models that never saw the row,
   which is what a fold's training rows need; the blend's test predictions are never used.
2. Make trains the student plainly (runs/<student>/) and distilled (runs/<student>-distilled/, the model
   config with `distill=folds/distill.parquet`): each training row's target is distill_alpha x its label +
   (1 - distill_alpha) x the teacher at `temperature`; validation rows keep their true labels.
3. `predict` writes both students' tables to stacking/, and `compare` prints the teacher blend, the plain
   student and the distilled one side by side (CV, and test when the competition has answers).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from pipeline.core.config import Competition
from pipeline.core.data import class_names, encode_targets, read_answers, read_sample, read_train
from pipeline.core.errors import DataError
from pipeline.artifacts.folds import fold_of
from pipeline.artifacts.record import changed_files, file_md5, read_record, record_path, write_record
from pipeline.artifacts.runs import DISTILL_SUFFIX, DISTILL_TABLE
from pipeline.artifacts.tables import find_table, read_table, sidecar, write_table


def chosen_blend(submissions: Path) -> dict:
    try:
        cv = json.loads((submissions / "cv.json").read_text())
    except (OSError, json.JSONDecodeError):
        raise DataError(f"{submissions / 'cv.json'} not found or unreadable; run `make ensemble` first") from None
    return {"name": cv["chosen"], **cv["blends"][cv["chosen"]]}


def teacher_record(out: str | Path = DISTILL_TABLE) -> Path:
    """folds/distill.record.json: the blend the teacher table came from, and the student it was made for."""
    return record_path(Path(out).parent, "distill")


def recorded_student(out: str | Path = DISTILL_TABLE) -> str | None:
    record = read_record(teacher_record(out))
    return None if record is None else record.choices.get("student")


def write_teacher(comp: Competition, student: str, submissions: str | Path = "submissions",
                  out: str | Path = DISTILL_TABLE) -> Path:
    """folds/distill.parquet from the chosen blend's OOF table, checked against every training id; its record
    holds the blend's files, so a later blend makes the student's teacher stale (`check_teacher`)."""
    submissions, out = Path(submissions), Path(out)
    blend = chosen_blend(submissions)
    train = read_train(comp)
    classes = class_names(comp, train)
    ids = train[comp.id_col].astype(str).tolist()
    source = find_table(submissions, "blend.oof")
    table = read_table(source, comp.id_col, classes, ids, task=comp.task)
    write_table(out, ids, table.to_numpy(), classes, comp.id_col,
                meta={"teacher": blend["name"], "cv": blend["cv"], "source": str(source), "source_md5": file_md5(source)})
    write_record(teacher_record(out), "distill", {"teacher": blend["name"]},
                 [source, submissions / "blend.json"], [out, sidecar(out)], choices={"student": student},
                 info={"teacher_cv": blend["cv"]})
    print(f"distill: teacher = blend {blend['name']} (CV {comp.metric} {blend['cv']:.5f}), its OOF for {len(ids)} "
          f"training rows -> {out}")
    return out


def check_teacher(student: str, submissions: str | Path = "submissions", out: str | Path = DISTILL_TABLE) -> None:
    """The distilled student learned from the blend that `ensemble` holds now; else a DataError naming the
    teacher it learned from and the blend there is now."""
    record = read_record(teacher_record(out))
    fix = f"rerun `make distill STUDENT={student}`, or package the blend (STUDENT=none)"
    if record is None:
        raise DataError(f"{student}{DISTILL_SUFFIX}: no record of its teacher ({teacher_record(out)}); {fix}")
    changed = changed_files(teacher_record(out))
    if changed:
        now = chosen_blend(Path(submissions))["name"] if (Path(submissions) / "cv.json").is_file() else "none"
        raise DataError(f"{student}{DISTILL_SUFFIX} learned from the blend {record.params.get('teacher')} "
                        f"(CV {record.info.get('teacher_cv')}), but the blend changed since "
                        f"({'; '.join(changed[:2])}; chosen now: {now}); {fix}")


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
        if not find_table(stacking, f"{name}.oof").is_file():
            rows.append((name, None, None))
            continue
        oof = read_table(find_table(stacking, f"{name}.oof"), comp.id_col, classes, ids, task=comp.task).to_numpy()
        test = read_table(find_table(stacking, f"{name}.test"), comp.id_col, classes, test_ids, task=comp.task
                          ).to_numpy()
        rows.append((name, metric.score(y, oof), metric.score(y_test, test) if y_test is not None else None))
    fmt = lambda v: "-" if v is None or not np.isfinite(v) else f"{v:.5f}"  # noqa: E731
    lines = [f"| model | CV {comp.metric} |" + (" test |" if y_test is not None else ""),
             "|---|---|" + ("---|" if y_test is not None else "")]
    lines += [f"| {n} | {fmt(cv)} |" + (f" {fmt(t)} |" if y_test is not None else "") for n, cv, t in rows]
    return "\n".join(lines)
