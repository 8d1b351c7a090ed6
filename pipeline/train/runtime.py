"""What a training process carries besides the model: its random state (saved in last.pt, so a resumed run
draws what an unbroken one would) and its place in a torchrun job (rank, world, gathering predictions)."""

from __future__ import annotations

import os
import random

import numpy as np
import torch

from pipeline.nn.infer import device

# --- RNG state that survives weights_only loading -----------------------------------------------


def rng_state() -> dict:
    np_state = np.random.get_state()
    py_version, py_state, py_gauss = random.getstate()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": (np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *map(float, np_state[2:])),
        "python": (py_version, list(py_state), py_gauss),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), int(pos), int(has_gauss), float(cached)))
    version, py_state, gauss = state["python"]
    random.setstate((version, tuple(py_state), gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


# --- distributed --------------------------------------------------------------------------------


def dist_info() -> tuple[int, int, int]:
    """(rank, local_rank, world_size), from torchrun's environment."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    return int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0")), world


def init_distributed(world: int, local_rank: int) -> torch.device:
    dev = device()
    if world > 1:
        import torch.distributed as dist

        if dev.type == "cuda":
            torch.cuda.set_device(local_rank)
            dev = torch.device("cuda", local_rank)
        if not dist.is_initialized():
            dist.init_process_group(backend="nccl" if dev.type == "cuda" else "gloo")
    return dev


def gather_rows(local: np.ndarray, world: int) -> np.ndarray:
    """Merge per-rank predictions where rank r predicted rows r, r + world, r + 2 world, ..."""
    if world == 1:
        return local
    import torch.distributed as dist

    parts: list = [None] * world
    dist.all_gather_object(parts, local)
    out = parts[0].copy()
    for r in range(1, world):
        out[r::world] = parts[r][r::world]
    return out


def barrier(world: int) -> None:
    """Every rank waits here (a single process does not)."""
    if world > 1:
        import torch.distributed as dist

        dist.barrier()
