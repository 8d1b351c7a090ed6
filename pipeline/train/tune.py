"""`make tune MODEL=m TRIALS=30 [FOLDS=0]`: Optuna's TPE over the model config's `search` space, with
median pruning on the per-epoch validation metric; the best trial becomes configs/models/<m>-tuned.yaml.

The study lives in SQLite, runs/<m>/tune.db, named <m>-<hash> by a hash of its search space and the base
config (the model config without its result-neutral keys): a killed search resumes where it was (TRIALS
counts every finished or pruned trial, whichever process ran it), and several processes can share it. A
changed space or base config starts a new study in the same file and keeps the earlier ones, so the best
trial is always one of the current space. Each trial trains in runs/<m>/tune/<study>/trial<n>/, never beside
the model's own folds. A trial killed midway stays "running" in the study until Optuna's heartbeat declares
it failed; it is then retried with the same parameters.

The search space is declared in the model YAML and validated like every key:

    search:
      lr: [1.0e-4, 1.0e-2, log]         # float, log-uniform
      weight_decay: [0.0, 0.1]          # float, uniform
      batch_size: [16, 64, int]         # integer
      augment: [light, medium, heavy]   # categorical
      epochs: {choices: [10, 20]}       # categorical numbers
"""

from __future__ import annotations

import hashlib
import json
import math
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import yaml

from pipeline.core.config import Competition, config_hash
from pipeline.core.errors import ConfigError
from pipeline.core.io import write_text
from pipeline.nn.models import ModelConfig, load_model, model_config_path, stamp_exclusions
from pipeline.artifacts.runs import read_done

TUNED_SUFFIX = "-tuned"
TUNED_HEADER = "# written by `make tune`"  # a -tuned.yaml without it is the user's and is never overwritten


@dataclass(frozen=True)
class Param:
    name: str
    kind: str  # "float", "int" or "categorical"
    low: float | None = None
    high: float | None = None
    log: bool = False
    choices: tuple = ()

    def suggest(self, trial):
        if self.kind == "categorical":
            return trial.suggest_categorical(self.name, list(self.choices))
        if self.kind == "int":
            return trial.suggest_int(self.name, int(self.low), int(self.high), log=self.log)
        return trial.suggest_float(self.name, self.low, self.high, log=self.log)

    def extremes(self) -> list:
        return list(self.choices) if self.kind == "categorical" else [self.low, self.high]


def _number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def parse_param(name: str, spec, where: str) -> Param:
    """One entry of `search` (see the module docstring); a wrong shape names the key and the forms."""
    forms = "[low, high], [low, high, log], [low, high, int], [a, b, ...] or {choices: [a, b, ...]}"
    if isinstance(spec, dict):
        if set(spec) != {"choices"} or not isinstance(spec["choices"], list) or not spec["choices"]:
            raise ConfigError(f"{where}: key 'search.{name}': expected {forms}")
        return Param(name, "categorical", choices=tuple(spec["choices"]))
    if not isinstance(spec, list) or not spec:
        raise ConfigError(f"{where}: key 'search.{name}': expected {forms}, got {spec!r}")
    if len(spec) in (2, 3) and _number(spec[0]) and _number(spec[1]) and (len(spec) == 2 or spec[2] in ("log", "int")):
        low, high = spec[0], spec[1]
        kind = "int" if (len(spec) == 3 and spec[2] == "int") or (isinstance(low, int) and isinstance(high, int)) \
            else "float"
        log = len(spec) == 3 and spec[2] == "log"
        if not low < high or (log and low <= 0):
            raise ConfigError(f"{where}: key 'search.{name}': need low < high{' and low > 0 for log' if log else ''}, "
                              f"got {spec!r}")
        return Param(name, kind, float(low), float(high), log)
    if any(_number(v) for v in spec) and len(spec) in (2, 3):
        raise ConfigError(f"{where}: key 'search.{name}': {spec!r} is ambiguous; a range is [low, high] or "
                          "[low, high, log|int], numeric choices are {choices: [...]}")
    return Param(name, "categorical", choices=tuple(spec))


