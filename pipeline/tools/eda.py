"""`eda`: a first look at a competition's data -> submissions/eda/ (index.md, eda.json, CSV tables, PNG plots).

Class distribution; image sizes and aspect ratios (min / median / max, the share of non-square images,
distinct sizes) with a recommended `img_size` and `resize`; channels and per-channel statistics; exact
duplicates (md5 of the files) within train, within test and across; near-duplicates (64-bit perceptual
hash, core/phash.py; train-test pairs first, the closest drawn side by side in near_duplicates.png); and a
train/test shift check by adversarial validation:
a LightGBM classifier (fixed seed, one thread, deterministic) tries to tell train images from test
images on simple per-image statistics, scored by cross-validated ROC AUC (0.5: no visible shift).
"""

from __future__ import annotations

import hashlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
from tqdm import tqdm

from pipeline.core.config import Competition
from pipeline.core.data import class_names, encode_targets, labels_as_text, read_sample, read_train
from pipeline.tools.htmlreport import write_html
from pipeline.core.io import write_csv, write_json, write_text
from pipeline.tools.report import integer_ticks, md_table, pyplot, save_fig

FEATURES = ["height", "width", "aspect", "channels", "bytes", "mean_0", "mean_1", "mean_2", "std_0", "std_1",
            "std_2", "min", "max", "sharpness", "entropy"]


def image_stats(path: Path) -> dict:
    """md5 of the file and simple statistics of the decoded image (NaN where it cannot be decoded)."""
    from pipeline.core.images import BadImage, decode_image, reduce_short_side
    from pipeline.core.phash import HASH_READ_SIDE, phash

    row: dict = {"md5": None, "readable": False, "phash": None}
    try:
        data = Path(path).read_bytes()
    except OSError:
        return row
    row["md5"], row["bytes"] = hashlib.md5(data).hexdigest(), len(data)
    try:
        img = decode_image(data, path)
    except BadImage:
        return row
    if img.ndim == 3 and img.shape[2] == 4:
        img = img[:, :, :3]  # alpha is not content
    if img.ndim == 3:
        img = cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
    if img.dtype != np.uint8:  # 16-bit and float images: scale to 0..255 for comparable statistics
        img = cv2.normalize(img.astype(np.float32), None, 0, 255, cv2.NORM_MINMAX).astype(np.uint8)
    h, w = img.shape[:2]
    chans = 1 if img.ndim == 2 else img.shape[2]
    planes = [img] * 3 if chans == 1 else [img[:, :, c] for c in range(3)]
    gray = img if chans == 1 else cv2.cvtColor(img, cv2.COLOR_RGB2GRAY)
    hist = np.bincount(gray.ravel(), minlength=256) / gray.size
    h64 = phash(reduce_short_side(gray, HASH_READ_SIDE))  # as `folds` hashes it, from a reduced image
    row["phash"] = None if h64 is None else f"{h64:016x}"
    row.update({
        "readable": True, "height": h, "width": w, "aspect": w / h, "channels": chans,
        **{f"mean_{c}": float(p.mean()) for c, p in enumerate(planes)},
        **{f"std_{c}": float(p.std()) for c, p in enumerate(planes)},
        "min": int(gray.min()), "max": int(gray.max()),
        "sharpness": float(cv2.Laplacian(gray, cv2.CV_64F).var()),
        "entropy": float(-(hist[hist > 0] * np.log2(hist[hist > 0])).sum()),
    })
    return row


def scan(comp: Competition, split: str, ids: list[str], threads: int = 4) -> pd.DataFrame:
    paths = [comp.image_path(split, i) for i in ids]
    with ThreadPoolExecutor(max_workers=threads) as pool:
        rows = list(tqdm(pool.map(image_stats, paths), total=len(paths), desc=f"{split} images", leave=False,
                         disable=None))
    df = pd.DataFrame(rows)
    df.insert(0, "split", split)
    df.insert(1, "id", ids)
    for c in FEATURES:
        if c not in df.columns:
            df[c] = np.nan
    return df


