"""One error tree: every error a user can fix derives from PipelineError, and the CLI catches it once."""

from __future__ import annotations

import importlib
import inspect
import pickle
import pkgutil

import pipeline
from pipeline.core.errors import CheckpointError, ConfigError, DataError, PipelineError
from tests.conftest import TINY_MODEL, make_competition, run_cli, write_yaml


def pipeline_exceptions() -> dict[str, type]:
    """Every public exception class defined in a pipeline module, by `module.Class`."""
    found = {}
    for info in pkgutil.walk_packages(pipeline.__path__, "pipeline."):
        if info.name == "pipeline.__main__":
            continue
        module = importlib.import_module(info.name)
        for name, obj in vars(module).items():
            if (inspect.isclass(obj) and issubclass(obj, BaseException) and obj.__module__ == info.name
                    and not name.startswith("_")):  # private ones (submit's _Request) never reach the user
                found[f"{info.name}.{name}"] = obj
    return found


def test_every_user_error_derives_from_pipeline_error():
    errors = pipeline_exceptions()
    names = {key.rsplit(".", 1)[1] for key in errors}
    assert {"PipelineError", "ConfigError", "DataError", "CheckpointError", "MetricError", "TableError",
            "EnsembleError", "PackageError", "BundleError", "SubmitError", "TrainingError", "BadImage"} <= names
    assert [key for key, cls in errors.items() if not issubclass(cls, PipelineError)] == []
    # the old import paths still name the same classes
    from pipeline.core.config import ConfigError as config_error
    from pipeline.core.data import DataError as data_error
    from pipeline.core.io import CheckpointError as checkpoint_error

    assert (config_error, data_error, checkpoint_error) == (ConfigError, DataError, CheckpointError)


def test_training_error_names_the_run_and_fold_and_pickles():
    from pipeline.train.train import TrainingError

    e = TrainingError("tiny", 2, "out of memory at batch_size=64")
    assert str(e) == "training tiny fold 2 stopped: out of memory at batch_size=64"
    again = pickle.loads(pickle.dumps(e))  # it crosses process boundaries (launch, Ray) whole
    assert (type(again), str(again), again.fold) == (TrainingError, str(e), 2)


def _one_error_line(stderr: str) -> str:
    assert "Traceback" not in stderr, stderr
    lines = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, stderr
    return lines[0]


def test_cli_prints_a_config_error_once_with_status_2(tmp_path):
    make_competition(tmp_path)
    proc = run_cli("folds", "-c", "competition.yaml", "n_foldz=3", cwd=tmp_path, check=False)
    assert proc.returncode == 2
    assert _one_error_line(proc.stderr).startswith("error: competition.yaml with overrides n_foldz=3")
    assert "did you mean 'n_folds'" in proc.stderr


def test_cli_prints_a_training_error_as_is(tmp_path, monkeypatch, capsys):
    """A TrainingError reaches the user with its own message (run and fold), not re-wrapped by the command."""
    from pipeline import cli
    from pipeline.train import train

    make_competition(tmp_path, models_dir="models")
    write_yaml(tmp_path / "models" / "tiny.yaml", TINY_MODEL)
    monkeypatch.chdir(tmp_path)

    def stop(comp, cfg, name, fold, **kwargs):
        raise train.TrainingError(name, fold, "3 unreadable images skipped, more than max_bad_images=0")

    monkeypatch.setattr(train, "train_fold", stop)
    assert cli.main(["train", "-c", "competition.yaml", "--model", "tiny", "--fold", "1"]) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert line == "error: training tiny fold 1 stopped: 3 unreadable images skipped, more than max_bad_images=0"
