"""`predict`: trained folds -> stacking/<model>.oof.parquet and stacking/<model>.test.parquet, with TTA.

Each fold's best checkpoint predicts its own validation rows (OOF) and the whole test set; the test
table is the mean of the folds' probabilities. Test images are read once per model: every batch goes
through all fold models and all TTA views. A model whose tables were made from the same checkpoints,
folds and TTA is skipped.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from pipeline.core.config import NEUTRAL_KEYS, Competition, config_hash
from pipeline.core.data import class_names, encode_targets, read_sample, read_train
from pipeline.core.errors import ConfigError, DataError
from pipeline.core.meta import coded_meta, test_table_path
from pipeline.artifacts.folds import REPEATS_CSV, competition_identity, fold_layout, fold_of
from pipeline.artifacts.record import changes, choose, file_md5, record_path, write_record
from pipeline.artifacts.runs import fold_runs, trained_models
from pipeline.artifacts.tables import read_meta, sidecar, table_path, write_table
from pipeline.nn.tta import check_merge, expand, merge


def predict_record(stacking: str | Path, name: str) -> Path:
    """The record `predict` writes beside a model's tables: stacking/<name>.record.json."""
    return record_path(stacking, name)


def set_aside_csv(path: Path, model: str) -> None:
    """A CSV table that an earlier version of `predict` wrote for this model (its sidecar says so) moves to
    stacking/stale/ before the Parquet table replaces it; a CSV of your own stays and is refused beside it."""
    old = path.with_suffix(".csv")
    if old.is_file() and read_meta(old).get("model") == model and "tta" in read_meta(path.with_name(
            path.name.replace(".test", ".oof"))):
        (old.parent / "stale").mkdir(exist_ok=True)
        old.replace(old.parent / "stale" / old.name)
        print(f"note: {old} (written by an earlier predict as CSV) moved to {old.parent / 'stale'}/")


