"""The shape of the code: imports go one way, cheap commands start without torch, guarded steps."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch

from tests.conftest import REPO, TINY_MODEL, make_competition, run_cli, write_yaml

PACKAGE = REPO / "pipeline"
# The floors, bottom first: a subpackage imports only from itself and the subpackages before it; the CLI
# (cli.py, and __main__ that runs it) sits on top and nothing imports it.
LAYERS = ["core", "nn", "artifacts", "launch", "train", "predict", "blend", "kaggle", "tools", "cli", "__main__"]
MAX_MODULE_LINES = 600


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts) or "__init__"


def import_graph() -> dict[str, set[str]]:
    """Module (dotted below pipeline/, e.g. `train.recipe`) -> the pipeline modules it imports anywhere in
    its file (lazy imports inside functions too)."""
    paths = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}
    graph = {}
    for name, path in paths.items():
        deps = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level:
                raise AssertionError(f"{name}: relative import; write `from pipeline.<floor>.<module> import ...`")
            if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "pipeline":
                base = node.module.removeprefix("pipeline").lstrip(".")
                for alias in node.names:  # `from pipeline.core import io` names the module io
                    full = f"{base}.{alias.name}" if base else alias.name
                    deps.add(full if full in paths else base)
            elif isinstance(node, ast.Import):
                deps.update(a.name.removeprefix("pipeline.") for a in node.names if a.name.startswith("pipeline."))
        graph[name] = {d for d in deps if d} - {name}
    return graph


def floor(module: str) -> str:
    return module.split(".")[0]


def upward_imports(graph: dict[str, set[str]]) -> list[tuple[str, str]]:
    """(module, what it imports) for every import that reaches a floor above the module's own."""
    return sorted((m, d) for m, deps in graph.items() if m != "__init__" for d in deps
                  if LAYERS.index(floor(d)) > LAYERS.index(floor(m)))


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_cycle_finder_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_imports_go_one_way():
    graph = import_graph()
    assert {"cli", "train.train", "nn.infer", "blend.blends", "blend.ensemble", "train.recipe", "artifacts.runs"} <= set(graph)
    assert [m for m, deps in graph.items() if "cli" in deps] == ["__main__"], "only __main__ may import the CLI"
    assert cycles(graph) == []
    assert {floor(m) for m in graph} - {"__init__"} <= set(LAYERS), "a subpackage missing from LAYERS"
    assert upward_imports(graph) == []  # every import goes to the module's own floor or one below it
    floors = {f: {floor(d) for m, deps in graph.items() if floor(m) == f for d in deps} - {f} for f in LAYERS}
    assert cycles(floors) == []
    # one inference path: only infer builds models for inference or evaluation loaders
    for module in graph:
        path = PACKAGE.joinpath(*module.split(".")).with_suffix(".py")
        if not path.is_file():
            path = PACKAGE.joinpath(*module.split("."), "__init__.py")
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.Call):
                continue
            name = getattr(node.func, "id", getattr(node.func, "attr", ""))
            if name == "build_model" and any(k.arg == "pretrained" for k in node.keywords):
                assert module == "nn.infer", f"{module} builds a model for inference; use infer.model_from_state"
            if name == "make_loader":  # training loaders (train, lr_find, the bench's data path) aside
                assert module in ("nn.infer", "train.train", "tools.lr_find", "tools.bench"), f"{module} builds its own loader"


def test_floor_checker_finds_an_upward_import():
    graph = {"core.config": {"nn.models"}, "nn.models": {"core.config"}, "cli": {"blend.ensemble"}}
    assert upward_imports(graph) == [("core.config", "nn.models")]


def test_no_module_is_too_long_to_read():
    long = {module_name(p): n for p in PACKAGE.rglob("*.py") if (n := p.read_text().count("\n")) > MAX_MODULE_LINES}
    assert not long, f"modules over {MAX_MODULE_LINES} lines: {long}"


LIGHT = "; ".join([
    "import sys",
    "from pipeline.cli import main",
    "rc = main(sys.argv[1:])",
    "heavy = sorted(m for m in ('torch', 'timm', 'albumentations', 'sklearn', 'lightgbm') if m in sys.modules)",
    "print('HEAVY', heavy, file=sys.stderr)",
    "sys.exit(rc)",
])


