"""`python -m pipeline check`: check a competition's data in seconds, before any training.

One line per check, with its counts, then `ok`, or a CheckFailed listing every problem found:

1. the config validates, train.csv and sample_submission.csv read (their usual errors);
2. every train and test image path exists: one directory listing per folder, so 100k ids take about a
   second. When paths are missing it says why when it can tell: ids that already end in the extension the
   template adds (id `a.jpg`, template `train/{id}.jpg`: use `train/{id}`), files with another extension
   (`a.jpg` where the template asks for `a.png`), a folder that is not there;
3. an evenly spaced sample of images decodes through `images.read_image`, the reader training uses; the
   sizes and stored channels seen are printed, and every file that fails is named (a warning, not a problem,
   under the competition key `bad_images: skip`); a constant regression target is a warning too;
4. `answers`, when set: the file, its id and target column(s), an answer for every test id; `extra_train`,
   when set: the extra table, as training reads it (`data.read_extra`: labels, ids, images);
5. every model config in `models_dir` validates (`models.load_model`) and names a backbone timm knows.
6. tracking, when on: its package is installed, and an MLflow `tracking_uri` (else MLFLOW_TRACKING_URI) has
   a form MLflow accepts (`tracking.check_mlflow_uri`), as a fold would open it; nothing is contacted.

timm imports torch, which takes seconds: it is asked once, in a child process started before the image
checks, so its start overlaps them and `check` itself stays torch-free.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.core.config import Competition
from pipeline.core.data import (class_names, constant_target_warning, examples, read_answers, read_csv_text,
                                read_extra, read_sample, read_train)
from pipeline.core.errors import ConfigError, DataError
from pipeline.core.images import decode_image, read_bytes, read_image
from pipeline.core.meta import require_meta_cols
from pipeline.nn.models import ModelConfig, check_backbone, load_model, model_config_path, model_names

N_EXAMPLES = 5  # example paths or ids named per problem
LIST_FOLDER_FROM = 8  # a folder holding fewer of our paths is checked path by path, not listed


class CheckFailed(DataError):
    """`check` found problems; the message lists every one."""


@dataclass
class Report:
    """What `check` printed and the problems it found."""

    lines: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    def line(self, text: str) -> None:
        print(text, flush=True)
        self.lines.append(text)

    def problem(self, text: str) -> None:
        self.problems.append(text)

    def failure(self) -> CheckFailed:
        items = "\n".join(f"  {i}. " + p.replace("\n", "\n     ") for i, p in enumerate(self.problems, 1))
        return CheckFailed(f"check found {len(self.problems)} problem(s):\n{items}")


def run_check(comp: Competition, models_dir: str | Path | None = None, source: str | Path = "competition config",
              n_train_sample: int = 32, n_test_sample: int = 16) -> Report:
    """Check `comp` (already validated) and print one line per check; CheckFailed listing every problem."""
    report = Report()
    report.line(f"config: {source} valid (task {comp.task}, metric {comp.metric}, {comp.n_folds} folds"
                + (f" x {comp.repeats} repeats: {comp.n_folds * comp.repeats} trainings per model)" if comp.repeats > 1
                   else ")"))
    check_tracking(comp, report)
    models = ModelCheck(Path(models_dir or comp.models_dir), comp)  # starts asking timm now
    try:
        train, classes, test_ids = check_tables(comp, report)
        train_ids = None if train is None else list(train[comp.id_col])
        train_found, test_found = check_split(comp, "train", train_ids, report), check_split(comp, "test", test_ids, report)
        check_headers(train_found + test_found, report)
        samples = sample_paths(train_found, n_train_sample) + sample_paths(test_found, n_test_sample)
        check_decoding(samples, models.in_chans(), report, skip=comp.bad_images == "skip")
        if test_ids is not None:
            check_answers(comp, classes, test_ids, report)
        check_extra(comp, train, classes, report)
        check_meta_cols(comp, train, report)
        models.finish(report)
    finally:
        models.close()
    if report.problems:
        raise report.failure()
    report.line("ok")
    return report


# --- 1. tables --------------------------------------------------------------------------------------------


def check_tables(comp: Competition, report: Report
                 ) -> tuple[pd.DataFrame | None, list[str] | None, list[str] | None]:
    """train.csv, its classes and the sample's test ids; None for what cannot be read."""
    train = classes = test_ids = None
    try:
        train = read_train(comp)
        classes = class_names(comp, train)
        what = "target column(s)" if comp.task == "regression" else "classes"
        report.line(f"{comp.train_csv_path}: {len(train)} rows, {len(classes)} {what} ({examples(classes, 8)})")
        constant = constant_target_warning(comp, train)
        if constant:
            report.line(constant)
    except (DataError, ConfigError) as e:
        report.problem(str(e))
        report.line(f"{comp.train_csv_path}: FAILED")
    try:
        test_ids = list(read_sample(comp)[comp.id_col])
        report.line(f"{comp.sample_submission_path}: {len(test_ids)} test rows")
    except DataError as e:
        report.problem(str(e))
        report.line(f"{comp.sample_submission_path}: FAILED")
    return train, classes, test_ids


