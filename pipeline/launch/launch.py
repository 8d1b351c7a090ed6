"""Where jobs run when there is more than one place to run them: the GPUs of this machine, or a Ray cluster.

Make still decides what is stale (`plan` lists the folds to train); this module only places the chosen
jobs. Each job is one command line (a fold's `train`, or one model's `predict`), run as a child process:

- on this machine, one job per device slot at a time, pinned with CUDA_VISIBLE_DEVICES. A slot is NPROC
  GPUs (a DDP job), and each GPU group holds JOBS_PER_GPU slots, so no device ever runs more jobs than that;
- on a Ray cluster (`pipeline.launch.cluster`), the same command as a Ray task with its resource request.

Every job writes its output to its own log file (runs/<model>/logs/fold<k>.log), which is also echoed
with the job's name in front. A failing job frees its slot and does not stop the others; the closing
summary lists every job, and the last lines of the log of each that failed.
"""

from __future__ import annotations

import os
import queue
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

from pipeline.core.errors import ConfigError
from pipeline.artifacts.runs import config_name, parse_target, read_done, PSEUDO_SUFFIX, PSEUDO_TABLE

TAIL_LINES = 15  # lines of a failed job's log in the closing summary


@dataclass(frozen=True)
class Job:
    """One command to run somewhere: its name, argv, log file and, for a fold, its done.json."""

    name: str
    argv: list[str]
    log: str
    target: str | None = None


@dataclass
class Result:
    job: Job
    where: str  # "gpu0", "gpu0,1", "cpu" or "<host> gpu0"
    returncode: int
    seconds: float
    attempts: int = 1
    error: str | None = None  # why it failed, when not by its exit code (a lost worker or node)
    score: str | None = field(default=None)

    @property
    def ok(self) -> bool:
        return self.returncode == 0


# --- devices -----------------------------------------------------------------------------------------


def visible_gpus() -> list[str]:
    """The GPUs this process may use: CUDA_VISIBLE_DEVICES when set, else those nvidia-smi lists
    (no torch import, so Make can ask quickly)."""
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None:
        return [g for g in (s.strip() for s in env.split(",")) if g and not g.startswith("-")]
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return []
    try:
        out = subprocess.run([smi, "--query-gpu=index", "--format=csv,noheader"], capture_output=True,
                             text=True, timeout=20).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return [line.strip() for line in out.splitlines() if line.strip().isdigit()]


def resolve_gpus(spec: str | None) -> list[str]:
    """GPUS=: empty or `all` -> every visible GPU; `none` -> none (CPU, the plain Make path); `0,1,3` -> those."""
    spec = (spec or "").strip()
    if spec in ("", "all"):
        return visible_gpus()
    if spec in ("none", "cpu"):
        return []
    gpus = [g.strip() for g in spec.split(",") if g.strip()]
    bad = [g for g in gpus if not g.isdigit()]
    if bad or len(set(gpus)) != len(gpus):
        raise ConfigError(f"GPUS={spec}: expected comma-separated GPU indices (0,1,3), `all` or `none`")
    check_visible(spec, gpus)
    return gpus


def _torch_gpu_count() -> int:
    """GPUs torch sees (NVML where it can, so this process does not initialise CUDA); 0 without torch."""
    os.environ.setdefault("PYTORCH_NVML_BASED_CUDA_CHECK", "1")
    try:
        import torch

        return torch.cuda.device_count()
    except Exception:  # noqa: BLE001 - no driver, no torch: no GPU
        return 0


