"""`gpu-check`: the GPU paths no CPU test reaches, in one run of under 8 minutes on one GPU.

Each check prints PASS or FAIL with its reason (SKIP once the time budget is spent); one failing check does not
stop the others, a summary ends the run, and the exit status is 1 when any check failed.

  nan-skip       a non-finite loss under bf16 (scale 1) and fp16 (dynamic scale), with grad clipping: the fused
                 optimizer (`make_optimizer`) skips the step on the device: weights, optimizer state and BatchNorm
                 statistics unchanged, the StepGuard counts 1, fp16's scale halves, no host sync happened
                 (torch.cuda.set_sync_debug_mode("error") around the step), the next finite step moves the weights.
  amp-bf16/fp16  our model's logits under `autocast` have that dtype and a guarded step of the fused AdamW moves
                 the weights, finite; then a fold trained through the CLI with amp=bf16 (fp16) is done, losses finite.
  channels-last  a channels_last copy of the model gives the contiguous one's logits and gradients (bf16
                 tolerance); then a fold trained with channels_last=true.
  launcher       `make train-all GPUS=0 JOBS_PER_GPU=2` on 2 folds: both done, each with its log in
                 runs/<model>/logs/, both placed on gpu0, and their training spans overlap.
  ddp            the Makefile's torchrun line at NPROC=1 (`torchrun --standalone --nproc_per_node=1 -m pipeline
                 train`) trains a fold. One process does not wrap DDP in the trainer (world size 1), so a one-rank
                 NCCL process group also runs DistributedDataParallel over our model, optimizer and StepGuard.
  throughput     training img/s of our trainer (log.csv, best epoch after the first) against a minimal timm loop
                 on the same model, images, batch, AMP and channels_last (timm.create_model + create_optimizer_v2,
                 images decoded beforehand, cudnn.benchmark on as timm's train.py sets it). train.py is not
                 installed as a module; this loop stands in for it. Passes at >= 0.8x.
  compile        a fold trained with compile=true: done, losses finite, and inductor wrote kernels (a fresh
                 TORCHINDUCTOR_CACHE_DIR is not empty afterwards).

Without a CUDA GPU it prints one line saying so and exits 0. --allow-cpu runs the same code on the CPU on tiny
data, the CUDA-only parts reported as not checked: that is how the tests reach it.
"""

from __future__ import annotations

import contextlib
import copy
import csv
import json
import math
import os
import shutil
import sys
import time
from collections import namedtuple
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from pipeline.launch.launch import job_span
from pipeline.tools.bench_scale import Cell, run_stage, write_cell, write_section

REPO = Path(__file__).resolve().parents[2]
BEGIN = "<!-- gpu-check: begin (written by make gpu-check) -->"
END = "<!-- gpu-check: end -->"
MIN_RATIO = 0.8  # our trainer's img/s over the timm loop's, to pass
TORCHRUN = shutil.which("torchrun", path=str(Path(sys.executable).parent)) or "torchrun"  # the venv's, as Make's


# The small competition (AMP, channels_last, compile, launcher and ddp folds) and the throughput one.
Sizes = namedtuple("Sizes", "rows img classes backbone epochs batch speed_rows speed_img speed_backbone speed_batch "
                   "speed_epochs")
GPU_SIZES = Sizes(640, 32, 4, "resnet18", 2, 64, 30_000, 128, "resnet50", 128, 3)  # 24k images an epoch
CPU_SIZES = Sizes(120, 16, 3, "test_resnet", 1, 16, 200, 16, "test_resnet", 16, 2)
# compile last: the slowest to start, it gets what is left of the budget instead of taking the others' share
CHECKS = ("nan-skip", "amp-bf16", "amp-fp16", "channels-last", "launcher", "ddp", "throughput", "compile")


class _CheckFailed(Exception):
    """A check's reason to fail (and the numbers measured before it failed)."""


def need(condition, reason: str) -> None:
    if not condition:
        raise _CheckFailed(reason)


@dataclass
class Result:
    name: str
    status: str = "pass"  # pass | fail | skip
    reason: str = ""
    seconds: float = 0.0
    numbers: dict = field(default_factory=dict)


