"""`package` and `kernel`: a tiny trained demo packaged, installed offline in a fresh venv, run without network."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pipeline.kaggle import notebook
from pipeline.kaggle.bundle import scrub_credentials
from pipeline.kaggle.ids import DATASET_KEYS, KERNEL_KEYS, PackageError
from pipeline.kaggle.runtime import plan_runtime
from tests.conftest import REPO, read_table_file, run_cli, train_tiny

# The kaggle CLI's documented metadata fields (kaggle-api wiki: Dataset / Kernel Metadata).
DATASET_REQUIRED = {"title", "id", "licenses"}
KERNEL_REQUIRED = {"id", "title", "code_file", "language", "kernel_type", "is_private", "enable_gpu",
                   "enable_internet", "dataset_sources", "competition_sources", "kernel_sources"}
FAKE_CREDENTIAL = '{"username": "someone", "key": "0123456789abcdef"}'


def offline_prefix(tmp: Path) -> tuple[list[str], dict]:
    """A command prefix and env that block the network for real: `unshare -n`, else a socket guard."""
    if shutil.which("unshare") and subprocess.run(["unshare", "-n", "true"], capture_output=True).returncode == 0:
        return ["unshare", "-n"], {}
    guard = tmp / "guard"
    guard.mkdir(exist_ok=True)
    (guard / "sitecustomize.py").write_text(
        "import socket\n"
        "def _blocked(*a, **k):\n    raise OSError('network blocked by the test')\n"
        "socket.socket.connect = _blocked\nsocket.create_connection = _blocked\n")
    return [], {"PYTHONPATH": str(guard)}


def project_copy(dest: Path) -> Path:
    """The project's wheel sources, with kaggle.json planted at the top and inside the package."""
    dest.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, dest / name)
    shutil.copytree(REPO / "pipeline", dest / "pipeline", ignore=shutil.ignore_patterns("__pycache__"))
    (dest / "kaggle.json").write_text(FAKE_CREDENTIAL)
    (dest / "pipeline" / "kaggle.json").write_text(FAKE_CREDENTIAL)
    return dest


def same_submission(a: Path, b: Path) -> None:
    x, y = pd.read_csv(a, dtype=str), pd.read_csv(b, dtype=str)
    assert list(x.columns) == list(y.columns) and list(x.iloc[:, 0]) == list(y.iloc[:, 0])
    for col in x.columns[1:]:
        try:
            np.testing.assert_allclose(x[col].astype(float), y[col].astype(float), atol=1e-5)
        except ValueError:  # labels: exact
            assert list(x[col]) == list(y[col])


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> Path:
    """A tiny trained demo: 3 folds of one tiny model with 2 TTA views, predicted, blended with mean."""
    root = tmp_path_factory.mktemp("pkg")
    train_tiny(root, n_train=45, n_test=12, model={"epochs": 1, "tta": ["none", "hflip"]}, blend="mean")
    (root / "kaggle.json").write_text(FAKE_CREDENTIAL)  # a credential in the project folder
    project = project_copy(root / "project")
    proc = run_cli("package", "-c", "competition.yaml", "--project", str(project), "--kaggle-user", "alice",
                   "--competition-slug", "tiny-comp", cwd=root)
    (root / "package.log").write_text(proc.stdout)
    # the competition as the kernel sees it: sample submission and test images, no training data
    shutil.copytree(root / "data" / "tiny", root / "input" / "tiny-comp",
                    ignore=shutil.ignore_patterns("train", "train.csv"))
    return root