def check_visible(spec: str, gpus: list[str]) -> None:
    """Every GPU GPUS= names must be one this machine has: a job pinned to a missing one would train on the
    CPU under a gpu<k> label."""
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    visible, source = visible_gpus(), (f"CUDA_VISIBLE_DEVICES={env}" if env is not None else "nvidia-smi")
    if env is None and shutil.which("nvidia-smi") is None:
        visible, source = [str(i) for i in range(_torch_gpu_count())], "torch"
    if any(not v.isdigit() for v in visible):  # UUIDs or MIG names: nothing to compare indices with
        return
    missing = [g for g in gpus if g not in visible]
    if not missing:
        return
    if not visible:
        none = {"nvidia-smi": "nvidia-smi lists none", "torch": "no nvidia-smi, and torch sees none"}.get(
            source, f"{source} hides them all")
        raise ConfigError(f"GPUS={spec}: this machine has no visible GPU ({none}); leave GPUS "
                          "empty or give GPUS=none to train on the CPU")
    raise ConfigError(f"GPUS={spec}: no GPU {','.join(missing)} on this machine; visible: {','.join(visible)} "
                      f"({source}); GPUS takes those indices, `all` or `none`")


def device_slots(gpus: list[str], jobs_per_gpu: int = 1, nproc: int = 1) -> list[tuple[str, ...]]:
    """The slots jobs run in: the GPUs in groups of `nproc` (one DDP job each), every group repeated
    `jobs_per_gpu` times. No GPU: one CPU slot."""
    if jobs_per_gpu < 1 or nproc < 1:
        raise ConfigError(f"JOBS_PER_GPU={jobs_per_gpu}, NPROC={nproc}: both must be at least 1")
    if not gpus:
        return [()]
    if len(gpus) < nproc:
        raise ConfigError(f"NPROC={nproc} needs {nproc} GPUs per job; GPUS gives {len(gpus)} ({','.join(gpus)})")
    groups = [tuple(gpus[i:i + nproc]) for i in range(0, len(gpus) - nproc + 1, nproc)]
    unused = gpus[len(groups) * nproc:]
    if unused:
        print(f"launch: GPU(s) {','.join(unused)} left idle: {len(gpus)} GPUs do not split into groups of "
              f"NPROC={nproc}", file=sys.stderr)
    return [g for g in groups for _ in range(jobs_per_gpu)]


def slot_name(slot: tuple[str, ...]) -> str:
    return "gpu" + ",".join(slot) if slot else "cpu"


# --- the jobs of a train-all -----------------------------------------------------------------------------


def fold_jobs(targets: list[str], train_cmd: list[str], overrides: list[str] | None = None,
              pseudo: str | None = None) -> list[Job]:
    """One job per runs/<run>/fold<k>/done.json target: the `train` command Make would run for it
    (`train_cmd` is Make's TRAIN), its output in runs/<run>/logs/fold<k>.log."""
    jobs = []
    for target in targets:
        run, fold = parse_target(target)
        argv = [*train_cmd, "--target", target]
        if run.endswith(PSEUDO_SUFFIX):
            argv += ["--pseudo", pseudo or PSEUDO_TABLE]
        jobs.append(Job(f"{run} fold{fold}", argv + list(overrides or []),
                        str(Path(target).parent.parent / "logs" / f"fold{fold}.log"), target))
    return jobs


def target_score(target: str | None) -> str | None:
    done = read_done(Path(target).parent) if target else None
    if not done or done.get("score") is None:
        return None
    return f"{done['metric']} {done['score']:.4f}"


# --- running one job ---------------------------------------------------------------------------------------


def _die_with_parent(sig: int = signal.SIGKILL) -> None:
    """In the child, before exec: get SIGKILL when the process that started it dies (Linux), so a killed
    launcher or Ray worker never leaves a fold training on beside its retry."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, int(sig))  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


_print_lock = threading.Lock()
_running: set[subprocess.Popen] = set()  # the jobs' processes, stopped with the launcher
_on_stop: list = []  # more to do when the launcher stops (Ray: shut the driver down)
_stopping = threading.Lock()
STOP_GRACE_SECONDS = 10.0  # a job's time to end after SIGTERM before SIGKILL


def _proc_stat(pid: int) -> tuple[int, int] | None:
    """(parent pid, start time) of a live process, from /proc; None when it is gone (or a zombie)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return (int(fields[1]), int(fields[19])) if fields[0] != "Z" else None


