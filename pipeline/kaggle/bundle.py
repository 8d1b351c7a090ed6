"""`package`: the chosen blend as an offline Kaggle bundle -> dist/kaggle/{dataset,kernel}/ + manifest.json.

dataset/ is flat (every file at its root, so an upload keeps all of it whatever the kaggle CLI's --dir-mode)
and holds what the kernel needs and nothing else: every fold's weights (EMA when trained with EMA) as
safetensors, the resolved model configs, the blend's fitted parameters (submissions/blend.json as
`ensemble` wrote it), the project as a wheel, a wheelhouse of what the kernel imports beyond Kaggle's image
(wheelhouse.py), bundle.json (everything the kernel reads, its settings included) and dataset-metadata.json.
kernel/ holds kernel-metadata.json and notebook.py copied as it is: it reads its settings from bundle.json,
installs the wheels offline and runs `python -m pipeline kernel`. Both metadata files pass the kaggle
package's own checks. No credential is ever copied: the bundle is checked for kaggle.json, also inside the
wheels. The runtime planner (runtime.py) estimates the kernel's time against the competition's limit.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
import zipfile
from dataclasses import asdict, dataclass
from pathlib import Path

from pipeline.artifacts.record import changes, read_record, record_path, write_record
from pipeline.core.config import NEUTRAL_KEYS, Competition, config_hash
from pipeline.core.io import atomic_path, make_dir_public, write_json, write_text
from pipeline.kaggle import notebook
from pipeline.kaggle.ids import PackageError, dataset_metadata, kaggle_ids, kernel_metadata
from pipeline.kaggle.kernel import BLEND_FILE, BUNDLE_FILE
from pipeline.kaggle.runtime import KERNEL_OVERHEAD_S, plan_runtime, print_plan, time_views
from pipeline.kaggle.sources import SavedBlend, chosen_blend, model_entries
from pipeline.kaggle.wheelhouse import CREDENTIAL_NAMES, build_wheelhouse

KAGGLE_WORKING = "/kaggle/working/submission.csv"  # where Kaggle looks for a code competition's submission


@dataclass(frozen=True)
class BundleOptions:
    """How `package` builds the bundle (the command line's package options)."""

    fp16: bool = False
    wheels: tuple[str, ...] | None = None  # None: DEFAULT_WHEELS
    find_links: tuple[str, ...] = ()
    project: Path | None = None  # None: this checkout
    private: bool = True
    test_size: int | None = None
    test_factor: float = 1.0
    gpu_factor: float = 1.0
    time_budget_frac: float = 0.9
    machine_shape: str | None = None  # Kaggle accelerator (None: Kaggle's default GPU)


def build_package(comp: Competition, out: str | Path = "dist/kaggle", runs: str | Path = "runs",
                  stacking: str | Path = "stacking", folds: str | Path = "folds/folds.csv",
                  submissions: str | Path = "submissions", method: str | None = None,
                  user: str | None = None, competition_slug: str | None = None, dataset_slug: str | None = None,
                  kernel_slug: str | None = None, options: BundleOptions = BundleOptions()) -> dict:
    """Build the bundle in a temporary folder beside `out` and swap it in when complete: a failure leaves the
    previous bundle as it was, and `out` is only ever replaced when `make package` made it (or it is empty)."""
    out, runs, stacking, folds, submissions = map(Path, (out, runs, stacking, folds, submissions))
    ids = kaggle_ids(comp, user, competition_slug, dataset_slug, kernel_slug)  # bad ids fail before any work
    check_replaceable(out)
    blend = chosen_blend(comp, method, stacking, folds, submissions)
    entries = model_entries(comp, blend, runs, stacking, folds)
    record, params, inputs = package_record(comp, out, blend, entries, ids, options, stacking, submissions)
    reasons = changes(record, params, inputs)
    if is_bundle(out) and not reasons:  # decided from records and file stats: no checkpoint is opened
        print(f"package: {out}/ is up to date (blend {blend.method}, the same folds, tables, options and code); "
              "nothing rebuilt")
        return json.loads((out / "manifest.json").read_text())
    out.parent.mkdir(parents=True, exist_ok=True)
    build = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".partial", dir=out.parent))
    try:
        manifest = write_bundle(build, comp, blend, entries, ids, options)
        make_dir_public(build)
        replace_folder(build, out)
    except BaseException:
        shutil.rmtree(build, ignore_errors=True)  # our own temporary folder; `out` is untouched
        raise
    previous = read_record(record)
    write_record(record, "package", params, inputs, [out / "manifest.json"], previous.choices if previous else None)
    print(f"package: blend {blend.method} of {len(entries)} model(s) -> {out}/")
    print_summary(manifest, comp.time_limit_hours)
    version = manifest.get("kaggle_checks")
    print(f"metadata: accepted by the kaggle package's own checks (kaggle {version})" if version else
          "metadata: not checked (the kaggle package is not installed; `make install` installs it)")
    print(f"upload: kaggle datasets create -p {out / 'dataset'} --dir-mode zip   (later: kaggle datasets version "
          f"-p {out / 'dataset'} --dir-mode zip -m '...')\n        kaggle kernels push -p {out / 'kernel'}   "
          "(or `make submit` on a code competition: it runs both)")
    return manifest


