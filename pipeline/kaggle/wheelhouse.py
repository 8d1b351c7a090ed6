"""The bundle's wheels: the project as a wheel, and a wheelhouse of what the kernel imports beyond Kaggle's
image, with its dependencies resolved as installed here, so that the kernel installs everything offline."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tempfile
from importlib import metadata
from pathlib import Path

from pipeline.kaggle.ids import PackageError, warn

# What the kernel imports that the Kaggle image lacks or has in other versions; `name` alone takes the
# installed version. Their dependencies join the wheelhouse too, less what KAGGLE_IMAGE brings.
DEFAULT_WHEELS = ("iterative-stratification", "albumentations", "timm")
# What Kaggle's Python image reliably has, with everything these pull in: the wheelhouse leaves them out.
# opencv is not here: Kaggle has opencv-python, while albumentations and albucore require the
# opencv-python-headless distribution by name, so the headless wheel ships (cv2 imports either way).
KAGGLE_IMAGE = ("torch", "torchvision", "numpy", "pandas", "scikit-learn", "scipy", "lightgbm", "catboost",
                "pyyaml", "pydantic", "safetensors", "tqdm", "pyarrow")
# The Python of Kaggle's image: compiled wheels (cp3XX) of the wheelhouse install only under the same minor.
KAGGLE_PYTHON = (3, 11)
CREDENTIAL_NAMES = {"kaggle.json", ".netrc", "credentials.json"}  # never copied into a wheel or the bundle
PROJECT_WHEEL = "kaggle_kfold_pipeline-"  # how the project's wheel file name starts


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
    wheels = sorted(dest.glob(f"{PROJECT_WHEEL}*.whl"))
    if not wheels:
        raise PackageError(f"pip wheel wrote no project wheel into {dest}")
    return wheels[-1]


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


def warn_other_python(wheels: list[Path]) -> None:
    """Warn when a compiled wheel (an ABI tag such as cp311; abi3 and none install on any later Python) was
    resolved for another Python than Kaggle's: it will not install there."""
    from packaging.utils import parse_wheel_filename

    compiled = [w.name for w in wheels if any(t.abi.startswith("cp") for t in parse_wheel_filename(w.name)[3])]
    if compiled and sys.version_info[:2] != KAGGLE_PYTHON:
        warn(f"the wheelhouse was built for Python {sys.version_info[0]}.{sys.version_info[1]}, and Kaggle's image runs "
             f"{KAGGLE_PYTHON[0]}.{KAGGLE_PYTHON[1]}: {', '.join(compiled[:3])} will not install there. Run `make "
             f"package` with Python {KAGGLE_PYTHON[0]}.{KAGGLE_PYTHON[1]} (PYTHON=python3.11 make install)")


def build_wheelhouse(project: Path, dest: Path, wheels: tuple[str, ...] | None, find_links: tuple[str, ...]
                     ) -> tuple[Path, list[Path]]:
    """The project's wheel and the wheelhouse (DEFAULT_WHEELS when `wheels` is None) into dest;
    -> (the project's wheel, the dependency wheels)."""
    project_wheel = build_wheel(project, dest)
    specs = wheelhouse_specs(list(DEFAULT_WHEELS if wheels is None else wheels))
    dep_wheels = download_wheels(specs, dest, list(find_links))
    warn_other_python(dep_wheels)
    return project_wheel, dep_wheels