def _make_ancestor() -> tuple[int, int] | None:
    """(pid, start time) of the make whose recipe started this process (its parent or grandparent)."""
    pid = os.getpid()
    for _ in range(4):
        stat = _proc_stat(pid)
        if stat is None or stat[0] <= 1:
            return None
        pid = stat[0]
        try:
            comm = Path(f"/proc/{pid}/comm").read_text().strip()
        except OSError:
            return None
        if comm in ("make", "gmake"):
            parent = _proc_stat(pid)
            return (pid, parent[1]) if parent else None
    return None


def stop(reason: str, code: int = 143) -> None:
    """Stop the launcher now, and every job it runs: SIGTERM (torchrun passes it on to its workers), then
    SIGKILL after STOP_GRACE_SECONDS; then the cleanups (`_on_stop`), each given a few seconds."""
    if not _stopping.acquire(blocking=False):  # already stopping (make gone and a SIGTERM, say)
        return
    with _print_lock:
        print(f"launch: {reason}; stopping {len(_running)} running job(s)", file=sys.stderr, flush=True)
    procs = list(_running)
    for proc in procs:
        try:
            proc.terminate()
        except OSError:
            pass
    deadline = time.time() + STOP_GRACE_SECONDS
    for proc in procs:
        try:
            proc.wait(timeout=max(0.0, deadline - time.time()))
        except subprocess.TimeoutExpired:
            proc.kill()
    for cleanup in _on_stop:
        thread = threading.Thread(target=cleanup, daemon=True)
        thread.start()
        thread.join(10)
    os._exit(code)


def stop_with_make(poll: float = 1.0) -> None:
    """The launcher lives no longer than the make that started it: killed make (SIGTERM or SIGKILL, which
    make does not pass on to its recipes), a killed recipe shell or a SIGTERM stop it and its jobs."""
    if sys.platform != "linux":
        return
    signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=stop, args=("SIGTERM",)).start())
    _die_with_parent(signal.SIGTERM)  # the recipe's shell (or whatever started it) gone: SIGTERM
    make = _make_ancestor()
    if make is None:
        return

    def watch() -> None:
        while True:
            time.sleep(poll)
            stat = _proc_stat(make[0])
            if stat is None or stat[1] != make[1]:
                stop(f"make (pid {make[0]}) is gone")

    threading.Thread(target=watch, daemon=True, name="watch-make").start()


def run_job(job: Job, cwd: str | Path, env: dict[str, str] | None = None, where: str = "cpu",
            echo: bool = True) -> tuple[int, float]:
    """Run one job to its end: output appended to its log and echoed with its name in front.
    -> (exit code, seconds)."""
    log = Path(cwd) / job.log
    log.parent.mkdir(parents=True, exist_ok=True)
    started = time.time()
    full_env = {**os.environ, **(env or {})}
    full_env.setdefault("TQDM_MININTERVAL", "30")  # jobs share one terminal: a bar line every 30 s at most
    full_env["PYTHONUNBUFFERED"] = "1"
    with open(log, "a", buffering=1) as out:
        out.write(f"# {time.strftime('%Y-%m-%d %H:%M:%S')} {job.name} on {socket.gethostname()} {where}, "
                  f"launched by pid {os.getpid()}: {' '.join(job.argv)}\n")
        try:
            proc = subprocess.Popen(job.argv, cwd=cwd, env=full_env, stdout=subprocess.PIPE,
                                    stderr=subprocess.STDOUT, text=True, errors="replace",
                                    preexec_fn=_die_with_parent if sys.platform == "linux" else None)
        except OSError as e:
            out.write(f"launch: cannot start {job.argv[0]}: {e}\n")
            return 127, time.time() - started
        _running.add(proc)
        try:
            for line in proc.stdout:
                out.write(line)
                if echo:
                    with _print_lock:
                        print(f"[{job.name} {where}] {line.rstrip()}", flush=True)
            code = proc.wait()
        finally:
            _running.discard(proc)
        out.write(f"# exit {code} after {time.time() - started:.0f}s\n")
    return code, time.time() - started


