"""The argparse parser: every command, its options and its help text, grouped as `make help` groups them."""

from __future__ import annotations

import argparse

from pipeline.blend.registry import methods_help
from pipeline.cli.commands import (
    DEFAULT_COMPETITION,
    cmd_bench,
    cmd_bench_scale,
    cmd_check,
    cmd_demo,
    cmd_distill,
    cmd_eda,
    cmd_ensemble,
    cmd_fashion_mnist,
    cmd_folds,
    cmd_gpu_check,
    cmd_gpus,
    cmd_kernel,
    cmd_launch,
    cmd_lr_find,
    cmd_models,
    cmd_package,
    cmd_plan,
    cmd_predict,
    cmd_pseudo,
    cmd_report,
    cmd_show_batch,
    cmd_submit,
    cmd_train,
    cmd_tune,
    cmd_validate,
    cmd_weights,
)

# --- the parser -------------------------------------------------------------------------------------------


def _competition_args(p: argparse.ArgumentParser, overrides: str = "override competition keys") -> None:
    p.add_argument("--competition", "-c", default=DEFAULT_COMPETITION, help="competition config (YAML)")
    p.add_argument("--comp-args", default=None, metavar="'key=value ...'",
                   help="competition overrides (COMP_ARGS); they stick for later stages until given again ('' clears)")
    p.add_argument("overrides", nargs="*", metavar="key=value", help=overrides)


def _stage_paths(p: argparse.ArgumentParser, *names: str) -> None:
    """The stage folders a command reads or writes, each with its usual default."""
    defaults = {"folds": "folds/folds.csv", "runs": "runs", "stacking": "stacking", "submissions": "submissions"}
    for name in names:
        p.add_argument(f"--{name}", default=defaults[name])


def _data_commands(command) -> None:
    p = command("demo", cmd_demo, "write the embedded demo competition (scikit-learn digits)")
    p.add_argument("--out", default="data/demo")

    p = command("fashion-mnist", cmd_fashion_mnist, "write Fashion-MNIST in Kaggle layout from Debian's IDX files")
    p.add_argument("--out", default="data/fashion-mnist")
    p.add_argument("--source", default="/usr/share/datasets/fashion-mnist", help="folder of the IDX files")
    p.add_argument("--n-train", type=int, default=None, help="class-stratified subsample of the 60,000 train images")
    p.add_argument("--n-test", type=int, default=None, help="class-stratified subsample of the 10,000 test images")
    p.add_argument("--seed", type=int, default=0)

    p = command("check", cmd_check, "check the config, tables, image paths, a decoded sample, answers and model "
                "configs in seconds")
    _competition_args(p)
    p.add_argument("--models-dir", default=None, help="model configs to check (default: competition key models_dir)")

    p = command("folds", cmd_folds, "assign every training row to a validation fold -> folds/folds.csv")
    _competition_args(p)
    p.add_argument("--out", default="folds", help="output folder")
    p.add_argument("--force", action="store_true", help="rebuild even when up to date")
    p.add_argument("--no-decode", action="store_true", help="hash images without decoding them (faster)")

    p = command("eda", cmd_eda, "class balance, image statistics, duplicates, train/test shift -> submissions/eda/")
    _competition_args(p)
    p.add_argument("--out", default="submissions/eda")
    p.add_argument("--seed", type=int, default=None, help="adversarial validation seed (default: competition seed)")
    p.add_argument("--sample", type=int, default=None, help="image statistics on at most this many images per split")


