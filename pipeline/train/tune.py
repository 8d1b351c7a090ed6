"""`make tune MODEL=m TRIALS=30 [FOLDS=0]`: Optuna's TPE over the model config's `search` space, with
median pruning on the per-epoch validation metric; the best trial becomes configs/models/<m>-tuned.yaml.
The space, its forms and the tuned file: pipeline.train.tune_space.

Everything a user gives is checked before any trial trains: TRIALS (at least 1), FOLDS (folds of
folds.csv), the search space, and a <m>-tuned.yaml that `make tune` did not write or that was edited since.

The study lives in SQLite, runs/<m>/tune.db, named <m>-<hash> by a hash of its search space and the base
config (the model config without its result-neutral keys); a changed space or base config starts a new
study in the same file and keeps the earlier ones. TRIALS counts the trials that completed, were pruned or
failed, plus those another live process is running: each process (two GPUs: two `make tune` beside each
other) claims a trial under a file lock (runs/<m>/.tune.lock) only while that count is below TRIALS, so
together they stop at exactly TRIALS. Trial n draws its values with the sampler seeded by seed + n, so
processes never repeat each other's trials. A trial that fails (non-finite loss, out of memory, any
TrainingError) is recorded as failed with its reason and the search goes on; the summary counts them.

Each trial trains in runs/<m>/tune/<study>/trial<n>/, never beside the model's own folds. When a trial
ends, the checkpoints of every finished trial but the best one are deleted (logs stay), and the best
keeps only its best.pt; the disk used is printed at the end. A trial whose process died (killed, machine
restarted) stays "running" in the study until the next `make tune` on that machine finds its process gone:
it is then marked failed, not counted (another trial takes its place), and its folder removed.
"""

from __future__ import annotations

import fcntl
import gc
import hashlib
import json
import math
import os
import re
import shutil
import socket
import sys
import time
from contextlib import contextmanager, suppress
from dataclasses import asdict, dataclass
from pathlib import Path

from pipeline.core.config import Competition, config_hash
from pipeline.core.errors import ConfigError, PipelineError
from pipeline.nn.models import load_model, stamp_exclusions
from pipeline.artifacts.runs import read_done
from pipeline.train.tune_space import Param, check_tuned_writable, override, search_space, shown, write_tuned


class TuneError(PipelineError):
    """The study's database was lost, or no trial completed; the message says what to do."""


def import_optuna():
    try:
        import optuna
    except ImportError:
        raise ConfigError("make tune: Optuna is not installed; `make install` installs it (or pip install optuna)") from None
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna


def check_trials(trials: int) -> None:
    if trials < 1:
        raise ConfigError(f"TRIALS={trials}: expected a whole number of at least 1 (the trials the study holds "
                          "when the search ends)")


def parse_folds(text: str | list[int], folds_path: str | Path) -> list[int]:
    """FOLDS ('0', '0 1', '0,1') as fold numbers, each a fold of folds.csv; a wrong value names FOLDS and the
    folds that exist."""
    from pipeline.artifacts.folds import fold_numbers

    have = fold_numbers(folds_path)
    words = text.replace(",", " ").split() if isinstance(text, str) else [str(k) for k in text]
    listed = f"{folds_path} has folds {', '.join(map(str, have))}"
    if not words:
        raise ConfigError(f"FOLDS={text!r}: no fold given; give the folds each trial trains, e.g. FOLDS=0 or "
                          f"FOLDS=\"0 1\" ({listed})")
    bad = [w for w in words if not re.fullmatch(r"\d+", w) or int(w) not in have]
    if bad:
        raise ConfigError(f"FOLDS={text!r}: {', '.join(bad)} is not a fold; {listed}")
    return list(dict.fromkeys(int(w) for w in words))


def study_name(models_dir: str | Path, model: str, params: list[Param]) -> str:
    """<model>-<hash>: the hash of the parsed search space and of the base config without its result-neutral
    keys (as a run's stamp), so a changed space or base config names a new study and an unchanged one resumes."""
    cfg, _ = load_model(models_dir, model)
    blob = json.dumps({"search": [asdict(p) for p in params], "config": config_hash(cfg, stamp_exclusions(cfg))},
                      sort_keys=True, default=str)
    return f"{model}-{hashlib.md5(blob.encode()).hexdigest()[:10]}"


def first_line(e: BaseException) -> str:
    """The first line of an error, its type named unless it is one of ours (whose message says it all)."""
    text = (str(e).strip().splitlines() or [""])[0]
    return text if isinstance(e, PipelineError) and text else f"{type(e).__name__}: {text}"


