"""One entry point: `python -m pipeline <stage> [options] [key=value ...]`.

Make targets are thin calls of these commands. Trailing `key=value` words override config keys.
Errors the user can fix print one clear message and exit with status 2.

This is the top floor: argparse and one small `cmd_*` function per command, which imports its stage
lazily (so `check`, `plan` and `validate` start without torch). Nothing in the package imports it.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pipeline.core.config import load_competition, open_competition
from pipeline.blend.registry import methods_help
from pipeline.core.errors import ConfigError, DataError, PipelineError

DEFAULT_COMPETITION = "configs/competition.yaml"


def competition(path: str, comp_args: str | None, positional: list[str] | None = None, demo: bool = False):
    """The competition config with its overrides: COMP_ARGS (`--comp-args`) and key=value words where a
    command takes them. Given, they are recorded for every later stage; not given, the recorded ones hold."""
    from pipeline.artifacts.record import competition_overrides

    overrides = competition_overrides(comp_args, positional)
    return (open_competition if demo else load_competition)(path, overrides)


# --- data and folds --------------------------------------------------------------------------------


def cmd_demo(args: argparse.Namespace) -> None:
    from pipeline.core.demo import write_digits

    print(f"wrote {write_digits(args.out)}")


def cmd_fashion_mnist(args: argparse.Namespace) -> None:
    from pipeline.core.demo import write_fashion_mnist

    out = write_fashion_mnist(args.out, source=args.source, n_train=args.n_train, n_test=args.n_test, seed=args.seed)
    print(f"wrote {out}")


def cmd_check(args: argparse.Namespace) -> None:
    from pipeline.artifacts.check import run_check

    run_check(competition(args.competition, args.comp_args, args.overrides, demo=True), models_dir=args.models_dir, source=args.competition)


def cmd_folds(args: argparse.Namespace) -> None:
    from pipeline.artifacts.folds import make_folds

    make_folds(competition(args.competition, args.comp_args, args.overrides, demo=True), out_dir=args.out, force=args.force,
               decode=not args.no_decode)


def cmd_eda(args: argparse.Namespace) -> None:
    from pipeline.tools.eda import run_eda

    run_eda(competition(args.competition, args.comp_args, args.overrides, demo=True), out=args.out, seed=args.seed, sample=args.sample)


# --- training ------------------------------------------------------------------------------------------


def model_overrides(args: argparse.Namespace) -> list[str]:
    return list(args.overrides) + ([f"pseudo={args.pseudo}"] if args.pseudo else [])


def cmd_train(args: argparse.Namespace) -> None:
    from pipeline.nn.models import load_model
    from pipeline.artifacts.runs import DISTILL_SUFFIX, DISTILL_TABLE, PSEUDO_SUFFIX, PSEUDO_TABLE, config_name, parse_target, run_name
    from pipeline.train.train import train_fold

    if args.target:  # the Make target names the fold; a -pseudo run trains on the pseudo-label table
        if args.model is not None or args.fold is not None:
            raise ConfigError("train: give --target, or --model and --fold, not both")
        run, args.fold = parse_target(args.target)
        args.model = config_name(run)
        args.pseudo = (args.pseudo or PSEUDO_TABLE) if run.endswith(PSEUDO_SUFFIX) else None
        if run.endswith(DISTILL_SUFFIX) and not any(o.startswith("distill=") for o in args.overrides):
            args.overrides = [*args.overrides, f"distill={DISTILL_TABLE}"]  # a distilled student's teacher
    elif args.model is None or args.fold is None:
        raise ConfigError("train: give --model and --fold (or --target runs/<model>/fold<k>/done.json)")
    comp = competition(args.competition, args.comp_args)
    cfg, source = load_model(comp.models_dir, args.model, model_overrides(args))
    train_fold(comp, cfg, run_name(args.model, cfg), args.fold, folds_path=args.folds, runs=args.runs,
               rerun=args.rerun, source=source, overrides=model_overrides(args))  # TrainingError names the fold


def cmd_plan(args: argparse.Namespace) -> None:
    """Print the done.json targets of the model x folds still to train (Make runs them), and the plan."""
    from pipeline.nn.models import model_names
    from pipeline.artifacts.runs import plan_lines, plan_training, start_job

    comp = competition(args.competition, args.comp_args)
    models = args.models.split() if args.models else model_names(comp.models_dir)
    if not models:
        raise ConfigError(f"no model configs in {comp.models_dir} (competition key 'models_dir')")
    jobs = plan_training(comp, comp.models_dir, models, args.folds, args.runs, model_overrides(args))
    lines, chosen = plan_lines(jobs, args.retrain, args.all)
    print("\n".join(lines), file=sys.stderr)
    if not args.all:  # the folds this train-all trains: each prints the job's progress when it finishes
        print(start_job(args.runs, chosen), file=sys.stderr)
    print(" ".join(j.target for j in chosen))


def cmd_gpus(args: argparse.Namespace) -> None:
    """Print the GPUs GPUS= resolves to (empty: none, and Make trains folds itself as on a CPU machine)."""
    from pipeline.launch.launch import resolve_gpus

    print(",".join(resolve_gpus(args.gpus)))


def cmd_launch(args: argparse.Namespace) -> None:
    """Train the planned folds on this machine's GPUs, one job per device slot, or on a Ray cluster."""
    import shlex

    from pipeline.launch.launch import (device_slots, fold_jobs, resolve_gpus, run_local, slot_name, stop_with_make,
                                        summary)

    stop_with_make()  # make killed: this launcher and its folds go too
    jobs = fold_jobs(args.targets.split(), shlex.split(args.train_cmd), args.overrides, args.pseudo)
    if not jobs:
        return
    if args.cluster == "ray":
        from pipeline.launch.cluster import run_ray

        results = run_ray(jobs, Path.cwd(), address=args.address, gpus=args.job_gpus, cpus=args.job_cpus,
                          nproc=args.nproc, retries=args.retries)
    else:
        slots = device_slots(resolve_gpus(args.gpus), args.jobs_per_gpu, args.nproc)
        print(f"launch: {len(jobs)} fold(s) on {len(slots)} slot(s): "
              + ", ".join(dict.fromkeys(slot_name(s) for s in slots)) + f" ({args.jobs_per_gpu} job(s) per GPU group); "
              "each fold's output also goes to runs/<model>/logs/fold<k>.log", flush=True)
        results = run_local(jobs, slots)
    print(summary(results, "train-all"), flush=True)
    if not all(r.ok for r in results):
        raise SystemExit(1)


