"""The kernel's stdlib script (pipeline/kaggle/notebook.py) before it installs anything."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.conftest import REPO

SCRIPT = REPO / "pipeline" / "kaggle" / "notebook.py"


def where_pipeline_imports_from(cwd) -> str:
    return subprocess.run([sys.executable, "-c", "import pipeline; print(pipeline.__file__)"], cwd=cwd,
                          capture_output=True, text=True, check=True).stdout.strip()


def test_the_kernel_refuses_to_install_over_a_development_checkout(tmp_path):
    """Trying the kernel with the project's own venv (an editable install, as `make install` makes) would
    force-install the bundle's wheel over the checkout, and every later run would use the wheel's code:
    refused before pip runs, naming --skip-install and a fresh venv."""
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    (bundle / "bundle.json").write_text(json.dumps({"kernel": {
        "wheels": [], "project_wheel": "kaggle_kfold_pipeline-0.1.0-py3-none-any.whl",
        "data_dir": str(tmp_path / "data"), "out": str(tmp_path / "submission.csv")}}))
    before = where_pipeline_imports_from(tmp_path)
    proc = subprocess.run([sys.executable, str(SCRIPT), "--bundle", str(bundle)], cwd=tmp_path,
                          capture_output=True, text=True)
    assert proc.returncode != 0
    assert "editable install of file://" in proc.stderr and "--skip-install" in proc.stderr, proc.stderr
    assert where_pipeline_imports_from(tmp_path) == before == str(REPO / "pipeline" / "__init__.py")
