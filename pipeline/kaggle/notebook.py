"""The Kaggle kernel of a bundle: installs the bundled wheels offline, then runs `python -m pipeline kernel`.

`make package` copies this file, as it is, into dist/kaggle/kernel/ as the kernel's code. Every setting
comes from the bundle's bundle.json ("kernel": the wheels, the competition's data folder, the submission's
path; "time_budget_s"); the command line overrides them. The bundle is the folder given by --bundle or
$KFOLD_BUNDLE, else the folder of this file when it holds bundle.json, else wherever Kaggle mounted it
under /kaggle/input. Standard library only: it runs before anything is installed.
"""

import argparse
import glob
import json
import os
import subprocess
import sys

BUNDLE_FILE = "bundle.json"
BUNDLE_ENV = "KFOLD_BUNDLE"
KAGGLE_INPUT = "/kaggle/input"


def find_bundle(given):
    """The folder that holds bundle.json."""
    given = given or os.environ.get(BUNDLE_ENV)
    if given:
        if not os.path.isfile(os.path.join(given, BUNDLE_FILE)):
            sys.exit(f"{BUNDLE_FILE} not found in {given} (--bundle / ${BUNDLE_ENV}): give the bundle's dataset folder")
        return given
    here = os.path.dirname(os.path.abspath(__file__)) if "__file__" in globals() else None  # a notebook has none
    if here and os.path.isfile(os.path.join(here, BUNDLE_FILE)):
        return here
    found = sorted(glob.glob(os.path.join(KAGGLE_INPUT, "**", BUNDLE_FILE), recursive=True))
    if not found:
        sys.exit(f"{BUNDLE_FILE} not found next to this script nor under {KAGGLE_INPUT}: add the bundle dataset "
                 "to the kernel")
    return os.path.dirname(found[0])


def read_settings(bundle):
    """bundle.json's kernel settings, with its time budget."""
    with open(os.path.join(bundle, BUNDLE_FILE)) as f:
        info = json.load(f)
    if "kernel" not in info:
        sys.exit(f"{os.path.join(bundle, BUNDLE_FILE)} has no 'kernel' settings: rebuild it with `make package`")
    return {**info["kernel"], "time_budget_s": info.get("time_budget_s")}


def editable_checkout(project_wheel):
    """The folder of an editable (development) install of the project in this Python, else None: the
    bundle's wheel, force-installed over it, would replace the checkout's code for every later run."""
    from importlib import metadata

    try:  # the distribution's name is the wheel file's first field
        text = metadata.distribution(project_wheel.split("-")[0]).read_text("direct_url.json")
    except metadata.PackageNotFoundError:
        return None
    try:
        info = json.loads(text or "{}")
    except json.JSONDecodeError:
        return None
    return info.get("url", "?") if info.get("dir_info", {}).get("editable") else None


def install(bundle, wheels, project_wheel):
    """The dependencies with pip's checks (all in the bundle or on the image), then the project itself;
    refused in a Python that holds the project as a development checkout (a local try of the kernel)."""
    checkout = editable_checkout(project_wheel)
    if checkout:
        sys.exit(f"{sys.executable} holds the pipeline as an editable install of {checkout}; installing the "
                 "bundle's wheels here would replace that checkout's code. Try the kernel in a fresh venv (as "
                 "Kaggle's image is), or pass --skip-install to run it with the checkout's code")
    paths = [os.path.join(bundle, name) for name in [*wheels, project_wheel]]
    missing = [p for p in paths if not os.path.isfile(p)]
    if missing:
        sys.exit(f"{', '.join(missing)}: listed in {BUNDLE_FILE} but not in the bundle; upload the whole dataset folder")
    pip = [sys.executable, "-m", "pip", "install", "-q", "--no-index", "--find-links", bundle]
    if wheels:
        subprocess.check_call([*pip, *paths[:-1]])
    subprocess.check_call([*pip, "--no-deps", "--force-reinstall", paths[-1]])


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", help=f"the bundle's dataset folder (or ${BUNDLE_ENV})")
    parser.add_argument("--data-dir", help="the competition's folder (default: from bundle.json)")
    parser.add_argument("--out", help="the submission to write (default: from bundle.json)")
    parser.add_argument("--time-budget", type=float, help="seconds before extra TTA views are dropped")
    parser.add_argument("--skip-install", action="store_true", help="the pipeline is installed already")
    args, _ = parser.parse_known_args(argv)  # a notebook passes arguments of its own

    bundle = find_bundle(args.bundle)
    settings = read_settings(bundle)
    if not args.skip_install:
        install(bundle, settings["wheels"], settings["project_wheel"])
    os.environ["NO_ALBUMENTATIONS_UPDATE"] = "1"  # albumentations would look for a newer version online
    budget = settings["time_budget_s"] if args.time_budget is None else args.time_budget
    cmd = [sys.executable, "-m", "pipeline", "kernel", "--bundle", bundle,
           "--data-dir", args.data_dir or settings["data_dir"], "--out", args.out or settings["out"]]
    if budget is not None:
        cmd += ["--time-budget", str(budget)]
    print("$", " ".join(cmd), flush=True)
    subprocess.check_call(cmd)


if __name__ == "__main__":
    main()
