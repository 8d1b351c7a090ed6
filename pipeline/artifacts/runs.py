"""Run folders: `runs/<run>/fold<k>/`, and what says a fold is finished. No torch here, so `plan` is quick.

Training writes `done.json` last, holding the stamp of what the fold was trained from: the config hash
(result-neutral keys left out), the md5 of folds.csv, the classes, the task and the metric, and the
command-line overrides (`ARGS`) it was trained with. A fold is

- done: its stamp is the one the current config file and overrides give;
- kept: it was trained with overrides, none are given now, and the config file with *its* overrides still
  gives its stamp (`make train-all ARGS=...` then `make predict`). Nothing retrains it unless asked
  (`make train MODEL= FOLD=`, or `make train-all RETRAIN=1`), and the stages that use it say so;
- stale: the config file, folds.csv, the classes, the task or the metric changed; `plan` says which.

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

from pipeline.core.config import Competition, ConfigError, config_hash
from pipeline.core.data import DataError, class_names, read_train
from pipeline.artifacts.folds import fold_numbers
from pipeline.core.io import file_md5, write_json
from pipeline.nn.models import ModelConfig, load_model, model_config_path, stamp_exclusions

PSEUDO_SUFFIX = "-pseudo"  # a pseudo-label round trains runs/<model>-pseudo/ beside round 0
PSEUDO_TABLE = "folds/pseudo.csv"  # what `make pseudo` writes, and what a pseudo round trains on by default
DISTILL_SUFFIX = "-distilled"  # a student distilled from the blend trains runs/<model>-distilled/
DISTILL_TABLE = "folds/distill.csv"  # what `make distill` writes: the teacher blend's OOF probabilities


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


def run_stamp(cfg: ModelConfig, folds_md5: str, classes: list[str], comp: Competition) -> dict:
    """What a finished fold was trained from; done.json holds it (a distilled student: its teacher table too)."""
    stamp = {
        "config_hash": config_hash(cfg, stamp_exclusions(cfg)),
        "folds_md5": folds_md5,
        "classes": classes,
        "task": comp.task,
        "metric": comp.metric,
    }
    if cfg.distill:
        stamp["distill_md5"] = file_md5(cfg.distill) if Path(cfg.distill).is_file() else None
    return stamp


def read_done(out: Path) -> dict | None:
    done = Path(out) / "done.json"
    return json.loads(done.read_text()) if done.is_file() else None


STAMP_REASONS = {"config_hash": "config changed", "folds_md5": "folds.csv changed", "classes": "classes changed",
                 "task": "task changed", "metric": "metric changed", "distill_md5": "teacher table changed"}


@dataclass(frozen=True)
class FoldStatus:
    state: str  # "done", "kept", "stale" or "todo"
    reason: str | None = None  # why it is kept, stale or to do


def fold_status(out: Path, expected: dict, models_dir: str | Path, model: str,
                overrides: list[str] | None = None) -> FoldStatus:
    """The state of the fold in `out` for the `expected` stamp, which the config `models_dir/<model>.yaml`
    with `overrides` gives (see the module docstring)."""
    done = read_done(out)
    if done is None:
        partial = staging_dir(Path(out)) / "last.pt"
        return FoldStatus("todo", "resumes from its last checkpoint" if partial.is_file() else "not trained")
    overrides = list(overrides or [])
    changed = [k for k, v in expected.items() if done.get(k) != v]
    if not changed:
        return FoldStatus("done")
    recorded = list(done.get("overrides", []))
    if changed == ["config_hash"] and recorded and not overrides:  # no ARGS now: keep what ARGS trained
        try:
            own = load_model(models_dir, model, recorded)[0]
        except ConfigError:
            own = None
        if own is not None and config_hash(own, stamp_exclusions(own)) == done["config_hash"]:
            return FoldStatus("kept", f"trained with ARGS '{' '.join(recorded)}'")
    return FoldStatus("stale", ", ".join(STAMP_REASONS[k] for k in changed))


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
    folds_md5 = file_md5(folds_path)
    problems, kept = [], []
    for k, d in zip(folds, dirs):
        done = read_done(d)
        if done is None:
            problems.append(f"fold{k} (not trained)")
            continue
        recorded = list(done.get("overrides", []))  # judged by the config file with its own overrides
        cfg = load_model(comp.models_dir, model, recorded)[0]
        status = fold_status(d, run_stamp(cfg, folds_md5, classes, comp), comp.models_dir, model, recorded)
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
    folds = fold_numbers(folds_path)
    configs = {m: load_model(models_dir, m, overrides)[0] for m in models}
    classes = class_names(comp, read_train(comp))
    folds_md5 = file_md5(folds_path)
    jobs = []
    for m, cfg in configs.items():
        expected = run_stamp(cfg, folds_md5, classes, comp)
        run = run_name(m, cfg)
        for k in folds:
            out = run_dir(run, k, runs)
            jobs.append(FoldJob(m, run, k, str(out / "done.json"),
                                fold_status(out, expected, models_dir, m, overrides)))
    return jobs


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
