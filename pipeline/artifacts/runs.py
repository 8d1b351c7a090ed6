"""Run folders: `runs/<run>/fold<k>/`, and what says a fold is finished. No torch here, so `plan` is quick.

Training writes `done.json` last: the fold's stage record (pipeline.artifacts.record). Its params are the
config hash (result-neutral keys left out), the classes, the task, the metric and, with external data, the
extra images' template; its inputs folds.csv, the extra table (competition key extra_train) when set and,
for a distilled student or a pseudo round, the teacher or pseudo-label table, the file of each custom
`preprocess` step, folds/extra_duplicates.csv (extra images that copy a train image) and, for a later
repeat's fold (competition key repeats), folds/repeats.csv; its outputs the files later
stages read (best.pt, oof.parquet, config.yaml); beside them the command-line overrides (`ARGS`) it was trained
with, its score and its time. Decided from the record and file stats alone, a fold is

- done: `record.changes` finds nothing for the params and inputs the current config file and overrides give;
- kept: it was trained with overrides, none are given now, and the config file with *its* overrides still
  gives its config hash (`make train-all ARGS=...` then `make predict`). Nothing retrains it unless asked
  (`make train MODEL= FOLD=`, or `make train-all RETRAIN=1`), and the stages that use it say so;
- stale: the config file, folds.csv, the extra table, a teacher or pseudo-label table, a custom preprocess file,
  the classes, the task or the metric changed, or an output is missing or changed since written; `plan` says which.

A done.json of the earlier format (the stamp at its top level) is still understood, so folds trained
before it are not retrained.

A fold is trained in `runs/<run>/.fold<k>.partial/` and moved into place only when finished; the fold
it replaces, and an unfinished run that cannot be resumed, are set aside under `runs/<run>/stale/`,
never deleted.
"""

from __future__ import annotations

import json
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path

from pipeline.core.config import Competition, config_hash
from pipeline.core.data import class_names, read_train
from pipeline.core.errors import ConfigError, DataError
from pipeline.artifacts.duplicates import EXTRA_CSV
from pipeline.artifacts.folds import REPEATS_CSV, FoldLayout, fold_layout
from pipeline.artifacts.record import Record, changes, digest, file_md5
from pipeline.core.io import write_json
from pipeline.nn.models import ModelConfig, load_model, model_config_path, stamp_exclusions

PSEUDO_SUFFIX = "-pseudo"  # a pseudo-label round trains runs/<model>-pseudo/ beside round 0
PSEUDO_TABLE = "folds/pseudo.csv"  # what `make pseudo` writes, and what a pseudo round trains on by default
DISTILL_SUFFIX = "-distilled"  # a student distilled from the blend trains runs/<model>-distilled/
DISTILL_TABLE = "folds/distill.parquet"  # what `make distill` writes: the teacher blend's OOF probabilities


def run_name(model: str, cfg: ModelConfig) -> str:
    """The run folder name of a model config: a pseudo-label round and a distilled student get their own
    runs and tables."""
    if cfg.pseudo and cfg.distill:
        raise ConfigError("keys 'pseudo' and 'distill': one at a time (a distilled student's pseudo round is not "
                          "supported)")
    return model + (PSEUDO_SUFFIX if cfg.pseudo else DISTILL_SUFFIX if cfg.distill else "")


def config_name(run: str) -> str:
    """The model config a run folder was trained from."""
    return run.removesuffix(PSEUDO_SUFFIX).removesuffix(DISTILL_SUFFIX)


def run_dir(run: str, fold: int, runs: str | Path = "runs") -> Path:
    return Path(runs) / run / f"fold{fold}"


def parse_target(target: str | Path) -> tuple[str, int]:
    """A fold's Make target, runs/<run>/fold<k>/done.json -> (run, k)."""
    path = Path(target)
    match = re.fullmatch(r"fold(\d+)", path.parent.name)
    if path.name != "done.json" or match is None or not path.parent.parent.name:
        raise ConfigError(f"{target}: not a fold target (expected runs/<model>/fold<k>/done.json)")
    return path.parent.parent.name, int(match.group(1))


