"""`kernel`: the offline Kaggle run of a bundle written by `package` -> a validated submission.csv.

Reads only the bundle (weights as safetensors, configs and the blend's parameters as JSON) and the
competition's sample submission and test images: no training data, no network. Every fold of every
model predicts the test set with its TTA views (pass 1: the first view of every model; pass 2: the
other views while the clock allows, so a tight `--time-budget` drops views instead of timing out),
the per-model test tables are written and read back exactly as `predict` -> `ensemble` do, and the
packaged blend turns them into the submission, checked against the sample before it is written.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.core.data import DataError

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")  # offline: albumentations must not look for updates

BUNDLE_FILE = "bundle.json"
BLEND_FILE = "blend.json"


class BundleError(DataError):
    """The bundle is incomplete or does not fit the competition data."""


def read_bundle(bundle: str | Path) -> dict:
    path = Path(bundle) / BUNDLE_FILE
    if not path.is_file():
        raise BundleError(f"{path}: not found; is --bundle the dataset folder written by `make package`?")
    return json.loads(path.read_text())


def bundle_competition(info: dict, data_dir: str | Path):
    """The packaged competition config with data_dir pointing at the local copy of the competition, its image
    settings applied (test images read as training read its images). The kernel scores nothing, so a metric
    from a file (not in the bundle) gives way to the task's default."""
    from pipeline.core.config import Competition, apply_image_settings

    fields = {**info["competition"], "data_dir": str(data_dir), "answers": None, "generator": None}
    if ".py:" in str(fields.get("metric")):
        fields.update(metric=None, greater_is_better=None)
    comp = Competition.model_validate(fields)
    apply_image_settings(comp)  # the pixel limit and DICOM windows, for every test image the kernel reads
    return comp


def load_weights(path: Path) -> dict:
    """safetensors (fp16 or fp32) as a state dict on the CPU; never unpickles anything."""
    from safetensors.torch import load_file

    return load_file(str(path), device="cpu")


@dataclass
class PackagedModel:
    """One packaged model: its fold models, how they read images (EvalSpec), the test images, and its
    TTA views and merge."""

    name: str
    models: list
    spec: object
    paths: list[Path]
    views: list[str]
    merge: str
    meta: np.ndarray | None = None  # meta_head: the test rows' coded metadata

    def logits(self, views: list[str], dev) -> tuple[dict[str, np.ndarray], float]:
        """{view: logits (folds, 1, n, C)}, reading each image once for all `views`; and the seconds."""
        from pipeline.nn.infer import image_logits

        t0 = time.monotonic()
        logits = image_logits(self.models, self.paths, self.spec, views, dev, meta=self.meta)
        return {v: logits[:, i : i + 1] for i, v in enumerate(views)}, time.monotonic() - t0


def load_models(bundle: Path, entry: dict, dev, paths: list[Path], meta_from: tuple | None) -> PackagedModel:
    """The fold models of one packaged model, on dev, ready for inference. A meta_head model gets the test
    table's metadata coded as in training, `meta_from` = (competition, test ids) naming the rows of `paths`;
    with None (timing only) every row's metadata is missing."""
    from pipeline.nn.infer import EvalSpec, model_from_state
    from pipeline.nn.models import ModelConfig

    cfg_data = json.loads((bundle / entry["config"]).read_text())
    # cache_dir is a training-machine folder: the kernel reads each test image once anyway, and a cache
    # would only fill Kaggle's small working disk
    cfg = ModelConfig.model_validate({**cfg_data["config"], "cache_dir": None})
    models = [model_from_state(cfg, len(cfg_data["classes"]), load_weights(bundle / w), dev, cfg_data.get("meta"))
              for w in entry["weights"]]
    return PackagedModel(entry["name"], models, EvalSpec.of(cfg, cfg_data["data_config"]), paths, cfg_data["tta"],
                         cfg_data["tta_merge"], packaged_meta(cfg_data.get("meta"), meta_from, len(paths)))


def packaged_meta(encoding: dict | None, meta_from: tuple | None, n: int) -> np.ndarray | None:
    from pipeline.core.meta import coded_meta

    if encoding is None:
        return None
    if meta_from is None:
        return np.full((n, len(encoding["columns"])), np.nan, dtype=np.float32)
    comp, test_ids = meta_from
    return coded_meta(comp, encoding, [], test_ids)[1]


