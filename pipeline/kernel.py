"""`kernel`: the offline Kaggle run of a bundle written by `package` -> a validated submission.csv.

Reads only the bundle (weights as safetensors, configs and the blend's parameters as JSON) and the
competition's sample submission and test images: no training data, no network. Every fold of every
model predicts the test set with its TTA views (pass 1: the first view of every model; pass 2: the
other views while the clock allows, so a tight `--time-budget` drops views instead of timing out),
the per-model test tables are written and read back exactly as `predict` -> `ensemble` do, and the
packaged blend turns them into the submission, checked against the sample before it is written.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")  # offline: albumentations must not look for updates

BUNDLE_FILE = "bundle.json"
BLEND_FILE = "blend.json"


class BundleError(Exception):
    """The bundle is incomplete or does not fit the competition data."""


def read_bundle(bundle: str | Path) -> dict:
    path = Path(bundle) / BUNDLE_FILE
    if not path.is_file():
        raise BundleError(f"{path}: not found; is --bundle the dataset folder written by `make package`?")
    return json.loads(path.read_text())


def bundle_competition(info: dict, data_dir: str | Path):
    """The packaged competition config with data_dir pointing at the local copy of the competition."""
    from pipeline.config import Competition

    fields = {**info["competition"], "data_dir": str(data_dir), "answers": None, "generator": None}
    return Competition.model_validate(fields)


def load_weights(model, path: Path) -> None:
    """safetensors (fp16 or fp32) -> the model's own dtype; never unpickles anything."""
    from safetensors.torch import load_file

    state = load_file(str(path), device="cpu")
    model.load_state_dict(state)


def load_models(bundle: Path, entry: dict, dev):
    """(fold models on dev, ModelConfig) of one packaged model."""
    import torch

    from pipeline.models import ModelConfig, build_model

    cfg_data = json.loads((bundle / entry["config"]).read_text())
    cfg = ModelConfig.model_validate(cfg_data["config"])
    models = []
    for weights in entry["weights"]:
        model = build_model(cfg, num_classes=len(cfg_data["classes"]), pretrained=False)
        load_weights(model, bundle / weights)
        model.to(dev).eval()
        if cfg.channels_last:
            model = model.to(memory_format=torch.channels_last)
        models.append(model)
    return models, cfg, cfg_data


