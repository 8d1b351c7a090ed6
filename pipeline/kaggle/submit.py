"""`make submit`, and the kaggle package's own checks of the bundle's metadata.

- A CSV competition: `kaggle competitions submit -c <slug> -f submissions/submission.csv -m "<blend> cv=<score>"`,
  after the file passes `validate`; the label is submissions/cv.json's chosen blend, the one that wrote the file.
  KERNEL_VERSION (`--kernel-version`) is refused there: it names a run of a code competition's kernel.
- A code competition (`code_competition: true`): the bundle of `make package` is uploaded as a new version of
  its dataset (created the first time: `kaggle datasets status` tells which), then its kernel is pushed; Kaggle
  runs it and it submits (`KERNEL_VERSION=n`). Every label is the blend the bundle holds (dataset/bundle.json and
  the blend state beside it), which is what Kaggle runs; when cv.json now chooses another, one line says so.
- DRY_RUN prints the commands a real run would run and runs nothing that changes anything: whether the dataset
  exists is asked the same read-only way when the CLI, credentials and kaggle.com are there; when they are not,
  one line says it was not asked, and which command a real run would run instead if it exists.

Nothing runs unless everything it needs is there first: the kaggle CLI ($KAGGLE_CLI, else the one beside this
Python, else on PATH), credentials, kaggle.com reachable, the files. Otherwise one message says what is missing,
and nothing is half-done.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

from pipeline.core.config import Competition
from pipeline.core.errors import DataError
from pipeline.kaggle.ids import warn
from pipeline.kaggle.kernel import BLEND_FILE, BUNDLE_FILE

KAGGLE_HOST = "www.kaggle.com"
STATUS_SECONDS = 60  # `kaggle datasets status`: a read-only question, answered in seconds


class SubmitError(DataError):
    """`make submit` cannot go ahead; the message says why."""


# --- the kaggle package's own metadata checks, with no network ------------------------------------------------


class _Request(Exception):
    """Raised where the kaggle package would make its first request: every check before it has passed."""


def kaggle_version() -> str | None:
    from importlib import metadata

    try:
        return metadata.version("kaggle")
    except metadata.PackageNotFoundError:
        return None


def check_metadata(dataset: Path, kernel: Path, user: str) -> str | None:
    """Run the kaggle package's dataset-create and kernel-push code on the bundle up to its first request (no
    network): its own checks of both metadata files. -> the kaggle version, or None when it is not installed.
    A refusal raises SubmitError with kaggle's message."""
    if kaggle_version() is None:
        return None
    import contextlib
    import io

    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        from kaggle.api.kaggle_api_extended import KaggleApi  # `import kaggle` tries to log in, and says so

    api = KaggleApi()
    api.config_values = {KaggleApi.CONFIG_NAME_USER: user}

    def request(*args, **kwargs):
        raise _Request

    api.dataset_status = request  # dataset_create_new's first request
    api.build_kaggle_client = request  # kernels_push's
    checks = (("dataset-metadata.json", dataset, lambda: api.dataset_create_new(str(dataset), dir_mode="zip", quiet=True)),
              ("kernel-metadata.json", kernel, lambda: api.kernels_push(str(kernel))))
    for name, folder, call in checks:
        try:
            call()
        except _Request:
            continue
        except (ValueError, KeyError, TypeError) as e:
            raise SubmitError(f"{folder / name}: refused by the kaggle package's checks: {e}") from None
        raise SubmitError(f"{folder / name}: the kaggle package's checks did not reach their request")
    return kaggle_version()


# --- what must be there before anything runs -------------------------------------------------------------------


def kaggle_cli() -> str:
    """$KAGGLE_CLI when set, else the kaggle beside this Python (the venv's), else the one on PATH."""
    given = os.environ.get("KAGGLE_CLI")
    if given:
        if not (Path(given).is_file() and os.access(given, os.X_OK)):
            raise SubmitError(f"KAGGLE_CLI={given}: not an executable file; unset it to use the kaggle CLI "
                              "`make install` installs")
        return given
    local = Path(sys.executable).parent / "kaggle"
    found = str(local) if local.is_file() else shutil.which("kaggle")
    if not found:
        raise SubmitError("the kaggle CLI is not installed: `make install` installs it (or pip install kaggle)")
    return found


def has_credentials(env: dict | None = None) -> bool:
    """kaggle.json (in $KAGGLE_CONFIG_DIR or ~/.kaggle), an access token, or the environment variables."""
    env = os.environ if env is None else env
    if env.get("KAGGLE_API_TOKEN") or (env.get("KAGGLE_USERNAME") and env.get("KAGGLE_KEY")):
        return True
    folder = Path(env.get("KAGGLE_CONFIG_DIR") or Path.home() / ".kaggle")
    return (folder / "kaggle.json").is_file() or (folder / "access_token").is_file()