@dataclass
class Ctx:
    work: Path
    dev: object  # torch.device
    sizes: Sizes
    deadline: float
    notes: list[str] = field(default_factory=list)  # what this run could not check (CPU)

    def __post_init__(self):
        self.cuda = self.dev.type == "cuda"
        self.small, self.speed = self.work / "small", self.work / "speed"  # the two competitions

    def timeout(self, wanted: float) -> float:
        return max(20.0, min(wanted, self.deadline - time.monotonic() + 30))


# --- processes --------------------------------------------------------------------------------------------


def run(ctx: Ctx, name: str, argv: list[str], cwd: Path, timeout: float, env: dict | None = None) -> tuple[bool, str]:
    """argv in its own process group, killed whole past its timeout, its output in work/logs/<name>.log;
    -> (whether it exited 0, what happened and the last lines of its output)."""
    log = ctx.work / "logs" / f"{name}.log"
    result = run_stage(argv, cwd, log, ctx.timeout(timeout), 0, env)
    tail = " | ".join(log.read_text(errors="replace").strip().splitlines()[-3:])[-600:]
    return result["status"] == "ok", f"{result['status']} ({result.get('note', 'exit 0')}): {tail} (log: {log})"


def small_config(ctx: Ctx, **overrides) -> dict:
    s = ctx.sizes
    return {"backbone": s.backbone, "pretrained": False, "img_size": s.img, "in_chans": 3, "epochs": s.epochs,
            "batch_size": s.batch, "lr": 1e-3, "augment": "none", "warmup_epochs": 0, "num_workers": "auto",
            **overrides}


def train_cli(ctx: Ctx, name: str, cfg: dict, folder: Path | None = None, torchrun: bool = False,
              env: dict | None = None, timeout: float = 150) -> dict:
    """Train fold 0 of models/<name>.yaml = cfg through the CLI (or torchrun, as the Makefile runs NPROC>1);
    -> its done.json and log.csv rows, after checking both."""
    folder = folder or ctx.small
    (folder / "models" / f"{name}.yaml").write_text(json.dumps(cfg) + "\n")
    shutil.rmtree(folder / "runs" / name, ignore_errors=True)
    words = ["train", "-c", "competition.yaml", "--model", name, "--fold", "0"]
    argv = ([TORCHRUN, "--standalone", "--nproc_per_node=1", "-m", "pipeline",
             *words] if torchrun else [sys.executable, "-m", "pipeline", *words])
    ok, what = run(ctx, f"train-{name}", argv, folder, timeout, env)
    need(ok, f"`{' '.join(argv[2:] if not torchrun else argv)}`: {what}")
    return fold_outputs(folder / "runs" / name / "fold0")


def fold_outputs(run_dir: Path) -> dict:
    done = run_dir / "done.json"
    need(done.is_file(), f"{done} missing after training")
    with open(run_dir / "log.csv") as f:
        log = list(csv.DictReader(f))
    losses = [float(r["train_loss"]) for r in log]
    need(log and all(math.isfinite(v) for v in losses), f"{run_dir}/log.csv: train losses {losses}")
    return {"done": json.loads(done.read_text()), "log": log}


def prepare_data(ctx: Ctx, throughput: bool) -> None:
    s = ctx.sizes
    write_cell(ctx.small, Cell(s.rows, s.classes), n_folds=2, size=s.img, channels=3)
    if throughput:
        write_cell(ctx.speed, Cell(s.speed_rows, 10), n_folds=5, size=s.speed_img, channels=3)
    for folder in (ctx.small, ctx.speed) if throughput else (ctx.small,):
        (folder / "models" / "bench.yaml").unlink(missing_ok=True)  # bench-scale's; these checks write their own
        for name in ("runs", "folds", "stacking"):
            shutil.rmtree(folder / name, ignore_errors=True)
        ok, what = run(ctx, f"folds-{folder.name}", [sys.executable, "-m", "pipeline", "folds", "-c",
                                                     "competition.yaml"], folder, 120)
        need(ok, f"folds in {folder}: {what}")


# --- in-process pieces --------------------------------------------------------------------------------------


