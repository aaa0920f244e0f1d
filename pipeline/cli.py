"""The ``mid`` command line: one parser for every entry point (``mid <command>``, ``jobs/*.py``).

    mid run      --config C [--variants V ...]   every stage of one experiment, skipping finished work
    mid teacher  --config C                      teacher, substitute and baselines        (jobs/train_teacher.py)
    mid pool     --config C [--no-test-stores]   adversarial pool and fixed test sets     (jobs/generate_pool.py)
    mid train    --config C [--force]            MID training of mid.variant             (jobs/train_mid.py)
    mid evaluate --config C                      the three protocols, tables, heat map    (jobs/evaluate.py)
    mid analyze  --config C                      the paper's analysis figures (Figs. 7-14) (jobs/analyze.py)
    mid zoo      --config C [--models M ...]     copy evaluated models into models/<name>/
    mid inspect  STORE [--verify]                what is in an adversarial store

Every config command takes ``--set key.sub=value`` (repeatable, values parsed as YAML) and ``--executor``:
``ray`` (Ray Data actors and Ray Train workers; the default where Ray is installed) or ``local`` (one process; the
default elsewhere); both give the same outputs. The whole config is validated before any work. Every error a user
can cause prints one line with its cause and fix and exits with status 2; ``--debug`` shows the traceback instead.
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Sequence

from pipeline.config import ConfigError, load_config
from pipeline.errors import UserError

log = logging.getLogger("pipeline.cli")
COMMANDS = ("run", "teacher", "pool", "train", "evaluate", "analyze", "zoo", "inspect")


def _config_parser(sub: argparse._SubParsersAction, name: str, help_: str) -> argparse.ArgumentParser:
    p = sub.add_parser(name, help=help_, description=help_)
    p.add_argument("--config", required=True, type=Path, help="YAML experiment config, e.g. configs/digits_lenet5.yaml")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set mid.epochs=2 (repeatable; values parsed as YAML)")
    p.add_argument("--executor", default="auto", choices=["auto", "local", "ray"],
                   help="ray: Ray Data actors + Ray Train workers; local: one process (default: ray if installed)")
    p.add_argument("--debug", action="store_true", help="show the full traceback of an error")
    return p


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mid", description="Meta Invariance Defense: train and evaluate robust "
                                                             "classifiers (see README.md)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    p = _config_parser(sub, "run", "every stage of one experiment: teacher, pool, MID (+ variants), evaluation")
    p.add_argument("--variants", nargs="*", default=[], metavar="V",
                   help="also train these MID variants (configs/<name>/<V>.yaml) and evaluate them")
    _config_parser(sub, "teacher", "train the teacher, the transfer substitute and the baselines the config needs")
    p = _config_parser(sub, "pool", "generate the adversarial training pool and the fixed test sets")
    p.add_argument("--no-test-stores", action="store_true", help="only the training pool, not the test sets")
    p = _config_parser(sub, "train", "train the MID variant mid.variant on the pool")
    p.add_argument("--force", action="store_true", help="retrain from scratch even if models/<mid.variant>.pt exists")
    _config_parser(sub, "evaluate", "score every model of evaluation.models under every protocol")
    _config_parser(sub, "analyze", "the paper's analysis figures (analysis.figures) under <output_dir>/analysis")
    p = _config_parser(sub, "zoo", "copy evaluated models and their measured rows into models/<name>/")
    p.add_argument("--models", nargs="*", default=None, help="models to export (default: evaluation.models)")
    p.add_argument("--dest", type=Path, default=None, help="destination folder (default: models/<config name>)")
    p.add_argument("--results", nargs="*", type=Path, default=None,
                   help="results.json files to merge (later ones win per protocol and model); default: the run's own")
    p = sub.add_parser("inspect", help="summarise an adversarial store", description="summarise an adversarial store")
    p.add_argument("store", help="path of a store (a .zarr folder)")
    p.add_argument("--verify", action="store_true", help="also read every chunk and check its checksum")
    p.add_argument("--debug", action="store_true", help="show the full traceback of an error")
    return parser


def dispatch(args: argparse.Namespace) -> None:
    if args.command == "inspect":
        from storage_schemas.inspect import main as inspect_main

        code = inspect_main([args.store] + (["--verify"] if args.verify else []))
        if code:
            raise SystemExit(code)
        return
    cfg = load_config(args.config, args.overrides)
    if args.command == "zoo":
        from pipeline.model_zoo import REPO, export

        readme = export(cfg, args.models or list(cfg.evaluation.models), args.dest or REPO / "models" / cfg.name,
                        args.results)
        log.info("wrote %s", readme)
        return
    from pipeline.executors import get_executor

    executor = get_executor(args.executor)
    if args.command == "run":
        from pipeline.stages.experiment import run_experiment

        run_experiment(args.config, args.overrides, args.variants, executor)
    elif args.command == "teacher":
        from pipeline.stages import teacher

        teacher.run(cfg, executor)
    elif args.command == "pool":
        from pipeline.stages import pool

        pool.run(cfg, executor, write_test=not args.no_test_stores)
    elif args.command == "train":
        from pipeline.stages import mid

        mid.run(cfg, executor, force=args.force)
    elif args.command == "evaluate":
        from pipeline.stages import evaluate

        evaluate.run(cfg)
    elif args.command == "analyze":
        from pipeline.stages import analyze

        analyze.run(cfg)


def user_errors() -> tuple[type[BaseException], ...]:
    """The exception types a user causes and can fix (printed as one line)."""
    from mid_core.checkpoint import CheckpointError

    errors: list[type[BaseException]] = [ConfigError, UserError, CheckpointError]
    try:
        from storage_schemas import StoreError

        errors.append(StoreError)
    except ImportError:  # pragma: no cover - storage_schemas imports without zarr
        pass
    return tuple(errors)


def main(argv: Sequence[str] | None = None) -> int:
    """Parse, validate, run; one-line errors (exit status 2) unless ``--debug``."""
    from pipeline import logs

    args = build_parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    logs.configure()
    try:
        dispatch(args)
    except user_errors() as exc:
        if args.debug:
            raise
        message = " ".join(str(exc).split())
        print(f"mid {args.command}: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"mid {args.command}: interrupted; rerun the same command to resume", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