def cmd_weights(args: argparse.Namespace) -> None:
    """Store timm's pretrained weights of every model config with `pretrained: true` (online, once)."""
    from pipeline.nn.models import model_names, store_pretrained

    comp = competition(args.competition, args.comp_args)
    store_pretrained(comp.models_dir, args.models.split() if args.models else model_names(comp.models_dir), args.force)


def cmd_models(args: argparse.Namespace) -> None:
    """timm model names matching a pattern, each with its pretrained tags (no network)."""
    from pipeline.nn.models import describe_models

    lines, summary = describe_models(args.pattern, args.pretrained_only)
    print("\n".join(lines))
    print(summary, file=sys.stderr)


def cmd_distill(args: argparse.Namespace) -> None:
    from pipeline.train.distill import compare, recorded_student, write_teacher

    if args.recorded_student:  # for Make: the student given before, if any
        print(recorded_student() or "")
        return
    if not args.student:
        raise ConfigError("distill: give --student (make distill STUDENT=<model>)")
    comp = competition(args.competition, args.comp_args)
    if args.compare:
        print(compare(comp, args.student, args.stacking, args.folds, args.submissions))
    else:
        write_teacher(comp, args.student, args.submissions)


def cmd_tune(args: argparse.Namespace) -> None:
    from pipeline.train.tune import tune

    folds = [int(f) for f in args.folds_to_tune.replace(",", " ").split()]
    tune(competition(args.competition, args.comp_args), args.model, args.trials, folds, folds_path=args.folds, runs=args.runs,
         seed=args.seed)


def cmd_show_batch(args: argparse.Namespace) -> None:
    from pipeline.nn.models import load_model
    from pipeline.tools.show_batch import show_batch

    comp = competition(args.competition, args.comp_args, demo=True)
    cfg, _ = load_model(comp.models_dir, args.model, args.overrides)
    show_batch(comp, cfg, args.model, out=args.out, n=args.n, seed=args.seed, runs=args.runs)