# --- which process runs a trial ---------------------------------------------------------------------


def _stat(pid: int) -> list[str]:
    """The fields of /proc/<pid>/stat after the command name (state first); [] where there is no /proc."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return []


def process_start(pid: int) -> str | None:
    """The start time of a process (Linux), so a reused pid is not taken for the trial's."""
    fields = _stat(pid)
    return fields[19] if len(fields) > 19 else None


def owner() -> dict:
    return {"host": socket.gethostname(), "pid": os.getpid(), "pid_start": process_start(os.getpid())}


def alive(attrs: dict) -> bool:
    """Whether the process that claimed a running trial still runs. One on another machine is taken as alive;
    one of this machine without an owner (claims are written under the lock) is not."""
    if attrs.get("host", socket.gethostname()) != socket.gethostname():
        return True
    pid = attrs.get("pid")
    if pid is None:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    if _stat(pid)[:1] == ["Z"]:  # killed, not yet reaped by its parent
        return False
    return attrs.get("pid_start") in (None, process_start(pid))


# --- the study in its SQLite file -------------------------------------------------------------------


@dataclass
class Store:
    optuna: object
    study: object
    db: Path
    base: Path  # runs/<m>/tune/<study>/
    inode: int = 0

    def check(self) -> None:
        """The database is still the file the search opened."""
        try:
            same = self.db.stat().st_ino == self.inode and self.db.is_file()
        except OSError:  # deleted between two looks
            same = False
        if not same:
            raise TuneError(f"{self.db}: the study's database was deleted or replaced while `make tune` ran; the "
                            f"trials it recorded are lost (their folders stay in {self.base}). Rerun `make tune` "
                            "to start the study again")

    @contextmanager
    def guard(self):
        """Storage errors name the database file (one line, no traceback)."""
        from sqlalchemy.exc import SQLAlchemyError

        if self.inode:
            self.check()
        try:
            yield
        except (SQLAlchemyError, self.optuna.exceptions.StorageInternalError) as e:
            if self.inode:
                self.check()  # deleted or replaced while it was being written: say so
            raise TuneError(f"{self.db}: the study's database could not be read or written ({first_line(e)}); "
                            "if it was deleted or moved, rerun `make tune` to start the study again") from None

    @contextmanager
    def locked(self):
        """One process at a time counts, claims and closes trials (runs/<m>/.tune.lock)."""
        if self.inode:
            self.check()  # before the lock file: a removed runs/<m>/ is named as the lost database
        with open(self.db.with_name(".tune.lock"), "a") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                with self.guard():
                    yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)

    def trials(self, *states) -> list:
        return self.study.get_trials(deepcopy=False, states=states or None)

    def trial_dir(self, number: int) -> Path:
        return self.base / f"trial{number}"


def open_store(optuna, model: str, name: str, db: Path, base: Path, direction: str, seed: int) -> Store:
    """Study `name` in the SQLite file `db`, created or resumed; a new one says which earlier study it keeps."""
    from optuna.storages import RDBStorage

    db.parent.mkdir(parents=True, exist_ok=True)
    store = Store(optuna, None, db, base)
    with store.locked():
        storage = RDBStorage(f"sqlite:///{db}", engine_kwargs={"connect_args": {"timeout": 120}})
        names = [s.study_name for s in storage.get_all_studies()]  # oldest first
        earlier = [n for n in names if n != name and (n == model or n.startswith(f"{model}-"))]
        if name not in names and earlier:
            print(f"tune {model}: new study {name} (search space or base config changed; the earlier study "
                  f"{earlier[-1]} is kept in {db})", flush=True)
        store.study = optuna.create_study(
            study_name=name, storage=storage, load_if_exists=True, direction=direction,
            sampler=optuna.samplers.TPESampler(seed=seed, n_startup_trials=5),
            pruner=optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=1))
        store.inode = db.stat().st_ino
    return store


def tally(store: Store) -> dict[str, list]:
    """The study's trials by outcome: complete, pruned, failed (an error, counted), killed (not counted), running."""
    groups: dict[str, list] = {k: [] for k in ("complete", "pruned", "failed", "killed", "running")}
    for t in store.trials():
        state = t.state.name
        if state == "FAIL":
            groups["failed" if "error" in t.user_attrs else "killed"].append(t)
        elif state in ("COMPLETE", "PRUNED", "RUNNING"):
            groups[state.lower()].append(t)
    return groups


