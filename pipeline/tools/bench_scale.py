"""`bench-scale`: how the stages around the model grow with the data, measured through the real CLI.

Synthetic competitions in a working folder (default bench-scale/), one per cell of --rows x --classes:
16 px grayscale PNGs, a random template per class plus noise, a test set of a fifth of the training rows,
and one model config (so `check` asks timm about it as it would in a real project). Beside them, a set of
large JPEGs (200 of 2000x1500 by default) for the image path.

Every stage runs as its own process, `python -m pipeline <stage>` in the cell's folder, timed from its
start to its exit (interpreter start and imports included); its peak memory is the largest resident set of
the stage and its children (the rusage `os.wait4` returns for it). A stage past --timeout seconds or over
--max-mem-gib (the resident sets of its process group, polled) is killed and recorded as such; the stages
that need its output are recorded as skipped.

Stages per cell: check, folds, folds again (a no-op), the level-1 tables, ensemble --method mean,
ensemble --method auto, ensemble again (a no-op). No model is trained: the level-1 tables are fabricated
as trained models would leave them (3 models' OOF and test probability tables with their sidecars,
written by `pipeline.artifacts.tables.write_table` as `predict` writes them, but without predict's record,
which needs runs/), in a process of their own (`python -m pipeline.tools.bench_scale level1 <cell>`), so
the cost of writing them is measured too. On the JPEG set: check and folds.

Writes <out>/bench_scale.json and its own section of docs/benchmarks.md (between the BEGIN/END markers,
atomically; the rest of the file is kept, and `make bench` keeps the section).
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.core.io import write_json, write_text

BEGIN = "<!-- bench-scale: begin (written by make bench-scale) -->"
END = "<!-- bench-scale: end -->"
DATA_VERSION = 2  # bump when the generated data changes, so old cells are written again

# (row label, the CLI words, or None for the fabricated level-1 tables, the stage it needs first)
STAGES: list[tuple[str, list[str] | None, str | None]] = [
    ("check", ["check"], None),
    ("folds", ["folds"], None),
    ("folds (no-op)", ["folds"], "folds"),
    ("level-1 tables", None, "folds"),
    ("ensemble --method mean", ["ensemble", "--method", "mean"], "level-1 tables"),
    ("ensemble --method auto", ["ensemble", "--method", "auto"], "level-1 tables"),
    ("ensemble (no-op)", ["ensemble"], "ensemble"),  # needs some ensemble to have finished
]
JPEG_STAGES = [("check", ["check"], None), ("folds", ["folds"], None)]
MODEL_CONFIG = {"backbone": "resnet18", "pretrained": False, "img_size": 16, "in_chans": 1}


@dataclass(frozen=True)
class Cell:
    rows: int
    classes: int

    @property
    def name(self) -> str:
        return f"r{self.rows}_c{self.classes}"

    @property
    def label(self) -> str:
        return f"{_count(self.rows)} x {self.classes:,}"

    @property
    def test_rows(self) -> int:
        return max(self.rows // 5, 1)


def _count(n: int) -> str:
    return f"{n // 1000}k" if n >= 1000 and n % 1000 == 0 else f"{n:,}"


# --- synthetic competitions ------------------------------------------------------------------------------


def _write_images(folder: Path, ids: list[str], images, ext: str, params: tuple = ()) -> None:
    import cv2

    folder.mkdir(parents=True, exist_ok=True)

    def one(item) -> None:
        image_id, img = item
        if not cv2.imwrite(str(folder / f"{image_id}{ext}"), img, list(params)):
            raise OSError(f"cv2 could not write {folder / image_id}{ext}")

    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:  # cv2 releases the GIL
        list(pool.map(one, zip(ids, images)))


def _write_tables(data: Path, train_ids, labels, test_ids, first_class: str) -> None:
    import pandas as pd

    from pipeline.core.io import write_csv

    write_csv(data / "train.csv", pd.DataFrame({"image_id": train_ids, "label": labels}))
    write_csv(data / "sample_submission.csv", pd.DataFrame({"image_id": test_ids, "label": first_class}))


def _prepare(folder: Path, spec: dict) -> bool:
    """True when `folder` already holds the data `spec` describes; else empty it (and write nothing yet)."""
    marker = folder / "data.json"
    if marker.is_file() and json.loads(marker.read_text()) == spec:
        return True
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    return False


def _finish(folder: Path, spec: dict, n_folds: int, seed: int) -> None:
    comp = {"data_dir": "data", "id_col": "image_id", "target": "label", "task": "multiclass",
            "metric": "logloss", "n_folds": n_folds, "seed": seed, "models_dir": "models"}
    (folder / "models").mkdir(exist_ok=True)
    write_text(folder / "models" / "bench.yaml", json.dumps(MODEL_CONFIG) + "\n")  # JSON is YAML
    write_text(folder / "competition.yaml", json.dumps(comp) + "\n")
    write_json(folder / "data.json", spec)  # last: the cell is complete


def write_cell(folder: Path, cell: Cell, n_folds: int = 5, seed: int = 0, size: int = 16, channels: int = 1) -> Path:
    """A competition of `cell.rows` training images over `cell.classes` classes (reused when written before)."""
    spec = {"rows": cell.rows, "classes": cell.classes, "test_rows": cell.test_rows, "size": size, "seed": seed,
            "n_folds": n_folds, "channels": channels, "version": DATA_VERSION}
    if _prepare(folder, spec):
        return folder
    rng = np.random.default_rng(seed)
    shape = (size, size) if channels == 1 else (size, size, channels)
    templates = rng.integers(40, 216, (cell.classes, *shape), dtype=np.int16)
    y = rng.permutation(np.arange(cell.rows) % cell.classes)
    y_test = rng.integers(0, cell.classes, cell.test_rows)
    names = [f"c{i:0{len(str(cell.classes - 1))}d}" for i in range(cell.classes)]
    data = folder / "data"
    for split, labels in (("train", y), ("test", y_test)):
        ids = [f"{split[:2]}{i:07d}" for i in range(len(labels))]
        for start in range(0, len(labels), 4096):  # in chunks: large images stay small in memory
            part = labels[start:start + 4096]
            noise = rng.integers(-40, 41, (len(part), *shape), dtype=np.int16)
            _write_images(data / split, ids[start:start + 4096], np.clip(templates[part] + noise, 0, 255)
                          .astype(np.uint8), ".png")
        if split == "train":
            train_ids = ids
    _write_tables(data, train_ids, [names[k] for k in y], ids, names[0])
    _finish(folder, spec, n_folds, seed)
    return folder


def write_jpeg_set(folder: Path, n: int, width: int, height: int, classes: int = 10, n_folds: int = 5,
                   seed: int = 0) -> Path:
    """`n` training and n/4 test JPEGs of width x height: smooth class templates, each image with a smooth field
    of its own (so no two are near-duplicates for `folds`' perceptual hash) plus mild noise."""
    import cv2

    classes = max(2, min(classes, n // (2 * n_folds)))  # a tiny set keeps enough rows per class for its folds
    spec = {"rows": n, "width": width, "height": height, "classes": classes, "seed": seed, "n_folds": n_folds,
            "version": DATA_VERSION}
    if _prepare(folder, spec):
        return folder
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (classes, 6, 8, 3), dtype=np.uint8)
    templates = [cv2.resize(t, (width, height), interpolation=cv2.INTER_CUBIC).astype(np.int16) for t in small]
    y = rng.permutation(np.arange(n) % classes)
    y_test = rng.integers(0, classes, max(n // 4, 1))
    data = folder / "data"
    for split, labels in (("train", y), ("test", y_test)):
        ids = [f"{split[:2]}{i:05d}" for i in range(len(labels))]
        images = (np.clip(templates[k] + _smooth_field(rng, width, height) + rng.integers(-6, 7, (height, width, 3),
                                                                                        dtype=np.int16), 0, 255)
                  .astype(np.uint8) for k in labels)  # one at a time: 9 MB each
        _write_images(data / split, ids, images, ".jpg", (cv2.IMWRITE_JPEG_QUALITY, 90))
        if split == "train":
            train_ids = ids
    _write_tables(data, train_ids, [f"c{k}" for k in y], ids, "c0")
    comp_images = {"train_images": "train/{id}.jpg", "test_images": "test/{id}.jpg"}
    _finish(folder, spec, n_folds, seed)
    comp = json.loads((folder / "competition.yaml").read_text())
    write_text(folder / "competition.yaml", json.dumps({**comp, **comp_images}) + "\n")
    write_json(folder / "models" / "bench.yaml", {**MODEL_CONFIG, "img_size": 224, "in_chans": 3})
    return folder


def _smooth_field(rng, width: int, height: int) -> np.ndarray:
    """A low-frequency random field of amplitude about 100 grey levels, one per image."""
    import cv2

    small = rng.integers(-100, 101, (6, 8, 3)).astype(np.float32)
    return cv2.resize(small, (width, height), interpolation=cv2.INTER_CUBIC).astype(np.int16)


def clear_outputs(folder: Path) -> None:
    """Stage outputs of an earlier run, so every first run of a stage does its whole work."""
    for name in ("folds", "stacking", "submissions", "runs"):
        shutil.rmtree(folder / name, ignore_errors=True)


# --- the level-1 tables a trained model would leave ------------------------------------------------------


def level1_paths(stacking: Path, model: str) -> tuple[Path, Path]:
    """Where `predict` puts a model's OOF and test tables (the one place this module names them)."""
    from pipeline.artifacts.tables import table_path

    return table_path(stacking, f"{model}.oof"), table_path(stacking, f"{model}.test")


def fabricate_level1(folder: Path, n_models: int = 3, seed: int = 0) -> list[str]:
    """Write `n_models` models' OOF and test tables into folder/stacking, as `predict` would: softmax of
    noise plus a per-model signal on the true class (OOF) or a random class (test); return the names."""
    import contextlib

    from pipeline.artifacts.folds import competition_identity
    from pipeline.artifacts.tables import find_models, write_table
    from pipeline.core.config import load_competition
    from pipeline.core.data import class_names, encode_targets, read_sample, read_train
    from pipeline.core.io import file_md5

    with contextlib.chdir(folder):
        comp = load_competition("competition.yaml")
        train = read_train(comp)
        classes = class_names(comp, train)
        y = encode_targets(comp, train, classes)
        ids = train[comp.id_col].tolist()
        test_ids = read_sample(comp)[comp.id_col].tolist()
        identity, folds_md5 = competition_identity(comp, ids), file_md5("folds/folds.csv")
        rng = np.random.default_rng(seed)
        names = []
        for m in range(n_models):
            name = f"model{m}"
            oof = _softmax_rows(rng, y, len(classes), 1.5 + 0.5 * m)
            test = _softmax_rows(rng, rng.integers(0, len(classes), len(test_ids)), len(classes), 1.5 + 0.5 * m)
            oof_path, test_path = level1_paths(Path("stacking"), name)
            write_table(oof_path, ids, oof, classes, comp.id_col,
                        meta={"folds_md5": folds_md5, "competition": identity, "model": name, "metric": comp.metric,
                              "classes": classes, "tta": ["none"], "tta_merge": "mean"})
            write_table(test_path, test_ids, test, classes, comp.id_col,
                        meta={"folds_md5": folds_md5, "competition": identity, "model": name})
            names.append(name)
        found = find_models("stacking")[0]
    if sorted(found) != names:
        raise RuntimeError(f"the pipeline finds models {found} in {folder / 'stacking'}, not {names}: "
                           "level1_paths no longer matches pipeline.artifacts.tables")
    return names


def _softmax_rows(rng, y: np.ndarray, n_classes: int, signal: float, chunk: int = 8192) -> np.ndarray:
    out = np.empty((len(y), n_classes), dtype=np.float64)
    for start in range(0, len(y), chunk):  # in chunks: 100k x 1,000 temporaries stay small
        part = y[start:start + chunk]
        z = rng.standard_normal((len(part), n_classes))
        z[np.arange(len(part)), part] += signal
        z = np.exp(z - z.max(axis=1, keepdims=True))
        out[start:start + len(part)] = z / z.sum(axis=1, keepdims=True)
    return out


# --- one stage, one process -------------------------------------------------------------------------------


def _group_rss(pgid: int) -> int:
    """Bytes resident in the processes of group `pgid` (Linux /proc; 0 where it cannot be read)."""
    total, page = 0, os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
    for entry in os.scandir("/proc") if os.path.isdir("/proc") else ():
        if not entry.name.isdigit():
            continue
        try:
            stat = Path(entry.path, "stat").read_text()
            if int(stat.rsplit(")", 1)[1].split()[2]) == pgid:  # field 5: the process group
                total += int(Path(entry.path, "statm").read_text().split()[1]) * page
        except (OSError, ValueError, IndexError):
            continue
    return total


def run_stage(argv: list[str], cwd: Path, log: Path, timeout: float, max_mem: float, env: dict | None = None) -> dict:
    """Run one stage as its own process group; -> status (ok, failed, timeout, over memory), wall seconds
    and the peak resident MiB of its largest process (os.wait4's rusage covers it and its children)."""
    log.parent.mkdir(parents=True, exist_ok=True)
    reaped: dict = {}
    with open(log, "w") as out:
        out.write("$ " + " ".join(argv) + "\n")
        out.flush()
        t0 = time.perf_counter()
        proc = subprocess.Popen(argv, cwd=cwd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                                env={**os.environ, **env} if env else None)

        def reap() -> None:
            _, status, usage = os.wait4(proc.pid, 0)
            reaped.update(t=time.perf_counter(), status=status, usage=usage)

        waiter = threading.Thread(target=reap, daemon=True)
        waiter.start()
        killed, over_mem = None, 0.0
        while waiter.is_alive():
            waiter.join(0.2)
            if not waiter.is_alive():
                break
            if time.perf_counter() - t0 > timeout:
                killed = "timeout"
            elif max_mem and (rss := _group_rss(proc.pid)) > max_mem:
                killed, over_mem = "over memory", rss
            if killed:
                with _quiet():
                    os.killpg(proc.pid, signal.SIGKILL)
                waiter.join()
    proc.returncode = os.waitstatus_to_exitcode(reaped["status"])  # reaped here, not by Popen
    wall, peak = reaped["t"] - t0, reaped["usage"].ru_maxrss / 1024  # ru_maxrss: KiB on Linux
    if killed == "timeout":
        return {"status": "timeout", "wall_s": wall, "peak_mib": peak, "note": f"killed after {timeout:.0f} s"}
    if killed:
        return {"status": "over memory", "wall_s": wall, "peak_mib": max(peak, over_mem / 2**20),
                "note": f"killed at {over_mem / 2**30:.1f} GiB resident (limit {max_mem / 2**30:.1f} GiB)"}
    if proc.returncode != 0:
        tail = log.read_text().strip().splitlines()[-1:] or [""]
        return {"status": "failed", "wall_s": wall, "peak_mib": peak,
                "note": f"exit {proc.returncode}: {tail[0][:200]} (log: {log})"}
    return {"status": "ok", "wall_s": wall, "peak_mib": peak}


class _quiet:
    def __enter__(self):
        return self

    def __exit__(self, kind, value, tb):
        return kind is not None and issubclass(kind, ProcessLookupError)


def run_stages(folder: Path, stages, logs: Path, timeout: float, max_mem: float, skip: set[str],
               n_models: int = 3) -> dict[str, dict]:
    """The stages in order in `folder`; a stage whose prerequisite did not finish is skipped."""
    results: dict[str, dict] = {}
    for label, words, needs in stages:
        if label in skip:
            results[label] = {"status": "skipped", "note": "not asked for"}
            continue
        if needs == "ensemble":
            done = any(r.get("status") == "ok" for k, r in results.items() if k.startswith("ensemble --method"))
        else:
            done = needs is None or results.get(needs, {}).get("status") == "ok"
        if not done:
            results[label] = {"status": "skipped", "note": f"{needs} did not finish"}
            continue
        if words is None:
            argv = [sys.executable, "-m", "pipeline.tools.bench_scale", "level1", str(folder.resolve()), str(n_models)]
        else:
            argv = [sys.executable, "-m", "pipeline", *words, "-c", "competition.yaml"]
        log = logs / (label.replace(" ", "_").replace("-", "").replace("(", "").replace(")", "") + ".log")
        results[label] = run_stage(argv, folder, log, timeout, max_mem)
        r = results[label]
        print(f"  {label:<24} {r['status']:<11} {r['wall_s']:8.2f} s {r['peak_mib']:8.0f} MiB", flush=True)
    return results


# --- the table ---------------------------------------------------------------------------------------------


def _cell_text(r: dict | None) -> str:
    if not r:
        return "-"
    if r["status"] == "skipped":
        return "skipped"
    if r["status"] != "ok":
        return f"**{r['status']}** ({r['wall_s']:.0f} s)"
    return f"{r['wall_s']:.2f} s · {r['peak_mib']:,.0f} MiB"


def growth(small: dict | None, large: dict | None, size_ratio: float) -> str:
    """'x time / x memory' from the smaller size to the larger; flagged when either grows faster than the size."""
    if not small or not large or small.get("status") != "ok" or large.get("status") != "ok":
        return "n/a"
    t, m = large["wall_s"] / max(small["wall_s"], 1e-9), large["peak_mib"] / max(small["peak_mib"], 1e-9)
    flag = " **> linear**" if max(t, m) > size_ratio * 1.1 else ""
    return f"×{t:.1f} / ×{m:.1f}{flag}"


def growth_columns(rows: list[int], classes: list[int]) -> list[tuple[str, Cell, Cell, float]]:
    """(header, smaller cell, larger cell, size ratio): rows min -> max at each class count, and classes
    min -> max at each row count."""
    cols = []
    if len(rows) > 1:
        lo, hi = min(rows), max(rows)
        cols += [(f"rows {_count(lo)} → {_count(hi)} at {c:,} classes", Cell(lo, c), Cell(hi, c), hi / lo)
                 for c in classes]
    if len(classes) > 1:
        lo, hi = min(classes), max(classes)
        cols += [(f"classes {lo:,} → {hi:,} at {_count(r)} rows", Cell(r, lo), Cell(r, hi), hi / lo) for r in rows]
    return cols


def markdown(res: dict) -> str:
    m, cells = res["machine"], [Cell(**c) for c in res["cells"]]
    rows, classes = sorted({c.rows for c in cells}), sorted({c.classes for c in cells})
    cols = growth_columns(rows, classes)
    by = {(r["cell"], r["stage"]): r for r in res["results"]}
    lines = [
        BEGIN, "", "## Scale: the stages around the model (`make bench-scale`)", "",
        f"Latest run: {res['date']} on {m['platform']}, {m['cpus']} CPUs, Python {m['python']}. "
        f"Command: `{res['command']}` ({res['total_s'] / 60:.1f} min in all, "
        f"{res['data_s'] / 60:.1f} of them writing the data).", "",
        "Synthetic competitions (16 px grayscale PNGs, a random template per class plus noise, test rows a fifth "
        "of the training rows, 5 folds, metric logloss; one model config for `check`). Each stage ran as its own "
        "process through the CLI (`python -m pipeline <stage>`): wall seconds from its start to its exit "
        "(interpreter start and imports included) · peak resident memory of its largest process (itself or a "
        f"child). Killed past {res['timeout_s']:.0f} s or {res['max_mem_gib']:g} GiB. No model is trained: "
        f"`level-1 tables` writes {res['n_models']} models' OOF and test tables as `predict` would "
        "(`pipeline.artifacts.tables.write_table`, sidecars included).", "",
        "The default run covers 10k and 100k training rows × 10 and 1,000 classes and 200 JPEGs of 2000×1500, "
        "with a stage killed past 300 s or 8 GiB (`--rows`, `--classes`, `--jpegs`, `--timeout`, `--max-mem-gib`, "
        "`--skip-auto` change it; a 100k × 1,000 cell holds 360M level-1 probabilities). The claim checked: every "
        "stage besides the model's own forward and backward grows at most linearly in the data.", "",
        "Growth: time ratio / memory ratio from the smaller size to the larger; **> linear** marks a ratio above "
        "the size ratio (x1.1 allowed for noise). Stages of a few seconds are mostly interpreter start and "
        "imports, so they grow less than their work does.", "",
        "| stage | " + " | ".join(c.label for c in cells) + "".join(f" | {h}" for h, *_ in cols) + " |",
        "|---" * (1 + len(cells) + len(cols)) + "|",
    ]
    for label, *_ in STAGES:
        cells_text = [_cell_text(by.get((c.name, label))) for c in cells]
        grow = [growth(by.get((a.name, label)), by.get((b.name, label)), ratio) for _, a, b, ratio in cols]
        lines.append(f"| {label} | " + " | ".join(cells_text + grow) + " |")
    jpeg = [r for r in res["results"] if r["cell"] == "jpeg"]
    if jpeg:
        j = res["jpeg"]
        lines += ["", f"Large images: {j['rows']} training and {j['rows'] // 4} test JPEGs of "
                  f"{j['width']}×{j['height']} (quality 90, smooth templates plus noise; `check` decodes a sample, "
                  "`folds` hashes and decodes every training image).", "",
                  "| stage | wall · peak memory | per training image |", "|---|---|---|"]
        for r in jpeg:  # `folds` reads every training image; `check` a sample
            per = f"{1000 * r['wall_s'] / j['rows']:.1f} ms" if r["status"] == "ok" and r["stage"] == "folds" else "-"
            lines.append(f"| {r['stage']} | {_cell_text(r)} | {per} |")
    notes = [f"- {r['cell']} {r['stage']}: {r['note']}" for r in res["results"] if r.get("note")
             and r["status"] not in ("ok", "skipped")]
    if notes:
        lines += ["", "Stages that did not finish:", "", *notes]
    return "\n".join([*lines, "", END]) + "\n"


def write_section(docs: Path, section: str, begin: str = BEGIN, end: str = END) -> None:
    """Replace the section between `begin` and `end` in `docs` (or append it), atomically; the rest of the file
    is kept. `section` holds the markers itself."""
    old = docs.read_text() if docs.is_file() else "# Benchmarks\n"
    if begin in old and end in old.split(begin, 1)[1]:
        head, rest = old.split(begin, 1)
        text = head + section.rstrip("\n") + rest.split(end, 1)[1]
    else:
        text = old.rstrip("\n") + "\n\n" + section
    write_text(docs, text)


# --- the whole run -----------------------------------------------------------------------------------------


def machine() -> dict:
    return {"platform": platform.platform(), "python": platform.python_version(), "cpus": os.cpu_count()}


def run_bench_scale(out, rows, classes, jpegs=200, jpeg_size="2000x1500", skip_auto: bool = False, timeout=300,
                    max_mem_gib=8.0, n_models=3, docs="docs/benchmarks.md", command: str | None = None) -> dict:
    """The whole run. Sizes may be given as the CLI gives them: rows and classes as '10000,100000', jpeg_size as
    '2000x1500', numbers as text; docs '' or None: the table goes nowhere but <out>/bench_scale.json."""
    ints = (lambda v: [int(x) for x in str(v).split(",") if x.strip()] if isinstance(v, str) else list(v))
    out, rows, classes, jpegs, timeout = Path(out), ints(rows), ints(classes), int(jpegs), float(timeout)
    max_mem_gib, n_models, docs = float(max_mem_gib), int(n_models), Path(docs) if docs else None
    jpeg_size = tuple(ints(jpeg_size.lower().replace("x", ","))) if isinstance(jpeg_size, str) else tuple(jpeg_size)
    started = time.perf_counter()
    res: dict = {"date": time.strftime("%Y-%m-%d %H:%M"), "machine": machine(),
                 "command": command or " ".join(["python -m pipeline bench-scale", *sys.argv[2:]]),
                 "timeout_s": timeout, "max_mem_gib": max_mem_gib, "n_models": n_models, "cells": [], "results": []}
    max_mem, data_s = max_mem_gib * 2**30, 0.0
    skip = {"ensemble --method auto"} if skip_auto else set()
    for c in sorted({Cell(r, k) for r in rows for k in classes}, key=lambda c: (c.classes, c.rows)):
        folder = out / c.name
        t0 = time.perf_counter()
        print(f"{c.name}: writing {c.rows:,} + {c.test_rows:,} images over {c.classes:,} classes (reused when "
              "written before)", flush=True)
        write_cell(folder, c)
        clear_outputs(folder)
        data_s += time.perf_counter() - t0
        res["cells"].append({"rows": c.rows, "classes": c.classes})
        for stage, r in run_stages(folder, STAGES, folder / "logs", timeout, max_mem, skip, n_models).items():
            res["results"].append({"cell": c.name, "stage": stage, **r})
    if jpegs:
        width, height = jpeg_size
        folder = out / f"jpeg{jpegs}_{width}x{height}"
        t0 = time.perf_counter()
        print(f"{folder.name}: writing {jpegs} + {jpegs // 4} JPEGs of {width}x{height}", flush=True)
        write_jpeg_set(folder, jpegs, width, height)
        clear_outputs(folder)
        data_s += time.perf_counter() - t0
        res["jpeg"] = {"rows": jpegs, "width": width, "height": height}
        for stage, r in run_stages(folder, JPEG_STAGES, folder / "logs", timeout, max_mem, set()).items():
            res["results"].append({"cell": "jpeg", "stage": stage, **r})
    res["data_s"], res["total_s"] = data_s, time.perf_counter() - started
    write_json(out / "bench_scale.json", res)
    text = markdown(res)
    if docs is not None:
        write_section(docs, text)
    print(text)
    return res


def main(argv: list[str]) -> int:
    """`python -m pipeline.tools.bench_scale level1 <cell folder> [n_models]`: the fabricated level-1 stage."""
    if len(argv) < 2 or argv[0] != "level1":
        print("usage: python -m pipeline.tools.bench_scale level1 <cell folder> [n_models]", file=sys.stderr)
        return 2
    names = fabricate_level1(Path(argv[1]), int(argv[2]) if len(argv) > 2 else 3)
    print(f"wrote the OOF and test tables of {', '.join(names)} to {Path(argv[1]) / 'stacking'}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
