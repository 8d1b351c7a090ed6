"""`make tune`'s search space and the file it writes: parsed from the model YAML's `search` key, and the
best trial written back as configs/models/<model>-tuned.yaml.

The forms of one `search` entry (docs/configuration.md, "Search"):

    search:
      lr: [1e-4, 1e-2, log]              # a range: its kind follows the key (lr is a float key): log-uniform
      weight_decay: [0, 0.1]             # float key: a float range, though 0 is written as an integer
      batch_size: [16, 64]               # int key: an integer range
      dropout: {low: 0, high: 0.5}       # the explicit form; also log: true, type: int | float
      augment: [light, medium, heavy]    # words: a choice
      epochs: {choices: [10, 20]}        # numbers to choose from

Numbers are numbers in any YAML spelling: YAML 1.1 reads `1e-3`, `1E-3` and `1.0e4` as text, they are read
back as 0.001, 0.001 and 10000.0 here (`.5` and `1_000` are numbers already). A list of two numbers is a
range whose kind is the key's type (int keys: integer, float keys: float), `int`, `float` or `log` third
word overriding it; a list of three numbers is refused as ambiguous. The study prints one line per key.

The tuned file is the source text with the tuned values put in place (comments kept, `search` removed),
headed by a comment naming the score and a checksum: `make tune` rewrites it only while it is unchanged.
"""

from __future__ import annotations

import hashlib
import re
import types
import typing
from dataclasses import dataclass
from pathlib import Path

import yaml

from pipeline.core.errors import ConfigError
from pipeline.core.io import write_text
from pipeline.nn.models import ModelConfig, load_model, model_config_path

TUNED_SUFFIX = "-tuned"
TUNED_HEADER = "# written by `make tune`"  # a -tuned.yaml without it is the user's and is never overwritten
FIXED = {"search", "stages", "backbone", "in_chans", "pseudo", "tta", "tta_merge", "seed"}
FORMS = ("[low, high], [low, high, log|int|float], {low: .., high: .., log: true, type: int|float}, "
         "[a, b, ...] (words) or {choices: [a, b, ...]}")
_NUMBER = re.compile(r"[-+]?(\d[\d_]*(\.[\d_]*)?|\.\d[\d_]*)([eE][-+]?\d+)?")
_CHECKSUM = re.compile(r"checksum ([0-9a-f]{12}|-{12})")
_FOLDS = re.compile(r"on fold\(s\) ([0-9, ]+)\.")


@dataclass(frozen=True)
class Param:
    name: str
    kind: str  # "float", "int" or "categorical"
    low: float | None = None
    high: float | None = None
    log: bool = False
    choices: tuple = ()

    def suggest(self, trial):
        if self.kind == "categorical":
            return trial.suggest_categorical(self.name, list(self.choices))
        if self.kind == "int":
            return trial.suggest_int(self.name, int(self.low), int(self.high), log=self.log)
        return trial.suggest_float(self.name, self.low, self.high, log=self.log)

    def extremes(self) -> list:
        return list(self.choices) if self.kind == "categorical" else [self.low, self.high]

    def describe(self) -> str:
        """`lr: float in [0.001, 0.1] (log)`, `batch_size: int in [16, 64]`, `augment: choice of light, heavy`."""
        if self.kind == "categorical":
            return f"{self.name}: choice of {', '.join(map(str, self.choices))}"
        low, high = (int(self.low), int(self.high)) if self.kind == "int" else (self.low, self.high)
        return f"{self.name}: {self.kind} in [{low:g}, {high:g}]" + (" (log)" if self.log else "")


def _number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def as_number(v):
    """A YAML 1.1 number read as text ('1e-3', '1E-3', '1.0e4') as the number it spells; anything else as is."""
    if isinstance(v, str) and _NUMBER.fullmatch(v.strip()):
        text = v.strip().replace("_", "")
        return int(text) if re.fullmatch(r"[-+]?\d+", text) else float(text)
    return v


def key_kind(name: str) -> str | None:
    """'float' for a key that takes floats (lr, weight_decay, drop_rate), 'int' for one that takes whole
    numbers only (batch_size, epochs), None for the rest."""
    leaves, todo = set(), [ModelConfig.model_fields[name].annotation]
    while todo:
        t = todo.pop()
        if typing.get_origin(t) in (typing.Union, types.UnionType, typing.Annotated):
            todo.extend(typing.get_args(t)[:1] if typing.get_origin(t) is typing.Annotated else typing.get_args(t))
        else:
            leaves.add(t)
    return "float" if float in leaves else "int" if int in leaves else None


def _range(name: str, low, high, log: bool, kind: str | None, spec, where: str) -> Param:
    bad = f"{where}: key 'search.{name}'"
    if not (_number(low) and _number(high)):
        raise ConfigError(f"{bad}: a range needs two numbers, got {spec!r}; expected {FORMS}")
    natural = key_kind(name)
    kind = kind or natural or ("int" if isinstance(low, int) and isinstance(high, int) else "float")
    if kind == "float" and natural == "int":
        raise ConfigError(f"{bad}: {name} takes whole numbers; a float range would draw e.g. {low + 0.5:g} "
                          f"(write [{low}, {high}] or [{low}, {high}, int])")
    if kind == "int" and not (float(low).is_integer() and float(high).is_integer()):
        raise ConfigError(f"{bad}: an integer range needs whole-number bounds, got {spec!r}")
    if not low < high or (log and low <= 0):
        raise ConfigError(f"{bad}: need low < high{' and low > 0 for log' if log else ''}, got {spec!r}")
    return Param(name, kind, float(low), float(high), log)