def shown(values: dict) -> str:
    """key=value words for a log line, floats to 4 significant digits."""
    return " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in values.items())


def override(name: str, value) -> str:
    return f"{name}={yaml.safe_dump(value, default_flow_style=True).strip().removesuffix('...').strip()}"


def search_space(models_dir: str | Path, model: str) -> list[Param]:
    """The validated search space of a model config: every key a config key that may be searched, every
    bound and choice a value that key accepts."""
    cfg, _ = load_model(models_dir, model)
    where = str(model_config_path(models_dir, model))
    if not cfg.search:
        raise ConfigError(f"{where}: no `search` space to tune; add e.g. search: {{lr: [1.0e-4, 1.0e-2, log]}}")
    fixed = {"search", "stages", "backbone", "in_chans", "pseudo", "tta", "tta_merge", "seed"}
    params = []
    for name, spec in cfg.search.items():
        if name not in ModelConfig.model_fields:
            raise ConfigError(f"{where}: key 'search.{name}': not a model config key")
        if name in fixed:
            raise ConfigError(f"{where}: key 'search.{name}': cannot be searched ({', '.join(sorted(fixed))} are fixed)")
        param = parse_param(name, spec, where)
        for value in param.extremes():  # each bound and choice must be a valid value of the key
            try:
                cfg_v, _ = load_model(models_dir, model, [override(name, int(value) if param.kind == "int" else value)])
                if name == "augment":  # presets and transform lists are checked where they are built
                    from pipeline.nn.augment import build_transform

                    build_transform(cfg_v.augment, 16, [0.5] * 3, [0.5] * 3)
            except ConfigError as e:
                raise ConfigError(f"{where}: key 'search.{name}': {value!r} is not a valid value: {e}") from None
        params.append(param)
    return params


def import_optuna():
    try:
        import optuna
    except ImportError:
        raise ConfigError("make tune: Optuna is not installed; `make install` installs it (or pip install optuna)") from None
    return optuna


def finished_trials(study) -> int:
    from optuna.trial import TrialState

    return sum(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in study.get_trials(deepcopy=False))


def study_name(models_dir: str | Path, model: str, params: list[Param]) -> str:
    """<model>-<hash>: the hash of the parsed search space and of the base config without its result-neutral
    keys (as a run's stamp), so a changed space or base config names a new study and an unchanged one resumes."""
    cfg, _ = load_model(models_dir, model)
    blob = json.dumps({"search": [asdict(p) for p in params], "config": config_hash(cfg, stamp_exclusions(cfg))},
                      sort_keys=True, default=str)
    return f"{model}-{hashlib.md5(blob.encode()).hexdigest()[:10]}"


def open_study(optuna, model: str, name: str, path: Path, direction: str, seed: int):
    """Study `name` in the SQLite file `path`, created or resumed; a new one says which earlier study it keeps."""
    from optuna.storages import RDBStorage

    path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():  # the heartbeat is "experimental" since Optuna 2.9; the warning is noise here
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        storage = RDBStorage(f"sqlite:///{path}", heartbeat_interval=20, grace_period=60)
    names = [s.study_name for s in storage.get_all_studies()]  # oldest first
    earlier = [n for n in names if n != name and (n == model or n.startswith(f"{model}-"))]
    if name not in names and earlier:
        print(f"tune {model}: new study {name} (search space or base config changed; the earlier study "
              f"{earlier[-1]} is kept in {path})", flush=True)
    study = optuna.create_study(study_name=name, storage=storage, load_if_exists=True, direction=direction,
                                pruner=optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=1))
    # a resumed search draws new values, not the first run's again: the seed moves on with the trial count
    study.sampler = optuna.samplers.TPESampler(seed=seed + len(study.get_trials(deepcopy=False)), n_startup_trials=5)
    return study


