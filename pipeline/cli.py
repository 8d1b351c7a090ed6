"""One entry point: `python -m pipeline <stage> [options] [key=value ...]`.

Make targets are thin calls of these commands. Trailing `key=value` words override config keys.
Errors the user can fix print one clear message and exit with status 2.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pipeline.config import ConfigError, load_competition
from pipeline.data import DataError

DEFAULT_COMPETITION = "configs/competition.yaml"


def _competition(args: argparse.Namespace):
    comp = load_competition(args.competition, args.overrides)
    if comp.generator and not comp.data_dir.exists():
        from pipeline.demo import GENERATORS

        print(f"{comp.data_dir} is missing: writing the {comp.generator} demo competition")
        GENERATORS[comp.generator](comp.data_dir)
    return comp


def cmd_demo(args: argparse.Namespace) -> None:
    from pipeline.demo import write_digits

    print(f"wrote {write_digits(args.out)}")


def cmd_fashion_mnist(args: argparse.Namespace) -> None:
    from pipeline.demo import write_fashion_mnist

    out = write_fashion_mnist(args.out, source=args.source, n_train=args.n_train, n_test=args.n_test, seed=args.seed)
    print(f"wrote {out}")


def cmd_folds(args: argparse.Namespace) -> None:
    from pipeline.folds import make_folds

    make_folds(_competition(args), out_dir=args.out, force=args.force, decode=not args.no_decode)


def cmd_check(args: argparse.Namespace) -> None:
    from pipeline.data import read_sample, read_train

    comp = _competition(args)
    train, sample = read_train(comp), read_sample(comp)
    print(f"{args.competition}: ok ({len(train)} train rows, {len(sample)} test rows, task {comp.task})")


def _model_config(comp, model: str, overrides: list[str]):
    from pipeline.models import load_model_config

    path = comp.models_dir / f"{model}.yaml"
    return load_model_config(path, overrides), str(path)


def cmd_train(args: argparse.Namespace) -> None:
    from pipeline.train import TrainingError, train_fold

    comp = load_competition(args.competition)
    overrides = list(args.overrides) + ([f"pseudo={args.pseudo}"] if args.pseudo else [])
    cfg, source = _model_config(comp, args.model, overrides)
    name = args.model + ("-pseudo" if cfg.pseudo else "")  # a pseudo round gets its own runs and tables
    try:
        train_fold(comp, cfg, name, args.fold, folds_path=args.folds, runs=args.runs,
                   rerun=args.rerun, source=source)
    except TrainingError as e:
        raise DataError(f"training {args.model} fold {args.fold} stopped: {e}") from None


def cmd_plan(args: argparse.Namespace) -> None:
    """Print the done.json targets of every model x fold (Make runs them)."""
    from pipeline.folds import read_folds

    comp = load_competition(args.competition)
    models = args.models.split() if args.models else sorted(p.stem for p in comp.models_dir.glob("*.yaml"))
    if not models:
        raise ConfigError(f"no model configs in {comp.models_dir} (competition key 'models_dir')")
    for m in models:
        _model_config(comp, m, [])  # fail early, naming the file
    folds = sorted(read_folds(args.folds, comp.id_col)["fold"].unique())
    suffix = "-pseudo" if args.pseudo else ""
    print(" ".join(f"{args.runs}/{m}{suffix}/fold{k}/done.json" for m in models for k in folds))


def _predict_overrides(overrides: list[str]) -> dict:
    from pipeline.config import parse_overrides

    values = parse_overrides(overrides)
    unknown = sorted(set(values) - {"tta", "tta_merge"})
    if unknown:
        raise ConfigError(f"predict: only tta and tta_merge can be overridden, not {unknown}")
    return values


def cmd_predict(args: argparse.Namespace) -> None:
    from pipeline.predict import predict_all

    values = _predict_overrides(args.overrides)
    models = args.models.split() or None
    if args.name and (not models or len(models) != 1):
        raise ConfigError("--name needs exactly one model in --models")
    predict_all(load_competition(args.competition), models, runs=args.runs, folds_path=args.folds,
                stacking=args.stacking, tta=values.get("tta"), tta_merge=values.get("tta_merge"),
                out_name=args.name, force=args.force)


def cmd_pseudo(args: argparse.Namespace) -> None:
    from pipeline.predict import write_pseudo

    source = Path(args.source) if args.source else (
        Path(args.stacking) / f"{args.model}.test.csv" if args.model else Path("submissions/blend.test.csv"))
    if not source.is_file():
        raise DataError(f"{source}: not found; run `make ensemble` first, or name a model with MODEL=")
    write_pseudo(load_competition(args.competition), source, args.out, args.threshold, args.top_frac, args.soft)


def _add_competition(p: argparse.ArgumentParser) -> None:
    p.add_argument("--competition", "-c", default=DEFAULT_COMPETITION, help="competition config (YAML)")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="override config keys")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m pipeline", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="<stage>")

    p = sub.add_parser("demo", help="write the embedded demo competition (scikit-learn digits)")
    p.add_argument("--out", default="data/demo")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("fashion-mnist", help="write Fashion-MNIST in Kaggle layout from Debian's IDX files")
    p.add_argument("--out", default="data/fashion-mnist")
    p.add_argument("--source", default="/usr/share/datasets/fashion-mnist", help="folder of the IDX files")
    p.add_argument("--n-train", type=int, default=None, help="class-stratified subsample of the 60,000 train images")
    p.add_argument("--n-test", type=int, default=None, help="class-stratified subsample of the 10,000 test images")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_fashion_mnist)

    p = sub.add_parser("check", help="validate the competition config and its files")
    _add_competition(p)
    p.set_defaults(func=cmd_check)

    p = sub.add_parser("folds", help="assign every training row to a validation fold -> folds/folds.csv")
    _add_competition(p)
    p.add_argument("--out", default="folds", help="output folder")
    p.add_argument("--force", action="store_true", help="rebuild even when up to date")
    p.add_argument("--no-decode", action="store_true", help="hash images without decoding them (faster)")
    p.set_defaults(func=cmd_folds)

    p = sub.add_parser("train", help="train one model on one fold -> runs/<model>/fold<k>/ (resumes, skips done)")
    p.add_argument("--competition", "-c", default=DEFAULT_COMPETITION, help="competition config (YAML)")
    p.add_argument("--model", "-m", required=True, help="name of a config in the competition's models_dir")
    p.add_argument("--fold", "-f", type=int, required=True)
    p.add_argument("--folds", default="folds/folds.csv")
    p.add_argument("--runs", default="runs")
    p.add_argument("--rerun", action="store_true", help="train again even when the fold is done")
    p.add_argument("--pseudo", default=None, help="pseudo-label table: trains runs/<model>-pseudo/")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="override model config keys")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("plan", help="list the runs/<model>/fold<k>/done.json targets (used by make train-all)")
    p.add_argument("--competition", "-c", default=DEFAULT_COMPETITION)
    p.add_argument("--models", default="", help="space-separated model names (default: all in models_dir)")
    p.add_argument("--folds", default="folds/folds.csv")
    p.add_argument("--runs", default="runs")
    p.add_argument("--pseudo", action="store_true", help="targets of the pseudo-label round")
    p.set_defaults(func=cmd_plan)

    p = sub.add_parser("predict", help="OOF and test predictions with TTA -> stacking/<model>.{oof,test}.csv")
    p.add_argument("--competition", "-c", default=DEFAULT_COMPETITION)
    p.add_argument("--models", default="", help="space-separated run names (default: every trained model)")
    p.add_argument("--name", default=None, help="write the tables under this name (one model only)")
    p.add_argument("--folds", default="folds/folds.csv")
    p.add_argument("--runs", default="runs")
    p.add_argument("--stacking", default="stacking")
    p.add_argument("--force", action="store_true", help="remake tables even when up to date")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="tta=[none,hflip] tta_merge=gmean")
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("pseudo", help="confident test predictions -> folds/pseudo.csv")
    p.add_argument("--competition", "-c", default=DEFAULT_COMPETITION)
    p.add_argument("--model", default=None, help="use stacking/<model>.test.csv instead of the blend")
    p.add_argument("--source", default=None, help="any test probability table (overrides --model)")
    p.add_argument("--stacking", default="stacking")
    p.add_argument("--out", default="folds/pseudo.csv")
    p.add_argument("--threshold", type=float, default=None, help="top probability at least this (default 0.95; top-frac 0.3 for rank/vote blends)")
    p.add_argument("--top-frac", type=float, default=None, help="instead: the most confident fraction per class")
    p.add_argument("--soft", action="store_true", help="write probabilities (soft labels) instead of classes")
    p.set_defaults(func=cmd_pseudo)

    # Later stages register their own commands: ensemble + validate, report + eda + lr-find, package + kernel,
    # bench.
    from pipeline import bench, ensemble, package, report

    for module in (ensemble, report, package, bench):
        module.add_commands(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except (ConfigError, DataError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return 0