def _from_mapping(name: str, spec: dict, where: str) -> Param:
    if set(spec) == {"choices"} and isinstance(spec["choices"], list) and spec["choices"]:
        words = [as_number(v) for v in spec["choices"]] if key_kind(name) else spec["choices"]
        return Param(name, "categorical", choices=tuple(words))
    if {"low", "high"} <= set(spec) <= {"low", "high", "log", "type"} and spec.get("log", False) in (True, False) \
            and spec.get("type") in (None, "int", "float"):
        return _range(name, as_number(spec["low"]), as_number(spec["high"]), spec.get("log", False),
                      spec.get("type"), spec, where)
    raise ConfigError(f"{where}: key 'search.{name}': expected {FORMS}, got {spec!r}")


def parse_param(name: str, spec, where: str) -> Param:
    """One entry of `search` (see the module docstring); a wrong shape names the key and the forms."""
    if isinstance(spec, dict):
        return _from_mapping(name, spec, where)
    if not isinstance(spec, list) or not spec:
        raise ConfigError(f"{where}: key 'search.{name}': expected {FORMS}, got {spec!r}")
    values = [as_number(v) for v in spec]
    if len(values) in (2, 3) and _number(values[0]) and _number(values[1]) \
            and (len(values) == 2 or values[2] in ("log", "int", "float")):
        word = values[2] if len(values) == 3 else None
        return _range(name, values[0], values[1], word == "log", word if word in ("int", "float") else None,
                      spec, where)
    if any(_number(v) for v in values) and len(values) in (2, 3):
        raise ConfigError(f"{where}: key 'search.{name}': {spec!r} is ambiguous; a range is [low, high] or "
                          "[low, high, log|int|float], numbers to choose from are {choices: [...]}")
    return Param(name, "categorical", choices=tuple(values if key_kind(name) else spec))


def shown(values: dict) -> str:
    """key=value words for a log line, floats to 4 significant digits."""
    return " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in values.items())


def flow(value) -> str:
    """A value as one line of YAML (1.0e-05, [a, b], 'text that looks like a number')."""
    return yaml.safe_dump(value, default_flow_style=True, width=1 << 20).strip().removesuffix("...").strip()


def override(name: str, value) -> str:
    return f"{name}={flow(value)}"


def search_space(models_dir: str | Path, model: str) -> list[Param]:
    """The validated search space of a model config: every key a config key that may be searched, every
    bound and choice a value that key accepts."""
    cfg, _ = load_model(models_dir, model)
    where = str(model_config_path(models_dir, model))
    if not cfg.search:
        raise ConfigError(f"{where}: no `search` space to tune; add e.g. search: {{lr: [1.0e-4, 1.0e-2, log]}}")
    params = []
    for name, spec in cfg.search.items():
        if name not in ModelConfig.model_fields:
            raise ConfigError(f"{where}: key 'search.{name}': not a model config key")
        if name in FIXED:
            raise ConfigError(f"{where}: key 'search.{name}': cannot be searched ({', '.join(sorted(FIXED))} are fixed)")
        param = parse_param(name, spec, where)
        for value in param.extremes():  # each bound and choice must be a valid value of the key
            try:
                cfg_v, _ = load_model(models_dir, model, [override(name, int(value) if param.kind == "int" else value)])
                if name == "augment":  # presets and transform lists are checked where they are built
                    from pipeline.nn.augment import build_transform

                    build_transform(cfg_v.augment, 16, [0.5] * 3, [0.5] * 3)
            except ConfigError as e:
                raise ConfigError(f"{where}: key 'search.{name}': {value!r} is not a valid value: {e}") from None
        params.append(param)
    return params


# --- the tuned file --------------------------------------------------------------------------------


def tuned_path(models_dir: str | Path, model: str) -> Path:
    return model_config_path(models_dir, f"{model}{TUNED_SUFFIX}")


def _digest(text: str) -> str:
    return hashlib.md5(_CHECKSUM.sub("checksum " + "-" * 12, text, count=1).encode()).hexdigest()[:12]


def check_tuned_writable(models_dir: str | Path, model: str) -> None:
    """Refuse (before any trial) a <model>-tuned.yaml that `make tune` did not write or that was edited
    since: it is the user's now."""
    out = tuned_path(models_dir, model)
    if not out.is_file():
        return
    text = out.read_text()
    mark = _CHECKSUM.search(text)
    keep = (f"keep it under another name (mv {out} {out.with_name(f'{model}-mine.yaml')}) or delete it, then "
            f"rerun `make tune MODEL={model}` (the study resumes where it is; a finished one only writes the file)")
    if not text.startswith(TUNED_HEADER):
        raise ConfigError(f"{out} exists and was not written by `make tune`; it is left alone: {keep}")
    if mark is None or mark.group(1) != _digest(text):
        raise ConfigError(f"{out} was edited by hand since `make tune` wrote it; it is left alone: {keep}")