def predict_model(
    comp: Competition,
    name: str,
    runs: str | Path = "runs",
    folds_path: str | Path = "folds/folds.csv",
    stacking: str | Path = "stacking",
    tta: str | list[str] | None = None,
    tta_merge: str | None = None,
    out_name: str | None = None,
    force: bool = False,
) -> dict:
    """Write the model's OOF and test tables; return {'cv': ..., 'per_fold': [...]}.

    Up to date (its record: the same folds' done.json, folds.csv, train and sample tables, TTA, and the
    tables as written): nothing is loaded. TTA= given once sticks for this model's later predicts."""
    folds_path, stacking = Path(folds_path), Path(stacking)
    layout = fold_layout(folds_path)
    fold_ids = layout.folds
    train = read_train(comp)
    classes = class_names(comp, train)
    dirs = fold_runs(comp, name, fold_ids, runs, folds_path, classes)
    out_name = out_name or name
    oof_path, test_path = table_path(stacking, f"{out_name}.oof"), table_path(stacking, f"{out_name}.test")
    record = predict_record(stacking, out_name)
    chosen = {"tta": choose(record, "tta", tta, None, "TTA"),  # TTA=config: back to the config's own
              "tta_merge": choose(record, "tta_merge", tta_merge, None, "tta_merge")}
    chosen = {k: v for k, v in chosen.items() if v is not None and v != "config"}
    tta, tta_merge = chosen.get("tta"), chosen.get("tta_merge")
    trained = yaml.safe_load((dirs[0] / "config.yaml").read_text())  # the fold's resolved config: no torch
    views = expand(tta if tta is not None else trained["tta"])
    how = tta_merge or trained["tta_merge"]
    check_merge(how)  # an unknown merge fails before any work
    params = {"model": name, "tta": views, "tta_merge": how, "competition": config_hash(comp, NEUTRAL_KEYS)}
    inputs = [folds_path, comp.train_csv_path, comp.sample_submission_path, *(d / "done.json" for d in dirs),
              *([folds_path.with_name(REPEATS_CSV)] if layout.repeats > 1 else []),
              *([test_table_path(comp)] if trained.get("meta_head") else [])]  # its test rows' metadata
    if not force and not changes(record, params, inputs):  # both tables, from these very folds, as written
        meta = read_meta(oof_path)
        print(f"{out_name}: tables up to date ({comp.metric} {meta['cv']:.4f}); --force remakes them")
        return meta

    from pipeline.nn.infer import EvalSpec, device, image_logits, load_fold_model  # torch: only with work to do

    dev = device()
    loaded = [load_fold_model(d, "best", dev) for d in dirs]
    cfg, ckpt = loaded[0][1], loaded[0][2]
    if ckpt["classes"] != classes:
        raise DataError(f"{name}: trained on classes {ckpt['classes']}, the competition now has {classes}")
    y = encode_targets(comp, train, classes)
    ids = train[comp.id_col].to_numpy()
    fold_index = [fold_of(folds_path, comp, ids.tolist(), r) for r in range(layout.repeats)]
    spec = EvalSpec.of(cfg, ckpt["data_config"])
    test_ids = read_sample(comp)[comp.id_col].tolist()
    train_meta, test_meta = coded_meta(comp, ckpt.get("meta"), ids.tolist(), test_ids)  # meta_head, else None

    oofs = np.zeros((layout.repeats, len(ids), len(classes)))  # each repeat's split covers every row once
    per_fold = []
    print(f"{out_name}: {len(ids)} OOF rows over {len(fold_ids)} folds"
          + (f" ({layout.repeats} repeats of {layout.n_folds})" if layout.repeats > 1 else "")
          + f", then {len(test_ids)} test images x {len(fold_ids)} folds; TTA {'+'.join(views)}", flush=True)
    for f, (model, _, _) in zip(fold_ids, loaded):
        r, k = layout.split_of(f) if layout.repeats > 1 else (0, f)
        rows = np.flatnonzero(fold_index[r] == k)
        paths = [comp.image_path("train", i) for i in ids[rows]]
        oofs[r, rows] = merge(image_logits([model], paths, spec, views, dev, desc=f"{out_name} fold{f} OOF",
                                           meta=None if train_meta is None else train_meta[rows])[0], how, comp.task)
        per_fold.append(comp.scoring().score(y[rows], oofs[r, rows]))
        print(f"  {layout.name(f)} OOF: {comp.metric} {per_fold[-1]:.4f} ({len(rows)} rows)", flush=True)
    per_repeat = [comp.scoring().score(y, o) for o in oofs]
    oof = oofs.mean(axis=0)  # each row: the mean of its R held-out predictions
    cv = comp.scoring().score(y, oof)

    test_logits = image_logits([m for m, _, _ in loaded], [comp.image_path("test", i) for i in test_ids], spec,
                               views, dev, desc=f"{out_name} test", meta=test_meta)
    test = np.mean([merge(fold_logits, how, comp.task) for fold_logits in test_logits], axis=0)

    identity, folds_md5 = competition_identity(comp, ids), file_md5(folds_path)
    set_aside_csv(oof_path, name)
    set_aside_csv(test_path, name)
    meta = {"folds_md5": folds_md5, "competition": identity, "model": name,
            "metric": comp.metric, "cv": cv, "per_fold": per_fold, "tta": views, "tta_merge": how, "classes": classes}
    if layout.repeats > 1:
        meta["per_repeat"] = per_repeat
    write_table(oof_path, ids, oof, classes, comp.id_col, meta=meta)
    write_table(test_path, test_ids, test, classes, comp.id_col, meta={"folds_md5": folds_md5,
                                                                       "competition": identity, "model": name})
    write_record(record, "predict", params, inputs, [oof_path, test_path, sidecar(oof_path), sidecar(test_path)],
                 choices=chosen)
    folds_txt = " ".join(f"{s:.4f}" for s in per_fold)
    if layout.repeats > 1:
        print(f"{out_name}: {comp.metric} per repeat {' '.join(f'{s:.4f}' for s in per_repeat)}; the mean of the "
              f"{layout.repeats} repeats' OOF scores {cv:.4f}")
    print(f"{out_name}: {comp.metric} {cv:.4f} (folds {folds_txt}; TTA {'+'.join(views)}, {how}) -> {oof_path}, {test_path}")
    return meta


def predict_all(comp: Competition, models: list[str] | None = None, runs: str | Path = "runs", **kwargs) -> dict:
    names = models or trained_models(runs)
    if not names:
        raise DataError(f"no trained models in {runs}/; run `make train-all` first")
    return {name: predict_model(comp, name, runs=runs, **kwargs) for name in names}


def spread_predict(names: list[str], slots: list[tuple[str, ...]], command: list[str], runs: str | Path) -> bool:
    """`command --models <name>` for each model in its own process on a free GPU slot, its log in
    runs/<model>/logs/predict.log; -> whether every model succeeded (a summary says which did not)."""
    from pipeline.launch.launch import Job, run_local, summary

    jobs = [Job(f"{name} predict", [*command, "--runs", str(runs), "--models", name],
                str(Path(runs) / name / "logs" / "predict.log")) for name in names]
    print(f"predict: {len(jobs)} models on {len(slots)} GPU slot(s)", flush=True)
    results = run_local(jobs, slots)
    print(summary(results, "predict"), flush=True)
    return all(r.ok for r in results)