def reap(store: Store, model: str) -> None:
    """Running trials whose process has ended: failed (not counted), their folders removed. Under the lock."""
    from optuna.trial import TrialState

    for t in store.trials(TrialState.RUNNING):
        if alive(t.user_attrs):
            continue
        store.study.tell(t.number, state=TrialState.FAIL, skip_if_finished=True)
        folder = store.trial_dir(t.number)
        shutil.rmtree(folder, ignore_errors=True)
        print(f"tune {model}: trial {t.number} was left running by process {t.user_attrs.get('pid', '?')}, which "
              f"has ended: marked failed (not counted; a new trial takes its place) and {folder} removed",
              flush=True)


def claim(store: Store, seed: int):
    """A new trial of this process, its sampler seeded by its number (processes never repeat each other)."""
    trial = store.study.ask()
    for key, value in owner().items():
        trial.set_user_attr(key, value)
    store.study.sampler = store.optuna.samplers.TPESampler(seed=seed + trial.number, n_startup_trials=5)
    shutil.rmtree(store.trial_dir(trial.number), ignore_errors=True)  # left by a study whose database was lost
    return trial


def keep_best_checkpoint(store: Store) -> None:
    """Delete the checkpoints of every finished trial but the best's best.pt (logs stay). Under the lock."""
    from optuna.trial import TrialState

    complete = store.trials(TrialState.COMPLETE)
    best = store.study.best_trial.number if complete else None
    for t in store.trials(TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL):
        for ckpt in store.trial_dir(t.number).rglob("*.pt"):
            if not (t.number == best and ckpt.name == "best.pt" and not ckpt.parent.name.endswith(".partial")):
                ckpt.unlink(missing_ok=True)


def disk_used(folder: Path) -> str:
    size = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) if folder.is_dir() else 0
    return f"{size / 1e6:.1f} MB"


# --- trials -----------------------------------------------------------------------------------------


@dataclass
class Search:
    comp: Competition
    model: str
    params: list[Param]
    folds: list[int]
    folds_path: str | Path
    store: Store

    def reporter(self, trial, values: dict, i: int, epochs: int):
        """The per-epoch callback of fold i: report to the pruner, which may stop the trial."""
        optuna, model, metric = self.store.optuna, self.model, self.comp.metric

        def report(epoch: int, score: float) -> None:
            with self.store.guard():
                if math.isfinite(score):
                    trial.report(score, i * epochs + epoch)
                prune = i == 0 and trial.should_prune()
            if prune:
                print(f"tune {model}: trial {trial.number} pruned after epoch {epoch + 1} ({metric} {score:.4f}, "
                      f"below the median; {shown(values)})", flush=True)
                raise optuna.TrialPruned(f"epoch {epoch + 1}: {score:.4f}")
        return report

    def run(self, trial) -> tuple[str, float | None, str | None]:
        """Train one trial's folds -> (state, score, error): COMPLETE, PRUNED, or FAIL with the first line
        of the error (a TrainingError such as a non-finite loss or out of memory, any other error of the trial,
        a non-finite score). Only a lost database or an interrupt ends the search."""
        from pipeline.train.train import train_fold

        with self.store.guard():
            values = {p.name: p.suggest(trial) for p in self.params}
        words, started, scores = [override(k, v) for k, v in values.items()], time.time(), []
        try:
            cfg, source = load_model(self.comp.models_dir, self.model, words)
            for i, fold in enumerate(self.folds):
                out = train_fold(self.comp, cfg, self.model, fold, folds_path=self.folds_path,
                                 runs=self.store.trial_dir(trial.number), source=source, overrides=words,
                                 on_epoch=self.reporter(trial, values, i, cfg.epochs))
                scores.append(read_done(out)["score"])
        except self.store.optuna.TrialPruned:
            return "PRUNED", None, None
        except TuneError:
            raise
        except Exception as e:  # diverged, out of memory, an overflow, values that do not go together
            return self.failed(trial, values, first_line(e))
        score = sum(scores) / len(scores)
        if not math.isfinite(score):
            return self.failed(trial, values, f"non-finite {self.comp.metric} {score}")
        print(f"tune {self.model}: trial {trial.number} {self.comp.metric} {score:.4f} ({shown(values)}; "
              f"{time.time() - started:.0f}s)", flush=True)
        return "COMPLETE", score, None

    def failed(self, trial, values: dict, error: str) -> tuple[str, None, str]:
        print(f"tune {self.model}: trial {trial.number} failed ({shown(values)}): {error}; the search goes on",
              flush=True)
        return "FAIL", None, error

    def close(self, trial, state: str, score: float | None, error: str | None) -> None:
        """Record a trial's outcome (under the lock) and drop the checkpoints no longer needed."""
        from optuna.trial import TrialState

        with self.store.locked():
            if error is not None:
                trial.set_user_attr("error", error[:500])
            self.store.study.tell(trial, score if state == "COMPLETE" else None, state=TrialState[state])
            keep_best_checkpoint(self.store)
        gc.collect()
        if "torch" in sys.modules:
            import torch

            if torch.cuda.is_available():
                torch.cuda.empty_cache()


