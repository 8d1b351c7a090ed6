"""The jobs of a train-all on a Ray cluster (`make train-all CLUSTER=ray [RAY_ADDRESS=host:6379]`).

Each fold is one Ray task that runs the fold's `train` command (the one Make would run) in the project
folder, with its resource request (`JOB_GPUS`, fractional allowed, and `JOB_CPUS`). Ray pins the task's
GPUs through CUDA_VISIBLE_DEVICES and sets OMP_NUM_THREADS to its CPUs. The task's output goes to the
fold's log (runs/<model>/logs/fold<k>.log) and streams back to this terminal. A task whose worker or node
dies is retried (RETRIES, default 2) and the fold resumes from its last checkpoint; a fold that fails on
its own (its command exits non-zero) is not retried, and the summary shows its log.

Every node must see the project folder at the same path (shared storage, the same .venv): that is checked
first, by a marker file written here and read back by a task on every node. Before that, RAY_ADDRESS is
checked (its form, then a TCP connection to it): an address where no head answers fails in seconds, naming
it, where Ray itself would retry forever; connecting at all is bounded by CONNECT_SECONDS.
"""

from __future__ import annotations

import os
import re
import secrets
import socket
import sys
import threading
import time
from pathlib import Path

from pipeline.core.errors import ConfigError
from pipeline.launch.launch import Job, Result, run_job, target_score

CHECK_FILE = ".cluster-check"  # under runs/: written by the driver, read back on every node
CONNECT_SECONDS = 50  # the most ray.init may take to join a cluster at a given address
ADDRESS_FORMS = ("host:port of a Ray head (as `ray start --head` prints it, e.g. 10.0.0.5:6379), ray://host:port "
                 "(Ray Client), auto (the cluster already started on this machine), or empty (a local cluster "
                 "for this run)")
HEAD_HINT = "start one there with `ray start --head --port={port}` (and `ray start --address={host}:{port}` on each " \
            "other node), or leave RAY_ADDRESS empty for a local cluster"


def check_address(address: str | None) -> str | None:
    """RAY_ADDRESS (--address, else the environment variable) checked before Ray sees it: its form, and for
    host:port whether anything answers there. -> the address to give ray.init (None: a local cluster)."""
    from pipeline.core.tracking import tcp_error

    address = (address or os.environ.get("RAY_ADDRESS") or "").strip()
    if not address or address in ("auto", "local"):
        return address or None
    m = re.fullmatch(r"(ray://)?(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_.-]+):(\d{1,5})", address)
    if not m or not 0 < int(m.group(3)) < 65536:
        raise ConfigError(f"RAY_ADDRESS={address}: expected {ADDRESS_FORMS}")
    host, port = m.group(2).strip("[]"), int(m.group(3))
    why = tcp_error(host, port)
    if why:
        raise ConfigError(f"CLUSTER=ray: no Ray head answers at RAY_ADDRESS={address} ({why}); "
                          + HEAD_HINT.format(host=host, port=port))
    return address


def connect(ray, address: str | None) -> None:
    """ray.init, bounded at a given address: a head that accepts the connection but never answers as Ray
    (another service on that port) ends the launch with an error line, not a wait forever."""
    def give_up():
        print(f"error: CLUSTER=ray: no Ray cluster answered at RAY_ADDRESS={address} within {CONNECT_SECONDS} s; "
              "is a Ray head (`ray start --head`) running there, of the same Ray version?", file=sys.stderr, flush=True)
        os._exit(2)

    timer = threading.Timer(CONNECT_SECONDS, give_up) if address and address != "local" else None
    if timer:
        timer.daemon = True
        timer.start()
    try:
        ray.init(address=address, log_to_driver=True, logging_level="WARNING")
    except ConnectionError as e:  # `auto` with no cluster on this machine, a head that went away
        raise ConfigError(f"CLUSTER=ray: cannot join a Ray cluster at RAY_ADDRESS={address}: {e} "
                          "(`ray start --head` starts one; empty RAY_ADDRESS: a local cluster for this run)") from None
    finally:
        if timer:
            timer.cancel()


def import_ray():
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")  # read at import: every fold's lines, not "[repeated 3x ...]"
    try:
        import ray
    except ImportError:
        raise ConfigError("CLUSTER=ray: Ray is not installed; `make install` installs it "
                          "(or pip install 'ray[default]' into .venv)") from None
    return ray


def _read_marker(path: str, python: str) -> dict:
    """On one node: can it read the driver's marker, and run the project's Python?"""
    try:
        text = Path(path).read_text()
    except OSError as e:
        text = f"unreadable: {e.strerror}"
    return {"host": socket.gethostname(), "marker": text, "python": os.path.exists(python)}


