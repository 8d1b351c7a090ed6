"""One record per stage: what it read, what it was told, what it wrote; and whether that still holds.

Every stage (folds, a trained fold, predict of one model, ensemble, distill's teacher, package) writes a
small JSON record beside its outputs, atomically, after them:

    {"stage": "ensemble", "params": {...}, "choices": {...},
     "inputs": {"folds/folds.csv": {"md5": ..., "size": ..., "mtime_ns": ...}, ...},
     "outputs": {"submissions/submission.csv": {...}, ...}}

- `params`: everything besides files that changes the outputs (a config hash, the TTA views, the method).
- `choices`: what the user gave the stage by hand (METHOD=, TTA=, STUDENT=). A later run that is not given
  the choice takes the recorded one and says so (`choose`), instead of falling back to the default.

`changes(record, params, inputs)` is the one answer to "is this stage up to date?": the list of reasons it
is not (empty: up to date). It reads only the record and stats files: a file whose size and mtime are the
recorded ones is taken as unchanged without reading it, and a file that was touched is hashed once
(`file_md5`, cached by path, size and mtime_ns), so a no-op stage opens no checkpoint and reads no table.
"""

from __future__ import annotations

import json
import os
import shlex
from dataclasses import dataclass, field
from pathlib import Path

from pipeline.core.errors import ConfigError
from pipeline.core.io import file_md5 as _read_md5
from pipeline.core.io import write_json

RECORD_SUFFIX = ".record.json"
CHOICES_FILE = "folds/choices.json"  # choices of the whole project (COMP_ARGS), read by every stage

_md5_cache: dict[tuple[str, int, int], str] = {}


def file_md5(path: str | os.PathLike) -> str:
    """md5 of a file, computed once per (path, size, mtime_ns) in this process."""
    st = os.stat(path)
    key = (str(Path(path).resolve()), st.st_size, st.st_mtime_ns)
    if key not in _md5_cache:
        _md5_cache[key] = _read_md5(path)
    return _md5_cache[key]


def digest(path: str | os.PathLike) -> dict | None:
    """What a record keeps of a file: md5, size and mtime_ns (None for a missing file)."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return {"md5": file_md5(path), "size": st.st_size, "mtime_ns": st.st_mtime_ns}


def same_file(path: str | os.PathLike, recorded: dict | None) -> bool:
    """The file is the recorded one: same size and mtime (not read), or, when touched, the same md5."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return recorded is None
    if recorded is None:
        return False
    if st.st_size != recorded.get("size"):
        return False
    return st.st_mtime_ns == recorded.get("mtime_ns") or file_md5(path) == recorded.get("md5")


@dataclass
class Record:
    stage: str
    params: dict = field(default_factory=dict)
    inputs: dict[str, dict | None] = field(default_factory=dict)
    outputs: dict[str, dict | None] = field(default_factory=dict)
    choices: dict = field(default_factory=dict)
    info: dict = field(default_factory=dict)  # what the stage reports besides (a score, its time); not compared

    def to_json(self) -> dict:
        return {**self.info, "stage": self.stage, "params": self.params, "choices": self.choices,
                "inputs": self.inputs, "outputs": self.outputs}


def record_path(where: str | os.PathLike, stage: str) -> Path:
    """`<where>/<stage>.record.json`."""
    return Path(where) / f"{stage}{RECORD_SUFFIX}"


