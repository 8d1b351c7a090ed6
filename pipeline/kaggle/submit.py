"""`make submit`, and the kaggle package's own checks of the bundle's metadata.

- A CSV competition: `kaggle competitions submit -c <slug> -f submissions/submission.csv -m "<blend> cv=<score>"`,
  after the file passes `validate`.
- A code competition (`code_competition: true`): the bundle of `make package` is uploaded as a new version of
  its dataset (created the first time), then its kernel is pushed; Kaggle runs it and it submits.

Nothing runs unless everything it needs is there first: the kaggle CLI, credentials, kaggle.com reachable,
the files. Otherwise one message says what is missing, and nothing is half-done.
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

KAGGLE_HOST = "www.kaggle.com"


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


def preflight() -> str:
    """The kaggle CLI, credentials and the network, or one message naming what is missing. -> the CLI path."""
    cli = kaggle_cli()
    if not has_credentials():
        raise SubmitError("no Kaggle credentials: put kaggle.json (Account > API > Create New Token) in ~/.kaggle/ "
                          "(chmod 600), or set KAGGLE_USERNAME and KAGGLE_KEY; nothing was submitted")
    if not kaggle_reachable():
        raise SubmitError(f"{KAGGLE_HOST} cannot be reached (offline?); nothing was submitted")
    return cli


# --- the commands ----------------------------------------------------------------------------------------------


def cv_message(submissions: Path) -> str:
    """'<blend> cv=<score>' from submissions/cv.json, the submission's own record."""
    try:
        cv = json.loads((submissions / "cv.json").read_text())
    except (OSError, json.JSONDecodeError):
        raise SubmitError(f"{submissions / 'cv.json'} not found or unreadable; run `make ensemble` first") from None
    method = cv["chosen"]
    return f"{method} cv={cv['blends'][method]['cv']:.5f}"


def csv_commands(cli: str, slug: str, file: Path, message: str) -> list[list[str]]:
    return [[cli, "competitions", "submit", "-c", slug, "-f", str(file), "-m", message]]


def code_commands(cli: str, bundle: Path, message: str, dataset_exists: bool) -> list[list[str]]:
    dataset = ([cli, "datasets", "version", "-p", str(bundle / "dataset"), "--dir-mode", "zip", "-m", message]
               if dataset_exists else [cli, "datasets", "create", "-p", str(bundle / "dataset"), "--dir-mode", "zip"])
    return [dataset, [cli, "kernels", "push", "-p", str(bundle / "kernel")]]


def kernel_submit_command(cli: str, slug: str, ids: dict, version: int, message: str) -> list[str]:
    """A code competition's submission: a finished version of the pushed kernel, with its output file."""
    return [cli, "competitions", "submit", "-c", slug, "-k", f"{ids['user']}/{ids['kernel']}", "-v", str(version),
            "-f", "submission.csv", "-m", message]


def bundle_ids(bundle: Path) -> dict:
    try:
        return json.loads((bundle / "manifest.json").read_text())["kaggle"]
    except (OSError, json.JSONDecodeError, KeyError):
        raise SubmitError(f"{bundle}/manifest.json not found: run `make package` first (code competitions submit "
                          "the bundle's kernel)") from None


def submit(comp: Competition, slug: str | None, submissions: Path = Path("submissions"),
           bundle: Path = Path("dist/kaggle"), dry_run: bool = False, kernel_version: int | None = None
           ) -> list[list[str]]:
    """Check everything, then run the commands one by one (stopping at the first failure). -> the commands."""
    message = cv_message(submissions)
    if comp.code_competition and kernel_version is not None:  # the pushed kernel's version has run: submit it
        ids = bundle_ids(bundle)
        commands = [kernel_submit_command("kaggle" if dry_run else preflight(), slug or ids["competition"], ids,
                                          kernel_version, message)]
    elif comp.code_competition:
        ids = bundle_ids(bundle)
        cli = "kaggle" if dry_run else preflight()
        exists = False
        if not dry_run:
            status = subprocess.run([cli, "datasets", "status", f"{ids['user']}/{ids['dataset']}"],
                                    capture_output=True, text=True)
            exists = status.returncode == 0 and "not found" not in (status.stdout + status.stderr).lower()
        commands = code_commands(cli, bundle, message, exists)
    else:
        file = submissions / "submission.csv"
        if not file.is_file():
            raise SubmitError(f"{file} not found; run `make ensemble` first")
        from pipeline.blend.submission import validate_file

        validate_file(file, comp)
        commands = csv_commands("kaggle" if dry_run else preflight(), slug, file, message)
    for cmd in commands:
        print("$ " + " ".join(_quote(c) for c in cmd), flush=True)
        if dry_run:
            continue
        proc = subprocess.run(cmd)
        if proc.returncode:
            raise SubmitError(f"`{' '.join(cmd[1:3])}` failed (exit {proc.returncode}); the commands after it were not run")
    if comp.code_competition and kernel_version is None:
        print("the kernel now runs on Kaggle; when its version has finished, submit it with "
              "`make submit KERNEL_VERSION=<its version number>`")
    return commands


def _quote(text: str) -> str:
    import shlex

    return shlex.quote(text)