def _training_commands(command) -> None:
    p = command("train", cmd_train, "train one model on one fold -> runs/<model>/fold<k>/ (resumes, skips done)")
    _competition_args(p, "override model config keys")
    p.add_argument("--model", "-m", default=None, help="name of a config in the competition's models_dir")
    p.add_argument("--fold", "-f", type=int, default=None)
    p.add_argument("--target", default=None,
                   help="the fold as Make names it, runs/<run>/fold<k>/done.json (instead of --model and --fold)")
    _stage_paths(p, "folds", "runs")
    p.add_argument("--rerun", action="store_true", help="train again even when the fold is done")
    p.add_argument("--pseudo", default=None, help="pseudo-label table: trains runs/<model>-pseudo/ "
                   "(with --target: the table a -pseudo run trains on, default folds/pseudo.csv)")

    p = command("plan", cmd_plan, "list the runs/<model>/fold<k>/done.json targets still to train "
                "(make train-all); the plan goes to stderr")
    _competition_args(p, "override model config keys, as `train` would")
    p.add_argument("--models", default="", help="space-separated model names (default: all in models_dir)")
    _stage_paths(p, "folds", "runs")
    p.add_argument("--pseudo", default=None, help="pseudo-label table: the targets of that pseudo-label round")
    p.add_argument("--all", action="store_true", help="list finished folds too")
    p.add_argument("--retrain", action="store_true",
                   help="also list folds kept as trained with other overrides (ARGS), to train them as configured")

    p = command("gpus", cmd_gpus, "print the GPUs GPUS= resolves to (all: every visible GPU; none)")
    p.add_argument("gpus", nargs="?", default="", help="GPUS as Make passes it: empty/all, none, or 0,1,3")

    p = command("launch", cmd_launch, "train planned folds on this machine's GPUs (one per device slot) "
                "or a Ray cluster; a summary lists failed folds with their logs")
    _competition_args(p, "override model config keys (ARGS), as `train` would")
    p.add_argument("--targets", required=True, help="space-separated runs/<run>/fold<k>/done.json (from `plan`)")
    p.add_argument("--train-cmd", required=True, help="the command that trains one fold (Make's TRAIN)")
    p.add_argument("--pseudo", default=None, help="the pseudo-label table of -pseudo runs")
    p.add_argument("--gpus", default="", help="GPUS: empty/all (every visible GPU), none, or 0,1,3")
    p.add_argument("--jobs-per-gpu", type=int, default=1, help="folds that share one GPU (group)")
    p.add_argument("--nproc", type=int, default=1, help="GPUs per fold (DDP through torchrun)")
    p.add_argument("--cluster", choices=["ray"], default=None, help="run the folds on a Ray cluster")
    p.add_argument("--address", default=None, help="the Ray cluster's address (default: RAY_ADDRESS, a local one)")
    p.add_argument("--job-gpus", type=float, default=None, help="Ray: GPUs per fold (fractional allowed)")
    p.add_argument("--job-cpus", type=float, default=None, help="Ray: CPUs per fold")
    p.add_argument("--retries", type=int, default=2, help="Ray: retries of a fold whose worker or node dies")

    p = command("distill", cmd_distill, "the chosen blend's OOF -> folds/distill.parquet, the teacher of `make distill` "
                "(--compare: teacher vs plain vs distilled student)")
    _competition_args(p)
    p.add_argument("--student", default=None, help="the student's model config name")
    p.add_argument("--recorded-student", action="store_true", help="print the student given before (for Make)")
    _stage_paths(p, "folds", "stacking", "submissions")
    p.add_argument("--compare", action="store_true", help="print teacher, student and distilled student scores")

    p = command("tune", cmd_tune, "Optuna search over the model config's `search` space (SQLite, resumable) "
                "-> configs/models/<model>-tuned.yaml")
    _competition_args(p)
    p.add_argument("--model", "-m", required=True, help="name of a config in the competition's models_dir")
    p.add_argument("--trials", type=int, default=20, help="finished trials the study should hold (resumes toward it)")
    p.add_argument("--folds-to-tune", default="0", help="the folds each trial trains, e.g. '0' or '0 1'")
    _stage_paths(p, "folds", "runs")
    p.add_argument("--seed", type=int, default=0, help="the sampler's seed")

    p = command("weights", cmd_weights, "online, once: timm's pretrained weights of every `pretrained: true` "
                "model config -> weights/<backbone>.safetensors (offline runs then load them)")
    _competition_args(p)
    p.add_argument("--models", default="", help="space-separated model names (default: all in models_dir)")
    p.add_argument("--force", action="store_true", help="fetch again even when stored")

    p = command("models", cmd_models, "timm model names matching a pattern, with their pretrained tags")
    p.add_argument("pattern", nargs="?", default="*", help="fnmatch pattern, e.g. 'convnext*'")
    p.add_argument("--pretrained-only", action="store_true", help="only models with pretrained weights")

    p = command("lr-find", cmd_lr_find, "LR range test for one model -> runs/<model>/lr_find.png, a suggested lr")
    _competition_args(p, "override model config keys (batch_size=32 ...)")
    p.add_argument("--model", "-m", required=True, help="name of a config in the competition's models_dir")
    _stage_paths(p, "runs")
    p.add_argument("--start", type=float, default=1e-7, help="first lr")
    p.add_argument("--end", type=float, default=10.0, help="last lr")
    p.add_argument("--steps", type=int, default=100, help="optimizer steps (lr grows exponentially)")
    p.add_argument("--epochs", type=float, default=None,
                   help="at most this many passes over the training rows (default: as many as --steps needs)")
    p.add_argument("--diverge", type=float, default=4.0, help="stop when the smoothed loss exceeds this x its minimum")

    p = command("show-batch", cmd_show_batch, "training images as the model receives them, the evaluation "
                "transform and each TTA view -> runs/<model>/show_batch/*.png")
    _competition_args(p, "override model config keys (augment=heavy img_size=[256,384] ...)")
    p.add_argument("--model", "-m", required=True, help="name of a config in the competition's models_dir")
    _stage_paths(p, "runs")
    p.add_argument("--n", type=int, default=16, help="how many training images")
    p.add_argument("--seed", type=int, default=0, help="which images, and the augmentation's random draws")
    p.add_argument("--out", default=None, help="folder for the PNGs (default runs/<model>/show_batch)")