# --- 2. image paths ---------------------------------------------------------------------------------------


class Folders:
    """File names per folder, listed once each (None: no such folder)."""

    def __init__(self) -> None:
        self._names: dict[str, set[str] | None] = {}

    def names(self, folder: str) -> set[str] | None:
        if folder not in self._names:
            self._names[folder] = list_files(folder)
        return self._names[folder]

    def has(self, path: str) -> bool:
        folder, name = os.path.split(path)
        names = self.names(folder)
        # a name missing from the listing may still open (a case-insensitive file system, an unlistable folder)
        return (names is not None and name in names) or os.path.isfile(path)


def list_files(folder: str) -> set[str] | None:
    """Names of the files (or links to files) in folder; None when it is not a readable folder."""
    try:
        with os.scandir(folder or ".") as entries:
            return {e.name for e in entries if e.is_file()}
    except (FileNotFoundError, NotADirectoryError, PermissionError):
        return None


@dataclass
class PathScan:
    """The image paths of one split and which of them are missing."""

    split: str
    template: str
    ids: list[str]
    paths: list[str]
    missing: list[int]
    folders: Folders
    n_folders: int

    @property
    def key(self) -> str:
        return f"{self.split}_images"

    def found_paths(self) -> list[str]:
        gone = set(self.missing)
        return [p for i, p in enumerate(self.paths) if i not in gone]


def check_split(comp: Competition, split: str, ids: list[str] | None, report: Report) -> list[str]:
    """Check that every image of a split exists; -> the paths found."""
    if ids is None:
        report.line(f"{split} images: not checked (its table failed)")
        return []
    return check_paths(comp, split, ids, report).found_paths()


def check_headers(paths: list[str], report: Report) -> None:
    """Every image's header against the pixel limit, in parallel threads (I/O-bound: a few bytes a file)."""
    from pipeline.core.images import check_header

    with ThreadPoolExecutor(max_workers=16) as pool:
        refused = [why for why in pool.map(check_header, paths, chunksize=64) if why]
    if refused:
        report.problem(f"{len(refused)} image(s) over the pixel limit:\n" + "\n".join(f"  {w}" for w in refused[:10]))


def image_paths(comp: Competition, split: str, ids: list[str]) -> list[str]:
    """comp.image_path for every id, as strings (fast for 100k ids)."""
    template = comp.train_images if split == "train" else comp.test_images
    root = str(comp.data_dir)
    return [os.path.join(root, template.format(id=i)) for i in ids]


def find_missing(paths: list[str], folders: Folders) -> tuple[list[int], int]:
    """Indices of the paths that are not files, and how many folders they are in. A folder holding many of
    the paths is listed once; a path alone in its folder (one folder per id) is looked up by itself."""
    by_folder: dict[str, list[int]] = defaultdict(list)
    for i, path in enumerate(paths):
        by_folder[os.path.dirname(path)].append(i)
    missing = []
    for folder, indices in by_folder.items():
        if len(indices) >= LIST_FOLDER_FROM:
            missing += [i for i in indices if not folders.has(paths[i])]
        else:
            missing += [i for i in indices if not os.path.isfile(paths[i])]
    return sorted(missing), len(by_folder)