def duplicates(stats: pd.DataFrame) -> dict:
    """Exact duplicates by md5: extra copies within train and test, and test images also in train."""
    out = {}
    for split in ("train", "test"):
        md5 = stats.loc[stats.split == split, "md5"].dropna()
        counts = md5.value_counts()
        out[split] = {"groups": int((counts > 1).sum()), "extra_copies": int((counts - 1).sum()),
                      "images_in_groups": int(counts[counts > 1].sum())}
    train_md5 = set(stats.loc[stats.split == "train", "md5"].dropna())
    out["test_in_train"] = int(stats.loc[stats.split == "test", "md5"].isin(train_md5).sum())
    return out


def near_duplicate_pairs(stats: pd.DataFrame) -> pd.DataFrame:
    """Near-duplicates that are not identical files: pairs of images (any splits) whose perceptual hashes
    differ in at most NEAR_DISTANCE bits but whose md5 differ, train-test pairs first, closest first."""
    from pipeline.core.phash import hamming, near_pairs

    hashed = stats[stats.phash.notna()].reset_index(drop=True)
    hashes = np.array([int(h, 16) for h in hashed.phash], dtype=np.uint64)
    pairs = near_pairs(hashes) if len(hashes) else np.zeros((0, 2), dtype=np.int64)
    a, b = hashed.iloc[pairs[:, 0]].reset_index(drop=True), hashed.iloc[pairs[:, 1]].reset_index(drop=True)
    df = pd.DataFrame({"split_a": a.split, "id_a": a.id, "split_b": b.split, "id_b": b.id,
                       "bits": hamming(hashes[pairs[:, 0]], hashes[pairs[:, 1]]).astype(int)})
    df = df[(a.md5 != b.md5).to_numpy()]
    swap = (df.split_a == "test") & (df.split_b == "train")  # train first in a train-test pair
    cols = ["split_a", "id_a", "split_b", "id_b"]
    df.loc[swap, cols] = df.loc[swap, ["split_b", "id_b", "split_a", "id_a"]].to_numpy()
    df["kind"] = df.split_a + "-" + df.split_b
    order = df.kind.map({"train-test": 0, "train-train": 1, "test-test": 2})
    return df.assign(_o=order).sort_values(["_o", "bits", "id_a", "id_b"]).drop(columns="_o").reset_index(drop=True)


def near_summary(pairs: pd.DataFrame) -> dict:
    """Pairs per kind, and the test images with a near-duplicate in train (the leak that matters)."""
    from pipeline.core.phash import NEAR_DISTANCE

    kinds = {k: int((pairs.kind == k).sum()) for k in ("train-train", "train-test", "test-test")}
    across = pairs[pairs.kind == "train-test"]
    return {"max_bits": NEAR_DISTANCE, "pairs": kinds, "test_near_train": int(across.id_b.nunique()),
            "train_near_test": int(across.id_a.nunique())}


NEAR_SHOWN = 8  # pairs drawn side by side in near_duplicates.png


def near_section(comp: Competition, pairs: pd.DataFrame, summary: dict, stats: pd.DataFrame, out: Path) -> list[str]:
    """index.md's near-duplicate section, with near_duplicates.png: the closest pairs side by side."""
    lines = ["## Near-duplicates (perceptual hash)", "",
             f"Resized, re-compressed or lightly edited copies: images whose 64-bit DCT perceptual hash differs in "
             f"at most {summary['max_bits']} bits but whose files differ (identical files are counted above). "
             "`make folds` keeps them in one fold (competition key `duplicates: near`).", "",
             f"- train-test pairs: {summary['pairs']['train-test']} ({summary['test_near_train']} test images "
             f"with a near-duplicate in train: their labels may leak)",
             f"- train-train pairs: {summary['pairs']['train-train']}",
             f"- test-test pairs: {summary['pairs']['test-test']}",
             "", "Every pair: `near_duplicates.csv`.", ""]
    if len(pairs):
        png = save_fig(near_figure(comp, pairs.head(NEAR_SHOWN), stats), out / "near_duplicates.png")
        lines += [f"![near-duplicates]({png})", ""]
    return lines