def cmd_lr_find(args: argparse.Namespace) -> None:
    from pipeline.tools.lr_find import lr_range_test
    from pipeline.nn.models import load_model

    comp = competition(args.competition, args.comp_args, demo=True)
    cfg, _ = load_model(comp.models_dir, args.model, args.overrides)
    lr_range_test(comp, cfg, args.model, runs=args.runs, start=args.start, end=args.end, steps=args.steps,
                  epochs=args.epochs, diverge=args.diverge)


# --- predictions, blends, submissions -------------------------------------------------------------------


def predict_overrides(overrides: list[str]) -> dict:
    from pipeline.core.config import parse_overrides

    values = parse_overrides(overrides)
    unknown = sorted(set(values) - {"tta", "tta_merge"})
    if unknown:
        raise ConfigError(f"predict: only tta and tta_merge can be overridden, not {unknown}")
    return values


def cmd_predict(args: argparse.Namespace) -> None:
    from pipeline.launch.launch import device_slots, resolve_gpus
    from pipeline.predict.predict import predict_all
    from pipeline.artifacts.runs import trained_models

    values = predict_overrides(args.overrides)
    models = args.models.split() or None
    if args.name and (not models or len(models) != 1):
        raise ConfigError("--name needs exactly one model in --models")
    slots = device_slots(resolve_gpus(args.gpus), args.jobs_per_gpu) if args.gpus is not None else [()]
    names = models or trained_models(args.runs)
    if len(slots) > 1 and len(names) > 1:  # one model per GPU slot, each its own process
        from pipeline.predict.predict import spread_predict

        command = [sys.executable, "-m", "pipeline", "predict", "-c", args.competition, "--folds", args.folds,
                   "--stacking", args.stacking, *(["--force"] if args.force else []), *args.overrides]
        if not spread_predict(names, slots, command, args.runs):
            raise SystemExit(1)
        return
    predict_all(competition(args.competition, args.comp_args), models, runs=args.runs, folds_path=args.folds,
                stacking=args.stacking, tta=values.get("tta"), tta_merge=values.get("tta_merge"),
                out_name=args.name, force=args.force)


def cmd_pseudo(args: argparse.Namespace) -> None:
    from pipeline.artifacts.tables import find_table
    from pipeline.predict.predict import write_pseudo

    source = Path(args.source) if args.source else (
        find_table(args.stacking, f"{args.model}.test") if args.model else find_table("submissions", "blend.test"))
    if not source.is_file():
        raise DataError(f"{source}: not found; run `make ensemble` first, or name a model with MODEL=")
    write_pseudo(competition(args.competition, args.comp_args), source, args.out, args.threshold, args.top_frac, args.soft)


def cmd_ensemble(args: argparse.Namespace) -> None:
    from pipeline.blend.ensemble import run_ensemble

    run_ensemble(competition(args.competition, args.comp_args, args.overrides, demo=True), method=args.method, stacking=args.stacking,
                 folds_path=args.folds, out=args.out, force=args.force, runs=args.runs)


def cmd_validate(args: argparse.Namespace) -> None:
    from pipeline.blend.submission import validate_file

    fmt = validate_file(args.path, competition(args.competition, args.comp_args, args.overrides, demo=True))
    print(f"{args.path}: valid ({fmt.kind}, header {list(fmt.columns)})")


def cmd_report(args: argparse.Namespace) -> None:
    from pipeline.tools.report import make_report

    make_report(competition(args.competition, args.comp_args, args.overrides, demo=True), submissions=args.submissions, runs=args.runs,
                stacking=args.stacking, folds_path=args.folds, out=args.out, n_mistakes=args.mistakes,
                n_cam=args.cam)


# --- Kaggle bundle and bench -------------------------------------------------------------------------------