def check_paths(comp: Competition, split: str, ids: list[str], report: Report) -> PathScan:
    template = comp.train_images if split == "train" else comp.test_images
    paths = image_paths(comp, split, ids)
    folders = Folders()
    missing, n_folders = find_missing(paths, folders)
    scan = PathScan(split, template, ids, paths, missing, folders, n_folders)
    where = f"{n_folders} folder{'s' if n_folders != 1 else ''}"
    if not missing:
        report.line(f"{split} images: {len(paths)} of {len(paths)} found ({where}, template {template!r})")
        return scan
    report.line(f"{split} images: {len(missing)} of {len(paths)} MISSING ({where}, template {template!r})")
    report.problem(describe_missing(comp, scan))
    return scan


def template_extension(template: str) -> str:
    """The extension the template adds after the id ('.jpg' of 'train/{id}.jpg'); '' when none."""
    after = template.rsplit("{id}", 1)[1]
    return after if re.fullmatch(r"\.[A-Za-z0-9]{1,8}", after) else ""


def describe_missing(comp: Competition, scan: PathScan) -> str:
    """What is missing, with examples, and why when it can tell."""
    missing_paths = [scan.paths[i] for i in scan.missing]
    text = (f"{len(scan.missing)} of {len(scan.paths)} {scan.split} image(s) not found through the template "
            f"{scan.template!r} (competition key '{scan.key}'): {examples(missing_paths, N_EXAMPLES)}")
    hints = [doubled_extension(comp, scan), other_extension(scan), missing_folders(scan)]
    return "\n".join([text, *(f"- {h}" for h in hints if h)])


def doubled_extension(comp: Competition, scan: PathScan) -> str | None:
    """Ids that already end in the extension the template adds (id 'a.jpg', template 'train/{id}.jpg')."""
    ext = template_extension(scan.template)
    if not ext:
        return None
    ending = [i for i in scan.missing if scan.ids[i].lower().endswith(ext.lower())]
    if not ending:
        return None
    fixed = scan.template[: -len(ext)]
    fixed_paths = [os.path.join(str(comp.data_dir), fixed.format(id=scan.ids[i])) for i in ending]
    still, _ = find_missing(fixed_paths, scan.folders)
    found = len(ending) - len(still)
    return (f"{len(ending)} of the missing ids already end in {ext!r}, which the template {scan.template!r} adds "
            f"again (e.g. id {scan.ids[ending[0]]!r} -> {scan.paths[ending[0]]}); with {scan.key}: {fixed!r} "
            f"{found} of them are found" + (f": set {scan.key}: {fixed!r}" if found else ""))


def other_extension(scan: PathScan) -> str | None:
    """Missing files that exist with another extension (template '{id}.png', file 'a.jpg')."""
    ext = template_extension(scan.template) or os.path.splitext(scan.template)[1]
    stems: dict[str, dict[str, list[str]]] = {}  # folder -> stem -> extensions found
    found: Counter[str] = Counter()
    example = None
    for i in scan.missing:
        folder, name = os.path.split(scan.paths[i])
        if folder not in stems:
            stems[folder] = stem_index(scan.folders.names(folder) or set())
        stem = name[: -len(ext)] if ext and name.endswith(ext) else name
        others = stems[folder].get(stem)
        if others:
            found[others[0]] += 1
            example = example or (scan.paths[i], os.path.join(folder, stem + others[0]))
    if not found:
        return None
    common = found.most_common(1)[0][0]
    base = scan.template[: -len(ext)] if ext and scan.template.endswith(ext) else scan.template
    kinds = ", ".join(f"{e} ({n})" for e, n in found.most_common())
    return (f"{sum(found.values())} of the missing images exist with another extension: {kinds} (e.g. {example[1]} "
            f"for {example[0]}); set {scan.key}: {base + common!r}")