def amp(ctx: Ctx, name: str):
    """The training dtype for amp=name, as the trainer chooses it: None (fp32) on the CPU, where the trainer never
    autocasts (and CPU bf16 autocast gives non-finite resnet gradients now and then, torch 2.14)."""
    from pipeline.nn.infer import amp_dtype

    return amp_dtype(name, ctx.dev)


def model_and_batch(ctx: Ctx, channels_last: bool = False, seed: int = 0):
    import torch

    from pipeline.nn.models import ModelConfig, build_model

    torch.manual_seed(seed)
    cfg = ModelConfig(**small_config(ctx, channels_last=channels_last))
    model = build_model(cfg, ctx.sizes.classes).to(ctx.dev).train()
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(memory_format=fmt)
    x = torch.randn(8, 3, ctx.sizes.img, ctx.sizes.img, device=ctx.dev).contiguous(memory_format=fmt)
    y = torch.randint(0, ctx.sizes.classes, (8,), device=ctx.dev)
    return cfg, model, x, y


def guarded_step(ctx: Ctx, model, opt, guard, dtype, x, y, clip=None, poison: bool = False):
    """One training step as train_one_epoch takes it: watch, forward under autocast, count, backward, settle, step."""
    import torch

    from pipeline.nn.infer import autocast

    guard.watch(model)
    with autocast(ctx.dev, dtype):
        logits = model(x)
        loss = torch.nn.functional.cross_entropy(logits.float(), y)
    if poison:
        loss = loss * float("nan")
    guard.count(loss)
    guard.backward(loss)
    guard.settle()
    guard.step(opt, model.parameters(), clip)
    return logits


def moves(ctx: Ctx, model, opt, guard, dtype, x, y, clip=None, tries: int = 4) -> tuple[int, object]:
    """Finite guarded steps until the weights move (fp16 may skip a first step whose scaled gradients overflow,
    as the trainer would); -> (the steps it took, 0 when they never moved; the last logits)."""
    for n in range(1, tries + 1):
        weights = [p.detach().clone() for p in model.parameters()]
        logits = guarded_step(ctx, model, opt, guard, dtype, x, y, clip)
        if not same(weights, [p.detach() for p in model.parameters()]):
            return n, logits
    return 0, logits


def snapshot(model, opt=None) -> list:
    tensors = [*model.parameters(), *model.buffers()]
    if opt is not None:
        tensors += [v for state in opt.state.values() for v in state.values() if hasattr(v, "clone")]
    return [t.detach().clone() for t in tensors]


def same(a: list, b: list) -> bool:
    return len(a) == len(b) and all(x.equal(y) for x, y in zip(a, b))


@contextlib.contextmanager
def no_sync(ctx: Ctx):
    """A block in which any host sync raises (CUDA); on the CPU a plain block."""
    import torch

    if ctx.cuda:
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
    try:
        yield
    finally:
        if ctx.cuda:
            torch.cuda.set_sync_debug_mode("default")


# --- the checks ----------------------------------------------------------------------------------------------


def check_nan_skip(ctx: Ctx) -> dict:
    from pipeline.train.recipe import StepGuard, make_optimizer

    numbers = {}
    for name in ("bf16", "fp16"):
        dtype = amp(ctx, name)
        cfg, model, x, y = model_and_batch(ctx)
        opt, guard = make_optimizer(cfg, model, ctx.dev), StepGuard(ctx.dev, fp16=name == "fp16")
        fused = bool(opt.defaults.get("fused"))
        need(fused or not ctx.cuda, f"{name}: make_optimizer gave {type(opt).__name__} without fused=True on CUDA")
        guarded_step(ctx, model, opt, guard, dtype, x, y, clip=1.0)  # a finite step: the optimizer's state exists
        need(int(guard.nonfinite) == 0, f"{name}: the first, finite step was counted as non-finite")
        before, scale = snapshot(model, opt), guard.scaler.get_scale()
        try:
            with no_sync(ctx):
                guarded_step(ctx, model, opt, guard, dtype, x, y, clip=1.0, poison=True)
        except RuntimeError as e:
            raise _CheckFailed(f"{name}: the skipped step synchronised with the host: {str(e).splitlines()[0]}")
        need(int(guard.nonfinite) == 1, f"{name}: the guard counted {int(guard.nonfinite)} non-finite steps, not 1")
        need(same(before, snapshot(model, opt)), f"{name}: weights, optimizer state or BatchNorm statistics "
             "changed in the non-finite step")
        after = guard.scaler.get_scale()
        if name == "fp16":
            need(after == scale / 2, f"fp16: loss scale {scale:g} -> {after:g}, expected it halved")
        with no_sync(ctx):
            need(moves(ctx, model, opt, guard, dtype, x, y, 1.0)[0], f"{name}: 4 finite steps after it left the weights "
                 "as they were")
        numbers[name] = {"fused": fused, "scale_before": scale, "scale_after": after}
    if not ctx.cuda:
        ctx.notes.append("nan-skip: fused optimizers and the no-host-sync assertion are CUDA-only (not checked)")
    return numbers