def trials_loop(search: Search, trials: int, seed: int) -> None:
    """Claim and run trials until the study counts `trials` (whichever processes ran them)."""
    store = search.store
    while True:
        with store.locked():
            reap(store, search.model)
            groups = tally(store)
            if sum(len(groups[k]) for k in ("complete", "pruned", "failed", "running")) >= trials:
                return
            trial = claim(store, seed)
        try:
            outcome = search.run(trial)
        except TuneError:
            raise
        except BaseException:  # an interrupt: the trial is closed, not counted
            with suppress(Exception):
                search.close(trial, "FAIL", None, None)
            raise
        search.close(trial, *outcome)


def summary(store: Store, model: str) -> str:
    groups = tally(store)
    counts = ", ".join(f"{len(groups[k])} {k}" for k in ("complete", "pruned", "failed"))
    lines = [f"tune {model}: study {store.study.study_name}: {counts}"
             + (f"; {len(groups['killed'])} killed midway (not counted)" if groups["killed"] else "")]
    reasons: dict[str, list[int]] = {}
    for t in groups["failed"]:
        reasons.setdefault(t.user_attrs["error"], []).append(t.number)
    lines += [f"tune {model}: {len(numbers)} failed: {error} (trial(s) {', '.join(map(str, numbers))})"
              for error, numbers in reasons.items()]
    return "\n".join(lines)


def tune(comp: Competition, model: str, trials: int, folds: str | list[int], folds_path: str | Path = "folds/folds.csv",
         runs: str | Path = "runs", seed: int = 0) -> Path:
    """Run the study to `trials` counted trials; write <model>-tuned.yaml from the best. -> its path."""
    optuna = import_optuna()
    check_trials(trials)  # everything the user gave, before any trial
    folds = parse_folds(folds, folds_path)
    params = search_space(comp.models_dir, model)
    check_tuned_writable(comp.models_dir, model)
    scoring = comp.scoring()
    name, db = study_name(comp.models_dir, model, params), Path(runs) / model / "tune.db"
    store = open_store(optuna, model, name, db, Path(runs) / model / "tune" / name,
                       "maximize" if scoring.greater_is_better else "minimize", seed)
    with store.locked():
        reap(store, model)
        groups = tally(store)
    done = sum(len(groups[k]) for k in ("complete", "pruned", "failed"))
    running = len(groups["running"])
    print(f"tune {model}: search space of {comp.models_dir}/{model}.yaml, {len(params)} key(s):\n"
          + "".join(f"tune {model}:   {p.describe()}\n" for p in params)
          + f"tune {model}: fold(s) {', '.join(map(str, folds))}; {done} trial(s) finished in {db}, "
          + (f"{running} running in another process, " if running else "")
          + f"{max(trials - done - running, 0)} to go (study {name})", flush=True)
    trials_loop(Search(comp, model, params, folds, folds_path, store), trials, seed)
    with store.guard():
        print(summary(store, model), flush=True)
        complete = store.trials(optuna.trial.TrialState.COMPLETE)
        if not complete:
            raise TuneError(f"tune {model}: no trial of study {name} completed (see the failures above); nothing "
                            f"written. Narrow the search space in {comp.models_dir}/{model}.yaml, or raise TRIALS")
        best = store.study.best_trial
        counted = sum(len(v) for k, v in tally(store).items() if k in ("complete", "pruned", "failed"))
    print(f"tune {model}: best trial {best.number}: {comp.metric} {best.value:.4f} with {shown(best.params)}",
          flush=True)
    out = write_tuned(comp.models_dir, model, best.params, f"{comp.metric} {best.value:.5f}", best.number,
                      counted, folds)
    print(f"tune {model}: {store.base} uses {disk_used(store.base)} (the best trial's best.pt and every trial's "
          "logs; other checkpoints are deleted as trials end)", flush=True)
    return out
