"""Past one GPU and one machine, through Make: folds placed on GPU slots, a real local Ray cluster, and one
fold's DDP over two torchrun "nodes". All on CPU: the GPU placement is checked through its plan (each job
records the CUDA_VISIBLE_DEVICES it was given and when it ran)."""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pipeline.core.config import ConfigError
from pipeline.launch.launch import device_slots, resolve_gpus
from tests.conftest import REPO, TINY_MODEL, make_competition, write_yaml, read_table_file

MAKE = ["make", "--no-print-directory", "-f", str(REPO / "Makefile"), "COMPETITION=competition.yaml"]


def make(*args: str, cwd: Path, env: dict | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    """`make` in cwd; `env` on top of this environment (a value None removes that variable)."""
    full = {**os.environ, **(env or {})}
    return subprocess.run([*MAKE, *args], cwd=cwd, capture_output=True, text=True, timeout=timeout,
                          env={k: v for k, v in full.items() if v is not None})


TWO_GPUS = {"CUDA_VISIBLE_DEVICES": "0,1"}  # what GPUS=0,1 is checked against (the fake trainers use no GPU)


# --- one fold per GPU slot ---------------------------------------------------------------------------------

FAKE_TRAIN = '''
import os, sys, time
target = sys.argv[sys.argv.index("--target") + 1]
fold = int(target.split("/")[-2].removeprefix("fold"))
gpus = os.environ.get("CUDA_VISIBLE_DEVICES", "?")
def event(kind):
    with open("events.txt", "a") as f:
        f.write(f"{kind} {fold} {gpus} {time.time()}\\n")
event("start")
print(f"fold {fold} on {gpus}", flush=True)
if fold == 1:
    print("boom: out of memory (simulated)", flush=True)
    event("end")
    sys.exit(3)
time.sleep(1.5)
event("end")
'''


def placements(path: Path) -> dict[int, tuple[str, float, float]]:
    """fold -> (CUDA_VISIBLE_DEVICES, start, end) as the fake trainer recorded them."""
    rows = [line.split() for line in path.read_text().splitlines()]
    start = {int(f): (g, float(t)) for kind, f, g, t in rows if kind == "start"}
    end = {int(f): float(t) for kind, f, g, t in rows if kind == "end"}
    return {f: (g, s, end[f]) for f, (g, s) in start.items()}


def most_at_once(jobs: dict[int, tuple[str, float, float]]) -> dict[str, int]:
    """For each device, the most jobs that ran on it at the same time."""
    peak = {}
    for device in {g for g, _, _ in jobs.values()}:
        spans = [(s, e) for g, s, e in jobs.values() if g == device]
        peak[device] = max(sum(1 for s2, e2 in spans if s2 <= s < e2) for s, _ in spans)
    return peak


@pytest.fixture()
def four_folds(tmp_path):
    make_competition(tmp_path, n_train=40, n_folds=4, models_dir="models")
    write_yaml(tmp_path / "models" / "tiny.yaml", {**TINY_MODEL, "epochs": 1})
    (tmp_path / "fake_train.py").write_text(FAKE_TRAIN)
    return tmp_path


@pytest.mark.slow
def test_one_fold_per_gpu_and_a_failure_frees_its_gpu(four_folds):
    root = four_folds
    proc = make("train-all", "GPUS=0,1", f"TRAIN={sys.executable} fake_train.py", cwd=root, env=TWO_GPUS)
    assert proc.returncode != 0, "a failed fold must fail train-all"
    jobs = placements(root / "events.txt")
    assert sorted(jobs) == [0, 1, 2, 3]  # the failed fold stopped none of the others
    assert {g for g, _, _ in jobs.values()} == {"0", "1"}  # each job pinned to one GPU
    assert max(most_at_once(jobs).values()) == 1, jobs  # no GPU ever held two jobs
    # fold1 failed at once on its GPU; the next fold took that GPU while fold0 still ran on the other
    gpu1, _, failed_at = jobs[1]
    takers = [f for f, (g, s, _) in jobs.items() if g == gpu1 and f != 1]
    assert takers and min(jobs[f][1] for f in takers) >= failed_at
    assert min(jobs[f][1] for f in takers) < jobs[0][2]
    # the summary: every fold, the failed one with the last lines of its own log
    out = proc.stdout
    assert "train-all: 3 done, 1 failed" in out
    assert re.search(r"tiny fold1\s+gpu\d\s+FAILED \(exit 3\)", out), out
    assert "boom: out of memory (simulated)" in out.split("last lines of runs/tiny/logs/fold1.log")[1]
    assert 'make train-all MODELS="tiny"' in out
    for k in range(4):  # each job's output in its run folder
        assert f"fold {k} on" in (root / "runs" / "tiny" / "logs" / f"fold{k}.log").read_text()


@pytest.mark.slow
def test_jobs_per_gpu_packs_two_never_three(four_folds):
    root = four_folds
    (root / "fake_train.py").write_text(FAKE_TRAIN.replace("if fold == 1:", "if False:"))
    proc = make("train-all", "GPUS=0,1", "JOBS_PER_GPU=2", f"TRAIN={sys.executable} fake_train.py", cwd=root,
                env=TWO_GPUS)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    jobs = placements(root / "events.txt")
    assert sorted(jobs) == [0, 1, 2, 3]
    assert most_at_once(jobs) == {"0": 2, "1": 2}, jobs  # packed two per GPU, and never three


def test_device_slots_and_bad_gpus(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1,2")
    assert device_slots(["0", "1", "2", "3"], nproc=2) == [("0", "1"), ("2", "3")]
    assert device_slots(["0", "1"], jobs_per_gpu=2) == [("0",), ("0",), ("1",), ("1",)]
    assert device_slots([]) == [()]  # a CPU machine: one slot, as today
    assert resolve_gpus("none") == [] and resolve_gpus("2,0") == ["2", "0"]
    with pytest.raises(ConfigError, match="NPROC=4 needs 4 GPUs"):
        device_slots(["0", "1"], nproc=4)
    with pytest.raises(ConfigError, match="GPUS=0,x"):
        resolve_gpus("0,x")


@pytest.mark.slow
def test_bad_gpus_through_make_is_one_clear_line(four_folds):
    proc = make("train-all", "GPUS=0,x", cwd=four_folds)
    assert proc.returncode != 0 and "GPUS=0,x: expected comma-separated GPU indices" in proc.stderr
    assert not (four_folds / "runs" / "tiny" / "fold0").exists()


@pytest.mark.slow
def test_a_gpu_this_machine_lacks_is_one_line_naming_gpus(four_folds):
    """Was: a fold pinned to a missing GPU trained on the CPU while the summary said gpu3."""
    proc = make("train-all", "GPUS=3", cwd=four_folds, env=TWO_GPUS)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert ("error: GPUS=3: no GPU 3 on this machine; visible: 0,1 (CUDA_VISIBLE_DEVICES=0,1); GPUS takes those "
            "indices, `all` or `none`") in proc.stderr
    none = make("train-all", "GPUS=3", cwd=four_folds, env={"CUDA_VISIBLE_DEVICES": None, "PATH": "/usr/bin:/bin"})
    assert none.returncode != 0 and "error: GPUS=3: this machine has no visible GPU" in none.stderr, none.stderr
    assert "leave GPUS empty or give GPUS=none to train on the CPU" in none.stderr
    assert not (four_folds / "runs" / "tiny" / "fold0").exists()


@pytest.mark.parametrize("setting, message", [
    ("NPROC=0", "NPROC=0: expected a whole number of at least 1 (GPU processes per fold: torchrun's --nproc_per_node)"),
    ("NPROC=abc", "NPROC=abc: expected a whole number of at least 1"),
    ("NNODES=abc", "NNODES=abc: expected a whole number of at least 1 (machines one fold's DDP spans)"),
])
def test_a_bad_process_count_is_one_line_naming_the_variable(tmp_path, setting, message):
    """Was: torchrun's (or argparse's) traceback naming --nproc_per_node, not the Make variable."""
    proc = make("train", "MODEL=tiny", "FOLD=0", setting, cwd=tmp_path, timeout=60)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert message in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, proc.stderr


@pytest.mark.slow
def test_two_nodes_say_whom_they_wait_for_before_waiting(tmp_path):
    """Was: silence until torchrun's 10-minute rendezvous timeout."""
    rdzv = f"127.0.0.1:{free_port()}"  # nothing listens: node 1 waits for node 0 that never comes
    proc = make("train", "MODEL=tiny", "FOLD=0", "NNODES=2", "NODE_RANK=1", f"RDZV={rdzv}", "RDZV_TIMEOUT=3",
                cwd=tmp_path, timeout=120)
    note = (f"NNODES=2: this node (NODE_RANK=1) waits at the rendezvous RDZV={rdzv} (the node with NODE_RANK=0) for "
            "all 2 nodes to join, for up to RDZV_TIMEOUT=3 s; run the same command on every other node")
    assert note in proc.stdout, proc.stdout
    assert proc.stdout.index(note) < proc.stdout.index("torchrun --nnodes=2")  # said before it waits
    assert f"--rdzv_endpoint='{rdzv}' --rdzv_conf=timeout=3" in proc.stdout
    assert proc.returncode != 0  # and it gives up after RDZV_TIMEOUT


FAKE_LONG = '''
import os, sys, time
fold = sys.argv[sys.argv.index("--target") + 1].split("/")[-2]
open(f"pid-{fold}.tmp", "w").write(f"{os.getpid()} {os.getppid()}")
os.rename(f"pid-{fold}.tmp", f"pid-{fold}")
time.sleep(600)
'''


def alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.slow
def test_the_launcher_and_its_folds_die_with_make(four_folds):
    """Was: make killed, the launcher (and every fold it ran) trained on. Make does not pass a SIGTERM or
    SIGKILL on to its recipes: the launcher watches make."""
    root = four_folds
    (root / "fake_long.py").write_text(FAKE_LONG)
    out = open(root / "make.out", "w")
    proc = subprocess.Popen([*MAKE, "train-all", "GPUS=0,1", f"TRAIN={sys.executable} fake_long.py"], cwd=root,
                            stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                            env={**os.environ, **TWO_GPUS})
    try:
        deadline = time.time() + 180
        while len(list(root.glob("pid-fold?"))) < 2 and time.time() < deadline and proc.poll() is None:
            time.sleep(0.2)
        pids = [tuple(map(int, p.read_text().split())) for p in root.glob("pid-fold?")]
        assert len(pids) == 2, (root / "make.out").read_text()[-3000:]
        folds, launchers = {f for f, _ in pids}, {parent for _, parent in pids}
        assert len(launchers) == 1 and all(alive(p) for p in folds | launchers)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
        deadline = time.time() + 60  # the launcher polls make every second, its folds get 10 s to end
        while any(alive(p) for p in folds | launchers) and time.time() < deadline:
            time.sleep(0.2)
        assert not any(alive(p) for p in folds | launchers), "the launcher or a fold outlived make"
        out.close()
        assert "launch: make (pid" in (root / "make.out").read_text() and "is gone; stopping 2 running job(s)" \
            in (root / "make.out").read_text()
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


# --- a real local Ray cluster ----------------------------------------------------------------------------


def demo_sized(root: Path, epochs: int) -> Path:
    """The digits demo with a tiny model: 3 folds of about 1,000 training images each."""
    subprocess.run([sys.executable, "-m", "pipeline", "demo"], cwd=root, check=True, capture_output=True)
    comp = (REPO / "configs" / "competition.yaml").read_text()
    (root / "competition.yaml").write_text(comp.replace("models_dir: configs/models", "models_dir: models")
                                           .replace("n_folds: 5", "n_folds: 3"))
    write_yaml(root / "models" / "tiny.yaml", {**TINY_MODEL, "epochs": epochs, "batch_size": 64})
    return root


def oof_tables(root: Path) -> dict[int, pd.DataFrame]:
    return {k: read_table_file(root / "runs" / "tiny" / f"fold{k}" / "oof.parquet")
            for k in range(3)}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def ray_cluster():
    """`ray start --head --block` in a temporary folder, in its own process group; stopped after."""
    temp = Path(tempfile.mkdtemp(prefix="ray", dir="/tmp"))  # short: Ray's socket paths must fit 107 bytes
    log = open(temp / "head.log", "w")
    head = subprocess.Popen([str(Path(sys.executable).parent / "ray"), "start", "--head", "--block", "--port=0",
                             f"--temp-dir={temp}", "--num-cpus=2", "--num-gpus=0", "--include-dashboard=false",
                             "--disable-usage-stats", f"--ray-client-server-port={free_port()}"],
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True, cwd=temp)
    address, deadline = None, time.time() + 120
    while address is None and time.time() < deadline and head.poll() is None:
        time.sleep(0.5)
        found = re.search(r"ray start --address='([^']+)'", (temp / "head.log").read_text())
        address = found.group(1) if found else None
    if address is None:
        if head.poll() is None:
            os.killpg(head.pid, signal.SIGKILL)
        raise AssertionError("ray start failed:\n" + (temp / "head.log").read_text()[-3000:])
    yield address
    os.killpg(head.pid, signal.SIGTERM)
    try:  # `ray start --block` often ignores SIGTERM for longer than a test should wait
        head.wait(timeout=5)
    except subprocess.TimeoutExpired:
        os.killpg(head.pid, signal.SIGKILL)
        head.wait(timeout=30)
    log.close()
    shutil.rmtree(temp, ignore_errors=True)


@pytest.fixture(scope="module")
def plain_run(tmp_path_factory):
    """The reference: `make train-all` as on any CPU machine, with its wall time."""
    root = demo_sized(tmp_path_factory.mktemp("plain"), epochs=3)
    started = time.time()
    proc = make("train-all", cwd=root)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return root, time.time() - started


@pytest.mark.slow
def test_ray_cluster_trains_the_same_folds(ray_cluster, plain_run, tmp_path):
    plain, plain_s = plain_run
    root = demo_sized(tmp_path, epochs=3)
    started = time.time()
    proc = make("train-all", "CLUSTER=ray", f"RAY_ADDRESS={ray_cluster}", cwd=root)
    ray_s = time.time() - started
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    print(f"\nwall time on this machine: plain make train-all {plain_s:.1f}s, CLUSTER=ray {ray_s:.1f}s")
    assert "a Ray cluster of 1 node(s)" in proc.stdout
    assert "train-all: 3 done, 0 failed" in proc.stdout
    assert re.search(r"\[tiny fold2 cpu\] tiny fold2 epoch 3/3", proc.stdout)  # progress streams back
    ours, theirs = oof_tables(root), oof_tables(plain)
    for k in range(3):
        assert ours[k].equals(theirs[k]), f"fold{k}: OOF differs from the plain run"
    assert not (root / "runs" / ".cluster-check").exists()  # the storage marker is cleaned up
    # what is stale does not change: everything is done, nothing is sent to the cluster
    again = make("train-all", "CLUSTER=ray", f"RAY_ADDRESS={ray_cluster}", cwd=root)
    assert again.returncode == 0 and "3/3 folds done" in again.stderr and "launch:" not in again.stdout


@pytest.mark.slow
def test_ray_worker_killed_mid_fold_is_retried_and_resumes(ray_cluster, plain_run, tmp_path):
    plain, _ = plain_run
    root = demo_sized(tmp_path, epochs=3)
    cmd = [*MAKE, "train-all", "CLUSTER=ray", f"RAY_ADDRESS={ray_cluster}"]
    proc = subprocess.Popen(cmd, cwd=root, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    first = root / "runs" / "tiny" / ".fold0.partial" / "last.pt"
    log = root / "runs" / "tiny" / "logs" / "fold0.log"
    deadline = time.time() + 300
    while not first.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    worker = int(re.search(r"launched by pid (\d+)", log.read_text()).group(1))  # the Ray worker running fold0
    os.kill(worker, signal.SIGKILL)
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, out[-4000:]
    text = log.read_text()
    assert text.count("launched by pid") == 2, text  # retried once
    assert re.search(r"resuming after epoch [12] of 3", text), text  # from its checkpoint, not from scratch
    assert re.search(r"tiny fold0 .*done .*\(2 attempts\)", out), out[-2000:]
    assert oof_tables(root)[0].equals(oof_tables(plain)[0])  # as the unbroken run ended


def test_cluster_without_ray_says_how_to_install(four_folds, tmp_path):
    """A Python where `import ray` fails (a shadowing module on PYTHONPATH): one line naming the fix."""
    (tmp_path / "noray").mkdir()
    (tmp_path / "noray" / "ray.py").write_text("raise ImportError('no ray here')\n")
    proc = make("train-all", "CLUSTER=ray", cwd=four_folds, env={"PYTHONPATH": str(tmp_path / "noray")})
    assert proc.returncode != 0
    assert "Ray is not installed; `make install` installs it" in proc.stderr


@pytest.mark.parametrize("address, message", [
    ("garbage", "error: RAY_ADDRESS=garbage: expected host:port of a Ray head (as `ray start --head` prints it"),
    ("127.0.0.1:{port}", "error: CLUSTER=ray: no Ray head answers at RAY_ADDRESS=127.0.0.1:{port} "
                         "(ConnectionRefusedError: Connection refused); start one there with `ray start --head "
                         "--port={port}`"),
])
@pytest.mark.slow
def test_a_ray_address_where_no_head_answers_fails_naming_it(four_folds, address, message):
    """Was: a traceback (garbage), or ray.init retrying forever (nothing listening)."""
    port = free_port()
    proc = make("train-all", "CLUSTER=ray", f"RAY_ADDRESS={address.format(port=port)}", cwd=four_folds,
                timeout=180)  # `make folds` and `plan` included; the launcher itself answers in seconds
    assert proc.returncode != 0 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert message.format(port=port) in proc.stderr, proc.stderr[-3000:]
    assert not (four_folds / "runs" / "tiny" / "fold0" / "done.json").exists()


# --- multi-node DDP: two torchrun "nodes" on this machine ----------------------------------------------------

DDP_TOLERANCE = 1e-6  # largest difference allowed between OOF probabilities (gloo sums in the same order)


@pytest.mark.slow
def test_two_nodes_match_one_node_two_processes(tmp_path):
    make_competition(tmp_path, n_train=90, models_dir="models")
    write_yaml(tmp_path / "models" / "tiny.yaml", {**TINY_MODEL, "epochs": 2})
    assert make("folds", cwd=tmp_path).returncode == 0
    fold = ["MODEL=tiny", "FOLD=0", "NPROC=1", "NNODES=2", f"RDZV=127.0.0.1:{free_port()}"]
    node1 = subprocess.Popen([*MAKE, "train", *fold, "NODE_RANK=1"], cwd=tmp_path, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True)
    node0 = make("train", *fold, "NODE_RANK=0", cwd=tmp_path, timeout=300)
    out1, _ = node1.communicate(timeout=300)
    assert node0.returncode == 0 and node1.returncode == 0, node0.stdout[-2000:] + node0.stderr[-2000:] + out1[-2000:]
    assert f"--nnodes=2 --node_rank=0 --rdzv_endpoint='{fold[-1].split('=')[1]}'" in node0.stdout
    assert "epoch 2/2" in node0.stdout and "epoch 2/2" not in out1  # only global rank 0 reports
    two_nodes = read_table_file(tmp_path / "runs/tiny/fold0/oof.parquet")
    one_node = make("train", "MODEL=tiny", "FOLD=0", "NPROC=2", cwd=tmp_path, timeout=300)
    assert one_node.returncode == 0, one_node.stderr[-2000:]
    assert "--standalone" in one_node.stdout
    single = read_table_file(tmp_path / "runs/tiny/fold0/oof.parquet")
    assert list(single.image_id) == list(two_nodes.image_id)
    diff = np.abs(single.iloc[:, 1:].to_numpy() - two_nodes.iloc[:, 1:].to_numpy()).max()
    print(f"\nmulti-node vs single-node DDP: largest OOF difference {diff:.3g}")
    assert diff <= DDP_TOLERANCE


def test_multi_node_without_rendezvous_is_refused(tmp_path):
    proc = make("train", "MODEL=tiny", "FOLD=0", "NNODES=2", cwd=tmp_path)
    assert proc.returncode != 0 and "NNODES=2 needs RDZV=host:port" in proc.stderr


# --- predict, one model per GPU slot ---------------------------------------------------------------------


@pytest.mark.slow
def test_predict_spreads_models_over_gpus(tmp_path):
    make_competition(tmp_path, n_train=30, n_test=10, n_folds=2, models_dir="models")
    for name, lr in (("tiny", 0.01), ("tiny2", 0.02)):
        write_yaml(tmp_path / "models" / f"{name}.yaml", {**TINY_MODEL, "epochs": 1, "lr": lr})
    assert make("train-all", cwd=tmp_path).returncode == 0
    proc = make("predict", "GPUS=0,1", cwd=tmp_path, env=TWO_GPUS)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "predict: 2 models on 2 GPU slot(s)" in proc.stdout and "predict: 2 done, 0 failed" in proc.stdout
    logs = {m: (tmp_path / "runs" / m / "logs" / "predict.log").read_text() for m in ("tiny", "tiny2")}
    assert {re.search(r" (gpu\d), launched", text).group(1) for text in logs.values()} == {"gpu0", "gpu1"}
    spread = {p.name: p.read_bytes() for p in sorted((tmp_path / "stacking").glob("*.parquet"))}
    assert len(spread) == 4
    plain = subprocess.run([sys.executable, "-m", "pipeline", "predict", "-c", "competition.yaml", "--force"],
                           cwd=tmp_path, capture_output=True, text=True)
    assert plain.returncode == 0, plain.stderr
    assert {p.name: p.read_bytes() for p in sorted((tmp_path / "stacking").glob("*.parquet"))} == spread