def _last_line(node) -> int:
    """The last source line (0-based) holding part of a YAML node."""
    if isinstance(node, yaml.ScalarNode) or getattr(node, "flow_style", False):
        end = node.end_mark
        return end.line - 1 if end.column == 0 and end.line > node.start_mark.line else end.line
    children = [n for pair in node.value for n in (pair if isinstance(pair, tuple) else (pair,))]
    return max(map(_last_line, children), default=node.start_mark.line)


def _edited_text(text: str, values: dict, source_name: str) -> str:
    """The source text with `search` removed and each value replaced in place (comments kept) or added."""
    root = yaml.compose(text, Loader=yaml.SafeLoader)
    starts = [0] + [i + 1 for i, c in enumerate(text) if c == "\n"]

    def line_end(line: int) -> int:
        return starts[line + 1] if line + 1 < len(starts) else len(text)

    edits, seen = [], set()
    for key_node, value_node in root.value if isinstance(root, yaml.MappingNode) else []:
        key, last = key_node.value, _last_line(value_node)
        seen.add(key)
        if key == "search":
            edits.append((starts[key_node.start_mark.line], line_end(last), ""))
        elif key in values and value_node.start_mark.line == last == key_node.start_mark.line:
            start, end = value_node.start_mark.index, value_node.end_mark.index
            rest = text[end:line_end(last)]
            note = "" if "#" in rest else f"  # tuned ({source_name}: {text[start:end]})"
            edits.append((start, end, flow(values[key]) + note))
        elif key in values:  # a block value over several lines: the key on one line
            edits.append((key_node.end_mark.index, line_end(last), f": {flow(values[key])}  # tuned\n"))
    for start, end, new in sorted(edits, reverse=True):
        text = text[:start] + new + text[end:]
    text = text if text.endswith("\n") or not text else text + "\n"
    return text + "".join(f"{k}: {flow(v)}  # added by make tune\n" for k, v in values.items() if k not in seen)


def tuned_text(source: Path, values: dict, header: str) -> str:
    """The tuned file's text: the header (its checksum filled in) and the edited source; the plain YAML
    (comments lost, said so) when the edit would not read back as exactly the tuned config."""
    raw = source.read_text()
    expected = {k: v for k, v in (yaml.safe_load(raw) or {}).items() if k != "search"} | values
    body = _edited_text(raw, values, source.name)
    try:
        same = yaml.safe_load(body) == expected
    except yaml.YAMLError:
        same = False
    if not same:
        print(f"note: {source.name}'s layout could not be kept; the tuned file is plain YAML without its comments")
        body = yaml.safe_dump(expected, sort_keys=False)
    text = header + body
    return text.replace("checksum " + "-" * 12, f"checksum {_digest(text)}", 1)


def write_tuned(models_dir: str | Path, model: str, values: dict, score: str, number: int, n: int,
                folds: list[int]) -> Path:
    """configs/models/<model>-tuned.yaml: the model's YAML with the best values and no `search`, headed by
    comments naming its score and checksum; validated before it is written. One the user wrote or edited is
    left alone."""
    source = model_config_path(models_dir, model)
    out = tuned_path(models_dir, model)
    check_tuned_writable(models_dir, model)
    on = ", ".join(map(str, folds))
    header = (f"{TUNED_HEADER} from {source.name}: best of {n} trial(s) (trial {number}), {score} on fold(s) {on}.\n"
              f"# Tuned on the validation rows of fold(s) {on}: its CV there is optimistic (cv.md says so).\n"
              f"# Train it like any model: make train-all MODELS={model}{TUNED_SUFFIX}\n"
              f"# checksum {'-' * 12}: `make tune` rewrites this file only while it is unchanged; once edited, "
              "it is yours.\n")
    old = out.read_text() if out.is_file() else None
    write_text(out, tuned_text(source, values, header))
    try:
        load_model(models_dir, f"{model}{TUNED_SUFFIX}")
    except ConfigError:
        if old is None:
            out.unlink()
        else:
            write_text(out, old)
        raise
    print(f"tune {model}: wrote {out}")
    return out


def tuned_folds(models_dir: str | Path, run: str) -> list[int] | None:
    """The folds whose validation rows picked a tuned model's settings (read from its -tuned.yaml header),
    for a run named <model>-tuned or <model>-tuned-<suffix> (pseudo, distilled); None for other runs."""
    parts = run.split("-")
    for i in range(len(parts), 0, -1):
        name = "-".join(parts[:i])
        path = model_config_path(models_dir, name)
        if name.endswith(TUNED_SUFFIX) and path.is_file():
            head = path.read_text()[:1000]
            match = _FOLDS.search(head) if head.startswith(TUNED_HEADER) else None
            return [int(k) for k in match.group(1).replace(",", " ").split()] if match else None
    return None
