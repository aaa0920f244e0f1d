"""Shared command-line handling for the ``jobs/`` entry points."""
from __future__ import annotations

import argparse
import sys
from typing import Callable

from pipeline.config import ConfigError, ExperimentConfig, load_config


def parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--config", required=True, help="YAML experiment config, e.g. configs/digits_lenet.yaml")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set mid.epochs=2 (repeatable; values parsed as YAML)")
    return p


def main(description: str, body: Callable[[ExperimentConfig, argparse.Namespace], object],
         extra: Callable[[argparse.ArgumentParser], None] | None = None) -> int:
    """Parse args, load + validate the config (fail before any work), run ``body``."""
    p = parser(description)
    if extra:
        extra(p)
    args = p.parse_args()
    try:
        cfg = load_config(args.config, args.overrides)
        body(cfg, args)  # a stage may refuse a setting it does not support, before any work (ConfigError)
    except ConfigError as exc:
        print(f"config error: {exc}", file=sys.stderr)
        return 2
    return 0
