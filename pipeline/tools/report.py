"""`report`: what the trained models did -> submissions/report/ (index.md + PNG plots + CSV tables).

Reads only what earlier stages wrote: submissions/cv.json (leaderboard), runs/<model>/fold<k>/log.csv
(training curves), submissions/blend.oof.parquet (the chosen blend's out-of-fold probabilities; when an
older ensemble did not write it, the mean of the stacking/ OOF tables stands in and the report says
so), submissions/blend.test.parquet (its test predictions: their class shares against the training
shares, pipeline.tools.classchecks), folds/folds.csv and the best single model's checkpoints (Grad-CAM on
its worst mistakes). ROC and PR curves: pipeline.tools.classchecks.

Fold models are loaded and read images through pipeline.nn.infer, as `predict` does.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.core.config import Competition
from pipeline.core.data import class_names, encode_targets, read_train
from pipeline.core.errors import DataError
from pipeline.tools.classchecks import blend_table, plot_roc_pr, roc_pr_section, shares_section  # noqa: F401 (tests use plot_roc_pr)
from pipeline.tools.figures import md_table, pyplot, save_fig  # noqa: F401 (eda, lr_find, show_batch import them here)
from pipeline.tools.htmlreport import write_html
from pipeline.core.io import write_csv, write_text


def integer_ticks(axis) -> None:
    """Whole-number ticks on an axis of counts or epochs (no epoch 1.5)."""
    from matplotlib.ticker import MaxNLocator

    axis.set_major_locator(MaxNLocator(integer=True))


def show_image(ax, img: np.ndarray, **kwargs):
    """An image at its own aspect (square pixels, never stretched to the axes), without axis ticks."""
    im = ax.imshow(img, cmap=kwargs.pop("cmap", "gray" if img.ndim == 2 else None), aspect="equal",
                   interpolation=kwargs.pop("interpolation", "nearest" if max(img.shape[:2]) < 128 else "antialiased"),
                   **kwargs)
    ax.set_xticks([])
    ax.set_yticks([])
    for spine in ax.spines.values():
        spine.set_visible(False)
    return im


def tile_size(aspects: list[float], width: float = 2.4, title_lines: int = 3) -> tuple[float, float]:
    """(width, height) in inches of one grid tile for images of these aspects (w/h): the median aspect,
    kept between 1:3 and 3:1, plus room for a title of `title_lines` small lines."""
    aspect = float(np.clip(np.median(aspects), 1 / 3, 3)) if len(aspects) else 1.0
    return width, width / aspect + 0.15 * title_lines + 0.1


# --- leaderboard ------------------------------------------------------------------------------------


def leaderboard(cv: dict) -> pd.DataFrame:
    """Every model and blend of cv.json, best CV first; rows without a score (failed blends) last."""
    rows = []
    for kind, entries in (("model", cv.get("models", {})), ("blend", cv.get("blends", {}))):
        for name, e in entries.items():
            rows.append({"name": name, "kind": kind + (" (nested CV)" if e.get("nested") else ""),
                         "cv": np.nan if e.get("cv") is None else float(e["cv"]),
                         "test": np.nan if e.get("test") is None else float(e["test"]),
                         "chosen": "yes" if name == cv.get("chosen") and kind == "blend" else "",
                         "note": e.get("error", "")})
    df = pd.DataFrame(rows, columns=["name", "kind", "cv", "test", "chosen", "note"])
    df = df.sort_values("cv", ascending=not cv.get("greater_is_better", True), na_position="last", kind="stable")
    if df["test"].isna().all():
        df = df.drop(columns="test")
    return df.reset_index(drop=True)


# --- training curves --------------------------------------------------------------------------------


def fold_logs(runs: Path, model: str) -> dict[str, pd.DataFrame]:
    """fold name -> its log.csv, in fold order."""
    paths = sorted((runs / model).glob("fold*/log.csv"), key=lambda p: int(p.parent.name.removeprefix("fold") or 0))
    return {p.parent.name: pd.read_csv(p) for p in paths}


def curves_figure(logs: dict[str, pd.DataFrame], model: str, metric: str, task: str = "multiclass"):
    """Loss, metric and learning rate per epoch, one colour per fold (train solid, validation dashed);
    a dotted vertical line where a new stage starts. Returns the figure (3 axes)."""
    plt = pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    val_loss = "RMSE" if task == "regression" else "log loss"
    for i, (fold, log) in enumerate(logs.items()):
        color = f"C{i % 10}"
        axes[0].plot(log["epoch"], log["train_loss"], "o-", color=color, label=f"{fold} train")
        axes[0].plot(log["epoch"], log["val_loss"], "s--", color=color, label=f"{fold} val")
        if metric in log.columns:
            axes[1].plot(log["epoch"], log[metric], "o-", color=color, label=fold)
        axes[2].plot(log["epoch"], log["lr"], "o-", color=color, label=fold)
    first = next(iter(logs.values()), None)
    if first is not None and "stage" in first.columns and first["stage"].nunique() > 1:
        starts = first.loc[first["stage"].ne(first["stage"].shift()), "epoch"].iloc[1:]
        for ax in axes:
            for k, e in enumerate(starts):
                ax.axvline(e - 0.5, color="grey", ls=":", lw=1, label="new stage" if k == 0 else None)
    ylabels = (f"loss (train: training loss, val: {val_loss})", f"{metric} (validation)",
               "learning rate (end of epoch, log scale)")
    titles = ("loss", f"validation {metric}", "learning rate")
    for ax, title, ylabel in zip(axes, titles, ylabels):
        ax.set_title(f"{model}: {title}")
        ax.set_xlabel("epoch")
        ax.set_ylabel(ylabel)
        integer_ticks(ax.xaxis)
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    axes[2].set_yscale("log")
    return fig


def plot_curves(runs: Path, model: str, metric: str, out: Path, task: str = "multiclass") -> str | None:
    logs = fold_logs(runs, model)
    if not logs:
        return None
    return save_fig(curves_figure(logs, model, metric, task), out / f"curves_{model}.png")


# --- OOF analysis -------------------------------------------------------------------------------------


def blend_oof(comp: Competition, cv: dict, train_ids: list[str], classes: list[str], submissions: Path,
              stacking: Path) -> tuple[np.ndarray, str]:
    """(OOF probabilities in train_ids order, a sentence saying where they come from)."""
    p, source = blend_table(comp, cv, "oof", train_ids, classes, submissions, stacking)
    if p is None:
        raise DataError(f"{source.replace('`', '')}; run `make ensemble` first")
    return p, source


def confusion(task: str, y: np.ndarray, proba: np.ndarray, classes: list[str]) -> dict[str, pd.DataFrame]:
    """Single-label: one CxC matrix (rows true, columns predicted). Multilabel: a 2x2 matrix per label at 0.5."""
    from sklearn.metrics import confusion_matrix

    if task == "multilabel":
        pred = (proba >= 0.5).astype(int)
        return {c: pd.DataFrame(confusion_matrix(y[:, j].astype(int), pred[:, j], labels=[0, 1]),
                                index=["true 0", "true 1"], columns=["pred 0", "pred 1"])
                for j, c in enumerate(classes)}
    cm = confusion_matrix(y, proba.argmax(axis=1), labels=list(range(len(classes))))
    return {"all": pd.DataFrame(cm, index=classes, columns=classes)}


def per_class(task: str, y: np.ndarray, proba: np.ndarray, classes: list[str]) -> pd.DataFrame:
    from sklearn.metrics import precision_recall_fscore_support

    if task == "multilabel":
        yt, yp = y.astype(int), (proba >= 0.5).astype(int)
    else:
        yt, yp = y, proba.argmax(axis=1)
    labels = None if task == "multilabel" else list(range(len(classes)))
    p, r, f, s = precision_recall_fscore_support(yt, yp, labels=labels, zero_division=0)
    return pd.DataFrame({"class": classes, "precision": p, "recall": r, "f1": f, "support": s.astype(int)})


def confusion_figure(cms: dict[str, pd.DataFrame]):
    """Row-normalised colour (the share of each true class predicted as each column) with the counts
    written in the cells, and a colour bar for the share."""
    plt = pyplot()
    n = len(cms)
    cols = min(n, 4)
    rows = (n + cols - 1) // cols
    first = next(iter(cms.values()))
    size = max(4.0, 0.5 * len(first)) if n == 1 else 3.5
    fig, axes = plt.subplots(rows, cols, figsize=(size * cols + 1.0, size * rows), squeeze=False)
    fig.subplots_adjust(wspace=0.45)  # room for each panel's y label beside its left neighbour
    for ax in axes.flat[n:]:
        ax.axis("off")
    im = None
    for ax, (name, cm) in zip(axes.flat, cms.items()):
        values = cm.to_numpy()
        norm = values / np.maximum(values.sum(axis=1, keepdims=True), 1)
        im = ax.imshow(norm, cmap="Blues", vmin=0, vmax=1, aspect="equal")
        ax.set_xticks(range(len(cm.columns)), cm.columns, rotation=45, ha="right", fontsize=7)
        ax.set_yticks(range(len(cm.index)), cm.index, fontsize=7)
        if values.size <= 400:
            for i in range(values.shape[0]):
                for j in range(values.shape[1]):
                    ax.text(j, i, str(values[i, j]), ha="center", va="center", fontsize=7,
                            color="white" if norm[i, j] > 0.5 else "black")
        ax.set_title("confusion (row-normalised colour, counts)" if name == "all" else name, fontsize=9)
        ax.set_xlabel("predicted class" if name == "all" else f"predicted {name}")
        ax.set_ylabel("true class" if name == "all" else f"true {name}")
    fig.colorbar(im, ax=list(axes.flat[:n]), shrink=0.8, label="share of the true class's rows (row-normalised)")
    return fig


def plot_confusion(cms: dict[str, pd.DataFrame], out: Path) -> str:
    return save_fig(confusion_figure(cms), out / "confusion.png")


def row_loss(task: str, y: np.ndarray, proba: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(per-row log loss, per-row "is wrong") for the mistakes grid."""
    from pipeline.core.metrics import row_logloss

    if task == "multilabel":
        wrong = ((proba >= 0.5) != (y >= 0.5)).any(axis=1)
    else:
        wrong = proba.argmax(axis=1) != y
    return row_logloss(task, y, proba), wrong