def stem_index(names: set[str]) -> dict[str, list[str]]:
    """File stem -> its extensions, sorted ('a.jpg', 'a.png' -> {'a': ['.jpg', '.png']})."""
    index: dict[str, list[str]] = defaultdict(list)
    for name in sorted(names):
        stem, ext = os.path.splitext(name)
        if ext:
            index[stem].append(ext)
    return index


def missing_folders(scan: PathScan) -> str | None:
    """Folders the template points into that are not there, and the folders that the nearest existing one
    holds."""
    absent = sorted({os.path.dirname(scan.paths[i]) for i in scan.missing
                     if not os.path.isdir(os.path.dirname(scan.paths[i]))})
    if not absent:
        return None
    parent = nearest_folder(absent[0])
    try:
        present = sorted(e.name + "/" for e in os.scandir(parent) if e.is_dir())
    except OSError:
        present = []
    held = f"{parent} holds {examples(present, 10)}" if present else f"{parent} holds no folders"
    return f"{len(absent)} folder(s) not found: {examples(absent, N_EXAMPLES)}; {held}"


def nearest_folder(path: str) -> str:
    """The closest existing folder above path."""
    while path and not os.path.isdir(path):
        path = os.path.dirname(path)
    return path or "."


# --- 3. decoding a sample ---------------------------------------------------------------------------------


def sample_paths(paths: list[str], n: int) -> list[str]:
    """n paths evenly spaced over the list (all of them when there are fewer)."""
    if len(paths) <= n:
        return list(paths)
    return [paths[i] for i in np.unique(np.linspace(0, len(paths) - 1, n).round().astype(int))]


def decode_one(path: str, in_chans: int) -> tuple[tuple[int, int, int] | None, str | None]:
    """((height, width, stored channels), None) of an image read as training reads it, or (None, why)."""
    try:
        stored = decode_image(read_bytes(path), path)
        img = read_image(path, in_chans)
    except DataError as e:
        return None, str(e)
    return (img.shape[0], img.shape[1], 1 if stored.ndim == 2 else stored.shape[2]), None


def check_decoding(paths: list[str], in_chans: int, report: Report, skip: bool = False) -> None:
    """Decode the sampled images; those that fail are problems, or warnings under `bad_images: skip`."""
    if not paths:
        report.line("decode: no images to read")
        return
    with ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 1)) as pool:  # OpenCV decodes without the GIL
        results = list(pool.map(lambda p: decode_one(p, in_chans), paths))
    shapes = [s for s, _ in results if s is not None]
    failed = [why for _, why in results if why is not None]
    text = f"decode: {len(shapes)} of {len(paths)} sampled images read as {in_chans} channel(s)"
    if shapes:
        h, w, c = (np.array([s[i] for s in shapes]) for i in range(3))
        channels = ", ".join(f"{k} ({n})" for k, n in sorted(Counter(c.tolist()).items()))
        text += (f"; height {h.min()}..{h.max()}, width {w.min()}..{w.max()}, stored channels {channels}")
    report.line(text)
    if failed and skip:
        report.line(f"warning: {len(failed)} of {len(paths)} sampled image(s) cannot be read; bad_images: skip "
                    "skips them in folds, training and prediction:\n" + "\n".join(f"  {why}" for why in failed))
    elif failed:
        report.problem(f"{len(failed)} of {len(paths)} sampled image(s) cannot be read (replace or remove them, or "
                       "set the competition key bad_images: skip to skip them):\n"
                       + "\n".join(f"  {why}" for why in failed))


# --- 4. answers -------------------------------------------------------------------------------------------


def check_answers(comp: Competition, classes: list[str] | None, test_ids: list[str], report: Report) -> None:
    if comp.answers is None:
        report.line("answers: none (competition key 'answers' not set; no true test score)")
        return
    path = Path(comp.answers)
    problem = answers_problem(comp, path, classes, test_ids)
    if problem:
        report.line(f"answers: {path} FAILED")
        report.problem(problem)
    else:
        report.line(f"answers: {path} covers all {len(test_ids)} test ids")