def near_figure(comp: Competition, pairs: pd.DataFrame, stats: pd.DataFrame):
    """One row per pair: the two images side by side, titled with split, id and size, the right one with the
    bits that differ."""
    from pipeline.core.images import BadImage, read_image

    size = {(r.split, r.id): f"{r.width:.0f}x{r.height:.0f}" for r in stats[stats.phash.notna()].itertuples()}
    plt = pyplot()
    fig, axes = plt.subplots(len(pairs), 2, figsize=(5, 2.4 * len(pairs) + 0.5), squeeze=False)
    for row, p in zip(axes, pairs.itertuples()):
        for side, (ax, split, image_id) in enumerate(((row[0], p.split_a, p.id_a), (row[1], p.split_b, p.id_b))):
            ax.axis("off")
            ax.set_title(f"{split} {image_id} ({size.get((split, image_id), '?')} px)"
                         + (f"\n{p.bits} of 64 bits differ" if side else "\n"), fontsize=7)
            try:
                ax.imshow(read_image(comp.image_path(split, image_id), 3, short_side=256))
            except BadImage:
                continue
    fig.suptitle("near-duplicates, closest first (each row: one pair)", fontsize=9)
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.5 / (2.4 * len(pairs) + 0.5)))
    return fig


def conflicting_labels(comp: Competition, train: pd.DataFrame, stats: pd.DataFrame) -> int:
    """Train duplicate groups whose copies carry different labels."""
    md5 = stats.loc[stats.split == "train"].set_index("id")["md5"]
    labels = train.set_index(train[comp.id_col].astype(str))[comp.target_cols].astype(str).agg("|".join, axis=1)
    df = pd.DataFrame({"md5": md5, "label": labels.loc[md5.index]}).dropna()
    per_group = df.groupby("md5")["label"].nunique()
    return int((per_group > 1).sum())


