"""`package`: the chosen blend as an offline Kaggle bundle -> dist/kaggle/{dataset,kernel}/ + manifest.json.

dataset/ is flat (every file at its root, so an upload keeps all of it whatever the kaggle CLI's --dir-mode)
and holds what the kernel needs and nothing else: every fold's weights (EMA when trained with EMA) as
safetensors, the resolved model configs, the blend's fitted parameters as JSON (the state `ensemble` saved
in submissions/blend.json, checked against submissions/blend.test.csv), the project as a wheel, a
wheelhouse of what the kernel imports beyond Kaggle's image with its dependencies resolved, and
dataset-metadata.json. kernel/ holds kernel-metadata.json and a short script that installs the wheels
offline and runs `python -m pipeline kernel`. Both metadata files pass the kaggle package's own checks. No
credential is ever copied: the bundle is checked for kaggle.json, also inside the wheels.

A runtime planner times every model and TTA view here on real test images, through the kernel's own
inference path, scales to the hidden test size and the GPU factor, warns when the estimate passes the competition's `time_limit_hours`, and proposes what to drop.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import numpy as np

from pipeline.blend.blends import stack
from pipeline.core.config import Competition
from pipeline.core.data import DataError
from pipeline.core.io import file_md5, make_dir_public, write_json, write_text
from pipeline.kaggle.kernel import BLEND_FILE, BUNDLE_FILE, load_models

# What the kernel imports that the Kaggle image lacks or has in other versions; `name` alone takes the
# installed version. Their dependencies join the wheelhouse too, less what KAGGLE_IMAGE brings.
DEFAULT_WHEELS = ("iterative-stratification", "albumentations", "timm")
# What Kaggle's Python image reliably has, with everything these pull in: the wheelhouse leaves them out.
# opencv is not here: Kaggle has opencv-python, while albumentations and albucore require the
# opencv-python-headless distribution by name, so the headless wheel ships (cv2 imports either way).
# The Python of Kaggle's image: compiled wheels (cp3XX) of the wheelhouse install only under the same minor.
KAGGLE_PYTHON = (3, 11)
KAGGLE_IMAGE = ("torch", "torchvision", "numpy", "pandas", "scikit-learn", "scipy", "lightgbm", "pyyaml",
                "pydantic", "safetensors", "tqdm")
DATASET_KEYS = {"title", "subtitle", "description", "id", "id_no", "licenses", "keywords", "collaborators",
                "data", "resources", "isPrivate"}
KERNEL_KEYS = {"id", "id_no", "title", "code_file", "language", "kernel_type", "is_private", "enable_gpu",
               "enable_tpu", "enable_internet", "dataset_sources", "competition_sources", "kernel_sources",
               "model_sources", "docker_image_pinning_type", "machine_shape"}
# `machine_shape` (MACHINE_SHAPE=): Kaggle's accelerator name, e.g. NvidiaTeslaT4 (GPU T4 x2) or TpuV5E8. The
# kaggle CLI passes it through unchecked, so only its form is checked here.
MACHINE_SHAPE = re.compile(r"[A-Za-z][A-Za-z0-9]{2,40}")
CREDENTIAL_NAMES = {"kaggle.json", ".netrc", "credentials.json"}
KERNEL_OVERHEAD_S = 120.0  # start-up, pip install, reading the sample: a rough constant


class PackageError(DataError):
    """The bundle cannot be made; the message says why."""


# --- ids --------------------------------------------------------------------------------------


def slugify(text: str, max_len: int = 50) -> str:
    s = re.sub(r"[^a-z0-9]+", "-", str(text).lower()).strip("-")[:max_len].strip("-")
    return s if len(s) >= 3 else (s + "-kfold").strip("-")


SLUG = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,48}[a-z0-9])?")  # Kaggle competition, dataset and kernel slugs
USERNAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,49}")


def check_id(value: str, pattern: re.Pattern, what: str, where: str) -> str:
    """A Kaggle slug or user name, refused unless it matches Kaggle's rules (it ends up in generated code)."""
    if not pattern.fullmatch(value):
        rule = ("lowercase letters, digits and inner hyphens, at most 50" if pattern is SLUG
                else "letters, digits, '_' and '-', at most 50")
        raise PackageError(f"{what} {value!r} ({where}) is not valid on Kaggle: use {rule} characters")
    return value


PLACEHOLDER_USER = "your-kaggle-username"