def answers_problem(comp: Competition, path: Path, classes: list[str] | None, test_ids: list[str]) -> str | None:
    """Why the answers file cannot give a true test score; None when it can. Its labels are checked as
    training's are when the classes are known."""
    if not path.is_file():
        return f"{path}: answers file not found (competition key 'answers')"
    try:
        df = read_csv_text(path, " (competition key 'answers')")
    except DataError as e:
        return str(e)
    lacking_cols = [c for c in [comp.id_col, *comp.target_cols] if c not in df.columns]
    if lacking_cols:
        return (f"{path}: column(s) {lacking_cols} missing (competition keys 'id_col', 'target'); "
                f"columns are {list(df.columns)}")
    lacking = pd.Index(test_ids).difference(pd.Index(df[comp.id_col]))
    if len(lacking):
        return f"{path}: no answer for {len(lacking)} of {len(test_ids)} test id(s): {examples(lacking, N_EXAMPLES)}"
    if classes is None:  # train.csv failed: its problem is reported already
        return None
    try:
        read_answers(comp, classes, test_ids)
    except DataError as e:
        return str(e)
    return None


def check_extra(comp: Competition, train: pd.DataFrame | None, classes: list[str] | None, report: Report) -> None:
    """The extra table (competition keys extra_train, extra_images), read as a fold reads it."""
    if comp.extra_train is None:
        return
    path = comp.extra_train_path
    if train is None or classes is None:  # train.csv failed: its problem is reported already
        report.line(f"extra: {path} not checked (train.csv failed)")
        return
    try:
        ids, _ = read_extra(comp, classes, list(train[comp.id_col]))
    except (DataError, ConfigError) as e:
        report.line(f"extra: {path} FAILED")
        report.problem(str(e))
        return
    report.line(f"extra: {path}: {len(ids)} rows, every label a class and every image found "
                f"(template {comp.extra_images!r}); they join every fold's training part")


def check_meta_cols(comp: Competition, train: pd.DataFrame | None, report: Report) -> None:
    """meta_cols (when set) are columns of train.csv and of the test table (test_csv, else the sample
    submission), as `ensemble` reads them (pipeline.core.meta)."""
    test = comp.data_dir / comp.test_csv if comp.test_csv else comp.sample_submission_path
    for path in [comp.train_csv_path, test] if comp.meta_cols else []:
        try:
            cols = train.columns if path == comp.train_csv_path and train is not None else read_csv_text(path).columns
        except DataError as e:
            report.problem(f"competition key meta_cols: {e}")
            continue
        missing = [c for c in [comp.id_col, *comp.meta_cols] if c not in cols]
        if missing:
            hint = "" if comp.test_csv or path != test else "; set the competition key test_csv to the test table"
            report.problem(f"competition key meta_cols: {path} has no column(s) {', '.join(missing)}{hint}")
        else:
            report.line(f"meta_cols: {path} has {', '.join(comp.meta_cols)}")


# --- tracking --------------------------------------------------------------------------------------------


def check_tracking(comp: Competition, report: Report) -> None:
    """The tracking store as a fold would open it (`tracking`, `tracking_uri`), with nothing contacted: a line,
    or a problem naming the key."""
    if comp.tracking == "none":
        return
    problem, where = tracking_problem(comp)
    report.line(f"tracking: {comp.tracking}, {where}" if problem is None else "tracking: FAILED")
    if problem:
        report.problem(problem)