def adversarial_auc(stats: pd.DataFrame, seed: int = 0, n_splits: int = 5) -> dict:
    """Cross-validated ROC AUC of LightGBM telling test (1) from train (0) on per-image statistics."""
    import lightgbm as lgb
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import StratifiedKFold

    df = stats[stats.readable.astype(bool)]
    X = df[FEATURES].to_numpy(dtype=np.float64)
    y = (df.split == "test").to_numpy(dtype=int)
    n_min = int(min(y.sum(), len(y) - y.sum()))
    if n_min < 2:
        return {"auc": None, "note": "needs at least 2 readable images in both train and test"}
    k = min(n_splits, n_min)
    oof = np.zeros(len(y))
    importance = np.zeros(len(FEATURES))
    params = dict(n_estimators=200, learning_rate=0.05, num_leaves=15, min_child_samples=max(2, min(20, n_min // 4)),
                  subsample=0.8, subsample_freq=1, colsample_bytree=0.8, random_state=seed, n_jobs=1,
                  deterministic=True, force_row_wise=True, verbose=-1)
    for tr, va in StratifiedKFold(k, shuffle=True, random_state=seed).split(X, y):
        model = lgb.LGBMClassifier(**params)
        model.fit(X[tr], y[tr])
        oof[va] = model.predict_proba(X[va])[:, 1]
        importance += model.booster_.feature_importance("gain")
    auc = float(roc_auc_score(y, oof))
    top = sorted(zip(FEATURES, importance / k), key=lambda t: -t[1])
    return {"auc": auc, "folds": k, "n_train": int((y == 0).sum()), "n_test": int(y.sum()),
            "importance": {f: round(float(v), 4) for f, v in top}}


# --- image sizes and aspect ratios -----------------------------------------------------------------------

SQUASH_TOLERANCE = 0.10  # squash when the middle 90% of aspects are within 10% of the target aspect


def _spread(values: pd.Series, digits: int) -> dict:
    if values.empty:
        return {"min": None, "median": None, "max": None}
    return {"min": round(float(values.min()), digits), "median": round(float(values.median()), digits),
            "max": round(float(values.max()), digits)}


def size_summary(readable: pd.DataFrame) -> dict:
    """Per split and over both ("all"): images, height / width / aspect (w/h) min, median and max, the
    share of non-square images and the number of distinct (height, width)."""
    parts = {split: readable[readable.split == split] for split in ("train", "test")}
    parts["all"] = readable
    out = {}
    for name, part in parts.items():
        h, w = part["height"].astype(float), part["width"].astype(float)
        out[name] = {"images": int(len(part)), "height": _spread(h, 1), "width": _spread(w, 1),
                     "aspect": _spread(w / h, 4),
                     "non_square_share": round(float((h != w).mean()), 4) if len(part) else None,
                     "distinct_sizes": int(part[["height", "width"]].drop_duplicates().shape[0])}
    return out


def size_for(aspect: float, base: int) -> list[int]:
    """[height, width], multiples of 32, following `aspect` (w/h) with an area near base x base: the pair
    that best keeps the aspect, a little penalised for area away from base^2."""
    sides = range(32, 4 * base + 1, 32)
    return list(min(((h, w) for h in sides for w in sides),
                    key=lambda hw: abs(np.log(hw[1] / hw[0] / aspect)) + 0.2 * abs(np.log(hw[0] * hw[1] / base ** 2))))


def recommend_size(readable: pd.DataFrame) -> dict:
    """`img_size` ([height, width]) and `resize` for these images, and the reason in one sentence.

    The aspects (w/h) of the middle 90% of images decide: within 10% of square -> squash to a square; within
    10% of one shared aspect -> squash to [h, w] of that aspect; spread wider -> pad (keeps every pixel;
    crop the alternative) to [h, w] of the median aspect. The size keeps the area of a square near 224 px
    (384 when the median shorter side is at least 384), each side a multiple of 32."""
    if readable.empty:
        return {"img_size": None, "resize": None, "reason": "no readable image to measure"}
    h, w = readable["height"].astype(float), readable["width"].astype(float)
    aspect = w / h
    lo, med, hi = (float(aspect.quantile(q)) for q in (0.05, 0.5, 0.95))
    short = float(np.minimum(h, w).median())
    base = 384 if short >= 384 else 224
    size_note = f"sides multiples of 32 near {base} px (median shorter side {short:.0f} px)"
    middle = f"w/h {lo:.2f} to {hi:.2f} over the middle 90% of images"
    square = max(hi, 1 / lo) - 1 <= SQUASH_TOLERANCE
    target = 1.0 if square else med
    distortion = max(hi / target, target / lo) - 1
    if square or distortion <= SQUASH_TOLERANCE:
        hw = size_for(target, base)
        if square:
            what = "All images are square" if lo == hi == 1 else "Images are square or nearly"
            reason = (f"{what} ({middle}), so `squash` to a square input distorts them by at most "
                      f"{100 * distortion:.0f}%; {size_note}.")
        else:
            reason = (f"Images share one aspect ({middle}, median {med:.2f}), so `squash` to [height, width] "
                      f"with that aspect keeps their shapes (distortion at most {100 * distortion:.0f}%); {size_note}.")
        return {"img_size": hw, "resize": "squash", "alternative": None, "reason": reason,
                "aspect_p05": round(lo, 4), "aspect_median": round(med, 4), "aspect_p95": round(hi, 4)}
    hw = size_for(med, base)
    cut = 1 - min(lo / med, med / hi)
    reason = (f"Aspect ratios vary ({middle}), so `squash` would distort shapes by up to {100 * distortion:.0f}%; "
              f"`pad` to [height, width] of the median aspect {med:.2f} keeps every pixel, `crop` fills the input "
              f"but cuts up to {100 * cut:.0f}% of a side; {size_note}.")
    return {"img_size": hw, "resize": "pad", "alternative": "crop", "reason": reason,
            "aspect_p05": round(lo, 4), "aspect_median": round(med, 4), "aspect_p95": round(hi, 4)}


def size_table(summary: dict) -> pd.DataFrame:
    def mmm(d: dict, fmt: str) -> str:
        return "n/a" if d["min"] is None else " / ".join(fmt.format(d[k]) for k in ("min", "median", "max"))

    rows = [{"split": name, "images": s["images"], "height px (min / median / max)": mmm(s["height"], "{:g}"),
             "width px (min / median / max)": mmm(s["width"], "{:g}"),
             "aspect w/h (min / median / max)": mmm(s["aspect"], "{:.2f}"),
             "non-square": "n/a" if s["non_square_share"] is None else f"{100 * s['non_square_share']:.1f}%",
             "distinct sizes": s["distinct_sizes"]} for name, s in summary.items()]
    return pd.DataFrame(rows)


def sizes_figure(readable: pd.DataFrame, recommendation: dict):
    """Left: histogram of aspect ratios (w/h) per split, stacked; right: height against width, one marker per
    distinct size with its area by the number of images. Dashed: square; dotted: the recommended aspect."""
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.2))
    aspect = readable["width"] / readable["height"]
    splits = [sp for sp in ("train", "test") if (readable.split == sp).any()]
    lo, hi = (float(aspect.min()), float(aspect.max())) if len(aspect) else (1.0, 1.0)
    if hi - lo < 1e-6:
        lo, hi = lo * 0.95, hi * 1.05
    axes[0].hist([aspect[readable.split == sp] for sp in splits], bins=np.linspace(lo, hi, 31), stacked=True,
                 label=splits, color=[f"C{i}" for i in range(len(splits))])
    axes[0].axvline(1.0, color="k", ls="--", lw=1, label="square (1.0)")
    hw = recommendation.get("img_size")
    if hw:
        axes[0].axvline(hw[1] / hw[0], color="r", ls=":", lw=1.5,
                        label=f"recommended {hw[0]}x{hw[1]} ({recommendation['resize']})")
    axes[0].set_xlabel("aspect ratio w/h (width / height; 1 = square, > 1 = landscape)")
    axes[0].set_ylabel("images (stacked over splits)")
    axes[0].set_title("aspect ratios")
    integer_ticks(axes[0].yaxis)
    counts = readable.groupby(["split", "height", "width"]).size().rename("n").reset_index()
    top = float(max(counts["n"].max(), 1)) if len(counts) else 1.0
    for i, sp in enumerate(splits):
        part = counts[counts.split == sp]
        axes[1].scatter(part["width"], part["height"], s=10 + 190 * np.sqrt(part["n"] / top), alpha=0.5,
                        color=f"C{i}", label=f"{sp} ({len(part)} sizes)")
    big = float(max(readable["height"].max(), readable["width"].max())) if len(readable) else 1.0
    axes[1].plot([0, big], [0, big], "k--", lw=1, label="square")
    if hw:
        axes[1].plot([0, big], [0, big * hw[0] / hw[1]], "r:", lw=1.5, label="recommended aspect")
    axes[1].set_xlim(0, big * 1.05)
    axes[1].set_ylim(0, big * 1.05)
    axes[1].set_aspect("equal")
    axes[1].set_xlabel("width (px)")
    axes[1].set_ylabel("height (px)")
    axes[1].set_title("image sizes (marker area ~ number of images)")
    for ax in axes:
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    return fig