def check_amp(ctx: Ctx, name: str) -> dict:
    import torch

    from pipeline.train.recipe import StepGuard, make_optimizer

    dtype = amp(ctx, name)
    cfg, model, x, y = model_and_batch(ctx)
    opt, guard = make_optimizer(cfg, model, ctx.dev), StepGuard(ctx.dev, fp16=name == "fp16")
    steps, logits = moves(ctx, model, opt, guard, dtype, x, y)
    need(steps, "4 guarded steps left the weights as they were")
    need(logits.dtype == (dtype or torch.float32), f"logits under autocast are {logits.dtype}, not {dtype}")
    need(all(bool(torch.isfinite(p).all()) for p in model.parameters()), "non-finite weights after the step")
    out = train_cli(ctx, f"gc_{name}", small_config(ctx, amp=name))
    if not ctx.cuda:
        ctx.notes.append(f"amp-{name}: the CPU runs fp32 (the trainer autocasts on CUDA only); the {name} "
                         "StepGuard ran, the dtype did not")
    return {"logits_dtype": str(logits.dtype), "steps_to_move": steps, "fold_score": out["done"].get("score"),
            "img_per_s": float(out["log"][-1]["img_per_s"])}


def check_channels_last(ctx: Ctx) -> dict:
    import torch

    from pipeline.nn.infer import autocast

    _, model, x, y = model_and_batch(ctx)
    cl = copy.deepcopy(model).to(memory_format=torch.channels_last)
    x_cl = x.contiguous(memory_format=torch.channels_last)
    dtype = amp(ctx, "bf16")
    outs = []  # (logits, the first conv's gradient) of each
    for net, inp in ((model, x), (cl, x_cl)):
        with autocast(ctx.dev, dtype):
            logits = net(inp).float()
        torch.nn.functional.cross_entropy(logits, y).backward()
        outs.append((logits, next(p for p in net.parameters() if p.dim() == 4).grad.float()))
    need(next(p for p in cl.parameters() if p.dim() == 4).is_contiguous(memory_format=torch.channels_last),
         "the first conv's weight is not channels_last")
    tol = 5e-2 if dtype is not None else 1e-4
    diff, gdiff = ((a - b).abs().max().item() / (a.abs().max().item() + 1e-12) for a, b in zip(*outs))
    need(diff < tol and gdiff < tol, f"channels_last differs from contiguous: logits {diff:.2e}, grads {gdiff:.2e} "
         f"(relative; tolerance {tol:g})")
    out = train_cli(ctx, "gc_channels_last", small_config(ctx, amp="bf16", channels_last=True))
    return {"logits_rel_diff": diff, "grad_rel_diff": gdiff, "fold_score": out["done"].get("score")}


def check_compile(ctx: Ctx) -> dict:
    cache = ctx.work / "inductor-cache"
    shutil.rmtree(cache, ignore_errors=True)
    t0 = time.perf_counter()
    out = train_cli(ctx, "gc_compile", small_config(ctx, amp="bf16", channels_last=True, compile=True),
                    env={"TORCHINDUCTOR_CACHE_DIR": str(cache)}, timeout=300)
    files = sum(1 for p in cache.rglob("*") if p.is_file()) if cache.is_dir() else 0
    need(files or not ctx.cuda, f"compile=true trained, but inductor wrote nothing to {cache}: it ran uncompiled")
    ctx.notes += [] if ctx.cuda else ["compile: the trainer compiles on CUDA only; on the CPU the fold trained as is"]
    return {"seconds_with_compile": time.perf_counter() - t0, "inductor_files": files,
            "img_per_s": [round(float(r["img_per_s"])) for r in out["log"]]}