# --- pseudo-labels --------------------------------------------------------------------------------

UNCALIBRATED = {"rank", "vote"}  # blends whose outputs are scores or one-hot votes, not probabilities


def select_pseudo(
    proba: pd.DataFrame,
    task: str,
    threshold: float | None = None,
    top_frac: float | None = None,
    prior: pd.Series | None = None,
) -> pd.Index:
    """Confident rows of a test probability table (indexed by id).

    threshold: rows whose top probability reaches it; then no class may take more than 1.5x its share
    of the training set among the chosen rows (the least confident extras are dropped).
    top_frac: per predicted class, its most confident fraction of rows; balanced by construction.
    Multilabel: a row is confident when every label is at least `threshold` away from undecided.
    """
    if (threshold is None) == (top_frac is None):
        raise ConfigError("choose one of threshold or top_frac")
    if task == "multilabel":
        t = threshold if threshold is not None else 0.9
        conf = np.minimum(proba.to_numpy(), 1 - proba.to_numpy()).max(axis=1)
        return proba.index[conf <= 1 - t]
    conf = proba.max(axis=1)
    label = proba.idxmax(axis=1)
    if top_frac is not None:
        keep = []
        for _, group in conf.groupby(label):
            n = int(np.floor(len(group) * top_frac))
            keep.extend(group.sort_values(ascending=False).index[:n])
        return pd.Index(keep)
    chosen = conf[conf >= threshold]
    if prior is not None and len(chosen):
        keep = []
        for cls, group in chosen.groupby(label[chosen.index]):
            cap = int(np.ceil(1.5 * prior.get(cls, 0.0) * len(chosen) - 1e-9))  # no float round-up
            keep.extend(group.sort_values(ascending=False).index[:cap])
        chosen = chosen.loc[keep]
    return chosen.index


def write_pseudo(
    comp: Competition,
    source: str | Path,
    out: str | Path = "folds/pseudo.csv",
    threshold: float | None = None,
    top_frac: float | None = None,
    soft: bool = False,
) -> Path:
    """folds/pseudo.csv from a test probability table: hard labels (id, target) or soft (id, classes)."""
    from pipeline.core.io import write_csv
    from pipeline.artifacts.tables import read_table

    if comp.task == "regression":
        raise ConfigError("pseudo-labels pick confident test rows by their probabilities; task regression has none. "
                          "Write folds/pseudo.csv yourself (id + the target columns) to train on predicted values")
    train = read_train(comp)
    classes = class_names(comp, train)
    test_ids = read_sample(comp)[comp.id_col].tolist()
    proba = read_table(source, comp.id_col, classes, expected_ids=test_ids, task=comp.task)
    method = read_meta(source).get("method")
    if threshold is None and top_frac is None:  # defaults: a probability threshold, or ranks where scores are not
        threshold, top_frac = (None, 0.3) if method in UNCALIBRATED else (0.95, None)
    if threshold is not None and method in UNCALIBRATED:
        raise ConfigError(
            f"{source} comes from the {method} blend, whose scores are not probabilities; a probability "
            "threshold means nothing there. Use TOP_FRAC=0.3 (most confident fraction per class) or MODEL=<name>"
        )
    prior = None
    if comp.task != "multilabel":
        prior = train[comp.target].astype(str).value_counts(normalize=True)
        prior.index = prior.index.astype(str)
    chosen = select_pseudo(proba, comp.task, threshold, top_frac, prior)
    if len(chosen) == 0:
        raise DataError(f"no test row of {source} passes the selection (threshold={threshold}, top_frac={top_frac}); "
                        "lower THRESHOLD or use TOP_FRAC")
    picked = proba.loc[chosen]
    if soft or comp.task == "multilabel":
        df = picked.reset_index()
    else:
        df = pd.DataFrame({comp.id_col: picked.index, comp.target: picked.idxmax(axis=1).to_numpy()})
    write_csv(out, df)
    counts = picked.idxmax(axis=1).value_counts().reindex(classes, fill_value=0) if comp.task != "multilabel" else None
    print(f"pseudo-labels: {len(df)} of {len(proba)} test rows from {source} -> {out} "
          f"({'soft' if soft else 'hard'} labels)")
    if counts is not None:
        print("per class: " + ", ".join(f"{c} {n}" for c, n in counts.items()))
    return Path(out)