def kaggle_ids(comp: Competition, user: str | None, competition: str | None, dataset: str | None,
               kernel: str | None) -> dict:
    """The Kaggle ids the bundle's metadata names. A fallback (no user given, the slug taken from the data
    folder's name) is warned about loudly: an upload with a wrong id fails, or lands somewhere else."""
    if not competition:
        warn(f"no competition slug given: using the data folder's name {comp.data_dir.resolve().name!r}. If that "
             "is not the competition's URL slug (kaggle.com/competitions/<slug>), the kernel will not see its data: "
             "make package COMPETITION_SLUG=<slug>")
    comp_slug = check_id(competition or comp.data_dir.resolve().name, SLUG, "competition slug",
                         "--competition-slug" if competition else "the data folder's name; set COMPETITION_SLUG=")
    user = user or os.environ.get("KAGGLE_USERNAME")
    if not user:
        warn(f"no Kaggle user given: the metadata says {PLACEHOLDER_USER!r}, which Kaggle refuses. "
             "make package KAGGLE_USER=<you> (or set $KAGGLE_USERNAME)")
    user = check_id(user or PLACEHOLDER_USER, USERNAME, "Kaggle user", "KAGGLE_USER / --kaggle-user / $KAGGLE_USERNAME")
    return {"user": user, "competition": comp_slug,
            "dataset": check_id(slugify(dataset or f"{comp_slug}-kfold-bundle"), SLUG, "dataset slug", "--dataset-slug"),
            "kernel": check_id(slugify(kernel or f"{comp_slug}-kfold-inference"), SLUG, "kernel slug", "--kernel-slug")}


def warn(message: str) -> None:
    """A warning that stands out in a long log: on stderr, framed."""
    print(f"\n!!! warning: {message}\n", file=sys.stderr, flush=True)


def dataset_metadata(ids: dict) -> dict:
    return {"title": f"{ids['competition']} k-fold bundle"[:50], "id": f"{ids['user']}/{ids['dataset']}",
            "licenses": [{"name": "CC0-1.0"}]}


def kernel_metadata(ids: dict, code_file: str, private: bool = True, machine_shape: str | None = None) -> dict:
    """enable_internet is always written: the kaggle CLI turns internet on when the key is missing."""
    meta = {"id": f"{ids['user']}/{ids['kernel']}", "title": ids["kernel"], "code_file": code_file,
            "language": "python", "kernel_type": "script", "is_private": private,
            "enable_gpu": not (machine_shape or "").startswith("Tpu"), "enable_internet": False,
            "dataset_sources": [f"{ids['user']}/{ids['dataset']}"], "competition_sources": [ids["competition"]],
            "kernel_sources": []}
    if machine_shape:
        meta["machine_shape"] = machine_shape
    return meta


# --- pieces of the bundle ------------------------------------------------------------------------


def export_weights(run: Path, dest: Path, fp16: bool) -> dict:
    """best.pt -> dest (safetensors of the EMA weights when present); -> config, classes, data_config."""
    import torch
    from safetensors.torch import save_file

    from pipeline.nn.infer import inference_state
    from pipeline.core.io import load_checkpoint

    ckpt = load_checkpoint(run / "best.pt")
    state = inference_state(ckpt)
    tensors = {}
    for k, v in state.items():
        v = v.detach().to("cpu")
        if fp16 and v.is_floating_point():
            v = v.to(torch.float16)
        tensors[k] = v.contiguous().clone()
    dest.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(dest), metadata={"source": "best.pt", "ema": str("ema" in ckpt and bool(ckpt["ema"]))})
    return {"config": ckpt["config"], "classes": ckpt["classes"], "data_config": ckpt["data_config"]}


def chosen_blend(comp: Competition, method: str | None, stacking: Path, folds: Path, submissions: Path):
    """(level-1 tables, the blend's JSON) of the blend `ensemble` fitted and saved in submissions/blend.json.
    Nothing is refitted: the saved state must reproduce submissions/blend.test.csv from the stacking tables."""
    from pipeline.blend.ensemble import BLEND_STATE, read_blend_state
    from pipeline.artifacts.tables import load_level1, read_table

    blend, data = read_blend_state(submissions / BLEND_STATE, stacking)
    if method is not None and method != blend.method:
        raise PackageError(f"{submissions / BLEND_STATE} holds the {blend.method} blend, not {method}; run "
                           f"`make ensemble METHOD={method}` first (or package without --method)")
    level1 = load_level1(comp, stacking, folds)
    if level1.models != data["models"] or level1.classes != data["classes"]:
        raise PackageError(f"{submissions / BLEND_STATE} was fitted on models {data['models']}, {stacking}/ now holds "
                           f"{level1.models}; rerun `make ensemble`")
    test = blend.predict_proba(stack(level1.test), comp.task)
    table = submissions / "blend.test.csv"
    if not table.is_file():
        raise PackageError(f"{table}: not found; rerun `make ensemble`")
    written = read_table(table, comp.id_col, level1.classes, level1.test_ids, task=comp.task).to_numpy()
    if not np.allclose(written, test, atol=1e-5):
        raise PackageError(f"{table} does not match the blend saved in {submissions / BLEND_STATE}; rerun "
                           "`make ensemble`")
    return level1, data


