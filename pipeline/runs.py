"""Run folders: `runs/<run>/fold<k>/`, and what says a fold is finished. No torch here, so `plan` is quick.

Training writes `done.json` last, holding the stamp of what the fold was trained from: the config hash
(result-neutral keys left out), the md5 of folds.csv, the classes, the task and the metric. A fold is
done when its done.json holds the stamp the current config and files give; otherwise it is stale, and
`plan` says why.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from pipeline.config import Competition, config_hash
from pipeline.data import DataError, class_names, read_train
from pipeline.folds import read_folds
from pipeline.io import file_md5
from pipeline.models import RESULT_NEUTRAL_KEYS, ModelConfig, load_model

PSEUDO_SUFFIX = "-pseudo"  # a pseudo-label round trains runs/<model>-pseudo/ beside round 0


def run_name(model: str, cfg: ModelConfig) -> str:
    """The run folder name of a model config: a pseudo-label round gets its own runs and tables."""
    return model + (PSEUDO_SUFFIX if cfg.pseudo else "")


def run_dir(run: str, fold: int, runs: str | Path = "runs") -> Path:
    return Path(runs) / run / f"fold{fold}"


def run_stamp(cfg: ModelConfig, folds_md5: str, classes: list[str], comp: Competition) -> dict:
    """What a finished fold was trained from; done.json holds it."""
    return {
        "config_hash": config_hash(cfg, RESULT_NEUTRAL_KEYS),
        "folds_md5": folds_md5,
        "classes": classes,
        "task": comp.task,
        "metric": comp.metric,
    }


def read_done(out: Path) -> dict | None:
    done = Path(out) / "done.json"
    return json.loads(done.read_text()) if done.is_file() else None


STAMP_REASONS = {"config_hash": "config changed", "folds_md5": "folds.csv changed", "classes": "classes changed",
                 "task": "task changed", "metric": "metric changed"}


def stale_reason(out: Path, expected: dict) -> str | None:
    """None when the fold in `out` is done with the `expected` stamp; else why it must be trained."""
    done = read_done(out)
    if done is None:
        return "resumes from last.pt" if (Path(out) / "last.pt").is_file() else "not trained"
    changed = [STAMP_REASONS[k] for k, v in expected.items() if done.get(k) != v]
    return ", ".join(changed) or None


def is_done(out: Path, expected: dict) -> bool:
    return stale_reason(out, expected) is None


def trained_models(runs: str | Path = "runs") -> list[str]:
    """Names of runs/<name>/ folders holding at least one finished fold."""
    runs = Path(runs)
    if not runs.is_dir():
        return []
    return sorted(p.name for p in runs.iterdir() if p.is_dir() and any(p.glob("fold*/done.json")))


def fold_runs(name: str, folds: list[int], runs: str | Path, folds_md5: str) -> list[Path]:
    """The finished run folder of every fold, checked against the current folds.csv."""
    dirs = [run_dir(name, k, runs) for k in folds]
    missing = [k for k, d in zip(folds, dirs) if read_done(d) is None]
    if missing:
        raise DataError(f"{name}: fold(s) {missing} not trained yet; run `make train-all MODELS={name}`")
    stale = [k for k, d in zip(folds, dirs) if read_done(d)["folds_md5"] != folds_md5]
    if stale:
        raise DataError(f"{name}: fold(s) {stale} were trained on another folds.csv; run `make train-all` again")
    return dirs


@dataclass(frozen=True)
class FoldJob:
    """One model x fold of a training plan; `reason` is None when the fold is done."""

    model: str
    run: str
    fold: int
    target: str  # runs/<run>/fold<k>/done.json, the Make target
    reason: str | None


def plan_training(comp: Competition, models_dir: str | Path, models: list[str], folds_path: str | Path,
                  runs: str | Path = "runs", overrides: list[str] | None = None) -> list[FoldJob]:
    """Every model x fold with whether it is done, as `train` would decide it for the same config and
    overrides. Every model config is loaded first, so a bad one fails before any training."""
    folds_path = Path(folds_path)
    folds = sorted(int(k) for k in read_folds(folds_path, comp.id_col)["fold"].unique())
    configs = {m: load_model(models_dir, m, overrides)[0] for m in models}
    classes = class_names(comp, read_train(comp))
    folds_md5 = file_md5(folds_path)
    jobs = []
    for m, cfg in configs.items():
        expected = run_stamp(cfg, folds_md5, classes, comp)
        run = run_name(m, cfg)
        for k in folds:
            out = run_dir(run, k, runs)
            jobs.append(FoldJob(m, run, k, str(out / "done.json"), stale_reason(out, expected)))
    return jobs