def check_launcher(ctx: Ctx) -> dict:
    make = shutil.which("make")
    need(make is not None and (REPO / "Makefile").is_file(), f"make or {REPO / 'Makefile'} not found")
    name = "gc_launch"
    (ctx.small / "models" / f"{name}.yaml").write_text(json.dumps(small_config(ctx)) + "\n")
    shutil.rmtree(ctx.small / "runs" / name, ignore_errors=True)
    argv = [make, "--no-print-directory", "-f", str(REPO / "Makefile"), "COMPETITION=competition.yaml", "train-all",
            f"MODELS={name}", "GPUS=0", "JOBS_PER_GPU=2"]
    fake = None if ctx.cuda else {"CUDA_VISIBLE_DEVICES": "0"}  # the CPU: GPU 0 named visible, folds train on CPU
    ctx.notes += ["launcher: GPU 0 faked with CUDA_VISIBLE_DEVICES=0; the two folds trained on the CPU"] if fake else []
    ok, what = run(ctx, "launcher", argv, ctx.small, 240, fake)
    need(ok, f"`make train-all GPUS=0 JOBS_PER_GPU=2`: {what}")
    need("gpu0" in (ctx.work / "logs" / "launcher.log").read_text(), "the launcher did not place the folds on gpu0")
    logs = [ctx.small / "runs" / name / "logs" / f"fold{k}.log" for k in (0, 1)]
    spans = [fold_outputs(log.parent.parent / f"fold{k}") and job_span(log) for k, log in enumerate(logs)]
    need(None not in spans, f"{logs}: no launcher header and exit line (the launcher keeps each fold's output there)")
    overlap = min(spans[0][1], spans[1][1]) - max(spans[0][0], spans[1][0])  # processes, not training loops
    need(overlap > 0, f"the two fold processes did not run at the same time (spans {spans}); JOBS_PER_GPU=2 packs two")
    return {"overlap_s": overlap, "fold_seconds": [round(b - a, 1) for a, b in spans]}



def check_ddp(ctx: Ctx) -> dict:
    out = train_cli(ctx, "gc_ddp", small_config(ctx, amp="bf16"), torchrun=True)
    result = ctx.work / "ddp-worker.json"
    result.unlink(missing_ok=True)
    argv = [TORCHRUN, "--standalone", "--nproc_per_node=1", "-m",
            "pipeline.tools.gpu_check", "ddp-worker", str(result), json.dumps(small_config(ctx)),
            str(ctx.sizes.classes), "cuda" if ctx.cuda else "cpu"]
    ok, what = run(ctx, "ddp-worker", argv, ctx.work, 120)
    need(ok and result.is_file(), f"the one-rank DDP worker: {what}")
    worker = json.loads(result.read_text())
    need(worker["ok"], f"DDP worker: {worker.get('reason')}")
    return {"fold_score": out["done"].get("score"), **worker}