def model_entries(comp: Competition, level1, runs: Path, stacking: Path, folds: Path) -> list[dict]:
    """Run folders and TTA of every model the blend uses (from the stacking tables' sidecars)."""
    from pipeline.artifacts.runs import fold_runs
    from pipeline.artifacts.tables import read_meta

    fold_ids = sorted(int(k) for k in np.unique(level1.fold))
    entries = []
    for name in level1.models:
        meta = read_meta(stacking / f"{name}.oof.csv")
        if "tta" not in meta or not (runs / name).is_dir():
            raise PackageError(
                f"model {name!r}: stacking/{name}.oof.csv was not made by `predict` from {runs}/{name}/, so its "
                "test predictions cannot be reproduced offline; remove its tables or retrain it here")
        dirs = fold_runs(comp, name, fold_ids, runs, folds, level1.classes)
        stamp = meta.get("stamp", {})
        if stamp.get("checkpoints") and stamp["checkpoints"] != [file_md5(d / "best.pt") for d in dirs]:
            raise PackageError(f"model {name!r}: checkpoints changed since `predict`; rerun `make ensemble`")
        entries.append({"name": name, "dirs": dirs, "folds": fold_ids, "tta": meta["tta"],
                        "tta_merge": meta["tta_merge"]})
    return entries


def build_wheel(project: Path, dest: Path) -> Path:
    """`pip wheel --no-deps` of a clean copy of the project (only pyproject, README and the package)."""
    dest.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "src"
        src.mkdir()
        for name in ("pyproject.toml", "README.md", "setup.py", "setup.cfg", "LICENSE"):
            if (project / name).is_file():
                shutil.copy2(project / name, src / name)
        shutil.copytree(project / "pipeline", src / "pipeline",
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc", *CREDENTIAL_NAMES))
        proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                               "-w", str(dest), str(src)], capture_output=True, text=True)
        if proc.returncode:
            raise PackageError(f"pip wheel {project} failed:\n{proc.stderr[-2000:]}")
    wheels = sorted(dest.glob("kaggle_kfold_pipeline-*.whl"))
    if not wheels:
        raise PackageError(f"pip wheel wrote no project wheel into {dest}")
    return wheels[-1]


def pinned(spec: str) -> str:
    """'timm' -> 'timm==<installed version>'; a spec with a version is kept."""
    if re.search(r"[=<>!~ ]", spec):
        return spec
    try:
        return f"{spec}=={metadata.version(spec)}"
    except metadata.PackageNotFoundError:
        return spec


def _requirements(dist: metadata.Distribution, extras: frozenset[str] = frozenset()) -> list[tuple[str, frozenset]]:
    """(name, extras) of what a distribution needs here with these extras of it requested (markers evaluated
    for this Python)."""
    from packaging.requirements import InvalidRequirement, Requirement

    needs = []
    for text in dist.requires or []:
        try:
            req = Requirement(text)
        except InvalidRequirement:
            continue
        if req.marker is None or any(req.marker.evaluate({"extra": e}) for e in ("", *extras)):
            needs.append((req.name, frozenset(req.extras)))
    return needs