def staging_dir(out: Path) -> Path:
    """Where a fold trains until it is finished: runs/<run>/.fold<k>.partial/."""
    return out.parent / f".{out.name}.partial"


def set_aside(folder: Path) -> Path:
    """Move a run folder the pipeline made to runs/<run>/stale/<name>-<time>/ (never delete it); the
    temporary files of writes that were killed midway (.<file>.<random>.tmp) are dropped on the way."""
    for leftover in folder.rglob(".*.tmp"):
        leftover.unlink(missing_ok=True)
    name = folder.name.lstrip(".").removesuffix(".partial")
    base = folder.parent / "stale" / f"{name}-{time.strftime('%Y%m%dT%H%M%S')}"
    target, n = base, 2
    while target.exists():
        target, n = base.with_name(f"{base.name}-{n}"), n + 1
    target.parent.mkdir(parents=True, exist_ok=True)
    os.replace(folder, target)
    return target


def publish(work: Path, out: Path) -> Path | None:
    """Move a finished staging folder into place; the fold it replaces is set aside. -> where it went."""
    old = set_aside(out) if out.exists() else None
    os.replace(work, out)
    return old


TRAIN_STAGE = "train"  # done.json is the fold's stage record (pipeline.artifacts.record)
FOLD_OUTPUTS = ("best.pt", "oof.parquet", "oof.json", "config.yaml")  # what later stages read of a fold
PARAM_NAMES = {"config_hash": "config", "classes": "classes", "task": "task", "metric": "metric"}
EARLIER_MD5 = {"folds.csv": "folds_md5", "teacher table": "distill_md5"}  # an earlier done.json's input hashes


def fold_params(cfg: ModelConfig, classes: list[str], comp: Competition) -> dict:
    """What besides files a fold is trained from: the config hash (result-neutral keys left out), the classes,
    the task, the metric and, when set, the competition's DICOM windows, extra images' template and, for a
    meta_head model, its metadata columns."""
    params = {"config_hash": config_hash(cfg, stamp_exclusions(cfg)), "classes": list(classes), "task": comp.task,
              "metric": comp.metric}
    if comp.dicom_windows:  # how DICOM pixels become channels: other windows, another model
        params["dicom_windows"] = [list(w) for w in comp.dicom_windows]
    if comp.extra_images:  # the extra rows' images: its table is an input (fold_inputs)
        params["extra_images"] = comp.extra_images
    if cfg.meta_head:  # the columns the model takes: other columns, another model
        params["meta_cols"] = list(comp.meta_cols or [])
    return params


def fold_inputs(cfg: ModelConfig, folds_path: str | Path, comp: Competition | None = None) -> dict[str, str]:
    """The files a fold is trained from, by the names `plan` gives them: folds.csv, the competition's extra
    table (key extra_train), a distilled student's teacher table, a pseudo round's table, and the file of
    each custom `preprocess: file.py:function` step (relative to the model config's folder, as
    pipeline.nn.preprocess resolves it; the built-ins have none): editing it retrains the fold. A `meta_head`
    model also reads its metadata from train.csv (and a pseudo round's from the test table)."""
    from pipeline.core.meta import test_table_path
    from pipeline.nn.preprocess import BUILTINS, custom_file

    copies = Path(folds_path).with_name(EXTRA_CSV)  # extra rows left out of the folds that validate their copy
    named = {"folds.csv": folds_path, "extra table": comp.extra_train_path if comp else None,
             "extra copies": copies if comp and comp.extra_train and copies.is_file() else None,
             "teacher table": cfg.distill, "pseudo-label table": cfg.pseudo}
    if cfg.meta_head and comp is not None and comp.meta_cols:
        named.update({"metadata (train.csv)": comp.train_csv_path,
                      "metadata (test table)": test_table_path(comp) if cfg.pseudo else None})
    files = list(dict.fromkeys(str(custom_file(step, cfg._config_dir)[0]) for step in cfg.preprocess
                               if step not in BUILTINS))
    for file in files:  # 'preprocess file changed'; with several files, each by its path
        named["preprocess file" if len(files) == 1 else f"preprocess file {file}"] = file
    return {name: str(Path(p)) for name, p in named.items() if p}