def predict_within_budget(packaged: list[PackagedModel], dev, start: float, budget: float | None
                          ) -> tuple[dict[str, dict], list[str]]:
    """{model: {view: logits}} and the dropped views. Pass 1: the first view of every model (never
    dropped). Pass 2: the other views while the clock allows, all at once when they fit, else one by one."""
    logits, seconds = {}, {}
    for pm in packaged:
        logits[pm.name], seconds[pm.name] = pm.logits(pm.views[:1], dev)
        print(f"  {pm.name}: view {pm.views[0]} x {len(pm.models)} fold(s) in {seconds[pm.name]:.1f}s")
    dropped = []
    for pm in packaged:
        remaining = pm.views[1:]
        elapsed = time.monotonic() - start
        if remaining and (budget is None or elapsed + 1.2 * seconds[pm.name] * len(remaining) <= budget):
            logits[pm.name].update(pm.logits(remaining, dev)[0])  # all of them fit: one pass over the images
            remaining = []
        for view in remaining:
            elapsed = time.monotonic() - start
            if elapsed + 1.2 * seconds[pm.name] > budget:
                dropped.append(f"{pm.name}:{view}")
                print(f"  warning: dropping TTA view {view} of {pm.name} ({elapsed:.0f}s spent of {budget:.0f}s)")
                continue
            logits[pm.name].update(pm.logits([view], dev)[0])
    return logits, dropped


def run_kernel(bundle: str | Path, data_dir: str | Path, out: str | Path, work_dir: str | Path | None = None,
               time_budget: float | None = None) -> Path:
    """Predict, blend, validate and write the submission; returns its path."""
    from pipeline.blend.blends import FittedBlend, stack
    from pipeline.core.data import read_sample
    from pipeline.nn.infer import device
    from pipeline.blend.submission import infer_format, make_submission, write_submission
    from pipeline.artifacts.tables import read_table, write_table
    from pipeline.nn.tta import merge

    start = time.monotonic()
    bundle, out = Path(bundle), Path(out)
    work = Path(work_dir) if work_dir else out.parent
    info = read_bundle(bundle)
    comp = bundle_competition(info, data_dir)
    classes = info["classes"]
    sample = read_sample(comp)
    fmt = infer_format(comp, sample, classes)  # a bad sample fails before any work
    test_ids = sample[comp.id_col].astype(str).tolist()
    paths = [comp.image_path("test", i) for i in test_ids]
    budget = time_budget if time_budget is not None else info.get("time_budget_s")
    dev = device()
    print(f"kernel: {len(test_ids)} test images, {len(info['models'])} model(s), device {dev.type}, "
          f"time budget {'none' if budget is None else f'{budget:.0f}s'}")
    packaged = [load_models(bundle, entry, dev, paths, (comp, test_ids)) for entry in info["models"]]
    logits, dropped = predict_within_budget(packaged, dev, start, budget)

    P = []
    for pm in packaged:
        done = [v for v in pm.views if v in logits[pm.name]]  # packaged order, as predict stacks them
        views = np.concatenate([logits[pm.name][v] for v in done], axis=1)  # (folds, views, n, C)
        proba = np.mean([merge(fold_logits, pm.merge, comp.task) for fold_logits in views], axis=0)
        path = write_table(work / "stacking" / f"{pm.name}.test.csv", test_ids, proba, classes, comp.id_col)
        P.append(read_table(path, comp.id_col, classes, test_ids, task=comp.task).to_numpy())  # the values ensemble read

    blend = FittedBlend.from_export(json.loads((bundle / BLEND_FILE).read_text()))
    X_test = blend.with_meta(stack(np.stack(P)), comp, test_ids)  # + the test table's metadata, if it took any
    df = make_submission(fmt, sample, classes, test_ids, blend.predict_proba(X_test, comp.task))
    path = write_submission(out, df, fmt, sample, classes, comp.task)
    seconds = time.monotonic() - start
    report = {"submission": str(path), "blend": blend.method, "seconds": round(seconds, 2),
              "dropped_views": dropped, "n_test": len(test_ids)}
    (work / "kernel_report.json").write_text(json.dumps(report, indent=2))
    print(f"kernel: blend {blend.method} -> {path} ({len(df)} rows, {fmt.kind}) in {seconds:.1f}s"
          + (f"; dropped views {dropped}" if dropped else ""))
    return path