def _canon(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def dependency_closure(names) -> dict[str, str]:
    """{name: installed version} of `names` and everything they need (extras they ask for included), as
    installed here."""
    seen: dict[str, str] = {}
    done: set[tuple[str, frozenset]] = set()
    todo = [(_canon(n), frozenset()) for n in names]
    while todo:
        name, extras = todo.pop()
        if (name, extras) in done:
            continue
        done.add((name, extras))
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            continue
        seen[name] = dist.version
        todo += [(_canon(n), e) for n, e in _requirements(dist, extras)]
    return seen


def wheelhouse_specs(specs: list[str]) -> list[str]:
    """`specs` with their dependencies resolved as installed here (name==version), less what Kaggle's image
    has: every package the kernel needs that it may not find there. A spec with a version is kept as it is."""
    fixed = [s for s in specs if re.search(r"[=<>!~ ]", s)]
    bare = [s for s in specs if s not in fixed]
    missing = [s for s in bare if _canon(s) not in dependency_closure([s])]
    if missing:
        raise PackageError(f"--wheels {' '.join(missing)}: not installed here, so their dependencies cannot be "
                           "resolved; install them, or give name==version")
    image = dependency_closure(KAGGLE_IMAGE)
    needed = {n: v for n, v in dependency_closure(bare).items() if n not in image}
    return fixed + [f"{n}=={v}" for n, v in sorted(needed.items())]


def download_wheels(specs: list[str], dest: Path, find_links: list[str]) -> list[Path]:
    """The wheels of `specs` (already resolved: pinned, dependencies listed) into dest; -> the new files."""
    if not specs:
        return []
    dest.mkdir(parents=True, exist_ok=True)
    before = set(dest.glob("*.whl"))
    cmd = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:", "-d", str(dest)]
    for link in find_links:
        cmd += ["--find-links", link]
    proc = subprocess.run(cmd + specs, capture_output=True, text=True)
    if proc.returncode:
        raise PackageError(f"pip download {' '.join(specs)} failed:\n{proc.stderr[-2000:]}")
    return sorted(set(dest.glob("*.whl")) - before)


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


KERNEL_SCRIPT = '''"""Offline inference for one competition: installs the bundled wheels, then runs `python -m pipeline kernel`.

Written by `make package`; change the paths below (or pass --bundle/--data-dir/--out) to run it elsewhere.
"""
import argparse
import glob
import os
import subprocess
import sys

parser = argparse.ArgumentParser()
parser.add_argument("--bundle", default={bundle!r})
parser.add_argument("--data-dir", default={data_dir!r})
parser.add_argument("--out", default="/kaggle/working/submission.csv")
parser.add_argument("--time-budget", type=float, default={budget!r}, help="seconds before extra TTA views are dropped")
parser.add_argument("--skip-install", action="store_true")
args, _ = parser.parse_known_args()

if not os.path.isfile(os.path.join(args.bundle, "bundle.json")):  # wherever Kaggle mounted the dataset
    found = sorted(glob.glob("/kaggle/input/**/bundle.json", recursive=True))
    if not found:
        sys.exit(f"bundle.json not found in {{args.bundle}} nor under /kaggle/input: add the bundle dataset to the kernel")
    args.bundle = os.path.dirname(found[0])
wheels = sorted(glob.glob(os.path.join(args.bundle, "*.whl")))  # the dataset is flat: wheels, weights, configs
ours = [w for w in wheels if os.path.basename(w).startswith("kaggle_kfold_pipeline-")]
if not args.skip_install:  # the dependencies with pip's checks (all in the bundle or on the image), then the project
    pip = [sys.executable, "-m", "pip", "install", "-q", "--no-index", "--find-links", args.bundle]
    subprocess.check_call([*pip, *[w for w in wheels if w not in ours]])
    subprocess.check_call([*pip, "--no-deps", "--force-reinstall", *ours])
os.environ["NO_ALBUMENTATIONS_UPDATE"] = "1"  # albumentations would look for a newer version online
subprocess.check_call([sys.executable, "-m", "pipeline", "kernel", "--bundle", args.bundle,
                       "--data-dir", args.data_dir, "--out", args.out, "--time-budget", str(args.time_budget)])
'''


# --- runtime planner -----------------------------------------------------------------------------


def time_views(bundle: Path, entry: dict, paths: list[Path], sample: int = 64) -> dict[str, float]:
    """Images per second of one fold model for every TTA view, measured on this machine (CPU or GPU) through
    the kernel's own path on up to `sample` real test images: decode, resize, normalise, the model."""
    from pipeline.nn.infer import device
    from pipeline.nn.loader import evenly_spaced

    dev = device()
    picks = evenly_spaced(paths, sample)
    pm = load_models(bundle, {**entry, "weights": entry["weights"][:1]}, dev, picks)
    pm.logits(pm.views[:1], dev)  # warm-up: allocator, first-call overheads, file cache
    return {view: len(picks) / max(pm.logits([view], dev)[1], 1e-9) for view in pm.views}


def plan_runtime(speeds: dict[str, dict[str, float]], folds: dict[str, int], n_test: int, limit_s: float,
                 gpu_factor: float = 1.0, overhead_s: float = KERNEL_OVERHEAD_S) -> dict:
    """Estimated kernel seconds, and what to drop (views, then folds, then models) to fit the limit."""
    cost = {m: {v: n_test / (ips * gpu_factor) for v, ips in views.items()} for m, views in speeds.items()}
    n_folds = dict(folds)
    views = {m: list(v) for m, v in cost.items()}

    def total():
        return overhead_s + sum(n_folds[m] * sum(cost[m][v] for v in views[m]) for m in views)

    estimate = total()
    proposals = []
    while total() > limit_s:
        with_views = [m for m in views if len(views[m]) > 1]
        if with_views:
            m = max(with_views, key=lambda m: n_folds[m] * cost[m][views[m][-1]])
            proposals.append(f"drop TTA view {views[m].pop()} of {m}")
            continue
        with_folds = [m for m in views if n_folds[m] > 1]
        if with_folds:
            m = max(with_folds, key=lambda m: sum(cost[m][v] for v in views[m]))
            n_folds[m] -= 1
            proposals.append(f"use one fold fewer of {m} ({n_folds[m]} left)")
            continue
        if len(views) > 1:
            m = max(views, key=lambda m: sum(cost[m][v] for v in views[m]))
            del views[m]
            proposals.append(f"drop model {m} (then re-run `make ensemble` without it)")
            continue
        proposals.append("even one fold of one model with one view does not fit: use a smaller model or image size")
        break
    return {"n_test": n_test, "gpu_factor": gpu_factor, "limit_s": limit_s, "overhead_s": overhead_s,
            "images_per_s": speeds, "seconds_per_model": {
                m: round(folds[m] * sum(c.values()), 3) for m, c in cost.items()},
            "estimate_s": round(estimate, 3), "fits": estimate <= limit_s, "proposals": proposals,
            "estimate_after_s": round(total(), 3)}


# --- the stage --------------------------------------------------------------------------------


def _size(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.is_dir() else 0


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
    level1, blend = chosen_blend(comp, method, stacking, folds, submissions)
    entries = model_entries(comp, level1, runs, stacking, folds)
    out.parent.mkdir(parents=True, exist_ok=True)
    build = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".partial", dir=out.parent))
    try:
        manifest = write_bundle(build, comp, level1, blend, entries, ids, options)
        make_dir_public(build)
        replace_folder(build, out)
    except BaseException:
        shutil.rmtree(build, ignore_errors=True)  # our own temporary folder; `out` is untouched
        raise
    print(f"package: blend {blend['method']} of {len(entries)} model(s) -> {out}/")
    print_summary(manifest, comp.time_limit_hours)
    version = manifest.get("kaggle_checks")
    print(f"metadata: accepted by the kaggle package's own checks (kaggle {version})" if version else
          "metadata: not checked (the kaggle package is not installed; `make install` installs it)")
    print(f"upload: kaggle datasets create -p {out / 'dataset'} --dir-mode zip   (later: kaggle datasets version "
          f"-p {out / 'dataset'} --dir-mode zip -m '...')\n        kaggle kernels push -p {out / 'kernel'}   "
          "(or `make submit` on a code competition: it runs both)")
    return manifest


