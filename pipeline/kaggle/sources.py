"""What the bundle ships, found and checked: the blend `ensemble` saved in submissions/blend.json (never
refitted), and the finished fold runs and TTA of every model it blends; or a distilled student alone."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.core.config import Competition
from pipeline.core.io import file_md5
from pipeline.kaggle.ids import PackageError


@dataclass(frozen=True)
class SavedBlend:
    """The blend to ship: its JSON exactly as `ensemble` wrote it, and what it was fitted on."""

    text: str  # submissions/blend.json, byte for byte
    method: str
    models: list[str]
    classes: list[str]
    test_ids: list[str]
    folds: list[int]


def chosen_blend(comp: Competition, method: str | None, stacking: Path, folds: Path, submissions: Path) -> SavedBlend:
    """The blend `ensemble` fitted and saved in submissions/blend.json. Nothing is refitted, and only what
    checks it is read: its models' test tables (unchanged since, by md5), which the saved state must turn
    into the submissions/blend.test table again."""
    from pipeline.artifacts.folds import fold_numbers
    from pipeline.artifacts.runs import DISTILL_SUFFIX
    from pipeline.artifacts.tables import check_pair, find_models, find_table, read_table
    from pipeline.blend.blends import stack
    from pipeline.blend.ensemble import BLEND_STATE, read_blend_state
    from pipeline.core.data import class_names, read_sample, read_train

    state = submissions / BLEND_STATE
    blend, data = read_blend_state(state, stacking)  # refused when a table it was fitted on changed since
    text = state.read_text()
    if method is not None and method != blend.method:
        raise PackageError(f"{state} holds the {blend.method} blend, not {method}; run "
                           f"`make ensemble METHOD={method}` first (or package without --method)")
    classes = class_names(comp, read_train(comp))
    now = [m for m in find_models(stacking)[0] if m in data["models"] or not m.endswith(DISTILL_SUFFIX)]
    if now != data["models"] or classes != data["classes"]:  # distilled students are never blended with others
        raise PackageError(f"{state} was fitted on models {data['models']}, {stacking}/ now holds {now}; rerun "
                           "`make ensemble`")
    test_ids = read_sample(comp)[comp.id_col].astype(str).tolist()
    folds_md5 = file_md5(folds)
    test = []
    for m in data["models"]:
        check_pair(stacking, m)  # as `predict` wrote them, from the fold runs as they are now
        test.append(read_table(find_table(stacking, f"{m}.test"), comp.id_col, classes, test_ids, folds_md5,
                               comp.task).to_numpy())
    table = find_table(submissions, "blend.test")
    if not table.is_file():
        raise PackageError(f"{table}: not found; rerun `make ensemble`")
    written = read_table(table, comp.id_col, classes, test_ids, task=comp.task).to_numpy()
    X_test = blend.with_meta(stack(np.stack(test)), comp, test_ids)  # + the test table's metadata, if it took any
    if not np.allclose(written, blend.predict_proba(X_test, comp.task), atol=1e-5):
        raise PackageError(f"{table} does not match the blend saved in {state}; rerun `make ensemble`")
    return SavedBlend(text, blend.method, list(data["models"]), classes, test_ids, fold_numbers(folds))


def model_entries(comp: Competition, blend: SavedBlend, runs: Path, stacking: Path, folds: Path) -> list[dict]:
    """Run folders and TTA of every model the blend uses (from the stacking tables' sidecars)."""
    from pipeline.artifacts.runs import fold_runs
    from pipeline.artifacts.tables import find_table, read_meta

    entries = []
    for name in blend.models:
        oof = find_table(stacking, f"{name}.oof")
        meta = read_meta(oof)
        if "tta" not in meta or not (runs / name).is_dir():
            raise PackageError(
                f"model {name!r}: {oof} was not made by `predict` from {runs}/{name}/, so its "
                "test predictions cannot be reproduced offline; remove its tables or retrain it here")
        dirs = fold_runs(comp, name, blend.folds, runs, folds, blend.classes)
        entries.append({"name": name, "dirs": dirs, "folds": blend.folds, "tta": meta["tta"],
                        "tta_merge": meta["tta_merge"]})
    return entries


def student_blend(comp: Competition, student: str, stacking: Path, folds: Path, runs: Path, work: Path
                  ) -> tuple[Path, Path]:
    """The student alone as the bundle's "blend": its two tables copied into work/stacking/, and `ensemble
    --method mean` of that one model into work/submissions/. -> (stacking, submissions) to package from."""
    from pipeline.artifacts.tables import find_table, sidecar
    from pipeline.blend.ensemble import run_ensemble

    tables = work / "stacking"
    tables.mkdir(parents=True)
    for part in ("oof", "test"):
        table = find_table(stacking, f"{student}.{part}")
        for src in (table, sidecar(table)):
            if not src.is_file():
                raise PackageError(f"{src}: not found; `make distill STUDENT=...` (or `make predict`) writes it")
            shutil.copy2(src, tables / src.name)
    run_ensemble(comp, method="mean", stacking=tables, folds_path=folds, out=work / "submissions", runs=runs)
    return tables, work / "submissions"


def package_student(out: str | Path, given: str | None) -> str | None:
    """The student to ship alone, if any: STUDENT= sticks for later packages (recorded in <bundle>.record.json
    beside the bundle); STUDENT=none: the blend again."""
    from pipeline.artifacts.record import choose, read_record, write_record
    from pipeline.artifacts.runs import DISTILL_SUFFIX

    record = Path(out).with_name(Path(out).name + ".record.json")
    given = None if given is None else given.removesuffix(DISTILL_SUFFIX)
    student = choose(record, "student", given, "none", "STUDENT")
    if given is not None:
        previous = read_record(record)
        write_record(record, "package", previous.params if previous else {}, [], [],
                     choices={"student": given} if given != "none" else None)
    return None if student == "none" else student