def _prediction_commands(command) -> None:
    p = command("predict", cmd_predict, "OOF and test predictions with TTA -> stacking/<model>.{oof,test}.parquet")
    _competition_args(p, "tta=[none,hflip] tta_merge=gmean")
    p.add_argument("--models", default="", help="space-separated run names (default: every trained model)")
    p.add_argument("--name", default=None, help="write the tables under this name (one model only)")
    _stage_paths(p, "folds", "runs", "stacking")
    p.add_argument("--force", action="store_true", help="remake tables even when up to date")
    p.add_argument("--gpus", default=None, help="GPUS: spread models over these GPUs, one process each "
                   "(all: every visible GPU)")
    p.add_argument("--jobs-per-gpu", type=int, default=1, help="models predicted at once on one GPU")

    p = command("pseudo", cmd_pseudo, "confident test predictions -> folds/pseudo.csv")
    p.add_argument("--competition", "-c", default=DEFAULT_COMPETITION)
    p.add_argument("--comp-args", default=None, help="competition overrides (COMP_ARGS)")
    p.add_argument("--model", default=None, help="use stacking/<model>.test instead of the blend")
    p.add_argument("--source", default=None, help="any test probability table (overrides --model)")
    _stage_paths(p, "stacking")
    p.add_argument("--out", default="folds/pseudo.csv")
    p.add_argument("--threshold", type=float, default=None,
                   help="top probability at least this (default 0.95; top-frac 0.3 for rank/vote blends)")
    p.add_argument("--top-frac", type=float, default=None, help="instead: the most confident fraction per class")
    p.add_argument("--soft", action="store_true", help="write probabilities (soft labels) instead of classes")

    p = command("ensemble", cmd_ensemble, "blend stacking/ tables -> submissions/submission.csv, cv.md, cv.json")
    _competition_args(p)
    p.add_argument("--method", default=None, help="when not given, the one given before (else auto). " + methods_help())
    _stage_paths(p, "stacking", "folds", "runs")
    p.add_argument("--out", default="submissions", help="output folder")
    p.add_argument("--force", action="store_true", help="rerun even when the inputs are unchanged")

    p = command("validate", cmd_validate, "check a submission CSV against sample_submission.csv")
    p.add_argument("path", help="the CSV to check")
    _competition_args(p)

    p = command("report", cmd_report, "leaderboard, curves, confusion, per-class scores, mistakes, Grad-CAM "
                "-> submissions/report/")
    _competition_args(p)
    _stage_paths(p, "submissions", "runs", "stacking", "folds")
    p.add_argument("--out", default=None, help="output folder (default: <submissions>/report)")
    p.add_argument("--mistakes", type=int, default=24, help="how many worst OOF mistakes to show")
    p.add_argument("--cam", type=int, default=6, help="how many of them get a Grad-CAM heatmap")