def ddp_worker(out: Path, cfg_json: str, classes: int, kind: str) -> None:
    """Under torchrun: a process group (NCCL on CUDA, gloo on the CPU) and DistributedDataParallel over our
    model, make_optimizer and the StepGuard for 3 bf16 steps; writes {"ok", "reason", ...} to `out`."""
    import torch
    import torch.distributed as dist

    from pipeline.nn.models import ModelConfig, build_model
    from pipeline.train.recipe import StepGuard, make_optimizer
    from pipeline.train.runtime import dist_info

    rank, local_rank, world = dist_info()
    dev = torch.device("cuda", local_rank) if kind == "cuda" else torch.device("cpu")
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    dist.init_process_group(backend="nccl" if dev.type == "cuda" else "gloo")
    ctx = Ctx(out.parent, dev, CPU_SIZES, time.monotonic())
    try:
        cfg = ModelConfig(**{**json.loads(cfg_json), "channels_last": dev.type == "cuda"})
        fmt = torch.channels_last if cfg.channels_last else torch.contiguous_format
        model = build_model(cfg, classes).to(dev, memory_format=fmt)
        net = torch.nn.parallel.DistributedDataParallel(model, device_ids=[local_rank] if dev.type == "cuda" else None)
        opt, guard = make_optimizer(cfg, model, dev), StepGuard(dev, fp16=False)
        before = [p.detach().clone() for p in model.parameters()]
        x = torch.randn(8, 3, cfg.img_size, cfg.img_size, device=dev).contiguous(memory_format=fmt)
        y = torch.randint(0, classes, (8,), device=dev)
        for _ in range(3):
            guarded_step(ctx, net, opt, guard, amp(ctx, "bf16"), x, y, clip=1.0)
        moved = not same(before, [p.detach() for p in model.parameters()])
        finite = all(bool(torch.isfinite(p).all()) for p in model.parameters())
        total = torch.ones((), device=dev)
        dist.all_reduce(total)
        ok = moved and finite and int(guard.nonfinite) == 0 and int(total) == world
        reason = "" if ok else (f"moved {moved}, finite {finite}, skipped {int(guard.nonfinite)}, "
                                f"all_reduce {int(total)}")
        out.write_text(json.dumps({"ok": ok, "reason": reason, "world": world, "backend": dist.get_backend()}))
    finally:
        dist.destroy_process_group()


def speed_config(ctx: Ctx) -> dict:
    s = ctx.sizes
    return {"backbone": s.speed_backbone, "pretrained": False, "img_size": s.speed_img, "in_chans": 3,
            "epochs": s.speed_epochs, "batch_size": s.speed_batch, "lr": 1e-3, "weight_decay": 0.05,
            "optimizer": "adamw", "augment": "none", "warmup_epochs": 0, "amp": "bf16",
            "channels_last": ctx.cuda, "num_workers": "auto", "cache_images": "auto"}


def check_throughput(ctx: Ctx) -> dict:
    cfg = speed_config(ctx)
    out = train_cli(ctx, "gc_speed", cfg, folder=ctx.speed, timeout=300)
    rates = [float(r["img_per_s"]) for r in out["log"]]
    ours = max(rates[1:]) if len(rates) > 1 else rates[0]  # the first epoch fills the RAM cache and autotunes
    timm_rate, images = timm_loop(ctx, cfg)
    ratio = ours / timm_rate
    numbers = {"ours_img_s": ours, "timm_img_s": timm_rate, "ratio": ratio, "epoch_img_s": [round(r) for r in rates],
               "images_per_epoch": images, "model": cfg["backbone"], "img_size": cfg["img_size"],
               "batch": cfg["batch_size"], "amp": "bf16" if ctx.cuda else "off (cpu)", "channels_last": ctx.cuda}
    if ratio < MIN_RATIO and ctx.cuda:  # on the CPU the numbers are reported, not judged
        raise _CheckFailed(f"our trainer at {ours:.0f} img/s is {ratio:.2f}x the timm loop's {timm_rate:.0f} img/s "
                          f"(below {MIN_RATIO}x): see runs/gc_speed/fold0/log.csv, the loader's workers", numbers)
    return numbers