def package_record(comp: Competition, out: Path, blend: SavedBlend, entries: list[dict], ids: dict,
                   options: BundleOptions, stacking: Path, submissions: Path) -> tuple[Path, dict, list[Path]]:
    """(the record beside the bundle, `<out>.record.json`; what the bundle depends on besides files; its input
    files: the saved blend, every shipped fold's done.json, each model's predict record, and the code)."""
    project = Path(options.project) if options.project else Path(__file__).resolve().parents[2]
    params = json.loads(json.dumps({"method": blend.method, "ids": ids, "options": asdict(options),
                                    "competition": config_hash(comp, NEUTRAL_KEYS)}, default=str))
    inputs = [submissions / BLEND_FILE, *(d / "done.json" for e in entries for d in e["dirs"]),
              *(record_path(stacking, e["name"]) for e in entries), project / "pyproject.toml",
              *sorted((project / "pipeline").rglob("*.py"))]
    return out.with_name(out.name + ".record.json"), params, [p for p in inputs if p.is_file()]


# --- the folder swap ---------------------------------------------------------------------------------------


def is_bundle(folder: Path) -> bool:
    """A folder `make package` wrote: it holds manifest.json and dataset/bundle.json."""
    return (folder / "manifest.json").is_file() and (folder / "dataset" / BUNDLE_FILE).is_file()


def check_replaceable(out: Path) -> None:
    if out.exists() and not (out.is_dir() and (is_bundle(out) or not any(out.iterdir()))):
        raise PackageError(f"{out} exists and is not a bundle `make package` made (no manifest.json and "
                           "dataset/bundle.json); it is left alone: choose another --out, or move it away")


def replace_folder(new: Path, out: Path) -> None:
    """Put `new` in place of `out` (checked by check_replaceable), removing the old one only once swapped."""
    old = None
    if out.exists():
        old = out.with_name(f".{out.name}.old-{time.strftime('%Y%m%dT%H%M%S')}")
        os.replace(out, old)
    os.replace(new, out)
    if old is not None:
        shutil.rmtree(old)


# --- the bundle's contents ---------------------------------------------------------------------------------


def write_bundle(build: Path, comp: Competition, blend: SavedBlend, entries: list[dict], ids: dict,
                 options: BundleOptions) -> dict:
    """Everything of the bundle into `build`: dataset/, kernel/ and manifest.json; -> the manifest."""
    dataset, kernel = build / "dataset", build / "kernel"
    models_info = export_models(entries, dataset, options.fp16)
    write_text(dataset / BLEND_FILE, blend.text)  # as `ensemble` wrote it
    project = Path(options.project) if options.project else Path(__file__).resolve().parents[2]
    project_wheel, dep_wheels = build_wheelhouse(project, dataset, options.wheels, options.find_links)
    limit_s = comp.time_limit_hours * 3600.0
    budget = round(limit_s * options.time_budget_frac - KERNEL_OVERHEAD_S, 1)
    comp_fields = comp.model_dump(mode="json", exclude={"data_dir", "answers", "generator", "models_dir"})
    kernel_settings = {"data_dir": f"/kaggle/input/{ids['competition']}", "out": KAGGLE_WORKING,
                       "wheels": [w.name for w in dep_wheels], "project_wheel": project_wheel.name}
    write_json(dataset / BUNDLE_FILE, {
        "competition": comp_fields, "classes": blend.classes, "models": models_info, "blend": blend.method,
        "time_budget_s": budget, "kaggle": ids, "fp16": options.fp16, "made": time.strftime("%Y-%m-%d %H:%M:%S"),
        "kernel": kernel_settings,
    })
    write_json(dataset / "dataset-metadata.json", dataset_metadata(ids))
    code_file = f"{ids['kernel']}.py"
    with atomic_path(kernel / code_file) as tmp:  # the kernel's code: notebook.py byte for byte, no value pasted in
        shutil.copyfile(notebook.__file__, tmp)
    write_json(kernel / "kernel-metadata.json", kernel_metadata(ids, code_file, options.private, options.machine_shape))
    scrub_credentials(build)
    from pipeline.kaggle.submit import SubmitError, check_metadata

    try:
        kaggle_checks = check_metadata(dataset, kernel, ids["user"])
    except SubmitError as e:
        raise PackageError(str(e)) from None

    n_test = int(options.test_size) if options.test_size else int(round(len(blend.test_ids) * options.test_factor))
    test_paths = [comp.image_path("test", i) for i in blend.test_ids]
    speeds = {m["name"]: time_views(dataset, m, test_paths) for m in models_info}
    plan = plan_runtime(speeds, {m["name"]: len(m["weights"]) for m in models_info}, n_test, limit_s,
                        options.gpu_factor)
    parts = {
        "weights": sum(_size(dataset / w) for m in models_info for w in m["weights"]),
        "configs": sum(_size(dataset / m["config"]) for m in models_info) + _size(dataset / BUNDLE_FILE),
        "blend": _size(dataset / BLEND_FILE),
        "project_wheel": _size(project_wheel),
        "wheelhouse": sum(_size(w) for w in dep_wheels),
        "metadata": _size(dataset / "dataset-metadata.json") + _size(kernel / "kernel-metadata.json"),
        "kernel_script": _size(kernel / code_file),
    }
    manifest = {"method": blend.method, "models": [m["name"] for m in models_info], "kaggle": ids,
                "bytes": parts, "total_bytes": sum(parts.values()),
                "files": {str(p.relative_to(build)): p.stat().st_size for p in sorted(build.rglob("*")) if p.is_file()},
                "wheels": [w.name for w in [project_wheel, *dep_wheels]], "plan": plan, "kaggle_checks": kaggle_checks}
    write_json(build / "manifest.json", manifest)
    return manifest