def cmd_package(args: argparse.Namespace) -> None:
    from pipeline.kaggle.bundle import BundleOptions, build_package
    from pipeline.kaggle.ids import MACHINE_SHAPE
    from pipeline.kaggle.sources import package_student

    if args.machine_shape and not MACHINE_SHAPE.fullmatch(args.machine_shape):
        raise ConfigError(f"MACHINE_SHAPE={args.machine_shape!r}: a Kaggle accelerator name such as NvidiaTeslaT4 or TpuV5E8")
    wheels = None if args.wheels is None else tuple(w for w in args.wheels.split() if w != "none")
    options = BundleOptions(fp16=args.fp16, wheels=wheels,
                            find_links=tuple(args.find_links), project=Path(args.project) if args.project else None,
                            private=not args.public, test_size=args.test_size, test_factor=args.test_factor,
                            gpu_factor=args.gpu_factor, machine_shape=args.machine_shape or None)
    comp = competition(args.competition, args.comp_args, args.overrides, demo=True)
    ids = {"user": args.kaggle_user, "competition_slug": args.competition_slug, "dataset_slug": args.dataset_slug,
           "kernel_slug": args.kernel_slug}
    student = package_student(args.out, args.student)  # STUDENT= sticks; none: the blend
    if student:  # the distilled student alone, as a one-model blend, if it learned from the blend there is now
        import tempfile

        from pipeline.artifacts.runs import DISTILL_SUFFIX
        from pipeline.kaggle.sources import student_blend
        from pipeline.train.distill import check_teacher

        check_teacher(student, args.submissions)
        with tempfile.TemporaryDirectory(prefix=".student-", dir=".") as work:
            stacking, submissions = student_blend(comp, student + DISTILL_SUFFIX, Path(args.stacking), Path(args.folds),
                                                  Path(args.runs), Path(work))
            build_package(comp, out=args.out, runs=args.runs, stacking=stacking, folds=args.folds,
                          submissions=submissions, options=options, **ids)
        return
    build_package(comp, out=args.out, runs=args.runs, stacking=args.stacking, folds=args.folds,
                  submissions=args.submissions, method=args.method, options=options, **ids)


def cmd_submit(args: argparse.Namespace) -> None:
    from pipeline.kaggle.ids import SLUG, check_id, warn
    from pipeline.kaggle.submit import submit

    comp = competition(args.competition, args.comp_args, args.overrides, demo=True)
    slug = args.competition_slug  # a code competition's bundle names its own
    if not slug and not comp.code_competition:
        slug = comp.data_dir.resolve().name
        warn(f"no competition slug given: submitting to {slug!r}, the data folder's name; "
             "make submit COMPETITION_SLUG=<slug> names it")
    if slug:
        check_id(slug, SLUG, "competition slug", "COMPETITION_SLUG / --competition-slug")
    submit(comp, slug, Path(args.submissions), Path(args.bundle), dry_run=args.dry_run,
           kernel_version=args.kernel_version)


def cmd_kernel(args: argparse.Namespace) -> None:
    from pipeline.kaggle.kernel import run_kernel

    run_kernel(args.bundle, args.data_dir, args.out, args.work_dir, args.time_budget)


def cmd_bench(args: argparse.Namespace) -> None:
    from pipeline.tools.bench import run_bench

    run_bench(Path(args.out), args.n_train, args.n_test, args.folds, args.steps, args.skip_quality,
              Path(args.docs) if args.docs else None, args.epoch_images)


def cmd_bench_scale(args: argparse.Namespace) -> None:
    from pipeline.tools.bench_scale import run_bench_scale

    run_bench_scale(args.out, args.rows, args.classes, args.jpegs, args.jpeg_size, args.skip_auto, args.timeout,
                    args.max_mem_gib, args.models, args.docs)


def cmd_gpu_check(args: argparse.Namespace) -> None:
    from pipeline.tools.gpu_check import run_gpu_check

    raise SystemExit(run_gpu_check(Path(args.out), args.allow_cpu, args.only, args.budget, args.docs))


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
    parser = argparse.ArgumentParser(prog="python -m pipeline", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="<stage>")

    def command(name: str, func, help: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help)
        p.set_defaults(func=func)
        return p

    for group in (_data_commands, _training_commands, _prediction_commands, _kaggle_commands):
        group(command)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except (PipelineError, FileNotFoundError) as e:  # every error a user can fix: one line, status 2
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return 0