def _kaggle_commands(command) -> None:
    p = command("package", cmd_package, "offline Kaggle kernel + dataset of the chosen blend -> dist/kaggle/")
    _competition_args(p)
    p.add_argument("--out", default="dist/kaggle")
    _stage_paths(p, "runs", "stacking", "folds", "submissions")
    p.add_argument("--method", default=None, help="check that the blend `ensemble` chose is this one")
    p.add_argument("--wheels", default=None, help="space-separated pip specs for the wheelhouse (default: "
                   "iterative-stratification albumentations timm, pinned to the installed versions); '' for none")
    p.add_argument("--find-links", action="append", default=[], help="extra wheel folder for pip download")
    p.add_argument("--project", default=None, help="project folder to build the wheel from (default: this one)")
    p.add_argument("--fp16", action="store_true", help="store weights in float16 (half the size)")
    p.add_argument("--kaggle-user", default=None, help="Kaggle username (default: $KAGGLE_USERNAME)")
    p.add_argument("--competition-slug", default=None, help="default: the data folder's name")
    p.add_argument("--dataset-slug", default=None, help="default: <competition>-kfold-bundle")
    p.add_argument("--kernel-slug", default=None, help="default: <competition>-kfold-inference")
    p.add_argument("--public", action="store_true", help="make the kernel public (default private)")
    p.add_argument("--test-size", type=int, default=None, help="hidden test-set size for the runtime plan")
    p.add_argument("--test-factor", type=float, default=1.0, help="else: public test size x this")
    p.add_argument("--gpu-factor", type=float, default=1.0, help="Kaggle speed / this machine's speed")
    p.add_argument("--machine-shape", default=None, help="Kaggle accelerator for the kernel, e.g. NvidiaTeslaT4, TpuV5E8")
    p.add_argument("--student", default=None, help="ship this model's distilled student alone instead of the blend "
                   "(sticks for later packages; 'none': the blend)")

    p = command("submit", cmd_submit, "submit to Kaggle: the CSV (kaggle competitions submit), or for a code "
                "competition the bundle (kaggle datasets version + kaggle kernels push)")
    _competition_args(p)
    p.add_argument("--competition-slug", default=None, help="default: the data folder's name (warned)")
    _stage_paths(p, "submissions")
    p.add_argument("--bundle", default="dist/kaggle", help="the bundle `package` wrote (code competitions)")
    p.add_argument("--dry-run", action="store_true", help="print the commands, run nothing (no credentials needed)")
    p.add_argument("--kernel-version", type=int, default=None,
                   help="code competition: submit this finished version of the pushed kernel")

    p = command("kernel", cmd_kernel, "offline inference from a `package` bundle -> submission.csv (the Kaggle run)")
    p.add_argument("--bundle", required=True, help="the dataset folder written by `package`")
    p.add_argument("--data-dir", required=True, help="competition folder holding the sample submission and test images")
    p.add_argument("--out", default="/kaggle/working/submission.csv")
    p.add_argument("--work-dir", default=None, help="folder for per-model test tables (default: next to --out)")
    p.add_argument("--time-budget", type=float, default=None,
                   help="seconds; extra TTA views are dropped rather than run past it (default: from the bundle)")

    p = command("bench", cmd_bench, "data-path efficiency, TTA img/s, Fashion-MNIST quality, blend fit times")
    p.add_argument("--out", default="bench", help="working folder (its own data, folds, runs)")
    p.add_argument("--n-train", type=int, default=3000, help="Fashion-MNIST training subset")
    p.add_argument("--n-test", type=int, default=1000, help="Fashion-MNIST official test subset")
    p.add_argument("--folds", type=int, default=3)
    p.add_argument("--steps", type=int, default=20, help="timed training steps per round for the data-path ratio")
    p.add_argument("--epoch-images", type=int, default=48_000,
                   help="data-path epochs repeat the training images to this length (a full Fashion-MNIST fold)")
    p.add_argument("--skip-quality", action="store_true", help="only the speed measurements")
    p.add_argument("--docs", default="docs/benchmarks.md", help="where the latest table goes ('' for nowhere)")

    p = command("bench-scale", cmd_bench_scale, "wall time and peak memory of every stage but training, 10k to 100k "
                "rows and 10 to 1,000 classes (synthetic competitions) -> docs/benchmarks.md")
    for flag, default, help in (("--out", "bench-scale", "working folder (its data is reused)"),
                                ("--rows", "10000,100000", "training rows"), ("--classes", "10,1000", "classes"),
                                ("--jpegs", "200", "large JPEGs for check and folds (0: none)"),
                                ("--jpeg-size", "2000x1500", "their width x height"),
                                ("--timeout", "300", "seconds before a stage is killed"),
                                ("--max-mem-gib", "8", "resident GiB at which a stage is killed"),
                                ("--models", "3", "models whose level-1 tables are fabricated"),
                                ("--docs", "docs/benchmarks.md", "where the table goes ('' for nowhere)")):
        p.add_argument(flag, default=default, help=help)
    p.add_argument("--skip-auto", action="store_true", help="leave out ensemble --method auto")

    p = command("gpu-check", cmd_gpu_check, "the GPU paths no CPU test reaches, under 8 minutes on one GPU: AMP, "
                "channels_last, compile, NaN-step skip, GPUS=0 JOBS_PER_GPU=2, torchrun DDP, img/s vs timm")
    p.add_argument("--out", default="bench-scale/gpu-check", help="working folder")
    p.add_argument("--allow-cpu", action="store_true", help="run it on the CPU, CUDA-only parts left out (tests)")
    p.add_argument("--only", default="", help="comma-separated check names (default: all)")
    p.add_argument("--budget", type=float, default=420, help="seconds; checks not started by then are skipped")
    p.add_argument("--docs", default=None, help="default: docs/benchmarks.md on a GPU, nowhere on the CPU")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m pipeline", description="One entry point: `python -m pipeline <stage> [options] [key=value ...]`.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="<stage>")

    def command(name: str, func, help: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help)
        p.set_defaults(func=func)
        return p

    for group in (_data_commands, _training_commands, _prediction_commands, _kaggle_commands):
        group(command)
    return parser