def class_counts(comp: Competition, train: pd.DataFrame, classes: list[str]) -> pd.DataFrame:
    if comp.task in ("multilabel", "regression"):  # positives per label (regression: nonzero values)
        counts = encode_targets(comp, train, classes).astype(bool).sum(axis=0).astype(int).tolist()
    else:
        vc = labels_as_text(comp, train[comp.target]).value_counts()
        counts = [int(vc.get(c, 0)) for c in classes]
    df = pd.DataFrame({"class": classes, "count": counts})
    df["fraction"] = df["count"] / len(train)
    return df


def run_eda(comp: Competition, out: str | Path = "submissions/eda", seed: int | None = None,
            sample: int | None = None) -> dict:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    seed = comp.seed if seed is None else seed
    train = read_train(comp)
    classes = class_names(comp, train)
    test_ids = read_sample(comp)[comp.id_col].astype(str).tolist()
    train_ids = train[comp.id_col].astype(str).tolist()
    if sample:  # image statistics on a random subset of each split (large competitions)
        rng = np.random.default_rng(seed)
        pick = lambda ids: sorted(rng.choice(ids, min(sample, len(ids)), replace=False).tolist())  # noqa: E731
        train_ids, test_ids = pick(train_ids), pick(test_ids)
    stats = pd.concat([scan(comp, "train", train_ids), scan(comp, "test", test_ids)], ignore_index=True)
    write_csv(out / "image_stats.csv", stats)
    plt = pyplot()
    md = ["# EDA", "", f"{len(train)} training rows, {len(read_sample(comp))} test rows, task {comp.task}."
          + (f" Image statistics on a random {sample} per split." if sample else ""), ""]

    cc = class_counts(comp, train, classes)
    write_csv(out / "class_counts.csv", cc)
    fig, ax = plt.subplots(figsize=(max(5, 0.35 * len(cc)), 3.5))
    ax.bar(cc["class"].astype(str), cc["count"])
    ax.set_title("class distribution" + (" (positives per label)" if comp.task == "multilabel" else ""))
    ax.set_xlabel({"multilabel": "label", "regression": "target column"}.get(comp.task, "class"))
    ax.set_ylabel({"multilabel": "training images with the label",
                   "regression": "training rows with a nonzero value"}.get(comp.task, "training images"))
    integer_ticks(ax.yaxis)
    ax.tick_params(axis="x", rotation=60, labelsize=7)
    md += ["## Class distribution", "", md_table(cc), "", f"![classes]({save_fig(fig, out / 'classes.png')})", ""]

    readable = stats[stats.readable.astype(bool)]
    unreadable = stats.loc[~stats.readable.astype(bool), ["split", "id"]]
    sizes = (readable.groupby(["split", "height", "width", "channels"]).size().rename("images").reset_index()
             .sort_values(["split", "images"], ascending=[True, False]))
    write_csv(out / "image_sizes.csv", sizes)
    summary = readable.groupby("split")[["height", "width", "mean_0", "mean_1", "mean_2", "std_0", "std_1", "std_2",
                                          "sharpness", "bytes"]].mean().reset_index()
    size_stats = size_summary(readable)
    advice = recommend_size(readable)
    channels = "; ".join(f"{split}: " + ", ".join(f"{int(c)} channel{'s' if c != 1 else ''} ({n} images)"
                                                  for c, n in part["channels"].value_counts().sort_index().items())
                         for split, part in readable.groupby("split"))
    img_size = "n/a" if advice["img_size"] is None else f"[{advice['img_size'][0]}, {advice['img_size'][1]}]"
    md += ["## Images", "", f"{len(unreadable)} missing or unreadable"
           + (f" ({', '.join(unreadable.id.head(5))}{' ...' if len(unreadable) > 5 else ''})" if len(unreadable) else "")
           + ".", "", "### Sizes and aspect ratios", "",
           md_table(size_table(size_stats)), "",
           "Aspect is width / height; non-square: the share of images whose height and width differ. Every "
           "(height, width, channels) with its count: `image_sizes.csv`." + (f" Channels: {channels}." if channels else ""),
           "", f"**Recommendation:** `img_size: {img_size}`, `resize: {advice['resize']}`"
           + (f" (or `{advice['alternative']}`)" if advice.get("alternative") else "") + f". {advice['reason']}", "",
           f"![sizes]({save_fig(sizes_figure(readable, advice), out / 'image_sizes.png')})", "",
           "### Pixel statistics", "",
           "Means per split (channel 0..2 = R, G, B; grayscale repeats one channel):", "", md_table(summary, "{:.2f}"), ""]
    fig, axes = plt.subplots(1, 2, figsize=(12, 3.8))
    for split, part in readable.groupby("split"):
        brightness = part[["mean_0", "mean_1", "mean_2"]].mean(axis=1)
        axes[0].hist(brightness, bins=30, alpha=0.5, density=True, label=split)
        axes[1].hist(np.log10(part["sharpness"] + 1), bins=30, alpha=0.5, density=True, label=split)
    for ax, title, xlabel in zip(axes, ("brightness", "sharpness"),
                                 ("mean pixel value per image (0-255, over channels)",
                                  "log10(1 + variance of the Laplacian) per image (higher = sharper)")):
        ax.set_title(title)
        ax.set_xlabel(xlabel)
        ax.set_ylabel("density (share of images per unit)")
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    md += [f"![stats]({save_fig(fig, out / 'image_stats.png')})", ""]

    dups = duplicates(stats)
    dups["train_conflicting_labels"] = conflicting_labels(comp, train, stats)
    md += ["## Duplicates (identical files, md5)", "",
           f"- train: {dups['train']['extra_copies']} extra copies in {dups['train']['groups']} groups "
           f"({dups['train_conflicting_labels']} groups with conflicting labels)",
           f"- test: {dups['test']['extra_copies']} extra copies in {dups['test']['groups']} groups",
           f"- test images identical to a train image: {dups['test_in_train']}", ""]

    near = near_duplicate_pairs(stats)
    write_csv(out / "near_duplicates.csv", near)
    dups["near"] = near_summary(near)
    md += near_section(comp, near, dups["near"], stats, out)

    adv = adversarial_auc(stats, seed)
    auc_text = "n/a" if adv["auc"] is None else f"{adv['auc']:.4f}"
    verdict = ("n/a" if adv["auc"] is None else "no visible shift" if adv["auc"] < 0.6
               else "some shift" if adv["auc"] < 0.8 else "strong shift: train and test look different")
    md += ["## Train/test shift (adversarial validation)", "",
           f"LightGBM (seed {seed}, one thread, deterministic) telling test from train on {', '.join(FEATURES)}: "
           f"cross-validated ROC AUC **{auc_text}** ({verdict}; 0.5 = "
           "indistinguishable)." + (f" {adv['note']}" if "note" in adv else ""), ""]
    if adv.get("importance"):
        md += ["Most telling features (mean gain): "
               + ", ".join(f"{f} {v:.1f}" for f, v in list(adv["importance"].items())[:5]), ""]

    result = {"n_train": len(train), "n_test": len(read_sample(comp)), "task": comp.task,
              "classes": dict(zip(cc["class"], cc["count"].astype(int).tolist())),
              "unreadable": unreadable.id.tolist(), "duplicates": dups, "adversarial": adv,
              "image_sizes": size_stats, "recommendation": advice,
              # the 20 most common (height, width, channels) per split; all of them in image_sizes.csv
              "sizes": sizes.groupby("split").head(20).astype({"height": int, "width": int, "channels": int})
              .to_dict("records")}
    write_json(out / "eda.json", result)
    write_text(out / "index.md", "\n".join(md))
    write_html(out / "index.md")
    print(f"wrote {out / 'index.md'} and index.html: {len(cc)} classes, {dups['train']['extra_copies']} duplicate "
          f"train copies, {dups['test_in_train']} test images in train, {dups['near']['test_near_train']} test "
          f"images with a near-duplicate in train, adversarial AUC {auc_text}; "
          f"img_size {img_size}, resize {advice['resize']}")
    return result