def timm_loop(ctx: Ctx, cfg: dict) -> tuple[float, int]:
    """img/s of a minimal timm training loop over fold 0's training images (decoded beforehand), one epoch's
    worth of steps after 10 warm-up steps; -> (img/s, images per epoch)."""
    import cv2
    import numpy as np
    import pandas as pd
    import timm
    import torch
    from timm.data import resolve_data_config
    from timm.optim import create_optimizer_v2

    from pipeline.nn.infer import autocast

    folds = pd.read_csv(ctx.speed / "folds" / "folds.csv", dtype=str)
    train = pd.read_csv(ctx.speed / "data" / "train.csv", dtype=str).merge(folds, on="image_id")
    train = train[train.fold != "0"]
    classes = sorted(train.label.unique())
    def read(image_id: str):
        return cv2.cvtColor(cv2.imread(str(ctx.speed / "data" / "train" / f"{image_id}.png")), cv2.COLOR_BGR2RGB)

    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        images = np.stack(list(pool.map(read, train.image_id)))
    data = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()
    labels = torch.tensor(train.label.map({c: k for k, c in enumerate(classes)}).to_numpy())
    if ctx.cuda:
        data, torch.backends.cudnn.benchmark = data.pin_memory(), True  # as timm's train.py sets it
    torch.manual_seed(0)
    model = timm.create_model(cfg["backbone"], pretrained=False, num_classes=len(classes), in_chans=3).to(ctx.dev)
    fmt = torch.channels_last if cfg["channels_last"] else torch.contiguous_format
    model = model.to(memory_format=fmt).train()
    dc = resolve_data_config({}, model=model)
    mean = torch.tensor(dc["mean"], device=ctx.dev).view(1, 3, 1, 1) * 255
    std = torch.tensor(dc["std"], device=ctx.dev).view(1, 3, 1, 1) * 255
    opt = create_optimizer_v2(model, opt=cfg["optimizer"], lr=cfg["lr"], weight_decay=cfg["weight_decay"])
    dtype = amp(ctx, "bf16")
    batch, loss_fn = cfg["batch_size"], torch.nn.CrossEntropyLoss()

    def step(idx) -> None:
        x = data[idx].to(ctx.dev, non_blocking=True)
        x = ((x.float() - mean) / std).contiguous(memory_format=fmt)
        with autocast(ctx.dev, dtype):
            loss = loss_fn(model(x), labels[idx].to(ctx.dev, non_blocking=True))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    order = torch.randperm(len(data))
    batches = [order[i:i + batch] for i in range(0, len(order) - batch + 1, batch)]
    for idx in batches[:10]:
        step(idx)
    if ctx.cuda:
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for idx in batches:
        step(idx)
    if ctx.cuda:
        torch.cuda.synchronize()
    return len(batches) * batch / (time.perf_counter() - t0), len(data)


# --- the run ---------------------------------------------------------------------------------------------------

CHECK_FUNCTIONS = {
    "nan-skip": check_nan_skip, "amp-bf16": lambda ctx: check_amp(ctx, "bf16"),
    "amp-fp16": lambda ctx: check_amp(ctx, "fp16"), "channels-last": check_channels_last,
    "compile": check_compile, "launcher": check_launcher, "ddp": check_ddp, "throughput": check_throughput,
}


def run_check(ctx: Ctx, name: str) -> Result:
    if time.monotonic() > ctx.deadline:
        return Result(name, "skip", "the time budget (--budget) was spent before it started")
    t0 = time.perf_counter()
    try:
        numbers = CHECK_FUNCTIONS[name](ctx)
        result = Result(name, "pass", "", numbers=numbers or {})
    except _CheckFailed as e:  # (reason, numbers measured before it failed)
        result = Result(name, "fail", e.args[0], numbers=e.args[1] if len(e.args) > 1 else {})
    except Exception as e:  # one broken check must not stop the others
        result = Result(name, "fail", f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}")
    result.seconds = time.perf_counter() - t0
    print(f"{result.status.upper():<4} {name:<14} {result.seconds:6.1f} s  {result.reason or _brief(result.numbers)}",
          flush=True)
    return result


def _brief(numbers: dict) -> str:
    return ", ".join(f"{k} {v:.3g}" if isinstance(v, float) else f"{k} {v}" for k, v in numbers.items())[:300]