def label_text(task: str, row: np.ndarray, classes: list[str], is_proba: bool) -> str:
    if task == "multilabel":
        on = [c for c, v in zip(classes, row) if v >= 0.5]
        return "+".join(on) or "-"
    return classes[int(row.argmax())] if is_proba else classes[int(row)]


def worst_mistakes(task: str, ids: list[str], y: np.ndarray, proba: np.ndarray, classes: list[str],
                   n: int) -> pd.DataFrame:
    loss, wrong = row_loss(task, y, proba)
    order = [i for i in np.argsort(-loss, kind="stable") if wrong[i]][:n]
    return pd.DataFrame({
        "row": order,
        "id": [ids[i] for i in order],
        "true": [label_text(task, y[i], classes, False if task != "multilabel" else True) for i in order],
        "predicted": [label_text(task, proba[i], classes, True) for i in order],
        "p_predicted": [float(proba[i].max()) for i in order],
        "loss": [float(loss[i]) for i in order],
    })


def plot_mistakes(comp: Competition, mistakes: pd.DataFrame, out: Path, short_side: int = 320) -> str | None:
    """The worst mistakes as read from disk (shorter side reduced to `short_side` for the picture), each at
    its own aspect, in tiles shaped like the median image."""
    from pipeline.core.images import BadImage, read_image

    if mistakes.empty:
        return None
    plt = pyplot()
    images: list[np.ndarray | None] = []
    for m in mistakes.itertuples():
        try:
            images.append(read_image(comp.image_path("train", m.id), 3, short_side))
        except BadImage:
            images.append(None)
    n = len(mistakes)
    cols = min(n, 6)
    rows = (n + cols - 1) // cols
    tw, th = tile_size([im.shape[1] / im.shape[0] for im in images if im is not None])
    fig, axes = plt.subplots(rows, cols, figsize=(tw * cols, th * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, m, img in zip(axes.flat, mistakes.itertuples(), images):
        if img is None:
            ax.text(0.5, 0.5, "unreadable", ha="center")
        else:
            ax.axis("on")
            show_image(ax, img)
        ax.set_title(f"{m.id}\ntrue {m.true} / pred {m.predicted}\np={m.p_predicted:.2f}", fontsize=7)
    fig.suptitle("worst OOF mistakes (highest loss first; p = predicted probability of the predicted class)",
                 fontsize=9)
    return save_fig(fig, out / "mistakes.png")


# --- Grad-CAM -----------------------------------------------------------------------------------------


def grad_cam(model, x, class_index: int | None = None, meta=None) -> tuple[np.ndarray, int]:
    """Grad-CAM on the last feature map (timm's forward_features -> forward_head, with the image's coded
    metadata for a meta_head model); (HxW map in [0, 1], class)."""
    import torch
    import torch.nn.functional as F

    model.eval()
    x = x.detach().clone()
    with torch.enable_grad():
        feats = model.forward_features(x)
        if feats.ndim != 4:
            raise ValueError(f"Grad-CAM needs a convolutional feature map (N, C, H, W), got shape {tuple(feats.shape)}")
        feats.retain_grad()
        logits = model.forward_head(feats) if meta is None else model.head_with_meta(feats, meta)
        c = int(logits[0].argmax()) if class_index is None else int(class_index)
        model.zero_grad(set_to_none=True)
        logits[0, c].backward()
    weights = feats.grad.mean(dim=(2, 3), keepdim=True)
    cam = F.relu((weights * feats).sum(dim=1, keepdim=True))
    cam = F.interpolate(cam, size=x.shape[-2:], mode="bilinear", align_corners=False)[0, 0].detach()
    cam = cam - cam.min()
    cam = cam / cam.max() if float(cam.max()) > 0 else cam
    return cam.cpu().numpy(), c


def picked_meta(comp: Competition, encoding: dict | None, picked: pd.DataFrame) -> dict | None:
    """A meta_head model's coded metadata of the picked train.csv rows, {id: tensor (columns,)}, from one read
    of train.csv; None for other models."""
    if encoding is None:
        return None
    import torch

    from pipeline.core.meta import coded_meta

    coded = torch.as_tensor(coded_meta(comp, encoding, picked["id"].tolist(), [])[0])
    return dict(zip(picked["id"], coded))


def best_model(cv: dict, runs: Path) -> str | None:
    """The single model with the best CV that has trained checkpoints under runs/."""
    better = cv.get("greater_is_better", True)
    scored = [(e["cv"], m) for m, e in cv.get("models", {}).items()
              if e.get("cv") is not None and any((runs / m).glob("fold*/best.pt"))]
    if not scored:
        return None
    return sorted(scored, key=lambda t: -t[0] if better else t[0])[0][1]


def plot_grad_cam(comp: Competition, model_name: str, runs: Path, folds: dict[str, int], mistakes: pd.DataFrame,
                  classes: list[str], out: Path, n: int) -> tuple[str | None, str]:
    """Image + heatmap of the predicted class for the first n mistakes, each by the fold model that held it out."""
    import torch

    from pipeline.nn.infer import EvalSpec, load_fold_model
    from pipeline.nn.loader import read_preprocessed
    from pipeline.nn.preprocess import Preprocess

    picked = mistakes.head(n)
    if picked.empty:
        return None, "no mistakes to explain"
    cache: dict[int, tuple] = {}
    panels = []  # (mistake, fold, the model's input as an image, cam, class)
    dev = torch.device("cpu")
    for m in picked.itertuples():
        k = folds[m.id]
        run = runs / model_name / f"fold{k}"
        if k not in cache:
            if not (run / "best.pt").is_file():
                return None, f"{run / 'best.pt'} not found"
            model, cfg, ckpt = load_fold_model(run, "best", dev)
            spec = EvalSpec.of(cfg, ckpt["data_config"])  # the evaluation geometry and read size
            cache[k] = (model.float().to(memory_format=torch.contiguous_format), cfg, spec.transform(),
                        spec.data_config.get("read_side"), spec.data_config.get("resize", cfg.resize),
                        Preprocess(spec.data_config.get("preprocess")), picked_meta(comp, ckpt.get("meta"), picked))
        model, cfg, tf, read_side, resize, preprocess, metas = cache[k]
        img = read_preprocessed(comp.image_path("train", m.id), cfg.in_chans, read_side, preprocess)
        x = tf(image=img)["image"].unsqueeze(0)
        try:
            cam, c = grad_cam(model, x, meta=None if metas is None else metas[m.id][None])
        except (ValueError, AttributeError, TypeError) as e:
            return None, f"Grad-CAM not available for {model_name}: {e}"
        shown = x[0].numpy()  # grad_cam works on its own copy
        shown = (shown - shown.min()) / max(float(shown.max() - shown.min()), 1e-8)
        shown = shown[0] if shown.shape[0] == 1 else shown.transpose(1, 2, 0)
        panels.append((m, k, shown, cam, c))
    fig = grad_cam_figure(panels, classes, model_name, resize)
    return save_fig(fig, out / "gradcam.png"), f"model `{model_name}` (best single-model CV), each image by its own fold's best checkpoint"


def grad_cam_figure(panels: list[tuple], classes: list[str], model_name: str, resize: str):
    """Top row: each image as the model saw it (its evaluation input: size, `resize`, then min-max scaled
    for display); bottom row: the same input with the Grad-CAM heatmap of the predicted class over it,
    and a colour bar for the heatmap's scale. `panels`: (mistake row, fold, HxW[x3] image in [0, 1],
    HxW map in [0, 1], class index)."""
    plt = pyplot()
    h, w = panels[0][2].shape[:2]
    tw, th = tile_size([w / h], width=2.4, title_lines=2)
    fig, axes = plt.subplots(2, len(panels), figsize=(tw * len(panels) + 1.2, 2 * th + 0.5), squeeze=False)
    heat = None
    for j, (m, k, shown, cam, c) in enumerate(panels):
        show_image(axes[0, j], shown)
        axes[0, j].set_title(f"{m.id}\ntrue {m.true}", fontsize=7)
        show_image(axes[1, j], shown)
        heat = axes[1, j].imshow(cam, cmap="jet", alpha=0.45, vmin=0, vmax=1, aspect="equal", interpolation="bilinear")
        axes[1, j].set_title(f"Grad-CAM: {classes[c]}\n(fold {k})", fontsize=7)
    axes[0, 0].set_ylabel("model input", fontsize=8)
    axes[1, 0].set_ylabel("+ heatmap", fontsize=8)
    fig.colorbar(heat, ax=list(axes[1, :]), shrink=0.9, label="Grad-CAM weight\n(0 none .. 1 strongest)")
    fig.suptitle(f"{model_name}: what the model looked at for its predicted class "
                 f"(input {h}x{w} px, height x width, resize {resize})", fontsize=9)
    return fig


# --- the stage ------------------------------------------------------------------------------------------


def regression_section(ids: list[str], y: np.ndarray, pred: np.ndarray, targets: list[str], out: Path,
                       n_worst: int) -> list[str]:
    """Regression: error per target column, and the rows predicted worst (`worst.csv`)."""
    y, pred = np.asarray(y, dtype=np.float64).reshape(len(ids), -1), np.asarray(pred, dtype=np.float64)
    err = pred - y
    stats = pd.DataFrame({"target": targets, "rmse": np.sqrt((err ** 2).mean(axis=0)), "mae": np.abs(err).mean(axis=0),
                          "bias": err.mean(axis=0), "target std": y.std(axis=0)})
    write_csv(out / "per_target.csv", stats)
    worst = np.argsort(-np.abs(err).max(axis=1))[:n_worst]
    table = pd.DataFrame({"id": [ids[i] for i in worst]})
    for j, t in enumerate(targets):
        table[f"{t} true"], table[f"{t} predicted"] = y[worst, j], pred[worst, j]
    write_csv(out / "worst.csv", table)
    return ["### Errors per target", "", md_table(stats), "", "`per_target.csv`; the rows predicted worst: "
            f"`worst.csv` ({len(table)} rows).", ""]


def classification_sections(comp, cv: dict, ids, y, proba, classes, out: Path, runs: Path, folds_path,
                            n_mistakes: int, n_cam: int) -> list[str]:
    """Confusion, per-class scores, ROC/PR, the worst mistakes and their Grad-CAM."""
    from pipeline.artifacts.folds import read_folds

    task, md = comp.task, []
    cms = confusion(task, y, proba, classes)
    if task == "multilabel":
        frames = [cm.assign(label=name).reset_index(names="true") for name, cm in cms.items()]
        write_csv(out / "confusion.csv", pd.concat(frames, ignore_index=True))
    else:
        write_csv(out / "confusion.csv", cms["all"].reset_index(names="true"))
    md += ["### Confusion matrix", "", "Rows are true classes, columns predicted"
           + (" (per label, threshold 0.5)" if task == "multilabel" else " (argmax)") + "; `confusion.csv`.", "",
           f"![confusion]({plot_confusion(cms, out)})", ""]
    pc = per_class(task, y, proba, classes)
    write_csv(out / "per_class.csv", pc)
    md += ["### Per-class precision, recall, F1", "", md_table(pc), "", "`per_class.csv`", ""]
    md += roc_pr_section(task, y, proba, classes, out)

    mistakes = worst_mistakes(task, ids, y, proba, classes, n_mistakes)
    write_csv(out / "mistakes.csv", mistakes)
    md += ["### Worst OOF mistakes", "", f"{len(mistakes)} wrong predictions with the highest loss; `mistakes.csv`.", ""]
    grid = plot_mistakes(comp, mistakes, out)
    if grid:
        md += [f"![mistakes]({grid})", ""]

    md += ["### Grad-CAM", ""]
    model_name = best_model(cv, runs)
    if model_name is None:
        md += ["No trained checkpoints of the models in cv.json under runs/; Grad-CAM skipped.", ""]
    else:
        folds = read_folds(folds_path, comp.id_col)
        fold_of = dict(zip(folds[comp.id_col].astype(str), folds["fold"].astype(int)))
        cam, note = plot_grad_cam(comp, model_name, runs, fold_of, mistakes, classes, out, n_cam)
        md += [f"Heatmaps of the predicted class; {note}.", ""] + ([f"![gradcam]({cam})", ""] if cam else [])

    return md


def make_report(comp: Competition, submissions: str | Path = "submissions", runs: str | Path = "runs",
                stacking: str | Path = "stacking", folds_path: str | Path = "folds/folds.csv",
                out: str | Path | None = None, n_mistakes: int = 24, n_cam: int = 6) -> Path:
    submissions, runs, stacking = Path(submissions), Path(runs), Path(stacking)
    out = Path(out) if out else submissions / "report"
    cv_path = submissions / "cv.json"
    if not cv_path.is_file():
        raise DataError(f"{cv_path} not found: run `make ensemble` first (the report reads its CV table)")
    cv = json.loads(cv_path.read_text())
    out.mkdir(parents=True, exist_ok=True)
    train = read_train(comp)
    classes = class_names(comp, train)
    ids = train[comp.id_col].astype(str).tolist()
    y = encode_targets(comp, train, classes)
    task, metric = comp.task, comp.metric
    md = ["# Report", "",
          f"{len(ids)} training rows, {len(classes)} classes, task {task}, metric {metric} "
          f"({'higher' if cv.get('greater_is_better', True) else 'lower'} is better). "
          f"Chosen blend: **{cv.get('chosen')}**.", ""]

    board = leaderboard(cv)
    write_csv(out / "leaderboard.csv", board)
    md += ["## CV leaderboard", "", md_table(board, "{:.5f}"), ""]

    md += ["## Training curves", ""]
    models = sorted(p.name for p in runs.iterdir() if p.is_dir()) if runs.is_dir() else []
    drawn = [(m, plot_curves(runs, m, metric, out, task)) for m in models]
    drawn = [(m, f) for m, f in drawn if f]
    md += [f"### {m}\n\n![{m}]({f})\n" for m, f in drawn] or ["No runs/<model>/fold<k>/log.csv found.", ""]

    proba, source = blend_oof(comp, cv, ids, classes, submissions, stacking)
    md += ["## Out-of-fold analysis", "", f"OOF probabilities: {source}.", ""]
    if task == "regression":
        md += regression_section(ids, y, proba, classes, out, n_mistakes)
    else:
        md += classification_sections(comp, cv, ids, y, proba, classes, out, runs, folds_path, n_mistakes, n_cam)
        md += shares_section(comp, cv, y, classes, submissions, stacking, out)

    index = out / "index.md"
    write_text(index, "\n".join(md))
    page = write_html(index)
    print(f"wrote {index} and {page.name} ({len(list(out.glob('*.png')))} plots); OOF from {source}")
    return index