@pytest.mark.slow
def test_bundle_layout_sizes_and_metadata(demo):
    out = demo / "dist" / "kaggle"
    dataset, kernel = out / "dataset", out / "kernel"
    # flat: every file at the dataset's root, so `kaggle datasets create` uploads all of it in any --dir-mode
    assert not [p for p in dataset.iterdir() if p.is_dir()]
    assert {"tiny.config.json", "tiny.fold0.safetensors", "tiny.fold1.safetensors", "tiny.fold2.safetensors",
            "bundle.json", "blend.json", "dataset-metadata.json"} <= {p.name for p in dataset.iterdir()}
    assert not list(out.rglob("*.pt")) and not list(out.rglob("*.pkl"))
    names = {w.name.split("-")[0].lower() for w in dataset.glob("*.whl")}
    # what the kernel imports beyond Kaggle's image, with their dependencies resolved (albucore for albumentations)
    assert {"kaggle_kfold_pipeline", "timm", "albumentations", "iterative_stratification", "albucore",
            "huggingface_hub", "opencv_python_headless"} <= names
    assert not names & {"torch", "torchvision", "numpy", "pandas", "scipy", "scikit_learn", "pydantic", "pyyaml"}
    cfg = json.loads((dataset / "tiny.config.json").read_text())
    assert {"config", "classes", "data_config", "tta", "tta_merge"} <= set(cfg) and cfg["tta"] == ["none", "hflip"]
    assert json.loads((dataset / "blend.json").read_text())["method"] == "mean"

    meta = json.loads((dataset / "dataset-metadata.json").read_text())
    assert DATASET_REQUIRED <= set(meta) <= DATASET_KEYS
    assert meta["id"] == "alice/tiny-comp-kfold-bundle" and all("name" in lic for lic in meta["licenses"])
    kmeta = json.loads((kernel / "kernel-metadata.json").read_text())
    assert KERNEL_REQUIRED <= set(kmeta) <= KERNEL_KEYS
    assert kmeta["enable_internet"] is False and kmeta["enable_gpu"] is True  # written: kaggle's default is on
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["kaggle_checks"]  # both files passed the kaggle package's own checks
    assert "accepted by the kaggle package's own checks" in (demo / "package.log").read_text()
    assert "--dir-mode zip" in (demo / "package.log").read_text()
    assert kmeta["language"] == "python" and kmeta["kernel_type"] == "script"
    assert kmeta["dataset_sources"] == [meta["id"]] and kmeta["competition_sources"] == ["tiny-comp"]
    assert (kernel / kmeta["code_file"]).is_file()

    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["total_bytes"] == sum(manifest["bytes"].values()) > 0
    assert manifest["bytes"]["weights"] > 0 and manifest["plan"]["fits"]
    assert "total" in (demo / "package.log").read_text()


@pytest.mark.slow
def test_package_ships_the_blend_ensemble_fitted_and_refuses_a_stale_one(demo):
    saved = json.loads((demo / "submissions" / "blend.json").read_text())
    shipped = json.loads((demo / "dist" / "kaggle" / "dataset" / "blend.json").read_text())
    assert shipped == saved and saved["method"] == "mean" and saved["models"] == ["tiny"]
    assert (demo / "dist" / "kaggle" / "dataset" / "blend.json").read_bytes() == (
        demo / "submissions" / "blend.json").read_bytes()  # as `ensemble` wrote it, never refitted
    # a distilled student's tables beside the blend's (`ensemble` never blends it with its teachers) are no change
    shutil.copytree(demo / "stacking", demo / "stacking_student")
    for name in ("tiny.oof.parquet", "tiny.oof.json", "tiny.test.parquet", "tiny.test.json"):
        shutil.copy2(demo / "stacking" / name, demo / "stacking_student" / name.replace("tiny", "tiny-distilled"))
    run_cli("package", "-c", "competition.yaml", "--stacking", "stacking_student", "--wheels", "", "--out",
            "dist/student_beside", cwd=demo)
    # a stacking table changed after `ensemble`: the saved blend no longer describes it
    shutil.copytree(demo / "stacking", demo / "stacking_changed")
    table = read_table_file(demo / "stacking_changed" / "tiny.test.parquet")
    table.iloc[:, 1:] = table.iloc[:, 1:].to_numpy()[:, ::-1]
    table.to_parquet(demo / "stacking_changed" / "tiny.test.parquet", index=False)
    proc = run_cli("package", "-c", "competition.yaml", "--stacking", "stacking_changed", "--out", "dist/changed",
                   cwd=demo, check=False)
    assert proc.returncode == 2 and "tiny.test.parquet" in proc.stderr and "rerun `make ensemble`" in proc.stderr
    # the saved state is what gets shipped: one that does not reproduce the blend.test table is refused, not refitted
    shutil.copytree(demo / "submissions", demo / "sub_edited")
    saved["learners"][0]["class"] = "VoteBlend"
    (demo / "sub_edited" / "blend.json").write_text(json.dumps(saved))
    proc = run_cli("package", "-c", "competition.yaml", "--submissions", "sub_edited", "--out", "dist/edited",
                   cwd=demo, check=False)
    assert proc.returncode == 2 and "does not match the blend saved" in proc.stderr
    proc = run_cli("package", "-c", "competition.yaml", "--method", "logreg", "--out", "dist/other", cwd=demo,
                   check=False)
    assert proc.returncode == 2 and "METHOD=logreg" in proc.stderr
    assert not (demo / "dist" / "changed").exists() and not (demo / "dist" / "edited").exists()