def tracking_problem(comp: Competition) -> tuple[str | None, str]:
    """(why the tracker would not open, or None; where it logs)."""
    import importlib.util

    from pipeline.core.tracking import DEFAULT_MLFLOW_URI, check_mlflow_uri

    if importlib.util.find_spec(comp.tracking) is None:
        return (f"competition key 'tracking': {comp.tracking} needs the {comp.tracking} package: pip install -e "
                "'.[tracking]' (make install includes it)"), ""
    if comp.tracking == "wandb":
        if comp.tracking_uri not in (None, "offline"):
            return (f"competition key 'tracking_uri': {comp.tracking_uri!r} means nothing to wandb: offline (log "
                    "without a network, for a later `wandb sync`) or null (online)"), ""
        return None, "offline" if comp.tracking_uri else "online"
    source = "competition key 'tracking_uri'" if comp.tracking_uri else "MLFLOW_TRACKING_URI"
    uri = comp.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_MLFLOW_URI
    if not (comp.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")):
        source = "the default"
    try:
        check_mlflow_uri(uri, source)
    except ConfigError as e:
        return str(e), ""
    return None, f"{uri} ({source})"


# --- 5. model configs -------------------------------------------------------------------------------------


class ModelCheck:
    """Validates every model config in models_dir at once, and starts a child process asking timm about their
    backbones; `finish` reports both."""

    def __init__(self, models_dir: Path, comp: Competition) -> None:
        self.models_dir = models_dir
        self.names = model_names(models_dir) if models_dir.is_dir() else []
        self.configs: dict[str, ModelConfig] = {}
        self.problems: dict[str, list[str]] = defaultdict(list)  # config file -> its problems
        for name in self.names:
            source = str(model_config_path(models_dir, name))
            try:
                cfg, _ = load_model(models_dir, name)
            except ConfigError as e:
                self.problems[source].append(str(e))
                continue
            self.configs[source] = cfg
            if cfg.meta_head:
                try:
                    require_meta_cols(comp, source)
                except ConfigError as e:
                    self.problems[source].append(str(e))
            if isinstance(cfg.pretrained, str) and not Path(cfg.pretrained).is_file():
                self.problems[source].append(f"{source}: key 'pretrained': weights file {cfg.pretrained} not found")
        self.lookup = BackboneLookup(self.backbones())

    def backbones(self) -> list[str]:
        return sorted({cfg.backbone for cfg in self.configs.values()})

    def in_chans(self) -> int:
        """The channels the models read (3 when any reads RGB, or there are none)."""
        chans = {cfg.in_chans for cfg in self.configs.values()}
        return 1 if chans == {1} else 3

    def finish(self, report: Report) -> None:
        if not self.names:
            report.line(f"models: no model configs (*.yaml) in {self.models_dir} (competition key 'models_dir'); "
                        "`make train-all` needs at least one")
            return
        try:
            unknown = self.lookup.result()
        except ConfigError as e:
            unknown = {}
            report.problem(str(e))
        for source, cfg in self.configs.items():
            if cfg.backbone in unknown:
                self.problems[source].append(f"{source}: {unknown[cfg.backbone]}")
        failed = sum(1 for p in self.problems.values() if p)
        report.line(f"models: {len(self.names)} config(s) in {self.models_dir}: {examples(self.names, 8)}; "
                    f"{len(self.names) - failed} valid" + (f", {failed} FAILED" if failed else "")
                    + f"; backbones {examples(self.backbones(), 8)}")
        for problems in self.problems.values():
            for problem in problems:
                report.problem(problem)

    def close(self) -> None:
        self.lookup.close()


def unknown_backbones(names: list[str]) -> dict[str, str]:
    """Backbone name -> why timm does not know it (with close matches), for the names timm does not know."""
    unknown = {}
    for name in names:
        try:
            check_backbone(name)
        except ConfigError as e:
            unknown[name] = str(e)
    return unknown


_LOOKUP = ("import json, sys\nfrom pipeline.artifacts.check import unknown_backbones\n"
           "print(json.dumps(unknown_backbones(sys.argv[1:])))")


class BackboneLookup:
    """`unknown_backbones(names)` in a child process (timm imported once, there), started at once."""

    def __init__(self, names: list[str]) -> None:
        self.names = names
        self.proc = None
        if names:
            root = str(Path(__file__).resolve().parents[2])
            env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))}
            self.proc = subprocess.Popen([sys.executable, "-c", _LOOKUP, *names], stdout=subprocess.PIPE,
                                         stderr=subprocess.PIPE, text=True, env=env)

    def result(self, timeout: float = 300) -> dict[str, str]:
        if self.proc is None:
            return {}
        out, err = self.proc.communicate(timeout=timeout)
        if self.proc.returncode != 0:
            last = (err.strip().splitlines() or ["no message"])[-1]
            raise ConfigError(f"cannot ask timm whether backbones {self.names} exist: {last}")
        return json.loads(out.strip().splitlines()[-1])

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