def check_shared_storage(ray, runs: Path, python: str, timeout: float = 120) -> list[str]:
    """Write a marker under runs/ and read it back from a task on every alive node. -> the node names."""
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    token = secrets.token_hex(8)
    marker = runs / CHECK_FILE
    runs.mkdir(parents=True, exist_ok=True)
    marker.write_text(token)
    try:
        nodes = [n for n in ray.nodes() if n.get("Alive")]
        task = ray.remote(_read_marker)
        refs = [task.options(num_cpus=0, scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False))
                .remote(str(marker.resolve()), python) for n in nodes]
        answers = ray.get(refs, timeout=timeout)
    finally:
        marker.unlink(missing_ok=True)
    problems = []
    for node, answer in zip(nodes, answers):
        name = f"{answer['host']} ({node.get('NodeManagerAddress')})"
        if answer["marker"] != token:
            problems.append(f"{name} does not see {marker.resolve()} ({answer['marker'][:60] or 'another file'})")
        elif not answer["python"]:
            problems.append(f"{name} has no {python}")
    if problems:
        raise ConfigError("CLUSTER=ray: every node must see the project folder at the same path, with its .venv "
                          "(shared storage; see README 'Scaling out'): " + "; ".join(problems))
    return [a["host"] for a in answers]


def _fold_task(job: Job, cwd: str) -> dict:
    """One fold on a Ray worker: its command to its end. A lost worker is Ray's to retry."""
    gpus = os.environ.get("CUDA_VISIBLE_DEVICES", "")
    code, seconds = run_job(job, cwd, {"CUDA_VISIBLE_DEVICES": gpus}, f"gpu{gpus}" if gpus else "cpu")
    return {"where": f"{socket.gethostname()} " + (f"gpu{gpus}" if gpus else "cpu"), "returncode": code,
            "seconds": seconds}


def default_resources(ray, nproc: int) -> tuple[float, float]:
    """(GPUs, CPUs) a fold asks for when JOB_GPUS / JOB_CPUS are not given: NPROC GPUs and the CPUs that
    come with them on a GPU cluster; on a CPU cluster, every CPU of the smallest node."""
    nodes = [n["Resources"] for n in ray.nodes() if n.get("Alive") and n["Resources"].get("CPU", 0) > 0]
    if not nodes:
        raise ConfigError("CLUSTER=ray: the cluster has no node with CPUs")
    gpu_nodes = [r for r in nodes if r.get("GPU", 0) > 0]
    if gpu_nodes:
        per_gpu = min(r["CPU"] / r["GPU"] for r in gpu_nodes)
        return float(nproc), max(1.0, float(int(per_gpu * nproc)))
    return 0.0, float(min(r["CPU"] for r in nodes))


def attempts(log: Path, since: float) -> int:
    """How many times the fold was started in this launch (a header line per start)."""
    try:
        return max(1, sum(1 for line in log.read_text(errors="replace").splitlines() if line.startswith("# ")
                          and " launched by pid " in line))
    except OSError:
        return 1


def run_ray(jobs: list[Job], cwd: str | Path, address: str | None = None, gpus: float | None = None,
            cpus: float | None = None, nproc: int = 1, retries: int = 2) -> list[Result]:
    """Every job as a Ray task; results as they finish, with their score and how many attempts they took."""
    address = check_address(address)
    ray = import_ray()
    cwd = Path(cwd).resolve()
    connect(ray, address)
    from pipeline.launch.launch import _on_stop

    _on_stop.append(ray.shutdown)  # the launcher stopped (make killed): end this driver's tasks
    try:
        hosts = check_shared_storage(ray, cwd / "runs", sys.executable)
        dgpus, dcpus = default_resources(ray, nproc)
        gpus = dgpus if gpus is None else gpus
        cpus = dcpus if cpus is None else cpus
        resources = ray.cluster_resources()
        if gpus > resources.get("GPU", 0) or cpus > resources.get("CPU", 0):
            raise ConfigError(f"CLUSTER=ray: a fold asks for {gpus:g} GPU(s) and {cpus:g} CPU(s); the cluster has "
                              f"{resources.get('GPU', 0):g} and {resources.get('CPU', 0):g} (JOB_GPUS=, JOB_CPUS=)")
        print(f"launch: {len(jobs)} fold(s) on a Ray cluster of {len(hosts)} node(s) ({', '.join(sorted(set(hosts)))}); "
              f"each asks for {gpus:g} GPU(s) and {cpus:g} CPU(s), retried {retries} time(s) if its worker dies",
              flush=True)
        task = ray.remote(_fold_task).options(num_gpus=gpus, num_cpus=cpus, max_retries=retries,
                                              retry_exceptions=False)
        started = time.time()
        for job in jobs:
            (cwd / job.log).parent.mkdir(parents=True, exist_ok=True)
            (cwd / job.log).write_text("")
        refs = {task.remote(job, str(cwd)): job for job in jobs}
        results = []
        while refs:
            ready, _ = ray.wait(list(refs), num_returns=1)
            job = refs.pop(ready[0])
            try:
                out = ray.get(ready[0])
                result = Result(job, out["where"], out["returncode"], out["seconds"])
            except ray.exceptions.RayError as e:  # retries spent: the worker or node kept dying
                result = Result(job, "ray", 1, time.time() - started, error=type(e).__name__)
            result.attempts = attempts(cwd / job.log, started)
            result.score = target_score(str(cwd / job.target)) if job.target else None
            results.append(result)
        return results
    finally:
        ray.shutdown()
