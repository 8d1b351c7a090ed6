"""The runtime planner: every model and TTA view timed here on real test images, through the kernel's own
inference path, scaled to the hidden test size and the GPU factor; what to drop when the estimate passes the
competition's `time_limit_hours`."""

from __future__ import annotations

from pathlib import Path

from pipeline.kaggle.kernel import load_models

KERNEL_OVERHEAD_S = 120.0  # start-up, pip install, reading the sample: a rough constant


def time_views(bundle: Path, entry: dict, paths: list[Path], sample: int = 64) -> dict[str, float]:
    """Images per second of one fold model for every TTA view, measured on this machine (CPU or GPU) through
    the kernel's own path on up to `sample` real test images: decode, resize, normalise, the model."""
    from pipeline.nn.infer import device
    from pipeline.nn.loader import evenly_spaced

    dev = device()
    picks = evenly_spaced(paths, sample)
    pm = load_models(bundle, {**entry, "weights": entry["weights"][:1]}, dev, picks, None)  # metadata: blank
    pm.logits(pm.views[:1], dev)  # warm-up: allocator, first-call overheads, file cache
    return {view: len(picks) / max(pm.logits([view], dev)[1], 1e-9) for view in pm.views}


def plan_runtime(speeds: dict[str, dict[str, float]], folds: dict[str, int], n_test: int, limit_s: float,
                 gpu_factor: float = 1.0, overhead_s: float = KERNEL_OVERHEAD_S) -> dict:
    """Estimated kernel seconds, and what to drop (views, then folds, then models) to fit the limit."""
    cost = {m: {v: n_test / (ips * gpu_factor) for v, ips in views.items()} for m, views in speeds.items()}
    n_folds = dict(folds)
    views = {m: list(v) for m, v in cost.items()}

    def total():
        return overhead_s + sum(n_folds[m] * sum(cost[m][v] for v in views[m]) for m in views)

    estimate = total()
    proposals = []
    while total() > limit_s:
        with_views = [m for m in views if len(views[m]) > 1]
        if with_views:
            m = max(with_views, key=lambda m: n_folds[m] * cost[m][views[m][-1]])
            proposals.append(f"drop TTA view {views[m].pop()} of {m}")
            continue
        with_folds = [m for m in views if n_folds[m] > 1]
        if with_folds:
            m = max(with_folds, key=lambda m: sum(cost[m][v] for v in views[m]))
            n_folds[m] -= 1
            proposals.append(f"use one fold fewer of {m} ({n_folds[m]} left)")
            continue
        if len(views) > 1:
            m = max(views, key=lambda m: sum(cost[m][v] for v in views[m]))
            del views[m]
            proposals.append(f"drop model {m} (then re-run `make ensemble` without it)")
            continue
        proposals.append("even one fold of one model with one view does not fit: use a smaller model or image size")
        break
    return {"n_test": n_test, "gpu_factor": gpu_factor, "limit_s": limit_s, "overhead_s": overhead_s,
            "images_per_s": speeds, "seconds_per_model": {
                m: round(folds[m] * sum(c.values()), 3) for m, c in cost.items()},
            "estimate_s": round(estimate, 3), "fits": estimate <= limit_s, "proposals": proposals,
            "estimate_after_s": round(total(), 3)}


def print_plan(plan: dict, limit_hours: float) -> None:
    """The estimate against the limit, with what to drop when it may not fit."""
    limit_s = plan["limit_s"]
    print(f"runtime plan: {plan['n_test']} test images, gpu factor {plan['gpu_factor']:g}: about "
          f"{plan['estimate_s']:.0f}s of the {limit_s:.0f}s limit ({limit_hours:g} h)")
    if not plan["fits"]:
        print(f"warning: the kernel may pass the competition's time limit ({plan['estimate_s']:.0f}s > {limit_s:.0f}s); "
              "the kernel drops TTA views when its clock runs short. Proposed:")
        for p in plan["proposals"]:
            print(f"  - {p}")
        print(f"  -> about {plan['estimate_after_s']:.0f}s")
