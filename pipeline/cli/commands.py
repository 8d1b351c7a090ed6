"""One small `cmd_*` function per command: it reads its arguments and imports its stage lazily (so `check`,
`plan` and `validate` start without torch). The competition config comes through `competition`, which
applies COMP_ARGS and records them for later stages."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pipeline.core.config import load_competition, open_competition
from pipeline.core.errors import ConfigError, DataError

DEFAULT_COMPETITION = "configs/competition.yaml"


def competition(path: str, comp_args: str | None, positional: list[str] | None = None, demo: bool = False):
    """The competition config with its overrides: COMP_ARGS (`--comp-args`) and key=value words where a
    command takes them. Given, they are recorded for every later stage; not given, the recorded ones hold."""
    from pipeline.artifacts.record import competition_overrides, remember_overrides

    overrides = competition_overrides(comp_args, positional)
    comp = (open_competition if demo else load_competition)(path, overrides)
    if comp_args is not None or positional:  # given, and valid: they hold for every later stage
        remember_overrides(overrides)
    return comp


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

    tune(competition(args.competition, args.comp_args), args.model, args.trials, args.folds_to_tune,  # FOLDS, checked there
         folds_path=args.folds, runs=args.runs, seed=args.seed)


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