def run_kernel(bundle: str | Path, data_dir: str | Path, out: str | Path, work_dir: str | Path | None = None,
               time_budget: float | None = None) -> Path:
    """Predict, blend, validate and write the submission; returns its path."""
    from pipeline.augment import eval_transform
    from pipeline.data import read_sample
    from pipeline.ensemble import blend_test_prediction, import_blend_state, stack
    from pipeline.infer import amp_dtype, device, tta_logits
    from pipeline.loader import ImageDataset, make_loader
    from pipeline.submission import infer_format, make_submission, write_submission
    from pipeline.tables import read_table, write_table
    from pipeline.tta import get_view, merge

    start = time.monotonic()
    bundle, out = Path(bundle), Path(out)
    work = Path(work_dir) if work_dir else out.parent
    info = read_bundle(bundle)
    comp = bundle_competition(info, data_dir)
    classes = info["classes"]
    sample = read_sample(comp)
    fmt = infer_format(comp, sample, classes)  # a bad sample fails before any work
    test_ids = sample[comp.id_col].astype(str).tolist()
    budget = time_budget if time_budget is not None else info.get("time_budget_s")
    dev = device()
    print(f"kernel: {len(test_ids)} test images, {len(info['models'])} model(s), device {dev.type}, "
          f"time budget {'none' if budget is None else f'{budget:.0f}s'}")

    states = {}
    for entry in info["models"]:  # pass 1: the first view of every model (never dropped)
        models, cfg, cfg_data = load_models(bundle, entry, dev)
        dcfg = cfg_data["data_config"]
        tf = eval_transform(dcfg, cfg.in_chans)
        ds = ImageDataset([comp.image_path("test", i) for i in test_ids], None, tf, cfg.in_chans, cfg.bad_images)
        loader = make_loader(ds, cfg.batch_size * 2, cfg.num_workers, dev=dev)
        dtype = amp_dtype(cfg.amp, dev)

        def some_views(views, models=models, loader=loader, dtype=dtype, cfg=cfg, n=len(ds)):
            """{view: logits (folds, 1, n, C)}, reading each image once for all `views`; and the seconds."""
            t0 = time.monotonic()
            logits = tta_logits(models, loader, [get_view(v) for v in views], dev, dtype, cfg.channels_last, n)
            return {v: logits[:, i : i + 1] for i, v in enumerate(views)}, time.monotonic() - t0

        views = cfg_data["tta"]
        logits, seconds = some_views(views[:1])
        states[entry["name"]] = {"views": views, "logits": logits, "some_views": some_views,
                                 "seconds": seconds, "merge": cfg_data["tta_merge"]}
        print(f"  {entry['name']}: view {views[0]} x {len(models)} fold(s) in {seconds:.1f}s")

    dropped = []
    for name, st in states.items():  # pass 2: further views while the clock allows
        remaining = st["views"][1:]
        elapsed = time.monotonic() - start
        if remaining and (budget is None or elapsed + 1.2 * st["seconds"] * len(remaining) <= budget):
            st["logits"].update(st["some_views"](remaining)[0])  # all of them fit: one pass over the images
            remaining = []
        for view in remaining:  # else view by view, while each still fits
            elapsed = time.monotonic() - start
            if elapsed + 1.2 * st["seconds"] > budget:
                dropped.append(f"{name}:{view}")
                print(f"  warning: dropping TTA view {view} of {name} ({elapsed:.0f}s spent of {budget:.0f}s)")
                continue
            st["logits"].update(st["some_views"]([view])[0])
        st.pop("some_views")

    tables = work / "stacking"
    P = []
    for entry in info["models"]:
        st = states[entry["name"]]
        done = [v for v in st["views"] if v in st["logits"]]  # packaged order, as predict stacks them
        logits = np.concatenate([st["logits"][v] for v in done], axis=1)  # (folds, views, n, C)
        proba = np.mean([merge(fold_logits, st["merge"], comp.task) for fold_logits in logits], axis=0)
        path = write_table(tables / f"{entry['name']}.test.csv", test_ids, proba, classes, comp.id_col)
        P.append(read_table(path, comp.id_col, classes, test_ids).to_numpy())  # the values ensemble read

    blend = json.loads((bundle / BLEND_FILE).read_text())
    learners = [import_blend_state(s) for s in blend["learners"]]
    test = blend_test_prediction(blend["learned"], learners, stack(np.stack(P)), comp.task)
    df = make_submission(fmt, sample, classes, test_ids, test)
    path = write_submission(out, df, fmt, sample, classes, comp.task)
    seconds = time.monotonic() - start
    report = {"submission": str(path), "blend": blend["method"], "seconds": round(seconds, 2),
              "dropped_views": dropped, "n_test": len(test_ids)}
    (work / "kernel_report.json").write_text(json.dumps(report, indent=2))
    print(f"kernel: blend {blend['method']} -> {path} ({len(df)} rows, {fmt.kind}) in {seconds:.1f}s"
          + (f"; dropped views {dropped}" if dropped else ""))
    return path


def cmd_kernel(args: argparse.Namespace) -> None:
    try:
        run_kernel(args.bundle, args.data_dir, args.out, args.work_dir, args.time_budget)
    except BundleError as e:
        from pipeline.data import DataError

        raise DataError(str(e)) from None


def add_kernel_command(sub) -> None:
    p = sub.add_parser("kernel", help="offline inference from a `package` bundle -> submission.csv (the Kaggle run)")
    p.add_argument("--bundle", required=True, help="the dataset folder written by `package`")
    p.add_argument("--data-dir", required=True, help="competition folder holding the sample submission and test images")
    p.add_argument("--out", default="/kaggle/working/submission.csv")
    p.add_argument("--work-dir", default=None, help="folder for per-model test tables (default: next to --out)")
    p.add_argument("--time-budget", type=float, default=None,
                   help="seconds; extra TTA views are dropped rather than run past it (default: from the bundle)")
    p.set_defaults(func=cmd_kernel)
