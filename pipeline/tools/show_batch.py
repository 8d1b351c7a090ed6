"""`show-batch`: what the model sees -> runs/<model>/show_batch/ train.png, eval.png, tta.png, grid.json.

Training rows, chosen by --seed, go through the model's own pipelines exactly as training and inference
run them: the read reduction (`read_side`), the `preprocess` steps, the training transform (augmentation
and geometry), the evaluation transform (at the last stage's size), and each TTA view on the normalised
tensor (an `aug:N` view: each of its N seeded draws of the training augmentation). Each image is then denormalised with the
model's mean and std back to 0..255 and drawn at the model's input size and aspect, titled with its label.
`batch_arrays` returns the uint8 arrays the PNGs are drawn from.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.core.config import Competition
from pipeline.core.data import class_names, encode_targets, read_train
from pipeline.core.io import write_json

TTA_IMAGES = 4  # images shown under every TTA view


@dataclass
class Batch:
    ids: list[str]
    labels: list[str]
    train: np.ndarray  # (n, H, W, C) uint8: the training transform's output, denormalised
    eval: np.ndarray  # (n, H, W, C) uint8: the evaluation transform's
    tta: dict[str, np.ndarray]  # view -> (k, H', W', C) uint8 for the first k images


def label_text(task: str, y, classes: list[str]) -> str:
    if task == "regression":
        return ", ".join(f"{v:.4g}" for v in np.atleast_1d(y))
    if task == "multilabel":
        return " ".join(c for c, on in zip(classes, y) if on) or "(no label)"
    return classes[int(y)]


def to_uint8(x, mean: list[float], std: list[float]) -> np.ndarray:
    """A normalised (C, H, W) tensor back to an (H, W, C) uint8 image."""
    arr = x.detach().cpu().numpy().astype(np.float64).transpose(1, 2, 0)
    arr = arr * np.asarray(std) + np.asarray(mean)
    return np.clip(np.rint(arr * 255.0), 0, 255).astype(np.uint8)


def batch_arrays(comp: Competition, cfg, n: int = 16, seed: int = 0) -> Batch:
    """The images of `n` training rows (a seeded choice) as the model receives them."""
    from pipeline.nn.augment import eval_transform, train_transform
    from pipeline.nn.loader import read_preprocessed
    from pipeline.nn.preprocess import Preprocess
    from pipeline.nn.models import build_model, data_config, eval_data_config, resolve_stages
    from pipeline.nn.infer import EvalSpec
    from pipeline.nn.tta import aug_draws, aug_seed, expand, get_view

    train = read_train(comp)
    classes = class_names(comp, train)
    y = encode_targets(comp, train, classes)
    rows = np.sort(np.random.default_rng(seed).choice(len(train), size=min(n, len(train)), replace=False))
    bare = build_model(cfg.model_copy(update={"pretrained": False, "meta_head": False}),  # for its defaults
                       num_classes=len(classes))
    first = resolve_stages(cfg, "config")[0]  # training starts with the first stage's size and augmentation
    d, d_eval = data_config(first, bare, whole=cfg), eval_data_config(cfg, bare)  # evaluation: the last stage's
    tf_train, tf_eval = train_transform(first.augment, d, cfg.in_chans), eval_transform(d_eval, cfg.in_chans)
    tf_train.set_random_seed(seed)
    ids = [str(train[comp.id_col].iloc[i]) for i in rows]
    preprocess = Preprocess(d.get("preprocess"))  # the model's domain preprocessing, as its datasets apply it
    images = [read_preprocessed(comp.image_path("train", i), cfg.in_chans, d.get("read_side"), preprocess)
              for i in ids]
    train_x = [tf_train(image=img)["image"] for img in images]
    eval_x = [tf_eval(image=img)["image"] for img in images]
    tta = {}
    drawn = EvalSpec.of(cfg, d_eval).augmentation()
    for view in expand(cfg.tta):
        if aug_draws(view) is None:
            fn = get_view(view)
            tta[view] = np.stack([to_uint8(fn(x[None])[0], d_eval["mean"], d_eval["std"]) for x in eval_x[:TTA_IMAGES]])
            continue
        for j in range(aug_draws(view)):  # each draw as inference makes it for the images in this order
            tiles = []
            for r, img in enumerate(images[:TTA_IMAGES]):
                drawn.set_random_seed(aug_seed(r, j))
                tiles.append(to_uint8(drawn(image=img)["image"], d_eval["mean"], d_eval["std"]))
            tta[f"{view} #{j + 1}"] = np.stack(tiles)
    return Batch(ids, [label_text(comp.task, y[i], classes) for i in rows],
                 np.stack([to_uint8(x, d["mean"], d["std"]) for x in train_x]),
                 np.stack([to_uint8(x, d_eval["mean"], d_eval["std"]) for x in eval_x]), tta)


def draw(tiles: list[np.ndarray], titles: list[str], cols: int, title: str, path: Path) -> dict:
    """A grid of tiles at their real aspect; -> its shape for grid.json."""
    from pipeline.tools.report import pyplot, save_fig

    plt = pyplot()
    rows = math.ceil(len(tiles) / cols)
    h, w = tiles[0].shape[:2]
    tile_w = 1.8
    height = rows * (tile_w * h / w + 0.4) + 0.5  # the tiles, their two-line titles, the figure's title
    fig, axes = plt.subplots(rows, cols, figsize=(cols * tile_w, height), squeeze=False)
    fig.subplots_adjust(top=1 - 0.5 / height, hspace=0.3)
    for ax in axes.ravel():
        ax.axis("off")
    for ax, tile, text in zip(axes.ravel(), tiles, titles):
        gray = tile.shape[-1] == 1
        ax.imshow(tile[..., 0] if gray else tile, cmap="gray" if gray else None, vmin=0, vmax=255, aspect="equal")
        ax.set_title(text, fontsize=7)
    fig.suptitle(title, fontsize=9)
    save_fig(fig, path)
    return {"rows": rows, "cols": cols, "tiles": len(tiles), "tile": [int(h), int(w)]}


def show_batch(comp: Competition, cfg, model_name: str, out: str | Path | None = None, n: int = 16,
               seed: int = 0, runs: str | Path = "runs") -> dict:
    """Write train.png, eval.png and tta.png (and grid.json, their shapes) for a model config."""
    out = Path(out) if out else Path(runs) / model_name / "show_batch"
    batch = batch_arrays(comp, cfg, n, seed)
    cols = min(8, len(batch.ids))
    size = "x".join(map(str, batch.train.shape[1:3]))
    where = f"{model_name}: {size} px (height x width)"
    grid = {
        "train": draw(list(batch.train), [f"{i}\n{t}" for i, t in zip(batch.ids, batch.labels)], cols,
                      f"{where}, training transform '{cfg.augment if isinstance(cfg.augment, str) else 'list'}'"
                      f" (seed {seed})", out / "train.png"),
        "eval": draw(list(batch.eval), [f"{i}\n{t}" for i, t in zip(batch.ids, batch.labels)], cols,
                     f"{model_name}: {'x'.join(map(str, batch.eval.shape[1:3]))} px (height x width), evaluation "
                     "transform (the last stage's size)", out / "eval.png"),
    }
    views = list(batch.tta)
    k = len(batch.tta[views[0]])
    tiles = [batch.tta[v][j] for j in range(k) for v in views]
    titles = [f"{batch.ids[j]}: {v}" for j in range(k) for v in views]
    grid["tta"] = draw(tiles, titles, len(views), f"{model_name}: TTA views {', '.join(views)}", out / "tta.png")
    write_json(out / "grid.json", {**grid, "ids": batch.ids, "labels": batch.labels, "seed": seed})
    for name in ("train", "eval", "tta"):
        print(f"wrote {out / (name + '.png')} ({grid[name]['rows']} x {grid[name]['cols']} tiles)")
    return grid
