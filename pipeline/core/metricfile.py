"""A competition metric from your own file (`metric: path/to/file.py:function`): read without running it at
config load (`read_statically`), imported where it scores (`load_function`). Used by pipeline.core.metrics."""

from __future__ import annotations

import ast
import difflib
import hashlib
import importlib.util
import inspect
import re
import sys
from pathlib import Path
from typing import Callable

from pipeline.core.errors import ConfigError


def read_statically(name: str, file: Path, function: str) -> None:
    """What can be told of a metric file without running it: it parses, binds `function` at its top level
    (a def, an assignment or an import; a star import lets any name through), and a def of it takes
    (y_true, y_pred). ConfigError otherwise."""
    try:
        tree = ast.parse(file.read_bytes(), filename=str(file))
    except (SyntaxError, ValueError) as e:
        raise ConfigError(f"metric {name!r}: cannot import {file} (for function {function!r}): "
                          f"{type(e).__name__}: {e}") from None
    bound: dict[str, ast.AST] = {}
    defined: list[str] = []
    star = False

    def visit(statements) -> None:
        nonlocal star
        for node in statements:
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                bound[node.name] = node
                defined.append(node.name)
            elif isinstance(node, (ast.Import, ast.ImportFrom)):
                for alias in node.names:
                    star = star or alias.name == "*"
                    bound[alias.asname or alias.name.split(".")[0]] = node
            elif isinstance(node, (ast.Assign, ast.AnnAssign, ast.AugAssign)):
                targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                for target in targets:
                    for leaf in ast.walk(target):
                        if isinstance(leaf, ast.Name):
                            bound[leaf.id] = node
            for block in ("body", "orelse", "finalbody", "handlers"):  # if / try / with / for at the top level
                if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                    visit(getattr(node, block, []) or [])

    visit(tree.body)
    if function not in bound:
        if star:
            return
        callables = sorted(set(n for n in defined if not n.startswith("__")))
        close = difflib.get_close_matches(function, callables, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else "."
        raise ConfigError(f"metric {name!r}: {file} has no function {function!r}{hint} "
                          f"Its callables: {', '.join(callables) or 'none'}")
    node = bound[function]
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
        a = node.args
        positional = [*a.posonlyargs, *a.args]
        required = len(positional) - len(a.defaults)
        kw_required = [k.arg for k, d in zip(a.kwonlyargs, a.kw_defaults) if d is None]
        if (len(positional) < 2 and a.vararg is None) or required > 2 or kw_required:
            args = ast.unparse(a)
            raise ConfigError(f"metric {name!r}: {file}:{function} must take two arguments, "
                              f"(y_true, y_pred), but its signature is ({args})")


def load_function(name: str, file: Path, function: str, serial: int) -> Callable:
    """Import `file` as a fresh module (its top-level code runs now) and return its `function`; ConfigError
    naming the file when it cannot be imported, lacks the function, or the function does not take two
    arguments."""
    digest = hashlib.sha1(str(file).encode()).hexdigest()[:10]
    module_name = f"_kfold_metric_{re.sub(r'[^0-9A-Za-z_]', '_', file.stem)}_{digest}_{serial}"
    try:
        spec = importlib.util.spec_from_file_location(module_name, file)
        if spec is None or spec.loader is None:
            raise ImportError("not a Python source file")
        module = importlib.util.module_from_spec(spec)
        sys.modules[module_name] = module  # dataclasses, pickling by reference and the like look it up
        spec.loader.exec_module(module)
    except (Exception, SystemExit) as e:
        sys.modules.pop(module_name, None)
        raise ConfigError(f"metric {name!r}: cannot import {file} (for function {function!r}): "
                          f"{type(e).__name__}: {e}") from None
    if not hasattr(module, function):
        callables = sorted(n for n, v in vars(module).items()
                           if callable(v) and not n.startswith("__") and not inspect.ismodule(v))
        close = difflib.get_close_matches(function, callables, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else "."
        raise ConfigError(f"metric {name!r}: {file} has no function {function!r}{hint} "
                          f"Its callables: {', '.join(callables) or 'none'}")
    fn = getattr(module, function)
    if not callable(fn):
        raise ConfigError(f"metric {name!r}: {file}:{function} is a {type(fn).__name__}, not a function")
    try:
        inspect.signature(fn).bind(None, None)
    except TypeError:
        raise ConfigError(f"metric {name!r}: {file}:{function} must take two arguments, "
                          f"(y_true, y_pred), but its signature is {inspect.signature(fn)}") from None
    except ValueError:  # no signature to read (a builtin): let it be
        pass
    return fn