def with_split(inputs: dict[str, str], folds_path: str | Path, fold: int, layout: FoldLayout) -> dict[str, str]:
    """A later repeat's fold (competition key repeats) is also trained from its split, folds/repeats.csv."""
    if layout.repeats > 1 and layout.split_of(fold)[0] > 0:
        return {**inputs, "repeats.csv": str(Path(folds_path).with_name(REPEATS_CSV))}
    return inputs


def resume_stamp(params: dict, inputs: dict[str, str]) -> dict:
    """What last.pt holds so that only a run of the same params and input files resumes from it."""
    return {**params, "inputs": {name: file_md5(p) if Path(p).is_file() else None for name, p in inputs.items()}}


def write_fold_record(work: Path, out: Path, params: dict, inputs: dict[str, str], info: dict) -> None:
    """done.json, written last into the staging folder `work`: the fold's stage record. Its outputs are named
    where `publish` moves them (`out`); a rename keeps their size and mtime, so the record holds there."""
    outputs = {str(out / name): digest(work / name) for name in FOLD_OUTPUTS if (work / name).is_file()}
    ins = {p: digest(p) for p in sorted(set(inputs.values()))}
    write_json(work / "done.json", Record(TRAIN_STAGE, params, ins, outputs, {}, info).to_json())


def read_done(out: Path) -> dict | None:
    """A fold's done.json as it is (None: none, or not readable)."""
    try:
        done = json.loads((Path(out) / "done.json").read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return done if isinstance(done, dict) else None


def _earlier_changes(done: dict, params: dict, inputs: dict[str, str]) -> list[str]:
    """`record.changes` for a done.json of the earlier format (the stamp at its top level, inputs by md5), so
    the folds trained before the stage records are not retrained."""
    reasons = [f"{key} changed" for key in params if done.get(key) != params[key]]
    for name, key in EARLIER_MD5.items():
        path = inputs.get(name)
        now = file_md5(path) if path and Path(path).is_file() else None
        if (path or key in done) and done.get(key) != now:
            reasons.append(f"{path or name} changed")
    return reasons


def fold_changes(out: Path, params: dict, inputs: dict[str, str]) -> list[str]:
    """Why the fold in `out` is not the one these params and inputs give, in plan's words ([]: it is)."""
    done = read_done(out)
    if done is None:
        return [f"{Path(out) / 'done.json'} cannot be read"]
    if "stage" in done:
        raw = changes(Path(out) / "done.json", params, list(inputs.values()))
    else:
        raw = _earlier_changes(done, params, inputs)
    names = {**PARAM_NAMES, **{p: name for name, p in inputs.items()},
             **{str(Path(out) / f): f for f in FOLD_OUTPUTS}}
    return list(dict.fromkeys(_readable(r, names) for r in raw))


def _readable(reason: str, names: dict[str, str]) -> str:
    """One reason of `record.changes` with a name for its key or file ('folds.csv changed', 'best.pt missing')."""
    for raw, name in names.items():
        if reason in (f"{raw} changed", f"new input {raw}", f"input {raw} gone"):
            return f"{name} changed"
        if reason.startswith(f"output {raw} "):
            return name + reason.removeprefix(f"output {raw}")
    return reason


@dataclass(frozen=True)
class FoldStatus:
    state: str  # "done", "kept", "stale" or "todo"
    reason: str | None = None  # why it is kept, stale or to do


def fold_status(out: Path, params: dict, inputs: dict[str, str], models_dir: str | Path, model: str,
                overrides: list[str] | None = None) -> FoldStatus:
    """The state of the fold in `out` for the params and inputs that the config `models_dir/<model>.yaml`
    with `overrides` gives (see the module docstring)."""
    if not (Path(out) / "done.json").is_file():
        partial = staging_dir(Path(out)) / "last.pt"
        return FoldStatus("todo", "resumes from its last checkpoint" if partial.is_file() else "not trained")
    reasons = fold_changes(out, params, inputs)
    if not reasons:
        return FoldStatus("done")
    recorded = list((read_done(out) or {}).get("overrides", []))
    if reasons == ["config changed"] and recorded and not overrides:  # no ARGS now: keep what ARGS trained
        try:
            own = load_model(models_dir, model, recorded)[0]
        except ConfigError:
            own = None
        if own is not None and not fold_changes(out, {**params, "config_hash": config_hash(own, stamp_exclusions(own))},
                                                 inputs):
            return FoldStatus("kept", f"trained with ARGS '{' '.join(recorded)}'")
    return FoldStatus("stale", ", ".join(reasons))


def trained_models(runs: str | Path = "runs") -> list[str]:
    """Names of runs/<name>/ folders holding at least one finished fold."""
    runs = Path(runs)
    if not runs.is_dir():
        return []
    return sorted(p.name for p in runs.iterdir() if p.is_dir() and any(p.glob("fold*/done.json")))


def fold_runs(comp: Competition, run: str, folds: list[int], runs: str | Path, folds_path: str | Path,
              classes: list[str]) -> list[Path]:
    """The finished run folder of every fold, each checked against the current config file (with the
    overrides it was trained with), folds.csv and classes: a stale or missing fold stops with its name.
    A fold trained with other ARGS is used, and said so."""
    model = config_name(run)
    if not (Path(runs) / run).is_dir():
        raise DataError(f"{run}: not trained (no {runs}/{run}/); run `make train-all MODELS={model}`")
    if not model_config_path(comp.models_dir, model).is_file():
        raise DataError(f"{runs}/{run}: its config {comp.models_dir}/{model}.yaml is gone; restore it, or move "
                        f"{runs}/{run} away so that it is not predicted")
    dirs = [run_dir(run, k, runs) for k in folds]
    problems, kept, layout = [], [], fold_layout(folds_path)
    for k, d in zip(folds, dirs):
        done = read_done(d)
        if done is None:
            problems.append(f"fold{k} (not trained)")
            continue
        recorded = list(done.get("overrides", []))  # judged by the config file with its own overrides
        cfg = load_model(comp.models_dir, model, recorded)[0]
        inputs = with_split(fold_inputs(cfg, folds_path, comp), folds_path, k, layout)
        status = fold_status(d, fold_params(cfg, classes, comp), inputs, comp.models_dir, model, recorded)
        if status.state != "done":
            problems.append(f"fold{k} ({status.reason})")
        elif recorded:
            kept.append(f"fold{k} with ARGS '{' '.join(recorded)}'")
    if problems:
        raise DataError(f"{run}: {', '.join(problems)}; run `make train-all MODELS={model}`")
    if kept:
        print(f"note: {run}: using folds trained with command-line overrides: {', '.join(kept)}")
    return dirs


@dataclass(frozen=True)
class FoldJob:
    """One model x fold of a training plan."""

    model: str
    run: str
    fold: int
    target: str  # runs/<run>/fold<k>/done.json, the Make target
    status: FoldStatus


def plan_training(comp: Competition, models_dir: str | Path, models: list[str], folds_path: str | Path,
                  runs: str | Path = "runs", overrides: list[str] | None = None) -> list[FoldJob]:
    """Every model x fold with its status, as `train` would decide it for the same config and
    overrides. Every model config is loaded first, so a bad one fails before any training."""
    folds_path = Path(folds_path)
    layout = fold_layout(folds_path)
    folds = layout.folds
    configs = {m: load_model(models_dir, m, overrides)[0] for m in models}
    classes = class_names(comp, read_train(comp))
    jobs = []
    for m, cfg in configs.items():
        params, inputs = fold_params(cfg, classes, comp), fold_inputs(cfg, folds_path, comp)
        run = run_name(m, cfg)
        for k in folds:
            out = run_dir(run, k, runs)
            jobs.append(FoldJob(m, run, k, str(out / "done.json"), fold_status(
                out, params, with_split(inputs, folds_path, k, layout), models_dir, m, overrides)))
    return jobs


def plan_lines(jobs: list[FoldJob], retrain: bool, everything: bool) -> tuple[list[str], list[FoldJob]]:
    """(one line per run: folds done, to train and kept, with why; the jobs to train). `retrain` also
    trains folds kept as trained with other ARGS; `everything` lists finished folds too."""
    train = {"todo", "stale", "kept"} if retrain else {"todo", "stale"}
    lines = []
    for run in dict.fromkeys(j.run for j in jobs):
        mine = [j for j in jobs if j.run == run]
        todo = [f"fold{j.fold} ({j.status.reason})" for j in mine if j.status.state in train]
        kept = [f"fold{j.fold} ({j.status.reason})" for j in mine if j.status.state == "kept" and not retrain]
        lines.append(f"plan: {run}: {len(mine) - len(todo)}/{len(mine)} folds done"
                     + (f"; to train: {', '.join(todo)}" if todo else "")
                     + (f"; kept as trained: {', '.join(kept)} (RETRAIN=1 trains them as configured now)"
                        if kept else ""))
    return lines, [j for j in jobs if j.status.state in train or everything]


# --- the train-all job: its plan and a running ETA -------------------------------------------------------

JOB_FILE = ".train-all.json"  # under runs/: the folds the current `make train-all` trains, and when it began


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m" if seconds >= 3600 else (
        f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s")


def start_job(runs: str | Path, jobs: list[FoldJob]) -> str:
    """Record the folds a train-all is about to train (runs/.train-all.json) and say how long they took
    the last time they were trained, where that is known."""
    runs = Path(runs)
    write_json(runs / JOB_FILE, {"started": time.time(), "targets": [j.target for j in jobs]})
    if not jobs:
        return "plan: nothing to train"
    measured = {}  # run -> seconds its finished folds took
    for run in {j.run for j in jobs}:
        measured[run] = [d["seconds"] for d in map(read_done, sorted((runs / run).glob("fold*")))
                         if d and d.get("seconds")]
    known = [sum(measured[j.run]) / len(measured[j.run]) for j in jobs if measured[j.run]]
    if len(known) < len(jobs):
        return f"plan: {len(jobs)} fold(s) to train; an ETA follows the first finished fold"
    return (f"plan: {len(jobs)} fold(s) to train, about {_duration(sum(known))} at one fold at a time "
            "(from the folds of these models trained before)")


def job_progress(runs: str | Path, out: Path) -> str | None:
    """After a fold of the current train-all: folds done, time spent, and the time left at the measured
    pace (wall clock since the job began, so folds trained in parallel with -j count as they ran)."""
    path = Path(runs) / JOB_FILE
    try:
        job = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    targets = job.get("targets", [])
    if str(Path(out) / "done.json") not in targets:
        return None
    done = [t for t in targets if (read_done(Path(t).parent) or {}).get("finished_at", 0) >= job["started"]]
    elapsed = time.time() - job["started"]
    left = len(targets) - len(done)
    pace = elapsed / max(len(done), 1)
    return (f"train-all: {len(done)}/{len(targets)} folds done in {_duration(elapsed)}"
            + (f"; about {_duration(pace * left)} left ({_duration(pace)} a fold)" if left else "; all done"))