@pytest.mark.slow
def test_no_credentials_in_bundle(demo):
    out = demo / "dist" / "kaggle"
    assert not [p for p in out.rglob("*") if p.name == "kaggle.json"]
    for wheel in out.rglob("*.whl"):
        with zipfile.ZipFile(wheel) as z:
            assert not [n for n in z.namelist() if n.endswith("kaggle.json")], wheel
    assert not any("0123456789abcdef" in p.read_text(errors="ignore") for p in out.rglob("*.json"))


def test_scrub_credentials_removes_files_and_refuses_archives(tmp_path):
    (tmp_path / "a" / ".kaggle").mkdir(parents=True)
    (tmp_path / "a" / "kaggle.json").write_text(FAKE_CREDENTIAL)
    (tmp_path / "a" / ".kaggle" / "kaggle.json").write_text(FAKE_CREDENTIAL)
    assert scrub_credentials(tmp_path) and not list(tmp_path.rglob("kaggle.json"))
    with zipfile.ZipFile(tmp_path / "x-1.0-py3-none-any.whl", "w") as z:
        z.writestr("x/kaggle.json", FAKE_CREDENTIAL)
    with pytest.raises(PackageError, match="credential"):
        scrub_credentials(tmp_path)


def kaggle_image_site(dest: Path) -> Path:
    """Links to only what Kaggle's image reliably has: KAGGLE_IMAGE with everything it needs, and pip; cv2 as
    Kaggle's opencv-python gives it (the module, without the headless distribution's metadata)."""
    from importlib import metadata

    from pipeline.kaggle.wheelhouse import KAGGLE_IMAGE, dependency_closure

    dest.mkdir()

    def link(dist, keep=lambda top: True):
        for top in {Path(f).parts[0] for f in dist.files or [] if not str(f).startswith("..")}:
            src = Path(dist.locate_file(top))
            if keep(top) and src.exists() and not (dest / top).exists():
                (dest / top).symlink_to(src)

    for name in dependency_closure([*KAGGLE_IMAGE, "pip"]):
        link(metadata.distribution(name))
    link(metadata.distribution("opencv-python-headless"), keep=lambda top: not top.endswith(".dist-info"))
    return dest


@pytest.mark.slow
def test_kernel_in_reduced_venv_offline_reproduces_submission(demo, tmp_path):
    """A venv holding only Kaggle's image (torch, numpy, pandas, ...): the bundle's wheels install with
    --no-index, dependencies checked by pip, and the kernel runs with the network blocked."""
    venv = tmp_path / "kv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    py = venv / "bin" / "python"
    site = subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    Path(site, "kaggle_image.pth").write_text(str(kaggle_image_site(tmp_path / "image")) + "\n")
    missing = subprocess.run([str(py), "-c", "import albucore"], capture_output=True, text=True)
    assert missing.returncode != 0  # the image alone lacks what the bundle must bring
    prefix, env = offline_prefix(tmp_path)
    kernel = demo / "dist" / "kaggle" / "kernel"
    script = kernel / json.loads((kernel / "kernel-metadata.json").read_text())["code_file"]
    out = tmp_path / "working" / "submission.csv"
    clean = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # only the venv's own packages
    started = time.time()
    proc = subprocess.run(
        [*prefix, str(py), str(script), "--bundle", str(demo / "dist" / "kaggle" / "dataset"),
         "--data-dir", str(demo / "input" / "tiny-comp"), "--out", str(out)],
        cwd=tmp_path, capture_output=True, text=True, env={**clean, **env})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    print(f"\nkernel offline in the reduced venv: {time.time() - started:.1f}s (install + inference)")
    where = subprocess.run([str(py), "-c", "import pipeline, timm, albumentations, albucore; print(pipeline.__file__, "
                            "timm.__file__, albumentations.__file__, albucore.__file__)"],
                           cwd=tmp_path, capture_output=True, text=True, check=True, env=clean).stdout
    assert where.count(str(venv)) == 4, where  # the bundled wheels were installed and used
    same_submission(out, demo / "submissions" / "submission.csv")
    ours = pd.read_csv(tmp_path / "working" / "stacking" / "tiny.test.csv", dtype={"image_id": str})
    theirs = read_table_file(demo / "stacking" / "tiny.test.parquet")
    np.testing.assert_allclose(ours.iloc[:, 1:].to_numpy(), theirs.iloc[:, 1:].to_numpy(), atol=1e-6)
    assert json.loads((tmp_path / "working" / "kernel_report.json").read_text())["dropped_views"] == []