def export_weights(run: Path, dest: Path, fp16: bool) -> dict:
    """best.pt -> dest (safetensors of the EMA weights when present); -> config, classes, data_config (and a
    meta_head model's metadata encoding)."""
    import torch
    from safetensors.torch import save_file

    from pipeline.core.io import load_checkpoint
    from pipeline.nn.infer import inference_state

    ckpt = load_checkpoint(run / "best.pt")
    state = inference_state(ckpt)
    tensors = {}
    for k, v in state.items():
        v = v.detach().to("cpu")
        if fp16 and v.is_floating_point() and not k.startswith("meta_mlp.num_"):  # metadata statistics: fp32
            v = v.to(torch.float16)
        tensors[k] = v.contiguous().clone()
    dest.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(dest), metadata={"source": "best.pt", "ema": str("ema" in ckpt and bool(ckpt["ema"]))})
    return {"config": ckpt["config"], "classes": ckpt["classes"], "data_config": ckpt["data_config"],
            **({"meta": ckpt["meta"]} if ckpt.get("meta") else {})}  # meta_head: the metadata encoding


def export_models(entries: list[dict], dataset: Path, fp16: bool) -> list[dict]:
    """Every fold's weights and each model's config into the dataset's root (<model>.fold<k>.safetensors,
    <model>.config.json): a flat dataset uploads whole, whatever the kaggle CLI's --dir-mode; -> bundle entries."""
    models_info = []
    for e in entries:
        weights = []
        cfg = None
        for k, d in zip(e["folds"], e["dirs"]):
            rel = f"{e['name']}.fold{k}.safetensors"
            cfg = export_weights(d, dataset / rel, fp16)
            weights.append(rel)
        rel_cfg = f"{e['name']}.config.json"
        write_json(dataset / rel_cfg, {**cfg, "tta": e["tta"], "tta_merge": e["tta_merge"], "folds": e["folds"]})
        models_info.append({"name": e["name"], "config": rel_cfg, "weights": weights})
    return models_info


def scrub_credentials(root: Path) -> list[str]:
    """Remove credential files under root; refuse an archive that holds one. -> removed paths."""
    removed = []
    for path in sorted(root.rglob("*")):
        if path.is_file() and path.name in CREDENTIAL_NAMES:
            path.unlink()
            removed.append(str(path.relative_to(root)))
        elif path.is_dir() and path.name == ".kaggle":
            shutil.rmtree(path)
            removed.append(str(path.relative_to(root)))
    for path in sorted(root.rglob("*")):
        if path.is_file() and path.suffix in (".whl", ".zip"):
            with zipfile.ZipFile(path) as z:
                bad = [n for n in z.namelist() if Path(n).name in CREDENTIAL_NAMES]
            if bad:
                raise PackageError(f"{path}: holds credential file(s) {bad}; refusing to package it")
    for msg in removed:
        print(f"warning: removed credential file {msg} from the bundle")
    return removed


# --- the summary -------------------------------------------------------------------------------------------


def _size(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.is_dir() else 0


def print_summary(manifest: dict, limit_hours: float) -> None:
    """Bytes per part and the runtime plan, with what to drop when it may not fit."""
    parts = manifest["bytes"]
    width = max(len(k) for k in parts)
    for k, v in parts.items():
        print(f"  {k:<{width}}  {v:>12,d} bytes")
    print(f"  {'total':<{width}}  {manifest['total_bytes']:>12,d} bytes")
    print_plan(manifest["plan"], limit_hours)