def student_blend(comp: Competition, student: str, stacking: Path, folds: Path, runs: Path, work: Path
                  ) -> tuple[Path, Path]:
    """The student alone as the bundle's "blend": its two tables copied into work/stacking/, and `ensemble
    --method mean` of that one model into work/submissions/. -> (stacking, submissions) to package from."""
    from pipeline.blend.ensemble import run_ensemble

    tables = work / "stacking"
    tables.mkdir(parents=True)
    for part in ("oof", "test"):
        for ext in (".csv", ".json"):
            src = Path(stacking) / f"{student}.{part}{ext}"
            if not src.is_file():
                raise PackageError(f"{src}: not found; `make distill STUDENT=...` (or `make predict`) writes it")
            shutil.copy2(src, tables / src.name)
    run_ensemble(comp, method="mean", stacking=tables, folds_path=folds, out=work / "submissions", runs=runs)
    return tables, work / "submissions"


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


def write_bundle(build: Path, comp: Competition, level1, blend: dict, entries: list[dict], ids: dict,
                 options: BundleOptions) -> dict:
    """Everything of the bundle into `build`: dataset/, kernel/ and manifest.json; -> the manifest."""
    dataset, kernel = build / "dataset", build / "kernel"
    models_info = export_models(entries, dataset, options.fp16)
    write_json(dataset / BLEND_FILE, blend)
    limit_s = comp.time_limit_hours * 3600.0
    budget = round(limit_s * options.time_budget_frac - KERNEL_OVERHEAD_S, 1)
    comp_fields = comp.model_dump(mode="json", exclude={"data_dir", "answers", "generator", "models_dir"})
    write_json(dataset / BUNDLE_FILE, {
        "competition": comp_fields, "classes": level1.classes, "models": models_info, "blend": blend["method"],
        "time_budget_s": budget, "kaggle": ids, "fp16": options.fp16, "made": time.strftime("%Y-%m-%d %H:%M:%S"),
    })
    project = Path(options.project) if options.project else Path(__file__).resolve().parents[2]
    project_wheel = build_wheel(project, dataset)
    specs = wheelhouse_specs(list(DEFAULT_WHEELS if options.wheels is None else options.wheels))
    dep_wheels = download_wheels(specs, dataset, list(options.find_links))
    from packaging.utils import parse_wheel_filename

    # bound to one CPython minor: an ABI tag such as cp311 (abi3 and none install on any later Python)
    compiled = [w.name for w in dep_wheels if any(t.abi.startswith("cp") for t in parse_wheel_filename(w.name)[3])]
    if compiled and sys.version_info[:2] != KAGGLE_PYTHON:
        warn(f"the wheelhouse was built for Python {sys.version_info[0]}.{sys.version_info[1]}, and Kaggle's image runs "
             f"{KAGGLE_PYTHON[0]}.{KAGGLE_PYTHON[1]}: {', '.join(compiled[:3])} will not install there. Run `make "
             f"package` with Python {KAGGLE_PYTHON[0]}.{KAGGLE_PYTHON[1]} (PYTHON=python3.11 make install)")
    write_json(dataset / "dataset-metadata.json", dataset_metadata(ids))
    code_file = f"{ids['kernel']}.py"
    write_text(kernel / code_file, KERNEL_SCRIPT.format(bundle=f"/kaggle/input/{ids['dataset']}",  # repr-quoted
                                                        data_dir=f"/kaggle/input/{ids['competition']}",
                                                        budget=float(budget)))
    write_json(kernel / "kernel-metadata.json", kernel_metadata(ids, code_file, options.private, options.machine_shape))
    scrub_credentials(build)
    from pipeline.kaggle.submit import SubmitError, check_metadata

    try:
        kaggle_checks = check_metadata(dataset, kernel, ids["user"])
    except SubmitError as e:
        raise PackageError(str(e)) from None

    n_test = int(options.test_size) if options.test_size else int(round(len(level1.test_ids) * options.test_factor))
    test_paths = [comp.image_path("test", i) for i in level1.test_ids]
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
    manifest = {"method": blend["method"], "models": [m["name"] for m in models_info], "kaggle": ids,
                "bytes": parts, "total_bytes": sum(parts.values()),
                "files": {str(p.relative_to(build)): p.stat().st_size for p in sorted(build.rglob("*")) if p.is_file()},
                "wheels": [w.name for w in [project_wheel, *dep_wheels]], "plan": plan, "kaggle_checks": kaggle_checks}
    write_json(build / "manifest.json", manifest)
    return manifest


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


def print_summary(manifest: dict, limit_hours: float) -> None:
    """Bytes per part and the runtime plan, with what to drop when it may not fit."""
    parts, plan = manifest["bytes"], manifest["plan"]
    width = max(len(k) for k in parts)
    for k, v in parts.items():
        print(f"  {k:<{width}}  {v:>12,d} bytes")
    print(f"  {'total':<{width}}  {manifest['total_bytes']:>12,d} bytes")
    limit_s = plan["limit_s"]
    print(f"runtime plan: {plan['n_test']} test images, gpu factor {plan['gpu_factor']:g}: about "
          f"{plan['estimate_s']:.0f}s of the {limit_s:.0f}s limit ({limit_hours:g} h)")
    if not plan["fits"]:
        print(f"warning: the kernel may pass the competition's time limit ({plan['estimate_s']:.0f}s > {limit_s:.0f}s); "
              "the kernel drops TTA views when its clock runs short. Proposed:")
        for p in plan["proposals"]:
            print(f"  - {p}")
        print(f"  -> about {plan['estimate_after_s']:.0f}s")