@pytest.mark.slow
def test_kernel_script_is_the_module_and_takes_every_setting_from_bundle_json(demo, tmp_path):
    """The kernel's code is notebook.py byte for byte (nothing formatted into it, stdlib only at its top);
    what it needs is in bundle.json, found next to the script, or where --bundle / $KFOLD_BUNDLE point."""
    out = demo / "dist" / "kaggle"
    kernel, dataset = out / "kernel", out / "dataset"
    script = kernel / json.loads((kernel / "kernel-metadata.json").read_text())["code_file"]
    assert script.read_bytes() == Path(notebook.__file__).read_bytes()
    settings = json.loads((dataset / "bundle.json").read_text())["kernel"]
    assert settings["data_dir"] == "/kaggle/input/tiny-comp" and settings["out"] == "/kaggle/working/submission.csv"
    assert {*settings["wheels"], settings["project_wheel"]} == {w.name for w in dataset.glob("*.whl")}
    assert settings["project_wheel"].startswith("kaggle_kfold_pipeline-")
    isolated = subprocess.run([sys.executable, "-I", "-S", str(script), "--help"], capture_output=True, text=True)
    assert isolated.returncode == 0 and "--bundle" in isolated.stdout  # no site-packages: the stdlib alone

    # a bundle copied elsewhere, its settings pointing at local data: the script beside it needs no argument
    local = tmp_path / "bundle"
    shutil.copytree(dataset, local, ignore=shutil.ignore_patterns("*.whl"))
    info = json.loads((local / "bundle.json").read_text())
    info["kernel"].update(data_dir=str(demo / "input" / "tiny-comp"), out=str(tmp_path / "working" / "submission.csv"))
    info["time_budget_s"] = 12345.0
    (local / "bundle.json").write_text(json.dumps(info))
    shutil.copy2(script, local / script.name)
    proc = subprocess.run([sys.executable, str(local / script.name), "--skip-install"], cwd=tmp_path,
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"--bundle {local} --data-dir {demo / 'input' / 'tiny-comp'}" in proc.stdout
    assert "--time-budget 12345.0" in proc.stdout
    same_submission(tmp_path / "working" / "submission.csv", demo / "submissions" / "submission.csv")

    for args, env in (([], {"KFOLD_BUNDLE": str(tmp_path / "nowhere")}), (["--bundle", str(tmp_path / "nowhere")], {})):
        proc = subprocess.run([sys.executable, str(script), *args, "--skip-install"], capture_output=True, text=True,
                              cwd=tmp_path, env={**os.environ, **env})
        assert proc.returncode != 0 and f"bundle.json not found in {tmp_path / 'nowhere'}" in proc.stderr


@pytest.mark.slow
def test_kaggle_checks_refuse_bad_metadata(demo, tmp_path):
    """The kaggle package's own checks (no network) catch what Kaggle would refuse at upload."""
    from pipeline.kaggle.submit import SubmitError, check_metadata

    dataset, kernel = tmp_path / "dataset", tmp_path / "kernel"
    shutil.copytree(demo / "dist" / "kaggle" / "dataset", dataset, ignore=shutil.ignore_patterns("*.whl", "*.safetensors"))
    shutil.copytree(demo / "dist" / "kaggle" / "kernel", kernel)
    assert check_metadata(dataset, kernel, "alice")
    meta = json.loads((kernel / "kernel-metadata.json").read_text())
    (kernel / "kernel-metadata.json").write_text(json.dumps({**meta, "language": "cobol"}))
    with pytest.raises(SubmitError, match="A valid language must be specified"):
        check_metadata(dataset, kernel, "alice")
    dmeta = json.loads((dataset / "dataset-metadata.json").read_text())
    (dataset / "dataset-metadata.json").write_text(json.dumps({**dmeta, "title": "abc"}))
    with pytest.raises(SubmitError, match="title must be between 6 and 50"):
        check_metadata(dataset, kernel, "alice")


@pytest.mark.slow
def test_ids_warn_loudly_and_machine_shape_through_make(demo):
    env = {k: v for k, v in os.environ.items() if k != "KAGGLE_USERNAME"}
    proc = subprocess.run(["make", "--no-print-directory", "-f", str(REPO / "Makefile"), "package", "METHOD=mean",
                           "COMPETITION=competition.yaml", "WHEELS=none", "MACHINE_SHAPE=NvidiaTeslaT4",
                           "BUNDLE=dist/noids"], cwd=demo, capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "!!! warning: no Kaggle user given" in proc.stderr and "KAGGLE_USER=<you>" in proc.stderr
    assert "!!! warning: no competition slug given: using the data folder's name 'tiny'" in proc.stderr
    kmeta = json.loads((demo / "dist" / "noids" / "kernel" / "kernel-metadata.json").read_text())
    assert kmeta["machine_shape"] == "NvidiaTeslaT4" and kmeta["competition_sources"] == ["tiny"]
    proc = subprocess.run(["make", "--no-print-directory", "-f", str(REPO / "Makefile"), "package", "METHOD=mean",
                           "COMPETITION=competition.yaml", "WHEELS=none", "KAGGLE_USER=bob", "COMPETITION_SLUG=real-comp",
                           "BUNDLE=dist/ids"], cwd=demo, capture_output=True, text=True, env=env)
    assert proc.returncode == 0 and "!!! warning" not in proc.stderr, proc.stderr[-2000:]
    kmeta = json.loads((demo / "dist" / "ids" / "kernel" / "kernel-metadata.json").read_text())
    assert kmeta["id"] == "bob/real-comp-kfold-inference" and kmeta["competition_sources"] == ["real-comp"]
    bad = run_cli("package", "-c", "competition.yaml", "--wheels", "", "--machine-shape", "T4 x2", "--out",
                  "dist/bad", cwd=demo, check=False)
    assert bad.returncode == 2 and "MACHINE_SHAPE='T4 x2'" in bad.stderr


@pytest.mark.slow
def test_learned_blend_reproduced_and_tiny_time_limit_warns(demo, tmp_path):
    run_cli("ensemble", "-c", "competition.yaml", "--method", "logreg", "--out", "sub_logreg", cwd=demo)
    proc = run_cli("package", "-c", "competition.yaml", "--submissions", "sub_logreg", "--out", "dist/logreg",
                   "--wheels", "", "time_limit_hours=0.0001", cwd=demo)
    assert "may pass the competition's time limit" in proc.stdout and "drop TTA view hflip of tiny" in proc.stdout
    plan = json.loads((demo / "dist" / "logreg" / "manifest.json").read_text())["plan"]
    assert not plan["fits"] and plan["proposals"]
    blend = json.loads((demo / "dist" / "logreg" / "dataset" / "blend.json").read_text())
    assert blend["method"] == "logreg" and blend["learned"] and len(blend["learners"]) == 3
    prefix, env = offline_prefix(tmp_path)

    def kernel(out, *args):
        cmd = [*prefix, sys.executable, "-m", "pipeline", "kernel", "--bundle", str(demo / "dist" / "logreg" / "dataset"),
               "--data-dir", str(demo / "input" / "tiny-comp"), "--out", str(out), *args]
        proc = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, env={**os.environ, **env})
        assert proc.returncode == 0, proc.stdout + proc.stderr
        return proc

    kernel(tmp_path / "full" / "submission.csv", "--time-budget", "100000")
    same_submission(tmp_path / "full" / "submission.csv", demo / "sub_logreg" / "submission.csv")
    proc = kernel(tmp_path / "short" / "submission.csv", "--time-budget", "0")
    assert "dropping TTA view hflip" in proc.stdout  # the clock keeps the kernel inside its budget
    assert json.loads((tmp_path / "short" / "kernel_report.json").read_text())["dropped_views"] == ["tiny:hflip"]
    run_cli("validate", str(tmp_path / "short" / "submission.csv"), "-c", "competition.yaml", cwd=demo)


def test_blend_states_round_trip_through_json():
    from pipeline.blend.blends import blend_test_prediction, import_blend_state, make_blend, stack
    from pipeline.blend.ensemble import evaluate_blend
    from pipeline.core.metrics import get_metric

    rng = np.random.default_rng(0)
    n, m, c = 90, 2, 3
    y = np.arange(n) % c
    P = rng.dirichlet(np.ones(c), size=(m, n)) * 0.5 + 0.5 * np.eye(c)[y][None]
    Pt = rng.dirichlet(np.ones(c), size=(m, 20))
    fold = np.arange(n) % 3
    for name in ("vote", "mean", "gmean", "rank", "weights", "weights_scipy", "lgbm", "logreg"):
        for task, metric, suffix in (("multiclass", "accuracy", ""), ("ordinal", "qwk", "+thr")):
            est = make_blend(name + suffix, task, c, get_metric(metric, task), 0)
            r = evaluate_blend(name, est, stack(P), y, fold, stack(Pt), get_metric(metric, task))
            states = json.loads(json.dumps([s.export_state() for s in r.learners]))
            again = blend_test_prediction(r.learned, [import_blend_state(s) for s in states], stack(Pt), task)
            np.testing.assert_allclose(again, r.test, atol=1e-12, err_msg=name + suffix)


def test_planner_proposes_drops_in_order():
    plan = plan_runtime({"a": {"none": 100.0, "hflip": 100.0}, "b": {"none": 50.0}}, {"a": 5, "b": 5},
                        n_test=1000, limit_s=150.0, gpu_factor=1.0, overhead_s=0.0)
    assert plan["estimate_s"] == pytest.approx(5 * 20 + 5 * 20)
    assert plan["proposals"][0] == "drop TTA view hflip of a" and not plan["fits"]
    assert plan["estimate_after_s"] <= 150.0
    assert plan_runtime({"a": {"none": 1e6}}, {"a": 5}, 1000, 3600.0)["fits"]


# --- make submit -------------------------------------------------------------------------------------------


def submit(demo, *args, env=None, prefix=()):
    base = {k: v for k, v in os.environ.items() if not k.startswith("KAGGLE_")}
    return subprocess.run([*prefix, "make", "--no-print-directory", "-f", str(REPO / "Makefile"), "submit",
                           "COMPETITION=competition.yaml", *args], cwd=demo, capture_output=True, text=True,
                          env={**base, **(env or {})})


@pytest.mark.slow
def test_submit_builds_the_exact_command(demo):
    cv = json.loads((demo / "submissions" / "cv.json").read_text())
    score = cv["blends"][cv["chosen"]]["cv"]
    proc = submit(demo, "DRY_RUN=1", "COMPETITION_SLUG=tiny-comp")
    assert proc.returncode == 0, proc.stderr
    assert (f"$ kaggle competitions submit -c tiny-comp -f submissions/submission.csv -m '{cv['chosen']} cv={score:.5f}'"
            in proc.stdout)
    code = submit(demo, "DRY_RUN=1", "COMP_ARGS=code_competition=true")
    assert code.returncode == 0, code.stderr
    lines = [line for line in code.stdout.splitlines() if line.startswith("$ ")]
    assert lines == ["$ kaggle datasets create -p dist/kaggle/dataset --dir-mode zip",
                     "$ kaggle kernels push -p dist/kaggle/kernel"]
    assert "make submit KERNEL_VERSION=" in code.stdout
    run = submit(demo, "DRY_RUN=1", "KERNEL_VERSION=3", "COMP_ARGS=code_competition=true")
    assert run.returncode == 0, run.stderr
    assert (f"$ kaggle competitions submit -c tiny-comp -k alice/tiny-comp-kfold-inference -v 3 -f submission.csv "
            f"-m '{cv['chosen']} cv={score:.5f}'") in run.stdout


@pytest.mark.slow
def test_submit_without_credentials_or_network_runs_nothing(demo, tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    proc = submit(demo, "COMPETITION_SLUG=tiny-comp", env={"HOME": str(home)})
    assert proc.returncode != 0 and "no Kaggle credentials" in proc.stderr and "nothing was submitted" in proc.stderr
    assert "$ kaggle" not in proc.stdout
    prefix, env = offline_prefix(tmp_path)
    proc = submit(demo, "COMPETITION_SLUG=tiny-comp", prefix=prefix,
                  env={**env, "HOME": str(home), "KAGGLE_USERNAME": "alice", "KAGGLE_KEY": "not-a-key"})
    assert proc.returncode != 0 and "cannot be reached" in proc.stderr and "$ kaggle" not in proc.stdout
    bad = submit(demo, "COMPETITION_SLUG=Not_A_Slug", env={"HOME": str(home)})
    assert bad.returncode != 0 and "competition slug 'Not_A_Slug'" in bad.stderr