def tune(comp: Competition, model: str, trials: int, folds: list[int], folds_path: str | Path = "folds/folds.csv",
         runs: str | Path = "runs", seed: int = 0) -> Path | None:
    """Run the study to `trials` finished trials; write <model>-tuned.yaml from the best. -> its path."""
    from pipeline.train.train import train_fold

    optuna = import_optuna()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    params = search_space(comp.models_dir, model)
    scoring = comp.scoring()
    name, db = study_name(comp.models_dir, model, params), Path(runs) / model / "tune.db"
    base = Path(runs) / model / "tune" / name
    study = open_study(optuna, model, name, db, "maximize" if scoring.greater_is_better else "minimize", seed)
    done = finished_trials(study)
    todo = max(trials - done, 0)
    print(f"tune {model}: {len(params)} parameter(s) ({', '.join(p.name for p in params)}) on fold(s) "
          f"{', '.join(map(str, folds))}; {done} trial(s) finished in {db}, {todo} to go (study {name})", flush=True)

    def objective(trial) -> float:
        values = {p.name: p.suggest(trial) for p in params}
        words = [override(k, v) for k, v in values.items()]
        cfg, source = load_model(comp.models_dir, model, words)
        started, scores = time.time(), []
        for i, fold in enumerate(folds):
            def report(epoch: int, metric: float, offset=i * cfg.epochs) -> None:
                if math.isfinite(metric):
                    trial.report(metric, offset + epoch)
                if i == 0 and trial.should_prune():
                    print(f"tune {model}: trial {trial.number} pruned after epoch {epoch + 1} ({comp.metric} "
                          f"{metric:.4f}, below the median; {shown(values)})", flush=True)
                    raise optuna.TrialPruned(f"epoch {epoch + 1}: {metric:.4f}")
            out = train_fold(comp, cfg, model, fold, folds_path=folds_path, runs=base / f"trial{trial.number}",
                             source=source, overrides=words, on_epoch=report)
            scores.append(read_done(out)["score"])
        score = sum(scores) / len(scores)
        print(f"tune {model}: trial {trial.number} {comp.metric} {score:.4f} ({shown(values)}; "
              f"{time.time() - started:.0f}s)", flush=True)
        return score

    if todo:
        study.optimize(objective, n_trials=todo, gc_after_trial=True)
    from optuna.trial import TrialState

    if not study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        print(f"tune {model}: no trial finished; nothing to write")
        return None
    best = study.best_trial
    print(f"tune {model}: best trial {best.number}: {comp.metric} {best.value:.4f} with {shown(best.params)}",
          flush=True)
    return write_tuned(comp.models_dir, model, best.params, f"{comp.metric} {best.value:.5f}", best.number,
                       finished_trials(study), folds)


def write_tuned(models_dir: str | Path, model: str, values: dict, score: str, number: int, n: int,
                folds: list[int]) -> Path:
    """configs/models/<model>-tuned.yaml: the model's YAML with the best values and no `search`, headed by a
    comment naming its score; validated before it is written. A -tuned.yaml we did not write is left alone."""
    source = model_config_path(models_dir, model)
    out = source.with_name(f"{model}{TUNED_SUFFIX}.yaml")
    if out.is_file() and not out.read_text().startswith(TUNED_HEADER):
        raise ConfigError(f"{out} exists and was not written by `make tune`; it is left alone (rename it)")
    data = yaml.safe_load(source.read_text()) or {}
    data.pop("search", None)
    data.update(values)
    header = (f"{TUNED_HEADER} from {source.name}: best of {n} trial(s) (trial {number}), {score} on fold(s) "
              f"{', '.join(map(str, folds))}.\n# Train it like any model: make train-all MODELS={model}{TUNED_SUFFIX}\n")
    text = header + yaml.safe_dump(data, sort_keys=False)
    write_text(out, text)
    try:
        load_model(models_dir, f"{model}{TUNED_SUFFIX}")
    except ConfigError:
        out.unlink()
        raise
    print(f"tune {model}: wrote {out}")
    return out