def read_record(path: str | os.PathLike) -> Record | None:
    """The record at `path`, or None when there is none (or it cannot be read: the stage then reruns)."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError):
        return None
    if not isinstance(data, dict) or "stage" not in data:
        return None
    own = {"stage", "params", "inputs", "outputs", "choices"}
    return Record(data["stage"], data.get("params", {}), data.get("inputs", {}), data.get("outputs", {}),
                  data.get("choices", {}), {k: v for k, v in data.items() if k not in own})


def _keys(paths) -> list[str]:
    return sorted(dict.fromkeys(str(p) for p in paths))


def write_record(path: str | os.PathLike, stage: str, params: dict, inputs, outputs, choices: dict | None = None,
                 info: dict | None = None) -> Record:
    """Write the record of a finished stage (after its outputs), atomically. `info`: more top-level keys for
    readers (a score, the time it took), never compared."""
    record = Record(stage, params, {p: digest(p) for p in _keys(inputs)}, {p: digest(p) for p in _keys(outputs)},
                    dict(choices or {}), dict(info or {}))
    write_json(path, record.to_json())
    return record


def _file_changes(record: Record, inputs: list[str]) -> list[str]:
    reasons = [f"{p} changed" for p in inputs if p in record.inputs and not same_file(p, record.inputs[p])]
    return reasons + [f"output {p} {'missing' if not Path(p).exists() else 'changed since written'}"
                      for p, d in record.outputs.items() if not same_file(p, d)]


def changed_files(path: str | os.PathLike) -> list[str]:
    """The recorded inputs and outputs that are no longer as recorded: what a later stage checks to trust
    a stage's outputs without knowing its params ([] also when there is no record)."""
    record = read_record(path)
    return [] if record is None else _file_changes(record, list(record.inputs))


def changes(path: str | os.PathLike, params: dict, inputs) -> list[str]:
    """Why the stage recorded at `path` is not up to date for these params and input files ([]: it is)."""
    record = read_record(path)
    if record is None:
        return [f"no record ({path})"]
    reasons = [f"{key} changed" for key in sorted(set(params) | set(record.params))
               if params.get(key) != record.params.get(key)]
    now = _keys(inputs)
    reasons += [f"new input {p}" for p in now if p not in record.inputs]
    reasons += [f"input {p} gone" for p in record.inputs if p not in now]
    return reasons + _file_changes(record, now)


def choose(path: str | os.PathLike, name: str, given, default, flag: str):
    """A choice the user gives a stage sticks: `given` when given (not None); else the one recorded at
    `path` (said so, with `flag`, the Make variable that changes it); else `default`."""
    if given is not None:
        return given
    record = read_record(path)
    if record is not None and record.choices.get(name) is not None:
        value = record.choices[name]
        print(f"note: {flag}={value} as chosen before (recorded in {path}); give {flag}= to change it")
        return value
    return default


# --- COMP_ARGS: competition overrides that hold for every stage until given again -----------------------


def competition_overrides(given: str | None, positional: list[str] | None = None,
                          path: str | os.PathLike = CHOICES_FILE) -> list[str]:
    """The competition overrides a stage runs with. Given (COMP_ARGS=, or key=value words): to be recorded
    (remember_overrides) in folds/choices.json for every later stage. Not given: the recorded ones, said so.
    `COMP_ARGS=` clears."""
    path = Path(path)
    if given is None and not positional:
        try:
            recorded = json.loads(path.read_text()).get("COMP_ARGS", [])
        except (OSError, json.JSONDecodeError, AttributeError):
            recorded = []
        if recorded:
            print(f"note: COMP_ARGS='{shlex.join(recorded)}' as given before (recorded in {path}); "
                  "give COMP_ARGS= to change or clear them")
        return list(recorded)
    try:
        words = shlex.split(given or "") + list(positional or [])
    except ValueError as e:
        raise ConfigError(f"COMP_ARGS={given!r}: cannot be split into key=value words ({e})") from None
    bad = [w for w in words if "=" not in w]
    if bad:
        raise ConfigError(f"COMP_ARGS: {bad} are not key=value words (e.g. COMP_ARGS='seed=1 tracking=mlflow')")
    return words


def remember_overrides(words: list[str], path: str | os.PathLike = CHOICES_FILE) -> None:
    """Record given competition overrides for every later stage, once the config they make has loaded (a
    value that fails validation is not remembered)."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        data = {}
    if not isinstance(data, dict):
        data = {}
    if data.get("COMP_ARGS", []) != words:
        write_json(path, {**data, "COMP_ARGS": words})