def kaggle_reachable(timeout: float = 3.0) -> bool:
    try:
        socket.create_connection((KAGGLE_HOST, 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def missing_for_kaggle() -> str | None:
    """What talking to Kaggle lacks here (the kaggle CLI, credentials, the network), or None."""
    try:
        kaggle_cli()
    except SubmitError as e:
        return str(e)
    if not has_credentials():
        return ("no Kaggle credentials: put kaggle.json (Account > API > Create New Token) in ~/.kaggle/ "
                "(chmod 600), or set KAGGLE_USERNAME and KAGGLE_KEY")
    if not kaggle_reachable():
        return f"{KAGGLE_HOST} cannot be reached (offline?)"
    return None


def preflight() -> str:
    """The kaggle CLI, credentials and the network, or one message naming what is missing. -> the CLI path."""
    problem = missing_for_kaggle()
    if problem:
        raise SubmitError(f"{problem}; nothing was submitted")
    return kaggle_cli()


# --- what is submitted, and its label ----------------------------------------------------------------------------


def label(blend: dict) -> str:
    """'<blend> cv=<score>': the message of every upload."""
    cv = blend["cv"]
    return f"{blend['method']} cv={cv:.5f}" if isinstance(cv, (int, float)) else f"{blend['method']} cv=n/a"


def cv_blend(submissions: Path) -> dict:
    """The blend submissions/cv.json chooses: its method, CV and the models it blends."""
    path = submissions / "cv.json"
    try:
        cv = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        raise SubmitError(f"{path} not found or unreadable; run `make ensemble` first") from None
    try:
        method = cv["chosen"]
        models = [name for name, row in cv.get("models", {}).items() if row.get("blended", True)]
        return {"method": method, "cv": cv["blends"][method]["cv"], "models": models}
    except (KeyError, TypeError, AttributeError):
        raise SubmitError(f"{path}: no chosen blend with its CV (keys 'chosen' and 'blends'); rerun "
                          "`make ensemble`") from None


def bundle_blend(bundle: Path) -> dict:
    """The blend the bundle ships, which is what Kaggle runs: its method (dataset/bundle.json), and its CV and
    models (the blend state `package` copied beside it)."""
    dataset = bundle / "dataset"
    try:
        method = json.loads((dataset / BUNDLE_FILE).read_text())["blend"]
        state = json.loads((dataset / BLEND_FILE).read_text())
        return {"method": method, "cv": state.get("cv"), "models": list(state.get("models", []))}
    except (OSError, json.JSONDecodeError, KeyError, TypeError, AttributeError):
        raise SubmitError(f"{dataset}/{BUNDLE_FILE} and {BLEND_FILE}: not found or unreadable; run `make package` "
                          "first (code competitions submit the bundle's kernel)") from None


def note_other_blend(shipped: dict, submissions: Path, bundle: Path) -> None:
    """One line when submissions/cv.json now chooses another blend than the bundle holds."""
    try:
        now = cv_blend(submissions)
    except SubmitError:
        return  # nothing to compare with
    if label(now) == label(shipped) and sorted(now["models"]) == sorted(shipped["models"]):
        return

    def describe(blend: dict) -> str:
        return f"{label(blend)} of {', '.join(blend['models']) or 'its models'}"

    warn(f"{submissions / 'cv.json'} now chooses {describe(now)}, but {bundle}/ holds {describe(shipped)}: labelled "
         f"with what the bundle holds, which is what Kaggle runs; `make package` then `make submit` ships cv.json's")


# --- the commands ----------------------------------------------------------------------------------------------


def csv_commands(cli: str, slug: str, file: Path, message: str) -> list[list[str]]:
    return [[cli, "competitions", "submit", "-c", slug, "-f", str(file), "-m", message]]


def dataset_command(cli: str, bundle: Path, message: str, exists: bool) -> list[str]:
    if exists:
        return [cli, "datasets", "version", "-p", str(bundle / "dataset"), "--dir-mode", "zip", "-m", message]
    return [cli, "datasets", "create", "-p", str(bundle / "dataset"), "--dir-mode", "zip"]


def code_commands(cli: str, bundle: Path, message: str, dataset_exists: bool) -> list[list[str]]:
    return [dataset_command(cli, bundle, message, dataset_exists),
            [cli, "kernels", "push", "-p", str(bundle / "kernel")]]


def kernel_submit_command(cli: str, slug: str, ids: dict, version: int, message: str) -> list[str]:
    """A code competition's submission: a finished version of the pushed kernel, with its output file."""
    return [cli, "competitions", "submit", "-c", slug, "-k", f"{ids['user']}/{ids['kernel']}", "-v", str(version),
            "-f", "submission.csv", "-m", message]


def bundle_ids(bundle: Path) -> dict:
    try:
        return json.loads((bundle / "manifest.json").read_text())["kaggle"]
    except (OSError, json.JSONDecodeError, KeyError, TypeError):
        raise SubmitError(f"{bundle}/manifest.json not found: run `make package` first (code competitions submit "
                          "the bundle's kernel)") from None


def dataset_status(cli: str, ref: str) -> bool | str:
    """Whether dataset `ref` exists on Kaggle (`kaggle datasets status`, read-only); a str says why it cannot be
    told (a failure other than 'not found')."""
    try:
        proc = subprocess.run([cli, "datasets", "status", ref], capture_output=True, text=True, timeout=STATUS_SECONDS)
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"`kaggle datasets status {ref}` did not answer ({e})"
    said = (proc.stdout + proc.stderr).strip()
    if "not found" in said.lower():  # kaggle's 404: "404 Client Error: Not Found for url: ..."
        return False
    if proc.returncode == 0:
        return True
    last = said.splitlines()[-1] if said else "no output"
    return f"`kaggle datasets status {ref}` failed (exit {proc.returncode}: {last})"


def dataset_exists(cli: str, ids: dict, bundle: Path, message: str, dry_run: bool) -> bool:
    """Whether the bundle's dataset exists on Kaggle (version it) or not (create it). A dry run asks the same
    way when it can, and says what it found; when it cannot, it says so and what a real run would run instead."""
    ref = f"{ids['user']}/{ids['dataset']}"
    if not dry_run:
        answer = dataset_status(cli, ref)
        if isinstance(answer, str):
            raise SubmitError(f"cannot tell whether dataset {ref} exists on Kaggle, so whether to create or version "
                              f"it: {answer}; nothing was submitted")
        return answer
    why_not = missing_for_kaggle()
    answer = f"not asked: {why_not}" if why_not else dataset_status(kaggle_cli(), ref)
    if isinstance(answer, bool):
        print(f"DRY_RUN: dataset {ref} {'exists' if answer else 'does not exist'} on Kaggle (kaggle datasets "
              f"status): a real run {'versions' if answer else 'creates'} it, as below")
        return answer
    other = " ".join(_quote(c) for c in dataset_command("kaggle", bundle, message, True))
    print(f"DRY_RUN: not known whether dataset {ref} exists on Kaggle ({answer}); shown: its first upload, "
          f"`datasets create`; if it exists, a real run runs `{other}` instead")
    return False


def check_kernel_version(comp: Competition, version: int) -> None:
    if not comp.code_competition:
        raise SubmitError(f"KERNEL_VERSION={version} (--kernel-version) names a run of a code competition's kernel, "
                          "but this competition takes a CSV (competition key code_competition: false): drop "
                          "KERNEL_VERSION to submit submissions/submission.csv, or set code_competition: true; "
                          "nothing was submitted")
    if version < 1:
        raise SubmitError(f"KERNEL_VERSION={version}: Kaggle numbers a kernel's versions from 1 (its page lists "
                          "them); nothing was submitted")


def code_submit(slug: str | None, submissions: Path, bundle: Path, dry_run: bool, kernel_version: int | None
                ) -> list[list[str]]:
    """The bundle's dataset version and kernel push, or (kernel_version) the submission of that kernel run."""
    ids = bundle_ids(bundle)
    shipped = bundle_blend(bundle)
    note_other_blend(shipped, submissions, bundle)
    message = label(shipped)
    cli = "kaggle" if dry_run else preflight()
    if kernel_version is not None:  # the pushed kernel's version has run: submit it
        return [kernel_submit_command(cli, slug or ids["competition"], ids, kernel_version, message)]
    return code_commands(cli, bundle, message, dataset_exists(cli, ids, bundle, message, dry_run))


def csv_submit(comp: Competition, slug: str | None, submissions: Path, dry_run: bool) -> list[list[str]]:
    message = label(cv_blend(submissions))
    file = submissions / "submission.csv"
    if not file.is_file():
        raise SubmitError(f"{file} not found; run `make ensemble` first")
    from pipeline.blend.submission import validate_file

    validate_file(file, comp)
    return csv_commands("kaggle" if dry_run else preflight(), slug, file, message)


def submit(comp: Competition, slug: str | None, submissions: Path = Path("submissions"),
           bundle: Path = Path("dist/kaggle"), dry_run: bool = False, kernel_version: int | None = None
           ) -> list[list[str]]:
    """Check everything, then run the commands one by one (stopping at the first failure). -> the commands."""
    if kernel_version is not None:
        check_kernel_version(comp, kernel_version)
    if comp.code_competition:
        commands = code_submit(slug, submissions, bundle, dry_run, kernel_version)
    else:
        commands = csv_submit(comp, slug, submissions, dry_run)
    for cmd in commands:
        print("$ " + " ".join(_quote(c) for c in cmd), flush=True)
        if dry_run:
            continue
        proc = subprocess.run(cmd)
        if proc.returncode:
            raise SubmitError(f"`{' '.join(cmd[1:3])}` failed (exit {proc.returncode}); the commands after it were not run")
    if comp.code_competition and kernel_version is None:
        print(("after a real run, the kernel runs on Kaggle" if dry_run else "the kernel now runs on Kaggle")
              + "; when its version has finished, submit it with `make submit KERNEL_VERSION=<its version number>`")
    return commands


def _quote(text: str) -> str:
    import shlex

    return shlex.quote(text)