def job_span(log: Path) -> tuple[float, float] | None:
    """(start, end) in epoch seconds, whole seconds, of the job whose log this is, from the header and the
    `# exit 0 after Ns` line run_job writes; None when the log has not both."""
    lines = log.read_text().splitlines() if log.is_file() else []
    head = re.match(r"# (\d{4}-\d\d-\d\d \d\d:\d\d:\d\d) ", lines[0]) if lines else None
    tail = re.match(r"# exit 0 after (\d+)s$", lines[-1]) if lines else None
    if head is None or tail is None:
        return None
    start = time.mktime(time.strptime(head.group(1), "%Y-%m-%d %H:%M:%S"))
    return start, start + int(tail.group(1))


def run_local(jobs: list[Job], slots: list[tuple[str, ...]], cwd: str | Path = ".",
              on_start=None) -> list[Result]:
    """Run every job, one per free slot at a time, each pinned to its slot's GPUs with
    CUDA_VISIBLE_DEVICES. A job that ends (well or not) frees its slot for the next."""
    pending, free, done = deque(jobs), list(range(len(slots))), queue.Queue()
    running, results = 0, []

    def work(job: Job, index: int) -> None:
        slot = slots[index]
        env = {"CUDA_VISIBLE_DEVICES": ",".join(slot)} if slot else {}
        try:
            code, seconds = run_job(job, cwd, env, slot_name(slot))
        except Exception as e:  # noqa: BLE001 - a launcher bug must still free the slot and be reported
            code, seconds = 1, 0.0
            done.put((index, Result(job, slot_name(slot), code, seconds, error=repr(e))))
            return
        done.put((index, Result(job, slot_name(slot), code, seconds)))

    for job in jobs:  # a fresh log for each job of this launch; attempts append to it
        path = Path(cwd) / job.log
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("")
    while pending or running:
        while pending and free:
            index, job = free.pop(0), pending.popleft()
            if on_start:
                on_start(job, slots[index])
            threading.Thread(target=work, args=(job, index), daemon=True).start()
            running += 1
        index, result = done.get()
        running -= 1
        free.append(index)
        free.sort()
        result.score = target_score(str(Path(cwd) / result.job.target) if result.job.target else None)
        results.append(result)
    return results


# --- the closing summary ---------------------------------------------------------------------------------


def log_tail(path: str | Path, lines: int = TAIL_LINES) -> list[str]:
    try:
        text = Path(path).read_text(errors="replace").splitlines()
    except OSError:
        return [f"({path} cannot be read)"]
    return text[-lines:]


def summary(results: list[Result], what: str, cwd: str | Path = ".") -> str:
    """Every job with where it ran, how it ended and its score; then the log tail of each failure."""
    failed = [r for r in results if not r.ok]
    lines = [f"{what}: {len(results) - len(failed)} done, {len(failed)} failed"]
    width = max((len(r.job.name) for r in results), default=0)
    for r in sorted(results, key=lambda r: r.job.name):
        state = "done" if r.ok else (f"FAILED ({r.error})" if r.error else f"FAILED (exit {r.returncode})")
        extra = f"  {r.score}" if r.ok and r.score else ("" if r.ok else f"  log: {r.job.log}")
        retried = f"  ({r.attempts} attempts)" if r.attempts > 1 else ""
        lines.append(f"  {r.job.name:<{width}}  {r.where:<10} {state:<16} {r.seconds:7.0f}s{extra}{retried}")
    for r in failed:
        lines.append(f"--- {r.job.name}: last lines of {r.job.log} ---")
        lines += [f"  {line}" for line in log_tail(Path(cwd) / r.job.log)]
    if failed:
        names = " ".join(sorted({config_name(parse_target(r.job.target)[0]) for r in failed if r.job.target}))
        if names:
            lines.append(f"fix the cause, then `make train-all MODELS=\"{names}\"` trains only what is not done")
    return "\n".join(lines)