def markdown(env: dict, results: list[Result], notes: list[str], total: float) -> str:
    passed = sum(r.status == "pass" for r in results)
    lines = [BEGIN, "", "## GPU paths (`make gpu-check`)", "",
             f"Latest run: {env['date']} on {env['device']} (torch {env['torch']}, CUDA {env['cuda']}, timm "
             f"{env['timm']}, {env['cpus']} CPUs). Command: `{env['command']}`; {passed} of {len(results)} checks "
             f"passed in {total:.0f} s. What each check does and how it is decided: `pipeline/tools/gpu_check.py`.",
             "", "| check | result | seconds | reason or numbers |", "|---|---|---|---|"]
    lines += [f"| {r.name} | {r.status.upper()} | {r.seconds:.1f} | "
              + (r.reason or _brief(r.numbers)).replace("|", "/").replace("\n", " ") + " |" for r in results]
    n = next((r.numbers for r in results if r.name == "throughput" and r.numbers), None)
    if n:
        lines += ["", f"Training img/s, {n['model']} at {n['img_size']} px, batch {n['batch']}, AMP {n['amp']}, "
                  f"channels_last {n['channels_last']}, {n['images_per_epoch']:,} images per epoch: our trainer "
                  f"(`python -m pipeline train`, RAM cache and DataLoader, the best epoch after the first of "
                  f"{n['epoch_img_s']}) **{n['ours_img_s']:.0f}**; a minimal timm loop (create_model + "
                  f"create_optimizer_v2 on images decoded beforehand, standing in for timm's train.py) "
                  f"**{n['timm_img_s']:.0f}**; ratio **{n['ratio']:.2f}**."]
    if notes:
        lines += ["", "Not checked on this device:", "", *[f"- {note}" for note in notes]]
    return "\n".join([*lines, "", END]) + "\n"


def run_gpu_check(out: Path, allow_cpu: bool = False, only: str = "", budget: float = 420,
                  docs: str | None = None) -> int:
    """Run the checks; -> the exit status (0: all passed, or no GPU; 1: some failed). `docs` None: the results
    go to docs/benchmarks.md on a GPU and nowhere on the CPU; '': nowhere."""
    import torch

    if not torch.cuda.is_available() and not allow_cpu:
        print("gpu-check: no CUDA GPU here (torch.cuda.is_available() is False); nothing checked. Run it on a "
              "machine with a GPU (--allow-cpu runs its CPU parts).")
        return 0
    names = [n.strip() for n in only.split(",") if n.strip()] or list(CHECKS)
    unknown = [n for n in names if n not in CHECK_FUNCTIONS]
    if unknown:
        print(f"gpu-check: unknown check(s) {unknown}; the checks are {', '.join(CHECKS)}", file=sys.stderr)
        return 2
    started = time.monotonic()
    cuda = torch.cuda.is_available()
    device = torch.cuda.get_device_name(0) if cuda else "CPU only (--allow-cpu)"
    ctx = Ctx(out.resolve(), torch.device("cuda" if cuda else "cpu"), GPU_SIZES if cuda else CPU_SIZES,
              started + budget)
    print(f"gpu-check on {device}: {', '.join(names)}; budget {budget:.0f} s; work folder {ctx.work}", flush=True)
    try:
        prepare_data(ctx, "throughput" in names)
        results = [run_check(ctx, name) for name in names]
    except _CheckFailed as e:
        results = [Result(name, "fail", f"data setup: {e}") for name in names]
    total = time.monotonic() - started
    import timm

    env = {"date": time.strftime("%Y-%m-%d %H:%M"), "device": device, "torch": torch.__version__,
           "cpus": os.cpu_count(), "timm": timm.__version__, "cuda": torch.version.cuda,
           "command": " ".join(["python -m pipeline gpu-check", *sys.argv[2:]])}
    counts = {s: sum(r.status == s for r in results) for s in ("pass", "fail", "skip")}
    print(f"\ngpu-check summary on {env['device']}: {counts['pass']} passed, {counts['fail']} failed, "
          f"{counts['skip']} skipped in {total:.0f} s")
    for r in results:
        print(f"  {r.status.upper():<4} {r.name:<14} {r.reason or _brief(r.numbers)}")
    for note in ctx.notes:
        print(f"  note: {note}")
    docs = "docs/benchmarks.md" if docs is None and cuda else docs
    if docs:
        write_section(Path(docs), markdown(env, results, ctx.notes, total), BEGIN, END)
    return 1 if counts["fail"] else 0


def main(argv: list[str]) -> int:
    """The process torchrun starts for the ddp check."""
    if len(argv) != 5 or argv[0] != "ddp-worker":
        sys.exit("usage: python -m pipeline.tools.gpu_check ddp-worker <out.json> <config json> <classes> <cuda|cpu>")
    ddp_worker(Path(argv[1]), argv[2], int(argv[3]), argv[4])
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