def light(root: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", LIGHT, *args], cwd=root, capture_output=True, text=True)


def test_check_plan_and_validate_start_without_torch(tmp_path):
    make_competition(tmp_path, n_train=30, n_test=6, models_dir="models")
    write_yaml(tmp_path / "models" / "tiny.yaml", TINY_MODEL)
    run_cli("folds", "-c", "competition.yaml", cwd=tmp_path)
    sample = pd.read_csv(tmp_path / "data/tiny/sample_submission.csv", dtype=str)
    sample.assign(label="c1").to_csv(tmp_path / "sub.csv", index=False)
    for args in (["check", "-c", "competition.yaml"], ["plan", "-c", "competition.yaml"],
                 ["validate", "sub.csv", "-c", "competition.yaml"]):
        proc = light(tmp_path, *args)
        assert proc.returncode == 0, proc.stderr
        assert "HEAVY []" in proc.stderr, f"{args[0]}: {proc.stderr}"
    proc = light(tmp_path, "plan", "-c", "competition.yaml")
    assert proc.stdout.split() == [f"runs/tiny/fold{k}/done.json" for k in range(3)]
    assert "plan: tiny: 0/3 folds done; to train: fold0 (not trained)" in proc.stderr


@pytest.mark.slow
def test_a_non_finite_step_never_reaches_the_weights():
    """The guard skips a step whose loss is NaN on the device: weights, BatchNorm statistics and optimizer
    state unchanged."""
    from pipeline.nn.models import ModelConfig, build_model
    from pipeline.train.recipe import StepGuard, make_loss, make_optimizer

    for extra in ({"optimizer": "adamw"}, {"optimizer": "sgd", "sam": True}):
        cfg = ModelConfig(**{**TINY_MODEL, **extra})
        torch.manual_seed(0)
        model = build_model(cfg, num_classes=3)
        opt = make_optimizer(cfg, model)
        guard, loss_fn = StepGuard(torch.device("cpu"), fp16=False), make_loss(cfg, "multiclass", None)
        x, y = torch.randn(4, 1, 16, 16), torch.eye(3)[[0, 1, 2, 0]]

        def step(x):
            guard.watch(model)
            loss = loss_fn(model(x), y)
            guard.count(loss)
            if extra.get("sam"):
                loss.backward()
                opt.perturb()
                guard.backward(loss_fn(model(x), y))
                opt.restore()
            else:
                guard.backward(loss)
            guard.settle()
            guard.step(opt, model.parameters(), grad_clip=1.0)

        step(x)  # a finite step moves the weights
        before = {k: v.clone() for k, v in model.state_dict().items()}
        state = json.dumps(str(opt.state_dict()["state"]))
        step(x * float("nan"))
        assert int(guard.nonfinite) == 1, extra
        assert all(torch.equal(before[k], v) for k, v in model.state_dict().items()), extra
        assert json.dumps(str(opt.state_dict()["state"])) == state, extra
        step(x)  # and training goes on, finite
        assert all(torch.isfinite(v).all() for v in model.state_dict().values() if v.is_floating_point())
        assert any(not torch.equal(before[k], v) for k, v in model.state_dict().items())


@pytest.mark.parametrize("sched", ["cosine", "step", "plateau", "wsd"])
def test_schedules_resume_exactly_from_their_state(sched, tmp_path):
    """A scheduler rebuilt from its checkpoint state gives the same lrs as one that never stopped."""
    from pipeline.core.io import load_checkpoint, save_checkpoint
    from pipeline.nn.models import ModelConfig, build_model
    from pipeline.train.recipe import current_lr, load_scheduler_state, make_optimizer, make_scheduler, scheduler_state

    cfg = ModelConfig(**{**TINY_MODEL, "epochs": 6, "sched": sched, "decay_epochs": 2 if sched == "step" else None,
                         "patience_epochs": 0})
    model = build_model(cfg, num_classes=3)
    metrics = [0.5, 0.6, 0.6, 0.6, 0.6, 0.6]  # plateau decays after the second epoch
    ckpt = tmp_path / "c.pt"

    def run(stop_after: int | None = None, resume: bool = False) -> list[float]:
        opt = make_optimizer(cfg, model)
        scheduler = make_scheduler(cfg, opt, steps_per_epoch=4, metric_mode="max")
        start = 0
        if resume:
            state = load_checkpoint(ckpt)  # weights_only=True, as training resumes
            opt.load_state_dict(state["optimizer"])
            load_scheduler_state(scheduler, state["scheduler"])
            start = state["epoch"] + 1
        lrs = []
        for epoch in range(start, 6):
            for s in range(4):
                scheduler.step_update(epoch * 4 + s)
                lrs.append(current_lr(opt))
            scheduler.step(epoch + 1, metrics[epoch])
            if epoch == stop_after:
                save_checkpoint(ckpt, {"optimizer": opt.state_dict(), "scheduler": scheduler_state(scheduler),
                                       "epoch": epoch})
                break
        return lrs

    unbroken = run()
    assert run(stop_after=2) + run(resume=True) == unbroken
    assert len(set(unbroken)) > 2  # the schedule moves
